"""Torch-free, code-free reader of PyTorch files.

``load(path)`` reads, without importing torch and without executing anything stored in
the file:

1. ``torch.save`` zip archives (``<prefix>/data.pkl`` + raw storages ``<prefix>/data/<key>``);
2. TorchScript archives (same layout plus ``code/``, which is never read): scripted
   modules come back as inert :class:`ScriptObject` instances;
3. legacy (pre-1.6, non-zip) ``torch.save`` streams;
4. plain pickles such as NVIDIA stylegan2-ada / stylegan3 network ``.pkl`` files, whose
   ``torch_utils.persistence`` modules come back as inert :class:`PersistentObject` instances
   (their embedded ``module_src`` source code is dropped, never executed), and the legacy
   TensorFlow StyleGAN2 ``.pkl`` files, whose ``dnnlib.tflib.network.Network`` objects come
   back as inert :class:`TFNetwork` instances (``build_module_src`` dropped, never executed).

Tensors become numpy arrays (right dtype, shape, storage offset and strides; bfloat16
as ``ml_dtypes.bfloat16``). Zip storages are zero-copy views of a read-only memory map
of the file; plain-pickle tensors are zero-copy views of the ``bytes`` objects the
pickle already holds. Arrays are therefore read-only: ``np.array(a)`` gives a writable
copy. A tensor whose strides are not C-contiguous is copied to a C-contiguous array.

Every file is treated as hostile. Pickles are read by a restricted pure-Python unpickler:

- only the globals in :data:`ALLOWED_GLOBALS` (plus the ``__torch__.`` prefix of
  TorchScript classes) resolve, to inert objects; APPEND / SETITEM / BUILD only reach
  lists / dicts / the few objects that take a state; extension codes bypass no check;
- dtypes are plain numeric only (bool, (u)int8-64, float16/32/64, bfloat16, complex64/128),
  whatever spells them (``numpy.dtype``, ``_reconstruct``, storages): no structured, object
  or subarray dtypes, no field offsets;
- every tensor's extent (offset, sizes, strides) lies inside its storage; a dimension of
  size > 1 needs a stride >= 1;
- what a file materializes (pickle objects by a per-opcode estimate, copies of
  non-contiguous or big-endian tensors, inflated zip members) stays within one budget of
  ``_BUDGET_BASE + _BUDGET_FACTOR x file size`` bytes;
- pickle memo indices, tuple nesting while reading, keys of one hash value per dict or set
  (no hash-collision floods), and the loaded object graph (no cycles, nesting <=
  ``_MAX_DEPTH``, expanded tree <= ``_MAX_EXPANSION + 8 x opcodes``: no "billion laughs")
  are bounded, so that callers may walk and print what they get;
- zip members are checked before reading (names, duplicates, compression method and
  ratio, declared sizes) and read with their declared size as the cap;
- values from the file reach messages only through :func:`describe` (bounded).

Every failure (missing, empty, truncated, corrupted, foreign or hostile file) is a
:class:`TorchFileError` with a one-line message that starts with the file's path.
"""

from __future__ import annotations

import collections
import copyreg
import io
import itertools
import math
import mmap
import os
import pickle
import re
import struct
import sys
import types
import zipfile
import zlib
from collections.abc import Callable
from typing import Any

import ml_dtypes
import numpy as np

from jaxedit.errors import FormatError

__all__ = [
    "ALLOWED_GLOBALS",
    "ALLOWED_GLOBAL_PREFIXES",
    "EasyDict",
    "PersistentObject",
    "ScriptObject",
    "TFNetwork",
    "TorchFileError",
    "describe",
    "init_kwargs",
    "load",
    "module_state_dict",
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
    # legacy TensorFlow StyleGAN / StyleGAN2 pickles (NVlabs/stylegan2, stylegan2-ada TF)
    "dnnlib.tflib.network.Network": "tf_network",
    # numpy scalars, dtypes and arrays (plain numeric dtypes only)
    "numpy.dtype": "np_dtype",
    "ml_dtypes.bfloat16": "bfloat16",
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
#: The only dtypes a file can produce (in either byte order).
_PLAIN_DTYPES = frozenset(_STORAGE_DTYPES.values()) | {np.dtype(t) for t in (np.uint16, np.uint32, np.uint64)}

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL = 1001

# Limits (see the module docstring). Real checkpoints stay far below each: the reference
# fixtures need < 1 % of the budget, nest <= 12 levels and share almost nothing.
_MAX_NESTING = 3  # _load_from_bytes streams inside streams
_BUDGET_BASE = 64 << 20  # bytes a file may materialize beyond _BUDGET_FACTOR x its size
_BUDGET_FACTOR = 4
_MAX_DEPTH = 100  # nesting of the loaded object (callers recurse: 1-3 frames per level)
_MAX_EXPANSION = 1 << 20  # + 8 x opcodes: nodes of the object tree with shared references expanded
_MAX_MEMO_GAP = 1 << 16  # a memo index may skip at most this many slots
_MAX_SAME_HASH = 64  # keys of one dict / set with one hash value (a str key collides with odds 2**-64)
_MAX_NDIM = 32
_INT64 = 1 << 63  # sizes, strides, offsets and element counts are torch int64s
_MAX_RATIO = 100  # inflated / compressed size of a zip member larger than 1 MiB
_MAX_SMALL_MEMBER = 1 << 20


class TorchFileError(FormatError):
    """The file cannot be read safely; the message names the file and what is wrong."""


def describe(obj: Any, limit: int = 60) -> str:
    """A bounded one-line description of an untrusted value, for messages (at most ``limit`` chars).

    Scalars and the first ``limit`` characters of strings are shown; containers show at most
    3 items, 2 levels deep; anything else only its type. Never calls ``repr`` on a container
    or on an object of unknown type, so a huge or self-similar object costs nothing.
    """
    return _describe(obj, limit, 2)


def _describe(obj: Any, limit: int, depth: int) -> str:
    if obj is None or isinstance(obj, (bool, float, complex)):
        s = repr(obj)
    elif isinstance(obj, int):
        s = repr(obj) if obj.bit_length() <= 64 else f"<int of {obj.bit_length()} bits>"
    elif isinstance(obj, (str, bytes, bytearray)):
        s = repr(obj[:limit]) + ("..." if len(obj) > limit else "")
    elif isinstance(obj, np.generic) and _plain(obj.dtype):
        s = repr(obj)
    elif isinstance(obj, np.ndarray):
        s = f"<array {obj.dtype.str} {list(obj.shape)}>" if _plain(obj.dtype) else "<array>"
    elif isinstance(obj, (PersistentObject, ScriptObject, TFNetwork, _StorageType)):
        s = repr(obj)
    elif isinstance(obj, (list, tuple, dict, set, frozenset)):
        if depth == 0:
            s = f"<{type(obj).__name__} of {len(obj)}>"
        else:
            if isinstance(obj, dict):
                parts = [f"{_describe(k, 20, depth - 1)}: {_describe(v, 20, depth - 1)}"
                         for k, v in itertools.islice(obj.items(), 3)]
            else:
                parts = [_describe(x, 20, depth - 1) for x in itertools.islice(obj, 3)]
            if len(obj) > 3:
                parts.append(f"... ({len(obj)} items)")
            o, c = {list: "[]", tuple: "()", dict: "{}"}.get(type(obj), (f"{type(obj).__name__}({{", "})"))
            s = o + ", ".join(parts) + ("," if type(obj) is tuple and len(obj) == 1 else "") + c
    else:
        s = f"<{type(obj).__name__}>"
    return s if len(s) <= limit else s[:limit - 3] + "..."


_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def _one_line(text: str, limit: int = 400) -> str:
    text = _CONTROL.sub(" ", text)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _plain(dt: Any) -> bool:
    """Is ``dt`` a plain numeric dtype (any byte order; no fields, subarray or metadata)?"""
    return (isinstance(dt, np.dtype) and dt.fields is None and dt.subdtype is None and dt.metadata is None
            and dt.newbyteorder("=") in _PLAIN_DTYPES)


# --------------------------------------------------------------------------------------
# Inert result objects
# --------------------------------------------------------------------------------------
class PersistentObject:
    """An NVIDIA ``torch_utils.persistence`` object (e.g. a ``Generator`` module), inert.

    ``class_name``: the class's ``__name__`` (e.g. ``'Generator'``); ``state``: the object's
    ``__dict__`` as pickled (for an ``nn.Module``: ``_parameters``, ``_buffers``,
    ``_modules`` OrderedDicts, ``_init_kwargs``, plain attributes); ``version``: the
    persistence format version; ``source``: the path of the file it came from (for
    messages). The embedded ``module_src`` is dropped, never executed.
    """

    __slots__ = ("class_name", "source", "state", "version")

    def __init__(self, class_name: str, state: dict, version: Any = None, source: str = "<memory>"):
        self.class_name = class_name
        self.state = state
        self.version = version
        self.source = source

    def __repr__(self) -> str:
        return f"PersistentObject({describe(self.class_name)})"


class ScriptObject:
    """An object of a TorchScript class (``__torch__.<qualname>``), inert.

    ``qualname``: the class's qualified name (e.g. ``'__torch__.model.CLIP'``); ``state``:
    whatever the file gives it (for a scripted module, a dict of attributes: tensors as
    numpy arrays, submodules as further ScriptObjects, plain values); ``source``: the path
    of the file (for messages). Each qualname gets its own subclass so that pickle's
    NEWOBJ/BUILD can construct it; its methods only record what they are given.
    """

    qualname: str = "__torch__"
    source: str = "<memory>"

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
        return f"ScriptObject({describe(self.qualname)})"


class TFNetwork:
    """A legacy TensorFlow ``dnnlib.tflib.network.Network`` (NVlabs/stylegan2 ``.pkl``), inert.

    ``state``: the pickled state dict (``version``, ``name``, ``static_kwargs``, ``components``
    (a dict of further TFNetworks), ``build_func_name``, ``variables`` as a list of
    ``(TF name, numpy array)`` pairs); the ``build_module_src`` source code is dropped, never
    executed. ``source``: the path of the file (for messages). Built only by pickle's
    NEWOBJ + one BUILD with a dict of string keys.
    """

    __slots__ = ("source", "state")

    def __new__(cls):
        self = object.__new__(cls)
        self.state, self.source = None, "<memory>"
        return self

    def __repr__(self) -> str:
        name = self.state.get("name") if isinstance(self.state, dict) else None
        return f"TFNetwork({describe(name)})"

    def __reduce__(self):
        raise TypeError("not picklable")


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

    __slots__ = ("dtype", "name")

    def __init__(self, name: str, dtype: np.dtype):
        self.name, self.dtype = name, dtype

    def __repr__(self) -> str:
        return f"torch.{self.name}"

    def __reduce__(self):
        raise TypeError("not picklable")


class _Marker:
    """Marker returned for the ``numpy.ndarray`` and ``ml_dtypes.bfloat16`` globals (not callable)."""

    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name

    def __reduce__(self):
        raise TypeError("not picklable")


class _Storage:
    """A typed storage: ``array`` is its flat 1-D numpy view (None during a dry pass)."""

    __slots__ = ("array", "dtype", "key")

    def __init__(self, array: np.ndarray | None, dtype: np.dtype, key: str):
        self.array, self.dtype, self.key = array, dtype, key

    def __reduce__(self):
        raise TypeError("not picklable")


class _Refused(Exception):
    """Internal: a forbidden construct; converted to TorchFileError with the file name."""


class _Corrupt(Exception):
    """Internal: inconsistent data; converted to TorchFileError with the file name."""


# --------------------------------------------------------------------------------------
# Unpickler
# --------------------------------------------------------------------------------------
class _Context:
    """Per-``load`` state: the file name for messages, the byte budget, nesting depth, flags."""

    def __init__(self, name: str, verify: bool, size: int):
        self.name = name
        self.verify = verify
        self.budget = _BUDGET_BASE + _BUDGET_FACTOR * size
        self.spent = 0
        self.ops = 0
        self.depth = 0
        self.dry = False  # first pass over a legacy stream's object pickle
        self.script_classes: dict[str, type] = {}

    def error(self, problem: str) -> TorchFileError:
        return TorchFileError(_one_line(f"{self.name}: {problem}"))

    def charge(self, nbytes: int, what: str) -> None:
        """Count ``nbytes`` materialized for ``what`` against the file's budget."""
        self.spent += nbytes
        if self.spent > self.budget:
            raise _Refused(f"refuses to materialize more than {self.budget:,} bytes (reached with {what}; "
                           f"the limit is {_BUDGET_FACTOR} x the file size + {_BUDGET_BASE >> 20} MiB)")


def _refuse_global(qualname: str) -> _Refused:
    return _Refused(f"refuses to load global {describe(qualname, 120)} (not on jaxedit's allow-list; "
                    "the file may be malicious or of an unsupported kind)")


def _op_table(default, values: dict) -> list:
    table = [default] * 256
    for ops, v in values.items():
        for op in ops:
            table[op[0]] = v
    return table


# Estimated bytes each opcode makes live (object + stack slot); payload opcodes add the object's size.
_OP_COST = _op_table(32, {
    (pickle.POP, pickle.POP_MARK, pickle.STOP, pickle.PROTO, pickle.FRAME): 0,
    (pickle.NONE, pickle.NEWTRUE, pickle.NEWFALSE, pickle.EMPTY_TUPLE, pickle.DUP): 8,
    (pickle.GET, pickle.BINGET, pickle.LONG_BINGET): 16,
    (pickle.EMPTY_LIST, pickle.LIST, pickle.MARK, pickle.EMPTY_DICT, pickle.DICT): 64,
    (pickle.PUT, pickle.BINPUT, pickle.LONG_BINPUT, pickle.MEMOIZE): 104,
    (pickle.TUPLE, pickle.TUPLE1, pickle.TUPLE2, pickle.TUPLE3): 160,  # + the nesting record
    (pickle.EMPTY_SET, pickle.FROZENSET): 320,
    (pickle.REDUCE, pickle.NEWOBJ, pickle.NEWOBJ_EX, pickle.OBJ, pickle.INST, pickle.BUILD): 256,
})
_PAYLOAD = _op_table(False, {
    (pickle.BINBYTES, pickle.SHORT_BINBYTES, pickle.BINBYTES8, pickle.BINUNICODE, pickle.SHORT_BINUNICODE,
     pickle.BINUNICODE8, pickle.BINSTRING, pickle.SHORT_BINSTRING, pickle.STRING, pickle.UNICODE,
     pickle.BYTEARRAY8, pickle.LONG, pickle.LONG1, pickle.LONG4, pickle.INT): True,
})


class _Unpickler(pickle._Unpickler):
    """Restricted pure-Python unpickler: allow-listed globals only, storages only through
    ``load_storage``, every opcode charged to the budget, and the opcodes that reach objects
    (APPEND, SETITEM, BUILD, EXT, PUT) checked; see the module docstring."""

    def __init__(self, file, ctx: _Context, load_storage: Callable[[tuple], _Storage] | None):
        super().__init__(file)
        file_read = file.read

        def read_exact(n: int) -> bytes:  # a short read is a truncated file, not silently less data
            data = file_read(n)
            if len(data) < n:
                raise EOFError
            return data

        self._file_read = read_exact
        self._ctx = ctx
        self._load_storage = load_storage
        self._pending: dict[int, Any] = {}  # fresh dtypes and arrays awaiting their one BUILD
        self._nesting: dict[int, tuple[Any, int]] = {}  # id -> (tuple or frozenset, nesting depth)
        self._hashes: dict[tuple[int, int], int] = {}  # (container id, key hash) -> keys so far
        self._hashed_containers: dict[int, Any] = {}

    def load(self) -> Any:
        """``pickle._Unpickler.load`` with the budget charged per opcode."""
        self._unframer = pickle._Unframer(self._file_read, self._file_readline)
        self.read = self._unframer.read
        self.readinto = self._unframer.readinto
        self.readline = self._unframer.readline
        self.metastack = []
        self.stack = []
        self.append = self.stack.append
        self.proto = 0
        read, dispatch, ctx = self.read, self._dispatch, self._ctx
        try:
            while True:
                key = read(1)
                op = key[0]
                dispatch[op](self)
                ctx.ops += 1
                ctx.spent += _OP_COST[op] + (sys.getsizeof(self.stack[-1]) if _PAYLOAD[op] else 0)
                if ctx.spent > ctx.budget:
                    ctx.charge(0, "pickle objects")
        except pickle._Stop as stop:
            return stop.value

    def find_class(self, module: str, name: str) -> Any:  # GLOBAL, STACK_GLOBAL, INST, EXT1/2/4
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

    # ---- opcodes that reach objects: checked versions ----
    def _memoize(self, i: int) -> None:
        if not 0 <= i <= len(self.memo) + _MAX_MEMO_GAP:
            raise _Corrupt(f"pickle memo index {describe(i)} is far beyond the {len(self.memo)} objects stored")
        self.memo[i] = self.stack[-1]

    def _op_put(self):
        self._memoize(int(self.readline()[:-1]))

    def _op_binput(self):
        self._memoize(self.read(1)[0])

    def _op_long_binput(self):
        self._memoize(struct.unpack("<I", self.read(4))[0])

    def _op_memoize(self):
        self._memoize(len(self.memo))

    def _extension(self, code: int) -> None:  # never through copyreg's process-wide cache
        key = copyreg._inverted_registry.get(code)
        if not key:
            raise _Corrupt(f"unregistered pickle extension code {code}")
        self.append(self.find_class(*key))

    def _op_ext1(self):
        self._extension(self.read(1)[0])

    def _op_ext2(self):
        self._extension(struct.unpack("<H", self.read(2))[0])

    def _op_ext4(self):
        self._extension(struct.unpack("<i", self.read(4))[0])

    def _op_bytearray8(self):  # read first: never allocate what the opcode merely declares
        (n,) = struct.unpack("<Q", self.read(8))
        self.append(bytearray(self.read(n)))

    def _target(self, kind: type, op: str) -> Any:
        target = self.stack[-1]
        if not isinstance(target, kind):
            raise _Corrupt(f"pickle {op} on a {type(target).__name__}")
        return target

    def _op_append(self):
        value = self.stack.pop()
        self._target(list, "APPEND").append(value)

    def _op_appends(self):
        items = self.pop_mark()
        self._target(list, "APPENDS").extend(items)

    def _hashed(self, container: Any, keys) -> None:
        """Refuse keys of ``container`` that share one hash value (crafted ints or tuples make inserting
        them quadratic); called before they are inserted."""
        counts, cid = self._hashes, id(container)
        self._hashed_containers[cid] = container  # keeps ids unique while counting
        self._ctx.charge(128 * len(keys), "dict and set keys")  # the count records
        for k in keys:
            h = (cid, hash(k))
            n = counts[h] = counts.get(h, 0) + 1
            if n > _MAX_SAME_HASH:
                raise _Refused(f"refuses a dict or set with more than {_MAX_SAME_HASH} keys of one hash value "
                               "(a hash-collision flood)")

    def _setitems(self, target: dict, items: list) -> None:
        if len(items) % 2:
            raise _Corrupt("pickle dict items with a key but no value")
        keys = items[0::2]
        self._hashed(target, keys)
        for k, v in zip(keys, items[1::2]):
            target[k] = v

    def _op_setitem(self):
        value = self.stack.pop()
        key = self.stack.pop()
        self._setitems(self._target(dict, "SETITEM"), [key, value])

    def _op_setitems(self):
        items = self.pop_mark()
        self._setitems(self._target(dict, "SETITEMS"), items)

    def _op_reduce(self):
        args = self.stack.pop()
        func = self.stack[-1]
        if isinstance(func, type) and issubclass(func, dict) and args:  # keys only through _setitems
            raise _Corrupt(f"pickle REDUCE of {func.__name__} with arguments")
        self.stack[-1] = func(*args)

    def _op_dict(self):
        items = self.pop_mark()
        d: dict = {}
        self._setitems(d, items)
        self.append(d)

    def _op_additems(self):
        items = self.pop_mark()
        target = self._target(set, "ADDITEMS")
        self._hashed(target, items)
        target.update(items)

    def _nested(self, obj: Any, items) -> Any:
        """Record the nesting depth of a new tuple / frozenset: hashing recurses through them."""
        nesting = self._nesting
        depth = 1 + max((nesting[id(x)][1] for x in items if id(x) in nesting), default=0)
        if depth > _MAX_DEPTH:
            raise _Refused(f"refuses objects nested more than {_MAX_DEPTH} levels deep")
        nesting[id(obj)] = (obj, depth)
        return obj

    def _op_tuple(self):
        items = self.pop_mark()
        self.append(self._nested(tuple(items), items))

    def _op_tuple1(self):
        self.stack[-1] = self._nested((self.stack[-1],), self.stack[-1:])

    def _op_tuple2(self):
        items = [self.stack[-2], self.stack[-1]]
        self.stack[-2:] = [self._nested(tuple(items), items)]

    def _op_tuple3(self):
        items = [self.stack[-3], self.stack[-2], self.stack[-1]]
        self.stack[-3:] = [self._nested(tuple(items), items)]

    def _op_frozenset(self):
        items = self.pop_mark()
        self.append(self._g_frozenset("", "")(items))

    def _op_build(self):
        state = self.stack.pop()
        inst = self.stack[-1]
        if isinstance(inst, ScriptObject):
            inst.__setstate__(state)
        elif type(inst) is TFNetwork:
            if inst.state is not None or not (isinstance(state, dict) and all(type(k) is str for k in state)):
                raise _Refused("refuses a TensorFlow Network state that is not one dict with string keys")
            state = dict(state)
            state.pop("build_module_src", None)  # TF source code: dropped, never executed
            inst.state, inst.source = state, self._ctx.name
        elif self._pending.pop(id(inst), None) is not None:
            (_build_dtype if isinstance(inst, np.dtype) else _build_array)(inst, state)
        elif (type(inst) in (collections.OrderedDict, EasyDict, Namespace) and isinstance(state, dict)
              and all(type(k) is str for k in state)):  # e.g. a state dict's _metadata attribute
            vars(inst).update(state)
        else:
            raise _Refused(f"refuses to set the state of a {type(inst).__name__} (pickle BUILD)")

    # ---- handlers: each returns the object the global stands for ----
    def _g_OrderedDict(self, q, n):
        def make_ordered_dict(items=()):  # Python 2 pickles give the items as [[k, v], ...]
            d = collections.OrderedDict()
            if not (isinstance(items, (list, tuple))
                    and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in items)):
                raise _Corrupt("OrderedDict items that are not a list of (key, value) pairs")
            self._setitems(d, [x for p in items for x in p])
            return d
        return make_ordered_dict

    def _g_set(self, q, n):
        def make_set(items=()):
            _check_items(items, "set")
            s: set = set()
            self._hashed(s, items)
            s.update(items)
            return s
        return make_set

    def _g_frozenset(self, q, n):
        def make_frozenset(items=()):
            _check_items(items, "frozenset")
            self._hashed(items, items)  # counted under the list's id: the frozenset does not exist yet
            return self._nested(frozenset(items), items)
        return make_frozenset

    def _g_EasyDict(self, q, n):
        return EasyDict

    def _g_Namespace(self, q, n):
        return Namespace

    def _g_tf_network(self, q, n):
        return TFNetwork

    def _g_codecs_encode(self, q, n):
        ctx = self._ctx

        def encode(obj, encoding="utf-8", errors="strict"):
            if not isinstance(obj, str) or encoding not in ("latin1", "latin-1") or errors != "strict":
                raise _Refused("_codecs.encode is only accepted as encode(str, 'latin1')")
            ctx.charge(len(obj), "_codecs.encode")
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
        source = self._ctx.name

        def reconstruct_persistent_obj(meta):
            if not isinstance(meta, dict) or meta.get("type") != "class" or not isinstance(
                    meta.get("class_name"), str):
                raise _Corrupt("a torch_utils.persistence object without type 'class' and a class_name")
            state = meta.get("state")
            if not isinstance(state, dict):
                raise _Corrupt(f"persistence object {describe(meta['class_name'])} has no state dict")
            return PersistentObject(meta["class_name"], state, meta.get("version"), source)  # module_src dropped
        return reconstruct_persistent_obj

    def _g_np_dtype(self, q, n):
        pending = self._pending

        def dtype(obj, align=False, copy=False):
            if isinstance(obj, _Marker) and obj.name == "bfloat16":
                obj = ml_dtypes.bfloat16
            elif not isinstance(obj, str) or len(obj) > 16:
                raise _Refused(f"refuses numpy dtype {describe(obj)} (plain numeric dtypes only)")
            dt = np.dtype(obj, align=bool(align), copy=True)  # a fresh object: BUILD cannot touch numpy's own
            if not _plain(dt):
                raise _Refused(f"refuses numpy dtype {describe(obj)} (plain numeric dtypes only: no "
                               "object, structured, subarray or string dtypes)")
            pending[id(dt)] = dt
            return dt
        return dtype

    def _g_bfloat16(self, q, n):
        return _Marker("bfloat16")

    def _g_np_scalar(self, q, n):
        def scalar(dtype, data=None):
            if not _plain(dtype):
                raise _Refused("refuses a numpy scalar that is not of a plain numeric dtype")
            if not isinstance(data, (bytes, bytearray)) or len(data) != dtype.itemsize:
                raise _Corrupt("a numpy scalar whose data does not match its dtype")
            return np.frombuffer(data, dtype=dtype, count=1)[0]
        return scalar

    def _g_np_ndarray(self, q, n):
        return _Marker("ndarray")

    def _g_np_reconstruct(self, q, n):
        pending = self._pending

        def reconstruct(subtype, shape, typecode):
            if not (isinstance(subtype, _Marker) and subtype.name == "ndarray"):
                raise _Refused("refuses numpy _reconstruct of anything but numpy.ndarray")
            arr = np.ndarray((0,), np.uint8)
            pending[id(arr)] = arr
            return arr
        return reconstruct

    def _g_script_class(self, q, n):
        cls = self._ctx.script_classes.get(q)
        if cls is None:
            cls = type("ScriptObject", (ScriptObject,), {"qualname": q, "source": self._ctx.name,
                                                          "__module__": __name__})
            self._ctx.script_classes[q] = cls
        return cls


def _unknown_opcode(self):
    raise pickle.UnpicklingError("invalid load key (unknown pickle opcode)")


_Unpickler._dispatch = [pickle._Unpickler.dispatch.get(i, _unknown_opcode) for i in range(256)]
for _ops, _method in {
    (pickle.PUT,): _Unpickler._op_put, (pickle.BINPUT,): _Unpickler._op_binput,
    (pickle.LONG_BINPUT,): _Unpickler._op_long_binput, (pickle.MEMOIZE,): _Unpickler._op_memoize,
    (pickle.EXT1,): _Unpickler._op_ext1, (pickle.EXT2,): _Unpickler._op_ext2, (pickle.EXT4,): _Unpickler._op_ext4,
    (pickle.BYTEARRAY8,): _Unpickler._op_bytearray8,
    (pickle.APPEND,): _Unpickler._op_append, (pickle.APPENDS,): _Unpickler._op_appends,
    (pickle.SETITEM,): _Unpickler._op_setitem, (pickle.SETITEMS,): _Unpickler._op_setitems,
    (pickle.ADDITEMS,): _Unpickler._op_additems, (pickle.BUILD,): _Unpickler._op_build,
    (pickle.TUPLE,): _Unpickler._op_tuple, (pickle.TUPLE1,): _Unpickler._op_tuple1,
    (pickle.TUPLE2,): _Unpickler._op_tuple2, (pickle.TUPLE3,): _Unpickler._op_tuple3,
    (pickle.FROZENSET,): _Unpickler._op_frozenset, (pickle.DICT,): _Unpickler._op_dict,
    (pickle.REDUCE,): _Unpickler._op_reduce,
}.items():
    _Unpickler._dispatch[_ops[0][0]] = _method


def _check_items(items: Any, what: str) -> None:
    if not isinstance(items, (list, tuple)):
        raise _Corrupt(f"a {what} of a {type(items).__name__}, not of a list")


def _build_dtype(dt: np.dtype, state: Any) -> None:
    """BUILD of a fresh plain dtype: numpy's state tuple, accepted only in its plain form (byte order)."""
    ok = (isinstance(state, tuple) and len(state) == 8 and type(state[0]) is int and state[0] == 3
          and type(state[1]) is str and state[1] in "<>|=" and len(state[1]) == 1
          and all(x is None for x in state[2:5])
          and all(type(x) is int for x in state[5:]) and state[5] in (-1, dt.itemsize)
          and state[6] in (-1, dt.alignment) and state[7] == dt.flags)
    if not ok:
        raise _Refused(f"refuses numpy dtype state {describe(state)} (plain numeric dtypes only: no fields, "
                       "offsets or subarrays)")
    dt.__setstate__(state)
    if not _plain(dt):
        raise _Refused("refuses a numpy dtype that is not plain numeric after its state")


def _build_array(arr: np.ndarray, state: Any) -> None:
    """BUILD of a fresh ``_reconstruct`` array: ``(1, shape, dtype, is_fortran, raw bytes)``, sizes checked."""
    ok = (isinstance(state, tuple) and len(state) == 5 and type(state[0]) is int and state[0] == 1
          and isinstance(state[1], tuple)
          and len(state[1]) <= _MAX_NDIM and all(_is_int(s) and 0 <= s < _INT64 for s in state[1])
          and _plain(state[2]) and isinstance(state[3], (bool, int)) and isinstance(state[4], bytes))
    if not ok:
        raise _Refused("refuses a numpy array that is not of a plain numeric dtype with raw data")
    need = math.prod(state[1]) * state[2].itemsize
    if need != len(state[4]):
        raise _Corrupt(f"numpy array of shape {describe(state[1])} needs {need} bytes but holds {len(state[4])}")
    np.ndarray.__setstate__(arr, state)
    arr.flags.writeable = False


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
    if not (_is_int(offset) and 0 <= offset < _INT64 and isinstance(size, tuple) and isinstance(stride, tuple)
            and len(size) == len(stride) <= _MAX_NDIM and all(_is_int(s) and 0 <= s < _INT64 for s in size + stride)):
        raise _Corrupt(f"invalid tensor geometry (offset {describe(offset)}, size {describe(size)}, "
                       f"stride {describe(stride)})")
    for s, st in zip(size, stride):
        if s > 1 and st == 0:
            raise _Refused(f"refuses a tensor of size {list(size)} with stride {list(stride)}: stride 0 in a "
                           "dimension of size > 1 (an expanded view; save a contiguous copy)")
    flat = storage.array
    if flat is None:  # dry pass
        return None
    if not isinstance(flat, np.ndarray) or flat.ndim != 1:
        raise _Corrupt("a storage without data")
    n = math.prod(size)
    if n == 0:
        out = np.empty(size, flat.dtype)
        out.flags.writeable = False
        return out
    extent = offset + 1 + sum((s - 1) * st for s, st in zip(size, stride))
    if extent > flat.size:
        raise _Corrupt(f"a tensor of size {list(size)} at offset {offset} with stride {list(stride)} needs "
                       f"{extent} elements but its storage {describe(storage.key)} has {flat.size} "
                       "(truncated or corrupted)")
    expected, contiguous = 1, True
    for s, st in zip(reversed(size), reversed(stride)):
        if s != 1 and st != expected:
            contiguous = False
            break
        expected *= s
    if contiguous:
        return flat[offset:offset + n].reshape(size)
    item = flat.dtype.itemsize
    ctx.charge(n * item, f"a copy of the non-contiguous tensor of size {list(size)}")
    view = np.lib.stride_tricks.as_strided(flat[offset:], shape=size, strides=[st * item for st in stride],
                                           writeable=False)
    out = np.ascontiguousarray(view)
    out.flags.writeable = False
    return out


def _storage_view(ctx: _Context, buf, offset: int, dtype: np.dtype, numel: int, big_endian: bool) -> np.ndarray:
    """Zero-copy 1-D view of ``numel`` elements of ``dtype`` at byte ``offset`` of ``buf``."""
    if big_endian and dtype.itemsize > 1:  # the one case that copies (to native byte order)
        ctx.charge(numel * dtype.itemsize, "a big-endian storage converted to native byte order")
        out = np.frombuffer(buf, dtype=dtype.newbyteorder(">"), count=numel, offset=offset).astype(dtype)
        out.flags.writeable = False
        return out
    return np.frombuffer(buf, dtype=dtype, count=numel, offset=offset)


def _parse_pid(pid: Any, legacy: bool) -> tuple[np.dtype, str, int, Any]:
    n = 6 if legacy else 5
    if not (isinstance(pid, tuple) and len(pid) == n and pid[0] == "storage"):
        raise _Corrupt(f"unsupported persistent id {describe(pid)}")
    _, stype, key, _location, numel = pid[:5]
    if not isinstance(stype, _StorageType) or _STORAGE_DTYPES.get(stype.name) != stype.dtype:
        raise _Corrupt(f"persistent id with storage type {describe(stype)}")
    if not isinstance(key, str) or not _is_int(numel) or not 0 <= numel < _INT64:
        raise _Corrupt(f"invalid storage persistent id {describe(pid)}")
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
        raise _Corrupt(f"zip entry {describe(info.filename)}: bad local header (corrupted archive)")
    name_len, extra_len = struct.unpack_from("<HH", buf, h + 26)
    return h + 30 + name_len + extra_len


_DRIVE = re.compile(r"^[A-Za-z]:")


def _check_members(infos: list[zipfile.ZipInfo], ctx: _Context) -> None:
    """Refuse unsafe or duplicate member names (before anything is read)."""
    seen: set[str] = set()
    ctx.charge(512 * len(infos), "the zip directory")
    for info in infos:
        name = info.filename
        if name in seen:
            raise _Refused(f"zip member {describe(name)} appears twice (a tampered archive)")
        seen.add(name)
        if name.startswith("/") or "\\" in name or _DRIVE.match(name) or ".." in name.split("/"):
            raise _Refused(f"zip member name {describe(name)} is absolute or climbs out with '..'")


def _check_member(info: zipfile.ZipInfo) -> None:
    """Compression method and declared sizes of a member about to be read."""
    if info.compress_type == zipfile.ZIP_STORED:
        if info.compress_size != info.file_size:
            raise _Corrupt(f"stored zip member {describe(info.filename)} declares {info.file_size} bytes "
                           f"but occupies {info.compress_size}")
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        if info.file_size > _MAX_SMALL_MEMBER and info.file_size > _MAX_RATIO * info.compress_size:
            raise _Refused(f"zip member {describe(info.filename)} inflates {info.compress_size} bytes to "
                           f"{info.file_size} (more than {_MAX_RATIO}-fold: a zip bomb?)")
    else:
        raise _Corrupt(f"zip member {describe(info.filename)} uses compression method {info.compress_type} "
                       "(only stored or deflated members are read)")


def _read_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, ctx: _Context) -> bytes:
    """The bytes of a member: checked first, charged, read up to its declared size, CRC-checked."""
    _check_member(info)
    ctx.charge(info.file_size, f"zip member {describe(info.filename)}")
    try:
        with zf.open(info) as member:
            data = member.read(info.file_size)
            if len(data) != info.file_size or member.read(1):
                raise _Corrupt(f"zip member {describe(info.filename)} does not hold its declared "
                               f"{info.file_size} bytes (truncated or corrupted)")
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, zlib.error, RuntimeError, NotImplementedError) as e:
        raise _Corrupt(f"corrupted zip member {describe(info.filename)} ({e})") from None
    return data


def _load_zip(buf, fileobj, ctx: _Context) -> Any:
    """A ``torch.save`` / TorchScript zip archive held in ``buf`` (mmap or bytes)."""
    try:
        zf = zipfile.ZipFile(fileobj)
        infolist = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, EOFError, ValueError) as e:
        raise _Corrupt(f"truncated or corrupted zip archive (zip central directory not readable: {e})") from None
    _check_members(infolist, ctx)
    infos = {i.filename: i for i in infolist}
    pkls = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
    if not pkls:
        if any(n.endswith("model.json") for n in infos):
            raise _Corrupt("TorchScript archive of the pre-1.4 kind (model.json) is not supported")
        raise _Corrupt("zip archive without <prefix>/data.pkl: not a torch.save or TorchScript file")
    first = next(iter(infos)).split("/", 1)[0] + "/data.pkl"
    pkl_name = first if first in pkls else pkls[0]
    prefix = pkl_name[: -len("data.pkl")]
    data_pkl = _read_member(zf, infos[pkl_name], ctx)
    byteorder = "little"
    if prefix + "byteorder" in infos:
        info = infos[prefix + "byteorder"]
        if info.file_size > 16:
            raise _Corrupt(f"zip member {describe(info.filename)} holds {info.file_size} bytes, not a byte order")
        byteorder = _read_member(zf, info, ctx).decode("ascii", "replace").strip()
    if byteorder not in ("little", "big"):
        raise _Corrupt(f"unknown byteorder {describe(byteorder)}")
    big = byteorder == "big"
    cache: dict[tuple[str, np.dtype], _Storage] = {}
    checked: set[str] = set()

    def load_storage(pid):
        dtype, key, numel, _ = _parse_pid(pid, legacy=False)
        hit = cache.get((key, dtype))
        if hit is not None:
            if hit.array.size < numel:
                raise _Corrupt(f"storage {describe(key)} is used with {numel} elements but holds {hit.array.size}")
            return hit
        entry = f"{prefix}data/{key}"
        info = infos.get(entry)
        if info is None:
            raise _Corrupt(f"storage entry {describe(entry)} is missing from the archive")
        nbytes = numel * dtype.itemsize
        if info.file_size < nbytes:
            raise _Corrupt(f"storage {describe(entry)} holds {info.file_size} bytes but {numel} x {dtype} needs "
                           f"{nbytes} (truncated or corrupted)")
        if info.compress_type == zipfile.ZIP_STORED:
            _check_member(info)
            off = _local_data_offset(buf, info)
            if off + info.file_size > len(buf):
                raise _Corrupt(f"storage {describe(entry)} runs past the end of the file (truncated)")
            if ctx.verify and entry not in checked:
                if zlib.crc32(memoryview(buf)[off:off + info.file_size]) != info.CRC:
                    raise _Corrupt(f"storage {describe(entry)} fails its CRC-32 check (corrupted file)")
                checked.add(entry)
            arr = _storage_view(ctx, buf, off, dtype, numel, big)
        else:  # re-zipped with compression: read (and CRC-check) a copy
            arr = _storage_view(ctx, _read_member(zf, info, ctx), 0, dtype, numel, big)
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
        except (_Corrupt, pickle.UnpicklingError, EOFError, ValueError, TypeError, KeyError, IndexError,
                struct.error) as e:
            raise _Corrupt(f"truncated or corrupted legacy torch stream (reading {what}: "
                           f"{type(e).__name__}: {e})") from None

    if plain("magic number") != _LEGACY_MAGIC:
        raise _Corrupt("not a legacy torch stream (bad magic number)")
    proto = plain("protocol version")
    if proto != _LEGACY_PROTOCOL:
        raise _Corrupt(f"unsupported legacy torch protocol version {describe(proto)}")
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
            raise _Corrupt(f"storage {describe(key)} is used with two dtypes")
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
            raise _Corrupt(f"storage key {describe(key)} is listed but never used (corrupted)")
        dtype = seen[key]
        if pos + 8 > len(buf):
            raise _Corrupt(f"storage {describe(key)} is missing (truncated)")
        (count,) = struct.unpack_from(">q" if big else "<q", buf, pos)
        nbytes = count * dtype.itemsize
        if count < max(numels[key], 0) or pos + 8 + nbytes > len(buf):
            raise _Corrupt(f"storage {describe(key)} is shorter than its {numels[key]} elements "
                           "(truncated or corrupted)")
        roots[key] = _storage_view(ctx, buf, pos + 8, dtype, count, big)
        pos += 8 + nbytes
    missing = set(seen) - set(roots)
    if missing:
        raise _Corrupt(f"storages {describe(sorted(missing))} have no data (corrupted)")
    views: dict[str, _Storage] = {}

    def load_storage(pid):
        dtype, key, _, view = _parse_pid(pid, legacy=True)
        root = roots[key]
        if view is None:
            return views.setdefault(key, _Storage(root, dtype, key))
        if not (isinstance(view, tuple) and len(view) == 3 and isinstance(view[0], str)
                and _is_int(view[1]) and _is_int(view[2]) and view[1] >= 0 and view[2] >= 0
                and view[1] + view[2] <= root.size):
            raise _Corrupt(f"invalid storage view {describe(view)} of storage {describe(key)}")
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


def _children(obj: Any):
    """The objects a loaded container refers to (None for leaves)."""
    if isinstance(obj, dict):
        extra = vars(obj).values() if type(obj) is not dict and vars(obj) else ()
        return itertools.chain(itertools.chain.from_iterable(obj.items()), extra)
    if isinstance(obj, (list, tuple, set, frozenset)):
        return iter(obj)
    if isinstance(obj, PersistentObject):
        return iter((obj.state, obj.version))
    if isinstance(obj, TFNetwork):
        return iter((obj.state,))
    if isinstance(obj, (ScriptObject, Namespace)):
        return iter(vars(obj).values())
    return None


def _check_graph(root: Any, ctx: _Context) -> None:
    """Refuse a loaded object with a reference cycle, nesting deeper than ``_MAX_DEPTH``, or shared
    references that expand to more than ``_MAX_EXPANSION + 8 x opcodes`` nodes (a "billion laughs"
    that any walk or repr of the result would expand). Iterative; linear in the distinct objects."""
    limit = _MAX_EXPANSION + 8 * ctx.ops
    done: dict[int, int] = {}  # id -> expanded size
    children = _children(root)
    if children is None:
        return
    active = {id(root)}
    stack = [[root, children, 1]]
    while stack:
        frame = stack[-1]
        child = next(frame[1], frame)  # the frame itself marks the end
        if child is frame:
            stack.pop()
            active.discard(id(frame[0]))
            done[id(frame[0])] = frame[2]
            if stack:
                stack[-1][2] += frame[2]
                if stack[-1][2] > limit:
                    break
            continue
        size = done.get(id(child))
        if size is not None:
            frame[2] += size
            if frame[2] > limit:
                break
            continue
        grandchildren = _children(child)
        if grandchildren is None:
            frame[2] += 1
            continue
        if id(child) in active:
            raise _Refused(f"refuses an object that contains itself (a reference cycle through a "
                           f"{type(child).__name__})")
        if len(stack) >= _MAX_DEPTH:
            raise _Refused(f"refuses objects nested more than {_MAX_DEPTH} levels deep")
        active.add(id(child))
        stack.append([child, grandchildren, 1])
    else:
        return
    raise _Refused(f"refuses an object whose shared references expand to more than {limit:,} nodes "
                   "(a 'billion laughs' structure)")


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
    ``dnnlib.util.EasyDict`` :class:`EasyDict`, ``argparse.Namespace`` :class:`Namespace`,
    TensorFlow ``dnnlib.tflib.network.Network`` :class:`TFNetwork`.
    The result has no reference cycles, nests at most ``_MAX_DEPTH`` levels and is small when
    expanded, so it can be walked recursively and printed.

    ``verify``: check the CRC-32 of every zip storage used (one pass over the data).

    Raises :class:`TorchFileError` (message: ``'<path>: <problem>'``) for a missing, empty,
    truncated, corrupted, hostile or non-PyTorch file and for any global outside
    :data:`ALLOWED_GLOBALS`.
    """
    name = os.fspath(path)
    if isinstance(name, bytes):
        name = os.fsdecode(name)
    try:
        f = open(name, "rb")
    except FileNotFoundError:
        raise TorchFileError(f"{name}: file not found") from None
    except IsADirectoryError:
        raise TorchFileError(f"{name}: is a directory, not a PyTorch file") from None
    except OSError as e:
        raise TorchFileError(f"{name}: cannot open ({e.strerror or e})") from None
    with f:
        size = os.fstat(f.fileno()).st_size
        ctx = _Context(name, verify, size)
        if size == 0:
            raise ctx.error("empty file (0 bytes)")
        head = f.read(512)
        f.seek(0)
        try:  # the one reading call: whatever a hostile stream triggers becomes a TorchFileError
            if head[:4] in (b"PK\x03\x04", b"PK\x05\x06"):
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                obj = _load_zip(mm, f, ctx)
            elif _legacy_magic_prefix(head):
                mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
                obj = _legacy_stream(mm, mm, ctx)
            elif len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= pickle.HIGHEST_PROTOCOL:
                obj = _unpickle(mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ), ctx, None)
            else:
                raise ctx.error(f"not a PyTorch file: looks like {_describe_foreign(head)} "
                                "(expected a zip archive or a pickle)")
            _check_graph(obj, ctx)
        except TorchFileError:
            raise
        except (_Refused, _Corrupt) as e:
            raise ctx.error(str(e)) from None
        except EOFError:
            raise ctx.error("truncated file (pickle data ends early)") from None
        except pickle.UnpicklingError as e:
            what = "truncated file" if "truncated" in str(e) or "exhausted" in str(e) else "corrupted pickle data"
            raise ctx.error(f"{what} ({e})") from None
        except MemoryError:
            raise ctx.error("refused: reading it would exhaust memory (corrupted or malicious file)") from None
        except RecursionError:
            raise ctx.error("refused: nested too deeply (corrupted or malicious file)") from None
        except (ValueError, TypeError, IndexError, KeyError, AttributeError, OverflowError) as e:
            # what CPython's unpickler raises running a damaged opcode stream (the pickle docs' list; the types
            # the fuzz tests meet: ValueError, UnicodeDecodeError, TypeError, IndexError, AttributeError)
            raise ctx.error(f"corrupted or unsupported file ({type(e).__name__}: {e})") from None
    return obj


# --------------------------------------------------------------------------------------
# Module helpers
# --------------------------------------------------------------------------------------
def _module_error(node, where: str, problem: str) -> TorchFileError:
    return TorchFileError(_one_line(f"{node.source}: module {where or '<root>'!r}: {problem}"))


def module_state_dict(obj: PersistentObject | ScriptObject, *, include_non_persistent: bool = False
                      ) -> dict[str, np.ndarray]:
    """Flatten an ``nn.Module``-like object into torch ``state_dict`` names -> arrays.

    PersistentObject (NVIDIA): walks ``_parameters``, ``_buffers`` (without those in
    ``_non_persistent_buffers_set``, as torch does, unless ``include_non_persistent``) and
    ``_modules`` recursively, skipping None entries; e.g. ``'mapping.fc0.weight'`` ->
    ``[w_dim, z_dim]``. ScriptObject (TorchScript): walks its attribute dict, keeping
    arrays and recursing into ScriptObject attributes (parameters, buffers and tensor
    attributes are indistinguishable there). Order: as stored. A malformed module (wrong
    types, a cycle) raises :class:`TorchFileError` naming the file and the module.
    """
    out: dict[str, np.ndarray] = {}

    def walk(node, prefix: str, path: tuple):
        where = prefix.rstrip(".")
        if id(node) in path:
            raise _module_error(node, where, "contains itself (module cycle)")
        path = path + (id(node),)
        if isinstance(node, PersistentObject):
            st = node.state
            nonpersist = st.get("_non_persistent_buffers_set")
            nonpersist = () if nonpersist is None else nonpersist
            if not (isinstance(nonpersist, (set, frozenset, list, tuple))
                    and all(isinstance(x, str) for x in nonpersist)):
                raise _module_error(node, where, "_non_persistent_buffers_set is not a set of names")
            for group in ("_parameters", "_buffers", "_modules"):
                entries = st.get(group)
                entries = {} if entries is None else entries
                if not isinstance(entries, dict) or not all(isinstance(k, str) for k in entries):
                    raise _module_error(node, where, f"{group} is not a dict with string keys")
                for k, v in entries.items():
                    if v is None or (group == "_buffers" and k in nonpersist and not include_non_persistent):
                        continue
                    if group == "_modules":
                        if not isinstance(v, PersistentObject):
                            raise _module_error(node, where, f"submodule {describe(k)} is a {type(v).__name__}")
                        walk(v, f"{prefix}{k}.", path)
                    elif not isinstance(v, np.ndarray):
                        raise _module_error(node, where, f"{describe(prefix + k)} is a {type(v).__name__}, "
                                                         "not a tensor")
                    else:
                        out[prefix + k] = v
        elif isinstance(node, ScriptObject):
            if not isinstance(node.state, dict):
                return
            for k, v in node.state.items():
                if not isinstance(k, str):
                    raise _module_error(node, where, f"attribute name {describe(k)} is not a string")
                if isinstance(v, np.ndarray):
                    out[prefix + k] = v
                elif isinstance(v, ScriptObject):
                    walk(v, f"{prefix}{k}.", path)
        else:
            raise TypeError(f"module_state_dict: {where or 'object'} is a "
                            f"{type(node).__name__}, not a PersistentObject or ScriptObject")

    walk(obj, "", ())
    return out


_CONFIG_LEAVES = (type(None), bool, int, float, complex, str, bytes, np.generic, np.ndarray)


def init_kwargs(obj: PersistentObject) -> dict:
    """The ``_init_kwargs`` of a PersistentObject (the constructor config) as plain nested dicts.

    EasyDicts and OrderedDicts become dicts, numpy scalars stay numpy scalars; e.g. for a
    stylegan2-ada Generator ``{'z_dim': 512, 'w_dim': 512, 'mapping_kwargs': {...}, ...}``.
    Only config values are accepted (dicts with string keys, lists, tuples, None, bools,
    numbers, strings, arrays); anything else (modules, sets, ...) raises :class:`TorchFileError` naming the file and key.
    """
    if not isinstance(obj, PersistentObject):
        raise TypeError(f"init_kwargs: expected a PersistentObject, got {type(obj).__name__}")
    kwargs = obj.state.get("_init_kwargs")
    if kwargs is None:
        return {}

    def plain(v, where: str):
        if isinstance(v, dict):
            if not all(isinstance(k, str) for k in v):
                raise _module_error(obj, "", f"{where} has a key that is not a string")
            return {k: plain(x, f"{where}[{describe(k)}]") for k, x in v.items()}
        if isinstance(v, list):
            return [plain(x, f"{where}[{i}]") for i, x in enumerate(v)]
        if isinstance(v, tuple):
            return tuple(plain(x, f"{where}[{i}]") for i, x in enumerate(v))
        if not isinstance(v, _CONFIG_LEAVES):
            raise _module_error(obj, "", f"{where} is a {type(v).__name__}, not a config value")
        return v

    if not isinstance(kwargs, dict):
        raise _module_error(obj, "", f"_init_kwargs is a {type(kwargs).__name__}, not a dict")
    return plain(kwargs, "_init_kwargs")
