"""Latents2Semantics local style edits (:mod:`jaxedit.models.l2sae`): one forward pass per edit, no inversion.

``editor = LocalStyle(model, params)`` is a pytree (the parameters are its leaves, the model handle static),
so every function here is an ordinary argument of ``jax.jit`` / ``jax.vmap``. For images ``x [B, H, W, 3]``,
region indices ``region`` (int or ``[B]``) and a new style per image::

    x' = m_r * D(s, g') + (1 - m_r) * x          (the paper's composite)

with ``s, g = E(x)``, ``m_r`` region r's mask from the structure group r (:meth:`L2SAE.masks`) and ``g'``:

- :func:`style_noise`: ``g + sigma * L eta``, ``eta ~ N(0, I)`` from ``key`` (one key per image, or per draw),
  ``L`` the model's ``style_spread`` (``L L^T`` = the covariance of the training images' styles: sigma 1 moves a
  style about as far as real styles differ, along the directions they vary in), scaled back to unit RMS (the
  sphere the encoder's styles lie on). A decoder fed styles off the real ones redraws geometry, not only colour:
  ``shapes32-l2sae`` version 3, 256 renders, sigma 1, the probe's shape reading flips for 53 / 21 / 2 % of images
  (background / body / spot) with isotropic noise, 2.0 / 3.9 / 0 % with the spread
  (``experiments/l2sae_recipe.py``);
- :func:`swap`: the donor's style ``E(donor).g`` (region r takes the donor's look);
- :func:`interpolate`: ``(1 - t) g + t g_donor``.

The mask is hard by default (``m_r = [argmax_regions = r]``, so every pixel outside the region is the input's
own, exactly); ``soft=True`` blends with the softmax masks (alpha compositing, as the paper's matting).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from jaxedit.errors import InputError
from jaxedit.models.l2sae import L2SAE

Array = jax.Array


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True, eq=False)
class LocalStyle:
    """A trained L2SAE as an editor pytree: ``params`` are leaves, ``model`` is static."""

    params: dict
    model: L2SAE = dataclasses.field(metadata={"static": True})

    def region_indices(self, region: str | int | Array, batch: int) -> Array:
        """A region name, index or ``[B]`` indices -> int32 ``[B]`` (names and indices are checked)."""
        if isinstance(region, str):
            region = self.model.region_index(region)
        r = jnp.asarray(region)
        if not jnp.issubdtype(r.dtype, jnp.integer):
            raise InputError(f"region must be a name or integer indices, got dtype {r.dtype}")
        return jnp.broadcast_to(r.astype(jnp.int32), (batch,))


def composite(editor: LocalStyle, images: Array, region: str | int | Array, style: Array, *,
              soft: bool = False) -> Array:
    """``m_r * D(s, style) + (1 - m_r) * images``: images ``[B, H, W, 3]``, style ``[B, d]`` -> ``[B, H, W, 3]``."""
    editor.model.check_images(images)
    r = editor.region_indices(region, images.shape[0])
    s, _ = editor.model.encode(editor.params, images)
    decoded = editor.model.decode(editor.params, s, style)
    logits = editor.model.mask_logits(editor.params, s)
    if soft:
        m = jnp.take_along_axis(jax.nn.softmax(logits, axis=-1), r[:, None, None, None], axis=-1)
    else:
        m = (jnp.argmax(logits, axis=-1) == r[:, None, None])[..., None].astype(images.dtype)
    return m * decoded + (1 - m) * images


def region_masks(editor: LocalStyle, images: Array) -> Array:
    """Hard region maps ``[B, H, W]`` (the argmax of the structure groups' masks)."""
    s, _ = editor.model.encode(editor.params, images)
    return jnp.argmax(editor.model.mask_logits(editor.params, s), axis=-1)


def style_noise(editor: LocalStyle, images: Array, region, sigma: float | Array, keys: Array, *,
                soft: bool = False) -> Array:
    """Region ``region`` of each image with its style moved by ``sigma`` x Gaussian noise shaped by the model's
    ``style_spread``; ``keys [B]`` (one draw per image; vmap over keys for several draws) -> ``[B, H, W, 3]``."""
    _, g = editor.model.encode(editor.params, images)
    eta = jax.vmap(lambda k: jax.random.normal(k, g.shape[1:], g.dtype))(keys) @ editor.params["style_spread"].T
    sigma = jnp.asarray(sigma, g.dtype)
    sigma = sigma[:, None] if sigma.ndim == 1 else sigma
    moved = g + sigma * eta
    return composite(editor, images, region, moved * jax.lax.rsqrt(jnp.mean(jnp.square(moved), -1, keepdims=True)),
                     soft=soft)


def donor_styles(editor: LocalStyle, donors: Array, batch: int) -> Array:
    """Styles ``[batch, d]`` of ``donors [batch or 1, H, W, 3]``: one donor for all is encoded once."""
    editor.model.check_images(donors, "donors")
    if donors.shape[0] not in (1, batch):
        raise InputError(f"donors: {donors.shape[0]} images for {batch}; give one donor per image or one for all")
    _, g_donor = editor.model.encode(editor.params, donors)
    return jnp.broadcast_to(g_donor, (batch, g_donor.shape[-1]))


def swap(editor: LocalStyle, images: Array, donors: Array, region, *, soft: bool = False) -> Array:
    """Region ``region`` of each image in the style of its donor (``donors [B, H, W, 3]``, or ``[1, H, W, 3]``
    for one donor: then one encoder pass per image, as a style noise edit)."""
    return composite(editor, images, region, donor_styles(editor, donors, images.shape[0]), soft=soft)


def interpolate(editor: LocalStyle, images: Array, donors: Array, region, t: float | Array, *,
                soft: bool = False) -> Array:
    """Region ``region`` with the style ``(1 - t) g + t g_donor`` (``t`` scalar or ``[B]``; donors as
    :func:`swap`)."""
    _, g = editor.model.encode(editor.params, images)
    g_donor = donor_styles(editor, donors, images.shape[0])
    t = jnp.asarray(t, g.dtype)
    t = t[:, None] if t.ndim == 1 else t
    return composite(editor, images, region, (1 - t) * g + t * g_donor, soft=soft)
