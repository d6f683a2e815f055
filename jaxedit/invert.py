"""Real images in: GAN inversion by optimization (NVIDIA's projector), in W or W+, optionally started from an
encoder ("hybrid"), batched over images in one compiled program.

The projector of stylegan2-ada-pytorch (``projector.py``), per image:

- start from ``w_avg`` (the mean of ``num_w_stats`` mapped samples; ``w_std`` = their RMS distance to it) or from
  the encoder's codes; the generator's noise inputs are optimized too, from N(0, 1);
- step ``i`` of ``steps`` (``t = i / steps``): Adam (0.9, 0.999) at
  ``lr = lr0 * ramp``, ``ramp = min(1, t / 0.05) * (0.5 - 0.5 cos(pi * min(1, (1 - t) / 0.25)))``;
  the latent is jittered by ``w_std * 0.05 * max(0, 1 - t / 0.75)**2`` times N(0, 1) before synthesis;
- loss = ``distance(target, G(w))`` + ``1e5`` x the noise regularizer (squared mean autocorrelation of each noise
  map with itself shifted by one pixel in x and y, summed over a pyramid down to 8x8);
- after every step each noise map is renormalized to mean 0, RMS 1.

``distance(a, b) -> [B]`` is any image distance: LPIPS (:func:`lpips_distance`, NVIDIA's choice; like the
reference, images above 256 px are area-downsampled to 256 first), or on the shapes world the probe's embedding
(:func:`probe_distance`), or pixel L2 (:func:`pixel_distance`).

Batching: every image has its own latent, noise maps, jitter and Adam state; the loss is vmapped over images
and the steps run in one ``lax.scan``, so projecting an image alone or inside a batch gives the same result
(same ``keys``), and the batch axis shards over devices like any other.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError

Array = jax.Array
Distance = Callable[[Array, Array], Array]  # (images [B, H, W, C], images [B, H, W, C]) -> [B]
MODES = ("w", "w+")


@dataclasses.dataclass(frozen=True)
class ProjectorConfig(JSONConfig):
    """NVIDIA's projector defaults (``projector.py`` of stylegan2-ada-pytorch); ``mode='w+'`` optimizes one
    latent per layer instead of one broadcast latent."""

    steps: int = 1000
    mode: str = "w"
    lr: float = 0.1
    lr_rampdown: float = 0.25
    lr_rampup: float = 0.05
    noise_factor: float = 0.05
    noise_ramp: float = 0.75
    noise_weight: float = 1e5
    num_w_stats: int = 10_000
    optimize_noise: bool = True
    noise_init: str = "random"  # the noise maps' start: 'random' N(0, 1) (NVIDIA) or 'generator' (its own buffers)
    keep_best: bool = False  # return each image's iterate of lowest image distance (start included), not the last

    @classmethod
    def hybrid(cls, **kw) -> ProjectorConfig:
        """The projector after an encoder: no latent jitter and the generator's own noise maps to start from, so
        the first steps do not undo the encoder's codes (with NVIDIA's jitter and fresh noise, 40 steps from the
        encoder ended 1.4 dB below the encoder alone on the shapes world: experiments/invert_shapes.py), and the
        iterate of lowest image distance kept, so a few steps at the schedule's peak rate cannot end farther from
        the target than the encoder's start (3 pixel-MSE steps from it had dropped 29.3 dB to 18.1 dB)."""
        return cls(**{"noise_factor": 0.0, "noise_init": "generator", "keep_best": True, **kw})

    def __post_init__(self):
        if self.mode not in MODES:
            raise InputError(f"projector mode must be one of {MODES}, got {self.mode!r}")
        if self.steps < 1:
            raise InputError(f"projector steps must be >= 1, got {self.steps}")
        if self.noise_init not in ("random", "generator"):
            raise InputError(f"projector noise_init must be 'random' or 'generator', got {self.noise_init!r}")


class Projection(NamedTuple):
    ws: Array  # [B, num_ws, w_dim]: the result (W mode: one latent repeated on every layer)
    noise: dict[str, Array]  # {'b{res}.{conv}': [B, res, res]} the optimized noise maps (empty for StyleGAN3)
    loss: Array  # [steps, B] total loss before each update
    distance: Array  # [steps, B] the image distance part


# ----------------------------------------------------------------------------- schedules
def learning_rate(cfg: ProjectorConfig, step: Array) -> Array:
    """NVIDIA's cosine ramp-down / linear ramp-up learning rate at ``step`` (0-based)."""
    t = step / cfg.steps
    ramp = jnp.minimum(1.0, (1.0 - t) / cfg.lr_rampdown)
    ramp = 0.5 - 0.5 * jnp.cos(ramp * math.pi)
    return cfg.lr * ramp * jnp.minimum(1.0, t / cfg.lr_rampup)


def latent_noise_scale(cfg: ProjectorConfig, step: Array, w_std: Array) -> Array:
    """Std of the latent jitter at ``step``: ``w_std * noise_factor * max(0, 1 - t / noise_ramp)**2``."""
    t = step / cfg.steps
    return w_std * cfg.noise_factor * jnp.maximum(0.0, 1.0 - t / cfg.noise_ramp) ** 2


# ----------------------------------------------------------------------------- noise maps
def noise_names(G) -> tuple[str, ...]:
    """The generator's noise inputs ``'b{res}.{conv}'`` (none for StyleGAN3)."""
    syn = G.param_shapes().get("synthesis", {})
    return tuple(f"{b}.{layer}" for b, layers in syn.items() if isinstance(layers, dict)
                 for layer, p in layers.items() if isinstance(p, dict) and "noise_const" in p)


def with_noise(gparams: dict, noise: dict[str, Array]) -> dict:
    """``gparams`` with the noise maps of ``noise`` (``{'b{res}.{conv}': [res, res]}``) in place."""
    if not noise:
        return gparams
    syn = dict(gparams["synthesis"])
    for name, v in noise.items():
        block, layer = name.split(".")
        syn[block] = {**syn[block], layer: {**syn[block][layer], "noise_const": v}}
    return {**gparams, "synthesis": syn}


def noise_regularizer(noise: dict[str, Array]) -> Array:
    """NVIDIA's noise regularizer of one image's maps ``{name: [r, r]}``: for each map and each level of its
    2x2-average pyramid down to 8x8, ``mean(v * roll_x(v))**2 + mean(v * roll_y(v))**2``; summed."""
    total = jnp.zeros(())
    for v in noise.values():
        while True:
            total += jnp.mean(v * jnp.roll(v, 1, axis=1)) ** 2 + jnp.mean(v * jnp.roll(v, 1, axis=0)) ** 2
            if v.shape[0] <= 8:
                break
            v = v.reshape(v.shape[0] // 2, 2, v.shape[1] // 2, 2).mean(axis=(1, 3))
    return total


def normalize_noise(noise: dict[str, Array]) -> dict[str, Array]:
    """Each map to mean 0, RMS 1 (over its own pixels)."""
    def one(v):
        v = v - jnp.mean(v)
        return v * jax.lax.rsqrt(jnp.mean(jnp.square(v)))

    return {k: one(v) for k, v in noise.items()}


# ----------------------------------------------------------------------------- distances
def area_downsample(x: Array, size: int) -> Array:
    """``[B, H, W, C]`` -> ``[B, size, size, C]`` by block means (torch ``mode='area'`` for integer factors)."""
    f = x.shape[1] // size
    if f * size != x.shape[1] or x.shape[1] != x.shape[2]:
        raise InputError(f"area downsampling needs square images whose side is a multiple of {size}, "
                         f"got {list(x.shape)}")
    return x.reshape(x.shape[0], size, f, size, f, x.shape[3]).mean(axis=(2, 4))


def lpips_distance(lp, lparams, max_size: int = 256) -> Distance:
    """LPIPS between ``a`` and ``b`` (``[B, H, W, 3]`` in [-1, 1]) -> ``[B]``, area-downsampled to ``max_size``
    above it (as NVIDIA's projector does before its VGG16)."""
    def distance(a, b):
        if a.shape[1] > max_size:
            a, b = area_downsample(a, max_size), area_downsample(b, max_size)
        return lp(lparams, a, b)

    return distance


def probe_distance(P, pparams) -> Distance:
    """Squared distance between the shapes-world probe's embeddings ``[B, 256]`` of ``a`` and ``b`` -> ``[B]``."""
    def distance(a, b):
        return jnp.sum(jnp.square(P(pparams, a)["features"] - P(pparams, b)["features"]), axis=-1)

    return distance


def pixel_distance(a: Array, b: Array) -> Array:
    """Mean squared pixel difference ``[B]``."""
    return jnp.mean(jnp.square(a - b), axis=(1, 2, 3))


# ----------------------------------------------------------------------------- the projector
def w_stats(G, gparams, key: Array, n: int) -> tuple[Array, Array]:
    """``w_avg [w_dim]`` and the scalar ``w_std`` of ``n`` mapped samples (NVIDIA's start and jitter scale)."""
    w = G.mapping(gparams, jax.random.normal(key, (n, G.cfg.z_dim)))[:, 0]
    w_avg = jnp.mean(w, axis=0)
    return w_avg, jnp.sqrt(jnp.sum(jnp.square(w - w_avg)) / n)


def project(G, gparams, distance: Distance, targets: Array, keys: Array, cfg: ProjectorConfig = ProjectorConfig(),
            *, init: Array | None = None, stats_key: Array | None = None) -> Projection:
    """Invert ``targets [B, H, W, C]`` (in [-1, 1]) into ``G``'s latent space.

    ``keys [B]``: one PRNG key per image (its noise maps and jitter; same key -> same result, alone or in a
    batch). ``init``: start latents, ``[B, w_dim]`` or W+ ``[B, num_ws, w_dim]`` (e.g. an encoder's codes: the
    hybrid); default ``w_avg``. Jit-able; one program for every image and step.
    """
    num_ws, w_dim = G.cfg.num_ws, G.cfg.w_dim
    res = G.cfg.img_resolution
    if targets.ndim != 4 or targets.shape[1:] != (res, res, G.cfg.img_channels):
        raise InputError(f"targets must have shape [B, {res}, {res}, {G.cfg.img_channels}], got {list(targets.shape)}")
    B = targets.shape[0]
    if keys.shape[:1] != (B,):
        raise InputError(f"keys must hold one PRNG key per target ([{B}]), got {list(keys.shape)}")
    w_avg, w_std = w_stats(G, gparams, jax.random.key(123) if stats_key is None else stats_key, cfg.num_w_stats)
    if init is None:
        init = jnp.broadcast_to(w_avg, (B, w_dim))
    if init.shape not in ((B, w_dim), (B, num_ws, w_dim)):
        raise InputError(f"init must have shape [{B}, {w_dim}] or [{B}, {num_ws}, {w_dim}], got {list(init.shape)}")
    if cfg.mode == "w":
        w0 = init if init.ndim == 2 else jnp.mean(init, axis=1)
        w0 = w0[:, None]  # [B, 1, w_dim], broadcast to every layer
    else:
        w0 = init if init.ndim == 3 else jnp.broadcast_to(init[:, None], (B, num_ws, w_dim))
    shapes = G.param_shapes()["synthesis"]
    names = noise_names(G) if cfg.optimize_noise else ()

    def init_noise(key):
        if cfg.noise_init == "generator":
            return {n: gparams["synthesis"][n.split(".")[0]][n.split(".")[1]]["noise_const"] for n in names}
        ks = jax.random.split(key, max(len(names), 1))
        return {n: jax.random.normal(k, shapes[n.split(".")[0]][n.split(".")[1]]["noise_const"].shape)
                for n, k in zip(names, ks)}

    noise0 = jax.vmap(init_noise)(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys)) if names else {}
    opt = optax.adam(lambda count: learning_rate(cfg, count), b1=0.9, b2=0.999, eps=1e-8)
    variables = {"w": w0, "noise": noise0}

    def image_loss(v, target, key, step):
        w = v["w"] + jax.random.normal(key, v["w"].shape) * latent_noise_scale(cfg, step, w_std)
        ws = jnp.broadcast_to(w, (num_ws, w_dim))[None]
        img = G.synthesis(with_noise(gparams, v["noise"]), ws, noise_mode="const")
        dist = distance(target[None], img)[0]
        loss = dist + cfg.noise_weight * noise_regularizer(v["noise"])
        return loss, dist

    grad_fn = jax.vmap(jax.value_and_grad(image_loss, has_aux=True), in_axes=(0, 0, 0, None))

    def keep_lower(loss, v, best):  # per image: (v, distance) where it is below best's, else best
        better = loss < best[1]
        pick = lambda a, b: jnp.where(better.reshape((B,) + (1,) * (a.ndim - 1)), a, b)  # noqa: E731
        return jax.tree.map(pick, v, best[0]), jnp.where(better, loss, best[1])

    def step_fn(carry, step):
        v, state, best = carry
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, step + 1))(keys)
        (loss, dist), grads = grad_fn(v, targets, step_keys, step)
        if cfg.keep_best:  # by the image distance: the noise regularizer is a prior, not the goal
            best = keep_lower(dist, v, best)
        updates, state = opt.update(grads, state, v)
        v = optax.apply_updates(v, updates)
        v = {"w": v["w"], "noise": jax.vmap(normalize_noise)(v["noise"]) if names else {}}
        return (v, state, best), (loss, dist)

    best0 = (variables, jnp.full((B,), jnp.inf))
    (v, _, best), (loss, dist) = jax.lax.scan(step_fn, (variables, opt.init(variables), best0), jnp.arange(cfg.steps))
    if cfg.keep_best:  # the iterate after the last update competes too
        last_keys = jax.vmap(lambda k: jax.random.fold_in(k, cfg.steps + 1))(keys)
        (_, last), _ = grad_fn(v, targets, last_keys, cfg.steps)
        v, _ = keep_lower(last, v, best)
    ws = jnp.broadcast_to(v["w"], (B, num_ws, w_dim))
    return Projection(ws, v["noise"], loss, dist)


def render(G, gparams, projection: Projection) -> Array:
    """The projection's images ``[B, H, W, C]`` (each with its own optimized noise maps)."""
    def one(ws, noise):
        return G.synthesis(with_noise(gparams, noise), ws[None], noise_mode="const")[0]

    return jax.vmap(one)(projection.ws, projection.noise)


def encode(E, eparams, images: Array, resolution: int | None = None) -> Array:
    """An encoder's W+ codes of ``images [B, H, W, C]`` -> ``[B, n_styles, w_dim]``; images are bilinearly resized
    to ``resolution`` first when given (encoders are trained at one input size)."""
    if resolution is not None and images.shape[1] != resolution:
        images = jax.image.resize(images, (images.shape[0], resolution, resolution, images.shape[3]), "linear")
    return E(eparams, images)


