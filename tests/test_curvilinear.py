"""DeCurvEd flow and curvilinear edits: reference fixture, inversion, commutativity, gradients, converter."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from conftest import fixture, max_abs, ref
from jaxedit.edits import formats
from jaxedit.edits import curvilinear as C
from jaxedit.models.flows import CNF, CNFConfig


@pytest.fixture(scope="module")
def flow():
    cfg, params = formats.load_cnf(fixture("decurved_cnf.pt"))
    return CNF(cfg), params


def test_converter_reads_config(flow):
    F, p = flow
    assert F.cfg == CNFConfig(dim=8, hidden=(16, 16), T=0.1)
    jax.tree.map(lambda a, b: np.testing.assert_equal(a.shape, b.shape), F.param_shapes(), p)


def test_matches_reference_tight_solves(flow):
    F, p = flow
    r = ref("decurved_cnf_ref.npz")
    z = jnp.asarray(r["z"])
    v = F.forward(p, z)
    ze, dlogp = C.edit_axes(F, p, z, jnp.asarray(r["k"]), jnp.asarray(r["t"]), logp=True)
    zr = F.inverse(p, v)
    # bounds ~3x the measured errors: 1.2e-6, 2.0e-6, 1.2e-6, 1.1e-7
    assert max_abs(v, r["v_tol1e-9"]) < 5e-6
    assert max_abs(ze, r["z_edit_tol1e-9"]) < 1e-5
    assert max_abs(zr, r["z_roundtrip_tol1e-9"]) < 5e-6
    assert max_abs(dlogp, r["delta_logp_tol1e-9"][:, 0]) < 5e-7
    # the reference's own round trip at its default tolerance is off by 3.3e-4; ours by 2.4e-7
    assert max_abs(r["z_roundtrip_tol1e-5"], z) > 1e-4 and max_abs(zr, z) < 1e-6


def test_fixed_steps_and_inverse_is_inverse(flow):
    F, p = flow
    z = 2.0 * jax.random.normal(jax.random.key(0), (16, 8))
    for steps in (None, 4):
        v = F.forward(p, z, steps=steps)
        assert max_abs(v, z) > 1e-2  # the flow is not the identity
        assert max_abs(F.inverse(p, v, steps=steps), z) < 2e-6  # measured 4.8e-7 (adaptive), 1.2e-7 (4 steps)


def test_edits_commute_and_compose_in_one_solve(flow):
    F, p = flow
    z = jax.random.normal(jax.random.key(1), (5, 8))
    k, l = jnp.full(5, 2), jnp.full(5, 5)
    t, s = jnp.full(5, 1.5), jnp.full(5, -2.0)
    edit = jax.jit(lambda z, k, t: C.edit_axes(F, p, z, k, t))  # one compile for the five edits
    ab = edit(edit(z, k, t), l, s)
    ba = edit(edit(z, l, s), k, t)
    both = C.multi_edit(F, p, z, jnp.zeros((5, 6)).at[:, 2].set(1.5).at[:, 5].set(-2.0))
    assert max_abs(ab, ba) < 1e-6 and max_abs(ab, both) < 1e-6  # measured 2.4e-7
    assert max_abs(edit(z, k, jnp.zeros(5)), z) < 1e-6


def test_sweep_equals_single_edits(flow):
    F, p = flow
    z = jax.random.normal(jax.random.key(2), (3, 8))
    out = C.sweep(F, p, z, jnp.asarray([0, 7]), jnp.asarray([-1.0, 0.0, 2.0]))
    assert out.shape == (2, 3, 3, 8)
    # measured 0 and 1.2e-7 (|z| < 3: 1 ulp is 2.4e-7)
    np.testing.assert_allclose(out[1, 2], C.edit_axes(F, p, z, jnp.full(3, 7), jnp.full(3, 2.0)), atol=5e-7)
    np.testing.assert_allclose(out[0, 1], z, atol=5e-7)


def test_gradients_match_finite_differences(flow):
    F, p = flow
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), p)
        z = jax.random.normal(jax.random.key(3), (2, 8), jnp.float64)
        w = jax.random.normal(jax.random.key(4), (2, 8), jnp.float64)
        opts = dict(rtol=1e-10, atol=1e-10)
        loss = jax.jit(lambda z, q: jnp.sum(w * C.edit_axes(F, q, z, jnp.asarray([1, 3]), jnp.asarray([1.0, -0.5]),
                                                             **opts)))  # one compile for the four evaluations
        gz, gp = jax.jit(jax.grad(loss, argnums=(0, 1)))(z, p64)
        h = 1e-5
        dz = jnp.zeros_like(z).at[1, 4].set(h)
        fd = (loss(z + dz, p64) - loss(z - dz, p64)) / (2 * h)
        assert abs(float(fd) - float(gz[1, 4])) < 5e-10  # measured 1.0e-10 (fd -1.06)
        bump = lambda s: jax.tree.map(lambda a: a, p64) | {"layer1": {**p64["layer1"], "layer": {
            **p64["layer1"]["layer"], "bias": p64["layer1"]["layer"]["bias"].at[3].add(s)}}}
        fd = (loss(z, bump(h)) - loss(z, bump(-h))) / (2 * h)
        assert abs(float(fd) - float(gp["layer1"]["layer"]["bias"][3])) < 5e-11  # measured 1.4e-11 (fd -0.015)


def test_converter_errors(tmp_path, monkeypatch):
    bad = tmp_path / "flow.pt"
    bad.write_bytes(b"garbage")
    with pytest.raises(formats.EditFileError, match="flow.pt"):
        formats.load_cnf(bad)
    sd = {k: np.asarray(v) for k, v in formats.torchfile.load(fixture("decurved_cnf.pt"))
          ["state_dict"].items()}
    missing = {k: v for k, v in sd.items() if k != "chain.0.odefunc.diffeq.layers.1._hyper_gate.bias"}
    monkeypatch.setattr(formats.torchfile, "load", lambda path: {"state_dict": missing})
    with pytest.raises(formats.EditFileError, match=r"flow.pt: missing key .*layers.1._hyper_gate.bias"):
        formats.load_cnf(bad)
    wrong = dict(sd, **{"chain.0.odefunc.diffeq.layers.2._layer.bias": np.zeros(5, np.float32)})
    monkeypatch.setattr(formats.torchfile, "load", lambda path: wrong)
    with pytest.raises(formats.EditFileError, match=r"layers.2._layer.bias has shape \(5,\)"):
        formats.load_cnf(bad)
