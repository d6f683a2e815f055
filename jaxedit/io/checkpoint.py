"""jaxedit checkpoints: an orbax parameter tree plus ``jaxedit.json``.

Layout of a checkpoint directory::

    DIR/jaxedit.json   {"format": "jaxedit-checkpoint", "version": 1, "kind": "stylegan2",
                        "model": {...config...}, "source": {...provenance...}}
    DIR/params/        orbax StandardCheckpointer tree (a plain nested dict of arrays)
    DIR/...            files the checkpoint carries (e.g. a CLIP vocab), listed in "files"

Restoring needs neither the source file nor torch. Writing goes to a temporary sibling
directory first, so a crash never leaves a half-written checkpoint; in an existing folder
(``force=True``) only the entries jaxedit wrote there (``"files"``) are replaced, a checkpoint
of another kind is not replaced unless asked, and nothing else the user owns is touched.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable, Mapping

import jax
import numpy as np

from jaxedit.errors import CheckpointError
from jaxedit.io.files import dir_mode, file_mode, fsync_dir, read_json

FORMAT = "jaxedit-checkpoint"
VERSION = 1
META_FILE = "jaxedit.json"
ORBAX_TREE_FILE = "_METADATA"  # orbax's description of the params tree, inside params/
MAX_PARAMS = 100_000  # arrays in one checkpoint (a 1024-px StyleGAN2 G + D has about 600)


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


def resolve(path_or_name: str | os.PathLike) -> Path:
    """A checkpoint path as given, or, when nothing exists there and it is a bare name, the embedded default
    model of that name (``"shapes32-encoder"``)."""
    p = Path(path_or_name)
    if not p.exists() and os.sep not in str(path_or_name) and "/" not in str(path_or_name):
        return default_path(str(path_or_name))
    return p


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


def owned_files(meta: dict[str, Any]) -> set[str]:
    """The entries of a checkpoint folder that jaxedit wrote (recorded in ``jaxedit.json``; for
    checkpoints written before the record existed: the metadata, ``params/`` and a CLIP vocab)."""
    return set(meta.get("files") or (META_FILE, "params", "bpe_vocab.txt.gz"))


def check_writable(dst: str | os.PathLike, force: bool, kind: str | None = None, *,
                   new_files: tuple[str, ...] = (), replace_kind: bool = False) -> Path:
    """Check, before any work, that a checkpoint of ``kind`` may be written to ``dst``.

    A new folder is always fine. An existing one needs ``force``, and then only the files jaxedit
    wrote there are replaced: a file or folder of the user's with a name the checkpoint needs is an
    error, and a checkpoint of another kind is not replaced unless ``replace_kind``.
    """
    dst = Path(dst).absolute()
    if not dst.exists():
        return dst
    if not force:
        raise CheckpointError(f"{dst} already exists; pass --force to replace the files jaxedit wrote there")
    if not dst.is_dir():
        raise CheckpointError(f"{dst} exists and is not a folder; refusing to replace it")
    owned: set[str] = set()
    if is_checkpoint(dst):
        meta = read_meta(dst)
        if kind is not None and meta.get("kind") != kind and not replace_kind:
            raise CheckpointError(f"{dst} holds a {meta.get('kind')!r} checkpoint; refusing to replace it with a "
                                  f"{kind!r} one (choose another folder, or remove it yourself)")
        owned = owned_files(meta)
    clash = sorted(n for n in (META_FILE, "params", *new_files) if (dst / n).exists() and n not in owned)
    if clash:
        raise CheckpointError(f"{dst}: {', '.join(clash)} exist(s) and jaxedit did not write them; refusing to "
                              "replace them")
    return dst


def save(dst: str | os.PathLike, *, kind: str, model: dict[str, Any], params: Any,
         source: dict[str, Any] | None = None, extra: dict[str, Any] | None = None,
         files: Mapping[str, str | os.PathLike] | None = None, force: bool = False,
         replace_kind: bool = False) -> Path:
    """Write ``params`` (a pytree of arrays), ``files`` (``{name in the checkpoint: source file}``,
    copied) and the metadata to ``dst``; returns its path.

    Everything is written to a temporary sibling folder first. A new ``dst`` is that folder
    renamed into place; into an existing one (``force``, see :func:`check_writable`) the new
    entries are moved one by one, ``jaxedit.json`` last, after the old entries jaxedit wrote were
    moved aside; the user's own files there (a model card, notes) are never touched.
    """
    files = dict(files or {})
    dst = check_writable(dst, force, kind, new_files=tuple(files), replace_kind=replace_kind)
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{dst.name}.tmp-", dir=dst.parent))
    trash = None
    try:
        os.chmod(tmp, dir_mode())
        ocp = _orbax()
        with ocp.StandardCheckpointer() as ckptr:
            ckptr.save(tmp / "params", jax.tree.map(np.asarray, params))
            ckptr.wait_until_finished()
        for name, src in files.items():
            shutil.copyfile(src, tmp / name)
            os.chmod(tmp / name, file_mode())
        written = sorted({META_FILE, "params", *files})
        meta = {"format": FORMAT, "version": VERSION, "kind": kind, "model": model,
                "source": source or {}, "files": written, **(extra or {})}
        (tmp / META_FILE).write_text(json.dumps(meta, indent=2, sort_keys=True) + "\n")
        if not dst.exists():
            tmp.rename(dst)
        else:
            old = owned_files(read_meta(dst)) if is_checkpoint(dst) else set()
            trash = Path(tempfile.mkdtemp(prefix=f".{dst.name}.old-", dir=dst.parent))
            for name in [META_FILE, *sorted(old - {META_FILE})]:  # the metadata first: dst stops being valid
                if (dst / name).exists():
                    (dst / name).rename(trash / name)
            for name in [*(n for n in written if n != META_FILE), META_FILE]:  # the metadata last
                (tmp / name).rename(dst / name)
        fsync_dir(dst.parent)
    finally:
        for d in (tmp, trash):
            if d is not None and d.exists():
                shutil.rmtree(d, ignore_errors=True)
    return dst


def read_meta(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    meta_path = path / META_FILE
    if not meta_path.is_file():
        what = "does not exist" if not path.exists() else f"has no {META_FILE}"
        raise CheckpointError(f"{path} is not a jaxedit checkpoint: it {what}")
    meta = read_json(meta_path, CheckpointError)
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{meta_path}: not a jaxedit checkpoint (format {_describe(meta.get('format'))})")
    version = meta.get("version", 0)
    if not isinstance(version, int) or isinstance(version, bool):
        raise CheckpointError(f"{meta_path}: 'version' is {_describe(version)}, not an integer")
    if version > VERSION:
        raise CheckpointError(f"{meta_path}: written by a newer jaxedit (version {version})")
    for key, typ in (("kind", str), ("model", dict)):
        if not isinstance(meta.get(key), typ):
            raise CheckpointError(f"{meta_path}: {key!r} is {_describe(meta.get(key))}, not a {typ.__name__}")
    return meta


def _describe(value: Any) -> str:
    """A value from a metadata file for a one-line message: its type, and the value when it is short."""
    text = repr(value)
    return text if len(text) <= 40 and "\n" not in text else f"a {type(value).__name__}"


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
    _check_tree_metadata(params_dir)
    try:
        with _orbax().StandardCheckpointer() as ckptr:
            params = ckptr.restore(params_dir)
    except (ValueError, OSError) as e:  # what damaged array data raises through tensorstore (measured)
        raise CheckpointError(f"{params_dir}: cannot restore parameters ({type(e).__name__}: {e})") from None
    return Checkpoint(kind=kind, model=meta["model"], params=params, meta=meta, path=path)


def stored_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Shape of every stored parameter array (``'mapping.fc0.weight' -> (64, 64)``), from orbax's metadata
    alone: no array is read (``jaxedit info``)."""
    params_dir = Path(path, "params").absolute()
    _check_tree_metadata(params_dir)
    try:
        tree = _orbax().StandardCheckpointHandler().metadata(params_dir)
    except (ValueError, OSError) as e:
        raise CheckpointError(f"{params_dir}: cannot read the parameter tree ({type(e).__name__}: {e})") from None
    return {jax.tree_util.keystr(k, simple=True, separator="."): tuple(getattr(a, "shape", ()))
            for k, a in jax.tree_util.tree_leaves_with_path(tree)}


def _check_tree_metadata(params_dir: Path) -> None:
    """Orbax's tree description (``params/_METADATA``) as orbax reads it, checked first: orbax indexes it
    unchecked, so a crafted file would end in an ``AttributeError`` / ``KeyError`` / ``TypeError`` inside it."""
    path = params_dir / ORBAX_TREE_FILE
    if not path.is_file():
        raise CheckpointError(f"{params_dir}: missing {ORBAX_TREE_FILE}")
    tree = read_json(path, CheckpointError).get("tree_metadata")
    if not isinstance(tree, dict) or not 0 < len(tree) <= MAX_PARAMS:
        raise CheckpointError(f"{path}: 'tree_metadata' must map 1 to {MAX_PARAMS} parameters")
    for name, entry in tree.items():
        if not (isinstance(entry, dict) and _is_key_path(entry.get("key_metadata"))
                and _is_value_description(entry.get("value_metadata"))):
            raise CheckpointError(f"{path}: entry {_describe(name)} is not a parameter description")


def _is_key_path(keys: Any) -> bool:
    return isinstance(keys, list) and 0 < len(keys) <= 64 and all(
        isinstance(k, dict) and isinstance(k.get("key"), str) and k.get("key_type") in (1, 2) for k in keys)


def _is_value_description(value: Any) -> bool:
    shape = value.get("write_shape") if isinstance(value, dict) else None
    return (isinstance(value, dict) and isinstance(value.get("value_type"), str)
            and isinstance(value.get("skip_deserialize"), bool)
            and (shape is None or isinstance(shape, list) and all(type(d) is int and d >= 0 for d in shape)))


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
