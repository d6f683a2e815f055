"""The reconstructor R of unsupervised direction discovery (Voynov & Babenko; WarpedGANSpace; DeCurvEd).

R sees an image pair (the original and the shifted render, stacked on channels) and predicts
which of the K directions was used (logits) and by how much (a scalar). The references use a
ResNet-18 with a 6-channel stem for large GANs and a LeNet for 32-64 px ones; this is a small
strided CNN of the LeNet kind, sized by ``widths`` (each stage halves the resolution), with a
global average pool and two linear heads.

``R = Reconstructor(cfg)``; ``logits [B, K], magnitude [B] = R(params, img_a, img_b)`` with
images ``[B, H, W, C]`` in [-1, 1].
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError
from jaxedit.nn.handle import ModelHandle


@dataclasses.dataclass(frozen=True)
class ReconstructorConfig(JSONConfig):
    num_directions: int = 16
    img_channels: int = 3
    widths: tuple[int, ...] = (32, 64, 128)


class ReconstructorNet(nnx.Module):
    def __init__(self, cfg: ReconstructorConfig, *, rngs: nnx.Rngs):
        chans = (2 * cfg.img_channels, *cfg.widths)
        self.n = len(cfg.widths)
        for i in range(self.n):
            setattr(self, f"conv{i}a", nnx.Conv(chans[i], chans[i + 1], (3, 3), padding="SAME", rngs=rngs))
            setattr(self, f"conv{i}b", nnx.Conv(chans[i + 1], chans[i + 1], (3, 3), strides=(2, 2), padding="SAME",
                                                rngs=rngs))
        self.hidden = nnx.Linear(cfg.widths[-1], cfg.widths[-1], rngs=rngs)
        self.direction = nnx.Linear(cfg.widths[-1], cfg.num_directions, rngs=rngs)
        self.magnitude = nnx.Linear(cfg.widths[-1], 1, rngs=rngs)

    def __call__(self, a, b):
        x = jnp.concatenate([a, b], axis=-1)
        for i in range(self.n):
            x = jax.nn.gelu(getattr(self, f"conv{i}b")(jax.nn.gelu(getattr(self, f"conv{i}a")(x))))
        h = jax.nn.gelu(self.hidden(jnp.mean(x, axis=(1, 2))))
        return self.direction(h), self.magnitude(h)[:, 0]


@dataclasses.dataclass(frozen=True)
class Reconstructor(ModelHandle):
    cfg: ReconstructorConfig = ReconstructorConfig()
    module = ReconstructorNet

    def __call__(self, params: dict, img_a: jax.Array, img_b: jax.Array) -> tuple[jax.Array, jax.Array]:
        if img_a.shape != img_b.shape or img_a.ndim != 4 or img_a.shape[-1] != self.cfg.img_channels:
            raise InputError(f"reconstructor expects two [B, H, W, {self.cfg.img_channels}] images, got "
                             f"{list(img_a.shape)} and {list(img_b.shape)}")
        return self.model(params)(img_a, img_b)
