"""Scoring edit directions with an attribute reader: the direction-factor matrix and commutativity.

An *edit* is a pure function ``edit(latents [B, ...], k, t) -> latents`` moving every latent
along direction (path, axis) ``k`` by strength ``t`` (linear, warped and curvilinear edits all
fit); a *score* is ``score(latents [B, ...]) -> (attributes [B, A], shape_probs [B, 3])``,
e.g. render with the generator and read with the probe (:mod:`jaxedit.metrics.attributes`).
Every function is one compiled program over all directions, strengths and latents, scored in
chunks of ``batch`` latents (:func:`jaxedit.parallel.chunked_map`), so memory is bounded by the chunk.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image, ImageDraw

from jaxedit import parallel
from jaxedit.io import images as imio
from jaxedit.metrics import attributes as attr_lib

Edit = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
Score = Callable[[jax.Array], tuple[jax.Array, jax.Array]]


def sweep_changes(score: Score, edit: Edit, latents: jax.Array, directions: jax.Array, strengths: jax.Array,
                  batch: int = 256) -> jax.Array:
    """Attribute change of every (direction, strength, latent) relative to strength 0.

    latents ``[B, *latent]``, directions ``[K]`` int, strengths ``[S]`` sorted ascending and
    containing 0 -> changes ``[K, S, B, A + 1]`` (:data:`attributes.CHANGE_NAMES`). Angles are
    unwrapped along the strength grid (cumulative wrapped steps), so a hue moved by more than
    half a turn over the sweep keeps counting; the shape column is the total-variation distance
    to strength 0.
    """
    strengths = jnp.asarray(strengths, jnp.float32)
    K, S, B = directions.shape[0], strengths.shape[0], latents.shape[0]
    moved = jax.vmap(lambda k: jax.vmap(lambda t: edit(latents, k, jnp.full((B,), t)))(strengths))(directions)
    a, p = parallel.chunked_map(score, moved.reshape(K * S * B, *latents.shape[1:]), batch)
    return changes_along(a.reshape(K, S, B, -1), p.reshape(K, S, B, -1), jnp.argmin(jnp.abs(strengths)))


def changes_along(attrs: jax.Array, probs: jax.Array, zero) -> jax.Array:
    """Readings along a strength grid -> changes relative to grid column ``zero``.

    attrs ``[K, S, B, A]`` and shape probabilities ``[K, S, B, 3]`` (:func:`attributes.read` of every
    frame, columns in strength order) -> ``[K, S, B, A + 1]``: angles unwrapped along the grid
    (cumulative wrapped steps), then differenced to column ``zero``; the last column is the shape's
    total-variation distance to column ``zero``. Works on numpy or JAX arrays.
    """
    steps = jnp.diff(attrs, axis=1)
    steps = jnp.where(jnp.asarray(attr_lib.ANGULAR), attr_lib.wrap(steps), steps)
    unwrapped = jnp.concatenate([jnp.zeros_like(attrs[:, :1]), jnp.cumsum(steps, axis=1)], axis=1)
    d = unwrapped - unwrapped[:, zero][:, None]
    tv = 0.5 * jnp.sum(jnp.abs(probs - probs[:, zero][:, None]), -1, keepdims=True)
    return jnp.concatenate([d, tv], -1)


def direction_factor_matrix(changes: jax.Array, strengths: jax.Array) -> dict[str, np.ndarray]:
    """Per-unit-strength effect of each direction on each attribute, from :func:`sweep_changes`.

    changes ``[K, S, B, A]``, strengths ``[S]`` -> ``slope [K, A]`` (mean over latents of the
    least-squares slope through the origin, signed), ``magnitude [K, A]`` (mean |slope|: what the
    heatmap shows; for the shape column, mean TV / |t|), ``main [K]`` (index of the largest
    magnitude among the continuous attributes), ``leak [K]`` (largest other continuous attribute's
    magnitude / the main one; < 1/3 is the issue's "clean edit" bar) and ``shape_leak [K]`` (the
    shape column / the main one, reported apart: on a generator whose shapes are ambiguous the
    probe's shape probabilities flip under any edit).
    """
    t = jnp.asarray(strengths, jnp.float32)[None, :, None, None]
    per_latent = jnp.sum(t * changes, 1) / jnp.sum(t * t, 1)  # [K, B, A]
    tv_rate = jnp.sum(jnp.abs(t) * changes[..., -1:], 1) / jnp.sum(t * t, 1)
    per_latent = jnp.concatenate([per_latent[..., :-1], tv_rate], -1)
    slope = np.asarray(jnp.mean(per_latent, 1))
    magnitude = np.asarray(jnp.mean(jnp.abs(per_latent), 1))
    cont = magnitude[:, :-1]
    main = np.argmax(cont, 1)
    top2 = np.sort(cont, 1)[:, -2:]
    leak = top2[:, 0] / np.maximum(top2[:, 1], 1e-12)
    shape_leak = magnitude[:, -1] / np.maximum(top2[:, 1], 1e-12)
    return {"slope": slope, "magnitude": magnitude, "main": main, "leak": leak, "shape_leak": shape_leak}


def commutativity(score: Score, edit: Edit, latents: jax.Array, a: tuple[int, float], b: tuple[int, float],
                  batch: int = 256) -> np.ndarray:
    """Mean |attr(A then B) - attr(B then A)| over latents, per attribute -> ``[A + 1]``.

    ``a = (k_a, t_a)``, ``b = (k_b, t_b)``: direction and strength of the two edits (the
    seed's commutativity score; angles wrapped, shape as total variation).
    """
    B = latents.shape[0]
    full = lambda t: jnp.full((B,), t, jnp.float32)
    ab = edit(edit(latents, jnp.asarray(a[0]), full(a[1])), jnp.asarray(b[0]), full(b[1]))
    ba = edit(edit(latents, jnp.asarray(b[0]), full(b[1])), jnp.asarray(a[0]), full(a[1]))
    sa, sb = parallel.chunked_map(score, ab, batch), parallel.chunked_map(score, ba, batch)
    return np.asarray(jnp.mean(jnp.abs(attr_lib.change(sa, sb)), 0))


def heatmap_png(matrix: np.ndarray, rows: list[str], cols: list[str], path, title: str = "", cell: int = 28) -> None:
    """Write ``matrix [R, C]`` (>= 0) as a PNG heatmap with row/column labels (PIL only), atomically."""
    R, C = matrix.shape
    left, top = 8 + 7 * max(len(r) for r in rows), 24 + 7 * max(len(c) for c in cols)
    img = Image.new("RGB", (left + C * cell + 10, top + R * cell + 10), "white")
    draw = ImageDraw.Draw(img)
    if title:
        draw.text((4, 2), title, fill="black")
    m = matrix / max(float(np.max(matrix)), 1e-12)
    for j, c in enumerate(cols):
        tmp = Image.new("RGB", (7 * len(c) + 4, 12), "white")
        ImageDraw.Draw(tmp).text((0, 0), c, fill="black")
        img.paste(tmp.rotate(90, expand=True), (left + j * cell + cell // 2 - 6, 18))
    for i, r in enumerate(rows):
        draw.text((4, top + i * cell + cell // 2 - 5), r, fill="black")
        for j in range(C):
            v = float(m[i, j])
            shade = (int(255 * (1 - v)), int(255 * (1 - 0.6 * v)), 255)
            x0, y0 = left + j * cell, top + i * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=shade, outline=(220, 220, 220))
            draw.text((x0 + 3, y0 + cell // 2 - 5), f"{matrix[i, j]:.2f}"[:4], fill="black" if v < 0.6 else "white")
    imio.save_png(np.asarray(img), path)
