"""Train the shapes-world probe on renders made on the fly (``jaxedit train-probe``).

Loss: cross-entropy on the shape, ``factor_weight`` x L1 on the factor vector (the metric is
its mean absolute error), cross-entropy on the per-pixel labels. Every step renders its own
batch inside the one jitted update, so there is no data pipeline. Evaluation uses renders
from a key the training never sees. Training is a resumable run folder (:mod:`jaxedit.train.runs`;
default ``DST.run``); the finished probe goes to DST.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxedit.config import JSONConfig
from jaxedit.data import shapes
from jaxedit.io import checkpoint
from jaxedit.models.probe import Probe, ProbeConfig
from jaxedit.train import runs

EVAL_SALT = 0x5EED
# Fields that may change when a run resumes (a larger ``steps`` extends it).
MUTABLE = frozenset({"steps", "ckpt_every", "log_every"})


@dataclasses.dataclass(frozen=True)
class ProbeTrainConfig(JSONConfig):
    steps: int = 4000
    decay_steps: int | None = None  # cosine schedule horizon; None: the run's first ``steps``
    batch: int = 64
    lr: float = 2e-3
    warmup: int = 200
    factor_weight: float = 10.0
    label_weight: float = 1.0
    seed: int = 0
    eval_images: int = 4096
    ckpt_every: int = 500
    log_every: int = 100
    probe: ProbeConfig = ProbeConfig()
    data: shapes.ShapesConfig = shapes.ShapesConfig()

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["data"] = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.data).items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeTrainConfig:
        d = dict(d)
        if isinstance(d.get("probe"), dict):
            d["probe"] = ProbeConfig.from_dict(d["probe"])
        if isinstance(d.get("data"), dict):
            d["data"] = shapes.ShapesConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["data"].items()})
        return super().from_dict(d)


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


def train(cfg: ProbeTrainConfig | None, dst: str | Path, *, run_dir: str | Path | None = None, force: bool = False,
          stop_at: int | None = None, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train (or resume) in ``run_dir``, evaluate on held-out renders, save to ``dst``; -> (params, report).

    ``run_dir`` defaults to ``DST.run``; ``cfg`` None resumes with its stored config, otherwise
    only :data:`MUTABLE` may differ (a larger ``steps`` extends the run; the cosine schedule keeps
    its first horizon). ``stop_at``: end this call at that step (nothing saved to ``dst``).
    """
    dst = checkpoint.check_writable(dst, force, "probe")
    run_dir = Path(run_dir) if run_dir is not None else runs.default_run_dir(dst)
    cfg = runs.resolve_with_horizon(run_dir, cfg, ProbeTrainConfig.from_dict, MUTABLE)
    P = Probe(cfg.probe)
    key = jax.random.key(cfg.seed)
    horizon = cfg.decay_steps or cfg.steps
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(cfg.warmup, horizon // 4), horizon, cfg.lr * 0.02)
    opt = optax.adam(sched)

    def init():
        params = P.init(jax.random.fold_in(key, 1))
        return {"params": params, "opt": opt.init(params)}

    update = make_step(cfg, P, opt)

    def step(state, i):
        params, opt_state, m = update(state["params"], state["opt"], jax.random.fold_in(key, 1000 + i))
        return {"params": params, "opt": opt_state}, m

    total = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    with runs.Run(run_dir, cfg, desc="train-probe", progress=progress) as run:
        state, start = run.resume(init)
        state, summary = run.loop(state, step, start=start, total=total, ckpt_every=cfg.ckpt_every,
                                  log_every=cfg.log_every)
    params = state["params"]
    if summary["step"] < cfg.steps:
        return params, {"step": summary["step"]}
    report = evaluate(P, params, jax.random.fold_in(key, EVAL_SALT), cfg.eval_images, cfg.data)
    report.update(step=summary["step"], train_seconds=summary["seconds"], batch=cfg.batch,
                  images_seen=cfg.steps * cfg.batch, resumed_at=start, run_dir=str(run_dir))
    checkpoint.save(dst, kind="probe", model=cfg.probe.to_dict(), params=params,
                    source={"trained_by": "jaxedit train-probe", "train_config": cfg.to_dict()},
                    extra={"metrics": report}, force=force)
    return params, report
