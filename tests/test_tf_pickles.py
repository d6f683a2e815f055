"""Legacy TensorFlow StyleGAN2 pickles (NVlabs/stylegan2 ``(G, D, Gs)``): read safely, converted exactly,
described by ``jaxedit info``; plus ``jaxedit info`` on the other source files.

Bounds are about 3x the max abs error measured on XLA CPU (LLVM -O0, tests/conftest.py).
"""

import copyreg
import functools
import json
import pickle
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture, max_abs, ref

from jaxedit.cli.main import main
from jaxedit.converters import source_info
from jaxedit.converters import stylegan2 as sg2
from jaxedit.converters import stylegan2_tf as tfc
from jaxedit.io import checkpoint, torchfile
from jaxedit.models.stylegan2 import StyleGAN2

TF = "nvidia_tf_tiny32.pkl"
# measured (-O0): w 1.3e-6, w_psi0.7 9.5e-7, img_const 4.8e-6, img_none 4.8e-6, img_psi0.7_const 4.4e-6
TOL = {"w": 5e-6, "img": 2e-5}


@functools.cache
def converted(key=None):
    cfg, params, info = tfc.convert(fixture(TF), key)
    return StyleGAN2(cfg), jax.tree.map(jnp.asarray, params), info


# ------------------------------------------------------------------ reading the file safely


def test_reader_gives_inert_networks_without_source():
    obj = torchfile.load(fixture(TF))
    assert isinstance(obj, tuple) and [type(n) for n in obj] == [torchfile.TFNetwork] * 3
    _, D, Gs = obj
    assert [n.state["name"] for n in obj] == ["G", "D", "Gs"] and repr(Gs) == "TFNetwork('Gs')"
    assert "build_module_src" not in Gs.state and Gs.state["build_func_name"] == "G_main"
    assert set(Gs.state["components"]) == {"mapping", "synthesis"}
    names = set(tfc.variables(Gs, TF))
    assert names == set(ref("nvidia_tf_tiny32_ref.npz")["tf_var_names"].tolist())
    assert set(tfc.variables(D, TF)) == set(ref("nvidia_tf_tiny32_ref.npz")["tf_var_names_D"].tolist())
    assert "dnnlib" not in sys.modules and not any(m.startswith("tensorflow") for m in sys.modules)


class _Net:
    """Writes a TF-era ``Network`` pickle (NEWOBJ + BUILD of its state dict), as dnnlib.tflib did."""

    def __init__(self, state):
        self.state = state

    def __reduce_ex__(self, proto):
        return copyreg.__newobj__, (type(self),), self.state


_Net.__module__, _Net.__name__, _Net.__qualname__ = "dnnlib.tflib.network", "Network", "Network"


def _writable(obj):
    """A loaded TFNetwork tree -> _Net objects with plain, writable copies of the state."""
    if isinstance(obj, torchfile.TFNetwork):
        return _Net(_writable(obj.state))
    if isinstance(obj, dict):
        return {k: _writable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_writable(x) for x in obj)
    return np.array(obj) if isinstance(obj, np.ndarray) else obj


@pytest.fixture
def write_tf(tmp_path, monkeypatch):
    """``write_tf(edit=None, protocol=4)``: re-pickle the fixture after ``edit(G, D, Gs)`` (states as dicts)."""
    for name in ("dnnlib", "dnnlib.tflib", "dnnlib.tflib.network"):  # only for pickle.dumps to find _Net
        monkeypatch.setitem(sys.modules, name, types.ModuleType(name))
    sys.modules["dnnlib"].tflib = sys.modules["dnnlib.tflib"]
    sys.modules["dnnlib.tflib"].network = sys.modules["dnnlib.tflib.network"]
    sys.modules["dnnlib.tflib.network"].Network = _Net

    def write(edit=None, protocol=4, name="tf.pkl"):
        nets = _writable(torchfile.load(fixture(TF)))
        if edit is not None:
            edit(*(n.state for n in nets))
        path = tmp_path / name
        path.write_bytes(pickle.dumps(nets, protocol=protocol))
        return path
    return write


@pytest.mark.parametrize("protocol", [2, 3, 4])
def test_protocols_read_and_route(write_tf, protocol):
    """Release pickles were written with protocol 3 (Python 3.6/3.7); all read alike and are routed as TF."""
    path = write_tf(protocol=protocol)
    assert tfc.looks_like_tf_pickle(path)
    _, p, _ = tfc.convert(path)
    _, p0, _ = converted()
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), p, p0))
    assert not tfc.looks_like_tf_pickle(fixture("nvidia_tiny32.pkl"))


def test_build_module_src_is_never_run(write_tf, tmp_path):
    marker = tmp_path / "ran"

    def edit(G, D, Gs):
        Gs["build_module_src"] = f"open({str(marker)!r}, 'w').write('x')\nraise SystemExit(3)\n"
    tfc.convert(write_tf(edit))
    assert not marker.exists()


HEAD = b"\x80\x02cdnnlib.tflib.network\nNetwork\n"


@pytest.mark.parametrize("stream, needle", [
    (HEAD + b")\x81}b}b.", "TensorFlow Network state"),  # a second BUILD
    (HEAD + b")\x81]b.", "TensorFlow Network state"),  # a state that is not a dict
    (HEAD + b")\x81}K\x01Nsb.", "TensorFlow Network state"),  # a non-string key
    (HEAD + b"(K\x01tR.", "corrupted"),  # Network(1): no constructor arguments
    (HEAD + b")\x81q\x00}X\n\x00\x00\x00componentsq\x01}X\x01\x00\x00\x00xh\x00ssb.", "itself"),  # a cycle
    (b"\x80\x02cdnnlib.tflib.network\nos\n.", "allow-list"),  # no other name of that module
])
def test_hostile_network_pickles_are_refused(tmp_path, stream, needle):
    path = tmp_path / "bad.pkl"
    path.write_bytes(stream)
    with pytest.raises(torchfile.TorchFileError, match=needle) as e:
        torchfile.load(path)
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


# ------------------------------------------------------------------ conversion


def test_mapping_and_truncation():
    G, p, info = converted()
    r = ref("nvidia_tf_tiny32_ref.npz")
    assert info["format"] == "nvidia-tf-pkl" and info["network"] == "Gs"
    assert max_abs(p["mapping"]["w_avg"], r["w_avg"]) == 0.0
    assert max_abs(G.mapping(p, r["z"]), r["w"]) <= TOL["w"]
    assert max_abs(G.mapping(p, r["z"], psi=0.7), r["w_psi0.7"]) <= TOL["w"]


def test_images():
    G, p, _ = converted()
    r = ref("nvidia_tf_tiny32_ref.npz")
    synth = jax.jit(G.synthesis, static_argnames="noise_mode")
    assert max_abs(synth(p, r["w"], noise_mode="const"), r["img_const"]) <= TOL["img"]
    assert max_abs(synth(p, r["w"], noise_mode="none"), r["img_none"]) <= TOL["img"]
    assert max_abs(synth(p, r["w_psi0.7"], noise_mode="const"), r["img_psi0.7_const"]) <= TOL["img"]
    assert max_abs(r["img_const"], r["img_none"]) > 1e-2  # the noise buffers matter in this fixture
    # --key G is the other (non-averaged) generator
    _, pg, info = converted("G")
    assert info["network"] == "G" and max_abs(synth(pg, r["w"], noise_mode="const"), r["img_const"]) > 1e-3


def _set_kwarg(k, v):
    return lambda G, D, Gs: Gs["static_kwargs"].__setitem__(k, v)


def _add_var(name, shape, comp="synthesis"):
    return lambda G, D, Gs: Gs["components"][comp].state["variables"].append((name, np.zeros(shape, np.float32)))


def _rename_var(old, new):
    def edit(G, D, Gs):
        vs = Gs["components"]["synthesis"].state["variables"]
        vs[:] = [(new if n == old else n, a) for n, a in vs]
    return edit


@pytest.mark.parametrize("edit, needle", [
    (_add_var("32x32/Conv2/weight", (3, 3, 32, 32)), "cannot map"),
    (_add_var("64x64/Conv1/weight", (3, 3, 32, 32)), "missing tensor 'torgb'"),
    (_add_var("4x4/Conv/extra", (1,)), "cannot map"),
    (_rename_var("32x32/ToRGB/weight", "ToRGB_lod0/weight"), "'orig'"),
    (_add_var("LabelConcat/weight", (0, 64), "mapping"), "LabelConcat"),
    (_set_kwarg("fused_foo", 1), "fused_foo"),
    (_set_kwarg("resolution", 64), "resolution=64"),
    (_set_kwarg("resample_kernel", [1, 1]), "resample_kernel"),
    (_set_kwarg("architecture", "orig"), "architecture"),
    (lambda G, D, Gs: Gs.__setitem__("version", 3), "version"),
    (lambda G, D, Gs: Gs["variables"].append(("bad", "not an array")), "not a (name, array) pair"),
])
def test_unsupported_networks_are_one_line_errors(write_tf, edit, needle):
    with pytest.raises(sg2.ConversionError) as e:
        tfc.convert(write_tf(edit))
    msg = str(e.value)
    assert msg.startswith("tf.pkl: ") and needle in msg and "\n" not in msg


def test_keys(write_tf):
    with pytest.raises(sg2.ConversionError, match=r"nvidia_tf_tiny32.pkl: 'D' is the discriminator"):
        tfc.convert(fixture(TF), "D")
    with pytest.raises(sg2.ConversionError, match=r"no network 'G_ema' in the TF pickle"):
        tfc.convert(fixture(TF), "G_ema")


# ------------------------------------------------------------------ CLI: convert and info


def test_cli_convert_without_torch_tf_or_dnnlib(tmp_path):
    """The console entry point routes the TF pickle; nothing named by the file is imported."""
    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('torch', 'dnnlib'):\n"
            "            raise ImportError('blocked')\n"
            "sys.meta_path.insert(0, Block())\n"
            "from jaxedit.cli.main import main\n"
            f"rc = main(['convert', 'stylegan2', {str(fixture(TF))!r}, {str(tmp_path / 'ck')!r}])\n"
            "assert not any(m.split('.')[0] in ('torch', 'tensorflow', 'dnnlib') for m in sys.modules)\n"
            "sys.exit(rc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "nvidia-tf-pkl, network Gs" in out.stdout and "forward pass" in out.stdout
    meta = checkpoint.read_meta(tmp_path / "ck")
    assert meta["source"]["format"] == "nvidia-tf-pkl" and meta["model"]["img_resolution"] == 32


def test_info_on_source_files(capsys):
    assert main(["info", str(fixture(TF))]) == 0
    out = capsys.readouterr().out
    assert "NVIDIA TensorFlow StyleGAN2 pickle" in out and "Gs (default): generator G_main" in out
    assert "D: discriminator D_stylegan2" in out and "resolution = 32 x 32 x 3" in out
    assert "266,755 parameter elements in 64 arrays" in out  # = jaxedit info of the converted checkpoint

    assert main(["info", str(fixture("nvidia_tiny32.pkl"))]) == 0
    out = capsys.readouterr().out
    assert "stylegan2-ada / stylegan3 PyTorch pickle" in out and "G_ema (default): generator Generator" in out
    assert "conv_clamp = 256.0" in out

    assert main(["info", str(fixture("rosinality_tiny64.pt"))]) == 0
    out = capsys.readouterr().out
    assert "rosinality" in out and "num_ws = 10" in out and "latent_avg in the file" in out

    assert main(["info", "--json", str(fixture(TF))]) == 0
    desc = json.loads(capsys.readouterr().out)
    assert desc["default"] == "Gs" and [n["key"] for n in desc["networks"]] == ["G", "D", "Gs"]
    assert desc["networks"][2]["config"]["channels"] == [64, 64, 64, 32]


def test_info_other_files():
    desc = source_info.describe(fixture("lpips_vgg_lin_v0.1.pth"))
    assert desc["format"].startswith("PyTorch file of no StyleGAN2 kind") and desc["networks"][0]["arrays"] == 5
    desc = source_info.describe(fixture("nvidia_tiny64_resnet.pkl"))
    g = {n["key"]: n for n in desc["networks"]}["G_ema"]
    assert g["config"].architecture == "resnet" and g["config"].img_resolution == 64


def test_info_on_a_hostile_file_is_a_one_line_error(tmp_path, capsys):
    bad = tmp_path / "evil.pkl"
    bad.write_bytes(b"\x80\x02cos\nsystem\nX\x04\x00\x00\x00trueR.")
    assert main(["info", str(bad)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evil.pkl" in err[0] and "allow-list" in err[0]
