"""jaxedit.io.torchfile: torch-free, code-free reading of PyTorch files.

Real files: the reference fixtures in ../shared/fixtures (NVIDIA pickles, rosinality and
other torch.save zips, CLIP state dicts and TorchScript archives). Synthetic files (legacy
streams, hostile pickles, damaged copies) are built here, byte by byte where the format
names torch globals, so that no torch is needed to write them either.
"""

from __future__ import annotations

import argparse
import builtins
import collections
import copyreg
import json
import mmap
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from conftest import fixture, ref
from jaxedit.io import torchfile as tf
from jaxedit.io.torchfile import TorchFileError

NVIDIA = ["nvidia_tiny32", "nvidia_tiny32_cond", "nvidia_tiny64_resnet"]


def manifest() -> dict:
    return json.loads(fixture("manifest.json").read_text())


def storage_root(a: np.ndarray):
    b = a
    while isinstance(b, np.ndarray):
        b = b.base
    return b


# ------------------------------------------------------------------ pickle opcode builder
# Enough of the pickle protocol to spell torch's globals without importing torch.

def frag(obj) -> bytes:
    """Opcodes pushing a plain-data ``obj`` (no PROTO, STOP or memo)."""
    return pickletools.optimize(pickle.dumps(obj, protocol=2))[2:-1]


def glob(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def call(func: bytes, *args: bytes) -> bytes:
    return func + b"(" + b"".join(args) + b"tR"  # MARK args TUPLE REDUCE


def setitems(items: list[tuple[bytes, bytes]]) -> bytes:
    return b"(" + b"".join(k + v for k, v in items) + b"u"  # MARK ... SETITEMS (into the dict on the stack)


def pdict(items: list[tuple[bytes, bytes]]) -> bytes:
    return b"}" + setitems(items)  # EMPTY_DICT


def program(body: bytes) -> bytes:
    return b"\x80\x02" + body + b"."


def pid(stype: str, key: str, numel: int, view=None, legacy: bool = True) -> bytes:
    parts = frag("storage") + glob("torch", stype) + frag(key) + frag("cpu") + frag(numel)
    return b"(" + parts + (frag(view) if legacy else b"") + b"tQ"  # TUPLE BINPERSID


def tensor(storage: bytes, offset: int, size, stride) -> bytes:
    return call(glob("torch._utils", "_rebuild_tensor_v2"), storage, frag(offset), frag(tuple(size)),
                frag(tuple(stride)), frag(False), call(glob("collections", "OrderedDict")))


SYS_INFO = {"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 4}}


def legacy_stream(obj_pickle: bytes, storages: list[tuple[str, np.ndarray]]) -> bytes:
    """pickle(magic), pickle(1001), pickle(sys_info), obj, pickle(keys), then count + data per key."""
    out = (pickle.dumps(0x1950A86A20F9469CFC6C, protocol=2) + pickle.dumps(1001, protocol=2)
           + pickle.dumps(SYS_INFO, protocol=2) + obj_pickle
           + pickle.dumps([k for k, _ in storages], protocol=2))
    for _, a in storages:
        out += struct.pack("<q", a.size) + a.tobytes()
    return out


def torch_zip(path: Path, data_pkl: bytes, storages: list[tuple[str, bytes]], byteorder: str = "little",
              prefix: str = "archive") -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr(f"{prefix}/data.pkl", data_pkl)
        z.writestr(f"{prefix}/byteorder", byteorder)
        for key, raw in storages:
            z.writestr(f"{prefix}/data/{key}", raw)
        z.writestr(f"{prefix}/version", "3\n")
    return path


class Reduce:
    """Pickles as ``fn(*args)``: the classic malicious payload."""

    def __init__(self, fn, args):
        self.fn, self.args = fn, args

    def __reduce__(self):
        return self.fn, self.args


# Storages and the tensors built on them, shared by the legacy and zip tests.
A = np.arange(24, dtype=np.float32)
H = (np.arange(6, dtype=np.float32) / 4).astype(np.float16)
BF = np.array([1.5, -2.25, 3.0], dtype=ml_dtypes.bfloat16)
L = np.array([7, -8, 9], dtype=np.int64)


def sample_body(legacy: bool) -> bytes:
    """{'x': A as [2,3,4], 'xt': A[:12] viewed [4,3] transposed, 'h', 'bf', 'i' (scalar), 'v' (view)}."""
    a = pid("FloatStorage", "a", 24, legacy=legacy)
    items = [
        (frag("x"), tensor(a, 0, (2, 3, 4), (12, 4, 1))),
        (frag("xt"), tensor(a, 0, (4, 3), (1, 4))),
        (frag("h"), tensor(pid("HalfStorage", "h", 6, legacy=legacy), 1, (5,), (1,))),
        (frag("bf"), tensor(pid("BFloat16Storage", "bf", 3, legacy=legacy), 0, (3,), (1,))),
        (frag("i"), tensor(pid("LongStorage", "l", 3, legacy=legacy), 2, (), ())),
    ]
    if legacy:  # a storage view: elements 12..23 of root 'a' under the view key 'av'
        items.append((frag("v"), tensor(pid("FloatStorage", "a", 24, view=("av", 12, 12)), 0, (3, 4), (4, 1))))
    return pdict(items)


def check_sample(d: dict, legacy: bool) -> None:
    np.testing.assert_array_equal(d["x"], A.reshape(2, 3, 4))
    assert d["x"].dtype == np.float32 and not d["x"].flags.writeable and not d["x"].flags.owndata
    np.testing.assert_array_equal(d["xt"], A[:12].reshape(3, 4).T)
    assert d["xt"].flags.c_contiguous
    np.testing.assert_array_equal(d["h"], H[1:])
    assert d["h"].dtype == np.float16
    assert d["bf"].dtype == ml_dtypes.bfloat16
    np.testing.assert_array_equal(d["bf"].astype(np.float32), [1.5, -2.25, 3.0])
    assert d["i"].shape == () and d["i"].dtype == np.int64 and int(d["i"]) == 9
    if legacy:
        np.testing.assert_array_equal(d["v"], A[12:].reshape(3, 4))
        assert np.shares_memory(d["x"], d["v"])


# ------------------------------------------------------------------ real files: NVIDIA


@pytest.mark.parametrize("name", NVIDIA)
def test_nvidia_pickle(name):
    d = tf.load(fixture(name + ".pkl"))
    assert isinstance(d, dict) and {"G", "D", "G_ema"} <= set(d)
    assert all(isinstance(d[k], tf.PersistentObject) for k in ("G", "D", "G_ema"))
    g = d["G_ema"]
    assert g.class_name == "Generator"
    sd = tf.module_state_dict(g)
    want = manifest()[name]["G_ema_tensors"]
    assert {k: list(v.shape) for k, v in sd.items()} == want
    assert all(v.dtype == np.float32 for v in sd.values())
    np.testing.assert_array_equal(sd["mapping.w_avg"], ref(name + "_ref.npz")["w_avg"])
    # zero-copy: tensors are views of the bytes the pickle already holds
    assert isinstance(storage_root(sd["mapping.w_avg"]), bytes)
    assert tf.module_state_dict(d["G"]).keys() == sd.keys()
    assert not np.array_equal(tf.module_state_dict(d["G"])["mapping.fc0.bias"], sd["mapping.fc0.bias"])
    cfg = manifest()[name]["config"]
    kw = tf.init_kwargs(g)
    assert type(kw) is dict and type(kw["mapping_kwargs"]) is dict and type(kw["synthesis_kwargs"]) is dict
    assert (kw["z_dim"], kw["w_dim"], kw["c_dim"], kw["img_resolution"]) == (
        cfg["z_dim"], cfg["w_dim"], cfg["c_dim"], cfg["res"])
    assert kw["mapping_kwargs"]["num_layers"] == cfg["map_layers"]
    assert kw["synthesis_kwargs"]["conv_clamp"] == cfg["conv_clamp"]
    if name == "nvidia_tiny32":
        assert (kw["z_dim"], kw["w_dim"], kw["img_resolution"]) == (64, 64, 32)


def test_nvidia_runs_without_torch():
    """A fresh interpreter in which ``import torch`` (and torch_utils, dnnlib) fails."""
    path = fixture("nvidia_tiny32.pkl")
    code = textwrap.dedent(f"""
        import sys
        for m in ("torch", "torch_utils", "dnnlib"):
            sys.modules[m] = None
        from jaxedit.io import torchfile as tf
        sd = tf.module_state_dict(tf.load({str(path)!r})["G_ema"])
        try:
            import torch
        except ImportError:
            pass
        else:
            raise SystemExit("torch importable")
        roots = ("torch", "torch_utils", "dnnlib")
        bad = [m for m, v in sys.modules.items() if v is not None and m.split(".")[0] in roots]
        assert not bad, bad
        print(len(sd), sd["mapping.w_avg"].shape)
    """)
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         cwd=Path(__file__).parents[1])
    assert res.returncode == 0, res.stderr
    assert res.stdout.split() == [str(len(manifest()["nvidia_tiny32"]["G_ema_tensors"])), "(64,)"]


# ------------------------------------------------------------------ real files: torch.save zips


def test_rosinality_zip():
    path = fixture("rosinality_tiny64.pt")
    d = tf.load(path)
    assert set(d) == {"g_ema", "g", "latent_avg"}
    want = manifest()["rosinality_tiny64"]["g_ema_tensors"]
    assert {k: list(v.shape) for k, v in d["g_ema"].items()} == want
    ref_avg = ref("rosinality_tiny64_ref.npz")["latent_avg"]
    np.testing.assert_array_equal(d["latent_avg"].reshape(ref_avg.shape), ref_avg)
    # zero-copy: views of a read-only memory map of the file
    root = storage_root(d["latent_avg"])
    assert isinstance(root, memoryview) and isinstance(root.obj, mmap.mmap)
    assert not d["latent_avg"].flags.writeable


def test_decurved_and_warped():
    d = tf.load(fixture("decurved_cnf.pt"))
    sd = d["state_dict"]
    assert {k: list(v.shape) for k, v in sd.items()} == manifest()["decurved_cnf"]["tensors"]
    assert sd["chain.0.odefunc.diffeq.layers.0._layer.weight"].shape == (16, 8)
    w = tf.load(fixture("warped_support_sets.pt"))
    K, N, dim = 6, 8, 32
    assert {k: v.shape for k, v in w.items()} == {
        "SUPPORT_SETS": (K, 2 * N * dim), "ALPHAS": (K, 2 * N), "LOGGAMMA": (K, 1)}


@pytest.mark.parametrize("kind", ["vit", "rn"])
def test_clip_state_dict_matches_torchscript(kind):
    sd = tf.load(fixture(f"clip_tiny_{kind}_state_dict.pt"))
    ts = tf.load(fixture(f"clip_tiny_{kind}_torchscript.pt"))
    assert isinstance(ts, tf.ScriptObject) and ts.qualname.startswith("__torch__.model.")
    assert ts.qualname.endswith(".CLIP") and isinstance(ts.state["visual"], tf.ScriptObject)
    tsd = tf.module_state_dict(ts)
    # the three hyper-parameter entries are state-dict-only scalars; everything else is in both
    hyper = {"input_resolution", "context_length", "vocab_size"}
    assert all(sd[k].shape == () and sd[k].dtype == np.int64 for k in hyper)
    assert set(sd) - hyper == set(tsd)
    n_half = 0
    for k, a in tsd.items():
        s = sd[k]
        assert s.shape == a.shape, k
        if s.dtype == np.float16:  # the state dict keeps fp16 leaves; this archive holds them as fp32
            n_half += 1
            assert a.dtype == np.float32, k
        else:
            assert s.dtype == a.dtype, k
        np.testing.assert_array_equal(s.astype(a.dtype), a, err_msg=k)
    assert n_half > 30


# ------------------------------------------------------------------ synthetic formats


def test_legacy_stream(tmp_path):
    blob = legacy_stream(program(sample_body(legacy=True)),
                         [("a", A), ("h", H), ("bf", BF), ("l", L)])
    path = tmp_path / "legacy.pt"
    path.write_bytes(blob)
    d = tf.load(path)
    check_sample(d, legacy=True)
    assert isinstance(storage_root(d["x"]).obj, mmap.mmap)


def test_zip_archive_and_big_endian(tmp_path):
    raw = [("a", A.tobytes()), ("h", H.tobytes()), ("bf", BF.tobytes()), ("l", L.tobytes())]
    d = tf.load(torch_zip(tmp_path / "m.pt", program(sample_body(legacy=False)), raw))
    check_sample(d, legacy=False)
    big = [("a", A.astype(">f4").tobytes()), ("h", H.astype(">f2").tobytes()),
           ("bf", BF.view(np.uint16).astype(">u2").tobytes()), ("l", L.astype(">i8").tobytes())]
    check_sample(tf.load(torch_zip(tmp_path / "big.pt", program(sample_body(legacy=False)), big, "big")),
                 legacy=False)


def test_nested_load_from_bytes(tmp_path):
    """NVIDIA's encoding: _rebuild_parameter(_rebuild_tensor_v2(_load_from_bytes(legacy stream)))."""
    inner = legacy_stream(program(pid("FloatStorage", "k", 24)), [("k", A)])
    t = tensor(call(glob("torch.storage", "_load_from_bytes"), frag(inner)), 4, (5,), (2,))
    p = call(glob("torch._utils", "_rebuild_parameter"), t, frag(False), call(glob("collections", "OrderedDict")))
    path = tmp_path / "n.pkl"
    path.write_bytes(program(pdict([(frag("p"), p)])))
    np.testing.assert_array_equal(tf.load(path)["p"], A[4:14:2])


def test_numpy_namespace_jit_helpers_and_module_src(tmp_path):
    obj = {"s": np.float64(1.5), "a": np.arange(6.0).reshape(2, 3), "i": np.int32(3),
           "args": argparse.Namespace(lr=0.1, size=64), "set": {1, 2}, "fs": frozenset({3})}
    for proto in (2, 4):
        path = tmp_path / f"np{proto}.pkl"
        path.write_bytes(pickle.dumps(obj, protocol=proto))
        d = tf.load(path)
        assert d["s"] == 1.5 and d["s"].dtype == np.float64 and d["i"].dtype == np.int32
        assert type(d["a"]) is np.ndarray
        np.testing.assert_array_equal(d["a"], obj["a"])
        assert (d["args"].lr, d["args"].size) == (0.1, 64) and d["set"] == {1, 2} and d["fs"] == {3}
    path = tmp_path / "objarr.pkl"
    path.write_bytes(pickle.dumps({"o": np.array([1, "x"], dtype=object)}, protocol=4))
    with pytest.raises(TorchFileError, match="objarr.pkl.*object"):
        tf.load(path)
    jit = pdict([(frag("il"), call(glob("torch.jit._pickle", "build_intlist"), frag([1, 2]))),
                 (frag("t"), call(glob("torch.jit._pickle", "restore_type_tag"), frag({"a": 1}),
                                  frag("Dict[str, int]"))),
                 (frag("m"), glob("__torch__.foo", "Bar") + b")\x81" + frag({"w": 1}) + b"b")])  # NEWOBJ BUILD
    path = tmp_path / "jit.pkl"
    path.write_bytes(program(jit))
    d = tf.load(path)
    assert d["il"] == [1, 2] and d["t"] == {"a": 1}
    assert isinstance(d["m"], tf.ScriptObject) and d["m"].qualname == "__torch__.foo.Bar" and d["m"].state == {"w": 1}
    # NVIDIA persistence: module_src is real code in real files; it must never run
    marker = tmp_path / "src_ran"
    meta = {"type": "class", "version": 6, "class_name": "Net",
            "module_src": f"open({str(marker)!r}, 'w').close()\n",
            "state": {"_parameters": {}, "_buffers": {}, "_modules": {}, "_init_kwargs": {"z_dim": 8}}}
    path = tmp_path / "persist.pkl"
    path.write_bytes(program(call(glob("torch_utils.persistence", "_reconstruct_persistent_obj"), frag(meta))))
    p = tf.load(path)
    assert isinstance(p, tf.PersistentObject) and p.class_name == "Net" and tf.init_kwargs(p) == {"z_dim": 8}
    assert not marker.exists()


# ------------------------------------------------------------------ hostile files


def payloads(marker: Path) -> list[tuple[str, Reduce]]:
    return [
        ("system", Reduce(os.system, (f"touch {marker}",))),
        ("eval", Reduce(builtins.eval, (f"open({str(marker)!r}, 'w').close()",))),
        ("call", Reduce(subprocess.call, (["touch", str(marker)],))),
    ]


@pytest.mark.parametrize("which", ["system", "eval", "call"])
def test_hostile_plain_pickle(tmp_path, which):
    marker = tmp_path / "pwned"
    payload = dict(payloads(marker))[which]
    blob = pickle.dumps({"G_ema": payload}, protocol=4)
    control = tmp_path / "control"  # the payload is live: plain pickle would run it
    pickle.loads(pickle.dumps(dict(payloads(control))[which]))
    assert control.exists()
    path = tmp_path / "model.pkl"
    path.write_bytes(blob)
    with pytest.raises(TorchFileError) as e:
        tf.load(path)
    msg = str(e.value)
    qual = f"{payload.fn.__module__}.{payload.fn.__name__}"
    assert str(path) in msg and f"refuses to load global {qual!r}" in msg and "\n" not in msg
    assert not marker.exists()


def test_hostile_inside_zip_legacy_nested_and_ext(tmp_path):
    marker = tmp_path / "pwned"
    evil = payloads(marker)[0][1]
    qual = f"{os.system.__module__}.system"
    # 1) inside a torch.save zip's data.pkl, next to a real tensor
    data_pkl = program(pdict([(frag("w"), tensor(pid("FloatStorage", "0", 24, legacy=False), 0, (24,), (1,))),
                              (frag("e"), pickle.dumps(evil, protocol=2)[2:-1])]))
    cases = [torch_zip(tmp_path / "evil_zip.pt", data_pkl, [("0", A.tobytes())])]
    # 2) inside the object pickle of a legacy stream
    (tmp_path / "evil_legacy.pt").write_bytes(legacy_stream(pickle.dumps(evil, protocol=2), []))
    cases.append(tmp_path / "evil_legacy.pt")
    # 3) inside the nested _load_from_bytes stream of an NVIDIA-style pickle
    inner = legacy_stream(pickle.dumps(evil, protocol=2), [])
    outer = program(tensor(call(glob("torch.storage", "_load_from_bytes"), frag(inner)), 0, (1,), (1,)))
    (tmp_path / "evil_nested.pkl").write_bytes(outer)
    cases.append(tmp_path / "evil_nested.pkl")
    # 4) a TorchScript-like object whose state hides the payload
    hidden = pdict([(frag("x"), pickle.dumps(evil, protocol=2)[2:-1])])
    ts = program(glob("__torch__.m", "M") + b")\x81" + hidden + b"b")  # EMPTY_TUPLE NEWOBJ ... BUILD
    (tmp_path / "evil_ts.pkl").write_bytes(ts)
    cases.append(tmp_path / "evil_ts.pkl")
    for path in cases:
        with pytest.raises(TorchFileError) as e:
            tf.load(path)
        assert str(path) in str(e.value) and repr(qual) in str(e.value), str(e.value)
        assert not marker.exists()
    # 5) EXT opcodes resolve through find_class too
    copyreg.add_extension(os.system.__module__, "system", 0x7F31)
    try:
        blob = pickle.dumps(evil, protocol=2)
        assert b"\x83\x31\x7f" in blob  # EXT2 0x7F31 instead of a GLOBAL
        (tmp_path / "evil_ext.pkl").write_bytes(blob)
        with pytest.raises(TorchFileError, match=f"evil_ext.pkl: refuses to load global '{qual}'"):
            tf.load(tmp_path / "evil_ext.pkl")
    finally:
        copyreg.remove_extension(os.system.__module__, "system", 0x7F31)
    assert not marker.exists()


# ------------------------------------------------------------------ damaged and foreign files


@pytest.mark.parametrize("name", ["nvidia_tiny32.pkl", "rosinality_tiny64.pt"])
@pytest.mark.parametrize("frac", [0.5, 0.9])
def test_truncated(tmp_path, name, frac):
    data = fixture(name).read_bytes()
    path = tmp_path / f"cut{int(frac * 100)}_{name}"
    path.write_bytes(data[: int(len(data) * frac)])
    with pytest.raises(TorchFileError) as e:
        tf.load(path)
    assert str(path) in str(e.value) and "truncated" in str(e.value) and "\n" not in str(e.value)


def test_flipped_bytes(tmp_path):
    data = bytearray(fixture("rosinality_tiny64.pt").read_bytes())
    mid = len(data) // 2
    data[mid:mid + 16] = bytes(b ^ 0xFF for b in data[mid:mid + 16])
    path = tmp_path / "flipped.pt"
    path.write_bytes(bytes(data))
    with pytest.raises(TorchFileError, match=r"flipped\.pt: .*CRC"):
        tf.load(path)
    # a damaged data.pkl (the first entry) is caught by its CRC too
    data = bytearray(fixture("rosinality_tiny64.pt").read_bytes())
    data[200] ^= 0xFF
    path.write_bytes(bytes(data))
    with pytest.raises(TorchFileError, match=r"flipped\.pt: "):
        tf.load(path)


def test_foreign_and_missing_files(tmp_path):
    png = tmp_path / "image.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    text = tmp_path / "notes.txt"
    text.write_text("hello, this is not a checkpoint\n")
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    npz = tmp_path / "arrays.npz"
    np.savez(npz, a=np.zeros(3))
    garbage = tmp_path / "garbage.pkl"
    garbage.write_bytes(b"\x80\x04" + bytes(range(64)))
    cases = {png: "PNG", text: "text", empty: "empty", npz: "data.pkl", tmp_path / "missing.pt": "not found",
             tmp_path: "directory", garbage: "corrupted"}
    for path, what in cases.items():
        with pytest.raises(TorchFileError) as e:
            tf.load(path)
        msg = str(e.value)
        assert msg.startswith(str(path) + ": ") and what in msg and "\n" not in msg, msg


def test_module_state_dict_walk(tmp_path):
    """torch state_dict rules: params then buffers then children; None entries and
    non-persistent buffers skipped."""
    inner = legacy_stream(program(pid("FloatStorage", "k", 24)), [("k", A)])
    storage = call(glob("torch.storage", "_load_from_bytes"), frag(inner))

    def module(name: str, params, buffers, children, nonpersistent=()) -> bytes:
        easydict = call(glob("dnnlib.util", "EasyDict"))
        state = pdict([(frag("_parameters"), call(glob("collections", "OrderedDict")) + setitems(params)),
                       (frag("_buffers"), pdict(buffers)),
                       (frag("_non_persistent_buffers_set"), call(glob("builtins", "set"), frag(list(nonpersistent)))),
                       (frag("_modules"), pdict(children)),
                       (frag("_init_kwargs"), easydict + setitems([(frag("sub"), easydict)]))])
        meta = pdict([(frag("type"), frag("class")), (frag("version"), frag(6)),
                      (frag("module_src"), frag("raise SystemExit")), (frag("class_name"), frag(name)),
                      (frag("state"), state)])
        return call(glob("torch_utils.persistence", "_reconstruct_persistent_obj"), meta)

    leaf = module("Leaf", [(frag("w"), tensor(storage, 0, (2, 3), (3, 1))), (frag("b"), frag(None))],
                  [(frag("buf"), tensor(storage, 6, (2,), (1,))), (frag("tmp"), tensor(storage, 8, (1,), (1,)))],
                  [], nonpersistent=["tmp"])
    top = module("Top", [(frag("p"), tensor(storage, 10, (), ()))], [],
                 [(frag("leaf"), leaf), (frag("gone"), frag(None))])
    path = tmp_path / "mod.pkl"
    path.write_bytes(program(top))
    obj = tf.load(path)
    sd = tf.module_state_dict(obj)
    assert list(sd) == ["p", "leaf.w", "leaf.buf"]
    np.testing.assert_array_equal(sd["leaf.w"], A[:6].reshape(2, 3))
    assert float(sd["p"]) == 10.0
    assert "leaf.tmp" in tf.module_state_dict(obj, include_non_persistent=True)
    kw = tf.init_kwargs(obj)
    assert kw == {"sub": {}} and type(kw["sub"]) is dict
    assert isinstance(obj.state["_init_kwargs"], tf.EasyDict) and obj.state["_init_kwargs"].sub == {}


def test_module_state_dict_rejects_non_modules():
    with pytest.raises(TypeError):
        tf.module_state_dict({"a": 1})
    with pytest.raises(TypeError):
        tf.init_kwargs(collections.OrderedDict())
