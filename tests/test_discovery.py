"""The shared discovery trainer: samplers, shifts, learning, exact resume, editors from runs."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxedit import edits
from jaxedit.errors import ConfigError
from jaxedit.io import checkpoint
from jaxedit.models.reconstructor import ReconstructorConfig
from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config
from jaxedit.train import discovery as D

GCFG = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=8, mapping_layers=1, channels=(16, 8))


@pytest.fixture(scope="module")
def gen(tmp_path_factory):
    G = StyleGAN2(GCFG)
    p = G.init(jax.random.key(0))
    dst = tmp_path_factory.mktemp("g") / "tiny"
    checkpoint.save(dst, kind="stylegan2", model=GCFG.to_dict(), params=p, source={"file": "random"})
    return str(dst)


def cfg(gen, **kw):
    base = dict(generator=gen, num_directions=4, batch=8, steps=4, ckpt_every=2, log_every=1,
                reconstructor=ReconstructorConfig(widths=(8, 16)), flow_hidden=(8,))
    return D.DiscoveryConfig(**{**base, **kw})


def test_samplers():
    c = D.DiscoveryConfig(method="linear", batch=64)
    e = np.asarray(D.sample_eps(c, jax.random.key(0), 4096))
    assert np.all(np.abs(e) >= 0.5) and np.all(np.abs(e) <= 6) and np.mean(np.abs(e) == 0.5) > 0.05
    w = np.asarray(D.sample_eps(dataclasses.replace(c, method="warped"), jax.random.key(1), 64))
    assert np.sum(w > 0) == 32 and np.all((np.abs(w) >= 0.1) & (np.abs(w) <= 0.2))


@pytest.mark.parametrize("method", ["linear", "warped", "curvilinear"])
def test_shift_zero_and_step_length(gen, method):
    c = cfg(gen, method=method)
    s = D.make_shift(c, 8)
    p = s.init(jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, 8))
    k = jnp.asarray([0, 1, 2, 3, 0, 1])
    eps = jnp.asarray([0.0, 0.15, -0.15, 0.1, 0.2, -0.2])
    x2, aux = s.apply(p, x, k, eps, jax.random.key(2))
    # measured 0 and 3e-8 (|x| < 2.2: 1 ulp is 2.4e-7)
    np.testing.assert_allclose(x2[0], x[0], atol=3e-7)  # eps 0 is the identity for every family
    if method != "curvilinear":  # unit directions / normalized gradient steps: |shift| = |eps|
        np.testing.assert_allclose(jnp.linalg.norm(x2 - x, axis=1), jnp.abs(eps), atol=1e-7)
    else:
        assert float(aux) >= 0 and np.all(np.isfinite(np.asarray(x2)))


def _two_directions(gen):
    return cfg(gen, method="linear", num_directions=2, eps_range=(3.0, 6.0), lr=3e-3, steps=120, ckpt_every=1000,
               log_every=20)


@pytest.mark.slow  # 120 training steps
def test_learns(gen, tmp_path):
    out = D.train(_two_directions(gen), tmp_path / "a", progress=False)
    assert out["rca"] > 0.8, out  # two directions, large shifts: R must tell them apart


def test_resume_is_exact(gen, tmp_path):
    short = dataclasses.replace(_two_directions(gen), steps=6, ckpt_every=3)
    tr = D.Trainer(short)  # one compiled step for the three runs
    assert D.train(short, tmp_path / "b", stop_at=3, progress=False, trainer=tr)["step"] == 3  # "killed" at 3
    assert not (tmp_path / "b" / "eval.json").exists()
    D.train(None, tmp_path / "b", progress=False, trainer=tr)  # the same command: resumes at 3 with the stored config
    D.train(short, tmp_path / "c", progress=False, trainer=tr)  # uninterrupted
    _, pb, sb = D.load_run(tmp_path / "b")
    _, pc, sc = D.load_run(tmp_path / "c")
    assert sb == sc == 6
    jax.tree.map(np.testing.assert_array_equal, pb, pc)
    assert D.load_run_config(tmp_path / "b").steps == 6  # resuming did not reset the step budget


@pytest.mark.slow  # a long duplicate (default-run budget)
def test_cli_resume_keeps_the_stored_config_and_extends(gen, tmp_path, capsys):
    from jaxedit.cli.main import main

    run = tmp_path / "cli"
    new = ["discover", str(run), "--method", "linear", "--generator", gen, "--directions", "2", "--batch-size", "4",
           "--steps", "2", "--seed", "3", "--lr", "0.001"]
    assert main(new + ["--batch-size", "3"]) == 1  # odd batch: refused before any folder exists
    assert not run.exists()
    capsys.readouterr()
    assert main(new) == 0
    assert "near chance" in capsys.readouterr().err  # 2 steps: RCA below 2 x chance (1 / 2 directions) warns
    assert main(["discover", str(run), "--steps", "3"]) == 0  # extends; every other setting is the stored one
    stored = D.load_run_config(run)
    assert (stored.steps, stored.seed, stored.batch, stored.num_directions, stored.lr) == (3, 3, 4, 2, 1e-3)
    assert D.load_run(run)[2] == 3
    capsys.readouterr()
    assert main(["discover", str(run), "--batch-size", "8"]) == 1
    assert "batch 4 -> 8" in capsys.readouterr().err


@pytest.mark.parametrize("method", [pytest.param("linear", marks=pytest.mark.slow), "warped"])
def test_editor_from_run_reproduces_the_trained_shift(gen, tmp_path, method):
    c = cfg(gen, method=method, steps=2)
    D.train(c, tmp_path / method, progress=False)
    ed = D.load_editor(tmp_path / method)
    _, params, _ = D.load_run(tmp_path / method)
    s = D.make_shift(c, 8)
    x = jax.random.normal(jax.random.key(3), (4, 8))
    k, eps = jnp.asarray([0, 1, 2, 3]), jnp.full((4,), 0.2 if method == "warped" else 1.5)
    want, _ = s.apply(params["shift"], x, k, eps, None)
    got = edits.apply(ed, x, k, eps)
    np.testing.assert_allclose(got, want, atol=3e-7)  # measured 0 (|x| < 2.1)


def test_resume_refuses_a_different_config(gen, tmp_path):
    D.train(cfg(gen, method="linear", steps=1), tmp_path / "r", progress=False)
    with pytest.raises(ConfigError, match="method 'linear' -> 'warped'"):
        D.train(cfg(gen, method="warped", steps=1), tmp_path / "r", progress=False)
