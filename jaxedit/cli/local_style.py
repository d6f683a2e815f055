"""``jaxedit local-style``: Latents2Semantics local style edits of images in one forward pass (no inversion).

Inputs are image files (or folders of them; centre-cropped and resized to the model's resolution) or
``--renders N`` fresh shapes renders. Per image: ``--samples K`` style-noise variations of ``--region`` (sigma
``--noise``), or the region in the style of ``--swap-from`` (one donor image for all). Writes
``DIR/grid.png`` (rows = images, columns = the input then its variations) and ``DIR/NAME-K.png``.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import models
from jaxedit.cli.common import check_outputs, model_path
from jaxedit.cli.invert import expand_images
from jaxedit.data import shapes
from jaxedit.edits import local_style
from jaxedit.errors import UsageError
from jaxedit.io import files
from jaxedit.io import images as imio
from jaxedit.models.l2sae import L2SAE

DEFAULT_MODEL = "shapes32-l2sae"
MAX_VARIATIONS = 64


def run_local_style(args) -> None:
    out = Path(args.out)
    if bool(args.images) == bool(args.renders):
        raise UsageError("local-style: give image files/folders or --renders N (one of them)")
    if (args.noise is None) == (args.swap_from is None):
        raise UsageError("local-style: give --noise SIGMA (with --samples K) or --swap-from IMAGE (one of them)")
    if args.swap_from is not None and args.samples is not None:
        raise UsageError("--samples: only with --noise (a swap has one result per image)")
    k = args.samples or (1 if args.swap_from else 4)
    if k > MAX_VARIATIONS:
        raise UsageError(f"--samples {k}: at most {MAX_VARIATIONS}")
    M, params = models.load(model_path(args.model, DEFAULT_MODEL))
    if not isinstance(M, L2SAE):
        raise UsageError(f"--model {args.model}: not a Latents2Semantics (l2sae) checkpoint")
    if args.region not in M.cfg.regions:
        raise UsageError(f"--region {args.region}: this model's regions are {', '.join(M.cfg.regions)}")
    res = M.cfg.resolution
    if args.renders:
        images = np.asarray(shapes.sample(jax.random.key(args.seed), args.renders)["image"])
        names = [f"render{i}" for i in range(args.renders)]
    else:
        paths = expand_images(args.images)
        images, adjusted = imio.load_images(paths, res)
        names = [p.stem for p in paths]
        if adjusted:
            print(f"{adjusted} of {len(paths)} images centre-cropped/resized to {res}x{res}")
    donor = imio.load_image(args.swap_from, res)[0][None] if args.swap_from else None
    check_outputs("--out", [out / n for n in ["grid.png", *(f"{nm}-{j}.png" for nm in names for j in range(k))]],
                  args.force, folder=out)
    editor = local_style.LocalStyle(params, M)
    region = M.region_index(args.region)

    @jax.jit
    def run(ed, x, keys):
        if donor is not None:
            return local_style.swap(ed, x, donor, region, soft=args.soft)[:, None]  # the donor encoded once
        draw = lambda kk: local_style.style_noise(ed, x, region, args.noise, kk, soft=args.soft)  # noqa: E731
        return jax.vmap(draw, out_axes=1)(keys)  # [B, K, H, W, 3]: one program for every image and draw

    keys = jax.vmap(lambda j: jax.vmap(lambda i: jax.random.fold_in(jax.random.fold_in(
        jax.random.key(args.seed), j), i))(jnp.arange(len(images))))(jnp.arange(k))  # [K, B]
    t0 = time.perf_counter()
    edited = np.asarray(jax.block_until_ready(run(editor, jnp.asarray(images), keys)))
    seconds = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    files.note_written(*(imio.save_png(imio.to_uint8(edited[i, j]), out / f"{nm}-{j}.png", note=False)
                         for i, nm in enumerate(names) for j in range(k)))
    cells = np.concatenate([np.asarray(images)[:, None], edited], axis=1).reshape(-1, res, res, 3)
    what = f"swap from {Path(args.swap_from).name}" if donor is not None else f"noise {args.noise:g}"
    cols = ["input", *([what] if donor is not None else [f"draw {j}" for j in range(k)])]
    imio.save_grid(cells, out / "grid.png", cols=k + 1, row_labels=names, col_labels=cols)
    print(f"local-style: {args.region} region, {what}, {len(images)} images x {k} in {seconds:.2f} s (one program, "
          f"compile included) -> {out}/grid.png, {out}/NAME-K.png")
