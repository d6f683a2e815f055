"""OpenAI CLIP in Flax NNX: ViT or modified-ResNet image tower, causal text transformer.

The layers follow openai/CLIP's ``model.py`` exactly (pre-LN residual attention blocks,
QuickGELU, class token + ``ln_post`` + ``proj`` for the ViT; a 3-conv stem with average
pooling, anti-aliased bottlenecks (average pooling instead of strided convolutions) and a
QKV attention pool for the ResNet; text features taken at the EOT position =
``argmax(tokens)``). The parameter tree mirrors torch's state-dict names, so the mapping in
``converters/clip.py`` is a handful of rules: ``<name>.<i>`` -> ``<name>_<i>``; linear weights
-> ``kernel [in, out]``; conv weights -> ``kernel`` HWIO; LayerNorm/BatchNorm weight ->
``scale``, running stats -> ``mean`` / ``var``; ``in_proj_weight`` -> ``in_proj.kernel``.

Pure interface: ``model = CLIP(cfg)``, ``params = model.init(key)``;
``model.encode_image(params, images [B, R, R, 3])`` (already preprocessed, see
:func:`preprocess`) -> ``[B, D]``; ``model.encode_text(params, tokens [B, L] int)`` ->
``[B, D]``; ``model(params, images, tokens)`` -> ``(logits_per_image [B, T], logits_per_text
[T, B])``. Features are not normalized; logits are ``exp(logit_scale)`` times cosines.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError
from jaxedit.io import checkpoint
from jaxedit.models.clip.tokenizer import Tokenizer
from jaxedit.nn.handle import ModelHandle, compiled

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
PREPROCESS_MODES = ("clip", "styleclip", "none")
BN_EPS = 1e-5


@dataclasses.dataclass(frozen=True)
class CLIPConfig(JSONConfig):
    """openai/CLIP's ``CLIP(...)`` arguments (defaults: ViT-B/32) plus what the reference fixes.

    ``vision_layers``: an int (ViT depth) or 4 ints (ResNet blocks per stage; then
    ``vision_patch_size`` is None). ``vision_heads`` None means the reference's rule (ViT:
    ``vision_width // 64``; ResNet attention pool: ``vision_width * 32 // 64``).
    """

    embed_dim: int = 512
    image_resolution: int = 224
    vision_layers: Union[int, tuple[int, ...]] = 12
    vision_width: int = 768
    vision_patch_size: Union[int, None] = 32
    context_length: int = 77
    vocab_size: int = 49408
    transformer_width: int = 512
    transformer_heads: int = 8
    transformer_layers: int = 12
    vision_heads: Union[int, None] = None
    activation: str = "quick_gelu"  # "quick_gelu" (OpenAI) or "gelu" (exact erf GELU, open_clip's non-quickgelu)
    ln_eps: float = 1e-5

    def __post_init__(self):
        if self.activation not in ("quick_gelu", "gelu"):
            raise InputError(f"CLIPConfig.activation must be 'quick_gelu' or 'gelu', got {self.activation!r}")
        if self.is_vit:
            if not self.vision_patch_size or self.image_resolution % self.vision_patch_size:
                raise InputError(f"CLIPConfig: image_resolution {self.image_resolution} is not a multiple of "
                                 f"vision_patch_size {self.vision_patch_size}")
        elif len(self.vision_layers) != 4 or self.image_resolution % 32:
            raise InputError(f"CLIPConfig: a ResNet tower needs 4 stages and a resolution multiple of 32, got "
                             f"vision_layers {self.vision_layers}, image_resolution {self.image_resolution}")
        pool_width = self.vision_width if self.is_vit else self.vision_width * 32
        if self.heads_vision < 1 or self.transformer_heads < 1:
            raise InputError(f"CLIPConfig: attention heads ({self.heads_vision}, {self.transformer_heads}) must be "
                             ">= 1 (the reference rule is width // 64)")
        if pool_width % self.heads_vision or self.transformer_width % self.transformer_heads:
            raise InputError(f"CLIPConfig: widths ({pool_width}, {self.transformer_width}) are not multiples of "
                             f"the heads ({self.heads_vision}, {self.transformer_heads})")

    @property
    def is_vit(self) -> bool:
        return isinstance(self.vision_layers, int)

    @property
    def heads_vision(self) -> int:
        if self.vision_heads:
            return self.vision_heads
        return self.vision_width // 64 if self.is_vit else self.vision_width * 32 // 64


def _normal(std: float):
    return nnx.initializers.normal(std)


def _act(name: str, x: jax.Array) -> jax.Array:
    return x * jax.nn.sigmoid(1.702 * x) if name == "quick_gelu" else jax.nn.gelu(x, approximate=False)


def _avg_pool(x: jax.Array, k: int) -> jax.Array:
    """torch ``AvgPool2d(k)`` (stride k, trailing rows/columns that do not fill a window dropped)."""
    if k == 1:
        return x
    b, h, w, c = x.shape
    h, w = h // k, w // k
    return x[:, :h * k, :w * k].reshape(b, h, k, w, k, c).mean(axis=(2, 4))


def _heads(x: jax.Array, heads: int) -> jax.Array:
    return x.reshape(*x.shape[:-1], heads, x.shape[-1] // heads)


# ------------------------------------------------------------------------------ transformer
class LayerNorm(nnx.LayerNorm):
    def __init__(self, width: int, eps: float, *, rngs: nnx.Rngs):
        super().__init__(width, epsilon=eps, use_fast_variance=False, rngs=rngs)


class Attention(nnx.Module):
    """torch ``nn.MultiheadAttention``: stacked q/k/v projection ``in_proj`` ``[D, 3D]``, ``out_proj``."""

    def __init__(self, width: int, heads: int, std_in: float, std_out: float, *, rngs: nnx.Rngs):
        self.heads = heads
        self.in_proj = nnx.Linear(width, 3 * width, kernel_init=_normal(std_in), rngs=rngs)
        self.out_proj = nnx.Linear(width, width, kernel_init=_normal(std_out), rngs=rngs)

    def __call__(self, x: jax.Array, causal: bool) -> jax.Array:
        q, k, v = jnp.split(_heads(self.in_proj(x), 3 * self.heads), 3, axis=-2)
        y = jax.nn.dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(y.reshape(x.shape))


class MLP(nnx.Module):
    def __init__(self, width: int, activation: str, std_fc: float, std_proj: float, *, rngs: nnx.Rngs):
        self.activation = activation
        self.c_fc = nnx.Linear(width, 4 * width, kernel_init=_normal(std_fc), rngs=rngs)
        self.c_proj = nnx.Linear(4 * width, width, kernel_init=_normal(std_proj), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.c_proj(_act(self.activation, self.c_fc(x)))


class ResidualAttentionBlock(nnx.Module):
    def __init__(self, width: int, heads: int, layers: int, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        std_proj = width ** -0.5 * (2 * layers) ** -0.5  # the reference's text-tower init, used for both towers
        self.ln_1 = LayerNorm(width, cfg.ln_eps, rngs=rngs)
        self.attn = Attention(width, heads, width ** -0.5, std_proj, rngs=rngs)
        self.ln_2 = LayerNorm(width, cfg.ln_eps, rngs=rngs)
        self.mlp = MLP(width, cfg.activation, (2 * width) ** -0.5, std_proj, rngs=rngs)

    def __call__(self, x: jax.Array, causal: bool) -> jax.Array:
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nnx.Module):
    """``resblocks_0 .. resblocks_{n-1}`` over ``[B, L, D]``."""

    def __init__(self, width: int, layers: int, heads: int, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        self.layers = layers
        for i in range(layers):
            setattr(self, f"resblocks_{i}", ResidualAttentionBlock(width, heads, layers, cfg, rngs=rngs))

    def __call__(self, x: jax.Array, causal: bool = False) -> jax.Array:
        for i in range(self.layers):
            x = getattr(self, f"resblocks_{i}")(x, causal)
        return x


# ------------------------------------------------------------------------------ image towers
class VisionTransformer(nnx.Module):
    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        w, p = cfg.vision_width, cfg.vision_patch_size
        scale = w ** -0.5
        grid = cfg.image_resolution // p
        self.conv1 = nnx.Conv(3, w, (p, p), strides=p, padding="VALID", use_bias=False, rngs=rngs)
        self.class_embedding = nnx.Param(scale * jax.random.normal(rngs.params(), (w,)))
        self.positional_embedding = nnx.Param(scale * jax.random.normal(rngs.params(), (grid * grid + 1, w)))
        self.ln_pre = LayerNorm(w, cfg.ln_eps, rngs=rngs)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.heads_vision, cfg, rngs=rngs)
        self.ln_post = LayerNorm(w, cfg.ln_eps, rngs=rngs)
        self.proj = nnx.Param(scale * jax.random.normal(rngs.params(), (w, cfg.embed_dim)))

    def __call__(self, images: jax.Array) -> jax.Array:
        x = self.conv1(images)
        b, _, _, w = x.shape
        x = x.reshape(b, -1, w)  # patches in row-major order, as torch's flatten of [W, g, g]
        cls = jnp.broadcast_to(self.class_embedding[...], (b, 1, w))
        x = self.ln_pre(jnp.concatenate([cls, x], axis=1) + self.positional_embedding[...])
        x = self.transformer(x)
        return self.ln_post(x[:, 0]) @ self.proj[...]


class BatchNorm(nnx.Module):
    """Inference-mode ``BatchNorm2d``: running statistics (``mean``, ``var``) are buffers, not learned."""

    def __init__(self, c: int, zero_scale: bool = False):
        self.scale = nnx.Param(jnp.zeros((c,)) if zero_scale else jnp.ones((c,)))
        self.bias = nnx.Param(jnp.zeros((c,)))
        self.mean = nnx.BatchStat(jnp.zeros((c,)))
        self.var = nnx.BatchStat(jnp.ones((c,)))

    def __call__(self, x: jax.Array) -> jax.Array:
        mean, var = jax.lax.stop_gradient(self.mean[...]), jax.lax.stop_gradient(self.var[...])
        return (x - mean) * (self.scale[...] * jax.lax.rsqrt(var + BN_EPS)) + self.bias[...]


def _conv(cin: int, cout: int, k: int, rngs: nnx.Rngs, stride: int = 1) -> nnx.Conv:
    return nnx.Conv(cin, cout, (k, k), strides=stride, padding=[(k // 2, k // 2)] * 2, use_bias=False, rngs=rngs)


class Bottleneck(nnx.Module):
    """1x1 -> 3x3 -> AvgPool(stride) -> 1x1 (x4); shortcut AvgPool(stride) -> 1x1 -> BN when the shape changes."""

    def __init__(self, cin: int, planes: int, stride: int, *, rngs: nnx.Rngs):
        self.stride = stride
        self.conv1, self.bn1 = _conv(cin, planes, 1, rngs), BatchNorm(planes)
        self.conv2, self.bn2 = _conv(planes, planes, 3, rngs), BatchNorm(planes)
        self.conv3, self.bn3 = _conv(planes, 4 * planes, 1, rngs), BatchNorm(4 * planes, zero_scale=True)
        self.has_downsample = stride > 1 or cin != 4 * planes
        if self.has_downsample:
            self.downsample_0, self.downsample_1 = _conv(cin, 4 * planes, 1, rngs), BatchNorm(4 * planes)

    def __call__(self, x: jax.Array) -> jax.Array:
        out = jax.nn.relu(self.bn1(self.conv1(x)))
        out = jax.nn.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(_avg_pool(out, self.stride)))
        if self.has_downsample:
            x = self.downsample_1(self.downsample_0(_avg_pool(x, self.stride)))
        return jax.nn.relu(out + x)


class AttentionPool2d(nnx.Module):
    """Multi-head attention of the spatial mean (prepended as a token) over all positions."""

    def __init__(self, spatial: int, width: int, heads: int, out_dim: int, *, rngs: nnx.Rngs):
        std = width ** -0.5
        self.heads = heads
        self.positional_embedding = nnx.Param(std * jax.random.normal(rngs.params(), (spatial * spatial + 1, width)))
        self.q_proj = nnx.Linear(width, width, kernel_init=_normal(std), rngs=rngs)
        self.k_proj = nnx.Linear(width, width, kernel_init=_normal(std), rngs=rngs)
        self.v_proj = nnx.Linear(width, width, kernel_init=_normal(std), rngs=rngs)
        self.c_proj = nnx.Linear(width, out_dim, kernel_init=_normal(std), rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        b, h, w, c = x.shape
        x = x.reshape(b, h * w, c)
        x = jnp.concatenate([x.mean(axis=1, keepdims=True), x], axis=1) + self.positional_embedding[...]
        q, k, v = (_heads(f(t), self.heads) for f, t in ((self.q_proj, x[:, :1]), (self.k_proj, x), (self.v_proj, x)))
        return self.c_proj(jax.nn.dot_product_attention(q, k, v).reshape(b, c))


class ModifiedResNet(nnx.Module):
    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        w = cfg.vision_width
        self.conv1, self.bn1 = _conv(3, w // 2, 3, rngs, stride=2), BatchNorm(w // 2)
        self.conv2, self.bn2 = _conv(w // 2, w // 2, 3, rngs), BatchNorm(w // 2)
        self.conv3, self.bn3 = _conv(w // 2, w, 3, rngs), BatchNorm(w)
        blocks, cin = [], w
        for stage, n in enumerate(cfg.vision_layers, start=1):
            planes = w * 2 ** (stage - 1)
            for i in range(n):
                blocks.append(f"layer{stage}_{i}")
                setattr(self, blocks[-1], Bottleneck(cin, planes, 2 if stage > 1 and i == 0 else 1, rngs=rngs))
                cin = 4 * planes
        self.blocks = tuple(blocks)
        self.attnpool = AttentionPool2d(cfg.image_resolution // 32, 32 * w, cfg.heads_vision, cfg.embed_dim,
                                        rngs=rngs)

    def __call__(self, images: jax.Array) -> jax.Array:
        x = jax.nn.relu(self.bn1(self.conv1(images)))
        x = jax.nn.relu(self.bn2(self.conv2(x)))
        x = _avg_pool(jax.nn.relu(self.bn3(self.conv3(x))), 2)
        for name in self.blocks:
            x = getattr(self, name)(x)
        return self.attnpool(x)


# ------------------------------------------------------------------------------ CLIP
class CLIPNet(nnx.Module):
    def __init__(self, cfg: CLIPConfig, *, rngs: nnx.Rngs):
        tw = cfg.transformer_width
        self.visual = VisionTransformer(cfg, rngs=rngs) if cfg.is_vit else ModifiedResNet(cfg, rngs=rngs)
        self.transformer = Transformer(tw, cfg.transformer_layers, cfg.transformer_heads, cfg, rngs=rngs)
        self.token_embedding = nnx.Embed(cfg.vocab_size, tw, embedding_init=_normal(0.02), rngs=rngs)
        self.positional_embedding = nnx.Param(0.01 * jax.random.normal(rngs.params(), (cfg.context_length, tw)))
        self.ln_final = LayerNorm(tw, cfg.ln_eps, rngs=rngs)
        self.text_projection = nnx.Param(tw ** -0.5 * jax.random.normal(rngs.params(), (tw, cfg.embed_dim)))
        self.logit_scale = nnx.Param(jnp.asarray(math.log(1 / 0.07), jnp.float32))

    def encode_text(self, tokens: jax.Array) -> jax.Array:
        x = self.token_embedding(tokens) + self.positional_embedding[:tokens.shape[1]]
        x = self.ln_final(self.transformer(x, causal=True))
        return x[jnp.arange(x.shape[0]), jnp.argmax(tokens, axis=-1)] @ self.text_projection[...]


@dataclasses.dataclass(frozen=True)
class CLIP(ModelHandle):
    """Hashable handle: pure functions of ``params`` for one :class:`CLIPConfig`."""

    cfg: CLIPConfig = CLIPConfig()
    module = CLIPNet

    def encode_image(self, params: dict, images: jax.Array) -> jax.Array:
        """``[B, R, R, 3]`` preprocessed images -> ``[B, embed_dim]`` (not normalized)."""
        r = self.cfg.image_resolution
        if images.ndim != 4 or tuple(images.shape[1:]) != (r, r, 3):
            raise InputError(f"CLIP.encode_image expects images [B, {r}, {r}, 3], got {list(images.shape)} "
                             "(see jaxedit.models.clip.preprocess)")
        return self._encode_image(params, images)

    @compiled()
    def _encode_image(self, params: dict, images: jax.Array) -> jax.Array:
        return self.model(params).visual(images)

    def encode_text(self, params: dict, tokens: jax.Array) -> jax.Array:
        """``[B, L]`` integer token ids (L <= context_length; EOT has the largest id) -> ``[B, embed_dim]``.

        Shorter ``L`` gives the same features as zero padding to ``context_length`` (causal mask)."""
        if tokens.ndim != 2 or tokens.shape[1] > self.cfg.context_length or not jnp.issubdtype(tokens.dtype,
                                                                                                 jnp.integer):
            raise InputError(f"CLIP.encode_text expects integer tokens [B, L <= {self.cfg.context_length}], got "
                             f"{tokens.dtype} {list(tokens.shape)}")
        return self._encode_text(params, tokens)

    @compiled()
    def _encode_text(self, params: dict, tokens: jax.Array) -> jax.Array:
        return self.model(params).encode_text(tokens)

    def __call__(self, params: dict, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
        """-> ``(logits_per_image [B, T], logits_per_text [T, B])``: ``exp(logit_scale)`` x cosine similarity."""
        i = self.encode_image(params, images)
        t = self.encode_text(params, tokens)
        i = i / jnp.linalg.norm(i, axis=-1, keepdims=True)
        t = t / jnp.linalg.norm(t, axis=-1, keepdims=True)
        logits = jnp.exp(params["logit_scale"]) * i @ t.T
        return logits, logits.T


# ------------------------------------------------------------------------------ preprocessing
def _area_matrix(n_in: int, n_out: int) -> np.ndarray:
    """``[n_out, n_in]``: nearest upsampling by ``n_out / g`` then average pooling by ``n_in / g``, g = gcd."""
    g = math.gcd(n_in, n_out)
    up, k = n_out // g, n_in // g
    u = np.arange(n_in * up)
    m = np.zeros((n_out, n_in), np.float32)
    np.add.at(m, (u // k, u // up), 1.0 / k)
    return m


def preprocess(images: jax.Array, resolution: int, mode: str = "clip") -> jax.Array:
    """``[B, H, W, 3]`` images in [-1, 1] -> ``[B, R, R, 3]`` CLIP input (R = ``resolution``). Pure; jit-able.

    - ``"clip"``: openai/CLIP's ``_transform`` on [0, 1] pixels: bicubic resize of the short side
      to R (``jax.image.resize``: Keys a = -0.5 with antialiasing, PIL's filter; the long side
      is ``int(R * long / short)``), center crop (offset ``round((n - R) / 2)``), clip to [0, 1]
      (PIL works on uint8; its 1/255 rounding is not reproduced), CLIP mean/std normalization.
    - ``"styleclip"``: StyleCLIP's CLIP loss input: nearest upsampling by ``u`` then average
      pooling by ``k``, no normalization (pixels stay in [-1, 1]). StyleCLIP uses u = 7, k =
      S // 32 (S = 1024 -> 224); here ``u = R / gcd(S, R)``, ``k = S / gcd(S, R)`` per axis, which
      is exactly that for every power-of-two S >= 32 and R = 224, and gives R x R for any S
      (computed as one [R, S] area-weight matrix per axis, never upsampled).
    - ``"none"``: the images as they are (they must already be R x R; e.g. a CLIP trained on
      [-1, 1] renders).
    """
    if images.ndim != 4 or images.shape[-1] != 3:
        raise InputError(f"preprocess expects images [B, H, W, 3], got {list(images.shape)}")
    if mode not in PREPROCESS_MODES:
        raise InputError(f"preprocess mode must be one of {PREPROCESS_MODES}, got {mode!r}")
    b, h, w, _ = images.shape
    if mode == "none":
        if (h, w) != (resolution, resolution):
            raise InputError(f"preprocess mode 'none' needs {resolution}x{resolution} images, got {h}x{w}")
        return images
    if mode == "styleclip":
        ah, aw = jnp.asarray(_area_matrix(h, resolution)), jnp.asarray(_area_matrix(w, resolution))
        return jnp.einsum("oh,bhwc,pw->bopc", ah, images, aw, precision=jax.lax.Precision.HIGHEST)
    x = (images + 1.0) / 2.0
    short, long = min(h, w), max(h, w)
    new_long = int(resolution * long / short)
    nh, nw = (resolution, new_long) if h <= w else (new_long, resolution)
    if (nh, nw) != (h, w):
        x = jax.image.resize(x, (b, nh, nw, 3), "bicubic")
    top, left = int(round((nh - resolution) / 2.0)), int(round((nw - resolution) / 2.0))
    x = jnp.clip(x[:, top:top + resolution, left:left + resolution], 0.0, 1.0)
    return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def load(path) -> tuple[CLIP, dict]:
    """A ``kind="clip"`` checkpoint (``jaxedit convert clip`` or ``train-clip``) -> ``(CLIP handle, params)``.

    Its tokenizer: ``jaxedit.models.clip.tokenizer.Tokenizer.from_file(path)`` (the merges file beside the weights).
    """
    return checkpoint.load_handle(path, "clip", lambda cfg: CLIP(CLIPConfig.from_dict(cfg)))


# ------------------------------------------------------------------------------ CLIP as an edit objective
@dataclasses.dataclass(frozen=True)
class Guide:
    """CLIP with its input preprocessing, as text-guided edits use it (hashable, so it can be a
    static argument of ``jax.jit``): generator images in, embeddings out.

    ``embed_images(params, images [B, H, W, 3] in [-1, 1]) -> [B, D]`` (:func:`preprocess` with
    ``mode``, then the image tower); ``embed_texts(params, tokens [T, L]) -> [T, D]``. Rows are
    independent (no batch statistics), which the batched optimizers of ``jaxedit.edits.text`` need.
    """

    model: CLIP
    mode: str = "clip"

    def __post_init__(self):
        if self.mode not in PREPROCESS_MODES:
            raise InputError(f"preprocess mode must be one of {PREPROCESS_MODES}, got {self.mode!r}")

    def embed_images(self, params: dict, images: jax.Array) -> jax.Array:
        return self.model.encode_image(params, preprocess(images, self.model.cfg.image_resolution, self.mode))

    def embed_texts(self, params: dict, tokens: jax.Array) -> jax.Array:
        return self.model.encode_text(params, tokens)


def load_guide(path, mode: str | None = None):
    """A CLIP checkpoint -> ``(Guide, params, Tokenizer)``. ``mode`` defaults to the preprocessing
    recorded in the checkpoint (``"clip"`` for converted OpenAI models, ``"none"`` for shapes-clip);
    StyleCLIP's own loss used ``"styleclip"``."""
    model, params = load(path)
    mode = mode or checkpoint.read_meta(path).get("source", {}).get("preprocess") or "clip"
    return Guide(model, mode), params, Tokenizer.from_file(path)
