"""`jaxedit eval lpips / identity` (paired sets) and `jaxedit eval edits` (the edit report) end to end, with
random-weight LPIPS / ArcFace checkpoints converted from the fixtures and the default shapes models."""

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture
from test_e4e import _arcface_state_dict

from jaxedit import edits
from jaxedit.cli.main import main
from jaxedit.converters import e4e as e4e_conv
from jaxedit.converters import lpips as lpips_conv
from jaxedit.data import shapes
from jaxedit.io import checkpoint, files
from jaxedit.io import images as imio
from jaxedit.metrics import paired
from jaxedit.models import irse, lpips

BOUNDARIES = Path(__file__).resolve().parents[1] / "experiments/results/directions_shapes32_interfacegan_boundaries.npy"


@pytest.fixture(scope="module")
def sets(tmp_path_factory):
    """Folders A, A2 (= A), B (other renders), an .npz of A, and the two checkpoints."""
    root = tmp_path_factory.mktemp("paired")
    x = np.asarray(shapes.sample(jax.random.key(0), 6)["image"])
    y = np.asarray(shapes.sample(jax.random.key(1), 6)["image"])
    for name, arr in (("A", x), ("A2", x), ("B", y)):
        (root / name).mkdir()
        for i, im in enumerate(arr):
            imio.save_png(imio.to_uint8(im), root / name / f"img{i}.png")
    np.savez(root / "a.npz", images=imio.to_uint8(x))
    cfg, params, info = lpips_conv.convert(fixture("lpips_vgg_random_backbone_fp16.pth"),
                                           fixture("lpips_vgg_lin_v0.1.pth"))
    checkpoint.save(root / "lpips", kind=lpips.KIND, model=cfg.to_dict(), params=params, source=info)
    acfg, ap, ainfo = e4e_conv.from_arcface(_arcface_state_dict(), "model_ir_se50.pth")
    checkpoint.save(root / "arcface", kind=irse.KIND, model=acfg.to_dict(), params=ap, source=ainfo)
    return root


def _eval(argv, capsys):
    code = main(["eval", *map(str, argv)])
    return code, capsys.readouterr()


def test_paired_lpips_and_identity(sets, capsys):
    r = sets
    code, out = _eval(["lpips", r / "A", r / "A2", "--lpips", r / "lpips", "--json", r / "same.json"], capsys)
    assert code == 0 and out.out.startswith("LPIPS 0.0000 +- 0.0000")
    same = json.loads((r / "same.json").read_text())
    assert same["n"] == 6 and same["mean"] < 1e-6 and sorted(same["per_image"]) == [f"img{i}.png" for i in range(6)]
    assert _eval(["lpips", r / "a.npz", r / "B", "--lpips", r / "lpips", "--json", r / "shift.json"], capsys)[0] == 0
    shift = json.loads((r / "shift.json").read_text())
    assert shift["mean"] > 0.03 and min(shift["per_image"].values()) > 0.01  # measured 0.085, min 0.047 (10 pairs)

    code, out = _eval(["identity", r / "A", r / "a.npz", "--arcface", r / "arcface", "--json", r / "id.json"], capsys)
    assert code == 0 and abs(json.loads((r / "id.json").read_text())["mean"] - 1) < 1e-5
    assert _eval(["identity", r / "A", r / "B", "--arcface", r / "arcface", "--json", r / "id2.json"], capsys)[0] == 0
    assert json.loads((r / "id2.json").read_text())["mean"] < 0.85  # measured 0.58 (10 pairs)

    (r / "A2" / "img3.png").unlink()
    code, out = _eval(["lpips", r / "A", r / "A2", "--lpips", r / "lpips"], capsys)
    assert code == 2 and out.err.count("\n") == 1 and "has no img3.png" in out.err
    code, out = _eval(["identity", r / "A", r / "B", "--arcface", r / "lpips"], capsys)
    assert code == 2 and "--arcface" in out.err and "holds a LPIPS, not an arcface checkpoint" in out.err


def test_identity_input_is_the_reference_crop():
    x = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)), jnp.float32)
    got = paired.identity_input(x, 112)
    want = irse.face_crop(irse.adaptive_avg_pool(x, 256), 112)  # pSp: pool to 256, crop, pool to 112
    np.testing.assert_array_equal(got, want)
    assert paired.identity_input(x, 112, "none").shape == (2, 112, 112, 3)


def _boundary(path, column: str, space="w"):
    b = np.load(BOUNDARIES)[shapes.FACTOR_NAMES.index(column)]
    edits.save(edits.InterFaceGAN(space=space, directions=jnp.asarray(b)[None]), path,
               provenance={"space": space, "method": {"name": "interfacegan", "attribute": column}})
    return path


def test_edit_report_end_to_end(tmp_path, capsys):
    scale, x = _boundary(tmp_path / "scale", "scale"), _boundary(tmp_path / "x", "x")
    out = tmp_path / "report"
    argv = ["edits", "--directions", scale, x, "--out", out, "--num", 16, "--t", -2, 2, "--batch-size", 64]
    code, res = _eval(argv, capsys)
    assert code == 0, res.err
    assert {p.name for p in out.iterdir()} == {"report.md", "report.json", "grid.png", files.LEDGER}
    rep = json.loads((out / "report.json").read_text())
    rows = {d["name"]: d for d in rep["directions"]}
    assert rows["scale"]["target"] == "scale" and rows["x"]["target"] == "x"
    for name in ("scale", "x"):
        lo, hi = (c["target_change"]["mean"] for c in rows[name]["per_strength"])
        assert lo < -0.05 and hi > 0.05, (name, lo, hi)  # scale: measured -0.25 / +0.32 (32 samples)
        assert rows[name]["per_strength"][1]["frechet"] > 0
    (pair,) = rep["commutativity"]
    assert pair["latent"] < 1e-5 and pair["image"] < 1e-4  # linear W directions commute: x + a + b
    assert "| scale | +2 | scale |" in (out / "report.md").read_text()
    assert imio.image_size(out / "grid.png")[0] > 3 * 32  # rows = directions, columns = -2, 0, +2

    code, res = _eval(argv, capsys)
    assert code == 2 and "add --force" in res.err
    (out / "mine.txt").write_text("user file")
    code, res = _eval(argv[:-2] + ["--k", "3", "--force"], capsys)
    assert code == 2 and "--k 3: " in res.err and "has 1 direction (0-0)" in res.err and (out / "mine.txt").exists()


def test_summarize_and_markdown_on_known_readings():
    """Host-side rows from synthetic readings: known attribute moves, unchanged features and embeddings."""
    from jaxedit.metrics import edit_report

    rng = np.random.default_rng(0)
    B, ts = 6, np.array([-1.0, 1.0])
    attrs = rng.uniform(0.2, 0.8, (B, 8))
    probs = np.full((B, 3), 1 / 3)
    feats, emb = rng.normal(size=(B, 16)), rng.normal(size=(B, 4))
    emb /= np.linalg.norm(emb, axis=-1, keepdims=True)
    moved = np.stack([attrs + 0.1 * t * np.eye(8)[2] for t in ts])[None]  # scale moves by 0.1 t
    out = {"original": {"attrs": attrs, "probs": probs, "features": feats, "identity": emb},
           "edited": {"attrs": moved, "probs": np.broadcast_to(probs, (1, 2, B, 3)),
                      "features": np.broadcast_to(feats, (1, 2, B, 16)), "identity": np.broadcast_to(emb, (1, 2, B, 4))},
           "compare": {"lpips": np.zeros((1, 2, B))}, "grid": np.zeros((1, 2, 32, 32, 3))}
    (row,) = edit_report.summarize(out, ts)
    assert row["target"] == "scale" and not row["target_given"] and abs(row["slope"][2] - 0.1) < 1e-6
    lo, hi = row["per_strength"]
    assert abs(lo["target_change"]["mean"] + 0.1) < 1e-6 and abs(hi["target_change"]["mean"] - 0.1) < 1e-6
    assert hi["largest_other"]["mean_abs"] < 1e-6 and hi["probe_distance"]["mean"] == 0
    assert abs(hi["frechet"]) < 1e-6 and abs(hi["identity"]["mean"] - 1) < 1e-9 and hi["lpips"]["mean"] == 0
    report = {"generator": "g", "probe": "p", "num": B, "seed": 0, "psi": 1.0, "frechet_features": "probe embeddings",
              "frechet_floor": 1.0, "directions": [dict(row, name="d")], "commutativity": [], "seconds": 1.0}
    md = edit_report.markdown(report)
    assert "| d | +1 | scale (largest) | +0.100 +- " in md and "| identity |" in md.splitlines()[4]
