"""`jaxedit text-edit --latents`: W+ codes (jaxedit invert's latents.npz, or a .npy) as the start latents
instead of --seeds; the same edit as the seeds they came from, rows named by the latents, and a bad file
or flag is one line before any compute."""

import logging

import jax
import numpy as np
import pytest
from PIL import Image

import jaxedit
from jaxedit.cli.main import main
from jaxedit.io import images as imio

PSI = 0.7  # text-edit's default truncation of the seeds' start latents


@pytest.fixture(scope="module")
def seeds_ws():
    """Seeds 0 and 5 and their W+ codes as text-edit maps them (z as NVIDIA's generate.py, psi 0.7)."""
    G, gp = jaxedit.load("shapes32-stylegan2")
    z = np.stack([np.random.RandomState(s).randn(G.cfg.z_dim) for s in (0, 5)]).astype(np.float32)
    return G, gp, np.asarray(G.mapping(gp, z, psi=PSI))


def png(path):
    return np.asarray(Image.open(path), np.int16)


@pytest.mark.slow  # a long duplicate (default-run budget)
def test_shift_from_latents_equals_shift_from_their_seeds(seeds_ws, tmp_path, capsys):
    G, gp, ws = seeds_ws
    np.savez(tmp_path / "latents.npz", names=np.asarray(["img0", "img5"]), ws=ws)  # as jaxedit invert writes it
    run = ["text-edit", "--method", "shift", "--prompt", "a red shape", "--steps", "2", "--strengths", "0,1"]
    assert main([*run, "--seeds", "0,5", "--save", str(tmp_path / "s.npz"), "--out", str(tmp_path / "s.png")]) == 0
    assert main([*run, "--latents", str(tmp_path / "latents.npz"), "--save", str(tmp_path / "l.npz"),
                 "--out", str(tmp_path / "l.png")]) == 0
    assert "2 latents" in capsys.readouterr().out
    by_seeds, by_latents = np.load(tmp_path / "s.npz"), np.load(tmp_path / "l.npz")
    assert list(by_latents["names"]) == ["img0", "img5"] and "seeds" not in by_latents
    x = by_seeds["shifts"][0]
    assert np.abs(x).max() > 0
    np.testing.assert_allclose(by_latents["shifts"][0], x, atol=1e-4)  # the same optimization from the same W+
    # the grid: rows = the latents' names, k=0 the given W+ rendered as is, k=1 with the seeds' shift
    cells = [G.synthesis(gp, ws), G.synthesis(gp, ws, deltas={"b16.conv1": jax.numpy.asarray(x)})]
    grid = np.stack([np.asarray(c) for c in cells], 1).reshape(-1, *cells[0].shape[1:])
    want = png(imio.save_grid(grid, tmp_path / "expect.png", cols=2,
                              row_labels=["a red shape / img0", "a red shape / img5"], col_labels=["0", "+1"]))
    got = png(tmp_path / "l.png")
    assert got.shape == want.shape and np.max(np.abs(got - want)) <= 1


def test_bad_latents_and_flag_mixes_are_one_line_before_compute(seeds_ws, tmp_path, capsys, caplog):
    G, _, ws = seeds_ws
    np.savez(tmp_path / "wide.npz", names=np.asarray(["a", "b"]), ws=np.zeros((2, G.cfg.num_ws, G.cfg.w_dim + 1)))
    np.save(tmp_path / "flat.npy", ws[:, 0])
    np.savez(tmp_path / "nan.npz", ws=np.where(np.arange(ws.shape[-1]) == 3, np.nan, ws))
    np.savez(tmp_path / "nows.npz", w=ws)
    np.savez(tmp_path / "names.npz", names=np.asarray(["a"]), ws=ws)  # one name for two latents
    np.save(tmp_path / "ok.npy", ws)
    base = ["text-edit", "--method", "global", "--prompt", "a red shape", "--out", str(tmp_path / "e.png")]
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax._src.interpreters.pxla"):
            for name, words in [("wide.npz", [f"{G.cfg.w_dim}]"]), ("flat.npy", ["expected"]), ("nan.npz", ["finite"]),
                                ("nows.npz", ["'ws'"]), ("names.npz", ["name"]), ("missing.npz", ["no such file"])]:
                assert main([*base, "--latents", str(tmp_path / name)]) == 2, name
                err = capsys.readouterr().err.strip().splitlines()
                assert len(err) == 1 and "--latents" in err[0] and name in err[0], err
                assert all(w in err[0] for w in words), err
            # --latents replaces --seeds (refused together); --psi does not apply to them
            good = ["--latents", str(tmp_path / "ok.npy")]
            for extra, flag in [(["--seeds", "0,5"], "--seeds"), (["--psi", "0.5"], "--psi")]:
                assert main([*base, *good, *extra]) == 2
                err = capsys.readouterr().err.strip().splitlines()
                assert len(err) == 1 and flag in err[0] and "--latents" in err[0], err
    finally:
        jax.config.update("jax_log_compiles", False)
    assert not [r for r in caplog.records if "Compiling" in r.getMessage()]  # refused before any model compute


def test_optimize_starts_from_the_given_latents(seeds_ws, tmp_path):
    G, gp, ws = seeds_ws
    np.save(tmp_path / "w.npy", ws[1:])  # a .npy: rows named image 0, ...
    assert main(["text-edit", "--prompt", "a red shape", "--steps", "1", "--latents", str(tmp_path / "w.npy"),
                 "--save", str(tmp_path / "r.npz"), "--out", str(tmp_path / "o.png")]) == 0
    saved = np.load(tmp_path / "r.npz")
    assert list(saved["names"]) == ["image 0"] and saved["ws"].shape == (1, 1, G.cfg.num_ws, G.cfg.w_dim)
    cells = [G.synthesis(gp, ws[1:]), G.synthesis(gp, saved["ws"][0])]  # the original column: the given W+ as is
    want = png(imio.save_grid(np.concatenate([np.asarray(c) for c in cells]), tmp_path / "expect.png", cols=2,
                              row_labels=["image 0"], col_labels=["original", "a red shape"]))
    got = png(tmp_path / "o.png")
    assert got.shape == want.shape and np.max(np.abs(got - want)) <= 1
