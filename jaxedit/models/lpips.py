"""LPIPS v0.1 (Zhang et al. 2018, "The Unreasonable Effectiveness of Deep Features as a
Perceptual Metric") with the VGG16 backbone, in Flax NNX.

The math, as the reference ``lpips`` package (v0.1) computes it for images in [-1, 1]:

1. scaling layer: ``x' = (x - SHIFT) / SCALE`` per RGB channel (the ImageNet mean/std mapped
   to [-1, 1] inputs);
2. the torchvision VGG16 ``features`` trunk: 3x3 convs (zero padding 1) + ReLU, 2x2 max
   pooling (stride 2, odd rows/columns dropped) between blocks; the taps are the last ReLU
   of each of the L = 5 blocks (relu1_2, relu2_2, relu3_3, relu4_3, relu5_3);
3. per tap and position, unit-normalize the feature vector over channels:
   ``f / (sqrt(sum_c f^2) + 1e-10)``, for both images;
4. squared difference, then the learned 1x1 "lin" layer (non-negative weights, no bias):
   ``m_l = sum_c w_c (f0_c - f1_c)^2``, a map ``[B, h_l, w_l]``;
5. per layer: the spatial mean of ``m_l`` (``spatial=False``) or ``m_l`` upsampled bilinearly
   to the input size (``spatial=True``; torch ``nn.Upsample(mode="bilinear",
   align_corners=False)``, here one interpolation matrix per axis); the distance is the sum
   over layers.

The parameter tree mirrors the torch names (``<name>.<i>`` -> ``<name>_<i>``):
``features_{i}.kernel`` HWIO / ``features_{i}.bias`` for the torchvision conv indices i
(0, 2, 5, 7, 10, ... for VGG16), and ``lin{l}.kernel`` ``[C_l]`` for ``lin{l}.model.1.weight``.

Pure interface: ``lp = LPIPS(cfg)``, ``params = lp.init(key)`` or ``lp, params =
load(path)``; images ``[B, H, W, 3]`` float32 in [-1, 1] with H, W >= 2**(L-1) (16)::

    lp(params, x0, x1)                      # [B]
    lp(params, x0, x1, spatial=True)        # [B, H, W]
    lp.per_layer(params, x0, x1)            # [L, B] (or [L, B, H, W] with spatial=True)
    lp.lin_maps(params, x0, x1)             # L maps [B, h_l, w_l] before averaging
    lp.features(params, x)                  # L backbone taps [B, h_l, w_l, C_l] of the scaled input

``x0`` and ``x1`` have the same size; their batch sizes are equal or one of them is 1
(compared against every row of the other). Rows are independent. Every method runs as one
compiled program per shape and composes with ``jit``/``vmap``/``grad``; the 3x3 convs are
:func:`jaxedit.nn.ops.conv2d` (its backward pass stays fast inside ``lax.scan`` loops), as one
matmul on maps smaller than 3 pixels a side or 36 pixels (XLA:CPU's conv is 30-100x slower there).

Gradients: ``sqrt`` of the channel norm is taken where the norm is positive only (a
feature vector that is exactly zero has norm 0 and gradient 0 through the norm, where
torch would give NaN); the forward value is the reference's.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError
from jaxedit.io import checkpoint
from jaxedit.nn import ops
from jaxedit.nn.handle import ModelHandle, compiled

KIND = "lpips"
SHIFT = (-0.030, -0.088, -0.188)  # the reference ScalingLayer's constants (v0.1)
SCALE = (0.458, 0.448, 0.450)
NORM_EPS = 1e-10


@dataclasses.dataclass(frozen=True)
class LPIPSConfig(JSONConfig):
    """The backbone's layout: ``blocks[l]`` 3x3 convs of width ``widths[l]`` per block (VGG16 by
    default); one LPIPS tap (and lin layer) at the end of each block."""

    blocks: tuple[int, ...] = (2, 2, 3, 3, 3)
    widths: tuple[int, ...] = (64, 128, 256, 512, 512)
    in_channels: int = 3

    def __post_init__(self):
        if not self.blocks or len(self.blocks) != len(self.widths) or min(self.blocks) < 1 or min(self.widths) < 1:
            raise InputError(f"LPIPSConfig: blocks {list(self.blocks)} and widths {list(self.widths)} must be "
                             "equally long lists of positive ints")

    def conv_indices(self) -> tuple[tuple[int, ...], ...]:
        """The torchvision ``features`` index of every conv, per block (conv, ReLU per layer; a max pool
        after each block): VGG16 -> (0, 2), (5, 7), (10, 12, 14), (17, 19, 21), (24, 26, 28)."""
        out, i = [], 0
        for n in self.blocks:
            out.append(tuple(range(i, i + 2 * n, 2)))
            i += 2 * n + 1
        return tuple(out)


def _interp_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]``: torch bilinear (``align_corners=False``, output size given) along one axis.

    Source coordinate ``(o + 0.5) * n_in / n_out - 0.5``, clamped below at 0; the two neighbours
    ``floor`` and ``min(floor + 1, n_in - 1)`` weighted linearly.
    """
    src = np.maximum((np.arange(n_out, dtype=np.float64) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    lam = src - i0
    m = np.zeros((n_out, n_in), np.float64)
    np.add.at(m, (np.arange(n_out), i0), 1.0 - lam)
    np.add.at(m, (np.arange(n_out), i1), lam)
    return m.astype(np.float32)


def upsample_bilinear(m: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``[B, h, w]`` -> ``[B, H, W]`` as torch ``nn.Upsample(size, mode="bilinear", align_corners=False)``."""
    h, w = m.shape[-2:]
    if (h, w) == tuple(size):
        return m
    ah, aw = jnp.asarray(_interp_matrix(h, size[0])), jnp.asarray(_interp_matrix(w, size[1]))
    return jnp.einsum("oh,bhw,pw->bop", ah, m, aw, precision=jax.lax.Precision.HIGHEST)


def _max_pool(x: jax.Array) -> jax.Array:
    """torch ``MaxPool2d(2, 2)``: [B, H, W, C] -> [B, H//2, W//2, C] (a trailing odd row/column dropped).

    The gradient goes to the *first* maximum of each window in row-major order, as torch's: a tie
    (a flat image region gives equal positive features) would otherwise split it equally
    (``jnp.max``'s rule), which changed ``grad_x0`` of the reference fixture by 2% at a few pixels.
    Written as a one-hot selection of ``argmax`` (first occurrence), which autodiff routes so.
    """
    b, h, w, c = x.shape
    h, w = h // 2, w // 2
    win = x[:, :2 * h, :2 * w].reshape(b, h, 2, w, 2, c).transpose(0, 1, 3, 5, 2, 4).reshape(b, h, w, c, 4)
    first = jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(win), axis=-1), 4, dtype=x.dtype)
    return jnp.sum(win * first, axis=-1)


def _unit_normalize(f: jax.Array) -> jax.Array:
    """``f / (||f||_channels + 1e-10)`` per position; [B, h, w, C]."""
    s = jnp.sum(jnp.square(f), axis=-1, keepdims=True)
    pos = s > 0
    norm = jnp.where(pos, jnp.sqrt(jnp.where(pos, s, 1.0)), 0.0)
    return f / (norm + NORM_EPS)


def _conv3x3(x: jax.Array, w: jax.Array) -> jax.Array:
    """3x3 'same' conv, x NHWC, w HWIO: :func:`jaxedit.nn.ops.conv2d`, or on small maps one matmul of the
    9 shifted copies (im2col).

    XLA:CPU's conv is pathological on maps with a side <= 2 (measured here, 3x3 512->512, batch 16,
    forward: 2x2 270 ms vs 4.6 ms as im2col, 2x3 1144 vs 14 ms, 1x6 445 vs 14 ms) and slower up to
    about 6x6 (4x4: 29 vs 17 ms); from 8x8 on the conv wins (8x8: 91 vs 122 ms). VGG's deep taps
    are that small for inputs under ~96 px (the shapes world's 32x32 gives 2x2 at relu5_3).
    """
    h, wd = x.shape[1:3]
    if min(h, wd) > 2 and h * wd > 36:
        return ops.conv2d(x, w)
    xp = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = jnp.concatenate([xp[:, dy:dy + h, dx:dx + wd] for dy in range(3) for dx in range(3)], axis=-1)
    return cols @ w.reshape(-1, w.shape[-1])


class _Conv3x3(nnx.Module):
    """A torchvision VGG conv: 3x3, zero padding 1, bias; kaiming-normal (fan_out, ReLU) init, zero bias."""

    def __init__(self, cin: int, cout: int, rngs: nnx.Rngs):
        std = (2.0 / (9 * cout)) ** 0.5
        self.kernel = nnx.Param(std * jax.random.normal(rngs.params(), (3, 3, cin, cout)))
        self.bias = nnx.Param(jnp.zeros((cout,), jnp.float32))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jax.nn.relu(_conv3x3(x, self.kernel[...]) + self.bias[...])


class _Lin(nnx.Module):
    """LPIPS ``NetLinLayer``: a 1x1 conv to one channel without bias, weight ``[C]`` (torch default init)."""

    def __init__(self, c: int, rngs: nnx.Rngs):
        self.kernel = nnx.Param(jax.random.uniform(rngs.params(), (c,), minval=-c ** -0.5, maxval=c ** -0.5))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.einsum("bhwc,c->bhw", x, self.kernel[...], precision=jax.lax.Precision.HIGHEST)


class LPIPSNet(nnx.Module):
    def __init__(self, cfg: LPIPSConfig, *, rngs: nnx.Rngs):
        self.indices = cfg.conv_indices()
        cin = cfg.in_channels
        for block, width in zip(self.indices, cfg.widths):
            for i in block:
                setattr(self, f"features_{i}", _Conv3x3(cin, width, rngs))
                cin = width
        for l, width in enumerate(cfg.widths):
            setattr(self, f"lin{l}", _Lin(width, rngs))

    def features(self, x: jax.Array) -> list[jax.Array]:
        """Scaled input [B, H, W, 3] -> the L taps [B, H / 2**l, W / 2**l, C_l] (ReLU outputs)."""
        taps = []
        for l, block in enumerate(self.indices):
            if l:
                x = _max_pool(x)
            for i in block:
                x = getattr(self, f"features_{i}")(x)
            taps.append(x)
        return taps

    def lin_maps(self, f0: list[jax.Array], f1: list[jax.Array]) -> list[jax.Array]:
        return [getattr(self, f"lin{l}")(jnp.square(_unit_normalize(a) - _unit_normalize(b)))
                for l, (a, b) in enumerate(zip(f0, f1))]


def scale_input(images: jax.Array) -> jax.Array:
    """The v0.1 scaling layer: ``(x - SHIFT) / SCALE`` on [..., 3] images in [-1, 1]."""
    return (images - jnp.asarray(SHIFT, images.dtype)) / jnp.asarray(SCALE, images.dtype)


@dataclasses.dataclass(frozen=True)
class LPIPS(ModelHandle):
    """Hashable handle: pure functions of ``params`` for one :class:`LPIPSConfig` (see the module doc)."""

    cfg: LPIPSConfig = LPIPSConfig()
    module = LPIPSNet

    @property
    def num_layers(self) -> int:
        return len(self.cfg.blocks)

    def _check(self, name: str, x: jax.Array) -> None:
        n = 2 ** (self.num_layers - 1)
        if (getattr(x, "ndim", 0) != 4 or x.shape[-1] != self.cfg.in_channels or min(x.shape[1:3]) < n
                or not jnp.issubdtype(x.dtype, jnp.floating)):
            raise InputError(f"LPIPS: {name} must be float images [B, H, W, {self.cfg.in_channels}] in [-1, 1] with "
                             f"H, W >= {n}, got {getattr(x, 'dtype', type(x).__name__)} "
                             f"{list(getattr(x, 'shape', ()))}")

    def _check_pair(self, x0: jax.Array, x1: jax.Array) -> None:
        self._check("x0", x0)
        self._check("x1", x1)
        if x0.shape[1:] != x1.shape[1:] or (x0.shape[0] != x1.shape[0] and 1 not in (x0.shape[0], x1.shape[0])):
            raise InputError(f"LPIPS: x0 {list(x0.shape)} and x1 {list(x1.shape)} must have the same size and equal "
                             "batch sizes (or a batch of 1)")

    # -------------------------------------------------------------------------- public methods
    def features(self, params: dict, images: jax.Array) -> tuple[jax.Array, ...]:
        """``[B, H, W, 3]`` in [-1, 1] -> the L backbone taps ``[B, H / 2**l, W / 2**l, C_l]`` (ReLU
        outputs of the scaled input, not normalized; pooling floors odd sizes)."""
        self._check("images", images)
        return self._features(params, images)

    def lin_maps(self, params: dict, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, ...]:
        """The L per-position layer distances ``[B, h_l, w_l]`` (after the lin layer, before averaging)."""
        self._check_pair(x0, x1)
        return self._lin_maps(params, x0, x1)

    def per_layer(self, params: dict, x0: jax.Array, x1: jax.Array, spatial: bool = False) -> jax.Array:
        """Per-layer distances: ``[L, B]`` (spatial means), or ``[L, B, H, W]`` upsampled to the input size."""
        self._check_pair(x0, x1)
        return self._per_layer(params, x0, x1, spatial)

    def __call__(self, params: dict, x0: jax.Array, x1: jax.Array, spatial: bool = False) -> jax.Array:
        """LPIPS distance ``[B]`` (or the map ``[B, H, W]`` with ``spatial=True``): the sum of :meth:`per_layer`."""
        self._check_pair(x0, x1)
        return self._distance(params, x0, x1, spatial)

    # -------------------------------------------------------------------------- compiled bodies
    @compiled()
    def _features(self, params: dict, images: jax.Array) -> tuple[jax.Array, ...]:
        return tuple(self.model(params).features(scale_input(images)))

    @compiled()
    def _lin_maps(self, params: dict, x0: jax.Array, x1: jax.Array) -> tuple[jax.Array, ...]:
        net = self.model(params)
        b0 = x0.shape[0]
        taps = net.features(scale_input(jnp.concatenate([x0, x1.astype(x0.dtype)], axis=0)))  # one trunk pass
        return tuple(net.lin_maps([t[:b0] for t in taps], [t[b0:] for t in taps]))

    @compiled("spatial")
    def _per_layer(self, params: dict, x0: jax.Array, x1: jax.Array, spatial: bool) -> jax.Array:
        maps = self._lin_maps(params, x0, x1)
        if spatial:
            return jnp.stack([upsample_bilinear(m, x0.shape[1:3]) for m in maps])
        return jnp.stack([m.mean(axis=(1, 2)) for m in maps])

    @compiled("spatial")
    def _distance(self, params: dict, x0: jax.Array, x1: jax.Array, spatial: bool) -> jax.Array:
        return self._per_layer(params, x0, x1, spatial).sum(axis=0)


def load(path) -> tuple[LPIPS, dict]:
    """A ``kind="lpips"`` checkpoint (``converters/lpips.py``) -> ``(LPIPS handle, params)``."""
    return checkpoint.load_handle(path, KIND, lambda cfg: LPIPS(LPIPSConfig.from_dict(cfg)))
