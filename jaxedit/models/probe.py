"""The shapes-world probe: a small CNN that reads every factor and the label map off an image.

It is this world's attribute classifier: later work labels samples with it (InterFaceGAN),
scores edits (attribute change, disentanglement, commutativity) and computes Frechet
distances in its feature space. A U-Net: an encoder to 4x4, a pooled embedding
(``features``, the Frechet space) feeding the shape and factor heads, and a decoder with skip
connections for the per-pixel labels {0 background, 1 body, 2 spot}.

Region pooling (``ProbeConfig.region_pooling``, version 2): the factor head also reads, per
label class, the class's soft area (mean of its softmax probability over pixels, and its log) and
the probability-weighted mean of the image colour and of the full-resolution decoder features,
through a hidden layer (``factor_hidden``). A spot is a median 8 pixels at 32 px; the 4x4 bottleneck blurs it into its neighbours, while
its area and colour are exact sums over the label map (the renderer's coverage is analytic).

Pure interface, like the generator: ``P = Probe(cfg)``, ``params = P.init(key)``,
``out = P(params, images)`` with images ``[B, H, W, 3]`` in [-1, 1]::

    out["shape_logits"] [B, 3]     circle / square / triangle
    out["factors"]      [B, F]     jaxedit.data.shapes.FACTOR_NAMES, each in [0, 1]
    out["label_logits"] [B, H, W, 3]
    out["features"]     [B, feature_dim]
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.data.shapes import FACTOR_NAMES
from jaxedit.errors import ConfigError, InputError
from jaxedit.io import checkpoint
from jaxedit.nn.handle import ModelHandle


@dataclasses.dataclass(frozen=True)
class ProbeConfig(JSONConfig):
    resolution: int = 32
    widths: tuple[int, ...] = (16, 32, 64)  # encoder stages; each halves the resolution after it
    decoder_widths: tuple[int, ...] = (16, 24, 32)  # decoder stage i works at the resolution of encoder stage i
    feature_dim: int = 256
    num_factors: int = len(FACTOR_NAMES)
    num_shapes: int = 3
    num_labels: int = 3
    region_pooling: bool = True  # factor head also reads per-class areas, colours and features (module doc)
    # what of the label branch the factor loss may train through the pooling: "none" stops nothing, "labels" the
    # label logits, "branch" the logits and the decoder features (the label map is then trained by its own loss)
    region_stop_gradient: str = "none"
    factor_hidden: int = 128  # hidden width of the factor head's MLP (0: one linear layer, version 1)


def _conv(cin, cout, rngs, k=3):
    return nnx.Conv(cin, cout, (k, k), padding="SAME", rngs=rngs)


class _Stage(nnx.Module):
    def __init__(self, cin, cout, rngs):
        self.c1 = _conv(cin, cout, rngs)
        self.c2 = _conv(cout, cout, rngs)

    def __call__(self, x):
        return jax.nn.gelu(self.c2(jax.nn.gelu(self.c1(x))))


def _pool(x):
    b, h, w, c = x.shape
    return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


def _up(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class ProbeNet(nnx.Module):
    """Input: the image plus two coordinate channels (positions are read to sub-pixel accuracy)."""

    def __init__(self, cfg: ProbeConfig, *, rngs: nnx.Rngs):
        w, dw = cfg.widths, cfg.decoder_widths
        self.n = len(w)
        chans = [5, *w]
        for i in range(self.n):
            setattr(self, f"enc{i}", _Stage(chans[i], chans[i + 1], rngs))
        self.mid = _Stage(w[-1], w[-1], rngs)
        bottom = cfg.resolution // 2 ** self.n
        self.embed = nnx.Linear(bottom * bottom * w[-1], cfg.feature_dim, rngs=rngs)
        self.shape_head = nnx.Linear(cfg.feature_dim, cfg.num_shapes, rngs=rngs)
        self.region_pooling = cfg.region_pooling
        if cfg.region_stop_gradient not in ("none", "labels", "branch"):
            raise ConfigError(f"ProbeConfig.region_stop_gradient {cfg.region_stop_gradient!r}: one of none, labels, "
                             "branch")
        self.region_stop_gradient = cfg.region_stop_gradient
        region_dim = cfg.num_labels * (2 + 3 + dw[0]) if cfg.region_pooling else 0
        head_in = cfg.feature_dim + region_dim
        if cfg.factor_hidden:
            self.factor_hidden = nnx.Linear(head_in, cfg.factor_hidden, rngs=rngs)
            head_in = cfg.factor_hidden
        else:
            self.factor_hidden = None
        self.factor_head = nnx.Linear(head_in, cfg.num_factors, rngs=rngs)
        for i in reversed(range(self.n)):
            cin = (dw[i + 1] if i + 1 < self.n else w[-1]) + w[i]
            setattr(self, f"dec{i}", _Stage(cin, dw[i], rngs))
        self.label_head = _conv(dw[0], cfg.num_labels, rngs, k=1)

    def __call__(self, img):
        b, h, w, _ = img.shape
        yy, xx = jnp.meshgrid(jnp.linspace(-1, 1, h), jnp.linspace(-1, 1, w), indexing="ij")
        coords = jnp.broadcast_to(jnp.stack([xx, yy], -1)[None], (b, h, w, 2)).astype(img.dtype)
        skips, x = [], jnp.concatenate([img, coords], axis=-1)
        for i in range(self.n):
            x = getattr(self, f"enc{i}")(x)
            skips.append(x)
            x = _pool(x)
        x = self.mid(x)
        feats = jax.nn.gelu(self.embed(x.reshape(b, -1)))
        for i in reversed(range(self.n)):
            x = getattr(self, f"dec{i}")(jnp.concatenate([_up(x), skips[i]], axis=-1))
        label_logits = self.label_head(x)
        head_in = feats
        if self.region_pooling:
            logits, dec = label_logits, x
            if self.region_stop_gradient != "none":
                logits = jax.lax.stop_gradient(logits)
            if self.region_stop_gradient == "branch":
                dec = jax.lax.stop_gradient(dec)
            head_in = jnp.concatenate([feats, _region_stats(logits, jnp.concatenate([img, dec], -1))], -1)
        if self.factor_hidden is not None:
            head_in = jax.nn.gelu(self.factor_hidden(head_in))
        return {"shape_logits": self.shape_head(feats), "factors": jax.nn.sigmoid(self.factor_head(head_in)),
                "label_logits": label_logits, "features": feats}


def _region_stats(label_logits, values):
    """Per class: soft area (scaled by 10 and as a log: a spot's radius ratio is linear in log areas) and the
    probability-weighted mean of ``values`` -> ``[B, L * (2 + C)]``.

    label_logits ``[B, H, W, L]``, values ``[B, H, W, C]``.
    """
    p = jax.nn.softmax(label_logits, -1)
    area = p.mean(axis=(1, 2))  # [B, L]
    means = jnp.einsum("bhwl,bhwc->blc", p, values) / (p.sum(axis=(1, 2))[..., None] + 1e-3)
    sizes = jnp.stack([area * 10.0, jnp.log(area + 1e-4)], -1)
    return jnp.concatenate([sizes, means], -1).reshape(p.shape[0], -1)


@dataclasses.dataclass(frozen=True)
class Probe(ModelHandle):
    """Hashable handle: pure functions of ``params`` for one :class:`ProbeConfig`."""

    cfg: ProbeConfig = ProbeConfig()
    module = ProbeNet


    def __call__(self, params: dict, images: jax.Array) -> dict[str, jax.Array]:
        r = self.cfg.resolution
        if images.ndim != 4 or images.shape[1:] != (r, r, 3):
            raise InputError(f"probe expects images [B, {r}, {r}, 3], got {list(images.shape)}")
        return self.model(params)(images)

    def predict(self, params: dict, images: jax.Array) -> dict[str, jax.Array]:
        """Decoded predictions: ``shape`` [B] int, ``factors`` [B, F], ``labels`` [B, H, W] int, ``features``."""
        out = self(params, images)
        return {"shape": jnp.argmax(out["shape_logits"], -1), "factors": out["factors"],
                "labels": jnp.argmax(out["label_logits"], -1), "features": out["features"]}


def load(path) -> tuple[Probe, dict]:
    """A probe checkpoint written by ``jaxedit train-probe`` -> ``(Probe handle, params)``."""
    return checkpoint.load_handle(path, "probe", lambda cfg: Probe(ProbeConfig.from_dict(cfg)))
