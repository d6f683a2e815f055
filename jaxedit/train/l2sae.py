"""Train Latents2Semantics (:mod:`jaxedit.models.l2sae`) on the shapes world (``jaxedit train-l2sae``), shipped as
``checkpoints/shapes32-l2sae``.

Every step draws its own batch inside the one jitted update: raw factors ``A`` and ``B``; ``x_a`` = render(A)
with its label map, ``x_b`` = render(B), and ``x_ab`` = render(A's geometry with B's colours: body, background
and spot hue). Per image (weights in :class:`L2SAETrainConfig`):

- reconstruction ``D(E(x_a))`` vs ``x_a``: pixel MSE (+ ``perceptual_weight`` x the squared distance of the
  shapes probe's embeddings, off by default: measured at 1,000 steps of the default model, 256 held-out renders,
  weight 0 / 0.0005 / 0.002 / 0.02 gave reconstruction PSNR 27.5 / 19.7 / 18.0 / 15.0 dB and spot-mask IoU
  0.79 / 0.36 / 0.28 / 0.10: the probe's embedding distance starts in the thousands and its gradient swamps
  the pixel term's under Adam; version 2 trained with 0.02 for 10,000 steps and ended at 21.5 dB;
  ``experiments/l2sae_recipe.py``);
- swap ``D(s_a, g_b)`` vs ``x_ab``, the same two terms: the renderer's answer to "a's structure in b's style"
  (the Swapping Autoencoder learns it adversarially; the model's docstring says why not here);
- ``mask_weight`` x cross-entropy of the region masks (from the structure groups) against ``x_a``'s label map:
  the supervision a semantic-mask network needs (the renderer's labels; they are used for nothing else).

**Adversarial terms** (options, off by default: weight 0), for data where no renderer gives the swap's answer
(there ``swap_weight`` may be 0; the swap still trains, through the discriminators), as the Swapping Autoencoder
(Park et al. 2020) trains its swaps:

- ``adversarial_weight``: jaxedit's StyleGAN2 discriminator (:mod:`jaxedit.models.stylegan2.discriminator`,
  ``disc``: the shapes32 GAN's resnet D at half its widths, 32:16 16:16 8:32 4:32) on real ``x_a`` vs the fake
  reconstructions and swaps; non-saturating logistic loss, ``L_D = softplus(-D(x_a)) + (softplus(D(rec)) +
  softplus(D(swap))) / 2``, ``L_G = (softplus(-D(rec)) + softplus(-D(swap))) / 2``; lazy R1 on ``x_a`` every
  ``r1_every`` steps (``r1_gamma``, 0.1 as the shapes32 GAN); its own Adam (``lr_D``, betas (0, 0.99), the GAN
  trainer's lazy-regularization adjustment: :func:`jaxedit.train.gan.adam`, :func:`~jaxedit.train.gan.r1_penalty`).
- ``cooccurrence_weight``: the patch co-occurrence discriminator (:class:`Cooccurrence`): a small conv encoder of
  a patch, a classifier of [query features, mean features of ``cooc_refs`` reference patches] -> one logit.
  Real: a crop of the donor ``x_b`` with other crops of ``x_b`` as references; fake: a crop of the swap
  ``D(s_a, g_b)`` with the same references (``cooc_crops`` queries per image). Crops (:func:`sample_patches`):
  square, side ``U(cooc_scale)`` of the image at a uniform position, resized to ``cooc.patch`` px; the paper
  crops 1/8 to 1/4 of a 256 px image, here (0.25, 0.5) of 32 px so a crop (8-16 px) still holds a few
  colours. Lazy R1 on the real query patches (``r1_gamma_cooc``), same Adam settings.
- One jitted step: the batch, one autoencoder forward (its VJP kept); the discriminators' steps on those
  (stop-gradient) fakes, plus their R1 step when ``i % r1_every == 0`` (a second compiled program); then the
  autoencoder's step against the *updated* discriminators, the fakes' cotangents pulled back through the
  kept VJP (alternating updates with one forward). D states and their Adam states are part of the run
  state, so a resumed run equals an uninterrupted one bit for bit (``tests/test_l2sae.py``).

The shipped ``shapes32-l2sae`` uses weight 0 for both: the renderer's answer ``x_ab`` is exact (a supervised
swap target beats a learned realism judgement) and the discriminators cost compute. Step time at the default
model size (batch 16, 2-core CPU, jitted step timed blocking, medians of 12 interleaved repeats, lazy R1 steps
averaged in at 1 in 16): weight 0 0.375 s; ``adversarial_weight`` 0.475 s (x1.27; R1 steps x1.39);
with ``cooccurrence_weight`` too 0.665 s (x1.77; R1 steps x2.14). Under load (beside a training run) the
image D's ratio was the same, x1.26.

Adam with warm-up and cosine decay. After the last step the model's ``style_spread`` is set from 4,096 fresh
renders (:func:`style_spread`: the shape of its style noise). Evaluation on held-out renders (key
``fold_in(key, 2)``): reconstruction PSNR and the probe's reading of it, mask mIoU, and the local edits' scores
(:func:`evaluate`). Resumable run folder
(:mod:`jaxedit.train.runs`, default ``DST.run``); the model is saved as a kind ``"l2sae"`` checkpoint.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from einops import rearrange
from flax import nnx

from jaxedit import models
from jaxedit.config import JSONConfig
from jaxedit.data import shapes
from jaxedit.errors import ConfigError
from jaxedit.io import checkpoint
from jaxedit.models.l2sae import KIND, L2SAE, L2SAEConfig
from jaxedit.models.probe import Probe
from jaxedit.models.stylegan2.discriminator import (
    DConv,
    Discriminator,
    DiscriminatorConfig,
)
from jaxedit.nn.handle import ModelHandle, compiled
from jaxedit.nn.layers import Dense
from jaxedit.train import gan, runs

INIT_SALT, TRAIN_SALT, EVAL_SALT, DISC_SALT, COOC_SALT, SPREAD_SALT = 0, 1, 2, 3, 4, 5
PATCH_SALT = 7  # fold_in of a step's key for its patch crops (the batch uses the key itself)
MUTABLE = frozenset({"steps", "ckpt_every", "log_every", "eval_images"})
STYLE_FACTORS = ("hue", "bg_hue", "spot_hue")  # what a swap takes from the donor


@dataclasses.dataclass(frozen=True)
class CooccurrenceConfig(JSONConfig):
    """The patch co-occurrence discriminator: patches resized to ``patch`` px, a conv encoder to ``features``."""

    patch: int = 8
    channels: int = 32
    features: int = 64

    def __post_init__(self):
        if self.patch < 4 or self.patch % 4 or self.channels < 1 or self.features < 1:
            raise ConfigError(f"CooccurrenceConfig: patch a multiple of 4 (>= 4), positive widths; got {self}")


# Version 3: the small widths (16/32/48, 48/32/16) at a 16x16 structure. At 1,000 steps of the pixel-only recipe
# it reconstructs at 26.6 dB where widths 32/48/64, 64/48/32 reach 27.5 dB, and trains 1.6x faster per step
# (a one-pass edit costs about as much less): more steps in the same hours, and edits closer to the speed bar
# (experiments/l2sae_recipe.py).
DEFAULT_MODEL = L2SAEConfig(structure_stride=2)
# The image D of the adversarial term: the shapes32 GAN's D (resnet, mbstd 4) at half its widths.
DEFAULT_DISC = DiscriminatorConfig(img_resolution=32, channels=(32, 32, 16, 16), architecture="resnet",
                                   mbstd_group_size=4, mbstd_num_channels=1)


@dataclasses.dataclass(frozen=True)
class L2SAETrainConfig(JSONConfig):
    steps: int = 16_000
    decay_steps: int | None = None  # the cosine's horizon (default: steps of the first call)
    batch: int = 16
    lr: float = 2e-3
    warmup: int = 500
    perceptual_weight: float = 0.0  # the probe-embedding term (module doc: it slows learning here)
    swap_weight: float = 1.0
    mask_weight: float = 1.0
    mask_balance: bool = True  # weight each pixel's cross-entropy by 1 / its class's share of the batch
    seed: int = 0
    eval_images: int = 256
    ckpt_every: int = 1000
    log_every: int = 200
    probe: str = "shapes32-probe"
    model: L2SAEConfig = DEFAULT_MODEL
    # adversarial terms (off by default; module doc): image D on x_a vs reconstructions and swaps ...
    adversarial_weight: float = 0.0
    disc: DiscriminatorConfig = DEFAULT_DISC
    # ... and the patch co-occurrence D on swap patches vs the donor's patches
    cooccurrence_weight: float = 0.0
    cooc: CooccurrenceConfig = CooccurrenceConfig()
    cooc_crops: int = 8  # query patches per image
    cooc_refs: int = 4  # reference patches of the donor per query
    cooc_scale: tuple[float, float] = (0.25, 0.5)  # crop side as a fraction of the image side
    lr_D: float = 0.002
    betas_D: tuple[float, float] = (0.0, 0.99)
    r1_gamma: float = 0.1  # image D (the shapes32 GAN's); the co-occurrence D uses r1_gamma_cooc
    r1_gamma_cooc: float = 0.1
    r1_every: int = 16  # lazy R1: on steps i % r1_every == 0

    def __post_init__(self):
        for name in ("steps", "batch", "eval_images", "cooc_crops", "cooc_refs", "r1_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", L2SAEConfig.from_dict(self.model))
        if isinstance(self.disc, dict):
            object.__setattr__(self, "disc", DiscriminatorConfig.from_dict(self.disc))
        if isinstance(self.cooc, dict):
            object.__setattr__(self, "cooc", CooccurrenceConfig.from_dict(self.cooc))
        object.__setattr__(self, "cooc_scale", tuple(float(v) for v in self.cooc_scale))
        object.__setattr__(self, "betas_D", tuple(float(v) for v in self.betas_D))
        for name in ("adversarial_weight", "cooccurrence_weight", "r1_gamma", "r1_gamma_cooc", "swap_weight"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.adversarial_weight > 0:
            if (self.disc.img_resolution, self.disc.img_channels, self.disc.c_dim) != (self.model.resolution, 3, 0):
                raise ConfigError(f"disc reads {self.disc.img_resolution} px x {self.disc.img_channels} "
                                  f"(c_dim {self.disc.c_dim}); the model makes {self.model.resolution} px RGB")
            group = self.disc.mbstd_group_size or self.batch
            if self.batch % min(group, self.batch):
                raise ConfigError(f"batch {self.batch} must be a multiple of disc.mbstd_group_size {group}")
        lo, hi = self.cooc_scale
        if self.cooccurrence_weight > 0 and not 0 < lo <= hi <= 1:
            raise ConfigError(f"cooc_scale must satisfy 0 < min <= max <= 1, got {self.cooc_scale}")
        if (self.adversarial_weight > 0 or self.cooccurrence_weight > 0) and not self.lr_D > 0:
            raise ConfigError(f"lr_D must be > 0, got {self.lr_D}")

    @property
    def adversarial(self) -> bool:
        """Any discriminator trained (the run state then holds D and/or the co-occurrence D)."""
        return self.adversarial_weight > 0 or self.cooccurrence_weight > 0


def swap_batch(key: jax.Array, n: int, cfg: shapes.ShapesConfig = shapes.ShapesConfig()) -> dict[str, jax.Array]:
    """``x_a``, its labels, ``x_b`` and ``x_ab`` (a's geometry, b's colours) ``[n, H, W, 3]``, and the raw factors."""
    ka, kb = jax.random.split(key)
    fa, fb = shapes.sample_factors(ka, n, cfg), shapes.sample_factors(kb, n, cfg)
    fab = {**fa, **{k: fb[k] for k in STYLE_FACTORS}}
    xa, la = shapes.render(fa, cfg)
    xb, _ = shapes.render(fb, cfg)
    xab, _ = shapes.render(fab, cfg)
    return {"xa": xa, "labels": la, "xb": xb, "xab": xab, "fa": fa, "fb": fb}


def _forward(M: L2SAE, P: Probe, params, pparams, batch, cfg: L2SAETrainConfig):
    """-> (terms, images): the autoencoder's loss terms and its fakes ``{"rec", "swap"}`` ``[B, H, W, 3]``."""
    sa, ga = M.encode(params, batch["xa"])
    _, gb = M.encode(params, batch["xb"])
    rec = M.decode(params, sa, ga)
    swap = M.decode(params, sa, gb)
    feats = lambda x: P(pparams, x)["features"]  # noqa: E731

    def image_loss(y, target):
        pixel = jnp.mean(jnp.square(y - target))
        if not cfg.perceptual_weight:  # no probe pass (tests, probe-free runs)
            return pixel
        return pixel + cfg.perceptual_weight * jnp.mean(jnp.sum(jnp.square(feats(y) - feats(target)), axis=-1))

    ce = optax.softmax_cross_entropy_with_integer_labels(M.mask_logits(params, sa), batch["labels"])
    if cfg.mask_balance:  # a spot of a few pixels counts as much as the background: weights average 1 per pixel
        regions = len(M.cfg.regions)
        count = jnp.bincount(batch["labels"].ravel(), length=regions)
        weight = batch["labels"].size / (regions * jnp.maximum(count, 1))
        ce = ce * jax.lax.stop_gradient(weight)[batch["labels"]]
    terms = {"recon": image_loss(rec, batch["xa"]), "swap": image_loss(swap, batch["xab"]), "mask": jnp.mean(ce)}
    terms["loss"] = terms["recon"] + cfg.swap_weight * terms["swap"] + cfg.mask_weight * terms["mask"]
    return terms, {"rec": rec, "swap": swap}


def losses(M: L2SAE, P: Probe, params, pparams, batch, cfg: L2SAETrainConfig) -> dict[str, jax.Array]:
    """The autoencoder's terms (reconstruction, swap, mask) and their weighted sum ``loss`` (scalars)."""
    return _forward(M, P, params, pparams, batch, cfg)[0]


# ------------------------------------------------------------------ the patch co-occurrence discriminator


class CooccurrenceNet(nnx.Module):
    """Patch encoder (3x3 convs, FIR-strided down to 2x2, one dense layer) and a classifier of
    ``[query features, mean reference features]`` -> one logit (equalized-lr layers, as the image D)."""

    def __init__(self, cfg: CooccurrenceConfig, *, rngs: nnx.Rngs):
        c, f = cfg.channels, cfg.features
        self.conv0 = DConv(3, c, 3, activation="lrelu", rngs=rngs)
        self.conv1 = DConv(c, 2 * c, 3, activation="lrelu", down=True, rngs=rngs)
        self.conv2 = DConv(2 * c, 2 * c, 3, activation="lrelu", down=True, rngs=rngs)
        self.embed = Dense(2 * c * (cfg.patch // 4) ** 2, f, activation="lrelu", rngs=rngs)
        self.fc = Dense(2 * f, f, activation="lrelu", rngs=rngs)
        self.out = Dense(f, 1, rngs=rngs)

    def features(self, patches):
        """``[..., p, p, 3]`` -> ``[..., features]``."""
        lead = patches.shape[:-3]
        x = patches.reshape((-1, *patches.shape[-3:]))
        x = self.conv2(self.conv1(self.conv0(x)))
        return self.embed(rearrange(x, "n h w c -> n (h w c)")).reshape((*lead, -1))

    def __call__(self, query, refs):
        fq = self.features(query)  # [..., B, n, F]
        fr = jnp.mean(self.features(refs), axis=-2)  # [B, n, F]: each query's references, averaged
        return self.out(self.fc(jnp.concatenate([fq, jnp.broadcast_to(fr, fq.shape)], axis=-1)))[..., 0]


@dataclasses.dataclass(frozen=True)
class Cooccurrence(ModelHandle):
    """Hashable handle: ``Dp(params, query [..., B, n, p, p, 3], refs [B, n, k, p, p, 3]) -> logits [..., B, n]``
    (leading query axes share the references, encoded once)."""

    cfg: CooccurrenceConfig = CooccurrenceConfig()
    module = CooccurrenceNet

    @compiled()
    def __call__(self, params, query: jax.Array, refs: jax.Array) -> jax.Array:
        return self.model(params)(query, refs)


def sample_patches(key: jax.Array, images: jax.Array, n: int, size: int,
                   scale: tuple[float, float] = (0.25, 0.5)) -> jax.Array:
    """``n`` random square crops per image, each side ``U(scale) x H`` px at a uniform position, resized
    (bilinear, antialiased) to ``size``: images ``[B, H, W, C]`` -> ``[B, n, size, size, C]``; differentiable."""
    b, h, w, c = images.shape
    ks, ky, kx = jax.random.split(key, 3)
    side = jax.random.uniform(ks, (b, n), minval=scale[0], maxval=scale[1]) * min(h, w)
    oy = jax.random.uniform(ky, (b, n)) * (h - side)
    ox = jax.random.uniform(kx, (b, n)) * (w - side)

    def crop(img, s, y, x):
        z = size / s
        return jax.image.scale_and_translate(img, (size, size, c), (0, 1), jnp.stack([z, z]),
                                             jnp.stack([-y * z, -x * z]), "linear", antialias=True)

    return jax.vmap(jax.vmap(crop, (None, 0, 0, 0)))(images, side, oy, ox)


def _nonsat(real_logits, fake_logits):
    """Non-saturating logistic D loss: ``softplus(-D(real)) + softplus(D(fake))`` (means)."""
    return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


# ------------------------------------------------------------------------------------ the steps


def make_step(cfg: L2SAETrainConfig, M: L2SAE, P: Probe):
    """-> (opt, step): ``step(state, pparams, key, r1=False) -> (state, terms)``, jitted.

    Without adversarial terms ``state`` is ``{params, opt}`` and the step is the plain autoencoder update.
    With them it also holds ``D, opt_D`` and/or ``Dp, opt_Dp`` (:func:`init_state`), and one step is the
    discriminators' update on the current fakes, then the autoencoder's against the updated discriminators
    (static ``r1``: the discriminators also take their lazy R1 step; static ``phases``: ``("D",)`` or
    ``("G",)`` runs one half alone, for tests)."""
    horizon = cfg.decay_steps or cfg.steps
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(cfg.warmup, horizon // 4), horizon, cfg.lr * 0.02)
    opt = optax.adam(sched)

    if not cfg.adversarial:
        @jax.jit
        def plain_step(state, pparams, key):
            batch = swap_batch(key, cfg.batch)
            grads, terms = jax.grad(lambda p: (lambda t: (t["loss"], t))(losses(M, P, p, pparams, batch, cfg)),
                                    has_aux=True)(state["params"])
            updates, opt_state = opt.update(grads, state["opt"], state["params"])
            return {"params": optax.apply_updates(state["params"], updates), "opt": opt_state}, terms

        def step(state, pparams, key, r1: bool = False):
            return plain_step(state, pparams, key)

        return opt, step

    D, Dp = Discriminator(cfg.disc), Cooccurrence(cfg.cooc)
    opt_D, opt_Dp = disc_optimizers(cfg)
    use_d, use_p = cfg.adversarial_weight > 0, cfg.cooccurrence_weight > 0

    def patches(key, fakes, batch):
        """Query crops of the swap (fake) and of the donor (real), each with the donor's reference crops."""
        kq, kr, kf = jax.random.split(jax.random.fold_in(key, PATCH_SALT), 3)
        n, k, size = cfg.cooc_crops, cfg.cooc_refs, cfg.cooc.patch
        refs = sample_patches(kr, batch["xb"], n * k, size, cfg.cooc_scale)
        refs = refs.reshape(refs.shape[0], n, k, *refs.shape[2:])
        return (sample_patches(kf, fakes["swap"], n, size, cfg.cooc_scale),
                sample_patches(kq, batch["xb"], n, size, cfg.cooc_scale), refs)

    @functools.partial(jax.jit, static_argnames=("r1", "phases"))
    def step(state, pparams, key, r1: bool = False, phases: tuple[str, ...] = ("D", "G")):
        batch = swap_batch(key, cfg.batch)
        new = dict(state)
        metrics = {}

        def fwd(p):
            t, images = _forward(M, P, p, pparams, batch, cfg)
            return (t["loss"], images), t

        (loss, fakes), vjp, terms = jax.vjp(fwd, state["params"], has_aux=True)
        fixed = jax.lax.stop_gradient(fakes)
        q_fake, q_real, refs = patches(key, fixed, batch)
        # 1. the discriminators' steps on this step's fakes (the current autoencoder's)
        if use_d and "D" in phases:
            def d_loss(d):
                real, rec, swap = D(d, batch["xa"]), D(d, fixed["rec"]), D(d, fixed["swap"])
                return 0.5 * (_nonsat(real, rec) + _nonsat(real, swap)), jnp.mean(real) - 0.5 * (
                    jnp.mean(rec) + jnp.mean(swap))

            new["D"], new["opt_D"], metrics["loss_D"], metrics["D_margin"] = _d_update(
                d_loss, state["D"], state["opt_D"], opt_D)
            if r1 and cfg.r1_gamma > 0:
                new["D"], new["opt_D"], metrics["r1"] = _r1_update(
                    lambda d: jnp.mean(gan.r1_penalty(D, d, batch["xa"])), new["D"], new["opt_D"], opt_D,
                    cfg.r1_gamma * cfg.r1_every / 2)
        if use_p and "D" in phases:
            def p_loss(d):
                real, fake = Dp(d, jnp.stack([q_real, q_fake]), refs)  # the references encoded once
                return _nonsat(real, fake), jnp.mean(real) - jnp.mean(fake)

            new["Dp"], new["opt_Dp"], metrics["loss_Dp"], metrics["Dp_margin"] = _d_update(
                p_loss, state["Dp"], state["opt_Dp"], opt_Dp)
            if r1 and cfg.r1_gamma_cooc > 0:
                new["Dp"], new["opt_Dp"], metrics["r1_cooc"] = _r1_update(
                    lambda d: jnp.mean(gan.r1_penalty(lambda p, x: Dp(p, x, refs), d, q_real)), new["Dp"],
                    new["opt_Dp"], opt_Dp, cfg.r1_gamma_cooc * cfg.r1_every / 2)
        if "G" not in phases:
            return new, {**terms, **metrics}

        # 2. the autoencoder's step against the updated discriminators: one forward (its VJP above), the
        #    fakes' cotangents from the adversarial terms
        def g_adv(f):
            out = {}
            if use_d:
                out["adv"] = 0.5 * (jnp.mean(jax.nn.softplus(-D(new["D"], f["rec"])))
                                    + jnp.mean(jax.nn.softplus(-D(new["D"], f["swap"]))))
            if use_p:
                out["cooc"] = jnp.mean(jax.nn.softplus(-Dp(new["Dp"], patches(key, f, batch)[0], refs)))
            total = cfg.adversarial_weight * out.get("adv", 0.0) + cfg.cooccurrence_weight * out.get("cooc", 0.0)
            return total, out

        (adv_total, adv_terms), fake_grads = jax.value_and_grad(g_adv, has_aux=True)(fakes)
        (grads,) = vjp((jnp.ones_like(loss), fake_grads))
        updates, opt_state = opt.update(grads, state["opt"], state["params"])
        new["params"], new["opt"] = optax.apply_updates(state["params"], updates), opt_state
        return new, {**terms, **adv_terms, **metrics, "loss": loss + adv_total}

    return opt, step


def _d_update(loss_fn, d, opt_state, opt):
    (loss, margin), grads = jax.value_and_grad(loss_fn, has_aux=True)(d)
    updates, opt_state = opt.update(grads, opt_state, d)
    return optax.apply_updates(d, updates), opt_state, loss, margin


def _r1_update(penalty_fn, d, opt_state, opt, gain):
    """The lazy R1 step: one extra Adam step on ``penalty x gain`` (gain = gamma / 2 x interval)."""
    pen, grads = jax.value_and_grad(penalty_fn)(d)
    updates, opt_state = opt.update(jax.tree.map(lambda g: g * gain, grads), opt_state, d)
    return optax.apply_updates(d, updates), opt_state, pen


def disc_optimizers(cfg: L2SAETrainConfig):
    """Adam of the image D and of the co-occurrence D (the GAN trainer's, with the lazy-R1 adjustment)."""
    d_labels = gan.param_labels(Discriminator(cfg.disc))
    p_labels = jax.tree.map(lambda _: "train", Cooccurrence(cfg.cooc).param_shapes())
    return (gan.adam(cfg.lr_D, cfg.betas_D, 1e-8, cfg.r1_every, d_labels),
            gan.adam(cfg.lr_D, cfg.betas_D, 1e-8, cfg.r1_every, p_labels))


def init_state(cfg: L2SAETrainConfig, M: L2SAE, opt, key: jax.Array) -> dict[str, Any]:
    """The run state from the run's key: ``{params, opt}`` (+ ``D, opt_D`` / ``Dp, opt_Dp`` when on)."""
    params = M.init(jax.random.fold_in(key, INIT_SALT))
    state = {"params": params, "opt": opt.init(params)}
    opt_D, opt_Dp = disc_optimizers(cfg) if cfg.adversarial else (None, None)
    if cfg.adversarial_weight > 0:
        d = Discriminator(cfg.disc).init(jax.random.fold_in(key, DISC_SALT))
        state.update(D=d, opt_D=opt_D.init(d))
    if cfg.cooccurrence_weight > 0:
        d = Cooccurrence(cfg.cooc).init(jax.random.fold_in(key, COOC_SALT))
        state.update(Dp=d, opt_Dp=opt_Dp.init(d))
    return state


def style_spread(M: L2SAE, params, key: jax.Array, n: int = 4096, batch: int = 512) -> jax.Array:
    """``L [d, d]`` with ``L L^T`` = the covariance of the styles of ``n`` fresh renders (eigenvectors scaled by
    the square roots of their variances): the model's ``style_spread`` (the shape of its style noise)."""
    encode = jax.jit(lambda k: M.encode(params, shapes.sample(k, batch)["image"])[1])
    g = np.concatenate([np.asarray(encode(k)) for k in jax.random.split(key, -(-n // batch))])[:n].astype(np.float64)
    var, vec = np.linalg.eigh(np.cov(g, rowvar=False))
    return jnp.asarray(vec * np.sqrt(np.clip(var, 0, None)), jnp.float32)


def _psnr(a, b) -> np.ndarray:
    mse = np.mean((np.clip(np.asarray(a), -1, 1) - np.asarray(b)) ** 2, axis=(1, 2, 3))
    return 10 * np.log10(4.0 / np.maximum(mse, 1e-12))


def evaluate(M: L2SAE, params, P: Probe, pparams, key: jax.Array, n: int) -> dict[str, Any]:
    """Held-out renders: reconstruction PSNR, the probe's reading of it, mask mIoU (hard masks vs labels)."""
    batch = swap_batch(key, n)
    s, g = M.encode(params, batch["xa"])
    rec = M.decode(params, s, g)
    pa, pr = P.predict(pparams, batch["xa"]), P.predict(pparams, rec)
    fa, fr = np.asarray(pa["factors"]), np.asarray(pr["factors"])
    names = shapes.FACTOR_NAMES
    hue_cols = [i for i, k in enumerate(names) if k.startswith(("hue", "bg", "spot_hue"))]
    masks = np.asarray(jnp.argmax(M.mask_logits(params, s), axis=-1))
    labels = np.asarray(batch["labels"])
    iou = {r: float(np.sum((masks == i) & (labels == i)) / max(1, np.sum((masks == i) | (labels == i))))
           for i, r in enumerate(M.cfg.regions)}
    swap = M.decode(params, s, M.encode(params, batch["xb"])[1])
    return {"images": n, "recon_psnr": float(np.mean(_psnr(rec, batch["xa"]))),
            "shape_agreement": float(np.mean(np.asarray(pa["shape"]) == np.asarray(pr["shape"]))),
            "hue_mae": float(np.abs(fa - fr)[:, hue_cols].mean()),
            "factor_mae": {k: float(np.abs(fa - fr)[:, i].mean()) for i, k in enumerate(names)},
            "mask_iou": iou, "mask_miou": float(np.mean(list(iou.values()))),
            "swap_psnr": float(np.mean(_psnr(swap, batch["xab"])))}


def train(cfg: L2SAETrainConfig | None, dst: str | Path, *, run_dir: str | Path | None = None, force: bool = False,
          stop_at: int | None = None, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train (or resume) in ``run_dir`` (default ``DST.run``), evaluate, save a kind ``"l2sae"`` checkpoint to
    ``dst``; -> (params, report). ``cfg`` None resumes with the stored config; ``stop_at`` ends this call there."""
    dst = checkpoint.check_writable(dst, force, KIND)
    run_dir = Path(run_dir) if run_dir is not None else runs.default_run_dir(dst)
    cfg = runs.resolve_with_horizon(run_dir, cfg, L2SAETrainConfig.from_dict, MUTABLE)
    P, pparams = models.load(checkpoint.resolve(cfg.probe))
    if not isinstance(P, Probe) or P.cfg.resolution != cfg.model.resolution:
        raise ConfigError(f"probe {cfg.probe}: not a shapes-world probe at {cfg.model.resolution} px")
    M = L2SAE(cfg.model)
    key = jax.random.key(cfg.seed)
    opt, step_fn = make_step(cfg, M, P)

    train_key = jax.random.fold_in(key, TRAIN_SALT)
    total = cfg.steps if stop_at is None else min(stop_at, cfg.steps)

    def lazy_r1(i: int) -> bool:
        return cfg.adversarial and i % cfg.r1_every == 0

    with runs.Run(run_dir, cfg, desc="train-l2sae", progress=progress) as run:
        state, start = run.resume(lambda: init_state(cfg, M, opt, key))
        state, summary = run.loop(state, lambda s, i: step_fn(s, pparams, jax.random.fold_in(train_key, i),
                                                              r1=lazy_r1(i)),
                                  start=start, total=total, ckpt_every=cfg.ckpt_every, log_every=cfg.log_every,
                                  programs=lambda i: {"step+r1" if lazy_r1(i) else "step"},
                                  show=("loss", "recon", "swap", "mask", "loss_D", "adv", "loss_Dp", "cooc"))
    params = state["params"]
    if summary["step"] < cfg.steps:
        return params, {"step": summary["step"]}
    params = {**params, "style_spread": style_spread(M, params, jax.random.fold_in(key, SPREAD_SALT))}
    report = evaluate(M, params, P, pparams, jax.random.fold_in(key, EVAL_SALT), cfg.eval_images)
    report.update(step=summary["step"], train_seconds=summary["seconds"], batch=cfg.batch, resumed_at=start,
                  parameters=int(sum(np.size(v) for v in jax.tree.leaves(params))))
    source = {"trained_by": "jaxedit train-l2sae", "data": {"renderer": "jaxedit.data.shapes.sample_factors/render",
              "supervision": "renderer label maps for the region masks; re-renders with the donor's colours for "
                             "the swap term"}, "probe": cfg.probe, "train_config": cfg.to_dict()}
    if cfg.adversarial:
        source["adversarial"] = {"image_D": cfg.adversarial_weight, "cooccurrence_D": cfg.cooccurrence_weight,
                                 "swap_term": cfg.swap_weight}  # the discriminators stay in the run folder
    checkpoint.save(dst, kind=KIND, model=cfg.model.to_dict(), params=params, source=source,
                    extra={"metrics": report}, force=force)
    return params, report
