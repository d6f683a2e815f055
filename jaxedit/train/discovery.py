"""One trainer for unsupervised direction discovery: linear (Voynov & Babenko), warped RBF paths
(WarpedGANSpace) and curvilinear flow axes (DeCurvEd).

The set-up all three references share: sample latents x (W of the frozen generator by default),
a direction k ~ U{0..K-1} and a magnitude eps, render ``G(x)`` and ``G(shift(x, k, eps))``; the
reconstructor R sees the pair and predicts k (cross-entropy) and eps (L1, weight 0.25); R and the
shift's parameters are trained with Adam (lr 1e-4). Only the shift differs:

    linear       x + A(eps e_k)         A: 'proj' (unit columns) or 'ortho' (expm of a skew matrix)
    warped       x + eps grad f_k / |grad f_k|     RBF dipoles, per-path learned gamma
    curvilinear  f^-1(f(x) + eps e_k)   a CNF; loss + 1.0 * mean(delta_logp^2) of the inverse solve

Magnitude samplers (reference defaults): linear eps ~ U[-6, 6] with |eps| < 0.5 set to +-0.5;
warped and curvilinear draw half the batch from U[min, max] and half from U[-max, -min]
(sign-balanced), with [0.1, 0.2] and [0.1, 6.0].

One jitted step (both renders, R, the loss and the Adam update). The run folder is managed by
:mod:`jaxedit.train.runs`: a run killed and restarted continues from its last checkpoint with the
same key schedule (bit-exact), a larger ``steps`` extends it, only :data:`MUTABLE` may change on
resume; ``eval.json`` holds the final accuracy. ``jaxedit discover RUN --method ...``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxedit import edits, models
from jaxedit.config import JSONConfig
from jaxedit.edits import curvilinear, fit, linear, warped
from jaxedit.errors import CheckpointError, ConfigError
from jaxedit.io import checkpoint, files
from jaxedit.models.flows import CNF, CNFConfig
from jaxedit.models.reconstructor import Reconstructor, ReconstructorConfig
from jaxedit.train import runs

METHODS = ("linear", "warped", "curvilinear")
DEFAULT_EPS = {"linear": (0.5, 6.0), "warped": (0.1, 0.2), "curvilinear": (0.1, 6.0)}
CONFIG_FILE, CKPT_DIR = runs.CONFIG_FILE, runs.CKPT_DIR


@dataclasses.dataclass(frozen=True)
class DiscoveryConfig(JSONConfig):
    method: str = "linear"
    generator: str = "shapes32-stylegan2"  # a checkpoint path, or the name of an embedded default model
    space: str = "w"  # shift W (the references' StyleGAN2 setting) or Z
    num_directions: int = 16
    batch: int = 32
    steps: int = 2000
    lr: float = 1e-4
    seed: int = 0
    eps_range: tuple[float, float] | None = None  # None: the method's reference default
    regression_weight: float = 0.25
    deformator: str = "proj"  # linear: proj | ortho
    dipoles: int = 16  # warped: N dipoles (2N support vectors) per path
    flow_hidden: tuple[int, ...] = (128, 128)  # curvilinear: ConcatSquash widths (reference: 512 x 5)
    flow_T: float = 0.1
    flow_steps: int | None = 2  # curvilinear: fixed Dopri5 steps while training (None: adaptive 1e-5)
    logdet_weight: float = 1.0
    reconstructor: ReconstructorConfig = ReconstructorConfig()
    ckpt_every: int = 250
    log_every: int = 25

    def __post_init__(self):
        if self.method not in METHODS:
            raise ConfigError(f"method must be one of {METHODS}, got {self.method!r}")
        if self.space not in ("z", "w"):
            raise ConfigError(f"space must be 'z' or 'w', got {self.space!r}")
        if self.deformator not in ("proj", "ortho"):
            raise ConfigError(f"deformator must be 'proj' or 'ortho', got {self.deformator!r}")
        if self.batch % 2:
            raise ConfigError(f"batch {self.batch} must be even (sign-balanced magnitudes)")
        if self.reconstructor.num_directions != self.num_directions:
            object.__setattr__(self, "reconstructor",
                               dataclasses.replace(self.reconstructor, num_directions=self.num_directions))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DiscoveryConfig:
        d = dict(d)
        if isinstance(d.get("reconstructor"), dict):
            d["reconstructor"] = ReconstructorConfig.from_dict(d["reconstructor"])
        return super().from_dict(d)

    @property
    def eps(self) -> tuple[float, float]:
        return tuple(self.eps_range or DEFAULT_EPS[self.method])


def generator_path(spec: str) -> Path:
    """A checkpoint path as given, else the embedded default model of that name."""
    return Path(spec) if checkpoint.is_checkpoint(spec) else checkpoint.default_path(spec)


# ------------------------------------------------------------------------------ shifts
class DirectionModel(NamedTuple):
    init: Callable[[jax.Array], Any]  # key -> params
    apply: Callable[..., tuple[jax.Array, jax.Array]]  # (params, x [B,d], k [B], eps [B], key) -> (x', aux loss)


def _alternating(K: int, N: int) -> jax.Array:
    return jnp.tile(jnp.asarray([1.0, -1.0]), (K, N))


def make_shift(cfg: DiscoveryConfig, dim: int) -> DirectionModel:
    K = cfg.num_directions
    if cfg.method == "linear":
        if cfg.deformator == "ortho":
            init = lambda key: {"log_mat_half": jax.random.normal(key, (dim, dim))}  # the reference's random init
        else:
            init = lambda key: {"weight": jax.random.normal(key, (dim, K))}
        kind = cfg.deformator

        def apply(p, x, k, eps, key):
            coords = eps[:, None] * jax.nn.one_hot(k, dim if kind == "ortho" else K, dtype=x.dtype)
            return x + linear.deformator_shift(kind, p, coords, dim), jnp.zeros(())
        return DirectionModel(init, apply)

    if cfg.method == "warped":
        N = cfg.dipoles

        def init(key):
            v = jax.random.normal(key, (K, N, dim))
            radius = jnp.arange(1.0, 4.0, 3.0 / K)[:K, None, None]
            v = radius * v / jnp.linalg.norm(v, axis=-1, keepdims=True)
            pairs = jnp.stack([v, -v], axis=2).reshape(K, 2 * N, dim)  # dipoles (v, -v), alternating alphas
            return {"support_sets": pairs, "log_gamma": jnp.full((K,), math.log(1.0 / dim))}

        def apply(p, x, k, eps, key):
            full = dict(p, alphas=_alternating(K, N))
            return jax.vmap(lambda xi, ki, ei: warped.unit_step(full, xi, ki, ei))(x, k, eps), jnp.zeros(())
        return DirectionModel(init, apply)

    if K > dim:
        raise ConfigError(f"curvilinear: {K} axes but the latent has {dim} dimensions")
    flow = CNF(CNFConfig(dim=dim, hidden=tuple(cfg.flow_hidden), T=cfg.flow_T))

    def apply(p, x, k, eps, key):
        x2, dlogp = curvilinear.edit_axes(flow, p, x, k, eps, logp=True, hutchinson_key=key, steps=cfg.flow_steps,
                                          rtol=1e-5, atol=1e-5)
        return x2, jnp.mean(dlogp ** 2)
    return DirectionModel(flow.init, apply)


def sample_eps(cfg: DiscoveryConfig, key: jax.Array, n: int) -> jax.Array:
    lo, hi = cfg.eps
    if cfg.method == "linear":
        e = jax.random.uniform(key, (n,), minval=-hi, maxval=hi)
        return jnp.where(jnp.abs(e) < lo, jnp.where(e < 0, -lo, lo), e)
    k1, k2 = jax.random.split(key)
    mag = jax.random.uniform(k1, (n,), minval=lo, maxval=hi)
    sign = jnp.where(jnp.arange(n) < n // 2, 1.0, -1.0)
    return jax.random.permutation(k2, mag * sign)


# ------------------------------------------------------------------------------ trainer
class Trainer:
    """Holds the frozen generator, R and the shift; ``step(state, i)`` is one jitted update."""

    def __init__(self, cfg: DiscoveryConfig, G=None, gparams=None):
        if G is None:
            G, gparams = models.load_generator(generator_path(cfg.generator))
        self.cfg, self.G, self.gp = cfg, G, gparams
        self.dim = G.cfg.w_dim if cfg.space == "w" else G.cfg.z_dim
        self.R = Reconstructor(dataclasses.replace(cfg.reconstructor, img_channels=G.cfg.img_channels))
        self.shift = make_shift(cfg, self.dim)
        self.opt = optax.adam(cfg.lr)
        self.key = jax.random.key(cfg.seed)
        self._step = jax.jit(self._step_impl)

    def init_state(self) -> dict[str, Any]:
        k1, k2 = jax.random.split(jax.random.fold_in(self.key, 1))
        params = {"R": self.R.init(k1), "shift": self.shift.init(k2)}
        return {"params": params, "opt": self.opt.init(params)}

    def latents(self, key: jax.Array, n: int) -> jax.Array:
        z = jax.random.normal(key, (n, self.G.cfg.z_dim))
        return self.G.mapping(self.gp, z)[:, 0] if self.cfg.space == "w" else z

    def render(self, x: jax.Array) -> jax.Array:
        if self.cfg.space == "z":
            return self.G(self.gp, x, noise_mode="const")
        ws = jnp.broadcast_to(x[:, None], (x.shape[0], self.G.cfg.num_ws, x.shape[1]))
        return self.G.synthesis(self.gp, ws, noise_mode="const")

    def batch(self, key: jax.Array, n: int):
        kx, kk, ke, kh = jax.random.split(key, 4)
        return (self.latents(kx, n), jax.random.randint(kk, (n,), 0, self.cfg.num_directions),
                sample_eps(self.cfg, ke, n), kh)

    def losses(self, params, x, k, eps, key, img_a):
        x2, aux = self.shift.apply(params["shift"], x, k, eps, key)
        logits, mag = self.R(params["R"], img_a, self.render(x2))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, k).mean()
        l1 = jnp.abs(mag - eps).mean()
        loss = ce + self.cfg.regression_weight * l1 + self.cfg.logdet_weight * aux
        return loss, {"loss": loss, "ce": ce, "l1": l1, "reg": aux, "rca": jnp.mean(jnp.argmax(logits, -1) == k)}

    def _step_impl(self, state, i):
        x, k, eps, kh = self.batch(jax.random.fold_in(self.key, 1000 + i), self.cfg.batch)
        img_a = self.render(x)
        grads, m = jax.grad(self.losses, has_aux=True)(state["params"], x, k, eps, kh, img_a)
        updates, opt = self.opt.update(grads, state["opt"], state["params"])
        return {"params": optax.apply_updates(state["params"], updates), "opt": opt}, m

    def step(self, state, i: int):
        return self._step(state, jnp.asarray(i, jnp.int32))

    def evaluate(self, params, key: jax.Array, batches: int = 20) -> dict[str, float]:
        """Reconstructor classification accuracy (RCA) and magnitude MAE on fresh samples."""
        @jax.jit
        def one(kb):
            x, k, eps, kh = self.batch(kb, self.cfg.batch)
            _, m = self.losses(params, x, k, eps, kh, self.render(x))
            return m["rca"], m["l1"]

        out = np.asarray([jax.device_get(one(jax.random.fold_in(key, b))) for b in range(batches)], np.float64)
        return {"rca": float(out[:, 0].mean()), "magnitude_mae": float(out[:, 1].mean()),
                "samples": batches * self.cfg.batch, "chance": 1.0 / self.cfg.num_directions}


# ------------------------------------------------------------------------------ runs
# Fields that may change when a run resumes (a larger ``steps`` extends it).
MUTABLE = frozenset({"steps", "ckpt_every", "log_every"})
EVAL_SALT = 0xE7A1


def load_run_config(run_dir: str | Path) -> DiscoveryConfig:
    """The config stored in a run folder."""
    return runs.resolve(run_dir, None, DiscoveryConfig.from_dict, MUTABLE)


def train(cfg: DiscoveryConfig | None, run_dir: str | Path, *, stop_at: int | None = None, progress: bool = True,
          trainer: Trainer | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; returns ``{'step', 'rca', ...}``.

    ``cfg`` None resumes with the stored config; otherwise it may differ from the stored one only
    in :data:`MUTABLE`. ``stop_at``: end this call at that step (the run stays resumable).
    """
    run_dir = Path(run_dir)
    cfg = runs.resolve(run_dir, cfg, DiscoveryConfig.from_dict, MUTABLE)
    tr = trainer or Trainer(cfg)
    generator = fit.generator_identity(cfg.generator, tr.gp)  # recorded with the exported editor
    total = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    with runs.Run(run_dir, cfg, desc=f"discover-{cfg.method}", progress=progress) as run:
        state, start = run.resume(tr.init_state)
        state, summary = run.loop(state, tr.step, start=start, total=total, ckpt_every=cfg.ckpt_every,
                                  log_every=cfg.log_every,
                                  on_save=lambda i, st: _export_editor(run_dir, cfg, generator, i, st))
    out = {"step": summary["step"], "seconds": summary["seconds"]}
    if out["step"] >= cfg.steps:
        out.update(tr.evaluate(state["params"], jax.random.fold_in(tr.key, EVAL_SALT)))
        files.write_json(run_dir / "eval.json", out)
    return out


def load_run(run_dir: str | Path) -> tuple[DiscoveryConfig, dict, int]:
    """-> (config, params {'R', 'shift'}, step) of a run's latest checkpoint."""
    cfg = load_run_config(run_dir)
    state, _, step = runs.load_checkpoint(run_dir, jax.eval_shape(lambda: _abstract_state(cfg)))
    return cfg, state["params"], step


def _abstract_state(cfg: DiscoveryConfig):
    meta = checkpoint.read_meta(generator_path(cfg.generator))["model"]
    dim = meta["w_dim"] if cfg.space == "w" else meta["z_dim"]
    R = Reconstructor(dataclasses.replace(cfg.reconstructor, img_channels=meta.get("img_channels", 3)))
    shift = make_shift(cfg, dim)
    params = {"R": R.init(jax.random.key(0)), "shift": shift.init(jax.random.key(0))}
    return {"params": params, "opt": optax.adam(cfg.lr).init(params)}


def editor_from_shift(cfg: DiscoveryConfig, shift: dict[str, Any]) -> edits.Editor:
    """The editor of a run's trained shift parameters (``params['shift']``)."""
    if cfg.method == "linear":
        dim = shift["log_mat_half"].shape[0] if cfg.deformator == "ortho" else shift["weight"].shape[0]
        dirs = linear.directions(cfg.deformator, shift, dim)[:cfg.num_directions]
        return edits.Linear(space=cfg.space, directions=jnp.asarray(dirs))
    if cfg.method == "warped":
        K, M = shift["support_sets"].shape[:2]
        return edits.Warped(space=cfg.space, support_sets=shift["support_sets"], alphas=_alternating(K, M // 2),
                            log_gamma=shift["log_gamma"], eps=cfg.eps[1])
    dim = shift["layer0"]["layer"]["kernel"].shape[0]
    flow = CNF(CNFConfig(dim=dim, hidden=tuple(cfg.flow_hidden), T=cfg.flow_T))
    return edits.Curvilinear(space=cfg.space, flow_params=shift, flow=flow, num_axes=cfg.num_directions)


def load_editor(path: str | Path) -> edits.Editor:
    """The editor of a discovery run's latest checkpoint (``jaxedit.edits.load(RUN)`` reads the copy
    that :func:`_export_editor` writes at each checkpoint)."""
    cfg, params, _ = load_run(path)
    return editor_from_shift(cfg, params["shift"])


def _export_editor(run_dir: Path, cfg: DiscoveryConfig, generator: dict[str, str], step: int,
                   state: dict[str, Any]) -> None:
    """Write the run's editor to ``RUN/editor`` (:data:`jaxedit.edits.RUN_EDITOR`): the loop's ``on_save``.
    ``generator``: :func:`jaxedit.edits.fit.generator_identity`. Recommended strengths: the trained
    magnitudes (warped: the reference traversal, 16 steps)."""
    hi = cfg.eps[1] * (16 if cfg.method == "warped" else 1)
    edits.save(editor_from_shift(cfg, state["params"]["shift"]), run_dir / edits.RUN_EDITOR, force=True,
               provenance={"generator": generator, "space": cfg.space, "layers": None,
                           "method": f"jaxedit discover --method {cfg.method}", "step": step,
                           "strength_range": [-hi, hi]})


def evaluate_run(run_dir: str | Path) -> dict[str, Any]:
    """RCA of a finished run (``eval.json`` written at the end of training, else computed now)."""
    path = Path(run_dir) / "eval.json"
    if path.is_file():
        return files.read_json(path, CheckpointError)
    cfg, params, step = load_run(run_dir)
    tr = Trainer(cfg)
    return dict(step=step, **tr.evaluate(params, jax.random.fold_in(tr.key, EVAL_SALT)))
