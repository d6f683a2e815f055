"""Reading ``.npy`` / ``.npz`` files that may come from elsewhere: every header is checked before an array is made.

numpy allocates what a header declares before it reads the data, and a compressed ``.npz`` member may
inflate far beyond its file (a zip bomb). :func:`load` therefore reads the headers first: the archive's
member count and names, each array's dtype (plain numbers, booleans or text; never pickles), and each
array's declared size, which must match the bytes the file (or the zip member) actually holds. What a
compressed archive inflates to is bounded by ``max_bytes`` (an uncompressed one is bounded by its own size).
"""

from __future__ import annotations

import math
import os
import zipfile
from pathlib import Path
from typing import IO, Iterable

import numpy as np

from jaxedit.errors import InputError, JaxeditError

MAX_BYTES = 4 << 30  # what a compressed .npz may inflate to (an uncompressed one: its own size)
MAX_MEMBERS = 10_000
MAX_HEADER = 10_000  # numpy's own default for max_header_size
KINDS = "biufUS"  # bool, integers, floats, text (names, as str or bytes)
_NPY_MAGIC, _ZIP_MAGICS = b"\x93NUMPY", (b"PK\x03\x04", b"PK\x05\x06")


def load(path: str | os.PathLike, what: str, error: type[JaxeditError] = InputError, *,
         keys: Iterable[str] | None = None, max_bytes: int = MAX_BYTES) -> dict[str, np.ndarray]:
    """``{'': array}`` from an ``.npy`` file, ``{name: array}`` from an ``.npz`` (only ``keys``, those present, when
    given: other members are neither checked nor read); anything else raises ``error`` with one line naming
    ``what`` (a flag or a role: ``--scores``, ``boundary``) and the file."""
    path = Path(path)
    where = f"{what} {path}"
    if not path.is_file():
        raise error(f"{where}: no such file")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(6)
            f.seek(0)
            if magic == _NPY_MAGIC:
                _check_npy(f, size, where, error)
                f.seek(0)
                return {"": np.load(f, allow_pickle=False)}
            if magic[:4] in _ZIP_MAGICS:
                wanted = None if keys is None else {f"{k}.npy" for k in keys}
                _check_npz(f, size, where, error, max_bytes, wanted)
                f.seek(0)
                with np.load(f, allow_pickle=False) as z:
                    return {k: np.asarray(z[k]) for k in z.files if wanted is None or f"{k}.npy" in wanted}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as e:  # what numpy and zipfile raise on bad bytes
        if isinstance(e, JaxeditError):
            raise
        raise error(f"{where}: cannot read as .npy / .npz ({type(e).__name__}: {str(e)[:200]})") from None
    raise error(f"{where}: not an .npy or .npz file")


def load_one(path: str | os.PathLike, what: str, error: type[JaxeditError] = InputError, *,
             kinds: str = "biuf") -> np.ndarray:
    """The array of an ``.npy`` file, of a dtype kind in ``kinds`` (numbers by default)."""
    a = load(path, what, error).get("")
    if a is None:
        raise error(f"{what} {path}: an .npz archive, expected one .npy array")
    if a.dtype.kind not in kinds:
        raise error(f"{what} {path}: expected a numeric array, got {a.dtype}")
    return a


def npy_header(path: str | os.PathLike, what: str, error: type[JaxeditError] = InputError) -> tuple[tuple, np.dtype]:
    """``(shape, dtype)`` from an ``.npy`` file's header alone (no data read)."""
    where = f"{what} {path}"
    try:
        with open(path, "rb") as f:
            return _read_header(f, where, error)
    except (OSError, ValueError, EOFError) as e:
        if isinstance(e, JaxeditError):
            raise
        raise error(f"{where}: not a readable .npy file ({type(e).__name__}: {str(e)[:200]})") from None


def _read_header(f: IO[bytes], where: str, error: type[JaxeditError]) -> tuple[tuple, np.dtype]:
    version = np.lib.format.read_magic(f)
    read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}.get(version)
    if read is None:
        raise error(f"{where}: unsupported .npy version {version}")
    shape, _, dtype = read(f, max_header_size=MAX_HEADER)
    return tuple(shape), dtype


def _check_npy(f: IO[bytes], size: int, where: str, error: type[JaxeditError]) -> None:
    """The header of the ``.npy`` stream at ``f``'s position, which holds ``size`` bytes from there."""
    start = f.tell()
    shape, dtype = _read_header(f, where, error)
    if dtype.kind not in KINDS or dtype.hasobject or dtype.fields is not None:
        raise error(f"{where}: holds {dtype} data (plain numbers, booleans or text only)")
    data = size - (f.tell() - start)
    declared = math.prod(shape) * dtype.itemsize
    if declared != data:
        raise error(f"{where}: header declares {list(shape)} {dtype} ({declared} bytes), the file holds {data}")


def _check_npz(f: IO[bytes], size: int, where: str, error: type[JaxeditError], max_bytes: int,
               wanted: set[str] | None) -> None:
    with zipfile.ZipFile(f) as z:
        members = z.infolist()
        if len(members) > MAX_MEMBERS:
            raise error(f"{where}: {len(members)} arrays (at most {MAX_MEMBERS})")
        members = [m for m in members if wanted is None or m.filename in wanted]
        inflated = sum(m.file_size for m in members)
        if inflated > max(max_bytes, size):
            raise error(f"{where}: a compressed archive inflating to {inflated} bytes (at most {max_bytes}; "
                        "store it uncompressed, np.savez, to read more)")
        for m in members:
            if not m.filename.endswith(".npy"):
                raise error(f"{where}: member {m.filename[:80]!r} is not an .npy array")
            with z.open(m) as member:
                _check_npy(member, m.file_size, f"{where} [{m.filename[:80]}]", error)
