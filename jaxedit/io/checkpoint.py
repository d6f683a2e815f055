"""jaxedit checkpoints: an orbax parameter tree plus ``jaxedit.json``.

Layout of a checkpoint directory::

    DIR/jaxedit.json   {"format": "jaxedit-checkpoint", "version": 1, "kind": "stylegan2",
                        "model": {...config...}, "source": {...provenance...}}
    DIR/params/        orbax StandardCheckpointer tree (a plain nested dict of arrays)

Restoring needs neither the source file nor torch. Writing goes to a temporary sibling
directory that is renamed into place, so a crash never leaves a half-written checkpoint;
an existing destination is replaced only with ``force=True`` and only if it is itself a
jaxedit checkpoint (or empty) — nothing else the user owns is ever deleted.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from jaxedit.errors import CheckpointError

FORMAT = "jaxedit-checkpoint"
VERSION = 1
META_FILE = "jaxedit.json"


@dataclasses.dataclass
class Checkpoint:
    kind: str
    model: dict[str, Any]
    params: Any
    meta: dict[str, Any]
    path: Path


def _orbax():
    import orbax.checkpoint as ocp  # deferred: importing orbax costs about a second

    return ocp


def default_path(name: str) -> Path:
    """Where an embedded default model lives: ``$JAXEDIT_CHECKPOINTS/<name>``, else the copy shipped
    inside the package (``jaxedit/checkpoints/<name>``, the repository's ``checkpoints/``)."""
    root = os.environ.get("JAXEDIT_CHECKPOINTS")
    base = Path(root) if root else Path(str(importlib.resources.files("jaxedit.checkpoints")))
    path = base / name
    if not is_checkpoint(path):
        raise CheckpointError(f"default model {name!r} not found at {path} (set JAXEDIT_CHECKPOINTS to a folder "
                              "holding jaxedit's default checkpoints, or pass a checkpoint path)")
    return path


def is_checkpoint(path: str | os.PathLike) -> bool:
    return (Path(path) / META_FILE).is_file()


def check_writable(dst: str | os.PathLike, force: bool) -> Path:
    """Refuse to overwrite ``dst`` unless ``force`` and it is a jaxedit checkpoint or empty."""
    dst = Path(dst).absolute()
    if dst.exists():
        if not force:
            raise CheckpointError(f"{dst} already exists; pass --force to overwrite it")
        if not dst.is_dir() or not (is_checkpoint(dst) or not any(dst.iterdir())):
            raise CheckpointError(f"{dst} exists and is not a jaxedit checkpoint; refusing to overwrite it")
    return dst


def save(dst: str | os.PathLike, *, kind: str, model: dict[str, Any], params: Any,
         source: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
         force: bool = False) -> Path:
    """Write ``params`` (a pytree of arrays) and the metadata to ``dst``; returns its path."""
    dst = check_writable(dst, force)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    try:
        ocp = _orbax()
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", jax.tree.map(np.asarray, params))
            ckptr.wait_until_finished()
        meta = {"format": FORMAT, "version": VERSION, "kind": kind, "model": model,
                "source": source or {}, **(extra or {})}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if dst.exists():
            shutil.rmtree(dst)
        tmp.rename(dst)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dst


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        what = "does not exist" if not path.exists() else f"has no {META_FILE}"
        raise CheckpointError(f"{path} is not a jaxedit checkpoint: it {what}")
    try:
        meta = json.loads(meta_path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f"{meta_path}: invalid JSON ({e})") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a jaxedit checkpoint (format {meta.get('format')!r})")
    if meta.get("version", 0) > VERSION:
        raise CheckpointError(f"{meta_path}: written by a newer jaxedit (version {meta['version']})")
    return meta


def load(path: str | os.PathLike, expected_kind: str | None = None) -> Checkpoint:
    """Read a checkpoint (params as host-independent jax arrays)."""
    path = Path(path).absolute()
    meta = read_meta(path)
    kind = meta.get("kind")
    if expected_kind is not None and kind != expected_kind:
        raise CheckpointError(f"{path} holds a {kind!r} model, expected {expected_kind!r}")
    params_dir = path / "params"
    if not params_dir.is_dir():
        raise CheckpointError(f"{path}: missing params/ directory")
    try:
        with _orbax().StandardCheckpointer() as ckptr:
            params = ckptr.restore(params_dir)
    except Exception as e:  # orbax raises many types; name the file instead of a deep traceback
        raise CheckpointError(f"{params_dir}: cannot restore parameters ({type(e).__name__}: {e})") from None
    return Checkpoint(kind=kind, model=meta["model"], params=params, meta=meta, path=path)


def load_handle(path: str | os.PathLike, kind: str, make: Callable[[dict[str, Any]], Any]):
    """-> ``(handle, params)``: ``make(model config dict)`` builds the hashable model handle, whose
    ``param_shapes()`` the stored parameters are checked against (names and shapes)."""
    ck = load(path, expected_kind=kind)
    handle = make(ck.model)
    check_tree(handle.param_shapes(), ck.params, str(ck.path))
    return handle, ck.params


def check_tree(expected: Any, actual: Any, where: str) -> None:
    """Raise naming the first missing, extra or mis-shaped key of a params tree."""
    exp = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    act = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(actual)}
    missing, extra = sorted(set(exp) - set(act)), sorted(set(act) - set(exp))
    if missing:
        raise CheckpointError(f"{where}: missing parameters {missing[:5]}{' ...' if len(missing) > 5 else ''}")
    if extra:
        raise CheckpointError(f"{where}: unexpected parameters {extra[:5]}{' ...' if len(extra) > 5 else ''}")
    for k, v in exp.items():
        if tuple(np.shape(act[k])) != tuple(v.shape):
            raise CheckpointError(f"{where}: parameter {k} has shape {list(np.shape(act[k]))}, "
                                  f"expected {list(v.shape)}")
