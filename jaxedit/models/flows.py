"""The continuous normalizing flow of DeCurvEd (FFJORD-style CNF block, as in StyleFlow's ``lib/``).

``f: Z -> V`` is the time-``T`` map of the ODE ``dz/dt = g(t, z)`` (``T = 0.1``), with ``g`` an MLP
of ConcatSquash layers::

    layer(t, x) = W x + b) * sigmoid(W_gate t + b_gate) + W_bias t        (t a scalar)
    g(t, z)     = layer_L(t, tanh(... tanh(layer_1(t, z))))               (no activation after the last)

``f(z)`` solves 0 -> T, ``f^-1(v)`` solves T -> 0; along the inverse solve the log-density
change ``d logp / dt = -div g`` is accumulated from 0 (the exact divergence: the trace of the
Jacobian, d forward-mode passes; or a Hutchinson estimate for large d).

Solver: diffrax (maintained, differentiable: gradients flow through every solve).
``steps=None`` -> adaptive Dopri5 with a PID controller at ``rtol``/``atol`` (the reference uses
dopri5 at 1e-5; jaxedit defaults to 1e-6 and each latent gets its own step sizes, so an edit
does not depend on the rest of its batch); ``steps=N`` -> N fixed Dopri5 steps (fast; its
round-trip error is reported by ``experiments/bench_flow.py``).

Parameter names follow the reference state dict by rule (``jaxedit/edits/formats.py``):
``chain.0.odefunc.diffeq.layers.{i}._layer.{weight,bias}`` -> ``layer{i}.layer.{kernel,bias}``
(transposed), ``._hyper_gate.*`` -> ``layer{i}.hyper_gate.*``, ``._hyper_bias.weight`` ->
``layer{i}.hyper_bias.kernel``.
"""

from __future__ import annotations

import dataclasses
import math

import diffrax
import jax
import jax.numpy as jnp
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError
from jaxedit.nn.handle import ModelHandle, compiled

_ACTIVATIONS = {"tanh": jnp.tanh, "softplus": jax.nn.softplus, "elu": jax.nn.elu, "relu": jax.nn.relu}


@dataclasses.dataclass(frozen=True)
class CNFConfig(JSONConfig):
    dim: int = 512  # latent dimension d
    hidden: tuple[int, ...] = (512, 512, 512, 512, 512)
    T: float = 0.1  # integration time
    nonlinearity: str = "tanh"

    def __post_init__(self):
        if self.nonlinearity not in _ACTIVATIONS:
            raise InputError(f"nonlinearity {self.nonlinearity!r} not in {sorted(_ACTIVATIONS)}")


def _torch_uniform(fan_in: int):
    """PyTorch ``nn.Linear``'s default init: U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (weights and biases)."""
    bound = 1.0 / math.sqrt(fan_in)
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


class ConcatSquash(nnx.Module):
    def __init__(self, din: int, dout: int, *, rngs: nnx.Rngs):
        lin = lambda i, o, bias: nnx.Linear(i, o, use_bias=bias, kernel_init=_torch_uniform(i),
                                            bias_init=_torch_uniform(i), rngs=rngs)
        self.layer = lin(din, dout, True)
        self.hyper_gate = lin(1, dout, True)
        self.hyper_bias = lin(1, dout, False)

    def __call__(self, t, x):
        tt = jnp.reshape(t, (1, 1)).astype(x.dtype)
        return self.layer(x) * jax.nn.sigmoid(self.hyper_gate(tt)) + self.hyper_bias(tt)


class ODENet(nnx.Module):
    def __init__(self, cfg: CNFConfig, *, rngs: nnx.Rngs):
        dims = (cfg.dim, *cfg.hidden, cfg.dim)
        self.n = len(dims) - 1
        self.act = _ACTIVATIONS[cfg.nonlinearity]
        for i in range(self.n):
            setattr(self, f"layer{i}", ConcatSquash(dims[i], dims[i + 1], rngs=rngs))

    def __call__(self, t, x):
        for i in range(self.n):
            x = getattr(self, f"layer{i}")(t, x)
            if i < self.n - 1:
                x = self.act(x)
        return x


@dataclasses.dataclass(frozen=True)
class CNF(ModelHandle):
    """Hashable handle: pure functions of ``params`` for one :class:`CNFConfig`."""

    cfg: CNFConfig = CNFConfig()
    module = ODENet

    def velocity(self, params: dict, t, z: jax.Array) -> jax.Array:
        """``g(t, z)``: z ``[B, d]`` -> ``[B, d]``."""
        return self.model(params)(t, z)

    def _check(self, z):
        if z.ndim != 2 or z.shape[1] != self.cfg.dim:
            raise InputError(f"flow expects latents [B, {self.cfg.dim}], got {list(z.shape)}")

    @compiled("rtol", "atol", "steps")
    def forward(self, params: dict, z: jax.Array, *, rtol: float = 1e-6, atol: float = 1e-6,
                steps: int | None = None) -> jax.Array:
        """``v = f(z)``: solve 0 -> T. z ``[B, d]`` -> ``[B, d]``."""
        self._check(z)
        return _solve(self, params, z, 0.0, self.cfg.T, rtol, atol, steps, None)[0]

    @compiled("rtol", "atol", "steps", "logp")
    def inverse(self, params: dict, v: jax.Array, *, rtol: float = 1e-6, atol: float = 1e-6,
                steps: int | None = None, logp: bool = False, hutchinson_key: jax.Array | None = None):
        """``z = f^-1(v)``: solve T -> 0. v ``[B, d]`` -> z ``[B, d]``, or ``(z, delta_logp [B])`` with
        ``logp=True`` (``delta_logp = -int_T^0 div g dt``, accumulated from 0; exact trace, or a
        Gaussian Hutchinson estimate when ``hutchinson_key`` is given)."""
        self._check(v)
        div = ("exact" if hutchinson_key is None else hutchinson_key) if logp else None
        z, dlogp = _solve(self, params, v, self.cfg.T, 0.0, rtol, atol, steps, div)
        return (z, dlogp) if logp else z


def _solve(flow: CNF, params, y0, t0, t1, rtol, atol, steps, div):
    """Per-sample diffrax solve (vmapped: every latent gets its own adaptive steps)."""
    net = lambda t, z: flow.velocity(params, t, z[None])[0]

    if div is None:
        def rhs(t, y, args):
            return net(t, y)
    else:
        def rhs(t, y, args):
            z, _, eps = y
            if eps is None:
                dz, jac = net(t, z), jax.jacfwd(lambda x: net(t, x))(z)
                tr = jnp.trace(jac)
            else:
                dz, jv = jax.jvp(lambda x: net(t, x), (z,), (eps,))
                tr = jnp.dot(jv, eps)
            return dz, -tr, None if eps is None else jnp.zeros_like(eps)

    if steps is None:
        controller, dt0, max_steps = diffrax.PIDController(rtol=rtol, atol=atol), None, 4096
    else:
        controller, dt0, max_steps = diffrax.ConstantStepSize(), (t1 - t0) / steps, steps

    def one(y, eps):
        state = y if div is None else (y, jnp.zeros((), y.dtype), eps)
        sol = diffrax.diffeqsolve(diffrax.ODETerm(rhs), diffrax.Dopri5(), t0, t1, dt0, state,
                                  stepsize_controller=controller, max_steps=max_steps)
        out = jax.tree.map(lambda a: a[-1], sol.ys)
        return (out, None) if div is None else (out[0], out[1])

    if isinstance(div, jax.Array):
        eps = jax.random.normal(div, y0.shape, y0.dtype)
        return jax.vmap(one)(y0, eps)
    return jax.vmap(lambda y: one(y, None))(y0)
