"""Train an e4e encoder (:mod:`jaxedit.models.e4e`) for a frozen generator (``jaxedit train-encoder``).

The default is the shapes world: the encoder of ``shapes32-stylegan2`` (32x32, 8 W+ codes of 64),
shipped as ``checkpoints/shapes32-encoder``.

Model: :class:`~jaxedit.models.e4e.E4EConfig` sized for 32x32 inputs (:func:`encoder_config`): a
small IR-SE body (widths 16-32-64-64, strides 1-2-2-2, so ``c1, c2, c3`` are 16x16, 8x8, 4x4), the
same feature pyramid and GradualStyleBlocks as e4e (2 / 3 / 4 stride-2 convs down to 1x1), one
style per generator W+ entry (``n_styles = G.num_ws``, ``w_dim = G.w_dim``) and ``latent_avg``
= the generator's ``w_avg`` on every entry (pSp's ``start_from_latent_avg``). The codes are
e4e's: ``w = latent_avg + style_0 + [0, delta_1, ..., delta_{n-1}]`` (a base code plus per-layer
offsets), exactly what :class:`~jaxedit.models.e4e.Encoder` computes.

Loss (e4e's recipe, adapted to the shapes world), on every batch:

- ``pixel_weight`` x pixel L2 between the input and its reconstruction ``G.synthesis(E(x))``
  through the frozen generator (noise ``const``);
- ``perceptual_weight`` x the squared distance of the shapes-world probe's embeddings
  (``P(params, img)["features"]``, :mod:`jaxedit.models.probe`) of input and reconstruction.
  **This replaces e4e's LPIPS**: in this world the probe's features are the perceptual space
  (they are also the space of the Frechet distance), and an ImageNet VGG means little on 32x32
  flat-coloured shapes. e4e's identity loss (ArcFace) has no counterpart and is dropped;
- ``latent_weight`` x L2 between the codes and the true W+ on generator samples (their W is
  known), the supervision pSp/e4e cannot have on real images;
- ``delta_weight`` x e4e's delta regularization ``sum_i mean_b ||w_i - w_0||_2`` (weight 2e-4
  as e4e's ``delta_norm_lambda``), which keeps the codes near W (editability).

e4e's latent discriminator and its progressive schedule (deltas switched on one by one) are
not used: with 8 styles and the latent L2 to a W code (all entries equal) on half of every
batch, the codes are already pulled toward W; the delta regularizer does the rest.

Data: each batch is ``gen_fraction`` generator samples (``z ~ N(0, I)`` -> ``G.mapping`` (psi
``psi``) -> W -> image; W known: image and latent losses) and the rest fresh renders of
:mod:`jaxedit.data.shapes` (no W: image losses only), all made inside the one jitted step from
that step's PRNG key. Nothing in the loss couples the samples of a batch (the IR-SE BatchNorms
are affine with fixed statistics), so a sample's gradient does not depend on its batch-mates.

Keys: ``key = PRNGKey(seed)``; init ``fold_in(key, 0)``, step ``i`` ``fold_in(fold_in(key, 1), i)``,
evaluation ``fold_in(key, 2)``: the held-out data never appears in training.

Training is a resumable run folder (:mod:`jaxedit.train.runs`, default ``DST.run``); the finished
encoder is saved to DST as a kind ``"e4e"`` checkpoint (``E, params = jaxedit.load(DST)``) with the
held-out evaluation (:func:`evaluate`) in its ``metrics``.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxedit import models
from jaxedit.config import JSONConfig
from jaxedit.data import shapes
from jaxedit.edits.fit import generator_identity, params_sha256
from jaxedit.errors import ConfigError
from jaxedit.io import checkpoint
from jaxedit.models.e4e import KIND, E4EConfig, Encoder
from jaxedit.models.probe import Probe
from jaxedit.train import runs

INIT_SALT, TRAIN_SALT, EVAL_SALT = 0, 1, 2
# Fields that may change when a run resumes (a larger ``steps`` extends it).
MUTABLE = frozenset({"steps", "ckpt_every", "log_every", "eval_images"})

#: Probe factor columns grouped by factor (the rows of the evaluation table).
FACTOR_GROUPS: dict[str, tuple[str, ...]] = {
    "position": ("x", "y"), "scale": ("scale",), "rotation": ("rot_cos", "rot_sin"),
    "object_hue": ("hue_cos", "hue_sin"), "background_hue": ("bg_cos", "bg_sin"),
    "spot_hue": ("spot_hue_cos", "spot_hue_sin"), "spot_ratio": ("spot_ratio",),
}


def encoder_config(num_ws: int = 8, w_dim: int = 64, *, widths: tuple[int, ...] = (16, 32, 64, 64),
                   units: tuple[int, ...] = (1, 2, 2, 2), input_channels: int = 16, style_width: int = 48,
                   coarse_ind: int | None = None, middle_ind: int | None = None) -> E4EConfig:
    """An :class:`E4EConfig` for 32x32 inputs and a generator with ``num_ws`` codes of ``w_dim``.

    Body: input conv to ``input_channels``, four stages of ``units`` IR-SE units with ``widths``,
    strides 1-2-2-2 (c1 = end of stage 1 at 16x16, c2 = stage 2 at 8x8, c3 = stage 3 at 4x4: the
    reference taps the ends of its last three stages too). Style ``i`` reads c3 (2 pooling convs)
    below ``coarse_ind``, p2 (3) below ``middle_ind``, else p1 (4). The defaults split the W+
    entries by resolution as e4e does for FFHQ (coarse = 4x4 and 8x8 layers, middle = 16x16,
    fine = the rest): for a 32x32 StyleGAN2 (8 codes) 0-2 / 3-4 / 5-7.
    """
    coarse = 3 if coarse_ind is None else coarse_ind
    middle = min(num_ws, max(coarse, 5 if middle_ind is None else middle_ind))
    coarse = min(coarse, num_ws)
    ends = np.cumsum(units) - 1
    pools = tuple(2 if i < coarse else 3 if i < middle else 4 for i in range(num_ws))
    return E4EConfig(input_channels=input_channels, stage_units=tuple(units), stage_channels=tuple(widths),
                     stage_strides=(1, 2, 2, 2), se_reduction=4, n_styles=num_ws, style_width=style_width,
                     w_dim=w_dim, style_pools=pools, coarse_ind=coarse, middle_ind=middle,
                     feature_units=tuple(int(e) for e in ends[1:]), add_latent_avg=True)


#: The encoder of ``shapes32-stylegan2`` (8 W+ codes of 64) and the renderer's defaults.
DEFAULT_ENCODER = encoder_config()
DEFAULT_DATA = shapes.ShapesConfig()


@dataclasses.dataclass(frozen=True)
class EncoderTrainConfig(JSONConfig):
    steps: int = 5000
    decay_steps: int | None = None  # cosine schedule horizon; None: the run's first ``steps``
    batch: int = 32
    lr: float = 1e-3
    warmup: int = 200
    seed: int = 0
    gen_fraction: float = 0.5  # share of each batch drawn from the generator (W known); the rest renders
    psi: float = 1.0  # truncation of the generator samples
    pixel_weight: float = 1.0
    perceptual_weight: float = 0.8  # e4e's lpips_lambda; here on the probe's embedding
    latent_weight: float = 1.0
    delta_weight: float = 2e-4  # e4e's delta_norm_lambda
    eval_images: int = 1024  # per source (generator samples, renders)
    ckpt_every: int = 500
    log_every: int = 100
    generator: str = "shapes32-stylegan2"  # a default model's name or a checkpoint folder
    probe: str = "shapes32-probe"
    encoder: E4EConfig = DEFAULT_ENCODER
    data: shapes.ShapesConfig = DEFAULT_DATA

    def __post_init__(self):
        for name in ("steps", "batch", "eval_images"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.gen_fraction <= 1:
            raise ConfigError(f"gen_fraction must be in [0, 1], got {self.gen_fraction}")

    @property
    def n_gen(self) -> int:
        return round(self.batch * self.gen_fraction)

    def to_dict(self) -> dict[str, Any]:
        d = super().to_dict()
        d["data"] = {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.data).items()}
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> EncoderTrainConfig:
        d = dict(d)
        if isinstance(d.get("encoder"), dict):
            d["encoder"] = E4EConfig.from_dict(d["encoder"])
        if isinstance(d.get("data"), dict):
            d["data"] = shapes.ShapesConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in d["data"].items()})
        return super().from_dict(d)


def _model_path(name: str) -> Path:
    p = Path(name)
    return p if p.exists() or os.sep in name or "/" in name else checkpoint.default_path(name)


def load_frozen(cfg: EncoderTrainConfig):
    """-> ``(G, gparams, gpath, P, pparams, ppath)``: the generator and the probe, checked against ``cfg.encoder``."""
    gpath, ppath = _model_path(cfg.generator), _model_path(cfg.probe)
    G, gparams = models.load_generator(gpath)
    P, pparams = models.load(ppath)
    if not isinstance(P, Probe):
        raise ConfigError(f"probe {cfg.probe}: a {type(P).__name__}, not a shapes-world probe")
    e, g = cfg.encoder, G.cfg
    if (e.n_styles, e.w_dim) != (g.num_ws, g.w_dim):
        raise ConfigError(f"encoder n_styles/w_dim {e.n_styles}/{e.w_dim} do not match generator {cfg.generator} "
                          f"({g.num_ws} codes of {g.w_dim})")
    if g.img_resolution != cfg.data.resolution or P.cfg.resolution != g.img_resolution:
        raise ConfigError(f"resolutions differ: generator {g.img_resolution}, renders {cfg.data.resolution}, "
                          f"probe {P.cfg.resolution}")
    return G, gparams, gpath, P, pparams, ppath


def _frozen_labels(params) -> Any:
    """``'frozen'`` for ``latent_avg`` (the generator's ``w_avg``) and the BatchNorm statistics."""
    def label(path, _):
        last = str(getattr(path[-1], "key", path[-1]))
        return "frozen" if last in ("latent_avg", "mean", "var") else "train"
    return jax.tree_util.tree_map_with_path(label, params)


def make_optimizer(cfg: EncoderTrainConfig) -> optax.GradientTransformation:
    """Adam, warm-up then cosine to 2 % of ``lr``; ``latent_avg`` and the BatchNorm statistics get no update."""
    horizon = cfg.decay_steps or cfg.steps
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(cfg.warmup, horizon // 4), horizon, cfg.lr * 0.02)
    return optax.multi_transform({"train": optax.adam(sched), "frozen": optax.set_to_zero()}, _frozen_labels)


def init_params(E: Encoder, key: jax.Array, w_avg: jax.Array) -> dict:
    """``E.init(key)`` with ``latent_avg`` = ``w_avg`` on every code; every leaf strongly typed (a weak-typed
    leaf, such as PReLU's ``jnp.full`` init, would make the second step compile again)."""
    params = E.init(key)
    params["latent_avg"] = jnp.broadcast_to(jnp.asarray(w_avg, jnp.float32), params["latent_avg"].shape)
    return jax.tree.map(lambda a: jnp.asarray(a, dtype=a.dtype), params)


def sample_batch(cfg: EncoderTrainConfig, G, gparams, key: jax.Array) -> dict[str, jax.Array]:
    """``image [B, H, W, 3]`` (``n_gen`` generator samples first, then renders) and ``w [n_gen, num_ws, w_dim]``."""
    kz, kr = jax.random.split(key)
    n_gen, n_ren = cfg.n_gen, cfg.batch - cfg.n_gen
    imgs = []
    w = jnp.zeros((0, G.cfg.num_ws, G.cfg.w_dim))
    if n_gen:
        w = G.mapping(gparams, jax.random.normal(kz, (n_gen, G.cfg.z_dim)), psi=cfg.psi)
        imgs.append(G.synthesis(gparams, w))
    if n_ren:
        imgs.append(shapes.sample(kr, n_ren, cfg.data)["image"])
    return {"image": jnp.concatenate(imgs, 0), "w": w}


def per_sample_losses(cfg: EncoderTrainConfig, E: Encoder, G, P, params, frozen, batch) -> dict[str, jax.Array]:
    """Each term per sample (``[B]``; ``latent`` ``[n_gen]``): no term couples samples."""
    x = batch["image"]
    codes = E(params, x)
    y = G.synthesis(frozen["G"], codes)
    fx, fy = P(frozen["P"], x)["features"], P(frozen["P"], y)["features"]
    deltas = codes[:, 1:] - codes[:, :1]
    return {"pixel": jnp.mean((y - x) ** 2, axis=(1, 2, 3)),
            "perceptual": jnp.mean((fy - fx) ** 2, axis=1),
            "latent": jnp.mean((codes[:cfg.n_gen] - batch["w"]) ** 2, axis=(1, 2)),
            "delta": jnp.sum(jnp.sqrt(jnp.sum(deltas ** 2, axis=-1) + 1e-12), axis=1)}


def total_loss(cfg: EncoderTrainConfig, terms: dict[str, jax.Array]) -> jax.Array:
    latent = jnp.mean(terms["latent"]) if cfg.n_gen else 0.0
    return (cfg.pixel_weight * jnp.mean(terms["pixel"]) + cfg.perceptual_weight * jnp.mean(terms["perceptual"])
            + cfg.latent_weight * latent + cfg.delta_weight * jnp.mean(terms["delta"]))


@functools.lru_cache(maxsize=8)
def make_step(cfg: EncoderTrainConfig, E: Encoder, G, P):
    """-> ``(opt, step)``: the optimizer and the jitted ``step(params, opt_state, frozen, key) -> (params,
    opt_state, metrics)`` (``frozen``: ``{'G': generator params, 'P': probe params}``, passed in, not baked
    into the program). Cached: the same config and models share one traced program."""
    opt = make_optimizer(cfg)

    def loss_fn(params, frozen, batch):
        terms = per_sample_losses(cfg, E, G, P, params, frozen, batch)
        return total_loss(cfg, terms), {k: jnp.mean(v) for k, v in terms.items() if v.shape[0]}

    @jax.jit
    def step(params, opt_state, frozen, key):
        batch = sample_batch(cfg, G, frozen["G"], key)
        (loss, m), grads = jax.value_and_grad(loss_fn, has_aux=True)(params, frozen, batch)
        updates, opt_state = opt.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, dict(m, loss=loss)

    return opt, step


# ------------------------------------------------------------------------------ evaluation
def _group_mae(abs_err: np.ndarray) -> dict[str, float]:
    """``[F]`` summed/mean absolute errors per probe column -> mean per factor group."""
    col = {n: i for i, n in enumerate(shapes.FACTOR_NAMES)}
    return {g: float(np.mean([abs_err[col[c]] for c in cols])) for g, cols in FACTOR_GROUPS.items()}


def evaluate(E: Encoder, params, G, gparams, P, pparams, key: jax.Array, n: int = 1024,
             data: shapes.ShapesConfig = DEFAULT_DATA, psi: float = 1.0, batch: int = 256) -> dict[str, Any]:
    """Held-out reconstruction quality of the encoder and of the "mean latent" baseline.

    On ``n`` generator samples (``z`` from ``key``, psi ``psi``) and ``n`` fresh renders: pixel MSE
    (images in [-1, 1]), the probe's factor MAE between input and reconstruction per factor group
    (:data:`FACTOR_GROUPS`, normalized [0, 1] units) and its shape agreement, and on generator
    samples the W+ error (mean squared error per entry, and mean L2 distance per code). The
    baseline reconstructs every input as ``G.synthesis(w_avg)``. For renders, ``probe_floor`` is the
    probe's own factor MAE against the true factors (how small a factor MAE can be read at all).
    -> ``{'generator': {...}, 'renders': {...}}``, each ``{'encoder': {...}, 'w_avg': {...}, ...}``.
    """
    batch = min(batch, n)
    batches = max(1, -(-n // batch))
    predict = jax.jit(P.predict)
    # the baseline's one image, made at the batch size so it reuses the synthesis and probe programs
    w_avg = jnp.broadcast_to(gparams["mapping"]["w_avg"], (batch, G.cfg.num_ws, G.cfg.w_dim))
    y_avg = G.synthesis(gparams, w_avg)
    p_avg = jax.device_get(predict(pparams, y_avg))
    # small compiled pieces shared by both sources (the encoder, synthesis and probe programs compile once)
    gen_images = jax.jit(_generate, static_argnums=(0, 3, 4))
    report: dict[str, Any] = {}
    for name, salt in (("generator", 0), ("renders", 1)):
        tot: dict[str, Any] = {}
        for i in range(batches):
            k = jax.random.fold_in(jax.random.fold_in(key, salt), i)
            if name == "generator":
                w, x = gen_images(G, gparams, k, batch, psi)
            else:
                b = shapes.sample(k, batch, data)
                w, x = None, b["image"]
            codes = E(params, x)
            y = G.synthesis(gparams, codes)
            px, py = jax.device_get((predict(pparams, x), predict(pparams, y)))
            x, y, codes = (np.asarray(a, np.float64) for a in (x, y, codes))
            for model, rec, pr in (("encoder", y, py), ("w_avg", np.asarray(y_avg, np.float64), p_avg)):
                _add(tot, model, "pixel_mse", np.mean((rec - x) ** 2, axis=(1, 2, 3)).sum())
                _add(tot, model, "factor_abs", np.abs(pr["factors"] - px["factors"]).sum(0))
                _add(tot, model, "shape_agreement", np.sum(pr["shape"] == px["shape"]))
            if w is not None:
                w = np.asarray(w, np.float64)
                for model, c in (("encoder", codes), ("w_avg", np.asarray(w_avg, np.float64))):
                    _add(tot, model, "latent_mse", np.mean((c - w) ** 2, axis=(1, 2)).sum())
                    _add(tot, model, "latent_l2", np.mean(np.linalg.norm(c - w, axis=-1), axis=1).sum())
            else:
                tot["probe_floor"] = tot.get("probe_floor", 0) + np.abs(px["factors"] - np.asarray(b["vector"])).sum(0)
        count = batches * batch
        part: dict[str, Any] = {"images": count}
        for model in ("encoder", "w_avg"):
            t = {k: v / count for k, v in tot[model].items()}
            fa = t.pop("factor_abs")
            row = {k: float(v) for k, v in t.items()}
            row["factor_mae"] = _group_mae(fa)
            row["factor_mae_mean"] = float(np.mean(fa))
            part[model] = row
        if name == "renders":
            fa = tot["probe_floor"] / count
            part["probe_floor"] = dict(_group_mae(fa), mean=float(np.mean(fa)))
        report[name] = part
    return report


def _generate(G, gparams, key: jax.Array, n: int, psi: float) -> tuple[jax.Array, jax.Array]:
    w = G.mapping(gparams, jax.random.normal(key, (n, G.cfg.z_dim)), psi=psi)
    return w, G.synthesis(gparams, w)


def _add(tot: dict, model: str, name: str, value) -> None:
    row = tot.setdefault(model, {})
    row[name] = row.get(name, 0) + np.asarray(value, np.float64)


# ------------------------------------------------------------------------------ training
def train(cfg: EncoderTrainConfig | None, dst: str | Path, *, run_dir: str | Path | None = None, force: bool = False,
          stop_at: int | None = None, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Train (or resume) in ``run_dir``, evaluate on held-out data, save a kind ``"e4e"`` checkpoint to
    ``dst``; -> (params, report).

    ``run_dir`` defaults to ``DST.run``; ``cfg`` None resumes with its stored config, otherwise
    only :data:`MUTABLE` may differ (a larger ``steps`` extends the run; the cosine schedule keeps
    its first horizon). ``stop_at``: end this call at that step (nothing saved to ``dst``).
    """
    dst = checkpoint.check_writable(dst, force, KIND)
    run_dir = Path(run_dir) if run_dir is not None else runs.default_run_dir(dst)
    cfg = runs.resolve_with_horizon(run_dir, cfg, EncoderTrainConfig.from_dict, MUTABLE)
    G, gparams, gpath, P, pparams, ppath = load_frozen(cfg)
    E = Encoder(cfg.encoder)
    key = jax.random.key(cfg.seed)
    frozen = {"G": gparams, "P": pparams}
    opt, update = make_step(cfg, E, G, P)

    def init():
        params = init_params(E, jax.random.fold_in(key, INIT_SALT), gparams["mapping"]["w_avg"])
        return {"params": params, "opt": opt.init(params)}

    train_key = jax.random.fold_in(key, TRAIN_SALT)

    def step(state, i):
        params, opt_state, m = update(state["params"], state["opt"], frozen, jax.random.fold_in(train_key, i))
        return {"params": params, "opt": opt_state}, m

    total = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    with runs.Run(run_dir, cfg, desc="train-encoder", progress=progress) as run:
        state, start = run.resume(init)
        state, summary = run.loop(state, step, start=start, total=total, ckpt_every=cfg.ckpt_every,
                                  log_every=cfg.log_every, show=("loss", "pixel", "latent"))
    params = state["params"]
    if summary["step"] < cfg.steps:
        return params, {"step": summary["step"]}
    report = evaluate(E, params, G, gparams, P, pparams, jax.random.fold_in(key, EVAL_SALT), cfg.eval_images,
                      cfg.data, cfg.psi)
    report.update(step=summary["step"], train_seconds=summary["seconds"], batch=cfg.batch,
                  images_seen=cfg.steps * cfg.batch, resumed_at=start, run_dir=str(run_dir),
                  parameters=int(sum(np.size(v) for v in jax.tree.leaves(params))))
    source = {"trained_by": "jaxedit train-encoder", "generator": generator_identity(gpath, gparams),
              "probe": {"name": Path(ppath).name, "sha256": params_sha256(pparams)},
              "data": {"generator_samples": cfg.n_gen, "renders": cfg.batch - cfg.n_gen, "psi": cfg.psi,
                       "renderer": "jaxedit.data.shapes.sample"},
              "steps": cfg.steps, "train_config": cfg.to_dict()}
    checkpoint.save(dst, kind=KIND, model=cfg.encoder.to_dict(), params=params, source=source,
                    extra={"metrics": report}, force=force)
    return params, report
