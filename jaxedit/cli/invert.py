"""``jaxedit invert``: real images into the generator's latent space (projector, encoder, or both), written as
``latents.npy`` (W+ ``[N, num_ws, w_dim]``) that ``jaxedit edit --latents`` edits with every family."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import invert, models, parallel
from jaxedit.cli.common import DEFAULT_GENERATOR, load_generator, model_path
from jaxedit.errors import UsageError
from jaxedit.io import files
from jaxedit.io import images as imio
from jaxedit.models import e4e, lpips, probe

DEFAULT_PROBE = "shapes32-probe"
OUTPUTS = ("latents.npy", "noise.npz", "reconstructions.png", "summary.json")


def _check_out(out: Path, force: bool) -> None:
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    taken = [n for n in OUTPUTS if (out / n).exists()]
    if taken and not force:
        raise UsageError(f"--out {out}: holds {', '.join(taken)} (add --force to replace them)")


def _distance(args, G):
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
    lp, lpp = models.load(args.lpips)
    if not isinstance(lp, lpips.LPIPS):
        raise UsageError(f"--lpips {args.lpips}: not an LPIPS checkpoint")
    return invert.lpips_distance(lp, lpp), "LPIPS"


def run_invert(args) -> None:
    out = Path(args.out)
    _check_out(out, args.force)
    if args.steps < 0 or (args.steps == 0 and not args.encoder):
        raise UsageError(f"--steps {args.steps}: >= 1 (or 0 with --encoder: the encoder's codes alone)")
    G, gp = load_generator(args.generator, unconditional="invert")
    if args.mode == "w+" and args.steps == 0:
        raise UsageError("--mode applies to the optimization; with --steps 0 the encoder's W+ codes are the result")
    distance, loss_name = _distance(args, G)
    E = ep = None
    if args.encoder:
        E, ep = models.load(args.encoder)
        if not isinstance(E, e4e.Encoder):
            raise UsageError(f"--encoder {args.encoder}: not an e4e encoder checkpoint")
        if (E.cfg.n_styles, E.cfg.w_dim) != (G.cfg.num_ws, G.cfg.w_dim):
            raise UsageError(f"--encoder {args.encoder}: codes {E.cfg.n_styles} x {E.cfg.w_dim}, but the generator's "
                             f"W+ is {G.cfg.num_ws} x {G.cfg.w_dim}")
    targets, adjusted = imio.load_images(args.images, G.cfg.img_resolution)
    n = len(targets)
    keys = np.asarray(jax.random.key_data(jax.vmap(lambda i: jax.random.fold_in(jax.random.key(args.seed), i))(
        jnp.arange(n, dtype=jnp.uint32))))
    cfg = invert.ProjectorConfig(steps=max(args.steps, 1), mode=args.mode)
    res_in = getattr(E.cfg, "input_resolution", None) if E is not None else None

    @jax.jit
    def run(batch):
        img, k = batch["img"], jax.random.wrap_key_data(batch["key"])
        init = invert.encode(E, ep, img, res_in) if E is not None else None
        if args.steps == 0:
            ws = init
            recon = G.synthesis(gp, ws)
            return {"ws": ws, "recon": recon, "dist": distance(img, recon), "noise": {}}
        res = invert.project(G, gp, distance, img, k, cfg, init=init)
        recon = invert.render(G, gp, res)
        return {"ws": res.ws, "recon": recon, "dist": distance(img, recon), "noise": res.noise}

    t0 = time.perf_counter()
    outs = list(parallel.map_batches(run, {"img": targets, "key": keys}, args.batch_size))
    dt = time.perf_counter() - t0
    cat = lambda k: np.concatenate([o[k] for o in outs])  # noqa: E731
    ws, recon, dist = cat("ws"), cat("recon"), cat("dist")
    noise = {k: np.concatenate([o["noise"][k] for o in outs]) for k in outs[0]["noise"]}
    args.signals.check()
    out.mkdir(parents=True, exist_ok=True)
    files.save_npy(out / "latents.npy", ws.astype(np.float32))
    files.save_npz(out / "noise.npz", **noise)
    pairs = np.stack([targets, recon], axis=1).reshape(-1, *targets.shape[1:])  # rows: target | reconstruction
    imio.save_grid(pairs, out / "reconstructions.png", cols=2, col_labels=["target", "reconstruction"],
                   row_labels=[Path(p).name[:16] for p in args.images])
    method = (("encoder + " if E is not None else "") + f"projector ({args.mode}, {args.steps} steps)"
              if args.steps else "encoder only")
    files.write_json(out / "summary.json", {
        "images": [str(p) for p in args.images], "method": method, "loss": loss_name,
        "generator": str(model_path(args.generator, DEFAULT_GENERATOR)), "encoder": args.encoder,
        "final_distance": [float(d) for d in dist], "seconds": dt, "config": cfg.to_dict()})
    print(f"inverted {n} images with {method}, {loss_name}, in {dt:.1f} s -> {out}/latents.npy "
          f"[{n}, {G.cfg.num_ws}, {G.cfg.w_dim}] (+ noise.npz, reconstructions.png, summary.json)")
    if adjusted:
        print(f"  {adjusted} images were centre-cropped and/or resized to {G.cfg.img_resolution} px")
    print(f"  final {loss_name}: mean {float(np.mean(dist)):.4g}, max {float(np.max(dist)):.4g}; "
          f"edit them: jaxedit edit --latents {out}/latents.npy --directions ...")
