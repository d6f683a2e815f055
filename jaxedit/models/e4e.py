"""The e4e encoder (Tov et al. 2021, "Designing an Encoder for StyleGAN Image Manipulation") in Flax NNX.

``Encoder4Editing`` of omertov/encoder4editing on the IR-SE backbone (:mod:`jaxedit.models.irse`):

- body features ``c1, c2, c3``: the outputs of body units ``feature_units`` (the reference's
  hard-coded 6, 20, 23: the ends of IR-SE50's last three stages);
- a feature pyramid: ``p2 = up(c3) + latlayer1(c2)``, ``p1 = up(p2) + latlayer2(c1)`` where
  ``up`` is bilinear resizing to the lateral map's size with ``align_corners=True`` and the
  latlayers are 1x1 convs with bias;
- ``n_styles`` GradualStyleBlocks (``style_pools[i]`` 3x3 stride-2 convs with bias and
  LeakyReLU(0.01), down to 1x1, then an equalized linear layer, lr_mul 1). Style ``i`` reads
  ``c3`` for ``i < coarse_ind``, ``p2`` for ``i < middle_ind``, else ``p1``;
- codes: ``w[:, 0] = style_0(c3)`` and ``w[:, i] = w[:, 0] + style_i(...)`` for every ``i >= 1``.
  That is e4e at inference: its ``progressive_stage`` is ``ProgressiveStage.Inference`` (18)
  whenever the encoder is built for inference (the stage is not saved in checkpoints, only the
  training schedule ``progressive_steps`` in ``opts``), so every delta is applied;
- pSp's wrapper adds ``latent_avg`` (``[n_styles, w_dim]``) when ``opts.start_from_latent_avg``
  (``cfg.add_latent_avg``): ``codes = encoder(x) + latent_avg``, the W+ codes fed to the generator.

Pure interface: ``E = Encoder(cfg)``; ``E(params, x)`` with ``x`` ``[B, H, W, 3]`` in [-1, 1]
(e4e's transforms: 256x256, ``(x - 0.5) / 0.5``) -> W+ codes ``[B, n_styles, w_dim]``;
``E.raw_codes(params, x)`` -> the same without ``latent_avg``; ``E.features(params, x)`` ->
``(c1, c2, c3)``. Any input size works whose style blocks end at 1x1 (the reference flattens
with ``view(-1, C)``): e.g. 256 (c3 16x16) or 64 (c3 4x4, padded stride-2 convs keep 1x1).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit.errors import InputError
from jaxedit.io import checkpoint
from jaxedit.models.irse import IRSE, Conv, IRSEConfig, check_images
from jaxedit.nn.handle import ModelHandle, compiled
from jaxedit.nn.layers import Buffer, Dense

KIND = "e4e"
LEAKY_SLOPE = 0.01  # torch nn.LeakyReLU() default


def _default_pools(n_styles: int, coarse: int = 3, middle: int = 7) -> tuple[int, ...]:
    """The reference's GradualStyleBlock spatial sizes 16 / 32 / 64 -> 4 / 5 / 6 stride-2 convs."""
    return tuple(4 if i < coarse else 5 if i < middle else 6 for i in range(n_styles))


@dataclasses.dataclass(frozen=True)
class E4EConfig(IRSEConfig):
    """IR-SE backbone + e4e head (defaults: the released FFHQ e4e, 18 styles of 512)."""

    n_styles: int = 18
    style_width: int = 512  # GradualStyleBlock out_c (its convs' width and the linear layer's input)
    w_dim: int = 512
    style_pools: tuple[int, ...] = _default_pools(18)
    coarse_ind: int = 3
    middle_ind: int = 7
    feature_units: tuple[int, int, int] = (6, 20, 23)
    add_latent_avg: bool = True

    def __post_init__(self):
        super().__post_init__()
        if len(self.style_pools) != self.n_styles or self.n_styles < 1 or min(self.style_pools) < 1:
            raise InputError(f"E4EConfig: style_pools {self.style_pools} needs n_styles = {self.n_styles} entries >= 1")
        f = self.feature_units
        if len(f) != 3 or not 0 <= f[0] < f[1] < f[2] < len(self.units):
            raise InputError(f"E4EConfig: feature_units {f} must be 3 increasing body units < {len(self.units)}")

    def feature_channels(self) -> tuple[int, int, int]:
        return tuple(self.units[i][1] for i in self.feature_units)


class StyleBlock(nnx.Module):
    """GradualStyleBlock: ``convs_0 .. convs_{n-1}`` (3x3, stride 2, bias, LeakyReLU 0.01), then ``linear``."""

    def __init__(self, cin: int, width: int, w_dim: int, pools: int, *, rngs: nnx.Rngs):
        self.pools = pools
        for j in range(pools):
            setattr(self, f"convs_{j}", Conv(cin if j == 0 else width, width, 3, rngs=rngs, stride=2, bias=True))
        self.linear = Dense(width, w_dim, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        for j in range(self.pools):
            x = jax.nn.leaky_relu(getattr(self, f"convs_{j}")(x), LEAKY_SLOPE)
        return self.linear(x.reshape(x.shape[0], -1))  # 1x1 by construction (checked by the handle)


def _interp(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear source indices and weights along one axis, align_corners=True (float32 as on CPU)."""
    scale = np.float32((n_in - 1) / (n_out - 1)) if n_out > 1 else np.float32(0)
    src = scale * np.arange(n_out, dtype=np.float32)
    i0 = np.floor(src).astype(np.int32)
    lam = (src - i0.astype(np.float32)).astype(np.float32)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0).astype(np.int32)
    return i0, i1, (np.float32(1) - lam).astype(np.float32), lam


def upsample_add(x: jax.Array, y: jax.Array) -> jax.Array:
    """``F.interpolate(x, size=y's HxW, mode='bilinear', align_corners=True) + y`` (NHWC)."""
    (h0, h1, hl0, hl1), (w0, w1, wl0, wl1) = _interp(x.shape[1], y.shape[1]), _interp(x.shape[2], y.shape[2])
    col = lambda r: wl0[:, None] * jnp.take(r, w0, axis=2) + wl1[:, None] * jnp.take(r, w1, axis=2)
    top, bottom = col(jnp.take(x, h0, axis=1)), col(jnp.take(x, h1, axis=1))
    return hl0[:, None, None] * top + hl1[:, None, None] * bottom + y


class E4ENet(nnx.Module):
    def __init__(self, cfg: E4EConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        c1, c2, c3 = cfg.feature_channels()
        self.backbone = IRSE(cfg, rngs=rngs)
        for i, pools in enumerate(cfg.style_pools):
            setattr(self, f"styles_{i}", StyleBlock(c3, cfg.style_width, cfg.w_dim, pools, rngs=rngs))
        self.latlayer1 = Conv(c2, c3, 1, rngs=rngs, bias=True)
        self.latlayer2 = Conv(c1, c3, 1, rngs=rngs, bias=True)
        if cfg.add_latent_avg:
            self.latent_avg = Buffer(jnp.zeros((cfg.n_styles, cfg.w_dim)))

    def features(self, x: jax.Array) -> list[jax.Array]:
        return self.backbone(x, self.cfg.feature_units)

    def __call__(self, x: jax.Array, add_latent_avg: bool) -> jax.Array:
        cfg = self.cfg
        c1, c2, c3 = self.features(x)
        w0 = self.styles_0(c3)
        codes, feats = [w0], c3
        for i in range(1, cfg.n_styles):
            if i == cfg.coarse_ind:
                p2 = feats = upsample_add(c3, self.latlayer1(c2))
            elif i == cfg.middle_ind:
                feats = upsample_add(p2, self.latlayer2(c1))
            codes.append(w0 + getattr(self, f"styles_{i}")(feats))
        w = jnp.stack(codes, axis=1)
        return w + self.latent_avg[...] if add_latent_avg and cfg.add_latent_avg else w


def _after_convs(n: int, k: int) -> int:
    for _ in range(k):
        n = (n - 1) // 2 + 1  # 3x3, stride 2, padding 1
    return n


@dataclasses.dataclass(frozen=True)
class Encoder(ModelHandle):
    """Hashable handle for one :class:`E4EConfig`; methods are pure functions of ``params``."""

    cfg: E4EConfig = E4EConfig()
    module = E4ENet

    def _check(self, x: jax.Array, what: str) -> None:
        check_images(x, what)
        cfg = self.cfg
        strides = [s for _, _, s in cfg.units]
        # sizes[axis][level]: the side of c1 / c2 / c3 along that axis
        sizes = [[_size(h, strides[:u + 1]) for u in cfg.feature_units] for h in x.shape[1:3]]
        for i, pools in enumerate(cfg.style_pools):
            level = 2 if i < cfg.coarse_ind else 1 if i < cfg.middle_ind else 0
            end = [_after_convs(s[level], pools) for s in sizes]
            if end != [1, 1]:
                raise InputError(f"{what}: a {x.shape[1]}x{x.shape[2]} input leaves style block {i} with a "
                                 f"{end[0]}x{end[1]} map instead of 1x1 (e4e's inputs are 256x256)")

    def __call__(self, params: dict, x: jax.Array) -> jax.Array:
        """``[B, H, W, 3]`` in [-1, 1] -> W+ codes ``[B, n_styles, w_dim]`` (``latent_avg`` added if the model has it)."""
        self._check(x, "e4e")
        return self._codes(params, x, True)

    def raw_codes(self, params: dict, x: jax.Array) -> jax.Array:
        """The encoder's own output, before pSp adds ``latent_avg``: ``[B, n_styles, w_dim]``."""
        self._check(x, "e4e.raw_codes")
        return self._codes(params, x, False)

    @compiled("add_latent_avg")
    def _codes(self, params: dict, x: jax.Array, add_latent_avg: bool) -> jax.Array:
        return self.model(params)(x, add_latent_avg)

    def features(self, params: dict, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Body features ``(c1, c2, c3)`` (NHWC), the maps the style blocks and the pyramid read."""
        check_images(x, "e4e.features")
        return tuple(self._features(params, x))

    @compiled()
    def _features(self, params: dict, x: jax.Array):
        return self.model(params).features(x)


def _size(n: int, strides: list[int]) -> int:
    for s in strides:
        n = (n - 1) // s + 1  # 3x3 / 1x1 convs with padding k // 2 and MaxPool2d(1, s) agree
    return n


def load(path) -> tuple[Encoder, dict]:
    """A ``kind="e4e"`` checkpoint (``jaxedit convert e4e``) -> ``(Encoder, params)``."""
    return checkpoint.load_handle(path, KIND, lambda cfg: Encoder(E4EConfig.from_dict(cfg)))

