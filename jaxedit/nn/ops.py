"""Stateless array ops shared by the models: activations, resampling, convolutions.

Layouts: activations NHWC ``[B, H, W, C]``, conv kernels HWIO ``[kh, kw, Cin, Cout]``.

Resampling uses the StyleGAN FIR filter ``[1, 3, 3, 1]`` (outer product, normalized to
sum 1, gain ``up**2`` on up-sampling). Instead of the reference's zero insertion plus a
depthwise FIR pass (a grouped conv, pathological on XLA:CPU), up-sampling is written in
polyphase form: each output phase is a short weighted sum of shifted inputs, which XLA
fuses into neighbouring element-wise work. Both are exactly the reference's linear maps
(same taps, same zero padding).

Measured here (experiments/bench_generator.py, 2-core Zen 5): folding the transposed conv
and the FIR into one 3x3 polyphase kernel with 4x the output channels costs 1.6-2x the
reference's conv FLOPs and was 2-4x slower per layer than the exact-tap phases used below.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from jaxedit.errors import InputError

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
        raise InputError(f"unknown activation {act!r}")
    if gain != 1.0:
        x = x * gain
    if clamp is not None:
        x = jnp.clip(x, -clamp, clamp)
    return x


def conv2d(x: jax.Array, w: jax.Array) -> jax.Array:
    """Stride-1 correlation with 'same' zero padding (odd kernels). x NHWC, w HWIO.

    1x1 kernels run as a matmul: XLA:CPU's conv path was measured 10x slower for them
    (e.g. ToRGB, 3 output channels).
    """
    kh, kw = w.shape[:2]
    if (kh, kw) == (1, 1):
        return jnp.einsum("bhwi,io->bhwo", x, w[0, 0])
    return _conv_same(x, w)


def _same(w: jax.Array) -> tuple[tuple[int, int], tuple[int, int]]:
    return (w.shape[0] // 2, w.shape[0] // 2), (w.shape[1] // 2, w.shape[1] // 2)


@jax.custom_vjp
def _conv_same(x: jax.Array, w: jax.Array) -> jax.Array:
    """'same' stride-1 conv whose backward pass is written as two forward-form convs.

    XLA:CPU rewrites the transposed convs of autodiff's VJP into fast kernels only at the top
    level of a program: inside ``lax.scan`` / ``while`` (every optimization loop of
    ``jaxedit.edits.text``) they ran a generic loop, measured 80x slower (a 3x3, 64-channel,
    16x16, batch-32 gradient step in a scan: 17.4 s vs 0.21 s). Written as forward convs they
    are fast everywhere: dx = conv(dy, flipped w with in/out swapped); dw = conv of x with dy
    with the batch axis as the contraction (channels of x as the batch).
    """
    return _conv(x, w, _same(w))


def _conv_same_fwd(x, w):
    return _conv(x, w, _same(w)), (x, w)


def _conv_same_bwd(res, dy):
    x, w = res
    pad = _same(w)
    dx = _conv(dy, jnp.flip(w, (0, 1)).swapaxes(2, 3), pad)
    dw = _conv(x.transpose(3, 1, 2, 0), dy.transpose(1, 2, 0, 3), pad)  # [I, kh, kw, O]
    return dx, dw.transpose(1, 2, 0, 3)


_conv_same.defvjp(_conv_same_fwd, _conv_same_bwd)


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


def _fir_phases(even: jax.Array, odd: jax.Array, axis: int) -> jax.Array:
    """FIR (taps [1,3,3,1]/4, zero padding 1) of a signal given by its phases, interleaved.

    ``even[m] = y[2m]`` and ``odd[m] = y[2m+1]`` for m in 0..n (``odd[n]`` is the zero just past
    the signal's end); returns ``z`` of length 2n along ``axis`` with ``z[p] = sum_t y[p+t-1] g[t]``.
    """
    g0, g1, g2, g3 = (t / 4.0 for t in FIR_TAPS)
    n = even.shape[axis] - 1
    sl = lambda a, lo, hi: jax.lax.slice_in_dim(a, lo, hi, axis=axis)
    o_prev = jnp.concatenate([jnp.zeros_like(sl(odd, 0, 1)), sl(odd, 0, n - 1)], axis=axis)
    e0, e1, o0, o1 = sl(even, 0, n), sl(even, 1, n + 1), sl(odd, 0, n), sl(odd, 1, n + 1)
    z_even = g0 * o_prev + g1 * e0 + g2 * o0 + g3 * e1
    z_odd = g0 * e0 + g1 * o0 + g2 * e1 + g3 * o1
    shape = list(z_even.shape)
    shape[axis] *= 2
    return jnp.stack([z_even, z_odd], axis=axis + 1).reshape(shape)


def _conv(x: jax.Array, w: jax.Array, padding) -> jax.Array:
    return jax.lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))


@jax.custom_vjp
def up_conv2d(x: jax.Array, w: jax.Array) -> jax.Array:
    """The reference up-sampling 3x3 conv: transposed conv (stride 2) then the FIR, [B,H,W,I] -> [B,2H,2W,O].

    The transposed conv ``y[2i+k] += x[i] W[k]`` (length 2H+1 per axis) is computed per
    output phase with exactly its 9 taps: even rows/cols see ``x[m-1] W[2] + x[m] W[0]``, odd
    ones ``x[m] W[1]``, i.e. four small ordinary convs (2x2, 2x1, 1x2, 1x1 kernels) over the
    low-resolution input. The FIR (padding 1, gain 4) is then applied to the phases and
    interleaves them. Same FLOPs as the reference's transposed conv, no zero insertion, no
    grouped/depthwise conv (both slow on XLA:CPU).

    Reverse mode uses a hand-written VJP: XLA's autodiff of the small phase convs was about
    5x slower than the forward (weight gradients of 2x2 kernels); the adjoint is the FIR's
    transpose, one stride-2 conv for dx and one matmul for dW. Consequence: forward-mode
    (``jax.jvp``, ``jacfwd``) through this op is not available; ``grad`` to any order is.
    """
    return _up_conv2d_phases(x, w)


def _up_conv2d_phases(x: jax.Array, w: jax.Array) -> jax.Array:
    if w.shape[:2] != (3, 3):
        raise InputError(f"up-sampling conv expects a 3x3 kernel, got {w.shape}")
    both, last = ((1, 1), (1, 1)), ((0, 1), (0, 1))
    taps2 = lambda v: jnp.stack([v[2], v[0]])  # correlation window (x[m-1], x[m]) <- (W[2], W[0])
    ee = _conv(x, jnp.stack([taps2(w[2]), taps2(w[0])]), both)
    eo = _conv(x, taps2(w[:, 1])[:, None], (both[0], last[1]))
    oe = _conv(x, taps2(w[1])[None], (last[0], both[1]))
    oo = jnp.pad(jnp.einsum("bhwi,io->bhwo", x, w[1, 1]), ((0, 0), last[0], last[1], (0, 0)))
    return _fir_phases(_fir_phases(ee, oe, 1), _fir_phases(eo, oo, 1), 2)


def _fir_full(t: jax.Array) -> jax.Array:
    """The FIR step alone on the transposed conv's full output: [B,2H+1,2W+1,C] -> [B,2H,2W,C]."""
    g = [v / 4.0 for v in FIR_TAPS]
    for axis in (1, 2):
        n = t.shape[axis] - 1
        pad = [(0, 0)] * t.ndim
        pad[axis] = (1, 1)
        tp = jnp.pad(t, pad)
        t = sum(gj * jax.lax.slice_in_dim(tp, j, j + n, axis=axis) for j, gj in enumerate(g))
    return t


def _up_conv2d_fwd(x, w):
    return _up_conv2d_phases(x, w), (x, w)


def _up_conv2d_bwd(res, dy):
    x, w = res
    b, h, wd, i = x.shape
    o = w.shape[-1]
    _, fir_vjp = jax.vjp(_fir_full, jnp.zeros((b, 2 * h + 1, 2 * wd + 1, o), dy.dtype))
    (dt,) = fir_vjp(dy)  # cotangent of the transposed conv's output
    dx = jax.lax.conv_general_dilated(dt, jnp.swapaxes(w, 2, 3), (2, 2), "VALID",
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))
    taps = jnp.concatenate([dt[:, ky:ky + 2 * h:2, kx:kx + 2 * wd:2] for ky in range(3) for kx in range(3)], axis=-1)
    dw = (x.reshape(-1, i).T @ taps.reshape(-1, 9 * o)).reshape(i, 3, 3, o).transpose(1, 2, 0, 3)
    return dx, dw


up_conv2d.defvjp(_up_conv2d_fwd, _up_conv2d_bwd)
