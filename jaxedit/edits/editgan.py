"""EditGAN's segmentation-driven edits (``nv-tlabs/editGAN_release``, ``EditGAN_tool.py``
``run_optimization_editGAN``), batched over images in one compiled program.

Given W+ codes ``w0 [B, L, d]`` and, per image, a target label map (the segmentation of ``G(w0)`` with some
pixels relabelled), the region of interest (ROI) is the union of the edited classes in the old and the new
map, dilated by a 3x3 window ``dilate`` times (:func:`region_of_interest`). W+ is optimized by Adam
(``lr`` 0.02, ``steps`` 30 as the released tool) on, per image::

    rgb_weight * (perceptual_weight * D(x (1 - roi), x0 (1 - roi)) + mse_weight * MSE(x (1 - roi), x0 (1 - roi)))
    + ce_weight * CE(ensemble-mean logits, target) over ROI pixels
    + encoder_weight * MSE(w, stop_gradient(E(G(w))))      (when an encoder is given)

(plus, not in the reference and off by default, ``keep_weight * MSE`` over the ROI pixels whose label stays:
the ROI of a grown spot covers the body, whose colour the reference lets drift) with ``x = G(w)``, ``x0 = G(w0)``, ``D`` a perceptual distance (LPIPS in the reference; optional here: on the
shapes world a masked image has no meaningful probe embedding, so the RGB term is the MSE alone) and the
reference's weights 15, 10, 5, 1, 1. Each image keeps its best iterate (lowest total loss). The editing
vector is ``dw = w_edited - w0`` (:class:`~jaxedit.edits.EditingVector`); re-applied as ``w + s dw`` and
optionally refined by a few steps of the same loss (:func:`refine`).

Named edits on the shapes world (:data:`SHAPES_EDITS`) build the target from the current segmentation:
``spot-grow`` / ``spot-shrink`` (the spot dilated inside the body / eroded into body), ``body-grow`` (the
shape dilated into the background, spot kept), ``spot-remove`` (the spot's class moved into the body).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError

Array = jax.Array
BACKGROUND, BODY, SPOT = 0, 1, 2


@dataclasses.dataclass(frozen=True)
class SegEditConfig(JSONConfig):
    """The released tool's optimization (``tool_car.json``: 30 steps; Adam 0.02; weights 15 (10 LPIPS + 5 MSE),
    1 encoder, 1 cross-entropy; the ROI dilated 3 times by 3x3)."""

    steps: int = 30
    lr: float = 0.02
    rgb_weight: float = 15.0
    perceptual_weight: float = 10.0
    mse_weight: float = 5.0
    ce_weight: float = 1.0
    encoder_weight: float = 1.0
    keep_weight: float = 0.0  # not in the reference: MSE on ROI pixels whose label stays (keeps their colour)
    dilate: int = 3

    def __post_init__(self):
        if self.steps < 1 or self.dilate < 0 or not self.lr > 0:
            raise InputError(f"seg-edit needs steps >= 1, dilate >= 0 and lr > 0, got {self.steps}, {self.dilate}, "
                             f"{self.lr}")


class SegEdit(NamedTuple):
    ws: Array  # [B, L, d] the best iterate per image
    vector: Array  # [B, L, d] ws - w0, the editing vector
    roi: Array  # [B, H, W] bool
    loss: Array  # [steps, B] total loss of each iterate
    best_step: Array  # [B] the iterate kept


# ----------------------------------------------------------------------------- label maps
def dilate(mask: Array, times: int = 1) -> Array:
    """3x3 binary dilation of ``mask [B, H, W]`` (bool), ``times`` times (zero padding)."""
    x = mask.astype(jnp.float32)
    for _ in range(times):
        x = jax.lax.reduce_window(x, 0.0, jax.lax.max, (1, 3, 3), (1, 1, 1), "SAME")
    return x > 0


def erode(mask: Array, times: int = 1) -> Array:
    """3x3 binary erosion (the complement's dilation)."""
    return ~dilate(~mask, times)


def region_of_interest(old: Array, new: Array, num_classes: int, times: int = 3) -> Array:
    """EditGAN's ROI: the region of every edited class (a class painted onto some pixel of the new map) in the
    old map and in the new one, dilated ``times`` times by 3x3. ``old``, ``new`` ``[B, H, W]`` int ->
    ``[B, H, W]`` bool; empty where nothing changes."""
    changed = old != new
    onehot_old, onehot_new = jax.nn.one_hot(old, num_classes, dtype=bool), jax.nn.one_hot(new, num_classes, dtype=bool)
    edited = jnp.any(onehot_new & changed[..., None], axis=(1, 2))  # [B, C]
    roi = jnp.any((onehot_old | onehot_new) & edited[:, None, None, :], axis=-1)
    return dilate(roi, times)


def _spot_grow(lab):
    spot = lab == SPOT
    return jnp.where(dilate(spot, 2) & (lab == BODY), SPOT, lab)


def _spot_shrink(lab):
    spot = lab == SPOT
    return jnp.where(spot & ~erode(spot, 1), BODY, lab)


def _body_grow(lab):
    shape = lab != BACKGROUND
    return jnp.where(dilate(shape, 2) & ~shape, BODY, lab)


def _spot_remove(lab):
    return jnp.where(lab == SPOT, BODY, lab)


#: Named shapes-world edits: label maps ``[B, H, W]`` -> target maps; with the probe factor they move (+1 up).
SHAPES_EDITS: dict[str, tuple[Callable[[Array], Array], str, int]] = {
    "spot-grow": (_spot_grow, "spot_ratio", +1),
    "spot-shrink": (_spot_shrink, "spot_ratio", -1),
    "body-grow": (_body_grow, "scale", +1),
    "spot-remove": (_spot_remove, "spot_ratio", -1),
}


# ----------------------------------------------------------------------------- the optimization
def segment(G, gparams, clf, cparams, ws: Array) -> tuple[Array, Array]:
    """-> (images ``[B, H, W, 3]``, ensemble-mean logits ``[B, H, W, C]``, nearest resampling)."""
    img, feats = G.synthesis(gparams, ws, return_features=True)
    return img, clf.segment(cparams, feats, G.cfg.img_resolution, ensemble_mean=True)


def optimize(G, gparams, clf, cparams, w0: Array, target: Array, cfg: SegEditConfig = SegEditConfig(), *,
             roi: Array | None = None, reference: Array | None = None,
             perceptual: Callable[[Array, Array], Array] | None = None,
             encoder: Callable[[Array], Array] | None = None) -> SegEdit:
    """Edit ``w0 [B, L, d]`` toward label maps ``target [B, H, W]`` (module doc). ``roi`` defaults to
    :func:`region_of_interest` of the current segmentation and the target; ``reference`` (codes ``[B, L, d]``,
    default ``w0``) gives the image kept outside the ROI; ``perceptual(a, b) -> [B]`` and
    ``encoder(images) -> [B, L, d]`` are optional terms. Jit-able; one program for every image and step."""
    x0, logits0 = segment(G, gparams, clf, cparams, w0)
    if reference is not None:
        x0 = G.synthesis(gparams, reference)
    if roi is None:
        roi = region_of_interest(jnp.argmax(logits0, axis=-1), target, clf.cfg.num_classes, cfg.dilate)
    keep = (~roi)[..., None].astype(x0.dtype)  # [B, H, W, 1]
    roi_f = roi.astype(x0.dtype)
    stays = (roi & (jnp.argmax(logits0, axis=-1) == target))[..., None].astype(x0.dtype)
    opt = optax.adam(cfg.lr)

    def loss_fn(w):  # [B, L, d] -> [B]
        x, logits = segment(G, gparams, clf, cparams, w)
        a, b = x * keep, x0 * keep
        rgb = cfg.mse_weight * jnp.mean(jnp.square(a - b), axis=(1, 2, 3))
        if perceptual is not None:
            rgb = rgb + cfg.perceptual_weight * perceptual(a, b)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, target)  # [B, H, W]
        ce = jnp.sum(ce * roi_f, axis=(1, 2)) / jnp.maximum(jnp.sum(roi_f, axis=(1, 2)), 1.0)
        total = cfg.rgb_weight * rgb + cfg.ce_weight * ce
        if cfg.keep_weight:
            total = total + cfg.keep_weight * jnp.mean(jnp.square((x - x0) * stays), axis=(1, 2, 3))
        if encoder is not None:
            total = total + cfg.encoder_weight * jnp.mean(jnp.square(w - jax.lax.stop_gradient(encoder(x))),
                                                          axis=(1, 2))
        return total

    def step(carry, _):
        w, state, best_w, best_loss, best_step, i = carry
        loss, vjp = jax.vjp(loss_fn, w)
        (grad,) = vjp(jnp.ones_like(loss))  # per-image gradients: images do not interact
        better = loss < best_loss
        best_w = jnp.where(better[:, None, None], w, best_w)
        best_loss, best_step = jnp.where(better, loss, best_loss), jnp.where(better, i, best_step)
        updates, state = opt.update(grad, state, w)
        return (optax.apply_updates(w, updates), state, best_w, best_loss, best_step, i + 1), loss

    B = w0.shape[0]
    init = (w0, opt.init(w0), w0, jnp.full((B,), jnp.inf), jnp.zeros((B,), jnp.int32), jnp.int32(0))
    (w, _, best_w, best_loss, best_step, _), losses = jax.lax.scan(step, init, None, length=cfg.steps)
    last = loss_fn(w)  # the iterate after the final update competes too
    better = last < best_loss
    best_w = jnp.where(better[:, None, None], w, best_w)
    best_step = jnp.where(better, cfg.steps, best_step)
    return SegEdit(best_w, best_w - w0, roi, jnp.concatenate([losses, last[None]]), best_step)


def transfer(G, gparams, clf, cparams, w: Array, vector: Array, scale: float | Array = 1.0,
             refine_steps: int = 0, cfg: SegEditConfig = SegEditConfig(), *, target: Array | None = None,
             **terms) -> Array:
    """Apply an editing vector ``[L, d]`` (or ``[B, L, d]``) to ``w [B, L, d]``: ``w + scale dw``; with
    ``refine_steps`` > 0, refine by that many steps of the edit loss toward the segmentation of the moved codes
    (ROI from the before and after maps, the original image kept outside it, as the tool's fine-tuning does), or
    toward ``target [B, H, W]`` when the intended label maps are known (a named edit of each image).
    -> ``[B, L, d]``."""
    moved = w + jnp.asarray(scale)[..., None, None] * vector if jnp.ndim(scale) else w + scale * vector
    if refine_steps <= 0:
        return moved
    before = jnp.argmax(segment(G, gparams, clf, cparams, w)[1], axis=-1)
    after = jnp.argmax(segment(G, gparams, clf, cparams, moved)[1], axis=-1) if target is None else target
    roi = region_of_interest(before, after, clf.cfg.num_classes, cfg.dilate)
    res = optimize(G, gparams, clf, cparams, moved, after, dataclasses.replace(cfg, steps=refine_steps), roi=roi,
                   reference=w, **terms)
    return res.ws
