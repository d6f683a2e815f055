"""The IR-SE backbone (InsightFace's "improved residual" ResNet with squeeze-excitation) and ArcFace.

One backbone serves two jobs: it is the body of the e4e / pSp encoders (:mod:`jaxedit.models.e4e`)
and, with an output layer, the ArcFace identity network ``model_ir_se50.pth`` (TreB1eN's
InsightFace_Pytorch ``Backbone``) that pSp, e4e and StyleCLIP use for their identity loss.

Structure (the reference's ``Backbone`` / ``bottleneck_IR_SE``, NHWC here):

- input layer: 3x3 conv (no bias) -> BatchNorm -> PReLU (per channel);
- body: units grouped in stages; the first unit of every stage has stride 2 (``get_block``).
  A unit is ``res(x) + shortcut(x)`` with
  ``res = BN -> 3x3 conv -> PReLU -> 3x3 conv (stride s) -> BN -> SE`` and the shortcut a
  ``MaxPool2d(1, s)`` (plain subsampling) when the width is unchanged, else 1x1 conv (stride s)
  -> BN. SE: ``x * sigmoid(fc2(relu(fc1(mean_hw(x)))))`` with bias-free 1x1 convs of width
  ``depth // se_reduction``. ``se_reduction = 0`` is the plain ``bottleneck_IR`` (no SE);
- ArcFace output layer: BatchNorm2d -> Dropout (identity at inference) -> flatten -> Linear
  -> BatchNorm1d, then l2 normalization.

BatchNorm runs in inference mode with the running statistics, applied (not folded) as torch's
CPU kernel does: ``x * (scale / sqrt(var + eps)) + (bias - mean * scale / sqrt(var + eps))``,
``eps = 1e-5``; the statistics are ``nnx.BatchStat`` leaves, so parameters are plain copies of the
torch tensors (``jaxedit.converters.e4e``).

The structure is data: :class:`IRSEConfig` holds the widths, units per stage, strides and SE
reduction that the converter reads from tensor shapes, not a fixed IR-SE50 table.

ArcFace: ``model = ArcFace(cfg)``; ``model(params, x)`` with ``x`` ``[B, S, S, 3]`` in [-1, 1] ->
``[B, embed_dim]`` unit-norm identity features. ``S = cfg.input_size`` (112 for
``model_ir_se50.pth``): the linear layer fixes it, so cropping and resizing are the caller's (pSp
and e4e crop ``[35:223, 32:220]`` of a 256x256 face and average-pool it to 112x112;
:func:`face_crop` does that).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError
from jaxedit.io import checkpoint
from jaxedit.nn import ops
from jaxedit.nn.handle import ModelHandle, compiled

KIND = "arcface"
BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class IRSEConfig(JSONConfig):
    """The backbone's structure (defaults: IR-SE50). Unit ``j`` of stage ``i`` maps the previous
    width to ``stage_channels[i]`` with stride ``stage_strides[i]`` if ``j == 0``, else 1."""

    input_channels: int = 64
    stage_units: tuple[int, ...] = (3, 4, 14, 3)
    stage_channels: tuple[int, ...] = (64, 128, 256, 512)
    stage_strides: tuple[int, ...] = (2, 2, 2, 2)
    se_reduction: int = 16  # 0: no SE module (bottleneck_IR)

    def __post_init__(self):
        n = len(self.stage_units)
        if not n or len(self.stage_channels) != n or len(self.stage_strides) != n:
            raise InputError(f"{type(self).__name__}: stage_units, stage_channels and stage_strides need one entry "
                             f"per stage, got {self.stage_units}, {self.stage_channels}, {self.stage_strides}")
        if min(self.stage_units) < 1 or min(self.stage_strides) < 1 or self.se_reduction < 0:
            raise InputError(f"{type(self).__name__}: units and strides must be >= 1 and se_reduction >= 0")

    @property
    def units(self) -> tuple[tuple[int, int, int], ...]:
        """``(in_channels, depth, stride)`` of every body unit, in order (the reference's ``get_blocks``)."""
        out, cin = [], self.input_channels
        for n, depth, stride in zip(self.stage_units, self.stage_channels, self.stage_strides):
            out += [(cin, depth, stride)] + [(depth, depth, 1)] * (n - 1)
            cin = depth
        return tuple(out)

    @property
    def downsampling(self) -> int:
        return math.prod(self.stage_strides)


# ------------------------------------------------------------------------------ layers
class BatchNorm(nnx.Module):
    """Inference-mode BatchNorm over the last axis (2d or 1d); ``mean``/``var`` are running statistics."""

    def __init__(self, c: int):
        self.scale = nnx.Param(jnp.ones((c,)))
        self.bias = nnx.Param(jnp.zeros((c,)))
        self.mean = nnx.BatchStat(jnp.zeros((c,)))
        self.var = nnx.BatchStat(jnp.ones((c,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        mean, var = jax.lax.stop_gradient(self.mean[...]), jax.lax.stop_gradient(self.var[...])
        alpha = self.scale[...] * jax.lax.rsqrt(var + BN_EPS)
        return x * alpha + (self.bias[...] - mean * alpha)


class PReLU(nnx.Module):
    """torch ``PReLU(C)``: ``x`` where ``x >= 0``, else ``alpha * x`` (one slope per channel)."""

    def __init__(self, c: int):
        self.alpha = nnx.Param(jnp.full((c,), 0.25))

    def __call__(self, x: jax.Array) -> jax.Array:
        return jnp.where(x >= 0, x, self.alpha[...] * x)


class Conv(nnx.Module):
    """torch ``Conv2d(cin, cout, k, stride, padding=k // 2)``; kernel HWIO, optional bias."""

    def __init__(self, cin: int, cout: int, k: int, *, rngs: nnx.Rngs, stride: int = 1, bias: bool = False):
        self.stride = stride
        self.kernel = nnx.Param(jax.random.normal(rngs.params(), (k, k, cin, cout)) / math.sqrt(cin * k * k))
        self.bias = nnx.Param(jnp.zeros((cout,))) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        w, s = self.kernel[...], self.stride
        if s == 1:
            y = ops.conv2d(x, w)  # 1x1 as a matmul; 3x3 with the fast backward pass
        elif w.shape[0] == 1:
            y = jnp.einsum("bhwi,io->bhwo", x[:, ::s, ::s], w[0, 0])
        else:
            p = w.shape[0] // 2
            y = jax.lax.conv_general_dilated(x, w, (s, s), ((p, p), (p, p)),
                                             dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return y if self.bias is None else y + self.bias[...]


class Unit(nnx.Module):
    """``bottleneck_IR_SE`` (``bottleneck_IR`` when ``se_hidden`` is 0)."""

    def __init__(self, cin: int, depth: int, stride: int, se_hidden: int, *, rngs: nnx.Rngs):
        self.stride = stride
        self.bn1 = BatchNorm(cin)
        self.conv1 = Conv(cin, depth, 3, rngs=rngs)
        self.prelu = PReLU(depth)
        self.conv2 = Conv(depth, depth, 3, rngs=rngs, stride=stride)
        self.bn2 = BatchNorm(depth)
        self.has_se = se_hidden > 0
        if self.has_se:
            self.se_fc1 = Conv(depth, se_hidden, 1, rngs=rngs)
            self.se_fc2 = Conv(se_hidden, depth, 1, rngs=rngs)
        self.has_shortcut_conv = cin != depth
        if self.has_shortcut_conv:
            self.shortcut_conv = Conv(cin, depth, 1, rngs=rngs, stride=stride)
            self.shortcut_bn = BatchNorm(depth)

    def __call__(self, x: jax.Array) -> jax.Array:
        r = self.bn2(self.conv2(self.prelu(self.conv1(self.bn1(x)))))
        if self.has_se:
            s = jnp.mean(r, axis=(1, 2), keepdims=True)
            r = r * jax.nn.sigmoid(self.se_fc2(jax.nn.relu(self.se_fc1(s))))
        if self.has_shortcut_conv:
            short = self.shortcut_bn(self.shortcut_conv(x))
        else:
            short = x[:, ::self.stride, ::self.stride]  # MaxPool2d(kernel 1, stride s)
        return r + short


class IRSE(nnx.Module):
    """Input layer + body units ``body_0 .. body_{n-1}``."""

    def __init__(self, cfg: IRSEConfig, *, rngs: nnx.Rngs):
        c = cfg.input_channels
        self.input_conv, self.input_bn, self.input_prelu = Conv(3, c, 3, rngs=rngs), BatchNorm(c), PReLU(c)
        self.n_units = len(cfg.units)
        for i, (cin, depth, stride) in enumerate(cfg.units):
            hidden = depth // cfg.se_reduction if cfg.se_reduction else 0
            setattr(self, f"body_{i}", Unit(cin, depth, stride, hidden, rngs=rngs))

    def __call__(self, x: jax.Array, taps: tuple[int, ...]) -> list[jax.Array]:
        """The outputs of the units numbered ``taps`` (units after the last tap are not run)."""
        x = self.input_prelu(self.input_bn(self.input_conv(x)))
        out = {}
        for i in range(max(taps) + 1):
            x = getattr(self, f"body_{i}")(x)
            out[i] = x
        return [out[i] for i in taps]


def check_images(x: jax.Array, what: str, size: int | None = None) -> None:
    shape = tuple(x.shape)
    ok = len(shape) == 4 and shape[-1] == 3 and (size is None or shape[1:3] == (size, size))
    if not ok:
        want = f"[B, {size}, {size}, 3]" if size else "[B, H, W, 3]"
        raise InputError(f"{what} expects images {want} (NHWC, in [-1, 1]), got {list(shape)}")


# ------------------------------------------------------------------------------ ArcFace
@dataclasses.dataclass(frozen=True)
class ArcFaceConfig(IRSEConfig):
    """IR-SE backbone + output layer. ``output_size``: side of the body's output map that the
    linear layer flattens (7 for 112x112 inputs); ``input_size = output_size * prod(stage_strides)``."""

    embed_dim: int = 512
    output_size: int = 7

    @property
    def input_size(self) -> int:
        return self.output_size * self.downsampling


class ArcFaceNet(nnx.Module):
    def __init__(self, cfg: ArcFaceConfig, *, rngs: nnx.Rngs):
        c = cfg.stage_channels[-1]
        self.backbone = IRSE(cfg, rngs=rngs)
        self.output_bn = BatchNorm(c)
        # rows in NHWC flatten order (h, w, c); the converter permutes torch's (c, h, w) columns
        self.output_linear = nnx.Linear(cfg.output_size ** 2 * c, cfg.embed_dim, rngs=rngs)
        self.output_bn1d = BatchNorm(cfg.embed_dim)

    def __call__(self, x: jax.Array) -> jax.Array:
        (f,) = self.backbone(x, (self.backbone.n_units - 1,))
        y = self.output_bn(f).reshape(f.shape[0], -1)  # Dropout: identity at inference
        y = self.output_bn1d(self.output_linear(y))
        return y / jnp.linalg.norm(y, axis=-1, keepdims=True)  # the reference's l2_norm (no epsilon)


@dataclasses.dataclass(frozen=True)
class ArcFace(ModelHandle):
    """Hashable handle: ``model(params, x [B, S, S, 3] in [-1, 1]) -> [B, embed_dim]`` unit-norm features
    (``S = cfg.input_size``, 112 for ``model_ir_se50.pth``); ``body(params, x)`` -> the body's output map."""

    cfg: ArcFaceConfig = ArcFaceConfig()
    module = ArcFaceNet

    def __call__(self, params: dict, x: jax.Array) -> jax.Array:
        check_images(x, "ArcFace", self.cfg.input_size)
        return self._forward(params, x)

    @compiled()
    def _forward(self, params: dict, x: jax.Array) -> jax.Array:
        return self.model(params)(x)

    def body(self, params: dict, x: jax.Array) -> jax.Array:
        """``[B, H, W, 3]`` -> the last body unit's output ``[B, H / 16, W / 16, C]`` (any input size)."""
        check_images(x, "ArcFace.body")
        return self._body(params, x)

    @compiled()
    def _body(self, params: dict, x: jax.Array) -> jax.Array:
        backbone = self.model(params).backbone
        return backbone(x, (backbone.n_units - 1,))[0]


def _adaptive_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]`` averaging weights of torch's ``AdaptiveAvgPool`` (windows floor(i n/o) .. ceil((i+1) n/o))."""
    m = np.zeros((n_out, n_in), np.float32)
    for i in range(n_out):
        lo, hi = (i * n_in) // n_out, -(-((i + 1) * n_in) // n_out)
        m[i, lo:hi] = 1.0 / (hi - lo)
    return m


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """torch ``AdaptiveAvgPool2d((size, size))`` on NHWC images (separable window means)."""
    ah, aw = jnp.asarray(_adaptive_matrix(x.shape[1], size)), jnp.asarray(_adaptive_matrix(x.shape[2], size))
    return jnp.einsum("oh,bhwc,pw->bopc", ah, x, aw, precision=jax.lax.Precision.HIGHEST)


def face_crop(x: jax.Array, size: int = 112) -> jax.Array:
    """pSp / e4e's identity-loss input: the ``[35:223, 32:220]`` crop of a 256x256 aligned face (scaled
    to other resolutions), average-pooled to ``size`` x ``size``. ``[B, R, R, 3]`` -> ``[B, size, size, 3]``."""
    check_images(x, "face_crop")
    r = x.shape[1]
    if x.shape[2] != r:
        raise InputError(f"face_crop expects square images, got {list(x.shape)}")
    t, b, l, rt = (round(v * r / 256) for v in (35, 223, 32, 220))
    return adaptive_avg_pool(x[:, t:b, l:rt], size)


def load(path) -> tuple[ArcFace, dict]:
    """A ``kind="arcface"`` checkpoint (``jaxedit convert arcface``) -> ``(ArcFace, params)``."""
    return checkpoint.load_handle(path, KIND, lambda cfg: ArcFace(ArcFaceConfig.from_dict(cfg)))
