"""Curvilinear edits (DeCurvEd): move along the coordinate axes of a flow ``f: Z -> V``.

Edit by ``t`` along axis ``k``: ``phi_k^t(z) = f^-1(f(z) + t e_k)``. Edits commute by
construction, and several at once cost ONE inverse solve: ``f^-1(f(z) + sum_k t_k e_k)``.
Every function takes the flow handle (:class:`jaxedit.models.flows.CNF`), its params and
solver options (``rtol``, ``atol``, ``steps``) and is batched over latents (and axes and
strengths for :func:`sweep`): one forward solve, one batched inverse solve.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

Array = jax.Array


def edit(flow, params, z: Array, coords: Array, **solver) -> Array:
    """``f^-1(f(z) + coords)``: z, coords ``[B, d]`` -> ``[B, d]``."""
    return flow.inverse(params, flow.forward(params, z, **solver) + coords, **solver)


def edit_axes(flow, params, z: Array, k: Array, t: Array, *, logp: bool = False, hutchinson_key=None, **solver):
    """Shift by ``t [B]`` along axis ``k [B]`` (int) per row: z ``[B, d]`` -> z' ``[B, d]``, or
    ``(z', delta_logp [B])`` with ``logp=True`` (the inverse solve's log-density change: the
    discovery trainer's regularizer)."""
    d = flow.cfg.dim
    v = flow.forward(params, z, **solver) + jnp.asarray(t, z.dtype)[:, None] * jax.nn.one_hot(k, d, dtype=z.dtype)
    return flow.inverse(params, v, logp=logp, hutchinson_key=hutchinson_key, **solver)


def multi_edit(flow, params, z: Array, t: Array, **solver) -> Array:
    """Several axes at once: ``t [B, K]`` shifts axes ``0..K-1`` (K <= d) in one inverse solve."""
    coords = jnp.pad(jnp.asarray(t, z.dtype), ((0, 0), (0, flow.cfg.dim - t.shape[1])))
    return edit(flow, params, z, coords, **solver)


def sweep(flow, params, z: Array, axes: Array, strengths: Array, **solver) -> Array:
    """Every (axis, strength, latent): z ``[B, d]``, axes ``[A]``, strengths ``[S]`` -> ``[A, S, B, d]``
    (one forward solve of B latents, one inverse solve of A*S*B)."""
    d = flow.cfg.dim
    v = flow.forward(params, z, **solver)
    e = jax.nn.one_hot(jnp.asarray(axes), d, dtype=z.dtype)  # [A, d]
    V = v[None, None] + jnp.asarray(strengths, z.dtype)[None, :, None, None] * e[:, None, None, :]
    A, S, B = V.shape[:3]
    return flow.inverse(params, V.reshape(A * S * B, d), **solver).reshape(A, S, B, d)
