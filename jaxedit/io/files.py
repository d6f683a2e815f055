"""Writing files so that nothing is torn and nothing the user owns is replaced; reading small JSON files with bounds.

Every file jaxedit writes goes through :func:`atomic_path`. The files a command writes for the user are
also noted in their folder's ledger (``.jaxedit-written``: name -> size, modification time and inode; by
``atomic_path`` unless ``note=False``, or in one update by :func:`note_written`); ``--force`` replaces only
files the ledger lists unchanged (:func:`check_replaceable`). jaxedit's own bookkeeping (checkpoint folders,
whose ``jaxedit.json`` lists their files; run folders; the batch engine's ``job.json`` and manifests) is
owned by those records instead.

A file is written to a temporary sibling (``.NAME.tmp-XXXX`` in the same folder), flushed to disk
and renamed over ``NAME`` in one step, so a process killed at any point leaves the old file or the
new one, never a torn one. New files and folders get the user's umask (``tempfile`` alone would
create them private).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import tempfile
import warnings
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from jaxedit.errors import InputError, UsageError

JSON_MAX_BYTES = 16 << 20  # metadata, configs and manifests; far above any jaxedit writes
LEDGER = ".jaxedit-written"  # per folder: {name: [size, mtime_ns, inode]} of the files jaxedit wrote there


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets under the user's umask (``open`` would give)."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode a new folder gets under the user's umask (``mkdir`` would give)."""
    return 0o777 & ~_umask()


def fsync_dir(path: Path) -> None:
    """Make a rename in folder ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, note: bool = True) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it replaces ``path`` atomically (and, with ``note``,
    is recorded in the folder's ledger; ``note=False`` for jaxedit's own bookkeeping folders).

    On an exception (or Ctrl-C) the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
        fsync_dir(path.parent)
        if note:
            note_written(path)
    finally:
        tmp.unlink(missing_ok=True)


# ------------------------------------------------------------------------------ what jaxedit wrote
def _ledger(folder: Path) -> dict[str, list[int]]:
    """The folder's ledger; a missing or unreadable one is empty (jaxedit then replaces nothing there)."""
    try:
        entries = read_json(folder / LEDGER)
    except InputError:
        return {}
    return {k: v for k, v in entries.items() if isinstance(v, list) and len(v) == 3}


def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def note_written(*paths: str | os.PathLike) -> None:
    """Record ``paths`` (files jaxedit just wrote) in their folders' ledgers, one update per folder.

    The ledger file itself is locked (``flock``, also across processes) and rewritten in place. An entry
    outlives its file harmlessly (a new file of that name has another stamp); a ledger that cannot be read
    or written only makes jaxedit replace less, so that is a warning, never an error after the write.
    """
    by_folder: dict[Path, list[Path]] = {}
    for p in map(Path, paths):
        by_folder.setdefault(p.parent, []).append(p)
    for folder, written in by_folder.items():
        try:
            with open(os.open(folder / LEDGER, os.O_RDWR | os.O_CREAT, file_mode()), "r+") as f:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX)
                entries = _ledger(folder)
                entries.update({p.name: _stamp(p) for p in written})
                f.seek(0)
                f.truncate()
                json.dump(entries, f, separators=(",", ":"))
        except OSError as e:
            warnings.warn(f"{folder / LEDGER}: cannot record the files jaxedit wrote ({e.strerror or e}); "
                          "--force will not replace them", stacklevel=2)


def wrote(path: str | os.PathLike) -> bool:
    """Whether jaxedit wrote the file at ``path`` and nothing changed it since (its ledger entry still matches)."""
    path = Path(path)
    return path.is_file() and _ledger(path.parent).get(path.name) == _stamp(path)


def _is_temporary(path: Path) -> bool:
    """A write in progress (or killed): ``atomic_path``'s ``.NAME.tmp-XXXX``."""
    return path.name.startswith(".") and ".tmp-" in path.name


def check_replaceable(paths: Iterable[str | os.PathLike], force: bool, flag: str,
                      folders: Iterable[str | os.PathLike] = ()) -> None:
    """Refuse, before any work, to write over an existing file unless ``force`` and jaxedit wrote it unchanged.

    ``paths`` are the files a command will write (an existing folder there is an error); ``folders`` are
    folders it writes files into, every file already inside counting as one it may replace. ``flag`` names
    the option in the one-line :class:`~jaxedit.errors.UsageError`.
    """
    found: list[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            raise UsageError(f"{flag} {path}: is a folder, expected a file name")
        if path.exists():
            found.append(path)
    for folder in map(Path, folders):
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"{flag} {folder}: exists and is not a folder")
        if folder.is_dir():
            found += sorted(p for p in folder.rglob("*") if p.is_file() and p.name != LEDGER and not _is_temporary(p))
    ledgers: dict[Path, dict[str, list[int]]] = {}
    for p in found:
        if not force:
            raise UsageError(f"{flag} {p}: exists (add --force to replace it)")
        if p.parent not in ledgers:
            ledgers[p.parent] = _ledger(p.parent)
        if ledgers[p.parent].get(p.name) != _stamp(p):
            raise UsageError(f"{flag} {p}: exists and jaxedit did not write it here unchanged (yours, changed or "
                             "copied since, or written before jaxedit kept a ledger); --force replaces only "
                             "jaxedit's files: move it away first")


def write_bytes(path: str | os.PathLike, data: bytes, *, note: bool = True) -> Path:
    with atomic_path(path, note=note) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path: str | os.PathLike, text: str, *, note: bool = True) -> Path:
    with atomic_path(path, note=note) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json(path: str | os.PathLike, obj: Any, *, note: bool = True) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n", note=note)


def save_npy(path: str | os.PathLike, array: np.ndarray) -> Path:
    """``np.save`` to exactly ``path`` (no ``.npy`` appended), atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, np.asarray(array), allow_pickle=False)
    return Path(path)


def save_npz(path: str | os.PathLike, *, note: bool = True, **arrays: np.ndarray) -> Path:
    """``np.savez`` to exactly ``path``, atomically."""
    with atomic_path(path, note=note) as tmp, open(tmp, "wb") as f:
        np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})
    return Path(path)


def sha256(path: str | os.PathLike) -> str:
    """The hex sha256 of a file's bytes (read in 4 MiB chunks): the provenance jaxedit records."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def read_json(path: str | os.PathLike, error: type[InputError] = InputError, *,
              max_bytes: int = JSON_MAX_BYTES) -> dict[str, Any]:
    """A JSON object from ``path``, at most ``max_bytes`` long; anything else raises ``error`` naming the file.

    For metadata, configs and manifests that may come from elsewhere (a downloaded checkpoint's
    ``jaxedit.json``, a released deformator's ``args.json``): never reads an unbounded file, never
    returns a list or a string where the caller expects keys.
    """
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(max_bytes + 1)
    except OSError as e:
        raise error(f"{path}: cannot read ({e.strerror or e})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: larger than {max_bytes >> 20} MiB, not a metadata file")
    try:
        obj = json.loads(data)
    except (ValueError, RecursionError) as e:  # JSONDecodeError, UnicodeDecodeError, an int of > 4300 digits
        what = "nested too deeply" if isinstance(e, RecursionError) else f"invalid JSON ({e})"
        raise error(f"{path}: {what}") from None
    if not isinstance(obj, dict):
        raise error(f"{path}: expected a JSON object, found {type(obj).__name__}")
    return obj
