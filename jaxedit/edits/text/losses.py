"""What every text-guided method shares: unit vectors, the CLIP cosine, the identity term, layer checks.

CLIP enters only as arguments (``image_embed``, text embeddings), so any CLIP works.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from jaxedit.errors import InputError
from jaxedit.models.stylegan2 import StyleGAN2

Array = jax.Array
ImageEmbed = Callable[[Array], Array]
Styles = dict[str, Array]


def unit(x: Array, axis: int = -1) -> Array:
    """``x / |x|`` along ``axis`` (0 stays 0)."""
    n = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.where(n > 0, n, 1.0)


def l2_norm(x: Array) -> Array:
    """``|x|_2`` over all entries, with gradient 0 (not NaN) at ``x = 0``."""
    sq = jnp.sum(jnp.square(x))
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def clip_cosine(image_embed: ImageEmbed, images: Array, text_emb: Array) -> Array:
    """Cosine between CLIP embeddings of ``images [B, H, W, 3]`` and ``text_emb [B, D]`` (or ``[D]``): ``[B]``."""
    return jnp.sum(unit(image_embed(images)) * unit(text_emb), axis=-1)


def check_layer(G: StyleGAN2, layer: str) -> tuple[int, ...]:
    names = G.cfg.layer_ws()
    if layer not in names:
        raise InputError(f"unknown layer {layer!r}; modulated layers are {list(names)}")
    return G.layer_weight_shape(layer)


def identity_loss(identity: ImageEmbed, images: Array, reference_features: Array) -> Array:
    """StyleCLIP's ``IDLoss`` with any feature extractor: ``1 - cos(identity(images), reference_features)``, ``[B]``.

    ``identity(images [B, H, W, 3] in [-1, 1]) -> [B, F]`` must be pure and row-independent; the
    reference uses ArcFace (IR-SE50) on the 188x188 face crop resized to 112 (faces only), which a
    user passes in as such a callable."""
    return 1.0 - jnp.sum(unit(identity(images)) * unit(reference_features), axis=-1)


def minimize(loss: Callable[[Array], tuple[Array, Any]], x0: Array, optimizer: optax.GradientTransformation,
             steps: int) -> tuple[Array, Any]:
    """``steps`` updates of ``x0`` by ``optimizer`` in one ``lax.scan``; ``loss(x) -> (scalar, aux)``.
    -> ``(x, aux of every step [steps, ...])`` (aux before that step's update)."""

    def step(carry, _):
        x, state = carry
        (_, aux), g = jax.value_and_grad(loss, has_aux=True)(x)
        upd, state = optimizer.update(g, state, x)
        return (optax.apply_updates(x, upd), state), aux

    (x, _), history = jax.lax.scan(step, (x0, optimizer.init(x0)), length=steps)
    return x, history
