"""Shared plumbing for frozen-dataclass configs that round-trip through JSON (``jaxedit.json``,
run directories): tuples become lists and back, unknown keys are refused by name."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from jaxedit.errors import InputError


def _plain(v: Any) -> Any:
    if isinstance(v, JSONConfig):
        return v.to_dict()
    if isinstance(v, (tuple, list)):
        return [_plain(x) for x in v]
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    return v


class JSONConfig:
    """Mixin for frozen dataclasses: ``to_dict()`` (JSON-ready) and ``from_dict(d)`` (lists -> tuples)."""

    def to_dict(self) -> dict[str, Any]:
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: dict[str, Any]):
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise InputError(f"unknown {cls.__name__} keys: {unknown}")
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in d.items()})


def enable_compilation_cache() -> None:
    """Persist compiled XLA programs in ``$JAXEDIT_CACHE`` (default ``~/.cache/jaxedit/xla``; empty disables)."""
    import jax  # here, not at the top: the CLI's --help and flag errors stay fast

    cache = os.environ.get("JAXEDIT_CACHE", str(Path.home() / ".cache" / "jaxedit" / "xla"))
    if cache:
        jax.config.update("jax_compilation_cache_dir", cache)
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
