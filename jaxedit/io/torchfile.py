"""Torch-free, code-free reader of PyTorch files.

``load(path)`` reads, without importing torch and without executing anything stored in
the file:

1. ``torch.save`` zip archives (``<prefix>/data.pkl`` + raw storages ``<prefix>/data/<key>``);
2. TorchScript archives (same layout plus ``code/``, which is never read): scripted
   modules come back as inert :class:`ScriptObject` instances;
3. legacy (pre-1.6, non-zip) ``torch.save`` streams;
4. plain pickles such as NVIDIA stylegan2-ada / stylegan3 network ``.pkl`` files, whose
   ``torch_utils.persistence`` modules come back as inert :class:`PersistentObject` instances
   (their embedded ``module_src`` source code is dropped, never executed).

Tensors become numpy arrays (right dtype, shape, storage offset and strides; bfloat16
as ``ml_dtypes.bfloat16``). Zip storages are zero-copy views of a read-only memory map
of the file; plain-pickle tensors are zero-copy views of the ``bytes`` objects the
pickle already holds. Arrays are therefore read-only: ``np.array(a)`` gives a writable
copy. A tensor whose strides are not C-contiguous is copied to a C-contiguous array.

Only the globals in :data:`ALLOWED_GLOBALS` (plus the ``__torch__.`` prefix of
TorchScript classes) can be referenced by a file; anything else raises
:class:`TorchFileError` naming the file and the refused global, before any code could
run. Every failure (missing, empty, truncated, corrupted, foreign file) is a
:class:`TorchFileError` with a one-line message that starts with the file's path.
"""

from __future__ import annotations

import collections
import io
import mmap
import os
import pickle
import struct
import types
import zipfile
import zlib
from typing import Any, Callable

import ml_dtypes
import numpy as np
from jaxedit.errors import FormatError, InputError

__all__ = [
    "ALLOWED_GLOBALS", "ALLOWED_GLOBAL_PREFIXES", "TorchFileError", "load", "PersistentObject",
    "ScriptObject", "EasyDict", "module_state_dict", "init_kwargs",
]

# --------------------------------------------------------------------------------------
# The allow-list: every global a file may name, and what it becomes (a handler below).
# Nothing else is ever resolved; no module named by a file is ever imported.
# --------------------------------------------------------------------------------------
ALLOWED_GLOBALS: types.MappingProxyType = types.MappingProxyType({
    # containers
    "collections.OrderedDict": "OrderedDict",
    "builtins.set": "set",
    "builtins.frozenset": "frozenset",
    # protocol-2 pickles (torch.save's default) spell a bytes object b as
    # _codecs.encode(str, 'latin1'); only that exact use is accepted.
    "_codecs.encode": "codecs_encode",
    # tensors and storages -> numpy
    "torch._utils._rebuild_tensor": "rebuild_tensor",
    "torch._utils._rebuild_tensor_v2": "rebuild_tensor_v2",
    "torch._utils._rebuild_parameter": "rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state": "rebuild_parameter_with_state",
    "torch.storage._load_from_bytes": "load_from_bytes",
    "torch.DoubleStorage": "storage_type",
    "torch.FloatStorage": "storage_type",
    "torch.HalfStorage": "storage_type",
    "torch.BFloat16Storage": "storage_type",
    "torch.ComplexDoubleStorage": "storage_type",
    "torch.ComplexFloatStorage": "storage_type",
    "torch.LongStorage": "storage_type",
    "torch.IntStorage": "storage_type",
    "torch.ShortStorage": "storage_type",
    "torch.CharStorage": "storage_type",
    "torch.ByteStorage": "storage_type",
    "torch.BoolStorage": "storage_type",
    # TorchScript list helpers (identity on the value)
    "torch.jit._pickle.build_intlist": "jit_identity",
    "torch.jit._pickle.build_tensorlist": "jit_identity",
    "torch.jit._pickle.build_doublelist": "jit_identity",
    "torch.jit._pickle.build_boollist": "jit_identity",
    "torch.jit._pickle.restore_type_tag": "jit_restore_type_tag",
    # NVIDIA stylegan2-ada / stylegan3 pickles
    "torch_utils.persistence._reconstruct_persistent_obj": "persistent_obj",
    "dnnlib.util.EasyDict": "EasyDict",
    # numpy scalars, dtypes and arrays (object dtype refused)
    "numpy.dtype": "np_dtype",
    "numpy.core.multiarray.scalar": "np_scalar",
    "numpy._core.multiarray.scalar": "np_scalar",
    "numpy.core.multiarray._reconstruct": "np_reconstruct",
    "numpy._core.multiarray._reconstruct": "np_reconstruct",
    "numpy.ndarray": "np_ndarray",
    # training-script arguments (rosinality train.py checkpoints): an inert namespace
    "argparse.Namespace": "Namespace",
})
#: Qualified-name prefixes that are allowed as a family: TorchScript classes become inert
#: :class:`ScriptObject` subclasses that only record their state (``code/`` is never read).
ALLOWED_GLOBAL_PREFIXES: types.MappingProxyType = types.MappingProxyType({"__torch__.": "script_class"})

_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype(np.float64), "FloatStorage": np.dtype(np.float32),
    "HalfStorage": np.dtype(np.float16), "BFloat16Storage": np.dtype(ml_dtypes.bfloat16),
    "ComplexDoubleStorage": np.dtype(np.complex128), "ComplexFloatStorage": np.dtype(np.complex64),
    "LongStorage": np.dtype(np.int64), "IntStorage": np.dtype(np.int32),
    "ShortStorage": np.dtype(np.int16), "CharStorage": np.dtype(np.int8),
    "ByteStorage": np.dtype(np.uint8), "BoolStorage": np.dtype(np.bool_),
}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001
_MAX_NESTING = 3  # _load_from_bytes streams inside streams


class TorchFileError(FormatError):
    """The file cannot be read safely; the message names the file and what is wrong."""


# --------------------------------------------------------------------------------------
# Inert result objects
# --------------------------------------------------------------------------------------
class PersistentObject:
    """An NVIDIA ``torch_utils.persistence`` object (e.g. a ``Generator`` module), inert.

    ``class_name``: the class's ``__name__`` (e.g. ``'Generator'``); ``state``: the object's
    ``__dict__`` as pickled (for an ``nn.Module``: ``_parameters``, ``_buffers``,
    ``_modules`` OrderedDicts, ``_init_kwargs``, plain attributes); ``version``: the
    persistence format version. The embedded ``module_src`` is dropped, never executed.
    """

    __slots__ = ("class_name", "state", "version")

    def __init__(self, class_name: str, state: dict, version: Any = None):
        self.class_name = class_name
        self.state = state
        self.version = version

    def __repr__(self) -> str:
        return f"PersistentObject({self.class_name!r})"


class ScriptObject:
    """An object of a TorchScript class (``__torch__.<qualname>``), inert.

    ``qualname``: the class's qualified name (e.g. ``'__torch__.model.CLIP'``); ``state``:
    whatever the file gives it (for a scripted module, a dict of attributes: tensors as
    numpy arrays, submodules as further ScriptObjects, plain values). Each qualname gets
    its own subclass so that pickle's NEWOBJ/BUILD can construct it; its methods only
    record what they are given.
    """

    qualname: str = "__torch__"

    def __new__(cls, *args, **kwargs):
        self = object.__new__(cls)
        self.state = None
        self.args = args
        return self

    def __init__(self, *args, **kwargs):  # REDUCE path: cls(*args); nothing to do
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __repr__(self) -> str:
        return f"ScriptObject({self.qualname!r})"


class EasyDict(dict):
    """Stand-in for ``dnnlib.util.EasyDict``: a dict with attribute access."""

    def __getattr__(self, name: str) -> Any:
        try:
            return self[name]
        except KeyError:
            raise AttributeError(name) from None

    def __setattr__(self, name: str, value: Any) -> None:
        self[name] = value

    def __delattr__(self, name: str) -> None:
        del self[name]


class Namespace(types.SimpleNamespace):
    """Inert stand-in for ``argparse.Namespace`` (attributes only)."""


class _StorageType:
    """Marker returned for ``torch.<X>Storage`` globals."""

    __slots__ = ("name", "dtype")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype

    def __reduce__(self):
        raise TypeError("not picklable")


class _NDArrayType:
    """Marker returned for the ``numpy.ndarray`` global (not callable)."""

    def __reduce__(self):
        raise TypeError("not picklable")


class _Storage:
    """A typed storage: ``array`` is its flat 1-D numpy view (None during a dry pass)."""

    __slots__ = ("array", "dtype", "key")

    def __init__(self, array: np.ndarray | None, dtype: np.dtype, key: str):
        self.array, self.dtype, self.key = array, dtype, key

    def __reduce__(self):
        raise TypeError("not picklable")


class _UnpickledArray(np.ndarray):
    """numpy array rebuilt through ``_reconstruct``; its ``__setstate__`` refuses object data.

    Instances are replaced by plain ``np.ndarray`` views after loading.
    """

    def __setstate__(self, state):
        ok = (isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype)
              and not state[2].hasobject and isinstance(state[4], (bytes, bytearray)))
        if not ok:
            raise _Refused("refuses a numpy array of object dtype or without raw data")
        np.ndarray.__setstate__(self, state)


class _Refused(Exception):
    """Internal: a forbidden construct; converted to TorchFileError with the file name."""


class _Corrupt(Exception):
    """Internal: inconsistent data; converted to TorchFileError with the file name."""


# --------------------------------------------------------------------------------------
# Unpickler
# --------------------------------------------------------------------------------------
class _Context:
    """Per-``load`` state: the file name for messages, nesting depth, flags."""

    def __init__(self, name: str, verify: bool):
        self.name = name
        self.verify = verify
        self.depth = 0
        self.dry = False  # first pass over a legacy stream's object pickle
        self.made_arrays = False
        self.script_classes: dict[str, type] = {}

    def error(self, problem: str) -> TorchFileError:
        return TorchFileError(f"{self.name}: {problem}")


def _refuse_global(qualname: str) -> _Refused:
    return _Refused(f"refuses to load global {qualname!r} (not on jaxedit's allow-list; "
                    "the file may be malicious or of an unsupported kind)")


class _Unpickler(pickle.Unpickler):
    """Restricted unpickler: only allow-listed globals, storages only through ``load_storage``."""

    def __init__(self, file, ctx: _Context, load_storage: Callable[[tuple], _Storage] | None):
        super().__init__(file)
        self._ctx = ctx
        self._load_storage = load_storage

    def find_class(self, module: str, name: str) -> Any:  # also reached by EXT1/2/4 opcodes
        if module == "__builtin__":  # Python 2 spelling
            module = "builtins"
        qualname = f"{module}.{name}"
        handler = ALLOWED_GLOBALS.get(qualname)
        if handler is None:
            for prefix, h in ALLOWED_GLOBAL_PREFIXES.items():
                if qualname.startswith(prefix):
                    handler = h
                    break
        if handler is None:
            raise _refuse_global(qualname)
        return getattr(self, "_g_" + handler)(qualname, name)

    def persistent_load(self, pid: Any) -> Any:
        if self._load_storage is None:
            raise _Corrupt("unexpected persistent id in a plain pickle")
        return self._load_storage(pid)

    # ---- handlers: each returns the object the global stands for ----
    def _g_OrderedDict(self, q, n):
        return collections.OrderedDict

    def _g_set(self, q, n):
        return set

    def _g_frozenset(self, q, n):
        return frozenset

    def _g_EasyDict(self, q, n):
        return EasyDict

    def _g_Namespace(self, q, n):
        return Namespace

    def _g_codecs_encode(self, q, n):
        def encode(obj, encoding="utf-8", errors="strict"):
            if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
                raise _Refused("_codecs.encode is only accepted as encode(str, 'latin1')")
            return obj.encode("latin1")
        return encode

    def _g_storage_type(self, q, n):
        return _StorageType(n, _STORAGE_DTYPES[n])

    def _g_rebuild_tensor(self, q, n):
        ctx = self._ctx

        def rebuild_tensor(storage, storage_offset, size, stride):
            return _tensor_from_storage(ctx, storage, storage_offset, size, stride)
        return rebuild_tensor

    def _g_rebuild_tensor_v2(self, q, n):
        ctx = self._ctx

        def rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False,
                              backward_hooks=None, metadata=None):
            return _tensor_from_storage(ctx, storage, storage_offset, size, stride)
        return rebuild_tensor_v2

    def _g_rebuild_parameter(self, q, n):
        def rebuild_parameter(data, requires_grad=False, backward_hooks=None):
            return data
        return rebuild_parameter

    def _g_rebuild_parameter_with_state(self, q, n):
        def rebuild_parameter_with_state(data, requires_grad=False, backward_hooks=None, state=None):
            return data
        return rebuild_parameter_with_state

    def _g_load_from_bytes(self, q, n):
        ctx = self._ctx

        def load_from_bytes(b):
            if not isinstance(b, (bytes, bytearray)):
                raise _Corrupt("torch.storage._load_from_bytes got a non-bytes argument")
            if ctx.depth >= _MAX_NESTING:
                raise _Corrupt("nested storage streams are nested too deeply")
            ctx.depth += 1
            try:
                storage = _load_buffer(bytes(b) if isinstance(b, bytearray) else b, ctx)
            finally:
                ctx.depth -= 1
            if not isinstance(storage, _Storage) and not ctx.dry:
                raise _Corrupt("a nested storage stream does not hold a storage")
            return storage
        return load_from_bytes

    def _g_jit_identity(self, q, n):
        def build(value):
            return value
        return build

    def _g_jit_restore_type_tag(self, q, n):
        def restore_type_tag(value, type_str=None):
            return value
        return restore_type_tag

    def _g_persistent_obj(self, q, n):
        def reconstruct_persistent_obj(meta):
            if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(
                    meta.get("class_name"), str):
                raise _Corrupt("a torch_utils.persistence object without type 'class' and a class_name")
            state = meta.get("state")
            if not isinstance(state, dict):
                raise _Corrupt(f"persistence object {meta['class_name']!r} has no state dict")
            return PersistentObject(meta["class_name"], state, meta.get("version"))  # module_src dropped
        return reconstruct_persistent_obj

    def _g_np_dtype(self, q, n):
        def dtype(obj, align=False, copy=False):
            if not isinstance(obj, str) or obj.lstrip("<>=|").startswith("O"):
                raise _Refused(f"refuses numpy dtype {obj!r} (object dtypes are not allowed)")
            dt = np.dtype(obj, align=bool(align), copy=bool(copy))
            if dt.hasobject:
                raise _Refused(f"refuses numpy dtype {obj!r} (object dtypes are not allowed)")
            return dt
        return dtype

    def _g_np_scalar(self, q, n):
        def scalar(dtype, data=None):
            if not isinstance(dtype, np.dtype) or dtype.hasobject:
                raise _Refused("refuses a numpy scalar of object dtype")
            if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
                raise _Corrupt("a numpy scalar whose data does not match its dtype")
            return np.frombuffer(data, dtype=dtype, count=1)[0]
        return scalar

    def _g_np_ndarray(self, q, n):
        return _NDArrayType()

    def _g_np_reconstruct(self, q, n):
        ctx = self._ctx

        def reconstruct(subtype, shape, typecode):
            if not isinstance(subtype, _NDArrayType):
                raise _Refused("refuses numpy _reconstruct of anything but numpy.ndarray")
            ctx.made_arrays = True
            return np.ndarray.__new__(_UnpickledArray, (0,), np.uint8)
        return reconstruct

    def _g_script_class(self, q, n):
        cls = self._ctx.script_classes.get(q)
        if cls is None:
            cls = type("ScriptObject", (ScriptObject,), {"qualname": q, "__module__": __name__})
            self._ctx.script_classes[q] = cls
        return cls


# --------------------------------------------------------------------------------------
# Tensors
# --------------------------------------------------------------------------------------
def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _tensor_from_storage(ctx: _Context, storage, offset, size, stride) -> np.ndarray | None:
    """``storage`` viewed with element ``offset``, ``size`` and element ``stride`` -> array of shape ``size``."""
    if not isinstance(storage, _Storage):
        raise _Corrupt(f"a tensor is rebuilt from a {type(storage).__name__}, not a storage")
    size, stride = tuple(size) if isinstance(size, (tuple, list)) else size, \
        tuple(stride) if isinstance(stride, (tuple, list)) else stride
    if not (_is_int(offset) and offset >= 0 and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) and all(_is_int(s) and s >= 0 for s in size + stride)):
        raise _Corrupt(f"invalid tensor geometry (offset {offset!r}, size {size!r}, stride {stride!r})")
    flat = storage.array
    if flat is None:  # dry pass
        return None
    if not isinstance(flat, np.ndarray) or flat.ndim != 1:
        raise _Corrupt("a storage without data")
    n = 1
    for s in size:
        n *= s
    if n == 0:
        out = np.empty(size, flat.dtype)
        out.flags.writeable = False
        return out
    extent = offset + 1 + sum((s - 1) * st for s, st in zip(size, stride))
    if extent > flat.size:
        raise _Corrupt(f"a tensor of size {list(size)} at offset {offset} needs {extent} elements "
                       f"but its storage {storage.key!r} has {flat.size} (truncated or corrupted)")
    expected, contiguous = 1, True
    for s, st in zip(reversed(size), reversed(stride)):
        if s != 1 and st != expected:
            contiguous = False
            break
        expected *= s
    if contiguous:
        return flat[offset:offset + n].reshape(size)
    if n > max(64 * flat.size, 1 << 24):  # e.g. a stride-0 "expand" view blown up to many GB
        raise _Corrupt(f"a non-contiguous tensor of size {list(size)} would expand its {flat.size}-element "
                       f"storage {storage.key!r} more than 64-fold; refusing")
    item = flat.dtype.itemsize
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=[st * item for st in stride],
                                           writeable=False)
    out = np.ascontiguousarray(view)
    out.flags.writeable = False
    return out


def _storage_view(buf, offset: int, dtype: np.dtype, numel: int, big_endian: bool) -> np.ndarray:
    """Zero-copy 1-D view of ``numel`` elements of ``dtype`` at byte ``offset`` of ``buf``."""
    if big_endian and dtype.itemsize > 1:  # the one case that copies (to native byte order)
        out = np.frombuffer(buf, dtype=dtype.newbyteorder(">"), count=numel, offset=offset).astype(dtype)
        out.flags.writeable = False
        return out
    return np.frombuffer(buf, dtype=dtype, count=numel, offset=offset)


def _parse_pid(pid: Any, legacy: bool) -> tuple[np.dtype, str, int, Any]:
    n = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == n and pid[0] == "storage"):
        raise _Corrupt(f"unsupported persistent id {str(pid)[:80]!r}")
    _, stype, key, _location, numel = pid[:5]
    if not isinstance(stype, _StorageType) or _STORAGE_DTYPES.get(stype.name) != stype.dtype:
        raise _Corrupt(f"persistent id with storage type {stype!r}")
    if not isinstance(key, str) or not _is_int(numel) or numel < 0:
        raise _Corrupt(f"invalid storage persistent id {str(pid)[:80]!r}")
    return stype.dtype, key, numel, (pid[5] if legacy else None)


# --------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------
def _unpickle(data_or_file, ctx: _Context, load_storage) -> Any:
    f = io.BytesIO(data_or_file) if isinstance(data_or_file, (bytes, bytearray, memoryview)) else data_or_file
    return _Unpickler(f, ctx, load_storage).load()


def _local_data_offset(buf, info: zipfile.ZipInfo) -> int:
    h = info.header_offset
    if h + 30 > len(buf) or bytes(buf[h:h + 4]) != b"PK\x03\x04":
        raise _Corrupt(f"zip entry {info.filename!r}: bad local header (corrupted archive)")
    name_len, extra_len = struct.unpack_from("<HH", buf, h + 26)
    return h + 30 + name_len + extra_len


def _load_zip(buf, fileobj, ctx: _Context) -> Any:
    """A ``torch.save`` / TorchScript zip archive held in ``buf`` (mmap or bytes)."""
    try:
        zf = zipfile.ZipFile(fileobj)
        infos = {i.filename: i for i in zf.infolist()}
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise _Corrupt(f"truncated or corrupted zip archive (zip central directory not readable: {e})") from None
    pkls = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkls:
        if any(n.endswith("model.json") for n in infos):
            raise _Corrupt("TorchScript archive of the pre-1.4 kind (model.json) is not supported")
        raise _Corrupt("zip archive without <prefix>/data.pkl: not a torch.save or TorchScript file")
    first = next(iter(infos)).split("/", 1)[0] + "/data.pkl"
    pkl_name = first if first in pkls else pkls[0]
    prefix = pkl_name[: -len("data.pkl")]
    try:
        data_pkl = zf.read(pkl_name)  # CRC-checked by zipfile
        byteorder = zf.read(prefix + "byteorder").decode("ascii").strip() if prefix + "byteorder" in infos \
            else "little"
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
        raise _Corrupt(f"corrupted zip archive ({e})") from None
    if byteorder not in ("little", "big"):
        raise _Corrupt(f"unknown byteorder {byteorder!r}")
    big = byteorder == "big"
    cache: dict[tuple[str, np.dtype], _Storage] = {}
    checked: set[str] = set()

    def load_storage(pid):
        dtype, key, numel, _ = _parse_pid(pid, legacy=False)
        hit = cache.get((key, dtype))
        if hit is not None:
            if hit.array.size < numel:
                raise _Corrupt(f"storage {key!r} is used with {numel} elements but holds {hit.array.size}")
            return hit
        entry = f"{prefix}data/{key}"
        info = infos.get(entry)
        if info is None:
            raise _Corrupt(f"storage entry {entry!r} is missing from the archive")
        nbytes = numel * dtype.itemsize
        if info.file_size < nbytes:
            raise _Corrupt(f"storage {entry!r} holds {info.file_size} bytes but {numel} x {dtype} needs "
                           f"{nbytes} (truncated or corrupted)")
        if info.compress_type == zipfile.ZIP_STORED:
            off = _local_data_offset(buf, info)
            if off + info.file_size > len(buf):
                raise _Corrupt(f"storage {entry!r} runs past the end of the file (truncated)")
            if ctx.verify and entry not in checked:
                if zlib.crc32(memoryview(buf)[off:off + info.file_size]) != info.CRC:
                    raise _Corrupt(f"storage {entry!r} fails its CRC-32 check (corrupted file)")
                checked.add(entry)
            arr = _storage_view(buf, off, dtype, numel, big)
        else:  # re-zipped with compression: read (and CRC-check) a copy
            try:
                raw = zf.read(entry)
            except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error) as e:
                raise _Corrupt(f"corrupted zip entry {entry!r} ({e})") from None
            arr = _storage_view(raw, 0, dtype, numel, big)
        st = cache[(key, dtype)] = _Storage(arr, dtype, key)
        return st

    return _unpickle(data_pkl, ctx, load_storage)


def _legacy_stream(buf, reader, ctx: _Context) -> Any:
    """A legacy ``torch.save`` stream in ``buf``; ``reader`` is a file-like over ``buf`` at 0.

    Layout: pickle(magic), pickle(1001), pickle(sys_info), pickle(obj) with persistent ids
    ``('storage', type, root_key, location, numel, view_metadata)``, pickle(keys), then per
    key an int64 element count and the raw data. The object pickle is read twice: a dry pass
    to learn the storages and where the data starts, then for real with zero-copy views.
    """
    def plain(what):
        try:
            return _unpickle(reader, ctx, None)
        except _Refused:
            raise
        except (_Corrupt, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError) as e:
            raise _Corrupt(f"truncated or corrupted legacy torch stream (reading {what}: "
                           f"{type(e).__name__}: {e})") from None

    if plain("magic number") != _LEGACY_MAGIC:
        raise _Corrupt("not a legacy torch stream (bad magic number)")
    proto = plain("protocol version")
    if proto != _LEGACY_PROTOCOL:
        raise _Corrupt(f"unsupported legacy torch protocol version {proto!r}")
    sys_info = plain("sys_info")
    if not isinstance(sys_info, dict):
        raise _Corrupt("legacy torch stream without a sys_info dict")
    big = not sys_info.get("little_endian", True)
    obj_start = reader.tell()

    seen: dict[str, np.dtype] = {}  # root key -> dtype
    numels: dict[str, int] = {}

    def record(pid):
        dtype, key, numel, _ = _parse_pid(pid, legacy=True)
        if seen.setdefault(key, dtype) != dtype:
            raise _Corrupt(f"storage {key!r} is used with two dtypes")
        numels[key] = max(numels.get(key, 0), numel)
        return _Storage(None, dtype, key)

    ctx_dry, ctx.dry = ctx.dry, True
    try:
        _unpickle(reader, ctx, record)
    finally:
        ctx.dry = ctx_dry
    keys = plain("storage keys")
    if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
        raise _Corrupt("legacy torch stream with an invalid storage key list")
    pos = reader.tell()
    roots: dict[str, np.ndarray] = {}
    for key in keys:
        if key not in seen:
            raise _Corrupt(f"storage key {key!r} is listed but never used (corrupted)")
        dtype = seen[key]
        if pos + 8 > len(buf):
            raise _Corrupt(f"storage {key!r} is missing (truncated)")
        (count,) = struct.unpack_from(">q" if big else "<q", buf, pos)
        nbytes = count * dtype.itemsize
        if count < max(numels[key], 0) or pos + 8 + nbytes > len(buf):
            raise _Corrupt(f"storage {key!r} is shorter than its {numels[key]} elements (truncated or corrupted)")
        roots[key] = _storage_view(buf, pos + 8, dtype, count, big)
        pos += 8 + nbytes
    missing = set(seen) - set(roots)
    if missing:
        raise _Corrupt(f"storages {sorted(missing)[:5]} have no data (corrupted)")
    views: dict[str, _Storage] = {}

    def load_storage(pid):
        dtype, key, numel, view = _parse_pid(pid, legacy=True)
        root = roots[key]
        if view is None:
            return views.setdefault(key, _Storage(root, dtype, key))
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                and _is_int(view[1]) and _is_int(view[2]) and view[1] >= 0 and view[2] >= 0
                and view[1] + view[2] <= root.size):
            raise _Corrupt(f"invalid storage view {view!r} of storage {key!r}")
        vkey, voff, vsize = view
        if vkey not in views:
            views[vkey] = _Storage(root[voff:voff + vsize], dtype, vkey)
        return views[vkey]

    reader.seek(obj_start)
    return _unpickle(reader, ctx, load_storage)


def _legacy_magic_prefix(head: bytes) -> bool:
    """Does ``head`` start with a pickle of the legacy torch magic number (any protocol)?"""
    if len(head) < 2 or head[0] != 0x80:
        return False
    i = 2
    if head[i:i + 1] == b"\x95":  # FRAME (protocol 4+)
        i += 9
    return head[i:i + 2 + 10] == b"\x8a\x0a" + _LEGACY_MAGIC.to_bytes(10, "little")


def _load_buffer(buf: bytes, ctx: _Context) -> Any:
    """A nested stream (argument of ``torch.storage._load_from_bytes``): legacy or zip."""
    if buf[:4] == b"PK\x03\x04":
        return _load_zip(buf, io.BytesIO(buf), ctx)
    if _legacy_magic_prefix(buf[:32]):
        return _legacy_stream(buf, io.BytesIO(buf), ctx)
    raise _Corrupt("a nested storage stream is neither a legacy torch stream nor a zip archive")


def _describe_foreign(head: bytes) -> str:
    kinds = [(b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"GIF8", "a GIF image"),
             (b"\x1f\x8b", "a gzip file"), (b"\x89HDF", "an HDF5 file"), (b"\x93NUMPY", "a numpy .npy file"),
             (b"%PDF", "a PDF file"), (b"BZh", "a bzip2 file"), (b"\xfd7zXZ", "an xz file")]
    for magic, kind in kinds:
        if head.startswith(magic):
            return kind
    if len(head) >= 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < 1 << 32:
        return "a safetensors file"
    if len(head) > 262 and head[257:262] == b"ustar":
        return "a tar archive (torch<0.1.10 checkpoints are not supported)"
    try:
        text = head.decode("utf-8")
    except UnicodeDecodeError as e:
        text = head[:e.start].decode("utf-8") if e.start >= len(head) - 3 else None
    if text is not None and all(c.isprintable() or c in "\t\r\n\f" for c in text):
        return "a text file"
    return f"unknown binary data (starts with {head[:8]!r})"


def load(path: str | os.PathLike, *, verify: bool = True) -> Any:
    """Read a PyTorch file without torch and without executing anything in it.

    Accepts ``torch.save`` zip archives, TorchScript archives (the object of ``data.pkl``;
    ``code/`` and ``constants.pkl`` are not read), legacy non-zip ``torch.save`` streams and
    plain pickles such as NVIDIA network ``.pkl`` files; the kind is detected from the bytes.

    Returns the pickled object with tensors as numpy arrays of the tensor's shape
    (e.g. a conv weight ``[out, in, kh, kw]``) and dtype (``float16``, ``ml_dtypes.bfloat16``,
    ``int64``, ...): read-only, zero-copy views of the file's memory map (zip, legacy) or of
    the pickle's bytes (plain pickles), copied only when the saved strides are not
    C-contiguous. Containers stay dicts / OrderedDicts / lists / tuples; NVIDIA persistence
    modules become :class:`PersistentObject`, TorchScript objects :class:`ScriptObject`,
    ``dnnlib.util.EasyDict`` :class:`EasyDict`, ``argparse.Namespace`` :class:`Namespace`.

    ``verify``: check the CRC-32 of every zip storage used (one pass over the data).

    Raises :class:`TorchFileError` (message: ``'<path>: <problem>'``) for a missing, empty,
    truncated, corrupted or non-PyTorch file and for any global outside :data:`ALLOWED_GLOBALS`.
    """
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    ctx = _Context(name, verify)
    try:
        f = open(name, "rb")
    except FileNotFoundError:
        raise ctx.error("file not found") from None
    except IsADirectoryError:
        raise ctx.error("is a directory, not a PyTorch file") from None
    except OSError as e:
        raise ctx.error(f"cannot open ({e.strerror or e})") from None
    try:
        with f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise ctx.error("empty file (0 bytes)")
            head = f.read(512)
            f.seek(0)
            if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                obj = _load_zip(mm, f, ctx)
            elif _legacy_magic_prefix(head):
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                obj = _legacy_stream(mm, mm, ctx)
            elif len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
                obj = _unpickle(f, ctx, None)
            else:
                raise ctx.error(f"not a PyTorch file: looks like {_describe_foreign(head)} "
                                "(expected a zip archive or a pickle)")
        if ctx.made_arrays:
            obj = _plain_arrays(obj, {})
    except TorchFileError:
        raise
    except (_Refused, _Corrupt) as e:
        raise ctx.error(str(e)) from None
    except EOFError:
        raise ctx.error("truncated file (pickle data ends early)") from None
    except pickle.UnpicklingError as e:
        what = "truncated file" if "truncated" in str(e) else "corrupted pickle data"
        raise ctx.error(f"{what} ({e})") from None
    except RecursionError:
        raise ctx.error("corrupted or malicious file (nesting too deep)") from None
    except Exception as e:  # anything else an inconsistent stream can trigger inside pickle
        raise ctx.error(f"corrupted or unsupported file ({type(e).__name__}: {e})") from e
    return obj


def _plain_arrays(obj: Any, memo: dict) -> Any:
    """Replace ``_UnpickledArray`` instances by plain ndarray views, in place where possible."""
    if isinstance(obj, np.ndarray):
        return obj.view(np.ndarray) if type(obj) is _UnpickledArray else obj
    if id(obj) in memo:
        return memo[id(obj)]
    memo[id(obj)] = obj
    if isinstance(obj, dict):
        for k, v in list(obj.items()):
            nv = _plain_arrays(v, memo)
            if nv is not v:
                obj[k] = nv
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            obj[i] = _plain_arrays(v, memo)
    elif isinstance(obj, tuple):
        new = tuple(_plain_arrays(v, memo) for v in obj)
        if any(a is not b for a, b in zip(new, obj)):
            memo[id(obj)] = new
            return new
    elif isinstance(obj, (PersistentObject, ScriptObject)):
        obj.state = _plain_arrays(obj.state, memo)
    elif isinstance(obj, Namespace):
        for k, v in vars(obj).items():
            setattr(obj, k, _plain_arrays(v, memo))
    return obj


# --------------------------------------------------------------------------------------
# Module helpers
# --------------------------------------------------------------------------------------
def module_state_dict(obj: PersistentObject | ScriptObject, *, include_non_persistent: bool = False
                      ) -> dict[str, np.ndarray]:
    """Flatten an ``nn.Module``-like object into torch ``state_dict`` names -> arrays.

    PersistentObject (NVIDIA): walks ``_parameters``, ``_buffers`` (without those in
    ``_non_persistent_buffers_set``, as torch does, unless ``include_non_persistent``) and
    ``_modules`` recursively, skipping None entries; e.g. ``'mapping.fc0.weight'`` ->
    ``[w_dim, z_dim]``. ScriptObject (TorchScript): walks its attribute dict, keeping
    arrays and recursing into ScriptObject attributes (parameters, buffers and tensor
    attributes are indistinguishable there). Order: as stored.
    """
    out: dict[str, np.ndarray] = {}

    def walk(node, prefix: str, path: tuple):
        if id(node) in path:
            raise InputError(f"module_state_dict: module cycle at {prefix.rstrip('.') or '<root>'!r}")
        path = path + (id(node),)
        if isinstance(node, PersistentObject):
            st = node.state
            nonpersist = st.get("_non_persistent_buffers_set") or ()
            for group in ("_parameters", "_buffers"):
                for k, v in (st.get(group) or {}).items():
                    if v is None or (group == "_buffers" and k in nonpersist and not include_non_persistent):
                        continue
                    if not isinstance(v, np.ndarray):
                        raise InputError(f"module_state_dict: {prefix + k!r} is a {type(v).__name__}, "
                                         "not a tensor")
                    out[prefix + k] = v
            for k, child in (st.get("_modules") or {}).items():
                if child is not None:
                    walk(child, f"{prefix}{k}.", path)
        elif isinstance(node, ScriptObject):
            if not isinstance(node.state, dict):
                return
            for k, v in node.state.items():
                if isinstance(v, np.ndarray):
                    out[prefix + k] = v
                elif isinstance(v, ScriptObject):
                    walk(v, f"{prefix}{k}.", path)
        else:
            raise TypeError(f"module_state_dict: {prefix.rstrip('.') or 'object'} is a "
                            f"{type(node).__name__}, not a PersistentObject or ScriptObject")

    walk(obj, "", ())
    return out


def init_kwargs(obj: PersistentObject) -> dict:
    """The ``_init_kwargs`` of a PersistentObject (the constructor config) as plain nested dicts.

    EasyDicts and OrderedDicts become dicts, numpy scalars stay numpy scalars; e.g. for a
    stylegan2-ada Generator ``{'z_dim': 512, 'w_dim': 512, 'mapping_kwargs': {...}, ...}``.
    """
    if not isinstance(obj, PersistentObject):
        raise TypeError(f"init_kwargs: expected a PersistentObject, got {type(obj).__name__}")
    kwargs = obj.state.get("_init_kwargs")
    if kwargs is None:
        return {}
    if not isinstance(kwargs, dict):
        raise InputError(f"init_kwargs: {obj.class_name} has _init_kwargs of type {type(kwargs).__name__}")

    def plain(v):
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x) for x in v]
        if isinstance(v, tuple):
            return tuple(plain(x) for x in v)
        return v

    return plain(kwargs)
