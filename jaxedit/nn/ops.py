"""Stateless array ops shared by the models: activations, resampling, convolutions.

Layouts: activations NHWC ``[B, H, W, C]``, conv kernels HWIO ``[kh, kw, Cin, Cout]``.

Resampling uses the StyleGAN FIR filter ``[1, 3, 3, 1]`` (outer product, normalized to
sum 1, gain ``up**2`` on up-sampling). Instead of the reference's zero insertion plus a
depthwise FIR pass (a grouped conv, pathological on XLA:CPU), up-sampling is written in
polyphase form: each output phase is a short weighted sum of shifted inputs, and an
up-sampling 3x3 conv folds the transposed conv and the FIR into four ordinary 3x3 convs
computed as one conv with ``4 * Cout`` output channels plus a depth-to-space reshape.
Both are exactly the reference's linear maps (same taps, same zero padding).
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

SQRT2 = math.sqrt(2.0)
FIR_TAPS = (1.0, 3.0, 3.0, 1.0)


def normalize_2nd_moment(x: jax.Array, eps: float = 1e-8) -> jax.Array:
    """``x * rsqrt(mean(x**2, -1) + eps)`` over the last axis."""
    return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + eps)


def bias_act(x: jax.Array, bias: jax.Array | None, act: str = "linear", gain: float = 1.0,
             clamp: float | None = None) -> jax.Array:
    """The reference ``bias_act``: add bias (last axis), activate, scale by gain, clamp.

    ``act`` is ``'linear'`` or ``'lrelu'`` (slope 0.2, default gain sqrt(2) times ``gain``).
    """
    if bias is not None:
        x = x + bias
    if act == "lrelu":
        x = jnp.where(x >= 0, x, 0.2 * x)
        gain = gain * SQRT2
    elif act != "linear":
        raise ValueError(f"unknown activation {act!r}")
    if gain != 1.0:
        x = x * gain
    if clamp is not None:
        x = jnp.clip(x, -clamp, clamp)
    return x


def conv2d(x: jax.Array, w: jax.Array) -> jax.Array:
    """Stride-1 correlation with 'same' zero padding (odd kernels). x NHWC, w HWIO."""
    kh, kw = w.shape[:2]
    return jax.lax.conv_general_dilated(
        x, w, window_strides=(1, 1), padding=((kh // 2, kh // 2), (kw // 2, kw // 2)),
        dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _upsample_axis(x: jax.Array, axis: int) -> jax.Array:
    """2x FIR up-sampling along one axis: out[2j] = (x[j-1] + 3x[j]) / 4, out[2j+1] = (3x[j] + x[j+1]) / 4."""
    n = x.shape[axis]
    pad = [(0, 0)] * x.ndim
    pad[axis] = (1, 1)
    xp = jnp.pad(x, pad)
    prev = jax.lax.slice_in_dim(xp, 0, n, axis=axis)
    nxt = jax.lax.slice_in_dim(xp, 2, n + 2, axis=axis)
    even = 0.25 * prev + 0.75 * x
    odd = 0.75 * x + 0.25 * nxt
    out = jnp.stack([even, odd], axis=axis + 1)
    shape = list(x.shape)
    shape[axis] = 2 * n
    return out.reshape(shape)


def upsample2d(x: jax.Array) -> jax.Array:
    """The reference ``upfirdn2d.upsample2d`` with the [1,3,3,1] filter: [B,H,W,C] -> [B,2H,2W,C]."""
    return _upsample_axis(_upsample_axis(x, 1), 2)


def _phase_matrix() -> np.ndarray:
    """Q[a, u, k]: weight of 3x3-kernel tap k in output phase a at input offset u-1.

    The reference up-sampling conv is ``conv_transpose(stride 2, pad 0)`` (out[2i+k] +=
    x[i] W[k], length 2H+1) followed by the FIR with padding (1, 1) and per-axis gain 2.
    Combined, ``out[2j+a] = sum_u x[j+u-1] * sum_k Q[a,u,k] W[k]``.
    """
    g = np.asarray(FIR_TAPS) / np.sum(FIR_TAPS) * 2.0  # per-axis taps with the up**2 gain split
    m = np.zeros((6, 3))  # combined kernel K[r + 2] = sum_{k - t + 1 = r} W[k] g[t], r in [-2, 3]
    for k in range(3):
        for t in range(4):
            m[k - t + 3, k] += g[t]
    q = np.zeros((2, 3, 3))
    for a in range(2):
        for u in range(3):
            q[a, u] = m[a - 2 * u + 4]
    return q


_PHASES = _phase_matrix()


def up_conv_kernel(w: jax.Array) -> jax.Array:
    """Fold a 3x3 kernel of the reference up-sampling conv into a polyphase kernel.

    Args: w ``[3, 3, Cin, Cout]``. Returns ``[3, 3, Cin, 4 * Cout]`` whose output channels
    are ordered (row phase, column phase, Cout) for :func:`depth_to_space`.
    """
    if w.shape[:2] != (3, 3):
        raise ValueError(f"up-sampling conv expects a 3x3 kernel, got {w.shape}")
    q = jnp.asarray(_PHASES, w.dtype)
    k = jnp.einsum("auk,bvl,klio->uviabo", q, q, w)
    return k.reshape(3, 3, w.shape[2], 4 * w.shape[3])


def depth_to_space(x: jax.Array) -> jax.Array:
    """[B, H, W, (2, 2, C)] -> [B, 2H, 2W, C] (inverse of the polyphase split)."""
    b, h, w, c4 = x.shape
    c = c4 // 4
    x = x.reshape(b, h, w, 2, 2, c).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, 2 * h, 2 * w, c)


def up_conv2d(x: jax.Array, w: jax.Array) -> jax.Array:
    """The reference up-sampling 3x3 conv (transposed conv stride 2 + FIR): [B,H,W,I] -> [B,2H,2W,O]."""
    return depth_to_space(conv2d(x, up_conv_kernel(w)))
