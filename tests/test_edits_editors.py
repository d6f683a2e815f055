"""Editors as pytrees: every family under jit / vmap, apply_many, save / load, autodetected released
formats, discover runs, and the `jaxedit edit` / `traverse` commands."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from conftest import fixture, max_abs
from jaxedit import edits
from jaxedit.edits import curvilinear, fit, formats, linear, warped
from jaxedit.errors import CheckpointError
from jaxedit.io import checkpoint
from jaxedit.io import images as imio
from jaxedit.models.flows import CNF
from jaxedit.models.reconstructor import ReconstructorConfig
from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config
from jaxedit.train import discovery
from test_cli import one_line_error, run

CFG = StyleGAN2Config(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channels=(32, 16, 8))


def _unit(x):
    return x / jnp.linalg.norm(x, axis=-1, keepdims=True)


def _normal(i, shape):
    return jax.random.normal(jax.random.key(i), shape)


def _warped_params(K=3, N=4, d=16):
    return {"support_sets": _normal(10, (K, 2 * N, d)), "alphas": jnp.tile(jnp.asarray([1.0, -1.0]), (K, N)),
            "log_gamma": jnp.log(jnp.full((K,), 1.0 / d)) + 0.1 * _normal(11, (K,))}


@pytest.fixture(scope="module")
def flow():
    cfg, params = formats.load_cnf(fixture("decurved_cnf.pt"))
    return CNF(cfg), jax.tree.map(jnp.asarray, params)


@pytest.fixture(scope="module")
def cases(flow):
    """family -> (editor, latents [B, ...], per-example k [B], t [B])."""
    F, fp = flow
    dirs = _unit(_normal(1, (3, 16)))
    t = jnp.asarray([-1.5, 0.5, 2.0, 0.0])
    k = jnp.asarray([0, 2, 1, 2])
    return {
        "linear": (edits.Linear(space="w", layers=(1, 3), directions=dirs), _normal(2, (4, 5, 16)), k, t),
        "interfacegan_z": (edits.InterFaceGAN(directions=dirs), _normal(3, (4, 16)), k, t),
        "interfacegan_w": (edits.InterFaceGAN(space="w", directions=dirs), _normal(4, (4, 16)), k, t),
        "ganspace": (edits.GANSpace(layers=(0, 2), comp=dirs, stdev=jnp.asarray([3.0, 2.0, 0.5])),
                     _normal(5, (4, 5, 16)), k, t),
        "warped": (edits.Warped(eps=0.25, **_warped_params()), _normal(6, (4, 16)), k,
                   jnp.asarray([0.75, -0.5, 0.0, 1.0])),  # 3 steps forward, 2 back, none, 4
        "curvilinear": (edits.Curvilinear(space="w", layers=(1, 3), flow_params=fp, flow=F, num_axes=6,
                                          solver={"steps": 4}),
                        _normal(7, (4, 4, 10)), jnp.asarray([0, 5, 2, 3]), jnp.asarray([1.5, -2.0, 0.0, 0.7])),
        "vector": (edits.EditingVector(vectors=_normal(8, (3, 5, 16))), _normal(9, (4, 5, 16)), k, t),
    }


FAMILIES = ["linear", "interfacegan_z", "interfacegan_w", "ganspace", "warped", "curvilinear", "vector"]
# max |jit or vmap - eager one-at-a-time|: measured 0 for every family (bit-identical, float32 CPU); the
# bound leaves room for other fusion / reduction orders
TOL = 1e-6


@pytest.mark.parametrize("name", FAMILIES)
def test_jit_and_vmap_equal_one_at_a_time(cases, name):
    ed, lat, k, t = cases[name]
    loop = jnp.stack([edits.apply(ed, lat[i], int(k[i]), float(t[i])) for i in range(len(t))])
    jitted = jax.jit(edits.apply)(ed, lat, k, t)
    vmapped = jax.vmap(edits.apply, in_axes=(None, 0, 0, 0))(ed, lat, k, t)
    err = max(max_abs(jitted, loop), max_abs(vmapped, loop))
    print(f"{name}: max |jit, vmap - loop| = {err:.2e}")
    assert err < TOL
    assert max_abs(loop, lat) > 1e-2  # the edits do move
    if name != "interfacegan_z":  # t = 0 is the identity (InterFaceGAN Z: t is the distance to set)
        assert max_abs(jax.jit(edits.apply)(ed, lat, k, jnp.zeros(4)), lat) < 2e-6


def test_jit_takes_the_editor_as_an_argument(cases):
    traces = []

    def fn(ed, lat, k, t):
        traces.append(1)
        return edits.apply(ed, lat, k, t)

    f = jax.jit(fn)
    ed, lat, k, t = cases["linear"]
    other = jax.tree.map(lambda a: -a, ed)
    np.testing.assert_array_equal(f(other, lat, k, t), edits.apply(other, lat, k, t))
    np.testing.assert_array_equal(f(ed, lat, k, t), edits.apply(ed, lat, k, t))
    assert len(traces) == 1  # same shapes and config: one trace for both editors


@pytest.mark.parametrize("name", FAMILIES)
def test_editor_is_a_pytree(cases, name):
    ed = cases[name][0]
    leaves, treedef = jax.tree.flatten(ed)
    assert leaves and all(isinstance(a, jax.Array) for a in leaves)
    assert type(jax.tree.map(lambda a: a, ed)) is type(ed)
    back = jax.tree.unflatten(treedef, leaves)
    assert jax.tree.structure(back) == treedef and all(a is b for a, b in zip(jax.tree.leaves(back), leaves))
    doubled = jax.tree.map(lambda a: 2 * a, ed)
    assert (doubled.space, doubled.layers, doubled.num_directions, doubled.dim) == \
        (ed.space, ed.layers, ed.num_directions, ed.dim)


def test_family_semantics(cases):
    ed, lat, k, t = cases["linear"]
    out = edits.apply(ed, lat, k, t)
    want = lat.at[:, 1:3].add(t[:, None, None] * ed.directions[k][:, None])
    assert max_abs(out, want) < 1e-6
    ed, z, k, t = cases["interfacegan_z"]
    out = edits.apply(ed, z, k, t)
    assert max_abs(jnp.sum(out * ed.directions[k], -1), t) < 1e-5  # the absolute signed distance
    ed, ws, k, t = cases["ganspace"]
    want = jnp.stack([linear.ganspace_edit(ws[i:i + 1], ed.comp, ed.stdev, k[i], t[i], 0, 2)[0] for i in range(4)])
    assert max_abs(edits.apply(ed, ws, k, t), want) < 1e-6
    ed, z, k, t = cases["warped"]
    params = {"support_sets": ed.support_sets, "alphas": ed.alphas, "log_gamma": ed.log_gamma}
    out = edits.apply(ed, z, k, t)
    assert max_abs(out[0], warped.walk(params, z[:1], 0, 3, 0.25)[-1, 0]) < 1e-5
    assert max_abs(out[1], warped.walk(params, z[1:2], 2, 2, -0.25)[-1, 0]) < 1e-5
    np.testing.assert_array_equal(out[2], z[2])
    ed, ws, k, t = cases["curvilinear"]
    out = edits.apply(ed, ws, k, t)
    head = jax.jit(curvilinear.edit_axes, static_argnums=0, static_argnames="steps")(
        ed.flow, ed.flow_params, ws[:, 1, :8], k, t, steps=4)
    assert max_abs(out[:, 1, :8], head) < 1e-5
    np.testing.assert_array_equal(out[:, 1, 8:], ws[:, 1, 8:])  # beyond the flow's dimension: unchanged
    np.testing.assert_array_equal(out[:, 3], ws[:, 3])  # outside the layer range: unchanged
    ed, ws, k, t = cases["vector"]
    assert max_abs(edits.apply(ed, ws, k, t), ws + t[:, None, None] * ed.vectors[k]) < 1e-6  # every W+ layer moves


@pytest.mark.parametrize("name", ["linear", "interfacegan_w", "ganspace", "curvilinear", "vector"])
def test_apply_many_equals_sequential(cases, name):
    ed, lat, _, _ = cases[name]
    ks = jnp.asarray([0, 2])
    ts = jnp.asarray([[1.0, -0.5], [0.0, 2.0], [-1.0, 1.0], [0.3, 0.0]])
    both = jax.jit(edits.apply_many)(ed, lat, ks, ts)
    seq = edits.apply(ed, edits.apply(ed, lat, ks[0], ts[:, 0]), ks[1], ts[:, 1])
    err = max_abs(both, seq)
    print(f"{name}: max |apply_many - sequential| = {err:.2e}")
    assert err < 1e-6
    if name == "curvilinear":  # the one-solve formula f^-1(f(z) + sum t_k e_k)
        coords = jnp.zeros((4, 8)).at[:, 0].set(ts[:, 0]).at[:, 2].set(ts[:, 1])
        one = jax.jit(curvilinear.edit, static_argnums=0, static_argnames="steps")(
            ed.flow, ed.flow_params, lat[:, 2, :8], coords, steps=4)
        print(f"{name}: max |apply_many - one solve| = {max_abs(both[:, 2, :8], one):.2e}")
        assert max_abs(both[:, 2, :8], one) < 1e-6


@pytest.mark.parametrize("name", ["interfacegan_z", "warped"])
def test_apply_many_refuses_non_commuting_families(cases, name):
    ed, lat, _, _ = cases[name]
    with pytest.raises(edits.EditorError, match="one at a time"):
        edits.apply_many(ed, lat, jnp.asarray([0, 1]), jnp.ones((4, 2)))


def test_shape_and_argument_errors(cases):
    ed, z, k, t = cases["interfacegan_z"]
    with pytest.raises(edits.EditorError, match=r"latents \[4, 2, 16\] do not fit .*\[\*B, d\]"):
        edits.apply(ed, jnp.zeros((4, 2, 16)), k, t)
    with pytest.raises(edits.EditorError, match="integer"):
        edits.apply(ed, z, 1.0, t)
    with pytest.raises(edits.EditorError, match="needs space w"):
        edits.Linear(space="z", layers=(0, 2), directions=jnp.ones((1, 4)))
    with pytest.raises(edits.EditorError, match="exceeds the 5 W"):
        edits.apply(edits.Linear(space="w", layers=(2, 9), directions=jnp.ones((1, 16))), jnp.zeros((4, 5, 16)), 0, t)


def test_check_rejects_wrong_dimension():
    G = StyleGAN2(CFG)
    with pytest.raises(edits.EditorError, match="12-dimensional.*16"):
        edits.Linear(directions=jnp.ones((2, 12))).check(G)
    with pytest.raises(edits.EditorError, match="layer range"):
        edits.Linear(space="w", layers=(3, 99), directions=jnp.ones((2, 16))).check(G)


# ------------------------------------------------------------------------------ files
@pytest.mark.parametrize("name", FAMILIES)
def test_save_load_round_trip_is_exact(cases, name, tmp_path):
    ed = cases[name][0]
    prov = {"generator": {"name": "tiny", "sha256": "ab" * 32}, "space": ed.space, "layers": ed.layers,
            "method": "test", "strength_range": [-3.0, 3.0]}
    edits.save(ed, tmp_path / name, provenance=prov)
    back = edits.load(tmp_path / name)
    assert type(back) is type(ed) and jax.tree.structure(back) == jax.tree.structure(ed)
    for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(ed)):
        assert np.asarray(a).dtype == np.asarray(b).dtype
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert edits.read_provenance(tmp_path / name) == json.loads(json.dumps(prov))
    with pytest.raises(CheckpointError, match="already exists"):
        edits.save(ed, tmp_path / name)


def test_load_checkpoint_options(cases, tmp_path):
    edits.save(cases["warped"][0], tmp_path / "w")
    assert edits.load(tmp_path / "w").eps == 0.25 and edits.load(tmp_path / "w", eps=0.1).eps == 0.1
    with pytest.raises(edits.EditorError, match="holds warped directions, not linear"):
        edits.load(tmp_path / "w", "linear")
    with pytest.raises(edits.EditorError, match="made in Z space, not W"):
        edits.load(tmp_path / "w", space="w")
    edits.save(cases["linear"][0], tmp_path / "l")
    assert edits.load(tmp_path / "l", layers=(0, 4)).layers == (0, 4)
    (tmp_path / "empty").mkdir()
    with pytest.raises(edits.EditorError, match="neither a jaxedit editor checkpoint nor"):
        edits.load(tmp_path / "empty")
    with pytest.raises(edits.EditorError, match="JSON"):
        edits.save(cases["linear"][0], tmp_path / "p", provenance={"x": object()})


def test_load_detects_released_formats(tmp_path, monkeypatch):
    ws = edits.load(fixture("warped_support_sets.pt"))
    want = formats.load_warped(fixture("warped_support_sets.pt"))
    assert isinstance(ws, edits.Warped) and (ws.space, ws.eps, ws.num_directions, ws.dim) == ("z", 0.2, 6, 32)
    np.testing.assert_array_equal(ws.support_sets, want["support_sets"])
    cv = edits.load(fixture("decurved_cnf.pt"))
    assert isinstance(cv, edits.Curvilinear) and (cv.num_directions, cv.dim, cv.space) == (8, 8, "z")
    with pytest.raises(edits.EditorError, match="holds curvilinear directions, not warped"):
        edits.load(fixture("decurved_cnf.pt"), "warped")

    n = np.asarray(_unit(_normal(20, (1, 16))), np.float64)
    np.save(tmp_path / "boundary.npy", 2 * n)
    b = edits.load(tmp_path / "boundary.npy")
    assert isinstance(b, edits.InterFaceGAN) and b.space == "z"
    np.testing.assert_allclose(b.directions, n, atol=1e-7)  # normalized
    lin = edits.load(tmp_path / "boundary.npy", "linear")
    assert type(lin) is edits.Linear
    np.testing.assert_allclose(lin.directions, 2 * n, atol=1e-6)  # rows as given
    np.save(tmp_path / "dirs.npy", np.ones((3, 16), np.float32))
    assert type(edits.load(tmp_path / "dirs.npy", layers=(0, 2))) is edits.Linear
    assert edits.load(tmp_path / "dirs.npy", layers=(0, 2)).space == "w"
    with pytest.raises(edits.EditorError, match="holds linear directions, not ganspace"):
        edits.load(tmp_path / "dirs.npy", "ganspace")

    dw = np.asarray(_normal(23, (1, 6, 16)), np.float32)  # EditGAN's editing vector (1, num_ws, w_dim)
    np.save(tmp_path / "wheel_enlarge.npy", dw)
    v = edits.load(tmp_path / "wheel_enlarge.npy")
    assert isinstance(v, edits.EditingVector) and v.space == "w" and v.num_layers == 6
    np.testing.assert_array_equal(v.vectors, dw)
    with pytest.raises(edits.EditorError, match="holds vector directions, not linear"):
        edits.load(tmp_path / "wheel_enlarge.npy", "linear")
    with pytest.raises(edits.EditorError, match="latents \\[4, 16\\] are not W\\+ codes"):
        edits.apply(v, jnp.zeros((4, 16)), 0, jnp.ones(4))
    (tmp_path / "cut.npy").write_bytes(b"\x93NUMPY")
    with pytest.raises(formats.EditFileError, match="cut.npy: not a readable .npy"):
        edits.load(tmp_path / "cut.npy")

    comp = np.asarray(_unit(_normal(21, (4, 1, 16))), np.float32)
    np.savez(tmp_path / "g.npz", lat_comp=comp, lat_mean=np.zeros((1, 16), np.float32),
             lat_stdev=np.arange(4, 0, -1).astype(np.float32))
    g = edits.load(tmp_path / "g.npz")
    assert isinstance(g, edits.GANSpace) and g.space == "w" and g.comp.shape == (4, 16)

    L = np.asarray(_normal(22, (5, 5)), np.float32)
    (tmp_path / "deformator_1.pt").write_bytes(b"placeholder")
    monkeypatch.setattr(formats.torchfile, "load", lambda p: {"log_mat_half": L})
    d = edits.load(tmp_path / "deformator_1.pt")
    assert type(d) is edits.Linear
    np.testing.assert_allclose(d.directions, linear.ortho_matrix(L).T, atol=1e-6)
    monkeypatch.setattr(formats.torchfile, "load", lambda p: {"something": L})
    with pytest.raises(formats.EditFileError, match="deformator_1.pt: not a known edit file"):
        edits.load(tmp_path / "deformator_1.pt")
    with pytest.raises(edits.EditorError, match="nope.pt: no such file"):
        edits.load(tmp_path / "nope.pt")


# ------------------------------------------------------------------------------ discover runs and the CLI
@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    G = StyleGAN2(CFG)
    params = G.init(jax.random.key(0))
    dst = tmp_path_factory.mktemp("g") / "tiny"
    checkpoint.save(dst, kind="stylegan2", model=CFG.to_dict(), params=params, source={"file": "random"})
    return G, params, dst


def _discovery_cfg(ck, method):
    return discovery.DiscoveryConfig(method=method, generator=str(ck), num_directions=3, batch=4, steps=2,
                                     ckpt_every=2, log_every=1, dipoles=2, flow_hidden=(8,),
                                     reconstructor=ReconstructorConfig(widths=(8, 16)))


@pytest.mark.parametrize("method", ["linear", "warped", "curvilinear"])
def test_discover_editor_export_loads_without_the_trainer(tiny, tmp_path, method):
    _, _, ck = tiny
    cfg = _discovery_cfg(ck, method)
    shift = discovery.make_shift(cfg, 16).init(jax.random.key(0))
    discovery._export_editor(tmp_path, cfg, {"name": "tiny", "sha256": "0" * 64}, 7, {"params": {"shift": shift}})
    ed, want = edits.load(tmp_path), discovery.editor_from_shift(cfg, shift)
    assert type(ed) is type(want) and ed.family == method and ed.num_directions == 3
    assert jax.tree.structure(ed) == jax.tree.structure(want)
    jax.tree.map(np.testing.assert_array_equal, ed, want)
    x = _normal(30, (3, 16))
    k, t = jnp.asarray([0, 1, 2]), jnp.asarray([0.2, -0.2, 0.2])
    if method != "curvilinear":  # the trained shift, as an edit (curvilinear: the trainer's fixed-step solves)
        assert max_abs(edits.apply(ed, x, k, t), discovery.make_shift(cfg, 16).apply(shift, x, k, t, None)[0]) < 1e-5
    prov = edits.read_provenance(tmp_path)
    assert prov["step"] == 7 and prov["space"] == "w" and prov["method"] == f"jaxedit discover --method {method}"
    assert prov["generator"] == {"name": "tiny", "sha256": "0" * 64}


@pytest.mark.slow  # one discovery run (~1 min on 2 CPU cores)
def test_discover_run_exports_its_editor_at_each_checkpoint(tiny, tmp_path):
    _, _, ck = tiny
    discovery.train(_discovery_cfg(ck, "warped"), tmp_path / "run", progress=False)
    ed = edits.load(tmp_path / "run")
    jax.tree.map(np.testing.assert_array_equal, ed, discovery.load_editor(tmp_path / "run"))
    prov = edits.read_provenance(tmp_path / "run")
    assert prov["step"] == 2 and prov["strength_range"] == [-3.2, 3.2]
    assert prov["generator"] == fit.generator_identity(ck, tiny[1])


def test_edit_cli_grid_equals_direct_render(tiny, tmp_path):
    G, params, ck = tiny
    dirs = np.asarray(_unit(_normal(8, (2, 16))))
    np.save(tmp_path / "d.npy", dirs)
    run("edit", ck, "--method", "linear", "--directions", tmp_path / "d.npy", "--direction", "1", "--space", "w",
        "--layers", "0:4", "--strengths=-2:2:3", "--seeds", "3,4", "--out", tmp_path / "g.png")
    z = np.stack([np.random.RandomState(s).randn(16) for s in (3, 4)]).astype(np.float32)
    ws = G.mapping(params, z)
    imgs = [G.synthesis(params, ws.at[:, :4].add(t * dirs[1]), noise_mode="const") for t in (-2.0, 0.0, 2.0)]
    expect = np.stack(imgs, 1).reshape(-1, 16, 16, 3)  # rows = seeds, columns = strengths
    ref_path = imio.save_grid(np.asarray(expect), tmp_path / "expect.png", cols=3, row_labels=["seed 3", "seed 4"],
                              col_labels=["-2", "0", "+2"])
    got, want = (np.asarray(Image.open(p), np.int16) for p in (tmp_path / "g.png", ref_path))
    assert got.shape == want.shape and np.max(np.abs(got - want)) <= 1


def test_edit_cli_errors(tiny, tmp_path):
    _, _, ck = tiny
    np.save(tmp_path / "d.npy", np.ones((2, 12), np.float32))
    one_line_error(run("edit", ck, "--method", "linear", "--directions", tmp_path / "d.npy", "--out",
                       tmp_path / "g.png", ok=False), "12-dimensional", code=1)
    np.save(tmp_path / "d.npy", np.ones((2, 16), np.float32))
    one_line_error(run("edit", ck, "--method", "linear", "--directions", tmp_path / "d.npy", "--direction", "5",
                       "--out", tmp_path / "g.png", ok=False), "--direction 5", "has 2")
    one_line_error(run("edit", ck, "--method", "warped", "--directions", tmp_path / "nope.pt", "--out",
                       tmp_path / "g.png", ok=False), "nope.pt", code=1)


def test_traverse_cli_writes_one_grid_per_seed(tiny, tmp_path):
    _, _, ck = tiny
    np.save(tmp_path / "b.npy", np.asarray(_unit(jnp.arange(16.0) - 7))[None])
    out = run("traverse", ck, "--method", "interfacegan", "--directions", tmp_path / "b.npy", "--seeds", "0-1",
              "--strengths=-1,1", "--out", tmp_path / "tr")
    assert "1 directions x 2 strengths x 2 seeds" in out.stdout
    a, b = (np.asarray(Image.open(tmp_path / "tr" / f"seed{s}.png")) for s in (0, 1))
    assert a.shape == b.shape and not np.array_equal(a, b)
