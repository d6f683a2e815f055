"""StyleGAN2 generator (NVIDIA config-e/f, skip or resnet, conditional or not) in Flax NNX.

Numerically the generator of NVlabs/stylegan2-ada-pytorch (``force_fp32``): equalized-lr
gains at run time, leaky ReLU 0.2 with gain sqrt(2), conv clamp, const/random/none noise,
the [1,3,3,1] FIR with the reference padding, ToRGB without demodulation, ``w_avg``.

The public interface is :class:`StyleGAN2`, a hashable handle on a config whose methods are
pure functions of a parameter pytree (a plain nested dict of arrays whose keys mirror the
reference's state-dict names, e.g. ``params['synthesis']['b8']['conv0']['affine']['weight']``;
layouts: :mod:`jaxedit.models.stylegan2.params`)::

    G = StyleGAN2(cfg)
    params = G.init(jax.random.key(0))
    ws = G.mapping(params, z, psi=0.7)                     # [B, num_ws, w_dim]
    img = G.synthesis(params, ws, noise_mode="const")      # [B, H, W, C], about [-1, 1]

Everything composes with ``jax.jit``, ``jax.vmap`` and ``jax.grad``. Modulation is computed
as "scale the activations by the style, one shared-weight conv, scale the output by the
demodulation coefficients" (equal to the grouped "fused modconv"; no grouped convs).

StyleSpace: a layer's style ``s`` is the output of its affine layer (for ToRGB, before the
reference's ``1/sqrt(Cin)`` weight gain), keyed ``'b{res}.{conv0|conv1|torgb}'``.

Weight deltas (NaviGAN / CLIP-guided layer shift): ``deltas={'b16.conv1': D}`` adds ``D``
(HWIO, shape of the stored weight) to the layer's *raw stored* weight (the one demodulation
sees; the reference applies no equalized-lr gain to modulated conv weights, and ToRGB's gain
acts on the style), shared by the batch. ``WeightShift(direction, scale)`` applies
``W + scale[b] * direction`` per sample with shared convs only:
``conv(x, W + k X) = conv(x, W) + k conv(x, X)``, demodulated with the per-sample weight.
Fully per-sample deltas: ``jax.vmap`` over ``synthesis`` (slower: grouped convs, one kernel per sample).
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError
from jaxedit.nn import ops
from jaxedit.nn.handle import ModelHandle, compiled
from jaxedit.nn.layers import Buffer, Conv2d, Dense

Params = dict[str, Any]
NOISE_MODES = ("const", "random", "none")
ARCHITECTURES = ("skip", "resnet")


@dataclasses.dataclass(frozen=True)
class StyleGAN2Config(JSONConfig):
    """Everything needed to rebuild a generator (the ``model`` field of ``jaxedit.json``).

    ``channels`` is the per-block channel table for resolutions 4, 8, ..., img_resolution;
    when empty it is ``min(channel_base // res, channel_max)`` as in the reference.
    """

    z_dim: int = 512
    w_dim: int = 512
    c_dim: int = 0
    img_resolution: int = 1024
    img_channels: int = 3
    mapping_layers: int = 8
    mapping_lr_mul: float = 0.01
    embed_features: int | None = None  # None -> w_dim
    layer_features: int | None = None  # None -> w_dim
    channel_base: int = 32768
    channel_max: int = 512
    channels: tuple[int, ...] = ()
    architecture: str = "skip"
    conv_clamp: float | None = None

    def __post_init__(self):
        res = self.img_resolution
        if res < 4 or res & (res - 1):
            raise InputError(f"img_resolution must be a power of two >= 4, got {res}")
        if self.architecture not in ARCHITECTURES:
            raise InputError(f"architecture must be one of {ARCHITECTURES}, got {self.architecture!r}")
        if self.channels and len(self.channels) != len(self.resolutions):
            raise InputError(f"channels has {len(self.channels)} entries, expected one per block "
                             f"resolution {self.resolutions}")
        if self.z_dim == 0 and self.c_dim == 0:
            raise InputError("z_dim and c_dim cannot both be 0")
        object.__setattr__(self, "channels", tuple(int(c) for c in self.channels))

    @property
    def resolutions(self) -> tuple[int, ...]:
        return tuple(2 ** i for i in range(2, int(math.log2(self.img_resolution)) + 1))

    @property
    def block_channels(self) -> dict[int, int]:
        if self.channels:
            return dict(zip(self.resolutions, self.channels))
        return {r: min(self.channel_base // r, self.channel_max) for r in self.resolutions}

    @property
    def num_ws(self) -> int:
        return 2 * len(self.resolutions)

    def feature_layout(self) -> tuple[tuple[str, int], ...]:
        """``(name, channels)`` of the maps ``synthesis(..., return_features=True)`` returns, in order."""
        return feature_layout(self.block_channels)

    def layer_ws(self) -> dict[str, int]:
        """Modulated layer name -> index into ``ws`` (ToRGB of block R shares conv0 of 2R's w)."""
        out, idx = {}, 0
        for res in self.resolutions:
            names = ["conv1"] if res == 4 else ["conv0", "conv1"]
            for i, name in enumerate(names):
                out[f"b{res}.{name}"] = idx + i
            if self.architecture == "skip" or res == self.img_resolution:
                out[f"b{res}.torgb"] = idx + len(names)
            idx += len(names)
        return out


def feature_layout(block_channels: dict[int, int]) -> tuple[tuple[str, int], ...]:
    """Every synthesis layer's output for these block channels, in synthesis order: the 4x4 const input,
    ``b4.conv1``, then ``b{res}.conv0`` and ``b{res}.conv1`` per block; EditGAN's ``styles_feature`` (config-f
    512 px, the released car: 16 maps, 6016 channels)."""
    out = []
    for res in sorted(block_channels):
        names = ("const", "conv1") if res == 4 else ("conv0", "conv1")
        out += [(f"b{res}.{n}", int(block_channels[res])) for n in names]
    return tuple(out)


class WeightShift(NamedTuple):
    """Per-sample weight delta ``scale[b] * direction``; direction HWIO, scale scalar or ``[B]``."""

    direction: jax.Array
    scale: jax.Array | float


# ----------------------------------------------------------------------------- modules


def _modulated_conv(x, s, w, *, up: bool, demodulate: bool, delta):
    """Modulated (and demodulated) conv in non-grouped form. x [B,H,W,I], s [B,I], w [kh,kw,I,O] -> [B,H',W',O].

    3x3: scale the input by the style, one conv with the shared kernel, scale the output by
    the demodulation coefficients, at every batch size. Folding a batch of one into the kernel
    saved nothing (B=1: 1.2 ms at 32 px, 2.2 s at 1024 px either way) and made ``jax.vmap`` over
    per-example calls a grouped conv, 2.8-5.9x slower at N=16-64 (experiments/bench_vmap_generator.py).
    1x1: per-sample kernels as one batched matmul.
    """
    direction = scale = None
    if isinstance(delta, WeightShift):
        direction, scale = delta
    elif delta is not None:
        w = w + delta
    conv = ops.up_conv2d if up else ops.conv2d
    s2 = jnp.square(s)
    if direction is None:
        d = jax.lax.rsqrt(s2 @ jnp.sum(jnp.square(w), axis=(0, 1)) + 1e-8) if demodulate else None
        if w.shape[:2] == (1, 1) and not up:  # per-sample 1x1 kernels as one batched matmul
            wb = s[:, :, None] * w[0, 0]
            return jnp.einsum("bhwi,bio->bhwo", x, wb if d is None else wb * d[:, None, :])
        y = conv(x * s[:, None, None, :], w)
        return y if d is None else y * d[:, None, None, :]
    if direction.shape != w.shape:
        raise InputError(f"WeightShift direction has shape {direction.shape}, the layer weight {w.shape}")
    o = w.shape[-1]
    k = jnp.broadcast_to(jnp.asarray(scale, x.dtype), (x.shape[0],))
    yy = conv(x * s[:, None, None, :], jnp.concatenate([w, direction], axis=-1))
    y = yy[..., :o] + k[:, None, None, None] * yy[..., o:]
    if not demodulate:
        return y
    ww = s2 @ jnp.sum(jnp.square(w), axis=(0, 1))
    wx = s2 @ jnp.sum(w * direction, axis=(0, 1))
    xx = s2 @ jnp.sum(jnp.square(direction), axis=(0, 1))
    d = jax.lax.rsqrt(ww + 2 * k[:, None] * wx + jnp.square(k)[:, None] * xx + 1e-8)
    return y * d[:, None, None, :]


class SynthesisLayer(nnx.Module):
    """Modulated 3x3 conv (+2x up), noise, bias, lrelu, clamp."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, resolution: int, *, up: bool,
                 conv_clamp: float | None, rngs: nnx.Rngs):
        self.up = up
        self.resolution = resolution
        self.conv_clamp = conv_clamp
        self.affine = Dense(w_dim, in_ch, bias_init=1.0, rngs=rngs)
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (3, 3, in_ch, out_ch)))
        self.bias = nnx.Param(jnp.zeros((out_ch,), jnp.float32))
        self.noise_strength = nnx.Param(jnp.zeros((), jnp.float32))
        self.noise_const = Buffer(jax.random.normal(rngs.params(), (resolution, resolution)))

    def __call__(self, x, s, *, noise_mode: str, key, delta, gain: float = 1.0):
        y = _modulated_conv(x, s, self.weight[...], up=self.up, demodulate=True, delta=delta)
        if noise_mode == "const":
            y = y + (self.noise_const[...] * self.noise_strength[...])[None, :, :, None]
        elif noise_mode == "random":
            shape = (self.resolution, self.resolution, 1)
            if key.ndim == 0:
                noise = jax.random.normal(key, (y.shape[0], *shape), y.dtype)
            else:  # one key per sample: noise independent of how samples are batched
                noise = jax.vmap(lambda k: jax.random.normal(k, shape, y.dtype))(key)
            y = y + noise * self.noise_strength[...]
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return ops.bias_act(y, self.bias[...], "lrelu", gain, clamp)


class ToRGB(nnx.Module):
    """Modulated 1x1 conv without demodulation, bias, clamp."""

    def __init__(self, in_ch: int, out_ch: int, w_dim: int, *, conv_clamp: float | None, rngs: nnx.Rngs):
        self.conv_clamp = conv_clamp
        self.weight_gain = 1.0 / math.sqrt(in_ch)
        self.affine = Dense(w_dim, in_ch, bias_init=1.0, rngs=rngs)
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (1, 1, in_ch, out_ch)))
        self.bias = nnx.Param(jnp.zeros((out_ch,), jnp.float32))

    def __call__(self, x, s, *, delta):
        y = _modulated_conv(x, s * self.weight_gain, self.weight[...], up=False, demodulate=False, delta=delta)
        return ops.bias_act(y, self.bias[...], "linear", 1.0, self.conv_clamp)


class SynthesisBlock(nnx.Module):
    def __init__(self, cfg: StyleGAN2Config, res: int, *, rngs: nnx.Rngs):
        ch = cfg.block_channels
        out_ch = ch[res]
        self.res = res
        self.architecture = cfg.architecture
        self.is_last = res == cfg.img_resolution
        if res == 4:
            self.const = nnx.Param(jax.random.normal(rngs.params(), (4, 4, out_ch)))
        else:
            in_ch = ch[res // 2]
            self.conv0 = SynthesisLayer(in_ch, out_ch, cfg.w_dim, res, up=True, conv_clamp=cfg.conv_clamp, rngs=rngs)
            if cfg.architecture == "resnet":
                self.skip = Conv2d(in_ch, out_ch, 1, bias=False, up=2, rngs=rngs)
        self.conv1 = SynthesisLayer(out_ch, out_ch, cfg.w_dim, res, up=False, conv_clamp=cfg.conv_clamp, rngs=rngs)
        if cfg.architecture == "skip" or self.is_last:
            self.torgb = ToRGB(out_ch, cfg.img_channels, cfg.w_dim, conv_clamp=cfg.conv_clamp, rngs=rngs)

    def __call__(self, x, img, styles, *, noise_mode, keys, deltas):
        """-> (x, img, {layer name: its output}): ``b4.const``, ``b4.conv1`` / ``b{res}.conv0``, ``b{res}.conv1``."""
        name = f"b{self.res}"
        kw = dict(noise_mode=noise_mode)
        feats = {}
        if self.res == 4:
            x = jnp.broadcast_to(self.const[...][None], (styles[f"{name}.conv1"].shape[0], *self.const[...].shape))
            feats[f"{name}.const"] = x
            x = feats[f"{name}.conv1"] = self.conv1(x, styles[f"{name}.conv1"], key=keys[0],
                                                    delta=deltas.get(f"{name}.conv1"), **kw)
        elif self.architecture == "resnet":
            y = self.skip(x, gain=math.sqrt(0.5))
            x = feats[f"{name}.conv0"] = self.conv0(x, styles[f"{name}.conv0"], key=keys[0],
                                                    delta=deltas.get(f"{name}.conv0"), **kw)
            x = feats[f"{name}.conv1"] = self.conv1(x, styles[f"{name}.conv1"], key=keys[1],
                                                    delta=deltas.get(f"{name}.conv1"), gain=math.sqrt(0.5), **kw)
            x = y + x
        else:
            x = feats[f"{name}.conv0"] = self.conv0(x, styles[f"{name}.conv0"], key=keys[0],
                                                    delta=deltas.get(f"{name}.conv0"), **kw)
            x = feats[f"{name}.conv1"] = self.conv1(x, styles[f"{name}.conv1"], key=keys[1],
                                                    delta=deltas.get(f"{name}.conv1"), **kw)
        if img is not None:
            img = ops.upsample2d(img)
        if self.architecture == "skip" or self.is_last:
            y = self.torgb(x, styles[f"{name}.torgb"], delta=deltas.get(f"{name}.torgb"))
            img = y if img is None else img + y
        return x, img, feats


class Mapping(nnx.Module):
    def __init__(self, cfg: StyleGAN2Config, *, rngs: nnx.Rngs):
        self.z_dim, self.c_dim, self.num_ws = cfg.z_dim, cfg.c_dim, cfg.num_ws
        embed = cfg.embed_features or cfg.w_dim
        hidden = cfg.layer_features or cfg.w_dim
        if cfg.c_dim:
            self.embed = Dense(cfg.c_dim, embed, rngs=rngs)
        feats = [cfg.z_dim + (embed if cfg.c_dim else 0)] + [hidden] * (cfg.mapping_layers - 1) + [cfg.w_dim]
        self.num_layers = cfg.mapping_layers
        for i in range(cfg.mapping_layers):
            setattr(self, f"fc{i}", Dense(feats[i], feats[i + 1], activation="lrelu",
                                          lr_mul=cfg.mapping_lr_mul, rngs=rngs))
        self.w_avg = Buffer(jnp.zeros((cfg.w_dim,), jnp.float32))

    def __call__(self, z, c, psi, cutoff):
        parts = []
        if self.z_dim:
            parts.append(ops.normalize_2nd_moment(z.astype(jnp.float32)))
        if self.c_dim:
            parts.append(ops.normalize_2nd_moment(self.embed(c.astype(jnp.float32))))
        x = jnp.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
        for i in range(self.num_layers):
            x = getattr(self, f"fc{i}")(x)
        ws = jnp.broadcast_to(x[:, None, :], (x.shape[0], self.num_ws, x.shape[1]))
        return truncate(ws, self.w_avg[...], psi, cutoff)


def truncate(ws, w_avg, psi, cutoff=None):
    """``w_avg + psi * (ws - w_avg)`` on all layers, or on ``ws[:, :cutoff]`` only. ws [B, L, D]."""
    if isinstance(psi, (int, float)) and psi == 1:
        return ws
    psi = jnp.asarray(psi, ws.dtype)
    if psi.ndim == 1:  # one psi per sample
        psi = psi[:, None, None]
    t = w_avg + psi * (ws - w_avg)
    if cutoff is None:
        return t
    layer = jnp.arange(ws.shape[1])[None, :, None]
    return jnp.where(layer < cutoff, t, ws)


class Synthesis(nnx.Module):
    def __init__(self, cfg: StyleGAN2Config, *, rngs: nnx.Rngs):
        self.resolutions = cfg.resolutions
        self.layer_ws = cfg.layer_ws()
        for res in cfg.resolutions:
            setattr(self, f"b{res}", SynthesisBlock(cfg, res, rngs=rngs))

    def layer(self, name: str):
        block, layer = name.split(".")
        return getattr(getattr(self, block), layer)

    def ws_to_styles(self, ws):
        return {name: self.layer(name).affine(ws[:, i]) for name, i in self.layer_ws.items()}

    def __call__(self, styles, *, noise_mode, key, deltas, return_features):
        noisy = [n for n in self.layer_ws if not n.endswith("torgb")]
        keys = {}
        if noise_mode == "random":
            n = len(noisy)
            split = jax.random.split(key, n) if key.ndim == 0 else jax.vmap(lambda k: jax.random.split(k, n), out_axes=1)(key)
            keys = dict(zip(noisy, split))
        x = img = None
        features = {}
        for res in self.resolutions:
            blk_keys = [keys.get(f"b{res}.conv0" if res > 4 else f"b{res}.conv1"), keys.get(f"b{res}.conv1")]
            x, img, layer_feats = getattr(self, f"b{res}")(x, img, styles, noise_mode=noise_mode, keys=blk_keys,
                                                           deltas=deltas)
            features.update(layer_feats)
        return (img, features) if return_features else img


class Generator(nnx.Module):
    def __init__(self, cfg: StyleGAN2Config, *, rngs: nnx.Rngs):
        self.mapping = Mapping(cfg, rngs=rngs)
        self.synthesis = Synthesis(cfg, rngs=rngs)


# ------------------------------------------------------------------------ pure API


class MappingMethods:
    """``mapping`` and ``truncate``, shared by the StyleGAN2 and StyleGAN3 handles (``self.cfg`` has
    ``z_dim``, ``c_dim``; the module has ``.mapping``; params hold ``mapping.w_avg``)."""

    def mapping(self, params: Params, z: jax.Array | None, c: jax.Array | None = None,
                psi: float | jax.Array = 1.0, cutoff: int | None = None) -> jax.Array:
        """z ``[B, z_dim]`` (+ c ``[B, c_dim]``) -> ws ``[B, num_ws, w_dim]``, truncated toward ``w_avg``.

        ``psi`` is a scalar or ``[B]``; ``cutoff`` (static) truncates only ``ws[:, :cutoff]``.
        """
        cfg = self.cfg
        if cfg.z_dim:
            check_shape("z", z, (None, cfg.z_dim))
        if cfg.c_dim:
            if c is None:
                raise InputError(f"this generator is conditional: pass c of shape [B, {cfg.c_dim}]")
            check_shape("c", c, (None, cfg.c_dim))
        return self.model(params).mapping(z, c, psi, cutoff)

    def truncate(self, params: Params, ws: jax.Array, psi: float | jax.Array, cutoff: int | None = None) -> jax.Array:
        return truncate(ws, params["mapping"]["w_avg"], psi, cutoff)


@dataclasses.dataclass(frozen=True)
class StyleGAN2(MappingMethods, ModelHandle):
    """Hashable handle: pure functions of ``params`` for one :class:`StyleGAN2Config`.

    Called eagerly, ``synthesis*`` runs as one compiled program per input shape (not op by op);
    inside ``jit``/``vmap``/``grad`` it inlines."""

    cfg: StyleGAN2Config
    module = Generator


    # -- synthesis
    def ws_to_styles(self, params: Params, ws: jax.Array) -> dict[str, jax.Array]:
        """ws ``[B, num_ws, w_dim]`` -> StyleSpace ``{'b{res}.{layer}': s [B, Cin]}`` in synthesis order."""
        check_shape("ws", ws, (None, self.cfg.num_ws, self.cfg.w_dim))
        styles = self._ws_to_styles(params, ws)
        return {name: styles[name] for name in self.cfg.layer_ws()}  # jit returns dicts key-sorted

    @compiled()
    def _ws_to_styles(self, params: Params, ws: jax.Array) -> dict[str, jax.Array]:
        return self.model(params).synthesis.ws_to_styles(ws)

    def synthesis_from_styles(self, params: Params, styles: dict[str, jax.Array], noise_mode: str = "const",
                              key: jax.Array | None = None, deltas: dict[str, Any] | None = None,
                              return_features: bool = False):
        """StyleSpace -> image ``[B, H, W, C]`` (and the features: every synthesis layer's output
        ``{'b4.const', 'b4.conv1', 'b{res}.conv0', 'b{res}.conv1': [B, res, res, ch]}`` in synthesis order, the
        maps EditGAN's segmentation branch reads; in the skip architecture ``b{res}.conv1`` is the block output).

        ``noise_mode='random'`` draws fresh noise from ``key``: one key for the batch, or ``[B]``
        keys (one per sample, so a sample's noise does not depend on its batch).
        """
        if noise_mode not in NOISE_MODES:
            raise InputError(f"noise_mode must be one of {NOISE_MODES}, got {noise_mode!r}")
        if noise_mode == "random" and key is None:
            raise InputError("noise_mode='random' needs a PRNG key")
        layer_ws = self.cfg.layer_ws()
        missing = sorted(set(layer_ws) - set(styles))
        if missing:
            raise InputError(f"styles lack layers {missing}")
        deltas = dict(deltas or {})
        unknown = sorted(set(deltas) - set(layer_ws))
        if unknown:
            raise InputError(f"deltas name unknown layers {unknown}; modulated layers are {list(layer_ws)}")
        key = _as_typed_key(key if key is not None else jax.random.key(0))
        out = self._synthesize(params, styles, noise_mode, key, deltas, return_features)
        if return_features:  # jit returns dicts key-sorted: back to synthesis order
            img, feats = out
            return img, {name: feats[name] for name, _ in self.cfg.feature_layout()}
        return out

    @compiled("noise_mode", "return_features")
    def _synthesize(self, params, styles, noise_mode, key, deltas, return_features):
        return self.model(params).synthesis(styles, noise_mode=noise_mode, key=key, deltas=deltas,
                                             return_features=return_features)

    def synthesis(self, params: Params, ws: jax.Array, noise_mode: str = "const", key: jax.Array | None = None,
                  deltas: dict[str, Any] | None = None, return_features: bool = False):
        """W or W+ -> image. ws ``[B, num_ws, w_dim]`` (or ``[B, w_dim]``, broadcast to every layer)."""
        if ws.ndim == 2:
            ws = jnp.broadcast_to(ws[:, None], (ws.shape[0], self.cfg.num_ws, ws.shape[1]))
        styles = self.ws_to_styles(params, ws)
        return self.synthesis_from_styles(params, styles, noise_mode, key, deltas, return_features)

    def __call__(self, params: Params, z: jax.Array | None, c: jax.Array | None = None, psi=1.0,
                 cutoff: int | None = None, noise_mode: str = "const", key: jax.Array | None = None) -> jax.Array:
        """Mapping then synthesis: z ``[B, z_dim]`` -> image ``[B, H, W, C]``."""
        return self.synthesis(params, self.mapping(params, z, c, psi, cutoff), noise_mode, key)

    def layer_weight_shape(self, name: str) -> tuple[int, ...]:
        block, layer = name.split(".")
        return tuple(self.param_shapes()["synthesis"][block][layer]["weight"].shape)


def _as_typed_key(key: jax.Array) -> jax.Array:
    """Accept typed keys (``jax.random.key``) or raw uint32 ``PRNGKey`` data; one key or ``[B]``."""
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        return key
    return jax.random.wrap_key_data(key)


def check_shape(name: str, x, expected: tuple[int | None, ...]) -> None:
    shape = getattr(x, "shape", None)
    if shape is None or len(shape) != len(expected) or any(e is not None and e != s for s, e in zip(shape, expected)):
        want = "[" + ", ".join("B" if e is None else str(e) for e in expected) + "]"
        raise InputError(f"{name} must have shape {want}, got {None if shape is None else list(shape)}")
