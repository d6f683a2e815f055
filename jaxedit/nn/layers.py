"""Equalized-learning-rate layers (Flax NNX), as in StyleGAN2.

Weights are stored *unscaled*, exactly as the reference stores them (so converted
checkpoints are plain copies); the run-time gain ``lr_mul / sqrt(fan_in)`` is applied in
the forward pass. Dense weights are ``[in, out]``; conv kernels are HWIO.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from jaxedit.nn import ops
from jaxedit.errors import InputError


class Buffer(nnx.Variable):
    """A non-trainable array that belongs to the model (``w_avg``, ``noise_const``)."""


class Dense(nnx.Module):
    """FullyConnectedLayer: ``act(x @ (W * lr_mul / sqrt(in)) + b * lr_mul)``. x ``[..., in]``."""

    def __init__(self, in_features: int, out_features: int, *, rngs: nnx.Rngs,
                 activation: str = "linear", lr_mul: float = 1.0, bias: bool = True,
                 bias_init: float = 0.0):
        self.activation = activation
        self.lr_mul = lr_mul
        self.weight_gain = lr_mul / math.sqrt(in_features)
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (in_features, out_features)) / lr_mul)
        self.bias = nnx.Param(jnp.full((out_features,), bias_init, jnp.float32)) if bias else None

    def __call__(self, x: jax.Array) -> jax.Array:
        y = x @ (self.weight[...] * self.weight_gain)
        b = None if self.bias is None else self.bias[...] * self.lr_mul
        return ops.bias_act(y, b, self.activation)


class Conv2d(nnx.Module):
    """Conv2dLayer (no modulation): equalized weight, optional 2x up-sampling, bias, activation.

    ``up=2`` follows the reference: a 1x1 kernel convolves then FIR-upsamples, a 3x3 kernel
    is the folded transposed conv + FIR (see :mod:`jaxedit.nn.ops`).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, *, rngs: nnx.Rngs,
                 bias: bool = True, activation: str = "linear", up: int = 1,
                 conv_clamp: float | None = None):
        if up not in (1, 2):
            raise InputError(f"up must be 1 or 2, got {up}")
        self.activation = activation
        self.up = up
        self.conv_clamp = conv_clamp
        self.weight_gain = 1.0 / math.sqrt(in_channels * kernel_size * kernel_size)
        self.weight = nnx.Param(jax.random.normal(rngs.params(), (kernel_size, kernel_size, in_channels, out_channels)))
        self.bias = nnx.Param(jnp.zeros((out_channels,), jnp.float32)) if bias else None

    def __call__(self, x: jax.Array, gain: float = 1.0) -> jax.Array:
        w = self.weight[...] * self.weight_gain
        if self.up == 1:
            x = ops.conv2d(x, w)
        elif w.shape[0] == 1:
            x = ops.upsample2d(ops.conv2d(x, w))
        else:
            x = ops.up_conv2d(x, w)
        clamp = None if self.conv_clamp is None else self.conv_clamp * gain
        return ops.bias_act(x, None if self.bias is None else self.bias[...], self.activation, gain, clamp)
