"""The common Editor interface and the `jaxedit edit` / `traverse` commands."""

import subprocess

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from jaxedit.io import checkpoint
from jaxedit.io import images as imio
from jaxedit.edits import registry as editors, linear, warped
from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config
from test_cli import one_line_error, run

CFG = StyleGAN2Config(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channels=(32, 16, 8))


def _unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def test_linear_wplus_layers_and_identity():
    dirs = _unit(jax.random.normal(jax.random.key(0), (3, 16)))
    ed = editors.Editor("linear", "w", {"directions": dirs}, layers=(2, 5))
    ws = jax.random.normal(jax.random.key(1), (4, 8, 16))
    t = jnp.asarray([0.0, 1.0, -2.0, 3.0])
    out = ed.edit(ws, 1, t)
    expect = ws.at[:, 2:5].add(t[:, None, None] * dirs[1])
    np.testing.assert_allclose(out, expect, atol=1e-6)
    np.testing.assert_array_equal(ed.edit(ws, 2, jnp.zeros(4)), ws)


def test_interfacegan_z_sets_distance_and_ganspace_matches_reference_edit():
    n = _unit(jax.random.normal(jax.random.key(2), (16,)))
    ed = editors.Editor("interfacegan", "z", {"directions": n[None]})
    z = jax.random.normal(jax.random.key(3), (5, 16))
    t = jnp.linspace(-3, 3, 5)
    np.testing.assert_allclose(ed.edit(z, 0, t) @ n, t, atol=1e-5)
    comp = _unit(jax.random.normal(jax.random.key(4), (4, 16)))
    stdev = jnp.asarray([3.0, 2.0, 1.0, 0.5])
    g = editors.Editor("ganspace", "w", {"comp": comp, "stdev": stdev}, layers=(0, 3))
    ws = jax.random.normal(jax.random.key(5), (5, 8, 16))
    np.testing.assert_allclose(g.edit(ws, 2, t), linear.ganspace_edit(ws, comp, stdev, 2, t, 0, 3), atol=1e-6)


def test_warped_strength_is_path_length():
    key = jax.random.key(6)
    p = {"support_sets": jax.random.normal(key, (2, 6, 16)), "alphas": jnp.tile(jnp.asarray([1.0, -1.0]), (2, 3)),
         "log_gamma": jnp.full((2,), jnp.log(1 / 16))}
    ed = editors.Editor("warped", "z", p, eps=0.25)
    z = jax.random.normal(jax.random.key(7), (3, 16))
    out = ed.edit(z, 1, jnp.asarray([0.75, -0.5, 0.0]))  # 3 steps forward, 2 back, none
    np.testing.assert_allclose(out[0], warped.walk(p, z[:1], 1, 3, 0.25)[-1, 0], atol=1e-5)
    np.testing.assert_allclose(out[1], warped.walk(p, z[1:2], 1, 2, -0.25)[-1, 0], atol=1e-5)
    np.testing.assert_array_equal(out[2], z[2])


def test_check_rejects_wrong_dimension():
    G = StyleGAN2(CFG)
    with pytest.raises(editors.EditorError, match="12-dimensional.*16"):
        editors.Editor("linear", "z", {"directions": jnp.ones((2, 12))}).check(G)
    with pytest.raises(editors.EditorError, match="layer range"):
        editors.Editor("linear", "w", {"directions": jnp.ones((2, 16))}, layers=(3, 99)).check(G)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    G = StyleGAN2(CFG)
    params = G.init(jax.random.key(0))
    dst = tmp_path_factory.mktemp("g") / "tiny"
    checkpoint.save(dst, kind="stylegan2", model=CFG.to_dict(), params=params, source={"file": "random"})
    return G, params, dst


def test_edit_cli_grid_equals_direct_render(tiny, tmp_path):
    G, params, ck = tiny
    dirs = np.asarray(_unit(jax.random.normal(jax.random.key(8), (2, 16))))
    np.save(tmp_path / "d.npy", dirs)
    run("edit", ck, "--method", "linear", "--directions", tmp_path / "d.npy", "--direction", "1", "--space", "w",
        "--layers", "0:4", "--strengths=-2:2:3", "--seeds", "3,4", "--out", tmp_path / "g.png")
    z = np.stack([np.random.RandomState(s).randn(16) for s in (3, 4)]).astype(np.float32)
    ws = G.mapping(params, z)
    imgs = [G.synthesis(params, ws.at[:, :4].add(t * dirs[1]), noise_mode="const") for t in (-2.0, 0.0, 2.0)]
    expect = np.stack(imgs, 1).reshape(-1, 16, 16, 3)  # rows = seeds, columns = strengths
    ref_path = imio.save_grid(np.asarray(expect), tmp_path / "expect.png", cols=3)
    got, want = (np.asarray(Image.open(p), np.int16) for p in (tmp_path / "g.png", ref_path))
    assert got.shape == want.shape and np.max(np.abs(got - want)) <= 1


def test_edit_cli_errors(tiny, tmp_path):
    _, _, ck = tiny
    np.save(tmp_path / "d.npy", np.ones((2, 12), np.float32))
    one_line_error(run("edit", ck, "--method", "linear", "--directions", tmp_path / "d.npy", "--out",
                       tmp_path / "g.png", ok=False), "12-dimensional")
    np.save(tmp_path / "d.npy", np.ones((2, 16), np.float32))
    one_line_error(run("edit", ck, "--method", "linear", "--directions", tmp_path / "d.npy", "--direction", "5",
                       "--out", tmp_path / "g.png", ok=False), "--direction 5", "has 2")
    one_line_error(run("edit", ck, "--method", "warped", "--directions", tmp_path / "nope.pt", "--out",
                       tmp_path / "g.png", ok=False), "nope.pt")


def test_traverse_cli_writes_one_grid_per_seed(tiny, tmp_path):
    _, _, ck = tiny
    np.save(tmp_path / "b.npy", np.asarray(_unit(jnp.arange(16.0) - 7))[None])
    out = run("traverse", ck, "--method", "interfacegan", "--directions", tmp_path / "b.npy", "--seeds", "0-1",
              "--strengths=-1,1", "--out", tmp_path / "tr")
    assert "1 directions x 2 strengths x 2 seeds" in out.stdout
    a, b = (np.asarray(Image.open(tmp_path / "tr" / f"seed{s}.png")) for s in (0, 1))
    assert a.shape == b.shape and not np.array_equal(a, b)
