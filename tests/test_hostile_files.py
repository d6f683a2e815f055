"""Hostile and damaged files against jaxedit.io.torchfile ("prove it", issue 14).

1. A hostile corpus, written here by hand (pickle opcodes, zipfile; no torch): each class is
   read in its own forked child of a fresh interpreter (address space capped at 4 GB) and must
   be refused with a TorchFileError whose one-line message names the file, within 10 s and
   1 GB of peak-RSS growth, without running anything (a marker file) or importing anything
   the file names (a module on the path that would create the marker).
2. The CLI on a few of them: exit 1, one line naming the file, nothing written.
3. Property-based fuzzing (hypothesis) of the reference fixtures: byte flips and truncations
   either load to exactly the same result (formats with checksums) or a well-formed result
   that the module helpers and converters accept or refuse with a JaxeditError (plain
   pickles), or raise a JaxeditError naming the file; never another exception, crash or hang.

``build_corpus`` is shared with experiments/bench_hostile_files.py.
"""

from __future__ import annotations

import builtins
import contextlib
import copyreg
import io
import json
import os
import pickle
import re
import signal
import struct
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import fixture
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_torchfile import (
    Reduce,
    call,
    frag,
    glob,
    legacy_stream,
    pdict,
    pid,
    program,
    tensor,
    torch_zip,
)

from jaxedit.converters import clip as clip_converter
from jaxedit.converters import stylegan2 as sg2
from jaxedit.edits import formats
from jaxedit.errors import InputError, JaxeditError
from jaxedit.io import arrays
from jaxedit.io import torchfile as tf

ROOT = Path(__file__).resolve().parents[1]
TIME_LIMIT_S = 10.0
MEMORY_LIMIT_MIB = 1024

# argv: READER_MODULE ALARM_S PATH...; reads each path with READER_MODULE.load in a forked child
# of one interpreter (reader imported once; address space capped at 4 GB; killed by SIGALRM after
# ALARM_S) and prints {path: outcome, seconds, peak-RSS growth in MiB | the signal or exit code}.
RUNNER = r"""
import importlib, json, os, resource, signal, sys, time
from jaxedit.errors import JaxeditError
reader = importlib.import_module(sys.argv[1])
results = {}
for path in sys.argv[3:]:
    r, w = os.pipe()
    child = os.fork()
    if child == 0:
        os.close(r)
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))
        signal.alarm(int(sys.argv[2]))
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        t = time.perf_counter()
        try:
            reader.load(path)
            out = {"refused": False}
        except JaxeditError as e:
            out = {"refused": True, "type": type(e).__name__, "message": str(e)[:2000]}
        out["seconds"] = time.perf_counter() - t
        out["peak_mib"] = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        os.write(w, json.dumps(out).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        data = f.read()
    _, status = os.waitpid(child, 0)
    results[path] = json.loads(data) if data and os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0 else {
        "crashed": -os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)}
print(json.dumps(results))
"""


CLASSES = (
    # code execution
    "reduce_os_system", "reduce_builtins_eval", "reduce_subprocess", "global_arbitrary_module",
    "persistent_id_builtins", "nvidia_reconstructor_foreign_class", "ext_code",
    # zip archives
    "zip_slip", "zip_absolute_name", "zip_duplicate_member", "zip_bomb", "zip_size_understated",
    "zip_storage_size_lie", "truncated_zip",
    # pickle machinery
    "truncated_pickle", "memo_index_huge", "bytes_length_huge", "bytearray_length_huge", "deep_nesting_lists",
    "deep_nesting_tuple_key", "reference_cycle", "set_flood", "hash_collision_flood", "build_on_tensor",
    "nested_streams_deep",
    # tensors and dtypes
    "tensor_huge_sizes", "tensor_overlapping_huge", "tensor_stride_zero", "tensor_negative_stride",
    "structured_dtype_oob_offset", "plain_dtype_built_with_fields", "object_dtype",
    # billion laughs
    "billion_laughs_in_message", "billion_laughs_in_pid", "billion_laughs_in_zip_pid",
    "billion_laughs_in_init_kwargs",
)


def billion_laughs(levels: int = 30) -> bytes:
    """Opcodes pushing a list of 2 references to a list of 2 references to ...: 2**levels leaves."""
    out = frag("lol") + b"q\x00" + b"0"  # BINPUT 0, POP
    for i in range(levels):  # memo[i + 1] = [memo[i], memo[i]]
        out += b"](h" + bytes([i]) + b"h" + bytes([i]) + b"eq" + bytes([i + 1]) + b"0"
    return out + b"h" + bytes([levels])


def persistent_module(state: bytes, src: str = "# placeholder") -> bytes:
    meta = pdict([(frag("type"), frag("class")), (frag("version"), frag(6)), (frag("module_src"), frag(src)),
                  (frag("class_name"), frag("Generator")), (frag("state"), state)])
    return call(glob("torch_utils.persistence", "_reconstruct_persistent_obj"), meta)


def numpy_array(dtype_ops: bytes, shape: tuple, raw: bytes) -> bytes:
    """numpy's own pickle of an array: _reconstruct(ndarray, (0,), b'b') + BUILD (1, shape, dtype, False, raw)."""
    new = call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), frag((0,)), frag(b"b"))
    return new + b"(" + frag(1) + frag(shape) + dtype_ops + frag(False) + frag(raw) + b"tb"


def dtype_ops(spec: str, state: bytes | None = None) -> bytes:
    """numpy.dtype(spec, False, True), then BUILD with ``state`` (opcodes) if given."""
    ops = call(glob("numpy", "dtype"), frag(spec), frag(False), frag(True))
    return ops + (state + b"b" if state is not None else b"")


def deflated_zip(path: Path, members: list[tuple[str, bytes | int]], compress: bool = True) -> Path:
    """A zip of members; an int stands for that many zero bytes, written in chunks."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED) as z:
        for name, data in members:
            if isinstance(data, int):
                with z.open(name, "w", force_zip64=True) as m:
                    chunk = bytes(1 << 20)
                    for _ in range(data >> 20):
                        m.write(chunk)
            else:
                z.writestr(name, data)
    return path


def build_corpus(d: Path, marker: Path) -> dict[str, tuple[Path, str]]:
    """Write every hostile class into ``d``: name -> (file, a fragment its refusal must contain).

    Nothing in the corpus may create ``marker``; ``d`` also gets ``jaxedit_evil_mod.py``, a module
    that creates the marker when imported (put ``d`` on the reader's PYTHONPATH)."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "jaxedit_evil_mod.py").write_text(f"open({str(marker)!r}, 'w').close()\ndef f(*a): pass\n")
    out: dict[str, tuple[Path, str]] = {}

    def put(name: str, data: bytes, expect: str, suffix: str = ".pkl") -> None:
        path = d / (name + suffix)
        path.write_bytes(data)
        out[name] = (path, expect)

    def put_zip(name: str, data_pkl: bytes, storages: list[tuple[str, bytes]], expect: str) -> None:
        out[name] = (torch_zip(d / (name + ".pt"), data_pkl, storages), expect)

    touch = f"touch {marker}"
    # -- code execution: REDUCE of dangerous callables, arbitrary globals, persistence tricks
    put("reduce_os_system", pickle.dumps({"G_ema": Reduce(os.system, (touch,))}, protocol=2),
        f"refuses to load global '{os.system.__module__}.system'")
    put("reduce_builtins_eval", pickle.dumps(Reduce(builtins.eval, (f"open({str(marker)!r},'w')",)), protocol=4),
        "refuses to load global 'builtins.eval'")
    put("reduce_subprocess", pickle.dumps(Reduce(subprocess.call, (["touch", str(marker)],)), protocol=4),
        "refuses to load global 'subprocess.call'")
    put("global_arbitrary_module", program(call(glob("jaxedit_evil_mod", "f"), frag(1))),
        "refuses to load global 'jaxedit_evil_mod.f'")
    evil_pid = b"(" + frag("storage") + glob("builtins", "exec") + frag("0") + frag("cpu") + frag(1) + b"tQ"
    put_zip("persistent_id_builtins", program(tensor(evil_pid, 0, (1,), (1,))), [("0", bytes(4))],
            "refuses to load global 'builtins.exec'")
    state = pdict([(frag("_modules"), pdict([(frag("mapping"), call(glob("training.networks", "MappingNetwork")))]))])
    put("nvidia_reconstructor_foreign_class", program(pdict([(frag("G_ema"), persistent_module(
        state, f"import os\nos.system({touch!r})\n"))])), "refuses to load global 'training.networks.MappingNetwork'")
    copyreg.add_extension("posix", "system", 0x7A51)
    try:
        put("ext_code", pickle.dumps(Reduce(os.system, (touch,)), protocol=2), "extension code")
    finally:
        copyreg.remove_extension("posix", "system", 0x7A51)
    # -- zip archives
    pkl = program(pdict([(frag("w"), tensor(pid("FloatStorage", "0", 4, legacy=False), 0, (4,), (1,)))]))
    out["zip_slip"] = (deflated_zip(d / "zip_slip.pt", [("archive/data.pkl", pkl), ("archive/data/0", bytes(16)),
                                                        ("../../etc/cron.d/evil", b"x")], compress=False),
                       "climbs out with '..'")
    out["zip_absolute_name"] = (deflated_zip(d / "zip_absolute_name.pt", [
        ("archive/data.pkl", pkl), ("archive/data/0", bytes(16)), ("/tmp/evil", b"x")], compress=False), "absolute")
    with warnings.catch_warnings():  # zipfile warns "Duplicate name": that is the point
        warnings.simplefilter("ignore")
        out["zip_duplicate_member"] = (deflated_zip(d / "zip_duplicate_member.pt", [
            ("archive/data.pkl", pkl), ("archive/data/0", bytes(16)), ("archive/data.pkl", program(frag(1)))],
            compress=False), "appears twice")
    bomb_pkl = program(pdict([(frag("w"), tensor(pid("FloatStorage", "0", 1 << 26, legacy=False), 0,
                                                  (1 << 26,), (1,)))]))
    out["zip_bomb"] = (deflated_zip(d / "zip_bomb.pt", [("archive/data.pkl", bomb_pkl), ("archive/data/0", 1 << 28)]),
                       "zip bomb")
    lie = bytearray(deflated_zip(d / "zip_size_understated.pt", [("archive/data.pkl", 1 << 26)]).read_bytes())
    cd = lie.index(b"PK\x01\x02")  # central directory entry of data.pkl: its uncompressed size says 100 bytes
    lie[cd + 24:cd + 28] = struct.pack("<I", 100)
    (d / "zip_size_understated.pt").write_bytes(bytes(lie))
    out["zip_size_understated"] = (d / "zip_size_understated.pt", "corrupted zip member")
    put_zip("zip_storage_size_lie", program(tensor(pid("FloatStorage", "0", 1 << 40, legacy=False), 0,
                                                   (1 << 40,), (1,))), [("0", bytes(16))], "truncated or corrupted")
    good = torch_zip(d / "good.pt", pkl, [("0", np.arange(4, dtype=np.float32).tobytes())]).read_bytes()
    (d / "good.pt").unlink()
    put("truncated_zip", good[: len(good) // 2], "truncated or corrupted zip", ".pt")
    put("truncated_pickle", pickle.dumps({"a": list(range(1000))}, protocol=2)[:100], "truncated")
    # -- pickle machinery
    put("memo_index_huge", b"\x80\x02Nr\x00\x00\x00\x10.", "memo index 268435456")
    put("bytes_length_huge", b"\x80\x04\x8e" + struct.pack("<Q", 1 << 40) + b"xx.", "truncated")
    put("bytearray_length_huge", b"\x80\x05\x96" + struct.pack("<Q", 1 << 33) + b"xx.", "truncated")
    put("deep_nesting_lists", b"\x80\x02" + b"(" * 200_000 + b"]" + b"l" * 200_000 + b".", "nested more than")
    put("deep_nesting_tuple_key", b"\x80\x02}" + b"N" + b"\x85" * 200_000 + b"Ns.", "nested more than")
    put("reference_cycle", b"\x80\x02]q\x00h\x00a.", "reference cycle")
    put("set_flood", b"\x80\x04(" + b"\x8f" * 2_000_000 + b"l.", "refuses to materialize")
    p61 = (1 << 61) - 1  # the ints k * p61 all hash to 0: inserting n of them costs n**2 / 2 comparisons
    keys = b"".join(b"\x8a\x0b" + (k * p61).to_bytes(11, "little", signed=True) + b"K\x00" for k in range(1, 100_000))
    put("hash_collision_flood", b"\x80\x02}(" + keys + b"u.", "hash-collision flood")
    put("build_on_tensor", program(tensor(call(glob("torch.storage", "_load_from_bytes"), frag(
        legacy_stream(program(pid("FloatStorage", "k", 4)), [("k", np.zeros(4, np.float32))]))), 0, (4,), (1,))
        + b"(" + b"}" + pdict([(frag("strides"), frag((1 << 40,)))]) + b"tb"), "refuses to set the state")
    inner = legacy_stream(program(pid("FloatStorage", "k", 4)), [("k", np.zeros(4, np.float32))])
    for _ in range(4):
        inner = legacy_stream(program(call(glob("torch.storage", "_load_from_bytes"), frag(inner))), [])
    put("nested_streams_deep", program(call(glob("torch.storage", "_load_from_bytes"), frag(inner))),
        "nested too deeply")
    # -- tensor geometry against its storage
    put_zip("tensor_huge_sizes", program(tensor(pid("FloatStorage", "0", 4, legacy=False), 0, (1 << 20, 1 << 20),
                                                (1 << 20, 1))), [("0", bytes(16))], "needs")
    put_zip("tensor_overlapping_huge", program(tensor(pid("FloatStorage", "0", 1 << 17, legacy=False), 0,
                                                      (1 << 16, 1 << 16), (1, 1))), [("0", bytes(1 << 19))],
            "refuses to materialize")
    put_zip("tensor_stride_zero", program(tensor(pid("FloatStorage", "0", 1, legacy=False), 0, (1 << 30,), (0,))),
            [("0", bytes(4))], "stride 0")
    put_zip("tensor_negative_stride", program(tensor(pid("FloatStorage", "0", 4, legacy=False), 3, (4,), (-1,))),
            [("0", bytes(16))], "invalid tensor geometry")
    # -- numpy dtypes
    fields = b"(" + frag(3) + frag("|") + b"N" + frag(("a",)) + pdict([(frag("a"), b"(" + dtype_ops("f8") + frag(
        1 << 40) + b"t")]) + frag(8) + frag(1) + frag(16) + b"t"
    put("structured_dtype_oob_offset", program(numpy_array(dtype_ops("V8", fields), (4,), bytes(32))),
        "refuses numpy dtype 'V8'")
    put("plain_dtype_built_with_fields", program(numpy_array(dtype_ops("f8", fields), (4,), bytes(32))),
        "refuses numpy dtype state")
    put("object_dtype", pickle.dumps(np.array([1, "x"], dtype=object), protocol=2), "refuses numpy dtype 'O")
    # -- billion laughs where messages and config are made
    laughs = billion_laughs()
    put("billion_laughs_in_message", program(call(glob("numpy", "dtype"), laughs)), "refuses numpy dtype [")
    put("billion_laughs_in_pid", legacy_stream(program(b"(" + laughs + b"tQ"), []), "unsupported persistent id (",
        ".pt")
    put_zip("billion_laughs_in_zip_pid", program(b"(" + frag("storage") + laughs + frag("0") + frag("cpu")
                                                 + frag(1) + b"tQ"), [], "storage type [")
    kw = pdict([(frag("_init_kwargs"), pdict([(frag("z_dim"), frag(8)), (frag("mapping_kwargs"), laughs)])),
                (frag("_parameters"), pdict([])), (frag("_buffers"), pdict([])), (frag("_modules"), pdict([]))])
    put("billion_laughs_in_init_kwargs", program(pdict([(frag("G_ema"), persistent_module(kw))])), "billion laughs")
    return out


def run_reader(paths: list[Path], workdir: Path, reader: str = "jaxedit.io.torchfile",
               alarm_s: int = 60) -> dict[str, dict]:
    """``reader.load`` of each path in a forked child of one fresh interpreter (cwd and first on its
    PYTHONPATH: ``workdir``): str(path) -> outcome, seconds, peak-RSS growth (MiB) or crash."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(workdir), str(ROOT)]))
    res = subprocess.run([sys.executable, "-c", RUNNER, reader, str(alarm_s), *map(str, paths)],
                         capture_output=True, text=True, timeout=120 + alarm_s * len(paths), env=env, cwd=workdir,
                         check=False)
    assert res.returncode == 0, res.stderr[-2000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """(directory, marker, {class: (file, expected fragment)}, {class: outcome})."""
    d = tmp_path_factory.mktemp("hostile")
    marker = d / "PWNED"
    files = build_corpus(d, marker)
    outcomes = run_reader([p for p, _ in files.values()], d)
    return d, marker, files, {name: outcomes[str(p)] for name, (p, _) in files.items()}


def test_corpus_covers_every_class(corpus):
    assert sorted(corpus[2]) == sorted(CLASSES)


@pytest.mark.parametrize("name", CLASSES)
def test_hostile_file_refused(corpus, name):
    _, marker, files, outcomes = corpus
    path, expect = files[name]
    out = outcomes[name]
    assert "crashed" not in out, f"{name}: the reader died ({out})"
    assert out["refused"] and out["type"] == "TorchFileError", out
    msg = out["message"]
    assert msg.startswith(f"{path}: ") and "\n" not in msg and len(msg) <= 400, msg
    assert expect in msg, msg
    assert out["seconds"] < TIME_LIMIT_S and out["peak_mib"] < MEMORY_LIMIT_MIB, out
    assert not marker.exists()


def test_extension_cache_is_not_trusted(tmp_path):
    """copyreg's process-wide cache may hold a real function for a code; the reader never uses it."""
    marker = tmp_path / "PWNED"
    copyreg.add_extension("posix", "system", 0x7A52)
    try:
        copyreg._extension_cache[0x7A52] = os.system
        path = tmp_path / "ext_cached.pkl"
        path.write_bytes(pickle.dumps(Reduce(os.system, (f"touch {marker}",)), protocol=2))
        with pytest.raises(tf.TorchFileError, match="refuses to load global 'posix.system'"):
            tf.load(path)
    finally:
        copyreg.remove_extension("posix", "system", 0x7A52)
    assert not marker.exists()


def test_describe_is_bounded():
    laughs = ["x"]
    for _ in range(200):
        laughs = [laughs, laughs]
    s = tf.describe({"k" * 10_000: laughs, 2 ** 100_000: b"\x00" * 10**6, "o": object()}, limit=80)
    assert len(s) <= 80 and "\n" not in s
    assert tf.describe(2 ** 100_000) == "<int of 100001 bits>"


@pytest.mark.parametrize("name", ["reduce_os_system", "billion_laughs_in_init_kwargs", "structured_dtype_oob_offset"])
def test_cli_convert_refuses(corpus, tmp_path, name):
    d, marker, files, _ = corpus
    path, expect = files[name]
    dst = tmp_path / "out"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(d), str(ROOT)]))
    res = subprocess.run([sys.executable, "-m", "jaxedit.cli.main", "convert", "stylegan2", str(path), str(dst)],
                         capture_output=True, text=True, timeout=300, env=env, cwd=d, check=False)
    assert res.returncode == 1, res.stderr
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and str(path) in lines[0] and expect in lines[0], res.stderr
    assert not dst.exists() and not marker.exists()


# ------------------------------------------------------------------ fuzzing the reference fixtures

FUZZ_FIXTURES = ["nvidia_tiny32.pkl", "rosinality_tiny64.pt", "clip_tiny_vit_state_dict.pt",
                 "clip_tiny_vit_torchscript.pt", "warped_support_sets.pt", "decurved_cnf.pt"]
CHECKSUMMED = {name for name in FUZZ_FIXTURES if name.endswith(".pt")}  # zips: CRC-32 on every member read
HANG_S = 10


class Hang(BaseException):
    """Raised by the alarm: not an Exception, so no handler in the reader can swallow it."""


@contextlib.contextmanager
def alarm(seconds: int):
    def on_alarm(signum, frame):
        raise Hang(f"no result after {seconds} s")
    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


def canonical(obj):
    """A comparable, exact image of a loaded object (arrays by dtype, shape and bytes)."""
    if isinstance(obj, np.ndarray):
        return ("array", obj.dtype.str, obj.shape, obj.tobytes())
    if isinstance(obj, dict):
        return (type(obj).__name__, tuple((canonical(k), canonical(v)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return (type(obj).__name__, tuple(canonical(v) for v in obj))
    if isinstance(obj, tf.PersistentObject):
        return ("persistent", obj.class_name, canonical(obj.state))
    if isinstance(obj, tf.ScriptObject):
        return ("script", obj.qualname, canonical(obj.state))
    if isinstance(obj, tf.Namespace):
        return ("namespace", canonical(vars(obj)))
    return (type(obj).__name__, repr(obj))


def use(obj, path: Path) -> None:
    """What converters do with a loaded object: print it, flatten modules, read configs, convert."""
    repr(obj)
    tf.describe(obj)
    if isinstance(obj, dict):
        for v in obj.values():
            if isinstance(v, (tf.PersistentObject, tf.ScriptObject)):
                tf.module_state_dict(v)
                if isinstance(v, tf.PersistentObject):
                    tf.init_kwargs(v)
        if any(isinstance(v, tf.PersistentObject) for v in obj.values()):
            sg2.from_nvidia(obj, "G_ema", path.name)
        if formats.sniff_torch(obj) == "warped":
            formats.warped_from_state(obj, path)
        elif formats.sniff_torch(obj) == "curvilinear":
            formats.cnf_from_state(obj, path)
    elif isinstance(obj, tf.ScriptObject):
        tf.module_state_dict(obj)


_ORIGINALS: dict[str, tuple] = {}


def original(name: str) -> tuple:
    if name not in _ORIGINALS:
        _ORIGINALS[name] = canonical(tf.load(fixture(name)))
    return _ORIGINALS[name]


@st.composite
def damage(draw, size: int):
    """A truncation or 1-8 XOR byte flips, at the head (headers, pickle opcodes), tail (zip directory)
    or anywhere."""
    region = draw(st.sampled_from(["head", "tail", "anywhere"]))
    lo, hi = {"head": (0, min(size, 1 << 16)), "tail": (max(0, size - (1 << 16)), size),
              "anywhere": (0, size)}[region]
    if draw(st.booleans()):
        return ("truncate", draw(st.integers(lo, hi - 1)))
    flips = draw(st.lists(st.tuples(st.integers(lo, hi - 1), st.integers(1, 255)), min_size=1, max_size=8))
    return ("flip", tuple(flips))


def check_damaged(name: str, dmg, workdir: Path) -> None:
    data = bytearray(fixture(name).read_bytes())
    kind, arg = dmg
    if kind == "truncate":
        data = data[:arg]
    else:
        for pos, x in arg:
            data[pos] ^= x
    path = workdir / f"damaged_{name}"
    path.write_bytes(bytes(data))
    with alarm(HANG_S):
        try:
            obj = tf.load(path)
        except JaxeditError as e:
            assert str(path) in str(e) and "\n" not in str(e), str(e)
            return
        if name in CHECKSUMMED:
            assert canonical(obj) == original(name), f"{name} {dmg}: loaded, but not to the original"
        try:
            use(obj, path)
        except JaxeditError:
            pass


def fuzz_test(max_examples: int):
    @settings(max_examples=max_examples, deadline=5000, derandomize=max_examples <= 50, database=None,
              suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
    @given(data=st.data())
    def run(name, workdir, data):
        size = fixture(name).stat().st_size
        check_damaged(name, data.draw(damage(size)), workdir)
    return run


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("fuzz")


@pytest.mark.parametrize("name", FUZZ_FIXTURES)
def test_fuzz_damaged_fixtures(name, workdir):
    fuzz_test(25)(name, workdir)


@pytest.mark.slow
@pytest.mark.parametrize("name", FUZZ_FIXTURES)
def test_fuzz_damaged_fixtures_long(name, workdir):
    fuzz_test(500)(name, workdir)


@pytest.mark.parametrize("change, expect", [
    (lambda g: g.state["_init_kwargs"]["mapping_kwargs"].update(lr_multiplier="abc"), "'lr_multiplier' is 'abc'"),
    (lambda g: g.state["_init_kwargs"]["synthesis_kwargs"].update(conv_clamp=[1]), "'conv_clamp' is [1]"),
    (lambda g: g.state["_init_kwargs"].update(synthesis_kwargs=[1, 2]), "'synthesis_kwargs' is [1, 2]"),
    (lambda g: g.state["_modules"]["mapping"].state["_modules"]["fc0"].state["_parameters"].update(
        weight=np.zeros(3, np.float32)), "mapping.fc0.weight has shape [3], not 2-D"),
    (lambda g: g.state["_modules"]["synthesis"].state.update(_parameters=[1]), "_parameters is not a dict"),
    (lambda g: g.state["_init_kwargs"].update(z_dim={1, 2}), "_init_kwargs['z_dim'] is a set"),
])
def test_converter_refuses_malformed_modules(change, expect):
    """Well-formed pickles with the wrong types inside: a ConversionError / TorchFileError, not a crash."""
    obj = tf.load(fixture("nvidia_tiny32.pkl"))
    change(obj["G_ema"])
    with pytest.raises(JaxeditError, match=expect.replace("[", r"\[").replace("]", r"\]")):
        sg2.from_nvidia(obj, "G_ema", "nvidia_tiny32.pkl")


def test_edit_formats_and_clip_refuse_malformed_tensors():
    """Wrong types and ranks inside well-formed files are EditFileError / ConversionError naming the key."""
    cnf = tf.load(fixture("decurved_cnf.pt"))
    key = "chain.0.odefunc.diffeq.layers.0._layer.weight"
    for value, expect in (("abc", "is not a tensor"), (np.zeros(3, np.float32), "expected (out, in)")):
        with pytest.raises(formats.EditFileError, match=re.escape(expect)):
            formats.cnf_from_state({"state_dict": dict(cnf["state_dict"], **{key: value})}, "f.pt")
    with pytest.raises(formats.EditFileError, match="'log_mat_half' is not a tensor"):
        formats.deformator_from_state({"log_mat_half": [[1.0]]}, "f.pt")
    sd = tf.load(fixture("clip_tiny_rn_state_dict.pt"))
    for k, v, expect in (("visual.conv1.weight", np.zeros((3, 3), np.float32), "not a 4-D conv weight"),
                         ("ln_final.weight", np.zeros((), np.float32), "is a scalar")):
        bad = dict(sd, **{k: v})
        with pytest.raises(clip_converter.ConversionError, match=expect):
            clip_converter.to_params(bad, clip_converter.infer_config(bad, "f.pt"), "f.pt")


# ------------------------------------------------------------------------------ .npy / .npz (jaxedit.io.arrays)
def _npy_header(shape, descr="<f4") -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue()


def test_array_files_are_checked_before_numpy_allocates(tmp_path):
    ok = tmp_path / "ok.npz"
    np.savez(ok, a=np.arange(6, dtype=np.float32).reshape(2, 3), names=np.array(["x", "y"]))
    loaded = arrays.load(ok, "--x")
    assert loaded["a"].shape == (2, 3) and list(loaded["names"]) == ["x", "y"]
    (tmp_path / "huge.npy").write_bytes(_npy_header((10 ** 12, 4)) + bytes(48))
    (tmp_path / "object.npy").write_bytes(_npy_header((2,), "|O") + bytes(16))
    with zipfile.ZipFile(tmp_path / "notnpy.npz", "w") as z:
        z.writestr("a.npy", _npy_header((1,)) + bytes(4))
        z.writestr("run.py", b"print(1)")
    with zipfile.ZipFile(tmp_path / "liar.npz", "w") as z:  # a member that declares more than it holds
        z.writestr("a.npy", _npy_header((1000,)) + bytes(4))
    np.savez_compressed(tmp_path / "bomb.npz", a=np.zeros(1 << 18, np.float32))  # 1 MiB of zeros in ~1 KiB
    np.savez(tmp_path / "plain.npz", a=np.zeros(1 << 18, np.float32))  # as large, but on disk as such
    assert arrays.load(tmp_path / "plain.npz", "--x", max_bytes=1 << 16)["a"].shape == (1 << 18,)
    for name, expect, kw in [("huge.npy", r"declares \[1000000000000, 4\] float32", {}),
                             ("object.npy", "holds object data", {}), ("notnpy.npz", "'run.py' is not an .npy", {}),
                             ("liar.npz", r"declares \[1000\]", {}), ("bomb.npz", "inflating to", {"max_bytes": 1 << 16}),
                             ("absent.npy", "no such file", {})]:
        with pytest.raises(InputError, match=expect) as e:
            arrays.load(tmp_path / name, "--x", **kw)
        assert str(e.value).startswith(f"--x {tmp_path / name}") and "\n" not in str(e.value)
