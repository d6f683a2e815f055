"""StyleGAN2 training (the stylegan2-ada-pytorch recipe without ADA), resumable, one jitted program per phase.

Recipe (NVlabs/stylegan2-ada-pytorch ``training/loss.py``, ``training/training_loop.py``):

- Non-saturating logistic loss: ``L_G = softplus(-D(G(z)))``,
  ``L_D = softplus(D(G(z))) + softplus(-D(x))``; fakes and reals go through D in separate
  forward passes (separate minibatch-stddev groups), as in the reference.
- Lazy R1 on reals: every ``D_reg_interval`` (16) iterations an extra Adam step of the same
  D optimizer on ``mean(|grad_x D(x)|^2) * r1_gamma / 2 * D_reg_interval``, with the same
  real batch as that iteration's main D step, evaluated after it. With
  ``D_reg_interval=None`` the penalty (gain 1) is added to every D step instead.
- Optional path-length regularization (``pl_weight > 0``; off by default, it costs a
  double backward through G): every ``G_reg_interval`` iterations, on ``batch //
  pl_batch_shrink`` samples, ``(|J_w^T y| - a)^2 * pl_weight * G_reg_interval`` with ``a``
  the EMA (decay 0.01) of the path lengths.
- Adam with ``b1=0, b2=0.99, eps=1e-8``; lazy regularization scales the learning rate by
  ``r = I / (I + 1)`` and the betas to ``beta ** r`` (I the reg interval), as the reference.
  Like the reference, the G adjustment applies whenever ``G_reg_interval`` is set, even with
  ``pl_weight=0`` (its train.py keeps ``G_reg_interval=4`` for every config); set
  ``G_reg_interval=None`` for the plain Adam settings.
- Style mixing with probability ``style_mixing_prob``: one cutoff in ``[1, num_ws)`` per
  batch, layers past it take the w of a second z (its mapping does not update ``w_avg``).
- ``w_avg`` (a buffer of G) tracks the mean mapped w: ``w_avg <- lerp(mean(w), w_avg, 0.995)``
  at every G forward on the phase's main z (G step, PL step, D step), so truncation works
  in the exported model. ``noise_const`` and ``w_avg`` are excluded from the optimizer.
- EMA of G after every iteration: ``beta = 0.5 ** (batch / ema_nimg)``,
  ``ema_nimg = min(ema_kimg * 1000, cur_nimg * ema_rampup)``; buffers are copied.
- Training noise is ``noise_mode='random'``; sample grids use G_ema with ``'const'`` noise.

Engineering:

- One jitted program per phase: ``G`` (or ``G+PL``) and ``D`` (or ``D+R1``); the EMA and
  the ``w_avg`` update ride in the D program (the end of an iteration). Real data is
  rendered on the fly inside the D program (``jaxedit.data.shapes.sample``), never read from disk.
- All randomness of iteration ``s`` comes from ``fold_in(key, s)`` with the run's key
  saved in every checkpoint, so a resumed run reproduces an uninterrupted one bit for bit
  (same machine, same XLA build).
- Parameters replicated, generated batches sharded over the ``'data'`` mesh axis
  (:mod:`jaxedit.parallel`); on one device this is a no-op.
- The host never waits on the device except to keep at most two iterations in flight and
  to fetch the logged scalars about once a second.
- The run folder is managed by :mod:`jaxedit.train.runs` (config.json, checkpoints/ kept 2,
  log.jsonl; a run killed at any moment, even by SIGKILL during a save, resumes from its last
  complete checkpoint; SIGINT/SIGTERM save first). ``kimg`` and the intervals
  (:data:`MUTABLE`) may change on resume. Trainer outputs: ``samples/*.png`` (fixed-z G_ema
  grids) and at the end ``RUN_DIR/G_ema`` (or ``--export DST``), a jaxedit StyleGAN2
  checkpoint that ``jaxedit sample`` reads.

API::

    cfg = load_config("shapes32-stylegan2")                   # a preset, path/to/config.py, or GANConfig(...)
    train(cfg, "runs/shapes32")                               # resumes if runs/shapes32 has checkpoints
    export("runs/shapes32", "checkpoints/shapes32-stylegan2")  # G_ema of the latest checkpoint
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from jaxedit import parallel
from jaxedit.config import JSONConfig
from jaxedit.data import shapes
from jaxedit.errors import CheckpointError, ConfigError
from jaxedit.io import checkpoint, files
from jaxedit.io import images as imio
from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config
from jaxedit.models.stylegan2.discriminator import (
    Discriminator,
    DiscriminatorConfig,
    DiscriminatorModule,
)
from jaxedit.models.stylegan2.generator import Generator
from jaxedit.nn.layers import Buffer
from jaxedit.train import runs

Params = dict[str, Any]
CONFIG_FILE, LOG_FILE, CKPT_DIR = runs.CONFIG_FILE, runs.LOG_FILE, runs.CKPT_DIR
SAMPLES_DIR = "samples"
EXPORT_DIR = "G_ema"

# fold_in tags: one independent stream per phase of an iteration
_PHASE_G, _PHASE_PL, _PHASE_D = 0, 1, 2


# ---------------------------------------------------------------------------- config


@dataclasses.dataclass(frozen=True)
class GANConfig(JSONConfig):
    """A training run. Intervals given in kimg are converted to iterations (one G + one D step).

    ``data`` selects the real-image source: ``{"kind": "shapes", **ShapesConfig kwargs}`` (the
    shapes world, rendered on the fly) or ``{"kind": "toy"}`` (coloured squares, for tests).
    """

    G: StyleGAN2Config
    D: DiscriminatorConfig
    data: dict = dataclasses.field(default_factory=lambda: {"kind": "shapes"})
    name: str = ""
    batch: int = 32
    kimg: float = 1000.0
    seed: int = 0
    prng_impl: str = "rbg"  # XLA RngBitGenerator: 3-5x faster to compile (and faster to run) than threefry on CPU
    lr_G: float = 0.0025
    lr_D: float = 0.0025
    betas: tuple[float, float] = (0.0, 0.99)
    eps: float = 1e-8
    r1_gamma: float = 0.1
    D_reg_interval: int | None = 16
    pl_weight: float = 0.0
    G_reg_interval: int | None = 4
    pl_batch_shrink: int = 2
    pl_decay: float = 0.01
    style_mixing_prob: float = 0.9
    ema_kimg: float = 10.0
    ema_rampup: float | None = 0.05
    w_avg_beta: float = 0.995
    ckpt_kimg: float | None = 20.0
    ckpt_steps: int | None = None  # overrides ckpt_kimg
    sample_kimg: float | None = 50.0
    sample_steps: int | None = None  # overrides sample_kimg
    grid_size: int = 64
    log_seconds: float = 30.0  # period of log.jsonl rows (and of progress lines when not on a TTY)

    def __post_init__(self):
        G, D = self.G, self.D
        if isinstance(G, dict):
            object.__setattr__(self, "G", G := StyleGAN2Config.from_dict(G))
        if isinstance(D, dict):
            object.__setattr__(self, "D", D := DiscriminatorConfig.from_dict(D))
        object.__setattr__(self, "betas", tuple(float(b) for b in self.betas))
        object.__setattr__(self, "data", dict(self.data))
        if G.img_resolution != D.img_resolution or G.img_channels != D.img_channels:
            raise ConfigError(f"G makes {G.img_resolution}px x {G.img_channels} images but D reads "
                             f"{D.img_resolution}px x {D.img_channels}")
        if G.c_dim or D.c_dim:
            raise ConfigError("conditional GAN training is not supported yet (G.c_dim and D.c_dim must be 0)")
        if self.batch < 1 or self.batch % max(1, min(D.mbstd_group_size or self.batch, self.batch)):
            raise ConfigError(f"batch {self.batch} must be a positive multiple of the minibatch-stddev group "
                             f"size {D.mbstd_group_size}")
        if self.pl_weight and self.G_reg_interval is None:
            raise ConfigError("path-length regularization needs G_reg_interval (non-lazy PL is not supported)")
        if "kind" not in self.data:
            raise ConfigError("data needs a 'kind' ('shapes' or 'toy')")

    @property
    def total_steps(self) -> int:
        return max(1, math.ceil(self.kimg * 1000 / self.batch))

    def steps(self, kimg: float | None, steps: int | None) -> int | None:
        if steps is not None:
            return max(1, int(steps))
        return None if kimg is None else max(1, math.ceil(kimg * 1000 / self.batch))

    @property
    def ckpt_every(self) -> int | None:
        return self.steps(self.ckpt_kimg, self.ckpt_steps)

    @property
    def sample_every(self) -> int | None:
        return self.steps(self.sample_kimg, self.sample_steps)

    def replace(self, **changes) -> GANConfig:
        return dataclasses.replace(self, **changes)


# Fields that may change when a run resumes (its length, intervals, logging, name).
MUTABLE = frozenset({"kimg", "ckpt_kimg", "ckpt_steps", "sample_kimg", "sample_steps", "log_seconds", "name"})


def tiny_config(resolution: int = 16, **changes) -> GANConfig:
    """A few-second smoke-test configuration (toy data, few channels)."""
    n = int(math.log2(resolution)) - 1
    chans = tuple([16] * (n - 1) + [8])
    cfg = GANConfig(
        name="tiny",
        G=StyleGAN2Config(z_dim=16, w_dim=16, img_resolution=resolution, mapping_layers=2, channels=chans),
        D=DiscriminatorConfig(img_resolution=resolution, channels=chans),
        data={"kind": "toy"}, batch=8, kimg=0.08, lr_G=0.002, lr_D=0.002, r1_gamma=0.1, ema_kimg=0.05,
        ckpt_steps=5, sample_steps=5, grid_size=16, log_seconds=5.0)
    return cfg.replace(**changes)


# name -> (z = w dim, mapping layers, channels at 4, 8, 16, 32 px (G and D)); bench: experiments/train_shapes32.py
SHAPES32_CANDIDATES = {
    "c64": (64, 2, (64, 64, 32, 16)),
    "c64w": (64, 2, (64, 64, 64, 32)),
    "c128": (64, 2, (128, 128, 64, 32)),
}


def shapes32_config(candidate: str | None = None) -> GANConfig:
    """The default model ``shapes32-stylegan2``: stylegan2-ada-pytorch's ``auto`` config adapted to 32 px on CPU.

    - 32x32, z = w = 64 (about a dozen factors of variation; a small W keeps PCA, SVMs and flows
      over W cheap), 2 mapping layers (``auto``), skip G / resnet D as the reference.
    - Channels 4:64 8:64 16:32 32:16 ("c64", the cheapest candidate measured: XLA:CPU steps are
      dominated by conv backward passes; the flat-coloured shapes world needs few channels).
    - Batch 32, lr 0.0025 (``auto``), Adam (0, 0.99), lazy R1 every 16 with gamma 0.1 (``auto``'s
      0.0064 is too weak: flat images with sharp edges make D confident quickly), EMA 10 kimg with
      ramp-up 0.05, style mixing 0.9 (keeps per-layer styles separable for StyleSpace edits), no
      path-length regularization (a double backward through G: too slow on CPU), no ADA.
    - 2000 kimg (``--kimg`` extends a run), checkpoints every 20 kimg, grids every 100 kimg.

    ``candidate`` picks another width (:data:`SHAPES32_CANDIDATES`; ``--config shapes32-stylegan2:c128``).
    """
    name = candidate or "c64"
    if name not in SHAPES32_CANDIDATES:
        raise ConfigError(f"shapes32-stylegan2: unknown candidate {name!r} (one of {', '.join(SHAPES32_CANDIDATES)})")
    zw, mapping_layers, channels = SHAPES32_CANDIDATES[name]
    return GANConfig(
        name="shapes32-stylegan2" if name == "c64" else f"shapes32-stylegan2-{name}",
        G=StyleGAN2Config(z_dim=zw, w_dim=zw, img_resolution=32, mapping_layers=mapping_layers,
                          channels=channels, architecture="skip"),
        D=DiscriminatorConfig(img_resolution=32, channels=channels, architecture="resnet",
                              mbstd_group_size=4, mbstd_num_channels=1),
        data={"kind": "shapes", "resolution": 32}, batch=32, kimg=2000.0, seed=0, lr_G=0.0025, lr_D=0.0025,
        betas=(0.0, 0.99), eps=1e-8, r1_gamma=0.1, D_reg_interval=16, pl_weight=0.0, G_reg_interval=4,
        style_mixing_prob=0.9, ema_kimg=10.0, ema_rampup=0.05, w_avg_beta=0.995, ckpt_kimg=20.0,
        sample_kimg=100.0, grid_size=64, log_seconds=30.0)


def _tiny_preset(resolution: str | None = None) -> GANConfig:
    if resolution is not None and not resolution.isdigit():
        raise ConfigError(f"--config tiny:{resolution}: the argument is a resolution in pixels, e.g. tiny:8")
    return tiny_config(int(resolution or 16))


# config functions: ``--config NAME`` or ``--config NAME:ARG`` (ARG passed to the function)
PRESETS: dict[str, Callable[..., GANConfig]] = {"tiny": _tiny_preset, "shapes32-stylegan2": shapes32_config}


def load_config(spec: str | os.PathLike | GANConfig | dict) -> GANConfig:
    """A preset name (``name`` or ``name:arg``), ``path/to/config.py`` (big_vision style
    ``get_config(arg)``; ``path.py:arg`` passes ``arg``), a ``config.json`` path, a dict, or a :class:`GANConfig`."""
    if isinstance(spec, GANConfig):
        return spec
    if isinstance(spec, dict):
        return GANConfig.from_dict(spec)
    spec = str(spec)
    name, _, arg = spec.partition(":")
    if name in PRESETS:
        return PRESETS[name](arg or None)
    path_part, _, arg = spec.partition(":") if spec.count(":") == 1 and not os.path.exists(spec) else (spec, "", "")
    path = Path(path_part)
    if not path.is_file():
        raise ConfigError(f"--config {spec!r} is neither a preset ({', '.join(PRESETS)}) nor a file")
    if path.suffix == ".json":
        return GANConfig.from_dict(files.read_json(path, ConfigError))
    mod_spec = importlib.util.spec_from_file_location(f"_jaxedit_config_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    mod_spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise ConfigError(f"{path} defines no get_config()")
    cfg = module.get_config(arg) if arg else module.get_config()
    if not isinstance(cfg, (GANConfig, dict)):
        raise ConfigError(f"{path}: get_config() must return a GANConfig or a dict, got {type(cfg).__name__}")
    return load_config(cfg)


def apply_overrides(cfg: GANConfig, sets: list[str]) -> GANConfig:
    """``["lr_G=0.002", "G.z_dim=64", "data.resolution=32"]`` -> new config (values parsed as JSON)."""
    d = cfg.to_dict()
    for item in sets:
        key, sep, text = item.partition("=")
        if not sep:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        node = d
        *parents, leaf = key.split(".")
        for p in parents:
            if not isinstance(node.get(p), dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a config section")
            node = node[p]
        if node is not d["data"] and leaf not in node:
            raise ConfigError(f"--set {item!r}: unknown key {key!r}")
        node[leaf] = value
    return GANConfig.from_dict(d)


# ------------------------------------------------------------------------------ data


def toy_images(key: jax.Array, batch: int, resolution: int) -> jax.Array:
    """Jittable toy data: a coloured axis-aligned square on a coloured background, in [-1, 1]."""
    kc, kb, kp, ks = jax.random.split(key, 4)
    fg = jax.random.uniform(kc, (batch, 1, 1, 3), minval=-1, maxval=1)
    bg = jax.random.uniform(kb, (batch, 1, 1, 3), minval=-1, maxval=1)
    size = jax.random.uniform(ks, (batch, 1, 1), minval=0.25, maxval=0.5)
    pos = jax.random.uniform(kp, (batch, 2), minval=0.0, maxval=1.0) * (1 - size[:, 0])
    coords = (jnp.arange(resolution) + 0.5) / resolution
    inside_y = (coords[None, :, None] >= pos[:, 0, None, None]) & (coords[None, :, None] < pos[:, 0, None, None] + size)
    inside_x = (coords[None, None, :] >= pos[:, 1, None, None]) & (coords[None, None, :] < pos[:, 1, None, None] + size)
    mask = (inside_y & inside_x)[..., None]
    return jnp.where(mask, fg, bg)


def make_source(data: dict, resolution: int) -> Callable[[jax.Array, int], jax.Array]:
    """``data`` config -> jittable ``images(key, batch) -> [B, H, W, 3]`` in [-1, 1]."""
    kwargs = dict(data)
    kind = kwargs.pop("kind")
    if kind == "toy":
        return lambda key, batch: toy_images(key, batch, resolution)
    if kind == "shapes":
        kwargs.setdefault("resolution", resolution)
        scfg = shapes.ShapesConfig(**{k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()})
        return lambda key, batch: shapes.sample(key, batch, scfg)["image"]
    raise ConfigError(f"unknown data kind {kind!r} (expected 'shapes' or 'toy')")


# ----------------------------------------------------------------- pure helpers


def param_labels(handle) -> Params:
    """``'train'`` for trainable leaves, ``'buffer'`` for Buffer leaves (``w_avg``, ``noise_const``)."""
    cls = Generator if isinstance(handle, StyleGAN2) else DiscriminatorModule
    abstract = nnx.eval_shape(lambda: cls(handle.cfg, rngs=nnx.Rngs(0)))
    _, buffers, _ = nnx.split(abstract, Buffer, ...)
    buffer_paths = {tuple(p) for p, _ in jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(buffers))[0]}
    shapes = handle.param_shapes()
    return jax.tree_util.tree_map_with_path(
        lambda p, _: "buffer" if tuple(p) in buffer_paths else "train", shapes)


def adam(lr: float, betas: tuple[float, float], eps: float, reg_interval: int | None, labels: Params):
    """Adam (buffers frozen) with the reference's lazy-regularization adjustment of lr and betas."""
    b1, b2 = betas
    if reg_interval:
        ratio = reg_interval / (reg_interval + 1)
        lr, b1, b2 = lr * ratio, b1 ** ratio, b2 ** ratio
    return optax.multi_transform({"train": optax.adam(lr, b1=b1, b2=b2, eps=eps), "buffer": optax.set_to_zero()},
                                 labels)


def ema_beta(cur_nimg, batch: int, ema_kimg: float, ema_rampup: float | None):
    """The reference's G_ema decay for the iteration that starts at ``cur_nimg`` images."""
    ema_nimg = ema_kimg * 1000
    if ema_rampup is not None:
        ema_nimg = jnp.minimum(ema_nimg, cur_nimg * ema_rampup)
    return 0.5 ** (batch / jnp.maximum(ema_nimg, 1e-8))


def ema_update(ema: Params, params: Params, beta, labels: Params) -> Params:
    """``lerp(params, ema, beta)`` on trainable leaves; buffers are copied from ``params``."""
    return jax.tree.map(lambda e, p, lab: p if lab == "buffer" else p + (e - p) * beta, ema, params, labels)


def r1_penalty(D: Discriminator, d_params: Params, real: jax.Array) -> jax.Array:
    """Per-sample ``|d sum(D(x)) / d x_i|^2`` ``[B]`` (the reference differentiates the batch sum)."""
    g = jax.grad(lambda x: jnp.sum(D(d_params, x)))(real)
    return jnp.sum(jnp.square(g), axis=tuple(range(1, g.ndim)))


def _set_w_avg(g_params: Params, w_avg: jax.Array) -> Params:
    mapping = dict(g_params["mapping"], w_avg=w_avg)
    return dict(g_params, mapping=mapping)


# ------------------------------------------------------------------------- trainer


class GANTrainer:
    """The jitted phases of one config; pure functions of a state dict.

    ``state = {G, G_ema, D, opt_G, opt_D, pl_mean, key}`` (key: raw uint32 key data). Each
    step returns ``(state, metrics)`` with ``metrics`` a dict of scalars for logging.
    """

    def __init__(self, cfg: GANConfig, mesh=None, compiler_options: dict[str, Any] | None = None):
        """``compiler_options``: XLA options for the phase programs, e.g.
        ``{"xla_backend_optimization_level": 0}`` halves compile time for smoke tests."""
        self.cfg = cfg
        self.compiler_options = compiler_options
        self._compiled: dict[str, Any] = {}
        self.G = StyleGAN2(cfg.G)
        self.D = Discriminator(cfg.D)
        self.mesh = mesh if mesh is not None else parallel.data_mesh()
        if cfg.batch % self.mesh.size:
            raise ConfigError(f"batch {cfg.batch} does not split over {self.mesh.size} devices")
        self.source = make_source(cfg.data, cfg.G.img_resolution)
        self.g_labels = param_labels(self.G)
        self.d_labels = param_labels(self.D)
        self.opt_G = adam(cfg.lr_G, cfg.betas, cfg.eps, cfg.G_reg_interval, self.g_labels)
        self.opt_D = adam(cfg.lr_D, cfg.betas, cfg.eps, cfg.D_reg_interval, self.d_labels)
        self._batch_sharding = parallel.batch_sharded(self.mesh)
        self._replicated = parallel.replicated(self.mesh)
        self._g_step = jax.jit(functools.partial(self._g_step_impl, pl=False), donate_argnums=0)
        self._g_pl_step = jax.jit(functools.partial(self._g_step_impl, pl=True), donate_argnums=0)
        self._d_step = jax.jit(functools.partial(self._d_step_impl, r1=False), donate_argnums=0)
        self._d_r1_step = jax.jit(functools.partial(self._d_step_impl, r1=True), donate_argnums=0)
        self._sample = jax.jit(lambda p, z: self.G.synthesis(p, self.G.mapping(p, z), noise_mode="const"))
        self._reals = jax.jit(self.source, static_argnums=1)

    # ------------------------------------------------------------ state
    def init_state(self, seed: int | None = None) -> dict[str, Any]:
        """Fresh G, G_ema (= G), D, optimizer states and the run's PRNG key from ``seed``."""
        seed = self.cfg.seed if seed is None else seed
        return parallel.replicate(self._init(seed), self.mesh)

    @functools.partial(jax.jit, static_argnums=(0, 1))
    def _init(self, seed: int):
        kg, kd, kt = jax.random.split(jax.random.key(seed, impl=self.cfg.prng_impl), 3)
        g = self.G.init(kg)
        d = self.D.init(kd)
        return {"G": g, "G_ema": jax.tree.map(jnp.copy, g), "D": d,
                "opt_G": self.opt_G.init(g), "opt_D": self.opt_D.init(d),
                "pl_mean": jnp.zeros((), jnp.float32), "key": jax.random.key_data(kt)}

    def abstract_state(self) -> dict[str, Any]:
        return jax.eval_shape(lambda: self._init(self.cfg.seed))

    # ------------------------------------------------------------ pieces
    def _shard(self, x):
        return jax.lax.with_sharding_constraint(x, self._batch_sharding)

    def _keys(self, state, step, phase: int, n: int):
        key = jax.random.fold_in(jax.random.fold_in(jax.random.wrap_key_data(state["key"], impl=self.cfg.prng_impl), step), phase)
        return jax.random.split(key, n)

    def _mapping(self, g, key, batch):
        """Main-z ws (style-mixed) and the batch mean of the main w (for ``w_avg``)."""
        cfg = self.cfg
        kz, kz2, kc, kp = jax.random.split(key, 4)
        z = self._shard(jax.random.normal(kz, (batch, cfg.G.z_dim)))
        ws = self.G.mapping(g, z)
        w_mean = jax.lax.stop_gradient(jnp.mean(ws[:, 0], axis=0))
        if cfg.style_mixing_prob > 0:
            num_ws = cfg.G.num_ws
            cutoff = jax.random.randint(kc, (), 1, num_ws)
            cutoff = jnp.where(jax.random.uniform(kp, ()) < cfg.style_mixing_prob, cutoff, num_ws)
            z2 = self._shard(jax.random.normal(kz2, z.shape))
            ws2 = self.G.mapping(g, z2)
            ws = jnp.where(jnp.arange(num_ws)[None, :, None] < cutoff, ws, ws2)
        return ws, w_mean

    def _synthesis(self, g, ws, key):
        return self._shard(self.G.synthesis(g, ws, noise_mode="random", key=key))

    def _update_w_avg(self, g, w_mean):
        beta = self.cfg.w_avg_beta
        return _set_w_avg(g, w_mean + (g["mapping"]["w_avg"] - w_mean) * beta)

    def _replicate(self, tree):
        return jax.lax.with_sharding_constraint(tree, self._replicated)

    # ------------------------------------------------------------ phases
    def _g_step_impl(self, state, step, *, pl: bool):
        cfg = self.cfg
        km, kn = self._keys(state, step, _PHASE_G, 2)
        d = state["D"]

        def loss_fn(g):
            ws, w_mean = self._mapping(g, km, cfg.batch)
            img = self._synthesis(g, ws, kn)
            logits = self.D(d, img)
            return jnp.mean(jax.nn.softplus(-logits)), (w_mean, jnp.mean(logits))

        (loss, (w_mean, fake_score)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state["G"])
        updates, opt_g = self.opt_G.update(grads, state["opt_G"], state["G"])
        g = self._update_w_avg(optax.apply_updates(state["G"], updates), w_mean)
        metrics = {"loss_G": loss, "D_fake_G": fake_score}
        pl_mean = state["pl_mean"]
        if pl:
            g, opt_g, pl_mean, pl_metrics = self._pl_phase(g, opt_g, pl_mean, self._keys(state, step, _PHASE_PL, 3))
            metrics.update(pl_metrics)
        new = dict(state, G=self._replicate(g), opt_G=self._replicate(opt_g), pl_mean=pl_mean)
        return new, metrics

    def _pl_phase(self, g, opt_g, pl_mean, keys):
        cfg = self.cfg
        km, kn, ky = keys
        batch = max(1, cfg.batch // cfg.pl_batch_shrink)

        def loss_fn(g):
            ws, w_mean = self._mapping(g, km, batch)
            img, vjp = jax.vjp(lambda w: self._synthesis(g, w, kn), ws)
            res = img.shape[1] * img.shape[2]
            y = jax.random.normal(ky, img.shape) / math.sqrt(res)
            (pl_grads,) = vjp(y)
            lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(pl_grads), axis=2), axis=1))
            new_mean = pl_mean + (jnp.mean(lengths) - pl_mean) * cfg.pl_decay
            new_mean = jax.lax.stop_gradient(new_mean)
            penalty = jnp.square(lengths - new_mean)
            return jnp.mean(penalty) * cfg.pl_weight * cfg.G_reg_interval, (w_mean, new_mean, jnp.mean(penalty))

        (_, (w_mean, new_mean, penalty)), grads = jax.value_and_grad(loss_fn, has_aux=True)(g)
        updates, opt_g = self.opt_G.update(grads, opt_g, g)
        g = self._update_w_avg(optax.apply_updates(g, updates), w_mean)
        return g, opt_g, new_mean, {"pl_penalty": penalty, "pl_mean": new_mean}

    def _d_step_impl(self, state, step, *, r1: bool):
        cfg = self.cfg
        km, kn, kr = self._keys(state, step, _PHASE_D, 3)
        g = state["G"]
        ws, w_mean = self._mapping(g, km, cfg.batch)
        fake = jax.lax.stop_gradient(self._synthesis(g, ws, kn))
        real = self._shard(self.source(kr, cfg.batch).astype(jnp.float32))
        lazy = cfg.D_reg_interval is not None
        every_step_r1 = cfg.r1_gamma > 0 and not lazy

        def main_loss(d):
            lf, lr = self.D(d, fake), self.D(d, real)
            loss = jnp.mean(jax.nn.softplus(lf)) + jnp.mean(jax.nn.softplus(-lr))
            aux = {"loss_D": loss, "D_real": jnp.mean(lr), "D_fake": jnp.mean(lf)}
            if every_step_r1:
                pen = jnp.mean(r1_penalty(self.D, d, real))
                loss = loss + pen * (cfg.r1_gamma / 2)
                aux["r1_penalty"] = pen
            return loss, aux

        (_, metrics), grads = jax.value_and_grad(main_loss, has_aux=True)(state["D"])
        updates, opt_d = self.opt_D.update(grads, state["opt_D"], state["D"])
        d = optax.apply_updates(state["D"], updates)
        if r1 and lazy and cfg.r1_gamma > 0:
            def reg_loss(d):
                pen = jnp.mean(r1_penalty(self.D, d, real))
                return pen * (cfg.r1_gamma / 2) * cfg.D_reg_interval, pen

            (_, pen), grads = jax.value_and_grad(reg_loss, has_aux=True)(d)
            updates, opt_d = self.opt_D.update(grads, opt_d, d)
            d = optax.apply_updates(d, updates)
            metrics["r1_penalty"] = pen
        g = self._update_w_avg(g, w_mean)
        beta = ema_beta(jnp.asarray(step, jnp.float32) * cfg.batch, cfg.batch, cfg.ema_kimg, cfg.ema_rampup)
        g_ema = ema_update(state["G_ema"], g, beta, self.g_labels)
        new = dict(state, G=self._replicate(g), G_ema=self._replicate(g_ema), D=self._replicate(d),
                   opt_D=self._replicate(opt_d))
        return new, metrics

    # ------------------------------------------------------------ public steps
    def _run(self, name: str, state, step: int):
        fn = {"G": self._g_step, "G+PL": self._g_pl_step, "D": self._d_step, "D+R1": self._d_r1_step}[name]
        step = np.uint32(step)
        if self.compiler_options is None:
            return fn(state, step)
        if name not in self._compiled:
            self._compiled[name] = fn.lower(state, step).compile(compiler_options=self.compiler_options)
        return self._compiled[name](state, step)

    def g_step(self, state, step: int):
        """The G phase of iteration ``step`` (with the PL phase on its interval) -> (state, metrics)."""
        cfg = self.cfg
        pl = cfg.pl_weight > 0 and step % cfg.G_reg_interval == 0
        return self._run("G+PL" if pl else "G", state, step)

    def d_step(self, state, step: int):
        """The D phase (with lazy R1 on its interval), w_avg and EMA updates -> (state, metrics)."""
        cfg = self.cfg
        r1 = cfg.r1_gamma > 0 and cfg.D_reg_interval is not None and step % cfg.D_reg_interval == 0
        return self._run("D+R1" if r1 else "D", state, step)

    def programs(self, step: int) -> set[str]:
        """Names of the jitted phases iteration ``step`` runs (``{'G' or 'G+PL', 'D' or 'D+R1'}``)."""
        cfg = self.cfg
        pl = cfg.pl_weight > 0 and step % cfg.G_reg_interval == 0
        r1 = cfg.r1_gamma > 0 and cfg.D_reg_interval is not None and step % cfg.D_reg_interval == 0
        return {"G+PL" if pl else "G", "D+R1" if r1 else "D"}

    def iteration(self, state, step: int):
        """One training iteration (G phase, then D phase + w_avg + EMA) -> (state, metrics)."""
        state, mg = self.g_step(state, step)
        state, md = self.d_step(state, step)
        return state, {**mg, **md}

    def sample(self, g_params, z) -> np.ndarray:
        return np.asarray(self._sample(g_params, z))

    def grid_z(self) -> jax.Array:
        return jax.random.normal(jax.random.key(self.cfg.seed + 123457), (self.cfg.grid_size, self.cfg.G.z_dim))


# ------------------------------------------------------------------- runs


def load_run_config(run_dir: str | os.PathLike) -> GANConfig:
    """The config stored in a GAN run folder."""
    cfg = runs.read_config(run_dir, GANConfig.from_dict)
    if cfg is None:
        raise CheckpointError(f"{run_dir} is not a GAN run folder (no {CONFIG_FILE})")
    return cfg


def load_state(run_dir: str | os.PathLike, step: int | None = None):
    """-> ``(config, state, step)`` of a run's latest (or given) checkpoint, as numpy arrays."""
    cfg = load_run_config(run_dir)
    state, _, step = runs.load_checkpoint(run_dir, GANTrainer(cfg).abstract_state(), step)
    return cfg, state, step


def export(run_dir: str | os.PathLike, dst: str | os.PathLike | None = None, *, step: int | None = None,
           force: bool = False) -> Path:
    """Write G_ema of the run's latest checkpoint as a jaxedit StyleGAN2 checkpoint (default ``RUN_DIR/G_ema``)."""
    run_dir = Path(run_dir)
    cfg, state, step = load_state(run_dir, step)
    return _export_params(cfg, state["G_ema"], step, run_dir, dst, force)


def _export_params(cfg: GANConfig, g_ema, step: int, run_dir: Path, dst, force: bool) -> Path:
    if dst is None:
        dst, force = run_dir / EXPORT_DIR, True  # the run's own export is always refreshed
    source = {"trainer": "jaxedit.train.gan", "run_dir": str(run_dir.absolute()), "step": int(step),
              "kimg": round(step * cfg.batch / 1000, 3), "config_name": cfg.name,
              "train_config": cfg.to_dict()}
    return checkpoint.save(dst, kind="stylegan2", model=cfg.G.to_dict(), params=jax.tree.map(np.asarray, g_ema),
                           source=source, force=force)


def train(config: GANConfig | str | dict | None, run_dir: str | os.PathLike, *, stop_at: int | None = None,
          export_to: str | os.PathLike | None = None, force_export: bool = False, progress: bool = True,
          stream: IO[str] | None = None) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; returns a summary dict.

    ``config`` None resumes with the stored config; otherwise it may differ from the stored one
    only in :data:`MUTABLE` (a larger ``kimg`` extends the run). ``stop_at``: end this call at that
    iteration (counted from the start of the run) instead of at ``kimg``. At the end G_ema is
    exported to ``RUN_DIR/G_ema`` and, if given, to ``export_to``.
    """
    run_dir = Path(run_dir)
    cfg = runs.resolve(run_dir, None if config is None else load_config(config), GANConfig.from_dict, MUTABLE)
    total = int(stop_at) if stop_at is not None else cfg.total_steps
    trainer = GANTrainer(cfg)
    if export_to is not None:
        checkpoint.check_writable(export_to, force_export, "stylegan2")
    with runs.Run(run_dir, cfg, desc="train-gan", unit="kimg", scale=cfg.batch / 1000, progress=progress,
                  stream=stream) as run:
        state, start = run.restore(trainer.abstract_state())
        if state is None:
            state = trainer.init_state()
            run.print(f"{cfg.name or 'unnamed config'}: {total} iterations of batch {cfg.batch} "
                      f"({total * cfg.batch / 1000:g} kimg) on {trainer.mesh.size} "
                      f"{jax.devices()[0].platform} device(s)")
        else:
            state = parallel.replicate(state, trainer.mesh)
        samples = run_dir / SAMPLES_DIR
        sample_every, grid_z = cfg.sample_every, trainer.grid_z()
        if sample_every and not (samples / "reals.png").exists():
            reals = trainer._reals(jax.random.key(cfg.seed + 7, impl=cfg.prng_impl), cfg.grid_size)
            imio.save_grid(np.asarray(reals), samples / "reals.png")

        def sample(step: int, state) -> None:
            if sample_every and (step % sample_every == 0 or step == total):
                imio.save_grid(trainer.sample(state["G_ema"], grid_z), samples / f"fakes{step:08d}.png")

        state, summary = run.loop(
            state, trainer.iteration, start=start, total=total, ckpt_every=cfg.ckpt_every,
            log_seconds=cfg.log_seconds, programs=trainer.programs, after_step=sample,
            meta=lambda step: {"nimg": step * cfg.batch, "config_name": cfg.name},
            show=("loss_G", "loss_D", "r1_penalty", "pl_penalty"))
        step = summary["step"]
        exported = [str(_export_params(cfg, state["G_ema"], step, run_dir, None, True))]
        if export_to is not None:
            exported.append(str(_export_params(cfg, state["G_ema"], step, run_dir, export_to, force_export)))
        run.print(f"done at step {step} ({step * cfg.batch / 1000:g} kimg, {summary['kimg_per_s']:.3g} kimg/s "
                  f"after compile); G_ema -> {', '.join(exported)}")
    return dict(summary, kimg=step * cfg.batch / 1000, exported=exported)
