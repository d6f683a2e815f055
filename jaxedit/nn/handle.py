"""The "hashable handle over an NNX module" shared by every model (generator, discriminator, probe).

A handle is a frozen dataclass with a ``cfg`` field and a class attribute ``module`` (an
``nnx.Module`` class built as ``module(cfg, rngs=...)``); its methods are pure functions of a
plain nested dict of parameters, so handles can be static arguments of ``jax.jit``.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

import jax
from flax import nnx


def compiled(*static_argnames: str):
    """Decorator for a handle method: called eagerly it runs as ONE compiled program (per shapes
    and static arguments) instead of dispatching op by op; inside ``jit``/``vmap``/``grad`` it
    inlines. The handle itself and ``static_argnames`` are static; input checks still raise at
    trace time with their own messages."""

    def deco(fn):
        params = inspect.signature(fn).parameters
        positional = [n for n, p in params.items() if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD]
        jitted = jax.jit(fn, static_argnums=(0, *(positional.index(n) for n in static_argnames if n in positional)),
                         static_argnames=static_argnames)

        @functools.wraps(fn)
        def method(self, *args, **kwargs):
            return jitted(self, *args, **kwargs)

        return method

    return deco


class ModelHandle:
    module: type  # set by each subclass

    @functools.cached_property
    def graphdef(self):
        return nnx.split(nnx.eval_shape(lambda: self.module(self.cfg, rngs=nnx.Rngs(0))))[0]

    def model(self, params: dict[str, Any]):
        """The NNX module with ``params`` in place (for use inside the handle's pure methods)."""
        return nnx.merge(self.graphdef, params)

    def init(self, key: jax.Array) -> dict[str, Any]:
        """Random parameters with the module's (reference) initialization, as a plain nested dict.

        One compiled program: eager initialization dispatches one small program per parameter.
        """
        return self._init(key)

    @compiled()
    def _init(self, key: jax.Array) -> dict[str, Any]:  # compiled once per config, not per handle instance
        return nnx.to_pure_dict(nnx.split(self.module(self.cfg, rngs=nnx.Rngs(key)))[1])

    def param_shapes(self) -> dict[str, Any]:
        """The expected ``{name: ShapeDtypeStruct}`` tree (checks and abstract restore)."""
        return nnx.to_pure_dict(nnx.split(nnx.eval_shape(lambda: self.module(self.cfg, rngs=nnx.Rngs(0))))[1])
