"""WarpedGANSpace RBF vector fields (Tzelepis et al., ICCV'21; ``chi0tzp/WarpedGANSpace``).

Path ``k`` is the gradient flow of ``f_k(z) = sum_i alpha_{k,i} exp(-gamma_k |z - s_{k,i}|^2)``
over ``2N`` support vectors (N dipoles), ``gamma_k = exp(log_gamma_k)``. One step is
``z <- z + eps * grad f_k(z) / |grad f_k(z)|`` with the analytic gradient
``grad f_k(z) = -2 gamma_k sum_i alpha_i exp(-gamma_k |z - s_i|^2) (z - s_i)``.

Parameters are a dict (see :func:`jaxedit.edits.formats.load_warped`; :class:`jaxedit.edits.Warped` holds them)::

    {'support_sets': [K, 2N, d], 'alphas': [K, 2N], 'log_gamma': [K]}

A path's rows are gathered (``support_sets[k]``); the reference instead multiplies a dense
one-hot ``[B, K]`` mask by the flattened ``[K, 2N*d]`` table.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp

from jaxedit import parallel
from jaxedit.errors import InputError

Array = jax.Array
Params = dict[str, Array]


def _path(params: Params, k: int | Array) -> tuple[Array, Array, Array]:
    """Path k's support ``[2N, d]``, alphas ``[2N]`` and gamma ``[]`` (a gather; k may be traced)."""
    s = jnp.take(params["support_sets"], k, axis=0)
    a = jnp.take(params["alphas"], k, axis=0)
    g = jnp.exp(jnp.take(jnp.reshape(params["log_gamma"], (-1,)), k, axis=0))
    return s, a, g


def field(params: Params, z: Array, k: int | Array) -> Array:
    """``f_k(z)``: z ``[..., d]`` -> ``[...]``."""
    s, a, g = _path(params, k)
    diff = z[..., None, :] - s  # [..., 2N, d]
    return jnp.sum(a * jnp.exp(-g * jnp.sum(diff * diff, axis=-1)), axis=-1)


def grad_f(params: Params, z: Array, k: int | Array) -> Array:
    """Analytic ``grad f_k(z) = -2 gamma_k sum_i alpha_i exp(-gamma_k |z - s_i|^2)(z - s_i)``: ``[..., d]``."""
    s, a, g = _path(params, k)
    diff = z[..., None, :] - s  # [..., 2N, d]
    w = a * jnp.exp(-g * jnp.sum(diff * diff, axis=-1))  # [..., 2N]
    return -2.0 * g * jnp.einsum("...i,...id->...d", w, diff)


def unit_grad(params: Params, z: Array, k: int | Array) -> Array:
    """``grad f_k(z) / |grad f_k(z)|`` ``[..., d]`` (0 where the gradient vanishes)."""
    g = grad_f(params, z, k)
    norm = jnp.linalg.norm(g, axis=-1, keepdims=True)
    return g / jnp.where(norm > 0, norm, 1.0)


def unit_step(params: Params, z: Array, k: int | Array, eps: float | Array) -> Array:
    """One step ``z + eps * grad f_k(z) / |grad f_k(z)|``; z ``[..., d]``, eps scalar or broadcastable."""
    return z + jnp.asarray(eps, z.dtype)[..., None] * unit_grad(params, z, k)


def walk(params: Params, z: Array, k: int | Array, steps: int, eps: float | Array) -> Array:
    """``steps`` successive unit steps along path k: z ``[B, d]`` -> ``[steps, B, d]`` (z after each step)."""
    def body(zc, _):
        zn = unit_step(params, zc, k, eps)
        return zn, zn

    return jax.lax.scan(body, z, None, length=steps)[1]


@functools.partial(jax.jit, static_argnames=("steps",))
def traverse(params: Params, z: Array, steps: int, eps: float | Array = 0.2) -> Array:
    """Traverse ALL paths both ways from z: ``[B, d]`` -> ``[K, 2*steps + 1, B, d]``.

    Index ``steps`` along axis 1 is z itself; ``steps + j`` is z after ``j`` steps of ``+eps``,
    ``steps - j`` after ``j`` steps of ``-eps`` (so axis 1 runs from the negative end to the
    positive end, like the reference's traversal strip). One jitted program: vmap over
    paths x directions, ``lax.scan`` over steps (reference defaults: eps 0.2, 16 steps per side).
    """
    K = params["support_sets"].shape[0]
    ks = jnp.arange(K)
    signs = jnp.asarray([-1.0, 1.0], z.dtype)
    eps = jnp.asarray(eps, z.dtype)
    per_sign = jax.vmap(lambda k, sg: walk(params, z, k, steps, sg * eps), in_axes=(None, 0))
    out = jax.vmap(lambda k: per_sign(k, signs))(ks)  # [K, 2, steps, B, d]
    center = jnp.broadcast_to(z, (K, 1) + z.shape)
    return jnp.concatenate([out[:, 0, ::-1], center, out[:, 1]], axis=1)


def reference_frames(path: Array) -> Array:
    """The codes the reference *renders* for a traversal ``[..., 2S+1, B, d]``.

    ``traverse_latent_space.py`` renders ``G(z_t + shift_t)``: each stored code plus its last
    step again. Returns ``2 z_t - z_{t-1}`` on the positive side, ``2 z_t - z_{t+1}`` on the
    negative side and z itself at the center (use this only for pixel parity).
    """
    S = (path.shape[-3] - 1) // 2
    center = path[..., S:S + 1, :, :]
    pos = 2 * path[..., S + 1:, :, :] - path[..., S:-1, :, :]
    neg = 2 * path[..., :S, :, :] - path[..., 1:S + 1, :, :]
    return jnp.concatenate([neg, center, pos], axis=-3)


def render(G: Any, gparams: Any, latents: Array, batch: int = 16, space: str = "z", psi: float = 1.0,
           noise_mode: str = "const") -> Array:
    """Render latents ``[..., d]`` (e.g. a traversal ``[K, 2S+1, B, d]``) to images ``[..., H, W, C]``.

    ``space='z'`` maps with ``G.mapping`` (truncation ``psi``) first, ``'w'`` feeds W codes to
    every layer. The flattened latents are rendered ``batch`` at a time
    (:func:`jaxedit.parallel.chunked_map`): one compiled program per (shape, batch).
    """
    if space not in ("z", "w"):
        raise InputError(f"space must be 'z' or 'w', got {space!r}")
    return _render(G, gparams, jnp.asarray(latents), batch, space, psi, noise_mode)


@functools.partial(jax.jit, static_argnums=(0, 3, 4, 6))
def _render(G, gparams, latents, batch, space, psi, noise_mode):
    lead, d = latents.shape[:-1], latents.shape[-1]

    def one(x):
        ws = G.mapping(gparams, x, psi=psi) if space == "z" else x
        return G.synthesis(gparams, ws, noise_mode=noise_mode)

    imgs = parallel.chunked_map(one, latents.reshape(-1, d), batch)
    return imgs.reshape(tuple(lead) + imgs.shape[1:])
