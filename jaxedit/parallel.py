"""Data parallelism over every device: params replicated, batches sharded on axis 0.

The same code runs on one CPU, many GPUs/TPUs, or ``XLA_FLAGS=--xla_force_host_platform_device_count=N``
simulated CPU devices. Multi-host: build the mesh from ``jax.devices()`` (global) and feed
each process its addressable shard (``jax.make_array_from_process_local_data``).
"""

from __future__ import annotations

from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxedit.errors import InputError

DATA_AXIS = "data"


def data_mesh(devices: list | None = None) -> Mesh:
    """A 1-D mesh named ``'data'`` over ``devices`` (default: all devices)."""
    devices = jax.devices() if devices is None else devices
    return Mesh(np.asarray(devices), (DATA_AXIS,))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def batch_sharded(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(DATA_AXIS))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Place every leaf of ``tree`` on every device of ``mesh``."""
    return jax.device_put(tree, replicated(mesh))


def shard_batch(tree: Any, mesh: Mesh) -> Any:
    """Split every leaf on its leading (batch) axis over the mesh; the batch must divide evenly."""
    n = mesh.size
    for leaf in jax.tree.leaves(tree):
        if leaf.shape[0] % n:
            raise InputError(f"batch of {leaf.shape[0]} does not split over {n} devices; use pad_batch first")
    return jax.device_put(tree, batch_sharded(mesh))


def pad_batch(tree: Any, multiple: int) -> tuple[Any, int]:
    """Pad the leading axis of every leaf (repeating the last row) to a multiple; returns (tree, n)."""
    leaves = jax.tree.leaves(tree)
    n = leaves[0].shape[0]
    target = -(-n // multiple) * multiple
    if target == n:
        return tree, n
    pad = lambda a: np.concatenate([a, np.repeat(a[-1:], target - n, axis=0)], axis=0)
    return jax.tree.map(pad, tree), n


def chunked_map(fn: Callable[[Any], Any], xs: Any, batch_size: int) -> Any:
    """``fn(xs)`` computed ``batch_size`` rows at a time inside one traced program (bounded memory).

    ``fn`` maps a batch (a pytree of ``[b, ...]`` arrays) to a batch ``[b, ...]`` and treats rows
    independently: no batch statistics, and random draws per row (one batch-shaped draw from a
    closed-over key would repeat in every row). Built on ``jax.lax.map(..., batch_size=...)``:
    each chunk is ``fn`` vmapped over rows of batch one, so models must keep their batched form
    under ``vmap`` (the generator does: shared convs). A remainder is padded to a full chunk
    (repeating the last row) and cut off: ``lax.map``'s own remainder call traces ``fn`` a second
    time, which doubled the compile time of a shapes render (6.4 -> 11.1 s) to save at most
    ``batch_size - 1`` rows of work.
    """
    if batch_size <= 0:
        raise InputError(f"batch_size must be positive, got {batch_size}")
    n = jax.tree.leaves(xs)[0].shape[0]
    b = max(1, min(batch_size, n))
    pad = -n % b
    if pad:
        xs = jax.tree.map(lambda a: jnp.concatenate([a, jnp.repeat(a[-1:], pad, axis=0)]), xs)
    row = lambda x: jax.tree.map(lambda a: a[0], fn(jax.tree.map(lambda a: a[None], x)))
    ys = jax.lax.map(row, xs, batch_size=b)
    return jax.tree.map(lambda a: a[:n], ys) if pad else ys


def map_batches(fn: Callable[..., Any], inputs: Any, batch_size: int, mesh: Mesh | None = None) -> Iterator[Any]:
    """Apply a jitted ``fn(batch)`` over host ``inputs`` in fixed-size, device-sharded chunks.

    Every chunk is padded to ``batch_size`` (rounded up to a multiple of the device count)
    so ``fn`` compiles once; yields the host results with the padding removed.
    """
    mesh = mesh or data_mesh()
    batch_size = -(-batch_size // mesh.size) * mesh.size
    total = jax.tree.leaves(inputs)[0].shape[0]
    for start in range(0, total, batch_size):
        chunk = jax.tree.map(lambda a: np.asarray(a[start:start + batch_size]), inputs)
        chunk, n = pad_batch(chunk, batch_size)
        out = fn(shard_batch(chunk, mesh))
        yield jax.tree.map(lambda a: np.asarray(a)[:n], out)
