"""Fit edit directions for one generator from its own samples, and record where they belong.

- :func:`sample_latents` / :func:`sample_and_score`: the latents of ``z [N, z_dim]`` in Z or W
  and (optionally) scores of their images by any classifier, one compiled program chunked with
  :func:`jaxedit.parallel.chunked_map`;
- :func:`interfacegan`: InterFaceGAN's recipe (``genforce/interfacegan:utils/manipulator.py``):
  top / bottom ``ratio`` (0.02) of the scores, linear SVM (C = 1, 70/30 split;
  :func:`jaxedit.edits.linear.fit_boundary`), ``n = coef / |coef|``; optional conditional
  boundaries (the primal normal projected off the conditions' normals,
  :func:`jaxedit.edits.linear.project_off`);
- :func:`ganspace`: exact PCA of W samples (:func:`jaxedit.edits.linear.pca_directions`);
- provenance: :func:`generator_identity` (the generator's name and the sha256 of its parameters),
  :func:`check_provenance` (refuse a direction made for another generator or space) and the
  in-distribution strength range (:func:`strength_range`, :func:`default_strengths`).

Strength range: the edits that move the samples' *mean* projection onto the direction by up to
``STRENGTH_STD`` (3) standard deviations of the samples' projections. InterFaceGAN in W adds
``t n``: ``[-3 sd, +3 sd]``; in Z it sets the absolute distance: ``[mean - 3 sd, mean + 3 sd]``
(about [-3, 3], the reference's default, since z.n ~ N(0, 1)); GANSpace's strength is already in
standard deviations of the component: ``[-3, 3]``.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.edits import linear
from jaxedit.errors import InputError
from jaxedit.parallel import chunked_map

RATIO = 0.02  # InterFaceGAN's chosen_num_or_ratio
STRENGTH_STD = 3.0  # the strength range reaches this many standard deviations of the samples' projections

Array = jax.Array


# ----------------------------------------------------------------------------- provenance
def params_sha256(params: Any) -> str:
    """sha256 (hex) of a parameter pytree: every leaf's key path, dtype, shape and little-endian bytes,
    in sorted key-path order. The same weights give the same hash however they were stored."""
    h = hashlib.sha256()
    leaves = sorted((jax.tree_util.keystr(k), np.asarray(v)) for k, v in jax.tree_util.tree_leaves_with_path(params))
    for path, a in leaves:
        a = np.ascontiguousarray(a, a.dtype.newbyteorder("<"))
        h.update(f"{path}|{a.dtype.str}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def generator_identity(path: str | Path, params: Any) -> dict[str, str]:
    """``{'name': checkpoint directory name, 'sha256': params_sha256(params)}``; the hash is the identity."""
    return {"name": Path(path).name, "sha256": params_sha256(params)}


def check_provenance(provenance: dict[str, Any] | None, generator_name: str, generator_sha256: str,
                     space: str) -> None:
    """Raise :class:`InputError` unless a direction made as ``provenance`` records fits this generator
    (same parameter sha256) and latent space; the message names both. Missing fields (released
    direction files carry none) are not checked."""
    prov = provenance or {}
    made = prov.get("generator") or {}
    other_gen = made.get("sha256") not in (None, generator_sha256)
    other_space = prov.get("space") not in (None, space)
    if other_gen or other_space:
        made_for = _describe(made.get("name"), made.get("sha256"), prov.get("space"))
        raise InputError(f"the directions were made for {made_for}, not for "
                         f"{_describe(generator_name, generator_sha256, space)}")


def _describe(name, sha256, space) -> str:
    return f"generator {name} (sha256 {str(sha256)[:12]}) in {str(space).upper()} space"


def strength_range(projections: Array, *, absolute: bool, k: float = STRENGTH_STD) -> list[float]:
    """In-distribution strengths ``[lo, hi]`` of an edit along a unit direction, from the samples'
    projections ``[N]`` onto it: ``mean +- k sd`` for an absolute edit (InterFaceGAN Z), ``+- k sd``
    for an additive one."""
    p = np.asarray(projections, np.float64)
    mu, sd = (float(p.mean()) if absolute else 0.0), float(p.std())
    return [mu - k * sd, mu + k * sd]


def default_strengths(provenance: dict[str, Any] | None, num: int = 7) -> np.ndarray | None:
    """``num`` strengths spanning the recorded ``strength_range`` (float32 ``[num]``), or ``None``."""
    rng = (provenance or {}).get("strength_range")
    return None if rng is None else np.linspace(rng[0], rng[1], num).astype(np.float32)


# ----------------------------------------------------------------------------- samples
def _latents(G, gp, z: Array, space: str, psi: float) -> Array:
    """z ``[B, z_dim]`` -> Z ``[B, z_dim]`` or W ``[B, w_dim]`` (the first W+ row; all rows are equal)."""
    return z if space == "z" else G.mapping(gp, z, psi=psi)[:, 0]


def sample_latents(G, gp, z: Array, *, space: str, psi: float = 1.0, batch: int = 1024) -> Array:
    """Latents of ``z [N, z_dim]`` in ``space`` (``'z'`` or ``'w'``) -> ``[N, d]`` (one program)."""
    run = jax.jit(lambda gp, z: chunked_map(lambda zb: _latents(G, gp, zb, space, psi), z, batch))
    return run(gp, jnp.asarray(z))


def sample_and_score(G, gp, z: Array, score: Callable[[Any, Array], Array], sparams: Any, *, space: str,
                     psi: float = 1.0, batch: int = 256) -> tuple[Array, Array]:
    """Latents ``[N, d]`` of ``z [N, z_dim]`` and scores ``[N, A]`` of their images.

    ``score(sparams, images [b, H, W, 3] in [-1, 1]) -> [b, A]`` is any classifier (e.g.
    :func:`probe_factors`). One compiled program, ``batch`` images at a time.
    """
    def chunk(gp, sp, zb):
        ws = G.mapping(gp, zb, psi=psi)
        img = jnp.clip(G.synthesis(gp, ws), -1, 1)
        return (zb if space == "z" else ws[:, 0]), score(sp, img)

    run = jax.jit(lambda gp, sp, z: chunked_map(lambda zb: chunk(gp, sp, zb), z, batch))
    return run(gp, sparams, jnp.asarray(z))


def probe_factors(P) -> Callable[[Any, Array], Array]:
    """The shapes-world probe ``P`` as a scorer: images -> its factor columns ``[b, 12]``
    (:data:`jaxedit.data.shapes.FACTOR_NAMES`, each in [0, 1])."""
    return lambda pp, img: P(pp, img)["factors"]


# ----------------------------------------------------------------------------- InterFaceGAN
class InterFaceGANFit(NamedTuple):
    normal: Array  # [d] unit: the edit direction (primal, or projected off the conditions)
    primal: Array  # [d] unit: the SVM normal of the target scores
    val_accuracy: Array  # [] primal SVM accuracy on the held-out 30 %
    train_accuracy: Array  # []
    conditions: Array  # [M, d] unit normals of the condition scores (M = 0: none)
    condition_val_accuracy: Array  # [M]
    projections: Array  # [N] latents . normal


def interfacegan(latents: Array, scores: Array, *, key: Array, condition_scores: Array | None = None,
                 ratio: float = RATIO, val_split: float = 0.3, C: float = 1.0) -> InterFaceGANFit:
    """InterFaceGAN boundary of ``scores [N]`` over ``latents [N, d]``.

    Top / bottom ``ratio`` of the scores are positives / negatives, split ``1 - val_split`` /
    ``val_split``, linear SVM with ``C``; ``normal = coef / |coef|`` points towards higher scores.
    ``condition_scores [N, M]``: each column gets its own boundary the same way, and the edit
    direction is the primal normal projected off theirs (conditional manipulation).
    """
    keys = jax.random.split(key, 1 + (0 if condition_scores is None else condition_scores.shape[1]))
    prim = linear.fit_boundary(latents, scores, ratio, val_split, keys[0], C)
    conds = [linear.fit_boundary(latents, condition_scores[:, m], ratio, val_split, keys[1 + m], C)
             for m in range(len(keys) - 1)]
    cn = jnp.stack([b.normal for b in conds]) if conds else jnp.zeros((0, prim.normal.shape[0]))
    normal = linear.project_off(prim.normal, cn) if conds else prim.normal
    return InterFaceGANFit(normal, prim.normal, prim.val_accuracy, prim.train_accuracy, cn,
                           jnp.asarray([b.val_accuracy for b in conds]), jnp.asarray(latents) @ normal)


# ----------------------------------------------------------------------------- GANSpace
def ganspace(G, gp, key: Array, *, num: int, components: int, psi: float = 1.0, batch: int = 10_000) -> dict:
    """Exact PCA of ``ceil(num / batch) * batch`` W samples (fresh z from ``key``), on device.

    Returns :func:`jaxedit.edits.linear.pca_directions`' dict: ``comp [components, w_dim]``,
    ``stdev [components]`` (lat_stdev), ``mean [w_dim]``, ``var_ratio [components]``.
    """
    n_batches = -(-num // batch)

    def pca(gp, key):
        def sample(k):
            return _latents(G, gp, jax.random.normal(k, (batch, G.cfg.z_dim)), "w", psi)

        return linear.pca_directions(sample, components, key=key, n_batches=n_batches)

    return jax.jit(pca)(gp, key)
