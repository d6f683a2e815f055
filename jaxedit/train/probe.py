"""Train the shapes-world probe on renders made on the fly (``jaxedit train-probe``).

Loss: cross-entropy on the shape, ``factor_weight`` x L1 on the factor vector (the metric is
its mean absolute error), cross-entropy on the per-pixel labels. Every step renders its own
batch inside the one jitted update, so there is no data pipeline. Evaluation uses renders
from a key the training never sees.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxedit.data import shapes
from jaxedit.models.probe import Probe, ProbeConfig

EVAL_SALT = 0x5EED


@dataclasses.dataclass(frozen=True)
class ProbeTrainConfig:
    steps: int = 4000
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 200
    factor_weight: float = 10.0
    label_weight: float = 1.0
    seed: int = 0
    eval_images: int = 4096
    probe: ProbeConfig = ProbeConfig()
    data: shapes.ShapesConfig = shapes.ShapesConfig()


def losses(P: Probe, params, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
    out = P(params, batch["image"])
    ce_shape = optax.softmax_cross_entropy_with_integer_labels(out["shape_logits"], batch["factors"]["shape"]).mean()
    l1 = jnp.abs(out["factors"] - batch["vector"]).mean()
    ce_label = optax.softmax_cross_entropy_with_integer_labels(out["label_logits"], batch["labels"]).mean()
    return ce_shape, {"shape_ce": ce_shape, "factor_l1": l1, "label_ce": ce_label}


def make_step(cfg: ProbeTrainConfig, P: Probe, opt: optax.GradientTransformation):
    def loss_fn(params, batch):
        ce, m = losses(P, params, batch)
        return ce + cfg.factor_weight * m["factor_l1"] + cfg.label_weight * m["label_ce"], m

    @jax.jit
    def step(params, opt_state, key):
        batch = shapes.sample(key, cfg.batch, cfg.data)
        (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, dict(m, loss=loss)

    return step


def evaluate(P: Probe, params, key: jax.Array, n: int, data: shapes.ShapesConfig, batch: int = 512) -> dict[str, Any]:
    """Held-out accuracy: shape accuracy, per-factor MAE (normalized units), label mIoU."""

    @jax.jit
    def stats(k):
        b = shapes.sample(k, batch, data)
        pred = P.predict(params, b["image"])
        lab, plab = b["labels"], pred["labels"]
        inter = jnp.stack([jnp.sum((lab == c) & (plab == c)) for c in range(3)])
        union = jnp.stack([jnp.sum((lab == c) | (plab == c)) for c in range(3)])
        return (jnp.sum(pred["shape"] == b["factors"]["shape"]), jnp.abs(pred["factors"] - b["vector"]).sum(0),
                inter, union)

    tot = [0, 0, 0, 0]
    batches = max(1, n // batch)
    for i in range(batches):
        tot = [t + np.asarray(s, np.float64) for t, s in zip(tot, stats(jax.random.fold_in(key, i)))]
    count = batches * batch
    mae = tot[1] / count
    iou = tot[2] / np.maximum(tot[3], 1)
    return {"images": count, "shape_accuracy": float(tot[0] / count),
            "factor_mae": {name: float(v) for name, v in zip(shapes.FACTOR_NAMES, mae)},
            "factor_mae_max": float(mae.max()), "label_iou": [float(v) for v in iou], "label_miou": float(iou.mean())}


def train(cfg: ProbeTrainConfig, dst: str | Path | None = None, force: bool = False, log_every: int = 100):
    """Train, evaluate on held-out renders and (optionally) save to ``dst``; returns (params, report)."""
    from jaxedit.io.progress import Progress

    if dst is not None:
        from jaxedit.io import checkpoint

        checkpoint.check_writable(dst, force)
    P = Probe(cfg.probe)
    key = jax.random.key(cfg.seed)
    params = P.init(jax.random.fold_in(key, 1))
    warmup = min(cfg.warmup, cfg.steps // 4)
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, warmup, cfg.steps, cfg.lr * 0.02)
    opt = optax.adam(sched)
    opt_state = opt.init(params)
    step = make_step(cfg, P, opt)
    bar = Progress(total=cfg.steps, unit="step", desc="train-probe")
    t0 = time.perf_counter()
    for i in range(cfg.steps):
        params, opt_state, m = step(params, opt_state, jax.random.fold_in(key, 1000 + i))
        if (i + 1) % log_every == 0 or i + 1 == cfg.steps:
            bar.update(i + 1, **{k: float(v) for k, v in m.items()})
    bar.close()
    train_s = time.perf_counter() - t0
    report = evaluate(P, params, jax.random.fold_in(key, EVAL_SALT), cfg.eval_images, cfg.data)
    report.update(train_seconds=round(train_s, 1), steps=cfg.steps, batch=cfg.batch,
                  images_seen=cfg.steps * cfg.batch)
    if dst is not None:
        from jaxedit.io import checkpoint

        checkpoint.save(dst, kind="probe", model=cfg.probe.to_dict(), params=params,
                        source={"trained_by": "jaxedit train-probe",
                                "train_config": _plain(dataclasses.asdict(cfg))},
                        extra={"metrics": report}, force=force)
    return params, report


def _plain(x):
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (tuple, list)):
        return [_plain(v) for v in x]
    return x
