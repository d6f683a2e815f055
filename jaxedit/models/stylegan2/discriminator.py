"""StyleGAN2 discriminator (NVlabs/stylegan2-ada-pytorch ``training/networks.py``) in Flax NNX.

Architecture (``resnet``, the reference default for every config but cifar; ``orig`` also
supported): FromRGB (1x1 conv, lrelu) at the top resolution, then one block per resolution
``R = img_resolution .. 8``::

    y = skip(x)                 1x1 conv, no bias, FIR down-sampling, gain sqrt(0.5)   (resnet)
    x = conv0(x)                3x3 conv, lrelu
    x = conv1(x)                3x3 conv with FIR down-sampling, lrelu, gain sqrt(0.5) (resnet)
    x = y + x

and the 4x4 epilogue: minibatch standard deviation (group size 4, 1 channel), 3x3 conv,
fully connected (flattened in the reference's NCHW order, so a converted state dict is a
plain transpose), fully connected to 1 logit, or, with ``c_dim > 0``, to ``cmap_dim``
features projected on the label embedding ``cmap = mapping(c)`` and scaled by
``1/sqrt(cmap_dim)``. Equalized learning rate everywhere (weights stored unscaled),
leaky ReLU 0.2 with gain sqrt(2), optional conv clamp (scaled by the layer gain).

Down-sampling follows ``conv2d_resample``: a 3x3 conv with ``down=2`` is "FIR [1,3,3,1]
(padding 2) then stride-2 3x3 conv", a 1x1 conv with ``down=2`` is "FIR with stride 2
(padding 1) then 1x1 conv". The FIR is written as separable shifted multiply-adds (no
depthwise conv, which is pathological on XLA:CPU). Measured on this machine
(B=32, 32x32x32 -> 16x16x64; forward / grad / R1 double-grad, ms): FIR + strided conv
4.8 / 20 / 111; FIR + four phase convs 4.5 / 52 / 133; FIR folded into a 6x6 stride-2
kernel 8.2 / 89 / 440; space-to-depth + 2x2 conv 8.4 / 34 / 595. So: FIR then strided conv.

Public interface: the hashable handle :class:`Discriminator` with pure functions of a plain
nested parameter dict (keys mirror the reference names: ``b32.conv0.weight``,
``b4.fc.weight``, ``b4.out.bias``, ``mapping.fc0.weight`` ...; layouts:
:mod:`jaxedit.models.stylegan2.params`; NVIDIA pickles convert with
``jaxedit.converters.stylegan2.convert_discriminator``)::

    D = Discriminator(DiscriminatorConfig(img_resolution=32, channels=(128, 128, 64, 32)))
    params = D.init(jax.random.key(0))
    logits = D(params, img)            # img [B, H, W, C] in [-1, 1] -> [B]

Converted discriminators (``jaxedit convert stylegan2 FILE OUT --key D``) are checkpoints of kind
:data:`KIND`: ``D, params = jaxedit.load(OUT)`` (or :func:`load`).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError
from jaxedit.io import checkpoint
from jaxedit.nn import ops
from jaxedit.nn.handle import ModelHandle
from jaxedit.nn.layers import Dense

Params = dict[str, Any]
KIND = "stylegan2-discriminator"
ARCHITECTURES = ("resnet", "orig")
_FIR = (1.0 / 8, 3.0 / 8, 3.0 / 8, 1.0 / 8)  # [1,3,3,1] normalized per axis (2-D filter sums to 1)


@dataclasses.dataclass(frozen=True)
class DiscriminatorConfig(JSONConfig):
    """Everything needed to rebuild a discriminator.

    ``channels`` lists the channels for resolutions 4, 8, ..., img_resolution (same
    convention as :class:`~jaxedit.models.stylegan2.StyleGAN2Config`); when empty it is
    ``min(channel_base // res, channel_max)`` as in the reference. Block ``R`` maps
    ``channels[R]`` to ``channels[R/2]``.
    """

    img_resolution: int = 32
    img_channels: int = 3
    c_dim: int = 0
    channel_base: int = 32768
    channel_max: int = 512
    channels: tuple[int, ...] = ()
    architecture: str = "resnet"
    conv_clamp: float | None = None
    mbstd_group_size: int | None = 4  # None: the whole batch is one group
    mbstd_num_channels: int = 1
    cmap_dim: int | None = None  # None -> channels[4]
    mapping_layers: int = 8  # label mapping (conditional only), as the reference's MappingNetwork
    mapping_lr_mul: float = 0.01

    def __post_init__(self):
        res = self.img_resolution
        if res < 8 or res & (res - 1):
            raise InputError(f"img_resolution must be a power of two >= 8, got {res}")
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.channels and len(self.channels) != len(self.resolutions):
            raise InputError(f"channels has {len(self.channels)} entries, expected one per resolution "
                             f"{self.resolutions}")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(2 ** i for i in range(2, int(math.log2(self.img_resolution)) + 1))

    @property
    def block_resolutions(self) -> tuple[int, ...]:
        return tuple(r for r in reversed(self.resolutions) if r > 4)

    @property
    def block_channels(self) -> dict[int, int]:
        if self.channels:
            return dict(zip(self.resolutions, self.channels))
        return {r: min(self.channel_base // r, self.channel_max) for r in self.resolutions}


# ------------------------------------------------------------------------------ ops


def _fir_axis(x: jax.Array, axis: int, pad: int) -> jax.Array:
    """Correlate with the normalized 1-D [1,3,3,1] taps along ``axis`` after zero padding ``pad``."""
    n = x.shape[axis]
    widths = [(0, 0)] * x.ndim
    widths[axis] = (pad, pad)
    xp = jnp.pad(x, widths)
    m = n + 2 * pad - 3
    return sum(g * jax.lax.slice_in_dim(xp, t, t + m, axis=axis) for t, g in enumerate(_FIR))


def _downsample_axis(x: jax.Array, axis: int) -> jax.Array:
    """FIR with stride 2 and padding 1 along ``axis``: ``out[i] = (x[2i-1] + 3x[2i] + 3x[2i+1] + x[2i+2]) / 8``.

    Written on the even/odd phases (a reshape) so neither direction needs strided slicing.
    """
    n = x.shape[axis]
    shape = list(x.shape)
    shape[axis:axis + 1] = [n // 2, 2]
    ph = x.reshape(shape)
    even = jax.lax.index_in_dim(ph, 0, axis + 1, keepdims=False)
    odd = jax.lax.index_in_dim(ph, 1, axis + 1, keepdims=False)
    m = n // 2
    zero = jnp.zeros_like(jax.lax.slice_in_dim(even, 0, 1, axis=axis))
    odd_prev = jnp.concatenate([zero, jax.lax.slice_in_dim(odd, 0, m - 1, axis=axis)], axis=axis)
    even_next = jnp.concatenate([jax.lax.slice_in_dim(even, 1, m, axis=axis), zero], axis=axis)
    g0, g1, g2, g3 = _FIR
    return g0 * odd_prev + g1 * even + g2 * odd + g3 * even_next


def downsample2d(x: jax.Array) -> jax.Array:
    """The reference ``upfirdn2d.downsample2d`` with [1,3,3,1]: [B,H,W,C] -> [B,H/2,W/2,C]."""
    return _downsample_axis(_downsample_axis(x, 1), 2)


def down_conv2d(x: jax.Array, w: jax.Array) -> jax.Array:
    """The reference 3x3 conv with ``down=2``: FIR (padding 2) then stride-2 correlation. [B,H,W,I] -> [B,H/2,W/2,O]."""
    kh, kw = w.shape[:2]
    if kh == 1 and kw == 1:
        return ops.conv2d(downsample2d(x), w)
    if (kh, kw) != (3, 3):
        raise InputError(f"down-sampling conv expects a 1x1 or 3x3 kernel, got {w.shape}")
    z = _fir_axis(_fir_axis(x, 1, 2), 2, 2)  # [B, H+1, W+1, I]
    return jax.lax.conv_general_dilated(z, w, (2, 2), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def minibatch_std(x: jax.Array, group_size: int | None, num_channels: int) -> jax.Array:
    """The reference MinibatchStdLayer on NHWC: append ``num_channels`` group-stddev feature maps.

    As the reference, sample ``n`` belongs to group ``n % (N / G)`` (``x.reshape(G, -1, ...)``),
    so the batch must be a multiple of ``G = min(group_size, N)``.
    """
    n, h, w, _ = x.shape
    g = n if group_size is None else min(group_size, n)
    if n % g:
        raise InputError(f"minibatch-stddev: batch {n} is not a multiple of the group size {g}")
    f = num_channels
    y = rearrange(x, "(g m) h w (f c) -> g m h w f c", g=g, f=f)
    y = y - jnp.mean(y, axis=0)
    y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [n/G, H, W, F, c]
    y = jnp.mean(y, axis=(1, 2, 4))  # [n/G, F]
    y = jnp.tile(y, (g, 1))  # [N, F]: sample g*(N/G) + j gets group j
    y = jnp.broadcast_to(y[:, None, None, :], (n, h, w, f))
    return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


# --------------------------------------------------------------------------- modules


class DConv(nnx.Module):
    """Conv2dLayer of the discriminator: equalized 1x1/3x3 conv, optional FIR down-sampling, bias, act, clamp."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, *, rngs: nnx.Rngs, bias: bool = True,
                 activation: str = "linear", down: bool = False, conv_clamp: float | None = None):
        self.activation = activation
        self.down = down
        self.conv_clamp = conv_clamp
        self.weight_gain = 1.0 / math.sqrt(in_ch * kernel_size * kernel_size)
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (kernel_size, kernel_size, in_ch, out_ch)))
        self.bias = nnx.Param(jnp.zeros((out_ch,), jnp.float32)) if bias else None

    def __call__(self, x: jax.Array, gain: float = 1.0) -> jax.Array:
        w = self.weight[...] * self.weight_gain
        x = down_conv2d(x, w) if self.down else ops.conv2d(x, w)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return ops.bias_act(x, None if self.bias is None else self.bias[...], self.activation, gain, clamp)


class DiscriminatorBlock(nnx.Module):
    def __init__(self, cfg: DiscriminatorConfig, res: int, *, rngs: nnx.Rngs):
        ch = cfg.block_channels
        tmp, out = ch[res], ch[res // 2]
        self.architecture = cfg.architecture
        if res == cfg.img_resolution:
            self.fromrgb = DConv(cfg.img_channels, tmp, 1, activation="lrelu", conv_clamp=cfg.conv_clamp, rngs=rngs)
        self.conv0 = DConv(tmp, tmp, 3, activation="lrelu", conv_clamp=cfg.conv_clamp, rngs=rngs)
        self.conv1 = DConv(tmp, out, 3, activation="lrelu", down=True, conv_clamp=cfg.conv_clamp, rngs=rngs)
        if cfg.architecture == "resnet":
            self.skip = DConv(tmp, out, 1, bias=False, down=True, rngs=rngs)

    def __call__(self, x, img):
        if img is not None:
            x = self.fromrgb(img)
        if self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = self.conv0(x)
            x = self.conv1(x, gain=math.sqrt(0.5))
            return y + x
        return self.conv1(self.conv0(x))


class Epilogue(nnx.Module):
    def __init__(self, cfg: DiscriminatorConfig, cmap_dim: int, *, rngs: nnx.Rngs):
        c = cfg.block_channels[4]
        self.group_size = cfg.mbstd_group_size
        self.num_channels = cfg.mbstd_num_channels
        self.conv = DConv(c + cfg.mbstd_num_channels, c, 3, activation="lrelu", conv_clamp=cfg.conv_clamp, rngs=rngs)
        self.fc = Dense(c * 16, c, activation="lrelu", rngs=rngs)
        self.out = Dense(c, cmap_dim if cmap_dim else 1, rngs=rngs)
        self.cmap_dim = cmap_dim

    def __call__(self, x, cmap):
        if self.num_channels > 0:
            x = minibatch_std(x, self.group_size, self.num_channels)
        x = self.conv(x)
        x = self.fc(rearrange(x, "b h w c -> b (c h w)"))  # the reference flattens NCHW
        x = self.out(x)
        if self.cmap_dim:
            return jnp.sum(x * cmap, axis=1) * (1.0 / math.sqrt(self.cmap_dim))
        return x[:, 0]


class LabelMapping(nnx.Module):
    """The reference D's ``MappingNetwork(z_dim=0, c_dim, w_dim=cmap_dim, num_ws=None)``: embed, normalize, MLP."""

    def __init__(self, cfg: DiscriminatorConfig, cmap_dim: int, *, rngs: nnx.Rngs):
        self.embed = Dense(cfg.c_dim, cmap_dim, rngs=rngs)
        self.num_layers = cfg.mapping_layers
        for i in range(cfg.mapping_layers):
            setattr(self, f"fc{i}", Dense(cmap_dim, cmap_dim, activation="lrelu", lr_mul=cfg.mapping_lr_mul, rngs=rngs))

    def __call__(self, c):
        x = ops.normalize_2nd_moment(self.embed(c.astype(jnp.float32)))
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        return x


class DiscriminatorModule(nnx.Module):
    def __init__(self, cfg: DiscriminatorConfig, *, rngs: nnx.Rngs):
        self.block_resolutions = cfg.block_resolutions
        for res in cfg.block_resolutions:
            setattr(self, f"b{res}", DiscriminatorBlock(cfg, res, rngs=rngs))
        cmap_dim = (cfg.cmap_dim or cfg.block_channels[4]) if cfg.c_dim else 0
        if cfg.c_dim:
            self.mapping = LabelMapping(cfg, cmap_dim, rngs=rngs)
        self.b4 = Epilogue(cfg, cmap_dim, rngs=rngs)

    def __call__(self, img, c):
        x = None
        for i, res in enumerate(self.block_resolutions):
            x = getattr(self, f"b{res}")(x, img if i == 0 else None)
        cmap = self.mapping(c) if c is not None and hasattr(self, "mapping") else None
        return self.b4(x, cmap)


# ------------------------------------------------------------------------ pure API


@dataclasses.dataclass(frozen=True)
class Discriminator(ModelHandle):
    """Hashable handle: pure functions of ``params`` for one :class:`DiscriminatorConfig`."""

    cfg: DiscriminatorConfig
    module = DiscriminatorModule


    def __call__(self, params: Params, img: jax.Array, c: jax.Array | None = None) -> jax.Array:
        """img ``[B, H, W, C]`` (about [-1, 1]) (+ c ``[B, c_dim]``) -> logits ``[B]``."""
        cfg = self.cfg
        shape = getattr(img, "shape", ())
        if len(shape) != 4 or tuple(shape[1:]) != (cfg.img_resolution, cfg.img_resolution, cfg.img_channels):
            raise InputError(f"img must have shape [B, {cfg.img_resolution}, {cfg.img_resolution}, "
                             f"{cfg.img_channels}], got {list(shape)}")
        if cfg.c_dim:
            if c is None or c.shape != (shape[0], cfg.c_dim):
                raise InputError(f"this discriminator is conditional: pass c of shape [B, {cfg.c_dim}]")
        else:
            c = None
        if not jnp.issubdtype(img.dtype, jnp.floating):
            img = img.astype(jnp.float32)
        return self.model(params)(img, c)


def load(path) -> tuple[Discriminator, Params]:
    """A ``kind="stylegan2-discriminator"`` checkpoint (``jaxedit convert stylegan2 ... --key D``) -> ``(D, params)``."""
    return checkpoint.load_handle(path, KIND, lambda cfg: Discriminator(DiscriminatorConfig.from_dict(cfg)))
