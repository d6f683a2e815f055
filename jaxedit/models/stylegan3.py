"""StyleGAN3 generator (configs T and R, NVlabs/stylegan3 ``networks_stylegan3``) in Flax NNX.

Numerically the reference's float32 path (``filtered_lrelu`` ``_ref`` implementation):
mapping as StyleGAN2's (its own ``w_avg``); a Fourier-feature input layer whose frequencies
and phases are rotated/translated by an affine of ``ws[:, 0]`` and by the user ``transform``
(the reference's ``synthesis.input.transform`` buffer: the *inverse* transform of the image);
``num_layers`` modulated convs (3x3 in T, 1x1 in R) whose input is scaled by
``rsqrt(magnitude_ema)``, each followed by the filtered leaky ReLU (bias, up-sampling by the
layer's ``up_filter``, leaky ReLU with gain sqrt(2) and clamp, down-sampling by its
``down_filter``; R's non-critical layers down-sample with a radial (jinc) 2-D filter); a
ToRGB layer without demodulation; output scaled by ``output_scale``.

Parameters are a plain nested dict mirroring the reference's state-dict names (layouts of
:mod:`jaxedit.models.stylegan2.params`: dense weights ``[in, out]``, conv kernels HWIO),
e.g. ``params['synthesis']['L3_36_64']['affine']['weight']``; the FIR filters are stored in the
params (``up_filter`` ``[taps]``, ``down_filter`` ``[taps]`` or ``[taps, taps]``), as in the
reference's state, so converted checkpoints use the exact stored filters::

    G = StyleGAN3(cfg)
    ws = G.mapping(params, z, psi=0.7)           # [B, num_ws, w_dim]
    img = G.synthesis(params, ws)                # [B, H, W, C], about [-1, 1]
    img = G.synthesis(params, ws, transform=jnp.linalg.inv(make_transform((0.1, -0.05), 10.0)))

Speed: the filtered nonlinearity is polyphase (no inserted zeros), keeps the up-sampled signal
as its ``up x up`` phases for the nonlinearity, and down-samples straight from them, computing
only the kept outputs (separable filters one axis at a time; R's radial filters as a direct sum).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError
from jaxedit.io import checkpoint
from jaxedit.models.stylegan2.generator import NOISE_MODES, Mapping, MappingMethods, check_shape
from jaxedit.nn import ops
from jaxedit.nn.handle import ModelHandle, compiled
from jaxedit.nn.layers import Buffer, Dense

Params = dict[str, Any]
KIND = "stylegan3"


class LayerSpec(NamedTuple):
    """Geometry of one synthesis layer, as the reference's ``SynthesisLayer.__init__`` derives it."""

    name: str
    is_torgb: bool
    is_critically_sampled: bool
    in_channels: int
    out_channels: int
    in_size: int
    out_size: int
    in_sampling_rate: int
    out_sampling_rate: int
    tmp_sampling_rate: int
    in_cutoff: float
    out_cutoff: float
    in_half_width: float
    out_half_width: float
    conv_kernel: int
    up: int
    down: int
    up_taps: int
    down_taps: int
    down_radial: bool
    padding: tuple[int, int]  # (lo, hi), the same on both axes


class InputSpec(NamedTuple):
    channels: int
    size: int
    sampling_rate: float
    bandwidth: float


@dataclasses.dataclass(frozen=True)
class StyleGAN3Config(JSONConfig):
    """Everything needed to rebuild a StyleGAN3 generator (the reference's constructor kwargs).

    Config T: the defaults. Config R: ``conv_kernel=1, use_radial_filters=True`` (and the
    reference's training script doubles ``channel_base`` / ``channel_max``).
    """

    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 0
    img_resolution: int = 1024
    img_channels: int = 3
    mapping_layers: int = 2
    mapping_lr_mul: float = 0.01
    channel_base: int = 32768
    channel_max: int = 512
    num_layers: int = 14
    num_critical: int = 2
    first_cutoff: float = 2.0
    first_stopband: float = 2 ** 2.1
    last_stopband_rel: float = 2 ** 0.3
    margin_size: int = 10
    output_scale: float = 0.25
    conv_kernel: int = 3
    filter_size: int = 6
    lrelu_upsampling: int = 2
    use_radial_filters: bool = False
    conv_clamp: float | None = 256.0

    def __post_init__(self):
        if self.img_resolution < 4:
            raise InputError(f"img_resolution must be >= 4, got {self.img_resolution}")
        if self.num_layers <= self.num_critical or self.num_critical < 0:
            raise InputError(f"num_layers ({self.num_layers}) must exceed num_critical ({self.num_critical}) >= 0")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise InputError(f"conv_kernel must be odd and >= 1, got {self.conv_kernel}")
        if self.z_dim == 0 and self.c_dim == 0:
            raise InputError("z_dim and c_dim cannot both be 0")

    # what jaxedit.models.stylegan2.generator.Mapping reads besides the fields above
    embed_features = None
    layer_features = None

    @property
    def num_ws(self) -> int:
        return self.num_layers + 2

    def _schedule(self):
        n, res = self.num_layers, self.img_resolution
        last_cutoff = res / 2
        last_stopband = last_cutoff * self.last_stopband_rel
        exponents = np.minimum(np.arange(n + 1) / (n - self.num_critical), 1)
        cutoffs = self.first_cutoff * (last_cutoff / self.first_cutoff) ** exponents
        stopbands = self.first_stopband * (last_stopband / self.first_stopband) ** exponents
        rates = np.exp2(np.ceil(np.log2(np.minimum(stopbands * 2, res))))
        half_widths = np.maximum(stopbands, rates / 2) - cutoffs
        sizes = rates + self.margin_size * 2
        sizes[-2:] = res
        channels = np.rint(np.minimum((self.channel_base / 2) / cutoffs, self.channel_max))
        channels[-1] = self.img_channels
        return cutoffs, rates, half_widths, sizes, channels

    def input_spec(self) -> InputSpec:
        cutoffs, rates, _, sizes, channels = self._schedule()
        return InputSpec(int(channels[0]), int(sizes[0]), float(rates[0]), float(cutoffs[0]))

    def layers(self) -> tuple[LayerSpec, ...]:
        """The ``num_layers + 1`` synthesis layers (the last is ToRGB), named ``L{i}_{size}_{channels}``."""
        cutoffs, rates, half_widths, sizes, channels = self._schedule()
        out = []
        for idx in range(self.num_layers + 1):
            prev = max(idx - 1, 0)
            torgb = idx == self.num_layers
            critical = idx >= self.num_layers - self.num_critical
            in_sr, out_sr = int(rates[prev]), int(rates[idx])
            tmp_sr = max(in_sr, out_sr) * (1 if torgb else self.lrelu_upsampling)
            kernel = 1 if torgb else self.conv_kernel
            up, down = int(np.rint(tmp_sr / in_sr)), int(np.rint(tmp_sr / out_sr))
            up_taps = self.filter_size * up if up > 1 and not torgb else 1
            down_taps = self.filter_size * down if down > 1 and not torgb else 1
            in_size, out_size = int(sizes[prev]), int(sizes[idx])
            pad_total = (out_size - 1) * down + 1 - (in_size + kernel - 1) * up + up_taps + down_taps - 2
            pad_lo = (pad_total + up) // 2
            out.append(LayerSpec(
                name=f"L{idx}_{out_size}_{int(channels[idx])}", is_torgb=torgb, is_critically_sampled=critical,
                in_channels=int(channels[prev]), out_channels=int(channels[idx]), in_size=in_size,
                out_size=out_size, in_sampling_rate=in_sr, out_sampling_rate=out_sr, tmp_sampling_rate=tmp_sr,
                in_cutoff=float(cutoffs[prev]), out_cutoff=float(cutoffs[idx]),
                in_half_width=float(half_widths[prev]), out_half_width=float(half_widths[idx]),
                conv_kernel=kernel, up=up, down=down, up_taps=up_taps, down_taps=down_taps,
                down_radial=self.use_radial_filters and not critical, padding=(pad_lo, pad_total - pad_lo)))
        return tuple(out)


def design_lowpass_filter(numtaps: int, cutoff: float, width: float, fs: float, radial: bool = False):
    """The reference's Kaiser-windowed low-pass filter: ``[taps]`` (``scipy.signal.firwin``) or
    ``[taps, taps]`` (radial jinc), or None for one tap; numpy float64, returned as float32.
    Used to initialize new models; converters keep the stored ones."""
    if numtaps == 1:
        return None
    atten = 2.285 * (numtaps - 1) * np.pi * (width / (fs / 2)) + 7.95  # scipy.signal.kaiser_atten
    beta = (0.1102 * (atten - 8.7) if atten > 50 else  # scipy.signal.kaiser_beta
            0.5842 * (atten - 21) ** 0.4 + 0.07886 * (atten - 21) if atten > 21 else 0.0)
    window = np.kaiser(numtaps, beta)
    if not radial:  # firwin: windowed sinc of the normalized cutoff, unit gain at DC
        c = cutoff / (fs / 2)
        h = c * np.sinc(c * (np.arange(numtaps) - (numtaps - 1) / 2)) * window
        return np.asarray(h / np.sum(h), np.float32)
    x = (np.arange(numtaps) - (numtaps - 1) / 2) / fs
    r = np.hypot(*np.meshgrid(x, x))
    f = _bessel_j1(2 * cutoff * (np.pi * r)) / (np.pi * r)
    f *= np.outer(window, window)
    return np.asarray(f / np.sum(f), np.float32)


def _bessel_j1(x: np.ndarray, n: int = 512) -> np.ndarray:
    """Bessel J1 by the trapezoid rule on its periodic integral ``mean(cos(t - x sin t))`` over a
    period (spectrally accurate: float64 rounding for ``|x| < n / 2``)."""
    t = 2 * np.pi * np.arange(n) / n
    return np.mean(np.cos(t - np.asarray(x, np.float64)[..., None] * np.sin(t)), axis=-1)


def make_transform(translate: tuple[float, float] = (0.0, 0.0), angle: float = 0.0) -> np.ndarray:
    """The reference visualizer's ``make_transform``: rotation by ``angle`` degrees and translation,
    ``[3, 3]``. Its inverse is what ``synthesis(..., transform=)`` takes (as the reference's buffer)."""
    s, c = math.sin(angle / 360 * math.pi * 2), math.cos(angle / 360 * math.pi * 2)
    return np.array([[c, s, translate[0]], [-s, c, translate[1]], [0, 0, 1]], np.float32)


# ----------------------------------------------------------------------------- ops


def upfirdn2d(x: jax.Array, f: jax.Array | None, *, up: int = 1, down: int = 1, padding=(0, 0),
              gain: float = 1.0) -> jax.Array:
    """The reference ``upfirdn2d`` (``flip_filter=False``) on NHWC, the same padding on both axes.

    Semantics: zero insertion (``up - 1`` zeros after each sample), pad (negative: crop), correlate
    with the flipped ``f`` (``[taps]`` separable, ``[taps, taps]``, or None = one tap) times ``gain``,
    keep every ``down``-th sample. Computed without the inserted zeros and only at the kept outputs
    (see :func:`_up_phases` and :func:`_down_phases`), a separable filter one axis at a time.
    """
    lo, hi = padding
    f = None if f is None else jnp.asarray(f, x.dtype)
    if f is not None and f.ndim == 2:
        ph = _up_phases_2d(x, None, up, lo, hi)
        return _interleave_2d(_down_phases_2d(ph, jnp.flip(f) * gain, up, down))
    g = None if f is None else jnp.flip(f) * math.sqrt(gain)
    for axis in (1, 2):
        ph, m = _up_phases(x, g if up > 1 else None, axis, up, lo, hi)
        x = _interleave(_down_phases(ph, None if up > 1 else g, axis, up, down, m), axis)
    return x * gain if f is None and gain != 1 else x


def _pad_axis(x: jax.Array, axis: int, lo: int, hi: int) -> jax.Array:
    """Zero-pad (negative: crop) one axis."""
    if lo == hi == 0:
        return x
    cfg = [(0, 0, 0)] * x.ndim
    cfg[axis] = (lo, hi, 0)
    return jax.lax.pad(x, jnp.zeros((), x.dtype), cfg)


def _up_phases(x: jax.Array, g: jax.Array | None, axis: int, up: int, lo: int, hi: int):
    """Zero insertion by ``up``, pad ``(lo, hi)``, 'valid' correlation with ``g`` (None: one tap 1)
    along ``axis``, polyphase: returns ``(phases, m)``, ``m`` the length of the result ``y`` and
    ``phases[r]`` the samples ``y[up q + r]``, ``q < ceil(m / up)`` (tail beyond ``m``: don't care).

    With ``z`` the zero-stuffed, padded signal (``z[lo + up k] = x[k]``), ``y[up q + r] = sum_t
    g[t] z[up q + r + t]``: only the taps ``t = t0 + up s`` with ``t0 = (lo - r) mod up`` meet
    samples, ``x[q + s + c]`` with ``c = (r + t0 - lo) / up``: ``taps / up`` shifted slices per
    phase, no multiplications by inserted zeros.
    """
    n, taps = x.shape[axis], 1 if g is None else g.shape[0]
    m = n * up + lo + hi - taps + 1
    nq = -(-m // up)
    spec = []
    for r in range(up):
        t0 = (lo - r) % up
        spec.append((list(range(t0, taps, up)), (r + t0 - lo) // up))
    used = [(ts, c) for ts, c in spec if ts]
    plo = max(0, -min(c for _, c in used))
    phi = max(0, max(nq + len(ts) - 2 + c for ts, c in used) - (n - 1))
    xp = _pad_axis(x, axis, plo, phi)
    phases = []
    for ts, c in spec:
        if not ts:
            shape = list(x.shape)
            shape[axis] = nq
            phases.append(jnp.zeros(shape, x.dtype))
            continue
        terms = [jax.lax.slice_in_dim(xp, c + s + plo, c + s + plo + nq, 1, axis) for s in range(len(ts))]
        phases.append(terms[0] if g is None else sum(g[t] * v for t, v in zip(ts, terms)))
    return phases, m


def _down_phases(phases, g: jax.Array | None, axis: int, up: int, down: int, m: int):
    """'valid' correlation with ``g`` (None: one tap 1) of the signal ``y`` of length ``m`` given as
    its ``up`` phases (:func:`_up_phases`), keeping every ``down``-th output: ``out[q] = sum_t g[t]
    y[down q + t]``, computed only at the kept outputs and straight from the phases (``y[j]`` is
    ``phases[j % up][j // up]``), so ``y`` is never interleaved. Returns the output's own
    ``p = up / gcd(up, down)`` phases (``out[p a + b]``), padded to one length; :func:`_interleave`
    assembles them. For ``up == down`` that is a single array.
    """
    taps = 1 if g is None else g.shape[0]
    n = (m - taps) // down + 1
    gcd = math.gcd(up, down)
    p, step = up // gcd, down // gcd
    na = -(-n // p)
    outs = []
    for b in range(p):
        nb = -(-(n - b) // p)
        terms = []
        for t in range(taps):
            j = down * b + t
            v = jax.lax.slice_in_dim(phases[j % up], j // up, j // up + step * (nb - 1) + 1, step, axis)
            terms.append(v if g is None else g[t] * v)
        out = sum(terms[1:], terms[0])
        outs.append(_pad_axis(out, axis, 0, na - nb))
    return outs, n


def _interleave(outs, axis: int) -> jax.Array:
    """``(phases, n)`` -> the signal: ``phases[b][a]`` is sample ``len(phases) a + b``; cropped to ``n``."""
    outs, n = outs
    if len(outs) == 1:
        return jax.lax.slice_in_dim(outs[0], 0, n, 1, axis)
    y = jnp.stack(outs, axis=axis + 1)
    y = y.reshape(y.shape[:axis] + (y.shape[axis] * len(outs),) + y.shape[axis + 2:])
    return jax.lax.slice_in_dim(y, 0, n, 1, axis)


def _up_phases_2d(x, g, up, lo, hi):
    """Separable :func:`_up_phases` on H then W: ``(phases[rh][rw], m)``."""
    ph, m = _up_phases(x, g, 1, up, lo, hi)
    return [_up_phases(v, g, 2, up, lo, hi)[0] for v in ph], m


def _down_phases_2d(ph, f: jax.Array | None, up: int, down: int):
    """:func:`_down_phases` on both axes from 2-D phases ``(phases[rh][rw], m)``: with a separable
    (``[taps]``) or None filter H then W, with a ``[taps, taps]`` filter directly (``taps**2``
    shifted strided slices per output). Returns ``(outs[bh][bw], n)``."""
    phases, m = ph
    if f is None or f.ndim == 1:
        cols = [_down_phases([phases[rh][rw] for rh in range(up)], f, 1, up, down, m)[0] for rw in range(up)]
        rows = [list(r) for r in zip(*cols)]  # [bh][rw]
        res = [_down_phases(r, f, 2, up, down, m) for r in rows]
        return [o for o, _ in res], res[0][1]
    taps = f.shape[0]
    n = (m - taps) // down + 1
    gcd = math.gcd(up, down)
    p, step = up // gcd, down // gcd
    na = -(-n // p)
    outs = []
    for bh in range(p):
        nbh = -(-(n - bh) // p)
        row = []
        for bw in range(p):
            nbw = -(-(n - bw) // p)
            acc = None
            for i in range(taps):
                jh = down * bh + i
                for k in range(taps):
                    jw = down * bw + k
                    v = phases[jh % up][jw % up][:, jh // up:jh // up + step * (nbh - 1) + 1:step,
                                                 jw // up:jw // up + step * (nbw - 1) + 1:step]
                    acc = f[i, k] * v if acc is None else acc + f[i, k] * v
            row.append(_pad_axis(_pad_axis(acc, 1, 0, na - nbh), 2, 0, na - nbw))
        outs.append(row)
    return outs, n


def _interleave_2d(outs) -> jax.Array:
    outs, n = outs
    rows = [_interleave((r, n), 2) for r in outs]
    return _interleave((rows, n), 1)


def filtered_lrelu(x: jax.Array, fu, fd, b: jax.Array, *, up: int, down: int, padding: tuple[int, int],
                   gain: float, slope: float, clamp: float | None) -> jax.Array:
    """The reference ``filtered_lrelu`` (``_ref`` path): bias, ``up``x up-sampling by ``fu`` (gain
    ``up**2``) with ``padding``, leaky ReLU (``slope``) times ``gain``, clamp, down-sampling by ``fd``.
    x ``[B, H, W, C]``.

    The up-sampled signal is kept as its ``up x up`` polyphase components (each ``taps / up``
    shifted slices per axis, no inserted zeros); the nonlinearity acts on each component and the
    down-sampling filter reads the components directly, computing only the kept outputs, so the
    ``up**2``-times larger intermediate is never interleaved (for ``up == down``, as in most
    layers, nothing is interleaved at all).
    """
    lo, hi = padding
    x = x + b
    fu = None if fu is None else jnp.asarray(fu, x.dtype)
    fd = None if fd is None else jnp.asarray(fd, x.dtype)
    if fu is not None and fu.ndim == 2:  # not produced by StyleGAN3 (up filters are separable)
        y = upfirdn2d(x, fu, up=up, padding=padding, gain=up ** 2)
        ph = ([[_act(y, gain, slope, clamp)]], y.shape[1])
        up = 1
    else:
        gu = None if fu is None else jnp.flip(fu) * up  # sqrt(gain) = up per axis
        phases, m = _up_phases_2d(x, gu, up, lo, hi)
        ph = ([[_act(v, gain, slope, clamp) for v in row] for row in phases], m)
    return _interleave_2d(_down_phases_2d(ph, None if fd is None else jnp.flip(fd), up, down))


def _act(x, gain, slope, clamp):
    x = jnp.where(x >= 0, x, x * slope) if slope != 1 else x
    if gain != 1:
        x = x * gain
    return jnp.clip(x, -clamp, clamp) if clamp is not None else x


def modulated_conv2d(x: jax.Array, w: jax.Array, s: jax.Array, *, demodulate: bool, input_gain) -> jax.Array:
    """The reference's modulated conv with ``padding = k - 1`` ("full"): x ``[B,H,W,I]``, w HWIO
    ``[k,k,I,O]``, s ``[B,I]`` -> ``[B, H+k-1, W+k-1, O]``, in non-grouped form.

    The reference normalizes ``s`` by its RMS over the whole batch before demodulating (an fp16
    safeguard that demodulation cancels up to its 1e-8); here per sample, so a sample does not
    depend on its batch.
    """
    if demodulate:
        w = w * jax.lax.rsqrt(jnp.mean(jnp.square(w), axis=(0, 1, 2), keepdims=True))
        s = s * jax.lax.rsqrt(jnp.mean(jnp.square(s), axis=1, keepdims=True))
    xs = x * (s * input_gain)[:, None, None, :]
    k = w.shape[0]
    if k == 1:
        y = jnp.einsum("bhwi,io->bhwo", xs, w[0, 0], precision=jax.lax.Precision.HIGHEST)
    else:
        p = k - 1
        y = ops.conv2d(jnp.pad(xs, ((0, 0), (p - k // 2, p - k // 2), (p - k // 2, p - k // 2), (0, 0))), w)
    if demodulate:
        d = jax.lax.rsqrt(jnp.square(s) @ jnp.sum(jnp.square(w), axis=(0, 1)) + 1e-8)
        y = y * d[:, None, None, :]
    return y


# ----------------------------------------------------------------------------- modules


class SynthesisInput(nnx.Module):
    """Fourier features: ``[B, size, size, channels]`` from ``ws[:, 0]`` and the ``transform`` buffer."""

    def __init__(self, spec: InputSpec, w_dim: int, *, rngs: nnx.Rngs):
        self.spec = spec
        c = spec.channels
        freqs = jax.random.normal(rngs.params(), (c, 2))
        radii = jnp.sqrt(jnp.sum(jnp.square(freqs), axis=1, keepdims=True))
        freqs = freqs / (radii * jnp.exp(jnp.square(radii)) ** 0.25) * spec.bandwidth
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (c, c)))
        self.affine = Dense(w_dim, 4, rngs=rngs)
        self.affine.weight = nnx.Param(jnp.zeros((w_dim, 4), jnp.float32))
        self.affine.bias = nnx.Param(jnp.array([1.0, 0.0, 0.0, 0.0], jnp.float32))
        self.transform = Buffer(jnp.eye(3, dtype=jnp.float32))
        self.freqs = Buffer(freqs)
        self.phases = Buffer(jax.random.uniform(rngs.params(), (c,)) - 0.5)

    def __call__(self, w: jax.Array, transform: jax.Array | None) -> jax.Array:
        spec = self.spec
        transform = self.transform[...] if transform is None else transform
        t = self.affine(w)  # [B, 4] = (r_c, r_s, t_x, t_y)
        t = t / jnp.linalg.norm(t[:, :2], axis=1, keepdims=True)
        one, zero = jnp.ones_like(t[:, 0]), jnp.zeros_like(t[:, 0])
        m_r = jnp.stack([jnp.stack([t[:, 0], -t[:, 1], zero], -1), jnp.stack([t[:, 1], t[:, 0], zero], -1),
                         jnp.stack([zero, zero, one], -1)], 1)
        m_t = jnp.stack([jnp.stack([one, zero, -t[:, 2]], -1), jnp.stack([zero, one, -t[:, 3]], -1),
                         jnp.stack([zero, zero, one], -1)], 1)
        hp = jax.lax.Precision.HIGHEST
        transforms = jnp.matmul(jnp.matmul(m_r, m_t, precision=hp), transform, precision=hp)  # [B, 3, 3]
        freqs0 = self.freqs[...]
        phases = self.phases[...] + jnp.einsum("cj,bj->bc", freqs0, transforms[:, :2, 2], precision=hp)
        freqs = jnp.einsum("cj,bjk->bck", freqs0, transforms[:, :2, :2], precision=hp)  # [B, C, 2]
        amplitudes = jnp.clip(1 - (jnp.linalg.norm(freqs, axis=2) - spec.bandwidth)
                              / (spec.sampling_rate / 2 - spec.bandwidth), 0, 1)
        n = spec.size
        g = jnp.asarray((2 * np.arange(n) + 1 - n) / (2 * spec.sampling_rate), jnp.float32)  # affine_grid, align_corners=False
        x = (g[None, None, :, None] * freqs[:, None, None, :, 0] + g[None, :, None, None] * freqs[:, None, None, :, 1]
             + phases[:, None, None, :])
        x = jnp.sin(x * (np.pi * 2)) * amplitudes[:, None, None, :]
        return jnp.einsum("bhwi,io->bhwo", x, self.weight[...] / np.sqrt(spec.channels), precision=hp)


class SynthesisLayer(nnx.Module):
    """Modulated conv (input scaled by ``rsqrt(magnitude_ema)``) + filtered leaky ReLU; or ToRGB."""

    def __init__(self, spec: LayerSpec, w_dim: int, *, conv_clamp: float | None, rngs: nnx.Rngs):
        self.spec = spec
        self.conv_clamp = conv_clamp
        k = spec.conv_kernel
        self.affine = Dense(w_dim, spec.in_channels, bias_init=1.0, rngs=rngs)
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (k, k, spec.in_channels, spec.out_channels)))
        self.bias = nnx.Param(jnp.zeros((spec.out_channels,), jnp.float32))
        self.magnitude_ema = Buffer(jnp.ones((), jnp.float32))
        fu = design_lowpass_filter(spec.up_taps, spec.in_cutoff, spec.in_half_width * 2, spec.tmp_sampling_rate)
        fd = design_lowpass_filter(spec.down_taps, spec.out_cutoff, spec.out_half_width * 2, spec.tmp_sampling_rate,
                                   radial=spec.down_radial)
        if fu is not None:
            self.up_filter = Buffer(jnp.asarray(fu))
        if fd is not None:
            self.down_filter = Buffer(jnp.asarray(fd))

    def __call__(self, x: jax.Array, w: jax.Array) -> jax.Array:
        spec = self.spec
        s = self.affine(w)
        if spec.is_torgb:
            s = s * (1 / np.sqrt(spec.in_channels * spec.conv_kernel ** 2))
        x = modulated_conv2d(x, self.weight[...], s, demodulate=not spec.is_torgb,
                             input_gain=jax.lax.rsqrt(self.magnitude_ema[...]))
        fu = self.up_filter[...] if spec.up_taps > 1 else None
        fd = self.down_filter[...] if spec.down_taps > 1 else None
        return filtered_lrelu(x, fu, fd, self.bias[...], up=spec.up, down=spec.down, padding=spec.padding,
                              gain=1.0 if spec.is_torgb else math.sqrt(2), slope=1.0 if spec.is_torgb else 0.2,
                              clamp=self.conv_clamp)


class Synthesis(nnx.Module):
    def __init__(self, cfg: StyleGAN3Config, *, rngs: nnx.Rngs):
        self.output_scale = cfg.output_scale
        self.input = SynthesisInput(cfg.input_spec(), cfg.w_dim, rngs=rngs)
        self.layer_names = tuple(spec.name for spec in cfg.layers())
        for spec in cfg.layers():
            setattr(self, spec.name, SynthesisLayer(spec, cfg.w_dim, conv_clamp=cfg.conv_clamp, rngs=rngs))

    def __call__(self, ws: jax.Array, transform: jax.Array | None) -> jax.Array:
        x = self.input(ws[:, 0], transform)
        for i, name in enumerate(self.layer_names):
            x = getattr(self, name)(x, ws[:, i + 1])
        return x * self.output_scale if self.output_scale != 1 else x


class Generator(nnx.Module):
    def __init__(self, cfg: StyleGAN3Config, *, rngs: nnx.Rngs):
        self.mapping = Mapping(cfg, rngs=rngs)
        self.synthesis = Synthesis(cfg, rngs=rngs)


# ------------------------------------------------------------------------ pure API


@dataclasses.dataclass(frozen=True)
class StyleGAN3(MappingMethods, ModelHandle):
    """Hashable handle: pure functions of ``params`` for one :class:`StyleGAN3Config`."""

    cfg: StyleGAN3Config
    module = Generator

    def synthesis(self, params: Params, ws: jax.Array, noise_mode: str = "const", key: jax.Array | None = None, *,
                  transform: jax.Array | None = None) -> jax.Array:
        """ws ``[B, num_ws, w_dim]`` (or ``[B, w_dim]``, broadcast) -> image ``[B, H, W, C]``.

        The signature is StyleGAN2's, so every latent-space editor, fit and text edit takes either
        generator; StyleGAN3 has no noise inputs, so ``noise_mode`` and ``key`` change nothing.

        ``transform`` ``[3, 3]`` (or ``[B, 3, 3]``) replaces the stored ``synthesis.input.transform``
        buffer, as the reference visualizer writes it: the inverse of the image transform, e.g.
        ``inv(make_transform(translate, angle))``.
        """
        if noise_mode not in NOISE_MODES:
            raise InputError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        ws = self._ws(ws)
        if transform is not None:
            _check_transform(transform)
        return self._synthesis(params, ws, transform)

    @compiled()
    def _synthesis(self, params, ws, transform):
        return self.model(params).synthesis(ws, transform)

    def synthesis_input(self, params: Params, ws: jax.Array, transform: jax.Array | None = None) -> jax.Array:
        """The Fourier-feature input layer's output ``[B, size, size, channels]`` (margin included)."""
        ws = self._ws(ws)
        if transform is not None:
            _check_transform(transform)
        return self._input(params, ws, transform)

    @compiled()
    def _input(self, params, ws, transform):
        return self.model(params).synthesis.input(ws[:, 0], transform)

    def __call__(self, params: Params, z: jax.Array | None, c: jax.Array | None = None, psi=1.0,
                 cutoff: int | None = None, noise_mode: str = "const", key: jax.Array | None = None, *,
                 transform: jax.Array | None = None) -> jax.Array:
        """Mapping then synthesis: z ``[B, z_dim]`` -> image ``[B, H, W, C]``."""
        return self.synthesis(params, self.mapping(params, z, c, psi, cutoff), noise_mode, key, transform=transform)

    def _ws(self, ws):
        cfg = self.cfg
        if getattr(ws, "ndim", None) == 2:
            check_shape("ws", ws, (None, cfg.w_dim))
            return jnp.broadcast_to(ws[:, None], (ws.shape[0], cfg.num_ws, cfg.w_dim))
        check_shape("ws", ws, (None, cfg.num_ws, cfg.w_dim))
        return ws


def load(path) -> tuple[StyleGAN3, dict]:
    """A ``kind="stylegan3"`` checkpoint -> ``(StyleGAN3, params)``."""
    return checkpoint.load_handle(path, KIND, lambda cfg: StyleGAN3(StyleGAN3Config.from_dict(cfg)))


def _check_transform(t) -> None:
    shape = getattr(t, "shape", None)
    if shape is None or tuple(shape[-2:]) != (3, 3) or len(shape) not in (2, 3):
        raise InputError(f"transform must have shape [3, 3] or [B, 3, 3], got {None if shape is None else list(shape)}")


