"""Text-guided (CLIP) edits: StyleCLIP's three methods and the CLIP-guided one-layer weight shift.

Methods (facts from ``orpatashnik/StyleCLIP``; see ``shared/notes/edit-methods-reference.md``):

1. Latent optimization (:func:`optimize_latents`): W+ by Adam on
   ``D_clip(G(w), t) + l2_lambda |w - w0|^2`` with the reference's learning-rate ramp.
2. Global directions in StyleSpace: :func:`style_channel_stats`, :func:`channel_relevance`
   (``fs3``), :func:`text_direction`, :func:`channel_weights`, :func:`global_edit`.
3. Latent mapper ``w + 0.1 M(w)`` (:class:`Mapper`, :func:`make_mapper_step`, :func:`train_mappers`).
4. CLIP-guided shift of one conv layer's weights (seed 002): :func:`optimize_layer_shift`,
   :func:`apply_layer_shifts`.

Released StyleCLIP files (``fs3.npy``, mapper ``.pt``) are read by :mod:`converters.styleclip`.

CLIP enters only as arguments, so any CLIP works (this module imports none):

- ``image_embed(images [B, H, W, 3] in [-1, 1]) -> [B, D]``: a pure, jit-able callable that
  includes the preprocessing, e.g. ``lambda x: clip.encode_image(cp, preprocess(x, 224, "styleclip"))``
  for StyleCLIP's quirk (x7 nearest up, average pool to 224, no mean/std normalization). It
  must treat rows independently (no batch statistics): batching relies on it.
- text embeddings ``[P, D]`` (``[..., T, D]`` with templates), already encoded by the caller.

Embeddings are L2-normalized here and ``D_clip = 1 - cos`` (the reference's
``1 - logits_per_image / 100`` is the same number for OpenAI's CLIP, whose logit scale is 100).

Batching: every method runs all prompts x images in one program. The variables of all
pairs are stacked (``[P, N, ...]``) and the per-pair losses are *summed*; Adam is
element-wise, so one Adam on the stack is exactly P*N independent Adams (each entry's
gradient is its own pair's gradient), i.e. the optimizer state is batched over pairs. Steps
run in ``lax.scan``. The mapper trains P mappers at once with ``vmap`` over parameters and
optimizer state. Functions are pure: ``jax.jit`` them with ``G``, ``image_embed``, ``steps``
and layer names static (``functools.partial`` then ``jax.jit``).

Speed: inside ``lax.scan`` the generator's gradient convs stay fast because
``jaxedit.nn.ops.conv2d`` writes its backward pass as forward-form convs (XLA:CPU's generic
path for them inside loops was measured 80x slower).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.models.stylegan2 import Shift, StyleGAN2
from jaxedit.nn.handle import ModelHandle
from jaxedit.nn.layers import Dense

Array = jax.Array
ImageEmbed = Callable[[Array], Array]
Styles = dict[str, Array]


class TextEditFileError(ValueError):
    """A released StyleCLIP artifact (``fs3.npy``, mapper ``.pt``) cannot be used; names the file."""


def _unit(x: Array, axis: int = -1) -> Array:
    """``x / |x|`` along ``axis`` (0 stays 0)."""
    n = jnp.sqrt(jnp.sum(jnp.square(x), axis=axis, keepdims=True))
    return x / jnp.where(n > 0, n, 1.0)


def _l2_norm(x: Array) -> Array:
    """``|x|_2`` over all entries, with gradient 0 (not NaN) at ``x = 0``."""
    sq = jnp.sum(jnp.square(x))
    return jnp.where(sq > 0, jnp.sqrt(jnp.where(sq > 0, sq, 1.0)), 0.0)


def clip_cosine(image_embed: ImageEmbed, images: Array, text_emb: Array) -> Array:
    """Cosine between CLIP embeddings of ``images [B, H, W, 3]`` and ``text_emb [B, D]`` (or ``[D]``): ``[B]``."""
    return jnp.sum(_unit(image_embed(images)) * _unit(text_emb), axis=-1)


def _check_layer(G: StyleGAN2, layer: str) -> tuple[int, ...]:
    names = G.cfg.layer_ws()
    if layer not in names:
        raise ValueError(f"unknown layer {layer!r}; modulated layers are {list(names)}")
    return G.layer_weight_shape(layer)


# ------------------------------------------------------------------ 1. latent optimization


def styleclip_lr(lr: float, steps: int, rampdown: float = 0.25, rampup: float = 0.05) -> optax.Schedule:
    """StyleCLIP's ``get_lr``: at step i, t = i / steps,
    ``lr * (0.5 - 0.5 cos(pi * min(1, (1 - t) / rampdown))) * min(1, t / rampup)`` (0 at step 0)."""

    def schedule(count):
        t = count / steps
        ramp = 0.5 - 0.5 * jnp.cos(jnp.pi * jnp.minimum(1.0, (1.0 - t) / rampdown))
        return lr * ramp * jnp.minimum(1.0, t / rampup)

    return schedule


class LatentOptResult(NamedTuple):
    ws: Array  # [P, N, num_ws, w_dim] edited W+
    loss: Array  # [steps, P, N] total loss before each step's update
    cosine: Array  # [steps, P, N] CLIP cosine(image, text) before each step's update


def identity_loss(identity: ImageEmbed, images: Array, reference_features: Array) -> Array:
    """StyleCLIP's ``IDLoss`` with any feature extractor: ``1 - cos(identity(images), reference_features)``, ``[B]``.

    ``identity(images [B, H, W, 3] in [-1, 1]) -> [B, F]`` must be pure and row-independent; the
    reference uses ArcFace (IR-SE50) on the 188x188 face crop resized to 112 (faces only), which a
    user passes in as such a callable."""
    return 1.0 - jnp.sum(_unit(identity(images)) * _unit(reference_features), axis=-1)


def optimize_latents(G: StyleGAN2, gparams, image_embed: ImageEmbed, w0: Array, text_emb: Array, *,
                     steps: int = 300, lr: float = 0.1, l2_lambda: float = 0.008, rampdown: float = 0.25,
                     rampup: float = 0.05, noise_mode: str = "const", identity: ImageEmbed | None = None,
                     id_lambda: float = 0.0) -> LatentOptResult:
    """StyleCLIP latent optimization (``optimization/run_optimization.py``, edit mode) for every
    (prompt, image) pair at once.

    w0 ``[N, num_ws, w_dim]`` start latents, text_emb ``[P, D]``. Per pair, minimizes
    ``(1 - cos(E(G(w)), t_p)) + l2_lambda * sum((w - w0_n)^2) [+ id_lambda * identity_loss]``
    over W+ with Adam (betas 0.9, 0.999, eps 1e-8) and :func:`styleclip_lr` (learning rate 0 at
    the first step, as in the reference, whose Adam moments still see that step's gradient). The
    optional identity term (:func:`identity_loss` against ``G(w0_n)``; reference: ArcFace, weight
    0 by default) is used when ``identity`` is given. Noise: ``'const'`` (the reference's
    ``randomize_noise=False``).
    """
    P, N = text_emb.shape[0], w0.shape[0]
    L, D = w0.shape[1:]
    start = jnp.broadcast_to(w0[None], (P, N, L, D))
    t = _unit(text_emb)[:, None]  # [P, 1, D]
    if identity is not None:
        feats0 = jax.lax.stop_gradient(jnp.tile(identity(G.synthesis(gparams, w0, noise_mode)), (P, 1)))

    def losses(ws):
        img = G.synthesis(gparams, ws.reshape(P * N, L, D), noise_mode)
        cos = jnp.sum(_unit(image_embed(img)).reshape(P, N, -1) * t, axis=-1)
        loss = (1.0 - cos) + l2_lambda * jnp.sum(jnp.square(ws - start), axis=(-2, -1))
        if identity is not None:
            loss = loss + id_lambda * identity_loss(identity, img, feats0).reshape(P, N)
        return jnp.sum(loss), (loss, cos)

    opt = optax.adam(styleclip_lr(lr, steps, rampdown, rampup))

    def step(carry, _):
        ws, state = carry
        (_, hist), g = jax.value_and_grad(losses, has_aux=True)(ws)
        upd, state = opt.update(g, state, ws)
        return (optax.apply_updates(ws, upd), state), hist

    (ws, _), (loss, cos) = jax.lax.scan(step, (start, opt.init(start)), length=steps)
    return LatentOptResult(ws, loss, cos)


# ------------------------------------------------------------------ 2. global directions


_LAYER_ORDER = {"conv0": 0, "conv1": 1, "torgb": 2}


def _synthesis_order(names) -> list[str]:
    """StyleSpace names ``b{res}.{conv0|conv1|torgb}`` in synthesis order (the reference's S list)."""
    def key(n):
        block, layer = n.split(".")
        return int(block[1:]), _LAYER_ORDER[layer]
    return sorted(names, key=key)


def relevance_layers(G: StyleGAN2, max_resolution: int = 128) -> tuple[str, ...]:
    """The layers whose channels get an ``fs3`` row: every non-ToRGB layer up to ``max_resolution``
    (the reference: S-list indices <= 16 of a 1024 generator, i.e. up to 128 x 128), synthesis order."""
    return tuple(n for n in G.cfg.layer_ws() if not n.endswith("torgb") and int(n.split(".")[0][1:]) <= max_resolution)


def fs3_layers(style_dims: Mapping[str, int], rows: int, where: str = "fs3") -> tuple[str, ...]:
    """The non-ToRGB layers (synthesis order) whose channels an ``fs3`` of ``rows`` rows covers.

    As the reference's ``SplitS``, rows fill the non-ToRGB layers in order; the rest get no
    edit. ``style_dims``: ``{layer: channels}`` (e.g. ``{k: v.shape[-1] for k, v in styles.items()}``).
    """
    out, total = [], 0
    for name in _synthesis_order(style_dims):
        if total == rows:
            break
        if name.endswith("torgb"):
            continue
        total += int(style_dims[name])
        out.append(name)
    if total != rows:
        raise TextEditFileError(f"{where}: {rows} rows do not cover whole non-ToRGB StyleSpace layers of this "
                                f"generator (channel counts in order: {[int(style_dims[n]) for n in out]})")
    return tuple(out)


def style_dims(G: StyleGAN2) -> dict[str, int]:
    """``{layer: StyleSpace channels}`` of a generator."""
    shapes = G.param_shapes()["synthesis"]
    return {n: shapes[n.split(".")[0]][n.split(".")[1]]["affine"]["weight"].shape[1] for n in G.cfg.layer_ws()}


def style_channel_stats(G: StyleGAN2, gparams, key: Array, n: int = 100_000, *, psi: float = 0.7,
                        cutoff: int | None = 8, batch: int = 1000) -> dict[str, Styles]:
    """Per-channel mean and std of every StyleSpace layer over ``n`` samples: ``{'mean': {layer: [C]},
    'std': {layer: [C]}}`` (population std, numpy's default, as the reference's ``GetCodeMS``).

    Reference (``global_torch/manipulate.py``): 100,000 z from ``RandomState(5)``, truncation
    psi 0.7 with cutoff 8. Here z comes from ``key`` and the moments are merged chunk by chunk
    (Chan et al.'s pairwise update, exact and stable) in one ``lax.scan``.
    """
    chunks = -(-n // batch)
    keys = jax.random.split(key, chunks)
    dims = style_dims(G)

    def chunk(carry, inp):
        k, i = inp
        z = jax.random.normal(k, (batch, G.cfg.z_dim))
        styles = G.ws_to_styles(gparams, G.mapping(gparams, z, psi=psi, cutoff=cutoff))
        valid = (i * batch + jnp.arange(batch)) < n
        nb = jnp.sum(valid).astype(jnp.float32)
        new = {}
        for name, (na, ma, m2a) in carry.items():
            s = styles[name]
            mb = jnp.sum(jnp.where(valid[:, None], s, 0.0), 0) / nb
            m2b = jnp.sum(jnp.where(valid[:, None], jnp.square(s - mb), 0.0), 0)
            tot = na + nb
            d = mb - ma
            new[name] = (tot, ma + d * nb / tot, m2a + m2b + jnp.square(d) * na * nb / tot)
        return new, None

    init = {name: (jnp.zeros(()), jnp.zeros((c,)), jnp.zeros((c,))) for name, c in dims.items()}
    acc, _ = jax.lax.scan(chunk, init, (keys, jnp.arange(chunks)))
    return {"mean": {k: v[1] for k, v in acc.items()},
            "std": {k: jnp.sqrt(v[2] / v[0]) for k, v in acc.items()}}


def channel_relevance(G: StyleGAN2, gparams, image_embed: ImageEmbed, ws: Array, stats: Mapping[str, Styles], *,
                      delta: float = 5.0, layers: Sequence[str] | None = None, batch: int = 256,
                      noise_mode: str = "const", cumulative_means: bool = False) -> Array:
    """StyleCLIP's channel relevance ``fs3 [C_total, D]`` (``global_torch/SingleChannel.py``).

    For each channel c of ``layers`` (default :func:`relevance_layers`; rows in synthesis
    order, channels in order) and each of the M latents ``ws [M, num_ws, w_dim]``: set
    ``s_c := mean_c`` and render with ``s_c - delta std_c`` and ``s_c + delta std_c``; CLIP-embed
    and normalize both; ``diff = e(+) - e(-)``, normalized; average over the M images;
    normalize (``GetFs``). The reference uses the first 100 of its 100,000 stats samples.

    Batched: one ``lax.map`` step renders ``2 * M * k`` images for a chunk of
    ``k = max(1, batch // (2 M))`` channels (channel index, sign and image vectorized); the
    reference renders one image at a time (about 1.1 M renders for FFHQ).

    Differences from the reference, which are the caller's or on purpose:

    - its images go to CLIP as uint8 through PIL and CLIP's standard preprocessing;
      here whatever ``image_embed`` does (float pixels);
    - its loop writes the means into the style arrays *in place through a shallow copy*, so
      when channel f is measured every earlier channel (all earlier rows of fs3) is still
      held at its mean. The default measures each channel on the unmodified images (the evident
      intent); ``cumulative_means=True`` reproduces the reference's behaviour (for parity with
      released ``fs3.npy`` files).
    """
    layers = relevance_layers(G) if layers is None else tuple(_synthesis_order(layers))
    styles = G.ws_to_styles(gparams, ws)
    for name in layers:
        if name not in styles or name.endswith("torgb"):
            raise ValueError(f"relevance layer {name!r} is not a non-ToRGB StyleSpace layer of this generator")
    M = ws.shape[0]
    dims = [styles[n].shape[1] for n in layers]
    offsets = np.concatenate([[0], np.cumsum(dims)])
    total = int(offsets[-1])
    layer_of = jnp.asarray(np.repeat(np.arange(len(layers)), dims))
    per = max(1, batch // (2 * M))
    chunks = -(-total // per)
    index = jnp.minimum(jnp.arange(chunks * per), total - 1).reshape(chunks, per)
    sign = jnp.array([-1.0, 1.0])

    def chunk(f):  # f [per] global channel indices
        edited = {}
        for name, s in styles.items():
            base = jnp.broadcast_to(s[None, None], (per, 2, M, s.shape[1]))
            if name in layers:
                j = layers.index(name)
                local = jnp.clip(f - offsets[j], 0, dims[j] - 1)
                hit = (jnp.arange(dims[j])[None] == local[:, None]) & (layer_of[f] == j)[:, None]  # [per, C]
                mean, std = stats["mean"][name], stats["std"][name]
                value = mean[local][:, None] + sign[None] * delta * std[local][:, None]  # [per, 2]
                if cumulative_means:
                    earlier = (offsets[j] + jnp.arange(dims[j]))[None] < f[:, None]  # [per, C]
                    base = jnp.where(earlier[:, None, None], mean, base)
                base = jnp.where(hit[:, None, None], value[:, :, None, None], base)
            edited[name] = base.reshape(per * 2 * M, s.shape[1])
        img = G.synthesis_from_styles(gparams, edited, noise_mode)
        e = _unit(image_embed(img)).reshape(per, 2, M, -1)
        return _unit(jnp.mean(_unit(e[:, 1] - e[:, 0]), axis=1))

    out = jax.lax.map(chunk, index)
    return out.reshape(chunks * per, -1)[:total]


def prompt_embedding(text_emb: Array) -> Array:
    """Template ensemble: ``[..., T, D]`` -> ``[..., D]``: normalize each, average over T, normalize."""
    return _unit(jnp.mean(_unit(text_emb), axis=-2))


def text_direction(target_emb: Array, neutral_emb: Array) -> Array:
    """StyleCLIP's ``GetDt``: ``normalize(prompt_embedding(target) - prompt_embedding(neutral))``.

    target ``[P, T, D]`` and neutral ``[T, D]`` (or ``[P, T, D]``): the T prompt templates
    (reference: 79 ImageNet templates such as ``'a bad photo of a {}.'``) filled with the target /
    neutral text and encoded by the caller. Returns ``dt [P, D]``.
    """
    return _unit(prompt_embedding(target_emb) - prompt_embedding(neutral_emb))


def channel_weights(fs3: Array, dt: Array, beta: float | Array) -> Array:
    """``r = fs3 . dt`` with ``|r| < beta`` zeroed, divided by ``max |r|`` (``GetBoundary``): ``[P, C]``.

    All-zero rows (``beta`` above every ``|r|``) stay zero.
    """
    r = jnp.einsum("cd,pd->pc", fs3, jnp.atleast_2d(dt))
    r = jnp.where(jnp.abs(r) < beta, 0.0, r)
    m = jnp.max(jnp.abs(r), axis=-1, keepdims=True)
    return r / jnp.where(m > 0, m, 1.0)


def global_edit(styles: Styles, fs3: Array, stats: Mapping[str, Styles], dt: Array, alpha: float | Array,
                beta: float | Array) -> Styles:
    """``s' = s + alpha * r * std`` (``r`` from :func:`channel_weights`) for prompts x strengths x images.

    styles ``{layer: [N, C]}`` (``G.ws_to_styles``), fs3 ``[C_total, D]``, dt ``[P, D]``, alpha
    scalar or ``[A]``. Returns ``{layer: [P, A, N, C]}``; layers without fs3 rows (ToRGB, high
    resolutions) are unchanged. Render with ``G.synthesis_from_styles`` on the styles
    reshaped to ``[P * A * N, C]``.
    """
    dims = {k: v.shape[-1] for k, v in styles.items()}
    layers = fs3_layers(dims, fs3.shape[0])
    r = channel_weights(fs3, dt, beta)  # [P, C_total]
    alpha = jnp.atleast_1d(jnp.asarray(alpha, r.dtype))
    P, A = r.shape[0], alpha.shape[0]
    out, start = {}, 0
    for name in _synthesis_order(styles):
        s = styles[name]
        if name in layers:
            rl = r[:, start:start + dims[name]]
            start += dims[name]
            shift = alpha[None, :, None] * (rl * stats["std"][name])[:, None, :]  # [P, A, C]
            out[name] = s[None, None] + shift[:, :, None, :]
        else:
            out[name] = jnp.broadcast_to(s, (P, A, *s.shape))
    return out


# ------------------------------------------------------------------ 3. latent mapper


MAPPER_GROUPS = ("coarse", "medium", "fine")


@dataclasses.dataclass(frozen=True)
class MapperConfig(JSONConfig):
    """StyleCLIP's ``LevelsMapper``: W+ layers ``[0, coarse_end)``, ``[coarse_end, medium_end)`` and
    ``[medium_end, num_ws)`` each through their own MLP (``depth`` EqualLinear, lr_mul 0.01, lrelu);
    a disabled group (the reference's ``--no_*_mapper``) contributes 0. Edit ``w + strength * M(w)``.

    ``norm``: the axis of the input PixelNorm. ``'layers'`` is the reference's (its PixelNorm
    normalizes dim 1 of ``[B, layers, 512]``), needed for released mappers; but on W+ latents
    whose layers are equal (a generator's own ``G.mapping`` output, no inversion) it reduces
    each feature to ``sign(w)``. ``'features'`` normalizes over the 512 features as StyleGAN's
    mapping does, and is what :meth:`for_generator` uses for mappers trained here."""

    w_dim: int = 512
    num_ws: int = 18
    coarse_end: int = 4
    medium_end: int = 8
    groups: tuple[bool, bool, bool] = (True, True, True)
    depth: int = 4
    lr_mul: float = 0.01
    strength: float = 0.1
    norm: str = "layers"

    def __post_init__(self):
        if self.norm not in ("layers", "features"):
            raise ValueError(f"mapper norm must be 'layers' or 'features', got {self.norm!r}")
        if not 0 < self.coarse_end < self.medium_end < self.num_ws:
            raise ValueError(f"mapper groups need 0 < coarse_end < medium_end < num_ws, got {self.coarse_end}, "
                             f"{self.medium_end}, {self.num_ws}")
        object.__setattr__(self, "groups", tuple(bool(g) for g in self.groups))
        if len(self.groups) != 3:
            raise ValueError(f"groups must be 3 flags (coarse, medium, fine), got {self.groups}")

    @classmethod
    def for_generator(cls, num_ws: int, w_dim: int, **kw) -> "MapperConfig":
        """The reference's levels scaled to this generator: coarse and medium each take
        ``round(2/9)`` of the resolutions (for 1024 px: 4-8 px and 16-32 px, i.e. W+ layers
        [0, 4) and [4, 8)), fine the rest (32 px: [0, 2), [2, 4), [4, 8)); tiny generators get
        one W+ layer per coarse/medium group so that fine is never empty."""
        per = max(1, round(2 * (num_ws // 2) / 9)) * 2
        per = per if 2 * per < num_ws else 1
        return cls(**{"w_dim": w_dim, "num_ws": num_ws, "coarse_end": per, "medium_end": 2 * per, "norm": "features",
                      **kw})

    def ranges(self) -> dict[str, tuple[int, int]]:
        return dict(zip(MAPPER_GROUPS, ((0, self.coarse_end), (self.coarse_end, self.medium_end),
                                        (self.medium_end, self.num_ws))))


class _GroupMLP(nnx.Module):
    """PixelNorm then ``depth`` EqualLinear + fused lrelu, on ``[B, layers, w_dim]``.

    The reference's PixelNorm normalizes over dim 1, which for these ``[B, layers, 512]`` slices
    is the *layer* axis (not the features as in StyleGAN's mapping): reproduced with
    ``cfg.norm == 'layers'``, as released mappers were trained with it (see :class:`MapperConfig`).
    """

    def __init__(self, cfg: MapperConfig, *, rngs: nnx.Rngs):
        self.depth = cfg.depth
        self.norm_axis = 1 if cfg.norm == "layers" else 2
        for i in range(cfg.depth):
            setattr(self, f"fc{i}", Dense(cfg.w_dim, cfg.w_dim, activation="lrelu", lr_mul=cfg.lr_mul, rngs=rngs))

    def __call__(self, x):
        x = x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=self.norm_axis, keepdims=True) + 1e-8)
        for i in range(self.depth):
            x = getattr(self, f"fc{i}")(x)
        return x


class LevelsMapperNet(nnx.Module):
    def __init__(self, cfg: MapperConfig, *, rngs: nnx.Rngs):
        self.ranges = cfg.ranges()
        self.enabled = dict(zip(MAPPER_GROUPS, cfg.groups))
        for g in MAPPER_GROUPS:
            if self.enabled[g]:
                setattr(self, g, _GroupMLP(cfg, rngs=rngs))

    def __call__(self, ws):
        parts = []
        for g in MAPPER_GROUPS:
            lo, hi = self.ranges[g]
            x = ws[:, lo:hi]
            parts.append(getattr(self, g)(x) if self.enabled[g] else jnp.zeros_like(x))
        return jnp.concatenate(parts, axis=1)


@dataclasses.dataclass(frozen=True)
class Mapper(ModelHandle):
    """Hashable handle: pure functions of the mapper's ``params`` for one :class:`MapperConfig`."""

    cfg: MapperConfig = MapperConfig()
    module = LevelsMapperNet

    def delta(self, params, ws: Array) -> Array:
        """``M(w)``: ws ``[B, num_ws, w_dim]`` -> ``[B, num_ws, w_dim]``."""
        if ws.ndim != 3 or ws.shape[1:] != (self.cfg.num_ws, self.cfg.w_dim):
            raise ValueError(f"mapper expects ws [B, {self.cfg.num_ws}, {self.cfg.w_dim}], got {list(ws.shape)}")
        return self.model(params)(ws)

    def __call__(self, params, ws: Array) -> Array:
        """The edit ``w + strength * M(w)``."""
        return ws + self.cfg.strength * self.delta(params, ws)


def mapper_loss(M: Mapper, mparams, G: StyleGAN2, gparams, image_embed: ImageEmbed, ws: Array, text_emb: Array, *,
                clip_lambda: float = 1.0, l2_lambda: float = 0.8, noise_mode: str = "const",
                identity: ImageEmbed | None = None, id_lambda: float = 0.1):
    """The reference's mapper loss (``mapper/training/coach.py``) for one prompt ``text_emb [D]``:
    ``clip_lambda * mean_b D_clip + l2_lambda * mean((w_hat - w)^2)`` (torch ``MSELoss``), plus
    ``id_lambda * mean_b identity_loss`` against ``G(w)`` when ``identity`` is given (the
    reference: ArcFace, 0.1). -> ``(loss, metrics)``."""
    w_hat = M(mparams, ws)
    img = G.synthesis(gparams, w_hat, noise_mode)
    d = 1.0 - clip_cosine(image_embed, img, text_emb)
    clip, l2 = jnp.mean(d), jnp.mean(jnp.square(w_hat - ws))
    loss = clip_lambda * clip + l2_lambda * l2
    metrics = {"clip": clip, "l2": l2}
    if identity is not None:
        ref = jax.lax.stop_gradient(identity(G.synthesis(gparams, ws, noise_mode)))
        metrics["id"] = jnp.mean(identity_loss(identity, img, ref))
        loss = loss + id_lambda * metrics["id"]
    return loss, {"loss": loss, **metrics}


def init_mappers(M: Mapper, key: Array, num_prompts: int, optimizer: optax.GradientTransformation):
    """P independently initialized mappers and their optimizer states, stacked on a leading axis
    (mapper i from ``fold_in(key, i)``: the same whatever P)."""
    params = jax.vmap(lambda i: M.init(jax.random.fold_in(key, i)))(jnp.arange(num_prompts))
    return params, jax.vmap(optimizer.init)(params)


def _mapper_update(M: Mapper, G: StyleGAN2, image_embed: ImageEmbed, optimizer: optax.GradientTransformation,
                   **loss_kw):
    """``(mparams [P..], opt_state [P..], gparams, ws [B, L, D], text_emb [P, D]) -> (mparams, opt_state, metrics [P])``."""

    def one(mp, st, gparams, ws, t):
        grads, metrics = jax.grad(lambda p: mapper_loss(M, p, G, gparams, image_embed, ws, t, **loss_kw),
                                  has_aux=True)(mp)
        upd, st = optimizer.update(grads, st, mp)
        return optax.apply_updates(mp, upd), st, metrics

    return jax.vmap(one, in_axes=(0, 0, None, None, 0))


def make_mapper_step(M: Mapper, G: StyleGAN2, image_embed: ImageEmbed, optimizer: optax.GradientTransformation, *,
                     clip_lambda: float = 1.0, l2_lambda: float = 0.8, noise_mode: str = "const",
                     identity: ImageEmbed | None = None, id_lambda: float = 0.1):
    """A jitted training step for P mappers (one per prompt) on a shared batch of latents::

        step(mparams, opt_state, gparams, ws [B, num_ws, w_dim], text_emb [P, D])
            -> (mparams, opt_state, {'loss', 'clip', 'l2' (, 'id'): [P]})

    ``mparams`` / ``opt_state`` stacked over P (:func:`init_mappers`); ``vmap`` over both.
    Reference: Ranger (RAdam + Lookahead + gradient centralization) lr 0.5, batch 2, 50,000
    steps; ``optax.adam(lr)`` matches its ``--optim_name adam`` option.
    """
    return jax.jit(_mapper_update(M, G, image_embed, optimizer, clip_lambda=clip_lambda, l2_lambda=l2_lambda,
                                  noise_mode=noise_mode, identity=identity, id_lambda=id_lambda))


class MapperTrainResult(NamedTuple):
    params: dict  # P mappers stacked on a leading axis
    metrics: dict[str, Array]  # 'loss', 'clip' (mean D_clip of the step's batch), 'l2' (, 'id'): [steps, P]


def train_mappers(M: Mapper, G: StyleGAN2, gparams, image_embed: ImageEmbed, text_emb: Array, key: Array, *,
                  steps: int, batch: int = 8, psi: float = 0.7, lr: float = 0.5, clip_lambda: float = 1.0,
                  l2_lambda: float = 0.8, noise_mode: str = "const", identity: ImageEmbed | None = None,
                  id_lambda: float = 0.1, report: Callable[[Array, Array], None] | None = None,
                  report_every: int = 10) -> MapperTrainResult:
    """Train P mappers (one per prompt ``text_emb [P, D]``) in one program: ``lax.scan`` over
    ``steps``, each step on a fresh batch of ``batch`` latents ``G.mapping(z, psi)`` shared by the
    P mappers (the reference trains on e4e inversions of real images; a generator's own latents
    stand in for them). Adam(``lr``; 0.5 is the reference's Ranger lr, and the best of 0.005-0.5
    on the shapes world); the loss is :func:`mapper_loss`. -> params stacked ``[P, ...]`` and
    per-step metrics ``[steps, P]``. ``report(step, clip [P])``, if given, is called from inside
    the program (``jax.debug.callback``) every ``report_every`` steps, e.g. to drive a progress bar.
    """
    if text_emb.ndim != 2:
        raise ValueError(f"text_emb must be [P, D], got {list(text_emb.shape)}")
    optimizer = optax.adam(lr)
    update = _mapper_update(M, G, image_embed, optimizer, clip_lambda=clip_lambda, l2_lambda=l2_lambda,
                            noise_mode=noise_mode, identity=identity, id_lambda=id_lambda)
    k_init, k_data = jax.random.split(key)
    mparams, state = init_mappers(M, k_init, text_emb.shape[0], optimizer)

    def step(carry, inp):
        mp, st = carry
        i, k = inp
        ws = G.mapping(gparams, jax.random.normal(k, (batch, G.cfg.z_dim)), psi=psi)
        mp, st, m = update(mp, st, gparams, ws, text_emb)
        if report is not None:
            jax.lax.cond((i + 1) % report_every == 0, lambda: jax.debug.callback(report, i + 1, m["clip"]), lambda: None)
        return (mp, st), m

    (mparams, _), metrics = jax.lax.scan(step, (mparams, state), (jnp.arange(steps), jax.random.split(k_data, steps)))
    return MapperTrainResult(mparams, metrics)


MAPPER_KIND = "styleclip-mapper"


def save_mappers(dst: str | os.PathLike, M: Mapper, params, prompts: Sequence[str], *,
                 source: dict | None = None, force: bool = False):
    """Write P mappers (``params`` stacked on a leading axis, one per prompt) as a jaxedit checkpoint."""
    from jaxedit import checkpoint
    from jaxedit.checkpoint import check_tree

    want = jax.tree.map(lambda s: jax.ShapeDtypeStruct((len(prompts), *s.shape), s.dtype), M.param_shapes())
    try:
        check_tree(want, params, "save_mappers")
    except ValueError as e:
        raise ValueError(f"{e} (params must be {len(prompts)} mappers stacked on a leading axis, one per prompt)") \
            from None
    return checkpoint.save(dst, kind=MAPPER_KIND, model=M.cfg.to_dict(), params=params, source=source,
                           extra={"prompts": list(prompts)}, force=force)


def load_mappers(path: str | os.PathLike) -> tuple[Mapper, dict, list[str]]:
    """A ``styleclip-mapper`` checkpoint -> ``(Mapper, params stacked [P, ...], prompts [P])``,
    parameter shapes checked against the config."""
    from jaxedit import checkpoint
    from jaxedit.checkpoint import check_tree

    ck = checkpoint.load(path, expected_kind=MAPPER_KIND)
    M = Mapper(MapperConfig.from_dict(ck.model))
    prompts = list(ck.meta.get("prompts") or [])
    shapes = jax.tree.map(lambda s: jax.ShapeDtypeStruct((len(prompts), *s.shape), s.dtype), M.param_shapes())
    check_tree(shapes, ck.params, str(ck.path))
    return M, ck.params, prompts


# ------------------------------------------------------------------ 4. one-layer weight shift (seed 002)


def layer_shift_loss(G: StyleGAN2, gparams, image_embed: ImageEmbed, ws: Array, text_emb: Array, layer: str,
                     x: Array, *, lambda2: float = 0.05, clip_weight: float = 10.0, noise_mode: str = "const"):
    """``clip_weight * mean_n D_clip(G_{theta + x}(w_n), t) + lambda2 * |x|_2`` -> ``(loss, mean D_clip)``.

    ws ``[N, num_ws, w_dim]``, text_emb ``[D]``, x the shape of ``layer``'s stored weight (HWIO).
    ``|x|_2`` is the plain (not squared) Euclidean norm, as written in the method's loss, with
    gradient 0 at x = 0.
    """
    img = G.synthesis(gparams, ws, noise_mode, deltas={layer: x})
    d = jnp.mean(1.0 - clip_cosine(image_embed, img, text_emb))
    return clip_weight * d + lambda2 * _l2_norm(x), d


class LayerShiftResult(NamedTuple):
    shifts: Array  # [P, *layer_weight_shape]
    loss: Array  # [steps, P] loss before each step's update
    clip_distance: Array  # [steps, P] mean D_clip over the N latents before each step's update


def optimize_layer_shift(G: StyleGAN2, gparams, image_embed: ImageEmbed, ws: Array, text_emb: Array, layer: str, *,
                         steps: int = 100, lr: float = 0.01, lambda2: float = 0.05, clip_weight: float = 10.0,
                         noise_mode: str = "const") -> LayerShiftResult:
    """CLIP-guided shift of one generator layer's weights (seed 002, after NaviGAN), one per prompt.

    For each prompt p (text_emb ``[P, D]``), ``x_p`` (shape ``G.layer_weight_shape(layer)``,
    from 0) minimizes :func:`layer_shift_loss` over the batch of N latents ``ws [N, num_ws, w_dim]``;
    all prompts in one program (``vmap`` over prompts; Adam at constant ``lr`` — the method fixes
    no optimizer, steps or lr; lambda2 in [0.01, 0.1] by edit type, clip weight 10). Apply with
    :func:`apply_layer_shifts` and k in [-3, 3].

    **x acts on the raw stored weight** (what the generator's ``deltas`` do): the weight before
    any equalized-lr scaling, whose entries are N(0, 1) at init in every layer. This is
    NaviGAN's convention (it adds its shift to rosinality's unscaled ``conv.weight``), and since a
    demodulated conv is invariant to a constant weight gain, rosinality's scaled weight
    ``c W`` (c = 1/sqrt(fan_in)) plus a shift y equals the raw weight plus ``y / c``: raw shifts
    have the same scale in every layer, so one lambda2 and one k range mean the same thing
    whichever layer is edited. (ToRGB: the generator applies its gain to the style, so raw
    is again the stored weight.)

    Per-prompt weights under ``vmap`` make that one layer a grouped conv (the rest of G stays
    shared-weight); the generator's ``Shift`` holds a single direction, so P directions cannot
    use its shared-conv path.
    """
    shape = _check_layer(G, layer)
    P = text_emb.shape[0]

    def total(xs):
        loss, d = jax.vmap(lambda x, t: layer_shift_loss(G, gparams, image_embed, ws, t, layer, x, lambda2=lambda2,
                                                         clip_weight=clip_weight, noise_mode=noise_mode))(xs, text_emb)
        return jnp.sum(loss), (loss, d)

    opt = optax.adam(lr)
    x0 = jnp.zeros((P, *shape), ws.dtype)

    def step(carry, _):
        xs, st = carry
        (_, hist), g = jax.value_and_grad(total, has_aux=True)(xs)
        upd, st = opt.update(g, st, xs)
        return (optax.apply_updates(xs, upd), st), hist

    (xs, _), (loss, d) = jax.lax.scan(step, (x0, opt.init(x0)), length=steps)
    return LayerShiftResult(xs, loss, d)


def apply_layer_shifts(G: StyleGAN2, gparams, ws: Array,
                       shifts: Sequence[tuple[str, Array, float | Array]] | Mapping[str, tuple[Array, float | Array]],
                       *, noise_mode: str = "const", key: Array | None = None) -> Array:
    """Render ``G_{theta + sum_i k_i x_i}(w)`` for a sweep of strengths: -> images ``[K, N, H, W, C]``.

    ws ``[N, num_ws, w_dim]``; shifts ``[(layer, x, k), ...]`` (or ``{layer: (x, k)}``), each k
    a scalar or ``[K]`` (scalars broadcast over the sweep). Several shifts on the same layer
    add (``k_1 x_1 + k_2 x_2``); shifts on different layers each act on their own layer. k = 0
    renders the original image. A layer with one shift uses the generator's shared-conv
    ``Shift`` path; a layer with several gets the per-strength weight (a grouped conv there).
    """
    if isinstance(shifts, Mapping):
        items = [(layer, x, k) for layer, (x, k) in shifts.items()]
    else:
        items = [tuple(s) for s in shifts]
    if not items:
        raise ValueError("apply_layer_shifts needs at least one (layer, x, k) shift")
    ks = [jnp.atleast_1d(jnp.asarray(k, ws.dtype)) for _, _, k in items]
    K = max(k.shape[0] for k in ks)
    for (layer, x, _), k in zip(items, ks):
        if x.shape != _check_layer(G, layer):
            raise ValueError(f"shift for {layer!r} has shape {x.shape}, the layer weight {G.layer_weight_shape(layer)}")
        if k.ndim != 1 or k.shape[0] not in (1, K):
            raise ValueError(f"shift strengths must be scalars or [K] with one K, got shapes {[k.shape for k in ks]}")
    kk = jnp.stack([jnp.broadcast_to(k, (K,)) for k in ks], axis=1)  # [K, S]
    by_layer: dict[str, list[int]] = {}
    for i, (layer, _, _) in enumerate(items):
        by_layer.setdefault(layer, []).append(i)

    def render(kv):
        deltas = {}
        for layer, idx in by_layer.items():
            if len(idx) == 1:
                deltas[layer] = Shift(items[idx[0]][1], kv[idx[0]])
            else:
                deltas[layer] = sum(kv[i] * items[i][1] for i in idx)
        return G.synthesis(gparams, ws, noise_mode, key, deltas=deltas)

    return jax.vmap(render)(kk)
