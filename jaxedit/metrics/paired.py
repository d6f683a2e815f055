"""Paired image metrics: LPIPS distance and ArcFace identity similarity of image i of set A against
image i of set B, streamed batch by batch.

    lp, lpp = jaxedit.load(lpips_ckpt)                       # kind "lpips"
    d = paired_scores(lpips_score(lp, lpp), pairs, batch=16)  # [N] float64
    arc, ap = jaxedit.load(arcface_ckpt)                     # kind "arcface"
    s = paired_scores(identity_score(arc, ap), pairs, batch=16)
    summary(d)                                                # {"n", "mean", "std"}

``pairs`` is any iterable of ``(a [b, H, W, 3], b [b, H, W, 3])`` batches in [-1, 1]; every batch is
padded to the first one's size so the metric compiles once.

Identity is pSp / e4e's (``criteria/id_loss.py``): both images go through :func:`identity_input`
(area-pooled to 256 x 256 unless already 256, the ``[35:223, 32:220]`` face crop, area-pooled to the
ArcFace input size, 112), the IR-SE ArcFace embeds them (unit norm), and the score is the cosine
``<f(a), f(b)>``. The crop assumes FFHQ-aligned faces; ``crop="none"`` pools the whole image instead
(other data). pSp's ``calc_id_loss_parallel.py`` evaluates with a CurricularFace IR-101 after MTCNN
alignment instead; that network is not supported here.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.errors import InputError
from jaxedit.models.irse import ArcFace, adaptive_avg_pool, face_crop
from jaxedit.models.lpips import LPIPS
from jaxedit.parallel import pad_batch

CROPS = ("face", "none")
#: pSp / e4e pool every image to this side before the face crop.
FACE_SIDE = 256

PairScore = Callable[[jax.Array, jax.Array], jax.Array]


def lpips_score(lp: LPIPS, params: dict) -> PairScore:
    """``(a [B, H, W, 3], b [B, H, W, 3]) -> [B]`` LPIPS distances (0 for identical images)."""
    return lambda a, b: lp(params, a, b)


def identity_input(images: jax.Array, size: int, crop: str = "face") -> jax.Array:
    """ArcFace input of images ``[B, R, R', 3]`` in [-1, 1] -> ``[B, size, size, 3]``.

    ``crop='face'`` (pSp / e4e): square images only; adaptive average pooling to 256 x 256 unless
    already 256, the ``[35:223, 32:220]`` crop, adaptive average pooling to ``size``. ``crop='none'``:
    adaptive average pooling of the whole image to ``size``.
    """
    if crop not in CROPS:
        raise InputError(f"identity crop {crop!r}: expected one of {', '.join(CROPS)}")
    if crop == "none":
        return adaptive_avg_pool(images, size)
    if images.shape[1] != images.shape[2]:
        raise InputError(f"identity: the face crop needs square images, got {list(images.shape)} "
                         "(crop='none' pools the whole image)")
    if images.shape[1] != FACE_SIDE:
        images = adaptive_avg_pool(images, FACE_SIDE)
    return face_crop(images, size)


def identity_embedding(arc: ArcFace, params: dict, crop: str = "face") -> Callable[[jax.Array], jax.Array]:
    """``images [B, H, W, 3] -> [B, embed_dim]`` unit-norm ArcFace embeddings of :func:`identity_input`."""
    return lambda x: arc(params, identity_input(x, arc.cfg.input_size, crop))


def identity_score(arc: ArcFace, params: dict, crop: str = "face") -> PairScore:
    """``(a, b) -> [B]`` cosine similarity of the ArcFace embeddings (1 for identical images)."""
    embed = identity_embedding(arc, params, crop)
    return lambda a, b: jnp.sum(embed(a) * embed(b), axis=-1)


def paired_scores(score: PairScore, pairs: Iterable[tuple[Any, Any]], what: str = "pairs") -> np.ndarray:
    """``score`` of every pair of ``pairs`` (batches ``(a [b, H, W, 3], b [b, H, W, 3])``) -> ``[N]`` float64.

    One compiled program: every batch is padded to the first batch's size (a larger one is split)."""
    run = jax.jit(score)
    out, size = [], None
    for i, (a, b) in enumerate(pairs):
        a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
        if a.ndim != 4 or a.shape != b.shape or len(a) == 0:
            raise InputError(f"{what}: batch {i}: the two images of a pair must have one shape [b, H, W, 3], "
                             f"got {list(a.shape)} and {list(b.shape)}")
        size = size or len(a)
        for s in range(0, len(a), size):
            (pa, pb), n = pad_batch((a[s:s + size], b[s:s + size]), size)
            out.append(np.asarray(run(pa, pb), np.float64)[:n])
    if not out:
        raise InputError(f"{what}: no image pairs")
    return np.concatenate(out)


def summary(values: np.ndarray) -> dict[str, float | int]:
    """``{"n", "mean", "std"}`` of per-image scores ``[N]`` (std with ddof 0, as pSp's scripts)."""
    v = np.asarray(values, np.float64)
    return {"n": int(v.size), "mean": float(v.mean()), "std": float(v.std())}
