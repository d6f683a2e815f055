"""Train Latents2Semantics (:mod:`jaxedit.models.l2sae`) on the shapes world (``jaxedit train-l2sae``), shipped as
``checkpoints/shapes32-l2sae``.

Every step draws its own batch inside the one jitted update: raw factors ``A`` and ``B``; ``x_a`` = render(A)
with its label map, ``x_b`` = render(B), and ``x_ab`` = render(A's geometry with B's colours: body, background
and spot hue). Per image (weights in :class:`L2SAETrainConfig`):

- reconstruction ``D(E(x_a))`` vs ``x_a``: pixel MSE + ``perceptual_weight`` x the squared distance of the
  shapes probe's embeddings (the perceptual space of this world, as for the encoder and the projector);
- swap ``D(s_a, g_b)`` vs ``x_ab``, the same two terms: the renderer's answer to "a's structure in b's style"
  (the Swapping Autoencoder learns it adversarially; the model's docstring says why not here);
- ``mask_weight`` x cross-entropy of the region masks (from the structure groups) against ``x_a``'s label map:
  the supervision a semantic-mask network needs (the renderer's labels; they are used for nothing else).

Adam with warm-up and cosine decay. Evaluation on held-out renders (key ``fold_in(key, 2)``): reconstruction PSNR
and the probe's reading of it, mask mIoU, and the local edits' scores (:func:`evaluate`). Resumable run folder
(:mod:`jaxedit.train.runs`, default ``DST.run``); the model is saved as a kind ``"l2sae"`` checkpoint.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxedit import models
from jaxedit.config import JSONConfig
from jaxedit.data import shapes
from jaxedit.errors import ConfigError
from jaxedit.io import checkpoint
from jaxedit.models.l2sae import KIND, L2SAE, L2SAEConfig
from jaxedit.models.probe import Probe
from jaxedit.train import runs

INIT_SALT, TRAIN_SALT, EVAL_SALT = 0, 1, 2
MUTABLE = frozenset({"steps", "ckpt_every", "log_every", "eval_images"})
STYLE_FACTORS = ("hue", "bg_hue", "spot_hue")  # what a swap takes from the donor


@dataclasses.dataclass(frozen=True)
class L2SAETrainConfig(JSONConfig):
    steps: int = 10_000
    decay_steps: int | None = None  # the cosine's horizon (default: steps of the first call)
    batch: int = 16
    lr: float = 2e-3
    warmup: int = 500
    perceptual_weight: float = 0.02
    swap_weight: float = 1.0
    mask_weight: float = 1.0
    mask_balance: bool = True  # weight each pixel's cross-entropy by 1 / its class's share of the batch
    seed: int = 0
    eval_images: int = 256
    ckpt_every: int = 1000
    log_every: int = 200
    probe: str = "shapes32-probe"
    model: L2SAEConfig = L2SAEConfig(structure_stride=2, encoder_widths=(32, 48, 64), decoder_widths=(64, 48, 32))

    def __post_init__(self):
        for name in ("steps", "batch", "eval_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if isinstance(self.model, dict):
            object.__setattr__(self, "model", L2SAEConfig.from_dict(self.model))


def swap_batch(key: jax.Array, n: int, cfg: shapes.ShapesConfig = shapes.ShapesConfig()) -> dict[str, jax.Array]:
    """``x_a``, its labels, ``x_b`` and ``x_ab`` (a's geometry, b's colours) ``[n, H, W, 3]``, and the raw factors."""
    ka, kb = jax.random.split(key)
    fa, fb = shapes.sample_factors(ka, n, cfg), shapes.sample_factors(kb, n, cfg)
    fab = {**fa, **{k: fb[k] for k in STYLE_FACTORS}}
    xa, la = shapes.render(fa, cfg)
    xb, _ = shapes.render(fb, cfg)
    xab, _ = shapes.render(fab, cfg)
    return {"xa": xa, "labels": la, "xb": xb, "xab": xab, "fa": fa, "fb": fb}


def losses(M: L2SAE, P: Probe, params, pparams, batch, cfg: L2SAETrainConfig) -> dict[str, jax.Array]:
    sa, ga = M.encode(params, batch["xa"])
    _, gb = M.encode(params, batch["xb"])
    rec = M.decode(params, sa, ga)
    swap = M.decode(params, sa, gb)
    feats = lambda x: P(pparams, x)["features"]  # noqa: E731

    def image_loss(y, target):
        return jnp.mean(jnp.square(y - target)) + cfg.perceptual_weight * jnp.mean(
            jnp.sum(jnp.square(feats(y) - feats(target)), axis=-1))

    ce = optax.softmax_cross_entropy_with_integer_labels(M.mask_logits(params, sa), batch["labels"])
    if cfg.mask_balance:  # a spot of a few pixels counts as much as the background: weights average 1 per pixel
        regions = len(M.cfg.regions)
        count = jnp.bincount(batch["labels"].ravel(), length=regions)
        weight = batch["labels"].size / (regions * jnp.maximum(count, 1))
        ce = ce * jax.lax.stop_gradient(weight)[batch["labels"]]
    terms = {"recon": image_loss(rec, batch["xa"]), "swap": image_loss(swap, batch["xab"]), "mask": jnp.mean(ce)}
    terms["loss"] = terms["recon"] + cfg.swap_weight * terms["swap"] + cfg.mask_weight * terms["mask"]
    return terms


def make_step(cfg: L2SAETrainConfig, M: L2SAE, P: Probe):
    horizon = cfg.decay_steps or cfg.steps
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(cfg.warmup, horizon // 4), horizon, cfg.lr * 0.02)
    opt = optax.adam(sched)

    @jax.jit
    def step(state, pparams, key):
        batch = swap_batch(key, cfg.batch)
        grads, terms = jax.grad(lambda p: (lambda t: (t["loss"], t))(losses(M, P, p, pparams, batch, cfg)),
                                has_aux=True)(state["params"])
        updates, opt_state = opt.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt_state}, terms

    return opt, step


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
    stored = runs.read_config(run_dir, L2SAETrainConfig.from_dict)
    if cfg is not None and cfg.decay_steps is None:
        cfg = dataclasses.replace(cfg, decay_steps=stored.decay_steps if stored else cfg.steps)
    cfg = runs.resolve(run_dir, cfg, L2SAETrainConfig.from_dict, MUTABLE)
    P, pparams = models.load(checkpoint.resolve(cfg.probe))
    if not isinstance(P, Probe) or P.cfg.resolution != cfg.model.resolution:
        raise ConfigError(f"probe {cfg.probe}: not a shapes-world probe at {cfg.model.resolution} px")
    M = L2SAE(cfg.model)
    key = jax.random.key(cfg.seed)
    opt, step_fn = make_step(cfg, M, P)

    def init():
        params = M.init(jax.random.fold_in(key, INIT_SALT))
        return {"params": params, "opt": opt.init(params)}

    train_key = jax.random.fold_in(key, TRAIN_SALT)
    total = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    with runs.Run(run_dir, cfg, desc="train-l2sae", progress=progress) as run:
        state, start = run.resume(init)
        state, summary = run.loop(state, lambda s, i: step_fn(s, pparams, jax.random.fold_in(train_key, i)),
                                  start=start, total=total, ckpt_every=cfg.ckpt_every, log_every=cfg.log_every,
                                  show=("loss", "recon", "swap", "mask"))
    params = state["params"]
    if summary["step"] < cfg.steps:
        return params, {"step": summary["step"]}
    report = evaluate(M, params, P, pparams, jax.random.fold_in(key, EVAL_SALT), cfg.eval_images)
    report.update(step=summary["step"], train_seconds=summary["seconds"], batch=cfg.batch, resumed_at=start,
                  parameters=int(sum(np.size(v) for v in jax.tree.leaves(params))))
    source = {"trained_by": "jaxedit train-l2sae", "data": {"renderer": "jaxedit.data.shapes.sample_factors/render",
              "supervision": "renderer label maps for the region masks; re-renders with the donor's colours for "
                             "the swap term"}, "probe": cfg.probe, "train_config": cfg.to_dict()}
    checkpoint.save(dst, kind=KIND, model=cfg.model.to_dict(), params=params, source=source,
                    extra={"metrics": report}, force=force)
    return params, report
