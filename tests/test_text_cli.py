"""`jaxedit text-edit` on the default models: its grid and saved results equal a direct call of
jaxedit.edits.text, several prompts run as ONE compiled program, and bad input is one line."""

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxedit.io import checkpoint

from jaxedit.models import stylegan2
from jaxedit.cli.main import main
from jaxedit.io import images as imio
from jaxedit.edits import text
from jaxedit.models import mapper as mapper_lib
from jaxedit.models import clip

PROMPTS = ["a red shape", "a large square"]


@pytest.fixture(scope="module")
def models():
    G, gp = stylegan2.load(checkpoint.default_path("shapes32-stylegan2"))
    guide, cp, tok = clip.load_guide(checkpoint.default_path("shapes-clip"))
    return G, gp, guide, cp, tok


def z_of(seeds, dim):
    return np.stack([np.random.RandomState(s).randn(dim) for s in seeds]).astype(np.float32)


def png(path):
    return np.asarray(Image.open(path), np.int16)


@pytest.mark.slow  # a long duplicate (default-run budget): test_text_edit_latents checks the optimize grid
def test_optimize_grid_and_saved_latents_equal_direct_call(models, tmp_path, caplog):
    G, gp, guide, cp, tok = models
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax._src.interpreters.pxla"):
            assert main(["text-edit", *sum((["--prompt", p] for p in PROMPTS), []), "--steps", "3", "--seeds", "0,5",
                         "--save", str(tmp_path / "r.npz"), "--out", str(tmp_path / "g.png")]) == 0
    finally:
        jax.config.update("jax_log_compiles", False)
    assert sum("Compiling jit(run)" in r.getMessage() for r in caplog.records) == 1  # all prompts: one program
    saved = np.load(tmp_path / "r.npz")
    assert list(saved["prompts"]) == PROMPTS and saved["ws"].shape == (2, 2, G.cfg.num_ws, G.cfg.w_dim)
    w0 = G.mapping(gp, z_of((0, 5), G.cfg.z_dim), psi=0.7)
    t = guide.embed_texts(cp, jnp.asarray(tok(PROMPTS, context_length=guide.model.cfg.context_length)))
    direct = text.optimize_latents(G, gp, lambda x: guide.embed_images(cp, x), w0, t, steps=3)
    np.testing.assert_allclose(saved["ws"], direct.ws, atol=1e-4)
    assert float(jnp.max(jnp.abs(direct.ws - w0[None]))) > 1e-3  # it moved
    cells = [G.synthesis(gp, w0)] + [G.synthesis(gp, jnp.asarray(saved["ws"][p])) for p in range(2)]
    expect = np.stack(cells, 1).reshape(-1, *cells[0].shape[1:])  # rows = seeds, columns = original + prompts
    want = png(imio.save_grid(np.asarray(expect), tmp_path / "expect.png", cols=3, row_labels=["seed 0", "seed 5"],
                              col_labels=["original", *PROMPTS]))
    got = png(tmp_path / "g.png")
    assert got.shape == want.shape and np.max(np.abs(got - want)) <= 1


@pytest.mark.slow  # a long duplicate (default-run budget)
def test_shift_grid_k0_is_the_original_and_k_scales_the_saved_shift(models, tmp_path):
    G, gp, *_ = models
    run = ["text-edit", "--method", "shift", "--prompt", "a red shape", "--steps", "2", "--seeds", "1",
           "--strengths", "0,1", "--save", str(tmp_path / "s.npz"), "--out", str(tmp_path / "s.png")]
    assert main(run) == 0
    x = np.load(tmp_path / "s.npz")["shifts"][0]
    assert x.shape == G.layer_weight_shape("b16.conv1") and np.abs(x).max() > 0
    ws = G.mapping(gp, z_of((1,), G.cfg.z_dim), psi=0.7)
    cells = [G.synthesis(gp, ws), G.synthesis(gp, ws, deltas={"b16.conv1": jnp.asarray(x)})]
    want = png(imio.save_grid(np.asarray(jnp.concatenate(cells)), tmp_path / "expect.png", cols=2,
                              row_labels=["a red shape / 1"], col_labels=["0", "+1"]))
    assert np.max(np.abs(png(tmp_path / "s.png") - want)) <= 1
    assert main(run) == 2  # --save exists: not overwritten without --force


@pytest.mark.slow
def test_global_uses_fewer_channels_at_higher_beta(models, tmp_path, capsys):
    args = ["text-edit", "--method", "global", "--prompt", "a red shape", "--seeds", "0", "--fs3-images", "2",
            "--stats-samples", "2000", "--strengths", "0,2", "--save", str(tmp_path / "g.npz"), "--force", "--out"]
    counts = []
    for beta in ("0.05", "0.3"):
        assert main([*args, str(tmp_path / f"{beta}.png"), "--beta", beta]) == 0
        counts.append(int(capsys.readouterr().out.split("channels above beta")[0].split()[-1]))
    assert counts[0] > counts[1] >= 0
    saved = np.load(tmp_path / "g.npz")
    assert saved["fs3"].shape[1] == 128 and np.allclose(np.linalg.norm(saved["fs3"], axis=1), 1, atol=1e-4)
    # the same fs3 given as a released-style file: same channels, same grid
    np.save(tmp_path / "fs3.npy", saved["fs3"])
    assert main([*args, str(tmp_path / "f.png"), "--beta", "0.3", "--fs3", str(tmp_path / "fs3.npy")]) == 0
    assert int(capsys.readouterr().out.split("channels above beta")[0].split()[-1]) == counts[1]
    assert np.max(np.abs(png(tmp_path / "f.png") - png(tmp_path / "0.3.png"))) <= 1
    np.save(tmp_path / "bad.npy", saved["fs3"][:5])
    assert main([*args, str(tmp_path / "f.png"), "--fs3", str(tmp_path / "bad.npy")]) == 1
    assert "bad.npy" in capsys.readouterr().err


def test_text_edit_errors_are_one_line(tmp_path, capsys):
    assert main(["text-edit", "--method", "shift", "--layer", "b99.conv9", "--prompt", "x", "--out",
                 str(tmp_path / "e.png")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "b99.conv9" in err[0] and "b16.conv1" in err[0]
    assert main(["text-edit", "--prompt", " ", "--out", str(tmp_path / "e.png")]) == 2
    assert main(["text-edit", "--prompt", "x", "--clip", str(tmp_path / "nope"), "--out", str(tmp_path / "e.png")]) == 1
    assert "nope" in capsys.readouterr().err


@pytest.mark.slow
def test_mapper_trains_saves_and_reapplies_the_same_grid(models, tmp_path, caplog):
    G, gp, guide, cp, tok = models
    base = ["text-edit", "--method", "mapper", "--seeds", "2,3"]
    jax.config.update("jax_log_compiles", True)
    try:
        with caplog.at_level(logging.WARNING, logger="jax._src.interpreters.pxla"):
            assert main([*base, *sum((["--prompt", p] for p in PROMPTS), []), "--steps", "3", "--batch-size", "2",
                         "--id-lambda", "0.3",
                         "--save-mapper", str(tmp_path / "m"), "--save", str(tmp_path / "r.npz"),
                         "--out", str(tmp_path / "t.png")]) == 0
    finally:
        jax.config.update("jax_log_compiles", False)
    assert sum("Compiling jit(run)" in r.getMessage() for r in caplog.records) == 1  # training + edit: one program
    M, mp, prompts = mapper_lib.load_mappers(tmp_path / "m")
    assert prompts == PROMPTS and M.cfg == mapper_lib.MapperConfig.for_generator(G.cfg.num_ws, G.cfg.w_dim)
    t = guide.embed_texts(cp, jnp.asarray(tok(PROMPTS, context_length=guide.model.cfg.context_length)))
    embed = lambda x: guide.embed_images(cp, x)  # noqa: E731
    direct = text.train_mappers(M, G, gp, embed, t, jax.random.key(0), steps=3, batch=2, lr=0.5,  # CLI defaults
                                identity=embed, id_lambda=0.3)  # --id-lambda: CLIP's image tower as identity
    for a, b in zip(jax.tree_util.tree_leaves(direct.params), jax.tree_util.tree_leaves(mp)):
        np.testing.assert_allclose(a, b, atol=2e-4)  # Adam at lr 0.5 on float noise of eager vs jit
    w0 = G.mapping(gp, z_of((2, 3), G.cfg.z_dim), psi=0.7)
    ws = np.load(tmp_path / "r.npz")["ws"]
    np.testing.assert_allclose(ws[1], M(jax.tree.map(lambda a: a[1], mp), w0), atol=1e-5)
    assert np.abs(ws - np.asarray(w0)[None]).max() > 1e-4  # the mappers moved the latents
    # the saved mappers re-applied (no training, prompts from the checkpoint): the same grid
    assert main([*base, "--mapper", str(tmp_path / "m"), "--out", str(tmp_path / "a.png")]) == 0
    assert np.max(np.abs(png(tmp_path / "a.png") - png(tmp_path / "t.png"))) <= 1
    assert main([*base, "--prompt", "x", "--steps", "1", "--save-mapper", str(tmp_path / "m"),
                 "--out", str(tmp_path / "b.png")]) == 1  # not overwritten without --force
    assert main([*base, "--mapper", str(tmp_path / "m"), "--prompt", "x", "--out", str(tmp_path / "b.png")]) == 2


def test_convert_mapper_reads_the_torch_file_and_round_trips(tmp_path, capsys):
    """``tests/data/styleclip_mapper_tiny.pt`` (written by torch; see tests/test_edits_text.py) ->
    a mapper checkpoint whose forward equals the torch forward; its prompt is the file's description."""
    data = Path(__file__).parent / "data"
    assert main(["convert", "mapper", str(data / "styleclip_mapper_tiny.pt"), str(tmp_path / "m")]) == 0
    M, mp, prompts = mapper_lib.load_mappers(tmp_path / "m")
    assert prompts == ["purple hair"] and M.cfg.groups == (True, True, False)
    ref = np.load(data / "styleclip_mapper_tiny_ref.npz")
    np.testing.assert_allclose(M(jax.tree.map(lambda a: a[0], mp), jnp.asarray(ref["ws"])), ref["w_hat"], atol=1e-5)
    capsys.readouterr()
    assert main(["convert", "mapper", str(data / "styleclip_mapper_tiny.pt"), str(tmp_path / "m")]) == 1
    assert "already exists" in capsys.readouterr().err
    # a 1024 px mapper does not fit the 32 px default generator: one line naming both shapes
    assert main(["text-edit", "--method", "mapper", "--mapper", str(tmp_path / "m"), "--out",
                 str(tmp_path / "x.png")]) == 2
    assert "18 x 8" in capsys.readouterr().err
