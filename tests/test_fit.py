"""Fitting directions with provenance: `jaxedit fit interfacegan | ganspace` and jaxedit.edits.fit."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxedit import edits
from jaxedit.cli.main import main
from jaxedit.edits import fit
from jaxedit.errors import InputError
from jaxedit.io import checkpoint
from jaxedit.models import stylegan2


def _unit(x):
    return x / jnp.linalg.norm(x)


def test_svm_boundary_separates_and_conditions_project_off():
    d, n = 16, 4000
    x = jax.random.normal(jax.random.key(0), (n, d)) * 2.0 + 5.0  # offset like W's mean
    true = _unit(jax.random.normal(jax.random.key(1), (d,)))
    cond = _unit(true + jax.random.normal(jax.random.key(2), (d,)))  # correlated with the target
    scores = np.stack([np.asarray(x @ true), np.asarray(x @ cond)], 1)
    r = fit.interfacegan(x, scores[:, 0], key=jax.random.key(3), ratio=0.05)
    assert float(r.val_accuracy) == 1.0 and float(r.train_accuracy) == 1.0
    assert float(r.normal @ true) > 0.7  # towards higher scores (a max-margin normal of the extremes, not exact)
    np.testing.assert_allclose(r.normal, r.primal)
    np.testing.assert_allclose(r.projections, x @ r.normal, rtol=1e-5)
    c = fit.interfacegan(x, scores[:, 0], key=jax.random.key(3), ratio=0.05, condition_scores=scores[:, 1:])
    np.testing.assert_allclose(c.primal, r.primal)
    assert c.conditions.shape == (1, d) and float(c.condition_val_accuracy[0]) == 1.0
    assert abs(float(c.normal @ c.conditions[0])) < 1e-5 and abs(float(jnp.linalg.norm(c.normal)) - 1) < 1e-5


def test_strength_range_and_params_hash():
    p = np.random.RandomState(0).normal(3.0, 2.0, 100_000)
    lo, hi = fit.strength_range(p, absolute=False)
    assert lo == -hi and abs(hi - 6.0) < 0.05
    lo, hi = fit.strength_range(p, absolute=True)
    assert abs(lo + 3.0) < 0.1 and abs(hi - 9.0) < 0.1
    np.testing.assert_allclose(fit.default_strengths({"strength_range": [-2, 4]}, 4), [-2, 0, 2, 4])
    assert fit.default_strengths({}) is None
    a = {"b": {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}, "a": np.ones(2, np.float32)}
    same = {"a": jnp.ones(2), "b": {"w": jnp.arange(6.0).reshape(2, 3)}}
    assert fit.params_sha256(a) == fit.params_sha256(same)
    assert fit.params_sha256(a) != fit.params_sha256({**a, "a": np.asarray([1, 1.5], np.float32)})
    assert fit.params_sha256(a) != fit.params_sha256({**a, "b": {"w": a["b"]["w"].reshape(3, 2)}})


def test_check_provenance_names_both():
    prov = {"generator": {"name": "ffhq", "sha256": "a" * 64}, "space": "w"}
    fit.check_provenance(prov, "copy-of-ffhq", "a" * 64, "w")  # same weights, other name: fine
    fit.check_provenance(None, "x", "b" * 64, "z")  # released files carry no provenance
    with pytest.raises(InputError) as e:
        fit.check_provenance(prov, "shapes32", "b" * 64, "w")
    msg = str(e.value)
    assert "ffhq" in msg and "shapes32" in msg and "aaaaaaaaaaaa" in msg and "bbbbbbbbbbbb" in msg and "\n" not in msg
    with pytest.raises(InputError) as e:
        fit.check_provenance(prov, "ffhq", "a" * 64, "z")
    assert "W space" in str(e.value) and "Z space" in str(e.value)


def _default():
    path = checkpoint.default_path("shapes32-stylegan2")
    G, gp = stylegan2.load(path)
    return path, G, gp


def test_cli_interfacegan_probe_writes_editor_with_provenance(tmp_path, capsys):
    out = tmp_path / "scale"
    assert main(["fit", "interfacegan", "--attribute", "scale", "--num", "200", "--ratio", "0.1",
                 "--out", str(out)]) == 0
    assert "validation accuracy" in capsys.readouterr().out
    path, G, gp = _default()
    ed = edits.load(out)
    assert isinstance(ed, edits.InterFaceGAN) and ed.space == "w" and ed.directions.shape == (1, G.cfg.w_dim)
    prov = edits.read_provenance(out)
    assert prov["generator"] == {"name": "shapes32-stylegan2", "sha256": fit.params_sha256(gp)}
    assert prov["space"] == "w" and prov["layers"] == [0, G.cfg.num_ws]
    lo, hi = prov["strength_range"]
    f = prov["method"]
    assert f["name"] == "interfacegan" and f["attribute"] == "scale" and f["samples"] == 200
    assert f["per_class"] == 20 and f["ratio"] == 0.1
    assert f["svm_C"] == 1.0 and 0.5 <= f["val_accuracy"] <= 1 and f["scores"]["name"] == "shapes32-probe"
    assert abs(hi - 3 * f["projection_std"]) < 1e-6 and lo == -hi
    meta = json.loads((out / "jaxedit.json").read_text())
    assert meta["kind"] == "editor"
    fit.check_provenance(prov, "anything", fit.params_sha256(gp), "w")


def test_cli_interfacegan_scores_file_z_space_and_conditions(tmp_path):
    rng = np.random.RandomState(0)
    s = tmp_path / "s.npz"
    np.savez(s, smile=rng.randn(100), age=rng.randn(100))
    out = tmp_path / "smile"
    assert main(["fit", "interfacegan", "--attribute", "smile", "--condition", "age", "--scores", str(s),
                 "--seeds", "10-109", "--space", "z", "--ratio", "0.1", "--out", str(out)]) == 0
    assert edits.load(out).space == "z"
    prov = edits.read_provenance(out)
    assert prov["space"] == "z" and prov["layers"] is None and prov["method"]["conditions"] == ["age"]
    assert prov["method"]["scores"]["source"] == "file" and prov["method"]["seeds"] == "10-109"
    lo, hi = prov["strength_range"]
    m = prov["method"]["projection_mean"]
    assert abs((lo + hi) / 2 - m) < 1e-6  # absolute Z distances around the samples' mean


def test_cli_ganspace(tmp_path):
    out = tmp_path / "pcs"
    assert main(["fit", "ganspace", "--components", "3", "--num", "2000", "--batch-size", "500", "--layers", "0:4",
                 "--out", str(out)]) == 0
    ed = edits.load(out)
    assert isinstance(ed, edits.GANSpace) and ed.layers == (0, 4) and ed.comp.shape == (3, 64)
    prov = edits.read_provenance(out)
    assert prov["method"]["name"] == "ganspace" and prov["layers"] == [0, 4] and prov["strength_range"] == [-3.0, 3.0]
    assert prov["method"]["samples"] == 2000 and np.allclose(prov["method"]["stdev"], ed.stdev)


@pytest.mark.parametrize("argv, code, words", [
    (["--attribute", "smile"], 2, ["'smile'", "--scores"]),
    (["--attribute", "x", "--num", "10", "--seeds", "0-9"], 2, ["--seeds and --num"]),
    (["--attribute", "x", "--num", "50"], 2, ["--ratio 0.02", "at least 2"]),
    (["--attribute", "x", "--condition", "x"], 2, ["differ"]),
    (["--attribute", "x", "--space", "z", "--layers", "0:2"], 2, ["--layers"]),
    (["--attribute", "x", "--layers", "0:99"], 2, ["--layers 0:99"]),
    (["--attribute", "x", "--ratio", "0.7"], 2, ["--ratio"]),
])
def test_cli_refuses_bad_flags_before_writing(tmp_path, capsys, argv, code, words):
    out = tmp_path / "o"
    assert main(["fit", "interfacegan", *argv, "--out", str(out)]) == code
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and all(w in err for w in words), err
    assert not out.exists()


@pytest.mark.parametrize("flag", [["--ratio", "0"], ["--svm-c", "-1"], ["--num", "0"], ["--psi", "nan"]])
def test_cli_flag_types_checked_at_parse_time(tmp_path, flag):
    with pytest.raises(SystemExit) as e:
        main(["fit", "interfacegan", "--attribute", "x", *flag, "--out", str(tmp_path / "o")])
    assert e.value.code == 2 and not (tmp_path / "o").exists()


def test_cli_refuses_bad_scores_file(tmp_path, capsys):
    s = tmp_path / "s.npy"
    np.save(s, np.zeros(99))
    assert main(["fit", "interfacegan", "--attribute", "a", "--scores", str(s), "--num", "100", "--ratio", "0.1",
                 "--out", str(tmp_path / "o")]) == 1
    assert "100 finite numbers" in capsys.readouterr().err
    assert main(["fit", "interfacegan", "--attribute", "a", "--condition", "b", "--scores", str(s), "--num", "99",
                 "--ratio", "0.1", "--out", str(tmp_path / "o")]) == 2
    assert "--condition needs named scores" in capsys.readouterr().err


def test_edit_refuses_other_generator_or_space_and_defaults_to_strength_range(tmp_path, capsys):
    _, G, gp = _default()
    n = jnp.zeros((1, G.cfg.w_dim)).at[0, 0].set(1.0)
    other = tmp_path / "other"
    edits.save(edits.InterFaceGAN(directions=n, space="w"), other,
               provenance={"generator": {"name": "ffhq", "sha256": "f" * 64}, "space": "w"})
    png = tmp_path / "e.png"
    edit = ["edit", "--method", "interfacegan", "--seeds", "0", "--out", str(png)]
    assert main([*edit, "--directions", str(other)]) == 1
    err = capsys.readouterr().err.strip()
    assert "ffhq" in err and "shapes32-stylegan2" in err and err.count("\n") == 0 and not png.exists()
    mine = tmp_path / "mine"
    edits.save(edits.InterFaceGAN(directions=n, space="w"), mine,
               provenance={"generator": fit.generator_identity("shapes32-stylegan2", gp), "space": "w",
                           "strength_range": [-0.5, 1.0]})
    assert main([*edit, "--directions", str(mine), "--space", "z"]) == 1
    err = capsys.readouterr().err
    assert "W space" in err and "Z" in err and not png.exists()
    assert main([*edit, "--directions", str(mine)]) == 0
    assert "[-0.5, -0.25, 0.0, 0.25, 0.5, 0.75, 1.0]" in capsys.readouterr().out and png.exists()
