"""Train EditGAN's segmentation branch (:mod:`jaxedit.models.segmenter`) for a frozen generator from a few
annotated images (``jaxedit train-segmenter``); the default is the shapes world, shipped as
``checkpoints/shapes32-segmenter``.

Annotations (DatasetGAN / EditGAN annotate a few dozen of the generator's images by hand): ``annotated``
fresh renders of :mod:`jaxedit.data.shapes` with the renderer's label maps (0 background, 1 body, 2 spot),
inverted into W+ by the inversion tools (the encoder's codes, then ``invert_steps`` projector steps in W+
with the probe-embedding + ``pixel_weight`` x pixel-MSE distance; noise maps not optimized, so a code alone
reproduces its image). The generator's features of those codes are the classifier's input, the render's
labels its target: a reconstruction is not pixel-exact, so the labels carry the inversion's error, as real
annotations of inverted photos do.

Training (the reference's per-pixel MLP recipe: Adam ``lr`` 1e-3, cross-entropy, BatchNorm in training mode
with torch's running statistics): every step takes ``images_per_step`` annotated codes, synthesizes their
features (every synthesis layer, :meth:`StyleGAN2Config.feature_layout`) and gives each ensemble member its
own ``pixels_per_member`` random pixels of them, gathered at those pixels only
(:func:`~jaxedit.models.segmenter.gather_features`: the 75 GB feature array of the reference never
exists). All members train together in one jitted step (vmapped over the stacked parameters).

Evaluation on held-out renders inverted the same way: mIoU and pixel accuracy of the ensemble's
segmentation (nearest resampling, the mode EditGAN edits with) against the renderer's labels, and against
the probe's reading of the reconstruction (what the image shows); plus the same on generator samples
against the probe's labels.

Keys: ``key = PRNGKey(seed)``; annotated renders ``fold_in(key, 0)``, init ``fold_in(key, 1)``, step ``i``
``fold_in(fold_in(key, 2), i)``, evaluation ``fold_in(key, 3)``. Training is a resumable run folder
(:mod:`jaxedit.train.runs`, default ``DST.run``) whose state keeps the annotated codes; the finished
classifier is saved to DST as a kind ``"pixel-classifier"`` checkpoint with the evaluation in its metrics.
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

from jaxedit import invert, models
from jaxedit.config import JSONConfig
from jaxedit.data import shapes
from jaxedit.edits.fit import generator_identity, params_sha256
from jaxedit.errors import ConfigError
from jaxedit.io import checkpoint
from jaxedit.models.e4e import Encoder
from jaxedit.models.probe import Probe
from jaxedit.models.segmenter import (
    KIND,
    PixelClassifier,
    PixelClassifierConfig,
    gather_features,
    train_logits,
    update_running_stats,
)
from jaxedit.train import runs

DATA_SALT, INIT_SALT, TRAIN_SALT, EVAL_SALT = 0, 1, 2, 3
MUTABLE = frozenset({"steps", "ckpt_every", "log_every", "eval_images"})
CLASSES = ("background", "body", "spot")


@dataclasses.dataclass(frozen=True)
class SegmenterTrainConfig(JSONConfig):
    annotated: int = 32  # annotated renders (EditGAN's max_training: 32)
    invert_steps: int = 200  # projector steps (W+) after the encoder
    pixel_weight: float = 100.0  # pixel MSE weight in the inversion distance (beside the probe embedding)
    members: int = 10  # EditGAN's ensemble
    steps: int = 2000
    images_per_step: int = 8
    pixels_per_member: int = 256
    lr: float = 1e-3
    bn_momentum: float = 0.1  # torch's BatchNorm1d default
    seed: int = 0
    eval_images: int = 64
    ckpt_every: int = 500
    log_every: int = 100
    generator: str = "shapes32-stylegan2"
    encoder: str = "shapes32-encoder"
    probe: str = "shapes32-probe"

    def __post_init__(self):
        for name in ("annotated", "members", "steps", "images_per_step", "pixels_per_member", "eval_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.invert_steps < 0 or not self.lr > 0 or self.pixel_weight < 0 or not 0 < self.bn_momentum <= 1:
            raise ConfigError("invert_steps >= 0, lr > 0, pixel_weight >= 0 and 0 < bn_momentum <= 1 are required")


def load_frozen(cfg: SegmenterTrainConfig):
    """-> ``(G, gparams, gpath, E, eparams, P, pparams)``, checked against each other."""
    gpath = checkpoint.resolve(cfg.generator)
    G, gparams = models.load_generator(gpath)
    E, eparams = models.load(checkpoint.resolve(cfg.encoder))
    P, pparams = models.load(checkpoint.resolve(cfg.probe))
    if not isinstance(E, Encoder) or (E.cfg.n_styles, E.cfg.w_dim) != (G.cfg.num_ws, G.cfg.w_dim):
        raise ConfigError(f"encoder {cfg.encoder}: not an e4e encoder for generator {cfg.generator}")
    if not isinstance(P, Probe) or P.cfg.resolution != G.cfg.img_resolution:
        raise ConfigError(f"probe {cfg.probe}: not a shapes-world probe at the generator's resolution")
    if not hasattr(G.cfg, "feature_layout"):
        raise ConfigError(f"generator {cfg.generator}: the segmentation branch reads StyleGAN2 layer features")
    return G, gparams, gpath, E, eparams, P, pparams


def classifier_for(G, members: int) -> PixelClassifier:
    """The reference's ensemble (widths for 3 classes: 128, 32) over every synthesis layer of ``G``."""
    layout = G.cfg.feature_layout()
    return PixelClassifier(PixelClassifierConfig(in_dim=sum(c for _, c in layout), num_classes=len(CLASSES),
                                                 num_members=members, layout=layout))


def annotate(cfg: SegmenterTrainConfig, G, gparams, E, eparams, P, pparams, key: jax.Array, n: int):
    """``n`` renders from ``key`` inverted into W+ -> (codes ``[n, L, d]``, render labels ``[n, H, W]``, the
    renders ``[n, H, W, 3]``)."""
    data = shapes.sample(key, n)
    pdist = invert.probe_distance(P, pparams)
    distance = lambda a, b: pdist(a, b) + cfg.pixel_weight * invert.pixel_distance(a, b)
    codes = E(eparams, data["image"])
    if cfg.invert_steps:
        pcfg = invert.ProjectorConfig(steps=cfg.invert_steps, mode="w+", optimize_noise=False)
        keys = jax.random.split(jax.random.fold_in(key, 1), n)
        codes = jax.jit(lambda x, c: invert.project(G, gparams, distance, x, keys, pcfg, init=c).ws)(
            data["image"], codes)
    return codes, data["labels"], data["image"]


def make_step(cfg: SegmenterTrainConfig, clf: PixelClassifier, G, gparams):
    opt = optax.adam(cfg.lr)
    res = G.cfg.img_resolution
    m, p, k = cfg.members, cfg.pixels_per_member, cfg.images_per_step

    def loss_fn(params, x, y):
        logits, stats = train_logits(params, x)
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)  # [M, P]
        return jnp.sum(jnp.mean(ce, axis=1)), (jnp.mean(ce, axis=1), stats)

    @jax.jit
    def step(state, key):
        kb, kp = jax.random.split(key)
        idx = jax.random.choice(kb, cfg.annotated, (k,), replace=False) if k <= cfg.annotated else \
            jax.random.randint(kb, (k,), 0, cfg.annotated)
        _, feats = G.synthesis(gparams, state["codes"][idx], return_features=True)
        pix = jax.random.randint(kp, (3, m, p), 0, jnp.asarray([k, res, res])[:, None, None])
        x = gather_features(feats, clf.cfg.layout, (res, res), pix[0], pix[1], pix[2])  # [M, P, D]
        y = state["labels"][idx][pix[0], pix[1], pix[2]]
        (_, (ce, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["params"], x, y)
        updates, opt_state = opt.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        params = update_running_stats(params, stats, cfg.bn_momentum)
        return {**state, "params": params, "opt": opt_state}, {"loss": jnp.mean(ce), "worst member": jnp.max(ce)}

    return opt, step


def _iou(pred: np.ndarray, truth: np.ndarray) -> dict[str, float]:
    out = {}
    for c, name in enumerate(CLASSES):
        inter, union = np.sum((pred == c) & (truth == c)), np.sum((pred == c) | (truth == c))
        out[name] = float(inter / union) if union else float("nan")
    return out


def scores(pred: np.ndarray, truth: np.ndarray) -> dict[str, Any]:
    """mIoU (mean over classes present), per-class IoU and pixel accuracy of label maps ``[N, H, W]``."""
    iou = _iou(pred, truth)
    return {"miou": float(np.nanmean(list(iou.values()))), "iou": iou,
            "pixel_accuracy": float(np.mean(pred == truth))}


def evaluate(cfg, clf, params, G, gparams, E, eparams, P, pparams, key: jax.Array) -> dict[str, Any]:
    """Held-out renders (inverted as the annotations were) and generator samples (psi 0.7)."""
    n, res = cfg.eval_images, G.cfg.img_resolution
    codes, labels, _ = annotate(cfg, G, gparams, E, eparams, P, pparams, key, n)
    seg = jax.jit(lambda c: jnp.argmax(clf.segment(params, G.synthesis(gparams, c, return_features=True)[1], res,
                                                   ensemble_mean=True), axis=-1))
    recon = G.synthesis(gparams, codes)
    samples_ws = G.mapping(gparams, jax.random.normal(jax.random.fold_in(key, 9), (n, G.cfg.z_dim)), psi=0.7)
    return {
        "renders_vs_render_labels": scores(np.asarray(seg(codes)), np.asarray(labels)),
        "renders_vs_probe_of_reconstruction": scores(np.asarray(seg(codes)),
                                                     np.asarray(P.predict(pparams, recon)["labels"])),
        "probe_of_reconstruction_vs_render_labels": scores(np.asarray(P.predict(pparams, recon)["labels"]),
                                                           np.asarray(labels)),
        "samples_vs_probe_labels": scores(np.asarray(seg(samples_ws)), np.asarray(
            P.predict(pparams, G.synthesis(gparams, samples_ws))["labels"])),
        "images": n,
    }


def train(cfg: SegmenterTrainConfig | None, dst: str | Path, *, run_dir: str | Path | None = None,
          force: bool = False, stop_at: int | None = None, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train (or resume) in ``run_dir`` (default ``DST.run``), evaluate, save a kind ``"pixel-classifier"``
    checkpoint to ``dst``; -> (params, report). ``cfg`` None resumes with the stored config; ``stop_at`` ends
    this call at that step (nothing saved to ``dst``)."""
    dst = checkpoint.check_writable(dst, force, KIND)
    run_dir = Path(run_dir) if run_dir is not None else runs.default_run_dir(dst)
    cfg = runs.resolve(run_dir, cfg, SegmenterTrainConfig.from_dict, MUTABLE)
    G, gparams, gpath, E, eparams, P, pparams = load_frozen(cfg)
    clf = classifier_for(G, cfg.members)
    key = jax.random.key(cfg.seed)
    opt, step_fn = make_step(cfg, clf, G, gparams)

    def init():
        t0 = time.perf_counter()
        codes, labels, _ = annotate(cfg, G, gparams, E, eparams, P, pparams, jax.random.fold_in(key, DATA_SALT),
                                    cfg.annotated)
        params = clf.init(jax.random.fold_in(key, INIT_SALT))
        return {"params": params, "opt": opt.init(params), "codes": jnp.asarray(codes),
                "labels": jnp.asarray(labels, jnp.int32), "annotate_seconds": jnp.asarray(time.perf_counter() - t0)}

    train_key = jax.random.fold_in(key, TRAIN_SALT)
    total = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    with runs.Run(run_dir, cfg, desc="train-segmenter", progress=progress) as run:
        state, start = run.resume(init)
        state, summary = run.loop(state, lambda s, i: step_fn(s, jax.random.fold_in(train_key, i)), start=start,
                                  total=total, ckpt_every=cfg.ckpt_every, log_every=cfg.log_every, show=("loss",))
    params = state["params"]
    if summary["step"] < cfg.steps:
        return params, {"step": summary["step"]}
    report = evaluate(cfg, clf, params, G, gparams, E, eparams, P, pparams, jax.random.fold_in(key, EVAL_SALT))
    report.update(step=summary["step"], train_seconds=summary["seconds"],
                  annotate_seconds=float(state["annotate_seconds"]), resumed_at=start, run_dir=str(run_dir))
    source = {"trained_by": "jaxedit train-segmenter", "generator": generator_identity(gpath, gparams),
              "encoder": {"name": Path(cfg.encoder).name, "sha256": params_sha256(eparams)},
              "data": {"annotated_renders": cfg.annotated, "classes": list(CLASSES),
                       "renderer": "jaxedit.data.shapes.sample", "inversion": f"encoder + {cfg.invert_steps} "
                       f"projector steps (W+, probe + {cfg.pixel_weight:g} x pixel MSE)"},
              "train_config": cfg.to_dict()}
    checkpoint.save(dst, kind=KIND, model=clf.cfg.to_dict(), params=params, source=source,
                    extra={"metrics": report, "classes": list(CLASSES)}, force=force)
    return params, report
