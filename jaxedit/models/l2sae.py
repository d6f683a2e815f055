"""Latents2Semantics (L2SAE; Tomar and Rajagopalan, arXiv 2312.15037): a structure/style autoencoder for local
style edits in one forward pass. No code of it is public; what the paper states and what is chosen here:

**From the paper** (abstract, and the source document's summary): the encoder splits an image into a spatial
*structure tensor* (multichannel, reduced resolution) and a global *style vector*; the structure channels are
*sliced* into groups that correspond to regions, and a region-of-interest mask is predicted from a group's
channels (its "Semantic Mask Prediction Network"); a local edit decodes the same structure with a perturbed
style and composites with the mask, ``x' = m * D(s, g + noise) + (1 - m) * x``; styles can be swapped between
images; no inversion, optimization or direction search at edit time.

**Chosen here** (each a default of :class:`L2SAEConfig`, with its reason):

- *Encoder*: the Swapping Autoencoder's template (Park et al. 2020) scaled to 32 px: convolutions with two
  stride-2 steps to a ``structure_stride`` 4 structure tensor (8x8 for 32 px; the Swapping Autoencoder keeps
  1/16 at 256 px) and a style head that pools globally (a global vector, as both papers say).
- *Slicing*: ``len(regions)`` groups of ``group_channels`` structure channels each, in region order
  (background, body, spot on the shapes world).
- *Mask from a group*: one 1x1 convolution per group (its ``group_channels`` -> one logit), a softmax over the
  groups, bilinear upsampling to the image. Each region's mask reads only its own group's channels, which is
  what makes a group "the region's" channels; the masks are trained with the label maps (cross-entropy), since a
  "semantic mask prediction" network implies segmentation supervision (faces: parsing masks).
- *Decoder*: StyleGAN2's modulated convolutions (jaxedit's own :class:`~jaxedit.models.stylegan2.generator.
  SynthesisLayer` and ``ToRGB``, no noise inputs) from the structure tensor, every layer modulated by the style.
- *Style scale*: the style vector is normalized to unit RMS (the Swapping Autoencoder L2-normalizes its codes),
  so a noise ``sigma`` means the same at every image.
- *Style spread* (``params["style_spread"]``, ``[d, d]``): a square root of the covariance of the training
  images' styles, stored with the model so that style noise (:func:`jaxedit.edits.local_style.style_noise`)
  moves along the directions real styles vary in. Isotropic noise leaves that low-dimensional set (on the shapes
  world two directions hold 70 % of the variance) and the decoder, never trained there, redraws geometry.
- *Losses* (:mod:`jaxedit.train.l2sae`): reconstruction (pixel MSE; a perceptual term is an option, off: on
  the shapes world it slowed learning, the trainer's doc gives the measurement), the masks' cross-entropy, and
  a swap term. The Swapping Autoencoder makes swaps meaningful with adversarial and patch co-occurrence
  discriminators; on the shapes world the renderer gives the swap's answer directly (the same geometry rendered
  with the donor's colours), so the swap term is a reconstruction of that render and no discriminator is
  trained (cheaper on this CPU; the closing note of the issue says so). Both discriminators are trainer options
  for data without such answers.

Pure interface: ``M = L2SAE(cfg)``, ``params = M.init(key)``, or ``M, params = jaxedit.load(path)``::

    s, g = M.encode(params, images)       # [B, h, w, R * group_channels], [B, style_dim]
    x = M.decode(params, s, g)            # [B, H, W, 3]
    m = M.masks(params, s)                # [B, H, W, R] (softmax over regions)
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError
from jaxedit.io import checkpoint
from jaxedit.models.stylegan2.generator import SynthesisLayer, ToRGB
from jaxedit.nn.handle import ModelHandle, compiled
from jaxedit.nn.layers import Buffer

KIND = "l2sae"


@dataclasses.dataclass(frozen=True)
class L2SAEConfig(JSONConfig):
    resolution: int = 32
    regions: tuple[str, ...] = ("background", "body", "spot")
    group_channels: int = 8
    style_dim: int = 32
    encoder_widths: tuple[int, ...] = (16, 32, 48)  # at resolution, /2, /stride (the structure's resolution)
    decoder_widths: tuple[int, ...] = (48, 32, 16)  # at /stride, /2, resolution
    structure_stride: int = 4  # 4 or 2: the structure grid is resolution / structure_stride

    def __post_init__(self):
        if len(self.encoder_widths) != 3 or len(self.decoder_widths) != 3 or self.resolution % 4:
            raise InputError("L2SAEConfig: three encoder and decoder widths and a resolution divisible by 4")
        if self.structure_stride not in (2, 4):
            raise InputError(f"L2SAEConfig: structure_stride must be 2 or 4, got {self.structure_stride}")
        if not self.regions or len(set(self.regions)) != len(self.regions):
            raise InputError(f"L2SAEConfig: region names must be distinct, got {list(self.regions)}")
        object.__setattr__(self, "regions", tuple(self.regions))
        object.__setattr__(self, "encoder_widths", tuple(self.encoder_widths))
        object.__setattr__(self, "decoder_widths", tuple(self.decoder_widths))

    @property
    def structure_channels(self) -> int:
        return len(self.regions) * self.group_channels

    @property
    def structure_size(self) -> int:
        return self.resolution // self.structure_stride


def _conv(cin, cout, rngs, k=3, stride=1):
    return nnx.Conv(cin, cout, (k, k), strides=(stride, stride), padding="SAME", rngs=rngs)


class L2SAENet(nnx.Module):
    def __init__(self, cfg: L2SAEConfig, *, rngs: nnx.Rngs):
        e, d = cfg.encoder_widths, cfg.decoder_widths
        r, c = len(cfg.regions), cfg.group_channels
        self.enc0 = _conv(5, e[0], rngs)
        self.enc1 = _conv(e[0], e[1], rngs, stride=2)
        down = cfg.structure_stride == 4  # the second stride-2 step (stride 2: it keeps /2)
        self.enc2 = _conv(e[1], e[2], rngs, stride=2 if down else 1)
        self.enc3 = _conv(e[2], e[2], rngs)
        self.structure = _conv(e[2], cfg.structure_channels, rngs, k=1)
        self.style0 = _conv(e[2], e[2], rngs)
        self.style1 = nnx.Linear(e[2], cfg.style_dim, rngs=rngs)
        self.mask_kernel = nnx.Param(jax.random.normal(rngs.params(), (r, c)) / c ** 0.5)
        self.mask_bias = nnx.Param(jnp.zeros((r,)))
        s, h = cfg.structure_size, cfg.resolution // 2
        self.stem = _conv(cfg.structure_channels, d[0], rngs, k=1)
        self.dec0 = SynthesisLayer(d[0], d[0], cfg.style_dim, s, up=False, conv_clamp=None, rngs=rngs)
        self.dec1 = SynthesisLayer(d[0], d[1], cfg.style_dim, h, up=down, conv_clamp=None, rngs=rngs)
        self.dec2 = SynthesisLayer(d[1], d[1], cfg.style_dim, h, up=False, conv_clamp=None, rngs=rngs)
        self.dec3 = SynthesisLayer(d[1], d[2], cfg.style_dim, 2 * h, up=True, conv_clamp=None, rngs=rngs)
        self.dec4 = SynthesisLayer(d[2], d[2], cfg.style_dim, 2 * h, up=False, conv_clamp=None, rngs=rngs)
        self.torgb = ToRGB(d[2], 3, cfg.style_dim, conv_clamp=None, rngs=rngs)
        # the styles' spread: ``L`` with ``L L^T`` = the covariance of the training images' styles (the trainer
        # sets it after training; identity until then); local style noise is drawn as ``L @ N(0, I)``
        self.style_spread = Buffer(jnp.eye(cfg.style_dim, dtype=jnp.float32))

    def encode(self, img):
        b, h, w, _ = img.shape
        yy, xx = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w), indexing="ij")
        coords = jnp.broadcast_to(jnp.stack([xx, yy], -1)[None], (b, h, w, 2)).astype(img.dtype)
        x = jax.nn.gelu(self.enc0(jnp.concatenate([img, coords], axis=-1)))
        x = jax.nn.gelu(self.enc1(x))
        x = jax.nn.gelu(self.enc2(x))
        x = jax.nn.gelu(self.enc3(x))
        g = self.style1(jnp.mean(jax.nn.gelu(self.style0(x)), axis=(1, 2)))
        g = g * jax.lax.rsqrt(jnp.mean(jnp.square(g), axis=-1, keepdims=True) + 1e-8)
        return self.structure(x), g

    def decode(self, s, g):
        x = self.stem(s)
        for i in range(5):
            layer = getattr(self, f"dec{i}")
            x = layer(x, layer.affine(g), noise_mode="none", key=None, delta=None)
        return self.torgb(x, self.torgb.affine(g), delta=None)

    def mask_logits(self, s):
        """Per region, its own group's channels -> one logit: ``[B, h, w, R]``."""
        b, h, w, _ = s.shape
        groups = s.reshape(b, h, w, self.mask_kernel.shape[0], self.mask_kernel.shape[1])
        return jnp.einsum("bhwrc,rc->bhwr", groups, self.mask_kernel[...]) + self.mask_bias[...]


@dataclasses.dataclass(frozen=True)
class L2SAE(ModelHandle):
    """Hashable handle: pure functions of ``params`` for one :class:`L2SAEConfig` (module doc)."""

    cfg: L2SAEConfig = L2SAEConfig()
    module = L2SAENet

    def check_images(self, images: jax.Array, what: str = "images") -> None:
        r = self.cfg.resolution
        if getattr(images, "ndim", 0) != 4 or images.shape[1:] != (r, r, 3):
            raise InputError(f"L2SAE: {what} must be [B, {r}, {r}, 3], got {list(getattr(images, 'shape', ()))}")

    def region_index(self, region: str) -> int:
        if region not in self.cfg.regions:
            raise InputError(f"unknown region {region!r}; this model's regions are {', '.join(self.cfg.regions)}")
        return self.cfg.regions.index(region)

    @compiled()
    def encode(self, params: dict, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """images ``[B, H, W, 3]`` in [-1, 1] -> (structure ``[B, h, w, R * group_channels]``, style ``[B, d]``)."""
        self.check_images(images)
        return self.model(params).encode(images)

    @compiled()
    def decode(self, params: dict, structure: jax.Array, style: jax.Array) -> jax.Array:
        """(structure, style) -> images ``[B, H, W, 3]``."""
        return self.model(params).decode(structure, style)

    @compiled()
    def mask_logits(self, params: dict, structure: jax.Array) -> jax.Array:
        """Region logits at the image's resolution ``[B, H, W, R]`` (bilinear from the structure's grid)."""
        logits = self.model(params).mask_logits(structure)
        r = self.cfg.resolution
        return jax.image.resize(logits, (logits.shape[0], r, r, logits.shape[-1]), "linear")

    def masks(self, params: dict, structure: jax.Array) -> jax.Array:
        """Soft region masks ``[B, H, W, R]`` (softmax over regions)."""
        return jax.nn.softmax(self.mask_logits(params, structure), axis=-1)

    def __call__(self, params: dict, images: jax.Array) -> jax.Array:
        """The reconstruction ``D(E(x))`` ``[B, H, W, 3]``."""
        return self.decode(params, *self.encode(params, images))


def load(path) -> tuple[L2SAE, dict]:
    """A ``kind="l2sae"`` checkpoint (``jaxedit train-l2sae``) -> ``(L2SAE, params)``."""
    return checkpoint.load_handle(path, KIND, lambda cfg: L2SAE(L2SAEConfig.from_dict(cfg)))
