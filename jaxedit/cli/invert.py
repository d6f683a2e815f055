"""``jaxedit invert``: real images into the generator's latent space (projector, encoder, or both), written as
``DIR/latents.npz`` (``names``, ``ws [N, num_ws, w_dim]``, the optimized noise maps) that ``jaxedit edit
--latents`` edits with every family, ``DIR/recon/*.png`` and ``DIR/report.json``.

Resumable per batch: each finished batch is written to ``DIR/.invert-partial/batch-NNNNN.npz`` beside a
``job.json`` naming the inputs (path, size, mtime) and every flag that changes the result; running the same
command again skips the finished batches, and the partial folder is removed once the outputs are written. A
different job in the same ``--out`` is refused unless ``--force`` (which discards only that partial folder)."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import invert, models, parallel
from jaxedit.cli.common import DEFAULT_GENERATOR, check_outputs, load_generator, model_path
from jaxedit.errors import InputError, UsageError
from jaxedit.io import files
from jaxedit.io import images as imio
from jaxedit.io.progress import Progress
from jaxedit.models import e4e, lpips, probe

DEFAULT_PROBE = "shapes32-probe"
OUTPUTS, RECON = ("latents.npz", "report.json"), "recon"
PARTIAL = ".invert-partial"  # per-batch results of an unfinished run


def _distance(args, G):
    distance, name = _image_distance(args, G)
    if not args.pixel_weight:
        return distance, name
    w = args.pixel_weight
    return (lambda a, b: distance(a, b) + w * invert.pixel_distance(a, b)), f"{name} + {w:g} x pixel MSE"


def _image_distance(args, G):
    if args.loss == "pixel":
        return invert.pixel_distance, "pixel MSE"
    if args.loss == "probe":
        P, pp = probe.load(model_path(args.probe, DEFAULT_PROBE))
        if P.cfg.resolution != G.cfg.img_resolution:
            raise UsageError(f"--loss probe: the probe reads {P.cfg.resolution} px images, the generator makes "
                             f"{G.cfg.img_resolution} px")
        return invert.probe_distance(P, pp), "probe embedding distance"
    if not args.lpips:
        raise UsageError("--loss lpips needs --lpips CKPT (jaxedit convert lpips VGG LIN CKPT); on the shapes "
                         "world use --loss probe")
    lp, lpp = models.load(model_path(args.lpips, args.lpips))
    if not isinstance(lp, lpips.LPIPS):
        raise UsageError(f"--lpips {args.lpips}: not an LPIPS checkpoint")
    return invert.lpips_distance(lp, lpp), "LPIPS"


def expand_images(inputs: list[str]) -> list[Path]:
    """Files as given, folders as their image files (sorted); nothing read yet."""
    out: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            found = imio.image_files(p)
            if not found:
                raise UsageError(f"{p}: a folder without image files ({', '.join(imio.IMAGE_SUFFIXES)})")
            out += found
        else:
            out.append(p)
    if len(out) > imio.MAX_IMAGE_FILES:
        raise UsageError(f"{len(out)} images: at most {imio.MAX_IMAGE_FILES} per command (a bigger job is a batch job)")
    return out


def _read(paths: list[Path], size: int) -> tuple[list[Path], np.ndarray, list[str]]:
    """Every readable image; each unreadable one becomes one line naming the file (the rest still run)."""
    good, arrays, problems = [], [], []
    for p in paths:
        try:
            arrays.append(imio.load_image(p, size)[0])
            good.append(p)
        except InputError as e:
            problems.append(str(e))
    return good, (np.stack(arrays) if arrays else np.zeros((0, size, size, 3), np.float32)), problems


def run_invert(args) -> None:
    out = Path(args.out)
    check_outputs("--out", [out / n for n in OUTPUTS], args.force, folder=out, folders=[out / RECON])
    if args.method == "encoder" and args.steps is not None:
        raise UsageError("--steps: the encoder method does not optimize; use --method hybrid or project")
    if args.method != "project" and not args.encoder:
        raise UsageError(f"--method {args.method} needs --encoder CKPT (an e4e checkpoint, e.g. shapes32-encoder)")
    steps = 1000 if args.steps is None else args.steps
    if args.loss is None:  # the projector's distance (NVIDIA: LPIPS); the encoder reports pixel MSE unless told
        args.loss = "pixel" if args.method == "encoder" else "lpips"
    paths = expand_images(args.images)
    G, gp = load_generator(args.generator, unconditional="invert")
    distance, loss_name = _distance(args, G)
    E = ep = None
    if args.method != "project":
        E, ep = models.load(model_path(args.encoder, args.encoder))
        if not isinstance(E, e4e.Encoder):
            raise UsageError(f"--encoder {args.encoder}: not an e4e encoder checkpoint")
        if (E.cfg.n_styles, E.cfg.w_dim) != (G.cfg.num_ws, G.cfg.w_dim):
            raise UsageError(f"--encoder {args.encoder}: codes {E.cfg.n_styles} x {E.cfg.w_dim}, but the generator's "
                             f"W+ is {G.cfg.num_ws} x {G.cfg.w_dim}")
    good, targets, problems = _read(paths, G.cfg.img_resolution)
    for line in problems:
        print(f"skipped: {line}")
    if not good:
        raise InputError(f"invert: none of the {len(paths)} inputs is a readable image")
    n = len(targets)
    keys = np.asarray(jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(jax.random.key(args.seed), i))(
        jnp.arange(n, dtype=jnp.uint32))))
    make = invert.ProjectorConfig.hybrid if args.method == "hybrid" else invert.ProjectorConfig
    cfg = make(steps=max(steps, 1), mode=args.space)
    enc_res = min(G.cfg.img_resolution, 256)  # e4e / pSp read 256 px (and the shapes encoder its 32)

    @jax.jit
    def run(batch):
        img, k = batch["img"], jax.random.wrap_key_data(batch["key"])
        init = invert.encode(E, ep, img, enc_res) if E is not None else None
        if args.method == "encoder":
            ws, noise = init, {}
            recon = G.synthesis(gp, ws)
        else:
            res = invert.project(G, gp, distance, img, k, cfg, init=init)
            ws, noise, recon = res.ws, res.noise, invert.render(G, gp, res)
        mse = jnp.mean(jnp.square(jnp.clip(recon, -1, 1) - img), axis=(1, 2, 3))
        return {"ws": ws, "recon": recon, "dist": distance(img, recon), "psnr": 10 * jnp.log10(4.0 / mse),
                "noise": noise}

    job = _job(args, good, steps)
    partial = _partial_dir(out, job, args.force)
    bs = parallel.data_mesh().size * -(-args.batch_size // parallel.data_mesh().size)
    starts = list(range(0, n, bs))
    done = {i for i in range(len(starts)) if (partial / f"batch-{i:05d}.npz").exists()}
    if done:
        print(f"resuming: {len(done)} of {len(starts)} batches of {out} already inverted")
    bar = Progress(total=n, unit="img", desc=f"invert ({args.method})",
                   initial=sum(min(bs, n - starts[i]) for i in done))
    compiled = False
    for i, start in enumerate(starts):
        if i in done:
            continue
        t0 = time.perf_counter()
        batch = {"img": targets[start:start + bs], "key": keys[start:start + bs]}
        o = next(parallel.map_batches(run, batch, bs))
        noise = {f"noise/{k}": v for k, v in o.pop("noise").items()}
        files.save_npz(partial / f"batch-{i:05d}.npz", note=False, seconds=np.float64(time.perf_counter() - t0), **o, **noise)
        bar.update(start + len(batch["img"]))
        if not compiled:  # the rate is measured from the end of the compiling batch
            bar.restart_rate(bar.done)
            compiled = True
        args.signals.check()
    bar.close()
    outs = [_read_batch(partial / f"batch-{i:05d}.npz") for i in range(len(starts))]
    dt = float(sum(o["seconds"] for o in outs))
    cat = lambda k: np.concatenate([o[k] for o in outs])
    ws, recon, dist, psnr = cat("ws"), cat("recon"), cat("dist"), cat("psnr")
    noise = {k: cat(k) for k in outs[0] if k.startswith("noise/")}
    names = _unique_names(good)
    (out / RECON).mkdir(parents=True, exist_ok=True)
    files.save_npz(out / "latents.npz", names=np.asarray(names), ws=ws.astype(np.float32), **noise)
    files.note_written(*(imio.save_png(im, out / RECON / f"{name}.png", note=False)
                         for name, im in zip(names, imio.to_uint8(recon))))
    method = {"encoder": "encoder", "project": f"projector ({args.space}, {steps} steps)",
              "hybrid": f"encoder + projector ({args.space}, {steps} steps)"}[args.method]
    files.write_json(out / "report.json", {
        "method": method, "loss": loss_name, "generator": str(model_path(args.generator, DEFAULT_GENERATOR)),
        "encoder": args.encoder, "pixel_weight": args.pixel_weight, "seconds": dt, "seconds_per_image": dt / n,
        "config": cfg.to_dict(),
        "skipped": problems,
        "images": [{"name": nm, "file": str(p), "psnr": float(q), "distance": float(d)}
                   for nm, p, q, d in zip(names, good, psnr, dist)]})
    print(f"inverted {n} images with {method}, {loss_name}, in {dt:.1f} s -> {out}/latents.npz "
          f"[{n}, {G.cfg.num_ws}, {G.cfg.w_dim}], {out}/recon/*.png, {out}/report.json")
    print(f"  PSNR mean {float(np.mean(psnr)):.2f} dB (min {float(np.min(psnr)):.2f}); {loss_name} mean "
          f"{float(np.mean(dist)):.4g}; edit them: jaxedit edit --latents {out}/latents.npz --directions ...")
    _discard_partial(partial)
    if problems:
        raise InputError(f"invert: {len(problems)} of {len(paths)} inputs skipped (listed above); the others "
                         f"are in {out}")


def _unique_names(paths: list[Path]) -> list[str]:
    seen: dict[str, int] = {}
    names = []
    for p in paths:
        stem = p.stem
        seen[stem] = seen.get(stem, 0) + 1
        names.append(stem if seen[stem] == 1 else f"{stem}-{seen[stem]}")
    return names


def _discard_partial(partial: Path) -> None:
    """Remove the files jaxedit wrote in ``partial`` (``job.json``, ``batch-*.npz`` and their temp files), then the
    folder if nothing else is in it: a file the user put there survives."""
    for f in partial.iterdir():
        if f.is_file() and (f.name == "job.json" or re.fullmatch(r"\.?(batch-\d{5}\.npz|job\.json)(\.tmp-.*)?", f.name)):
            f.unlink()
    if not any(partial.iterdir()):
        partial.rmdir()


def _read_batch(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return dict(z)


def _job(args, paths: list[Path], steps: int) -> dict:
    """What makes a run's results: the readable inputs (path, size, mtime) and every flag that changes them."""
    flags = ("generator", "method", "space", "loss", "lpips", "probe", "encoder", "seed", "batch_size",
             "pixel_weight")
    return {"inputs": [[str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns] for p in paths],
            "steps": steps, **{f: getattr(args, f) for f in flags}}


def _partial_dir(out: Path, job: dict, force: bool) -> Path:
    """``out/.invert-partial`` holding ``job.json``: kept (resume) when it describes ``job``, discarded with
    ``--force`` when it does not, else refused."""
    partial = out / PARTIAL
    meta = partial / "job.json"
    if partial.exists():
        try:
            same = meta.is_file() and files.read_json(meta) == json.loads(json.dumps(job))
        except InputError:  # not ours to read: another job
            same = False
        if not same and not force:
            raise UsageError(f"--out {out}: holds an unfinished invert of other inputs or flags ({PARTIAL}/; "
                             f"rerun that command to resume it, or add --force to discard it)")
        if not same:
            _discard_partial(partial)
    files.write_json(meta, job, note=False)
    return partial
