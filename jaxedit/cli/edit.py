"""``jaxedit edit`` and ``jaxedit traverse``: render edits of any direction family as PNG grids.

Every (seed, direction, strength) of one command is ONE compiled program: the edit is vmapped
over strengths (and directions for ``traverse``) and the frames are rendered in fixed-size
chunks with ``lax.map``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import edits, parallel
from jaxedit.cli.common import (
    DEFAULT_GENERATOR,
    check_outputs,
    inverted_latents,
    load_generator,
    model_path,
    parse_seeds,
    parse_strengths,
    seed_latents,
    strength_labels,
)
from jaxedit.edits import fit
from jaxedit.errors import UsageError
from jaxedit.io import images as imio

LAYER_RANGE = re.compile(r"(\d{1,4}):(\d{1,4})")


def _layers(text: str | None) -> tuple[int, int] | None:
    """'START:END' -> (start, end) (W+ layers, end exclusive)."""
    if not text:
        return None
    m = LAYER_RANGE.fullmatch(text.strip())
    if m is None:
        raise UsageError(f"--layers must be START:END (W+ layers, end exclusive), got {text[:40]!r}")
    return int(m[1]), int(m[2])


def _setup(args):
    """Flags first (nothing is loaded before they are checked), then generator, editor and provenance.

    -> G, gparams, editor, row names, x (z ``[N, z_dim]`` from --seeds, or W+ ``[N, L, d]`` from --latents),
    strengths, whether x is already in the editor's space."""
    seeds = None if args.latents else parse_seeds(args.seeds)
    given = parse_strengths(args.strengths) if args.strengths else None
    layers = _layers(args.layers)
    G, gp = load_generator(args.ckpt, unconditional="edit/traverse")
    if args.latents:
        x, names = inverted_latents(args.latents, G)
    ed = edits.load(args.directions, args.method, space=args.space, layers=layers, eps=args.eps)
    if args.latents and ed.space != "w":
        raise UsageError(f"--latents: the {ed.family} directions live in {ed.space.upper()}, but inverted latents "
                         "are W+; use directions in W")
    prov = edits.read_provenance(args.directions) if Path(args.directions).is_dir() else {}
    gen = fit.generator_identity(model_path(args.ckpt, DEFAULT_GENERATOR), gp)
    fit.check_provenance(prov, gen["name"], gen["sha256"], ed.space)
    ed.check(G)
    strengths = given if given is not None else fit.default_strengths(prov)
    strengths = parse_strengths("-3:3:7") if strengths is None else strengths
    if args.latents:
        return G, gp, ed, names, x, strengths, True
    return G, gp, ed, [f"seed {s}" for s in seeds], seed_latents(seeds, G.cfg.z_dim), strengths, False


def _frames(G, gp, ed, z, ks, strengths, psi: float, batch: int, prepared: bool = False):
    """Images ``[K, S, B, H, W, C]`` of every direction in ``ks``, strength and latent (one program); ``z`` is
    already in the editor's space when ``prepared``."""

    @jax.jit
    def run(ed, z, ks, strengths):
        lat = z if prepared else ed.prepare(G, gp, z, psi)
        B = z.shape[0]
        moved = jax.vmap(lambda k: jax.vmap(lambda t: edits.apply(ed, lat, k, jnp.full((B,), t)))(strengths))(ks)
        imgs = parallel.chunked_map(lambda x: ed.render(G, gp, x, psi), moved.reshape(-1, *lat.shape[1:]), batch)
        return imgs.reshape(ks.shape[0], strengths.shape[0], B, *imgs.shape[1:])

    return np.asarray(run(ed, jnp.asarray(z), jnp.asarray(ks, jnp.int32), jnp.asarray(strengths)))


def run_edit(args) -> None:
    G, gp, ed, rows, z, strengths, prepared = _setup(args)
    if not 0 <= args.direction < ed.num_directions:
        raise UsageError(f"--direction {args.direction} out of range: {args.directions} has {ed.num_directions}")
    check_outputs("--out", [args.out], args.force)
    t0 = time.perf_counter()
    imgs = _frames(G, gp, ed, z, [args.direction], strengths, args.psi, args.batch_size, prepared)[0]  # [S, B, ...]
    dt = time.perf_counter() - t0
    grid = imgs.transpose(1, 0, 2, 3, 4).reshape(-1, *imgs.shape[2:])  # rows = seeds, columns = strengths
    args.signals.check()
    imio.save_grid(grid, args.out, cols=len(strengths), row_labels=rows, col_labels=strength_labels(strengths))
    print(f"{ed.family} direction {args.direction} ({ed.space} space): {len(rows)} {'latents' if prepared else 'seeds'} x {len(strengths)} strengths "
          f"{np.round(strengths, 3).tolist()} in {dt:.2f} s -> {args.out} (rows = seeds, columns = strengths)")


def _row_file(row: str) -> str:
    """traverse's file of one row latent: ``seed 3`` -> ``seed3.png``."""
    return f"{row.replace(' ', '')}.png"


def run_traverse(args) -> None:
    G, gp, ed, rows, z, strengths, prepared = _setup(args)
    ks = np.arange(ed.num_directions) if args.limit is None else np.arange(min(args.limit, ed.num_directions))
    out = Path(args.out)
    check_outputs("--out", [out / _row_file(row) for row in rows], args.force, folder=out)
    t0 = time.perf_counter()
    imgs = _frames(G, gp, ed, z, ks, strengths, args.psi, args.batch_size, prepared)  # [K, S, B, ...]
    dt = time.perf_counter() - t0
    out.mkdir(parents=True, exist_ok=True)
    for b, row in enumerate(rows):
        args.signals.check()
        imio.save_grid(imgs[:, :, b].reshape(-1, *imgs.shape[3:]), out / _row_file(row),
                       cols=len(strengths),
                       row_labels=[f"k={k}" for k in ks], col_labels=strength_labels(strengths))
    n = imgs.shape[0] * imgs.shape[1] * imgs.shape[2]
    print(f"{ed.family}: {len(ks)} directions x {len(strengths)} strengths x {len(rows)} {'latents' if prepared else 'seeds'} = {n} frames in "
          f"{dt:.2f} s ({n / dt:.0f} frames/s incl. compile) -> {out}/*.png, one per row latent (rows = directions, columns = strengths)")
