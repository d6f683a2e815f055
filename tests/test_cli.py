"""The jaxedit CLI, through ``main`` in this process and, where that matters, as the installed console script:
convert, info, sample, and its one-line errors."""

import contextlib
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from jaxedit.cli.main import main
from jaxedit.io import checkpoint

from conftest import fixture, max_abs, ref

JAXEDIT = shutil.which("jaxedit", path=str(Path(sys.executable).parent)) or shutil.which("jaxedit")


def run(*args, env=None, ok=True, process=False):
    """``jaxedit ARGS`` -> an object with ``returncode``, ``stdout``, ``stderr``. In this process through
    ``main`` (as the console script calls it; about 3 s of interpreter and jax start-up saved per call), or
    with ``process=True`` as the installed console script in a subprocess."""
    if process:
        if JAXEDIT is None:
            pytest.fail("the jaxedit console script is not installed (pip install -e .)")
        out = subprocess.run([JAXEDIT, *map(str, args)], capture_output=True, text=True, timeout=600,
                             env=dict(os.environ, **(env or {})))
    else:
        stdout, stderr = io.StringIO(), io.StringIO()
        with pytest.MonkeyPatch.context() as mp, contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            for k, v in (env or {}).items():
                mp.setenv(k, v)
            try:
                code = main(list(map(str, args)))
            except SystemExit as e:  # argparse's usage errors exit 2, as in the console script
                code = e.code
        out = subprocess.CompletedProcess(args, code, stdout.getvalue(), stderr.getvalue())
    if ok:
        assert out.returncode == 0, f"jaxedit {args} failed:\n{out.stdout}\n{out.stderr}"
    return out


def one_line_error(out, *needles, code=2):
    """Exit 2 for a bad flag (UsageError), 1 for a bad file or value (other JaxeditErrors)."""
    assert out.returncode == code, (out.returncode, out.stdout, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("jaxedit ") and ": error: " in lines[0], out.stderr
    for n in needles:
        assert n in lines[0], (n, lines[0])


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    dst = tmp_path_factory.mktemp("ck") / "tiny32"
    out = run("convert", "stylegan2", fixture("nvidia_tiny32.pkl"), dst)
    assert "resolution 32, num_ws 8" in out.stdout and "bit-identical, forward pass max |diff|" in out.stdout
    return dst


def test_convert_writes_checkpoint_with_provenance(ckpt):
    meta = json.loads((ckpt / "jaxedit.json").read_text())
    assert meta["kind"] == "stylegan2" and meta["model"]["img_resolution"] == 32
    assert meta["source"]["file"] == "nvidia_tiny32.pkl" and meta["source"]["network"] == "G_ema"
    manifest = json.loads(fixture("manifest.json").read_text())
    assert meta["source"]["sha256"] == manifest["nvidia_tiny32"]["sha256"]
    assert meta["source"]["converter"]


@pytest.mark.slow  # the library's force rules: tests/test_checkpoint_safety.py; this is the CLI's subprocess route
def test_convert_refuses_to_overwrite(ckpt, tmp_path):
    one_line_error(run("convert", "stylegan2", fixture("nvidia_tiny32.pkl"), ckpt, ok=False), "already exists", "--force", code=1)
    mine = tmp_path / "mine"
    (mine / "params").mkdir(parents=True)
    (mine / "params" / "notes.txt").write_text("precious")
    out = run("convert", "stylegan2", fixture("nvidia_tiny32.pkl"), mine, "--force", ok=False)
    one_line_error(out, "params exist", "did not write", code=1)
    assert (mine / "params" / "notes.txt").read_text() == "precious"
    # a probe checkpoint is not replaced by a generator unless asked; the user's model card survives
    probe = tmp_path / "probe"
    checkpoint.save(probe, kind="probe", model={}, params={"w": np.zeros(2, np.float32)})
    (probe / "README.md").write_bytes(b"card \x00\xff")
    one_line_error(run("convert", "stylegan2", fixture("nvidia_tiny32.pkl"), probe, "--force", ok=False),
                   "holds a 'probe' checkpoint", code=1)
    run("convert", "stylegan2", fixture("nvidia_tiny32.pkl"), probe, "--force", "--replace-kind")
    assert checkpoint.read_meta(probe)["kind"] == "stylegan2" and (probe / "README.md").read_bytes() == b"card \x00\xff"


@pytest.mark.slow  # as above
def test_convert_force_overwrites_checkpoint(tmp_path):
    dst = tmp_path / "ck"
    run("convert", "stylegan2", fixture("nvidia_tiny32.pkl"), dst)
    run("convert", "stylegan2", fixture("nvidia_tiny32_cond.pkl"), dst, "--force")
    assert json.loads((dst / "jaxedit.json").read_text())["model"]["c_dim"] == 5


def test_info(ckpt):
    out = run("info", ckpt)
    assert "stylegan2" in out.stdout and "num_ws = 8" in out.stdout and "b32.torgb" in out.stdout
    assert json.loads(run("info", ckpt, "--json").stdout)["model"]["w_dim"] == 64


def test_sample_matches_reference_images(ckpt, tmp_path):
    r = ref("nvidia_tiny32_ref.npz")
    np.save(tmp_path / "z.npy", r["z"])
    run("sample", ckpt, "--z", tmp_path / "z.npy", "--save-images", tmp_path / "img.npy",
        "--save-w", tmp_path / "w.npy", "--out", tmp_path / "grid.png", "--batch-size", 3)
    assert max_abs(np.load(tmp_path / "img.npy"), r["img_const"]) <= 1e-4
    assert max_abs(np.load(tmp_path / "w.npy"), r["w"]) <= 1e-4
    from PIL import Image

    grid = np.asarray(Image.open(tmp_path / "grid.png"))
    assert grid.ndim == 3 and grid.shape[2] == 3 and grid.std() > 10  # a real picture, not blank


@pytest.mark.slow  # a long duplicate (default-run budget)
def test_sample_seeds_truncation_and_conditional(ckpt, tmp_path):
    run("sample", ckpt, "--seeds", "0-5", "--psi", "0.7", "--cutoff", "4", "--out", tmp_path / "g.png",
        "--save-w", tmp_path / "w.npy")
    ws = np.load(tmp_path / "w.npy")
    assert ws.shape == (6, 8, 64)
    from jaxedit.converters import stylegan2 as conv
    from jaxedit.models.stylegan2 import StyleGAN2

    cfg, params, _ = conv.convert(fixture("nvidia_tiny32.pkl"))
    z5 = np.random.RandomState(5).randn(1, 64).astype(np.float32)  # seeds follow NVIDIA's generate.py
    assert max_abs(ws[5:], StyleGAN2(cfg).mapping(params, z5, psi=0.7, cutoff=4)) <= 1e-5
    cond = tmp_path / "cond"
    run("convert", "stylegan2", fixture("nvidia_tiny32_cond.pkl"), cond)
    r = ref("nvidia_tiny32_cond_ref.npz")
    np.save(tmp_path / "z.npy", r["z"])
    np.save(tmp_path / "c.npy", r["c"])
    run("sample", cond, "--z", tmp_path / "z.npy", "--c", tmp_path / "c.npy", "--save-images", tmp_path / "i.npy")
    assert max_abs(np.load(tmp_path / "i.npy"), r["img_const"]) <= 1e-4
    one_line_error(run("sample", cond, "--seeds", "0-1", "--out", tmp_path / "x.png", ok=False), "conditional")


def test_errors_are_one_line(tmp_path):
    one_line_error(run("convert", "stylegan2", tmp_path / "missing.pkl", tmp_path / "o", ok=False, process=True),
                   "missing.pkl")
    bad = tmp_path / "broken.pkl"
    bad.write_bytes(fixture("nvidia_tiny32.pkl").read_bytes()[:100_000])
    one_line_error(run("convert", "stylegan2", bad, tmp_path / "o", ok=False), "broken.pkl", code=1)
    one_line_error(run("info", tmp_path, ok=False), "not a jaxedit checkpoint", code=1)
    one_line_error(run("sample", tmp_path / "nope", "--out", tmp_path / "g.png", ok=False), "nope", code=1)
    assert not (tmp_path / "o").exists()


def test_convert_without_torch(tmp_path):
    """Conversion works where ``import torch`` fails."""
    code = ("import sys\n"
            "class NoTorch:  # as on a machine without torch: every `import torch` fails\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name == 'torch' or name.startswith('torch.'):\n"
            "            raise ImportError('no torch here')\n"
            "sys.meta_path.insert(0, NoTorch())\n"
            "from jaxedit.cli.main import main\n"
            f"rc = main(['convert', 'stylegan2', {str(fixture('rosinality_tiny64.pt'))!r}, {str(tmp_path / 'r')!r}])\n"
            "assert 'torch' not in sys.modules\n"
            "sys.exit(rc)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert "rosinality-pt" in out.stdout


def test_demo_and_default_model_errors(ckpt, tmp_path):
    out = run("demo", ckpt, "--out", tmp_path / "demo")
    for name in ("samples", "truncation", "style_mixing", "renders"):
        assert (tmp_path / "demo" / f"{name}.png").is_file(), out.stdout
    missing = run("sample", "--out", tmp_path / "g.png", env={"JAXEDIT_CHECKPOINTS": str(tmp_path)}, ok=False)
    one_line_error(missing, "default model 'shapes32-stylegan2' not found", code=1)


def test_convert_clip_and_vocab_mismatch(tmp_path):
    src = tmp_path / "vit.pt"
    src.write_bytes(fixture("clip_tiny_vit_torchscript.pt").read_bytes())
    out = run("convert", "clip", src, tmp_path / "c")
    assert "ViT/" in out.stdout and "vocab 1000" in out.stdout and "bit-identical" in out.stdout
    from jaxedit.models import clip

    C, params = clip.load(tmp_path / "c")
    r = ref("clip_tiny_vit_ref.npz")
    feats = np.asarray(C.encode_image(params, r["image"]))
    assert max_abs(feats, r["image_features_fp16weights"]) < 1e-4 * np.abs(r["image_features_fp16weights"]).max()
    one_line_error(run("convert", "clip", src, tmp_path / "c2", "--vocab", fixture("bpe_simple_vocab_16e6.txt.gz"),
                       ok=False), "49408 tokens", "vocab_size 1000", code=1)


@pytest.mark.parametrize("argv", [
    ["sample", "--psi", "nan", "--out", "{o}/x.png"],
    ["sample", "--batch-size", "0", "--out", "{o}/x.png"],
    ["demo", "--seed", "-1", "--out", "{o}/d"],
    ["edit", "--directions", "{o}/d.npy", "--strengths=nan,1", "--out", "{o}/x.png"],
    ["edit", "--directions", "{o}/d.npy", "--psi", "inf", "--out", "{o}/x.png"],
    ["text-edit", "--prompt", "x", "--lr", "-1", "--out", "{o}/x.png"],
    ["text-edit", "--prompt", "x", "--steps", "1.5", "--out", "{o}/x.png"],
    ["fit", "ganspace", "--components", "0", "--out", "{o}/g"],
    ["discover", "{o}/run", "--method", "linear", "--lr", "0"],
])
def test_bad_numbers_exit_2_before_anything_is_written(tmp_path, argv):
    np.save(tmp_path / "d.npy", np.eye(2, 64, dtype=np.float32))
    before = sorted(p.name for p in tmp_path.iterdir())
    out = run(*(a.format(o=tmp_path) for a in argv), ok=False)
    assert out.returncode == 2, out.stderr
    assert "error: argument" in out.stderr or ": error: " in out.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.slow  # a long duplicate (default-run budget)
def test_convert_stylegan3_and_load(tmp_path):
    """`jaxedit convert stylegan3` writes a checkpoint that jaxedit.load reads (parity: test_stylegan3.py);
    a StyleGAN2 pickle given as stylegan3 is one line naming the file."""
    import jaxedit
    from jaxedit.models.stylegan3 import StyleGAN3

    out = run("convert", "stylegan3", fixture("nvidia_sg3_t32.pkl"), tmp_path / "t")
    assert "bit-identical" in out.stdout
    G, params = jaxedit.load(tmp_path / "t")
    assert isinstance(G, StyleGAN3) and checkpoint.read_meta(tmp_path / "t")["kind"] == "stylegan3"
    one_line_error(run("convert", "stylegan3", fixture("nvidia_tiny32.pkl"), tmp_path / "x", ok=False),
                   "nvidia_tiny32.pkl", code=1)
    assert not (tmp_path / "x").exists()


def test_outputs_are_never_a_users_file(tmp_path):
    """An existing output needs --force, and --force replaces only a file jaxedit wrote and nobody changed since."""
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"the user's picture")
    one_line_error(run("sample", "--seeds", "0", "--out", mine, ok=False), "--out", "exists", "add --force")
    one_line_error(run("sample", "--seeds", "0", "--out", mine, "--force", ok=False), "jaxedit did not write it")
    assert mine.read_bytes() == b"the user's picture"
    ours = tmp_path / "ours.png"
    run("sample", "--seeds", "0", "--out", ours)
    one_line_error(run("sample", "--seeds", "1", "--out", ours, ok=False), "add --force")
    before = ours.read_bytes()
    run("sample", "--seeds", "1", "--out", ours, "--force")
    assert ours.read_bytes() != before  # replaced: jaxedit wrote it
    ours.write_bytes(ours.read_bytes() + b"\0")  # ... then the user changed it: it is theirs now
    one_line_error(run("sample", "--seeds", "1", "--out", ours, "--force", ok=False), "jaxedit did not write it")
    one_line_error(run("demo", "--out", mine, ok=False), "not a directory")
