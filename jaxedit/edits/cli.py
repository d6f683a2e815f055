"""``jaxedit edit`` and ``jaxedit traverse``: render edits of any direction family as PNG grids.

Every (seed, direction, strength) of one command is ONE compiled program: the edit is vmapped
over strengths (and directions for ``traverse``) and the frames are rendered in fixed-size
chunks with ``lax.map``.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

HELP_STRENGTHS = ("strengths (write --strengths=-3:3:7 when it starts with a minus): START:STOP:NUM (inclusive linspace) or a comma list; per method: linear = step along "
                  "the unit direction, interfacegan (z) = signed distance to the boundary, ganspace = standard "
                  "deviations, warped = path length (steps of --eps), curvilinear = shift along the flow axis")


def parse_strengths(text: str) -> np.ndarray:
    try:
        if ":" in text:
            a, b, n = text.split(":")
            out = np.linspace(float(a), float(b), int(n))
        else:
            out = np.asarray([float(v) for v in text.split(",") if v.strip()])
    except ValueError:
        out = np.zeros(0)
    if out.size == 0:
        from jaxedit.cli import UsageError

        raise UsageError(f"--strengths {text!r}: expected START:STOP:NUM (e.g. -3:3:7) or a list (e.g. -2,0,2)")
    return out.astype(np.float32)


def _setup(args):
    from jaxedit.config import enable_compilation_cache

    enable_compilation_cache()
    from jaxedit import checkpoint
    from jaxedit.cli import DEFAULT_GENERATOR, UsageError, parse_seeds
    from jaxedit.edits import editors

    G, gp = checkpoint.load_stylegan2(args.ckpt or checkpoint.default_path(DEFAULT_GENERATOR))
    if G.cfg.c_dim:
        raise UsageError("edit/traverse: conditional generators are not supported yet")
    ed = editors.load(args.method, args.directions, space=args.space, layers=args.layers, eps=args.eps)
    ed.check(G)
    seeds = parse_seeds(args.seeds)
    z = np.stack([np.random.RandomState(s).randn(G.cfg.z_dim) for s in seeds]).astype(np.float32)
    return G, gp, ed, seeds, z, parse_strengths(args.strengths)


def _frames(G, gp, ed, z, ks, strengths, psi: float, batch: int):
    """Images ``[K, S, B, H, W, C]`` of every direction in ``ks``, strength and latent (one program)."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def run(z, ks, strengths):
        lat = ed.prepare(G, gp, z, psi)
        B = z.shape[0]
        moved = jax.vmap(lambda k: jax.vmap(lambda t: ed.edit(lat, k, jnp.full((B,), t)))(strengths))(ks)
        flat = moved.reshape(-1, *lat.shape[1:])
        n = flat.shape[0]
        pad = (-n) % batch
        flat = jnp.concatenate([flat, jnp.repeat(flat[:1], pad, 0)]) if pad else flat
        imgs = jax.lax.map(lambda x: ed.render(G, gp, x, psi), flat.reshape(-1, batch, *lat.shape[1:]))
        imgs = imgs.reshape(-1, *imgs.shape[2:])[:n]
        return imgs.reshape(ks.shape[0], strengths.shape[0], B, *imgs.shape[1:])

    return np.asarray(run(jnp.asarray(z), jnp.asarray(ks, jnp.int32), jnp.asarray(strengths)))


def cmd_edit(args) -> None:
    from jaxedit.cli import UsageError
    from jaxedit.data import images as imio

    G, gp, ed, seeds, z, strengths = _setup(args)
    if not 0 <= args.direction < ed.num_directions:
        raise UsageError(f"--direction {args.direction} out of range: {args.directions} has {ed.num_directions}")
    t0 = time.perf_counter()
    imgs = _frames(G, gp, ed, z, [args.direction], strengths, args.psi, args.batch_size)[0]  # [S, B, ...]
    dt = time.perf_counter() - t0
    grid = imgs.transpose(1, 0, 2, 3, 4).reshape(-1, *imgs.shape[2:])  # rows = seeds, columns = strengths
    imio.save_grid(grid, args.out, cols=len(strengths))
    print(f"{ed.method} direction {args.direction} ({ed.space} space): {len(seeds)} seeds x {len(strengths)} strengths "
          f"{np.round(strengths, 3).tolist()} in {dt:.2f} s -> {args.out} (rows = seeds, columns = strengths)")


def cmd_traverse(args) -> None:
    from jaxedit.data import images as imio

    G, gp, ed, seeds, z, strengths = _setup(args)
    ks = np.arange(ed.num_directions) if args.limit is None else np.arange(min(args.limit, ed.num_directions))
    t0 = time.perf_counter()
    imgs = _frames(G, gp, ed, z, ks, strengths, args.psi, args.batch_size)  # [K, S, B, ...]
    dt = time.perf_counter() - t0
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for b, seed in enumerate(seeds):
        imio.save_grid(imgs[:, :, b].reshape(-1, *imgs.shape[3:]), out / f"seed{seed}.png", cols=len(strengths))
    n = imgs.shape[0] * imgs.shape[1] * imgs.shape[2]
    print(f"{ed.method}: {len(ks)} directions x {len(strengths)} strengths x {len(seeds)} seeds = {n} frames in "
          f"{dt:.2f} s ({n / dt:.0f} frames/s incl. compile) -> {out}/seed*.png (rows = directions, columns = strengths)")


def _common(p, default_strengths: str):
    from jaxedit.cli import DEFAULT_GENERATOR
    from jaxedit.edits.editors import METHODS

    p.add_argument("ckpt", nargs="?", help=f"jaxedit StyleGAN2 checkpoint (default: {DEFAULT_GENERATOR})")
    p.add_argument("--method", required=True, choices=METHODS)
    p.add_argument("--directions", required=True,
                   help="direction file (.npy linear/InterFaceGAN, GANSpace .npz, WarpedGANSpace support_sets.pt, "
                        "DeCurvEd flow .pt) or a checkpoint written by `jaxedit discover`")
    p.add_argument("--strengths", default=default_strengths, help=HELP_STRENGTHS)
    p.add_argument("--seeds", default="0-7", help="seeds (z as NVIDIA's generate.py), e.g. 0-7 or 1,5,9")
    p.add_argument("--space", choices=("z", "w"), help="latent space the directions live in (default per method)")
    p.add_argument("--layers", help="W+ layer range START:END to edit (space w), e.g. 0:4")
    p.add_argument("--eps", type=float, default=0.2, help="warped: unit step length (default 0.2)")
    p.add_argument("--psi", type=float, default=1.0, help="truncation psi")
    p.add_argument("--batch-size", type=int, default=64, help="frames rendered per chunk")
    p.add_argument("--out", required=True)


def register_cli(sub) -> None:
    e = sub.add_parser("edit", help="edit seeds along one direction: PNG grid, rows = seeds, columns = strengths")
    _common(e, "-3:3:7")
    e.add_argument("--direction", type=int, default=0, help="direction / path / axis index k")
    e.set_defaults(fn=cmd_edit)
    t = sub.add_parser("traverse", help="traverse every direction: one PNG per seed, rows = directions")
    _common(t, "-3:3:7")
    t.add_argument("--limit", type=int, help="only the first N directions")
    t.set_defaults(fn=cmd_traverse)
