"""``jaxedit export``: rosinality ``.pt`` (torch's zip format, written without torch) and NVIDIA-named
safetensors, proven torch-free by reading the files back (jaxedit.io.torchfile, the converters) and,
where torch is importable, by stock ``torch.load(..., weights_only=True)``."""

import os
import pickletools
import zipfile

import jax
import numpy as np
import pytest
from conftest import fixture, max_abs, ref
from safetensors.numpy import load_file

import jaxedit
from jaxedit.cli.main import main
from jaxedit.converters import export as exporter
from jaxedit.converters import stylegan2 as conv
from jaxedit.io import files, torchfile
from jaxedit.models.stylegan2 import StyleGAN2

ALLOWED_GLOBALS = {"torch._utils _rebuild_tensor_v2", "torch FloatStorage", "collections OrderedDict"}


def images(G, params, n=4):
    z = np.random.RandomState(0).randn(n, G.cfg.z_dim).astype(np.float32)
    return np.asarray(jax.jit(lambda p: G(p, z, noise_mode="const"))(params))


def check_torch_zip(path):
    """torch.save's layout: archive/{data.pkl, byteorder, data/N, version}, stored, data 64-byte aligned;
    the pickle names only the globals torch's weights_only unpickler allows."""
    with zipfile.ZipFile(path) as zf:
        infos = zf.infolist()
        names = [i.filename for i in infos]
        assert names[0] == "archive/data.pkl" and "archive/version" in names and "archive/byteorder" in names
        assert zf.read("archive/version") == b"3\n" and zf.read("archive/byteorder") == b"little"
        assert all(i.compress_type == zipfile.ZIP_STORED for i in infos)
        pkl = zf.read("archive/data.pkl")
    with open(path, "rb") as f:
        raw = f.read()
    for i in infos:
        if i.filename.startswith("archive/data/"):
            n, m = int.from_bytes(raw[i.header_offset + 26:i.header_offset + 28], "little"), \
                int.from_bytes(raw[i.header_offset + 28:i.header_offset + 30], "little")
            assert (i.header_offset + 30 + n + m) % 64 == 0
    found = {arg.replace("\n", " ") for op, arg, _ in pickletools.genops(pkl) if op.name == "GLOBAL"}
    assert found == ALLOWED_GLOBALS
    assert len([n for n in names if n.startswith("archive/data/")]) == pkl.count(b"FloatStorage")


def test_rosinality_generator_round_trip(tmp_path):
    src = fixture("rosinality_tiny64.pt")
    cfg, params, _ = conv.convert(src)
    G = StyleGAN2(cfg)
    out = tmp_path / "g.pt"
    exporter.export(G, params, out, "rosinality")
    check_torch_zip(out)
    mine, theirs = torchfile.load(out), torchfile.load(src)
    assert set(mine) == {"g_ema", "latent_avg"}
    # the same names and shapes as the reference's own file
    assert {k: v.shape for k, v in mine["g_ema"].items()} == {k: v.shape for k, v in theirs["g_ema"].items()}
    for k, v in theirs["g_ema"].items():  # conv weights pass through * and / sqrt(fan_in): at most 1 ulp off
        assert np.all(np.abs(mine["g_ema"][k] - v) <= np.spacing(np.abs(v))), k
    cfg2, params2, info = conv.convert(out)
    assert cfg2 == cfg and info["w_avg"] == "latent_avg from the file"
    a, b = images(G, params), images(G, params2)
    assert max_abs(a, b) <= 1e-6  # measured: 0
    r = ref("rosinality_tiny64_ref.npz")
    assert max_abs(G.synthesis(params2, G.mapping(params2, r["z"]), "const"), r["img_const"]) <= 2e-5


def test_default_generator_exports(tmp_path, capsys):
    G, params = jaxedit.load("shapes32-stylegan2")
    pt, st = tmp_path / "out" / "shapes32.pt", tmp_path / "shapes32.safetensors"
    assert main(["export", "shapes32-stylegan2", str(pt), "--format", "rosinality"]) == 0
    assert main(["export", "shapes32-stylegan2", str(st), "--format", "safetensors"]) == 0
    assert "exported the generator" in capsys.readouterr().out
    check_torch_zip(pt)
    cfg2, params2, _ = conv.convert(pt)
    assert cfg2 == G.cfg
    # the trained weights: float32 cannot undo "* sqrt(fan_in)" for ~4-15 % of the conv weights (1 ulp), which
    # moves these images by 1.6e-6 (2.2e-6 over 64 seeds); safetensors below is bit-exact
    assert max_abs(images(G, params), images(G, params2)) <= 5e-6
    G3, params3 = exporter.load_safetensors(st)
    assert G3 == G
    same = jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), params, params3)
    assert jax.tree.all(same)

    # never overwrite without --force; no temporary file is left behind
    before = pt.read_bytes()
    assert main(["export", "shapes32-stylegan2", str(pt), "--format", "rosinality"]) == 1
    assert "--force" in capsys.readouterr().err and pt.read_bytes() == before
    assert main(["export", "shapes32-stylegan2", str(pt), "--format", "rosinality", "--force"]) == 0
    assert sorted(os.listdir(pt.parent)) == [files.LEDGER, "shapes32.pt"]
    assert main(["export", "shapes-clip", str(tmp_path / "c.pt"), "--format", "rosinality"]) == 2


@pytest.mark.parametrize("name,key", [("nvidia_tiny32_cond", "G_ema"), ("nvidia_tiny64_resnet", "G_ema"),
                                      ("nvidia_tiny64_resnet", "D")])
def test_safetensors_nvidia_names_round_trip(name, key, tmp_path):
    """Every tensor and buffer of the pickle's state dict, under its own name, in torch layout."""
    src = fixture(name + ".pkl")
    if key == "D":
        cfg, params, _ = conv.convert_discriminator(src)
        model = jaxedit.models.stylegan2.Discriminator(cfg)
    else:
        cfg, params, _ = conv.convert(src)
        model = StyleGAN2(cfg)
    out = tmp_path / "m.safetensors"
    exporter.export(model, params, out, "safetensors")
    tensors = load_file(str(out))
    reference = torchfile.module_state_dict(torchfile.load(src)[key])
    assert set(tensors) == set(reference)
    for k, v in reference.items():
        assert tensors[k].shape == v.shape and np.array_equal(tensors[k], np.asarray(v, np.float32)), k
    model2, params2 = exporter.load_safetensors(out)
    assert model2 == model
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, b), params, params2))


def test_rosinality_refusals(tmp_path):
    cfg, params, _ = conv.convert(fixture("nvidia_tiny32_cond.pkl"))
    with pytest.raises(exporter.ExportError, match="conditional"):
        exporter.export(StyleGAN2(cfg), params, tmp_path / "g.pt", "rosinality")
    cfg, params, _ = conv.convert(fixture("nvidia_tiny64_resnet.pkl"))
    with pytest.raises(exporter.ExportError, match="'resnet' architecture"):
        exporter.export(StyleGAN2(cfg), params, tmp_path / "g.pt", "rosinality")
    assert list(tmp_path.iterdir()) == []


def test_torch_load_weights_only(tmp_path):
    torch = pytest.importorskip("torch", reason="torch is not installed here; the layout is proven torch-free above")
    cfg, params, _ = conv.convert(fixture("rosinality_tiny64.pt"))
    out = tmp_path / "g.pt"
    exporter.export(StyleGAN2(cfg), params, out, "rosinality")
    obj = torch.load(out, weights_only=True)
    reference = torch.load(fixture("rosinality_tiny64.pt"), weights_only=True)
    assert set(obj) == {"g_ema", "latent_avg"} and set(obj["g_ema"]) == set(reference["g_ema"])
    for k, v in obj["g_ema"].items():
        assert v.dtype == torch.float32 and v.shape == reference["g_ema"][k].shape
    mine = torchfile.load(out)["g_ema"]
    assert all(np.array_equal(v.numpy(), mine[k]) for k, v in obj["g_ema"].items())
