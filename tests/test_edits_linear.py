"""Linear edits: InterFaceGAN, GANSpace, discovery deformators, and their converters."""

import json

import numpy as np
import jax
import jax.numpy as jnp
import pytest
from scipy.optimize import minimize

from jaxedit.edits import formats
from jaxedit.edits.formats import EditFileError, load_ganspace, load_interfacegan
from jaxedit.edits import linear as E


def _unit(x):
    x = np.asarray(x, np.float64)
    return x / np.linalg.norm(x, axis=-1, keepdims=True)


RNG = np.random.default_rng(0)


def test_alpha_zero_is_identity():
    z = jnp.asarray(RNG.normal(size=(4, 8)), jnp.float32)
    wp = jnp.asarray(RNG.normal(size=(4, 6, 8)), jnp.float32)
    n = jnp.asarray(_unit(RNG.normal(size=8)), jnp.float32)
    ns = jnp.asarray(_unit(RNG.normal(size=(3, 8))), jnp.float32)
    np.testing.assert_array_equal(E.apply(z, n, 0.0), z)
    np.testing.assert_array_equal(E.apply(wp, n, jnp.zeros(4)), wp)
    np.testing.assert_array_equal(E.apply(wp, ns, jnp.zeros(3), layers=slice(1, 3)), wp)


def test_apply_values_and_batching():
    z = RNG.normal(size=(4, 8)).astype(np.float32)
    n = _unit(RNG.normal(size=8)).astype(np.float32)
    a = np.array([0.5, -1.0, 2.0, 3.0], np.float32)
    np.testing.assert_allclose(E.apply(z, n, a), z + a[:, None] * n, atol=1e-6)
    ns = _unit(RNG.normal(size=(3, 8))).astype(np.float32)
    ak = RNG.normal(size=(4, 3)).astype(np.float32)
    np.testing.assert_allclose(E.apply(z, ns, ak), z + ak @ ns, atol=1e-6)
    sweep = E.apply_sweep(z, n, jnp.linspace(-2, 2, 5))
    assert sweep.shape == (4, 5, 8)
    np.testing.assert_allclose(sweep[:, 1], z + (-1.0) * n, atol=1e-6)
    wp = RNG.normal(size=(4, 6, 8)).astype(np.float32)
    assert E.apply_sweep(wp, n, jnp.linspace(-2, 2, 5), layers=slice(0, 2)).shape == (4, 5, 6, 8)
    # jit with static layers
    f = jax.jit(lambda w, a: E.apply(w, n, a, layers=range(2, 4)))
    np.testing.assert_allclose(f(wp, a)[:, 2], wp[:, 2] + a[:, None] * n, atol=1e-6)


def test_wplus_edit_touches_only_chosen_layers():
    wp = RNG.normal(size=(3, 8, 5)).astype(np.float32)
    n = _unit(RNG.normal(size=5)).astype(np.float32)
    for layers, chosen in [(slice(2, 5), [2, 3, 4]), (range(0, 1), [0]), ([1, 7], [1, 7]),
                           (np.arange(8) >= 6, [6, 7])]:
        out = np.asarray(E.apply(wp, n, 1.5, layers=layers))
        other = [i for i in range(8) if i not in chosen]
        np.testing.assert_array_equal(out[:, other], wp[:, other])
        np.testing.assert_allclose(out[:, chosen], wp[:, chosen] + 1.5 * n, atol=1e-6)
    with pytest.raises(ValueError):
        E.apply(wp, n, 1.0, layers=[9])


def test_ganspace_edit_layers_and_value():
    ws = RNG.normal(size=(2, 8, 5)).astype(np.float32)
    comp = _unit(RNG.normal(size=(4, 5))).astype(np.float32)
    stdev = np.array([3.0, 2.0, 1.0, 0.5], np.float32)
    out = np.asarray(jax.jit(E.ganspace_edit)(ws, comp, stdev, 1, 2.0, 3, 5))
    np.testing.assert_array_equal(out[:, [0, 1, 2, 5, 6, 7]], ws[:, [0, 1, 2, 5, 6, 7]])
    np.testing.assert_allclose(out[:, 3:5], ws[:, 3:5] + 2.0 * 2.0 * comp[1], atol=1e-6)
    # GANSpace's (C, 1, d) comp layout and per-sample sigma
    out2 = E.ganspace_edit(ws, comp[:, None], stdev, 0, jnp.array([1.0, -1.0]), 0, 8)
    np.testing.assert_allclose(out2[1], ws[1] - 3.0 * comp[0], atol=1e-6)


def test_interfacegan_distance_sets_projection():
    z = RNG.normal(size=(6, 16)).astype(np.float32)
    n = _unit(RNG.normal(size=16)).astype(np.float32)
    for dist in (0.0, -3.0, 2.5, jnp.linspace(-3, 3, 6)):
        out = np.asarray(E.interfacegan_distance(z, n, dist))
        np.testing.assert_allclose(out @ n, np.broadcast_to(np.asarray(dist), (6,)), atol=1e-6)
        # the orthogonal part is untouched
        np.testing.assert_allclose(out - np.outer(out @ n, n), z - np.outer(z @ n, n), atol=1e-6)
    sweep = E.interfacegan_sweep(z, n, jnp.linspace(-3, 3, 10))
    assert sweep.shape == (6, 10, 16)
    np.testing.assert_allclose(np.asarray(sweep) @ n, np.broadcast_to(np.linspace(-3, 3, 10), (6, 10)), atol=2e-6)


@pytest.mark.parametrize("m", [1, 2, 4])
def test_project_off_orthogonal_unit(m):
    n = _unit(RNG.normal(size=32))
    c = _unit(RNG.normal(size=(m, 32)))
    out = np.asarray(E.project_off(jnp.asarray(n, jnp.float32), jnp.asarray(c if m > 1 else c[0], jnp.float32)),
                     np.float64)
    assert abs(np.linalg.norm(out) - 1) < 5e-7  # measured <= 1.1e-7 over 60 draws
    assert np.max(np.abs(c @ out)) < 3e-7
    # same direction as numpy's orthogonal projection off span(C)
    q, _ = np.linalg.qr(c.T)
    want = _unit(n - q @ (q.T @ n))
    assert np.dot(out, want) > 1 - 5e-7
    if m == 1:  # the reference's one-condition formula
        np.testing.assert_allclose(out, _unit(n - (n @ c[0]) * c[0]), atol=2e-7)


def test_pca_recovers_axes_and_stdev():
    d, n = 6, 4096
    rot, _ = np.linalg.qr(RNG.normal(size=(d, d)))
    scales = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.25])
    x = (RNG.normal(size=(n, d)) * scales) @ rot.T + 10.0  # large mean, like W
    x = x.astype(np.float32)
    # numpy reference on the same samples
    evals, evecs = np.linalg.eigh(np.cov(x.astype(np.float64), rowvar=False))
    evals, evecs = evals[::-1], evecs[:, ::-1]
    for res in (E.pca_directions(jnp.asarray(x), 4), jax.jit(E.pca_directions, static_argnums=1)(x, 4)):
        comp = np.asarray(res["comp"], np.float64)
        assert comp.shape == (4, d)
        np.testing.assert_allclose(np.abs(comp @ evecs[:, :4]), np.eye(4), atol=1e-6)
        np.testing.assert_allclose(res["stdev"], np.sqrt(evals[:4]), rtol=1e-6)
        np.testing.assert_allclose(res["mean"], x.mean(0), atol=1e-4)  # measured 2.4e-5 (|mean| 10)
        # the true axes, up to sampling error
        assert np.min(np.abs(np.sum(comp * rot[:, :4].T, axis=1))) > 0.99
        np.testing.assert_allclose(res["stdev"], scales[:4], rtol=0.05)


def test_pca_sampler_batches_equal_full_samples():
    d, nb, b = 5, 6, 256
    rot, _ = np.linalg.qr(RNG.normal(size=(d, d)))
    scale = jnp.asarray([4.0, 2.0, 1.0, 0.5, 0.1])
    rot = jnp.asarray(rot, jnp.float32)

    def sample_w(key):
        return (jax.random.normal(key, (b, d)) * scale) @ rot.T + 3.0

    key = jax.random.key(7)
    res = jax.jit(lambda k: E.pca_directions(sample_w, 3, key=k, n_batches=nb))(key)
    full = jnp.concatenate([sample_w(k) for k in jax.random.split(key, nb)])
    want = E.pca_directions(full, 3)
    np.testing.assert_allclose(res["mean"], want["mean"], atol=1e-6)
    np.testing.assert_allclose(res["stdev"], want["stdev"], rtol=3e-6)
    np.testing.assert_allclose(np.abs(np.sum(np.asarray(res["comp"]) * np.asarray(want["comp"]), 1)), 1, atol=5e-7)
    evals = np.linalg.eigvalsh(np.cov(np.asarray(full, np.float64), rowvar=False))[::-1]
    np.testing.assert_allclose(res["stdev"], np.sqrt(evals[:3]), rtol=5e-7)


def test_fit_boundary_recovers_normal():
    d, n = 16, 4000
    normal = _unit(RNG.normal(size=d))
    x = RNG.normal(size=(n, d)).astype(np.float32)
    scores = x @ normal + 0.3  # the intercept is discarded; only the extremes are used
    b = E.fit_boundary(x, scores, top_fraction=0.1, val_split=0.3, key=jax.random.key(0))
    assert b.normal.shape == (d,)
    assert abs(float(jnp.linalg.norm(b.normal)) - 1) < 5e-7
    assert float(np.dot(np.asarray(b.normal, np.float64), normal)) > 0.99
    assert float(b.val_accuracy) == 1.0


def _svm_dual_exact(x, y, C):
    """Independent float64 hinge SVM: the dual ``max sum a - |sum a_i y_i x_i|^2 / 2``, ``0 <= a <= C``,
    ``a.y = 0`` by SLSQP for the active set, then the KKT equations on that set solved exactly -> (a, w, b)."""
    q = (y[:, None] * x) @ (y[:, None] * x).T
    a = minimize(lambda a: 0.5 * a @ q @ a - a.sum(), np.zeros(len(y)), jac=lambda a: q @ a - 1, method="SLSQP",
                 bounds=[(0, C)] * len(y), constraints=[{"type": "eq", "fun": lambda a: a @ y, "jac": lambda a: y}],
                 options={"ftol": 1e-15, "maxiter": 1000}).x
    upper, free = a > (1 - 1e-4) * C, np.flatnonzero((a > 1e-4 * C) & (a < (1 - 1e-4) * C))
    kkt = np.block([[q[np.ix_(free, free)], y[free, None]], [y[None, free], np.zeros((1, 1))]])
    rhs = np.concatenate([1 - y[free] * (x[free] @ (C * y[upper] @ x[upper])), [-C * y[upper].sum()]])
    sol = np.linalg.solve(kkt, rhs)  # y_i (w.x_i + b) = 1 on the free set, a.y = 0
    a = np.where(upper, C, 0.0)
    a[free] = sol[:-1]
    return a, (a * y) @ x, sol[-1]


def test_svm_kkt_and_exact_dual():
    """``svm_fit`` minimizes a hinge smoothed over a band of width h: its solution must satisfy the hinge SVM's
    KKT conditions and match an exact float64 dual solve, to errors proportional to h (measured at h = 1e-3,
    fit_boundary's default, and 1e-4: |w - w*| 0.9 h, |b - b*| 0.4 h, lambda 2.2 h, 1 - cos 3.4e-3 h^2)."""
    rng = np.random.default_rng(0)
    d, n, C = 4, 200, 1.0
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = np.where(x @ np.array([1.0, -1.0, 0.5, 0.0]) + 0.3 * rng.normal(size=n) > 0, 1.0, -1.0).astype(np.float32)
    x64, y64 = x.astype(np.float64), y.astype(np.float64)
    a, w_ref, b_ref = _svm_dual_exact(x64, y64, C)
    m_ref = y64 * (x64 @ w_ref + b_ref)
    free = (a > 0) & (a < C)
    # the reference is exact: a in [0, C], a.y = 0, margin 1 where 0 < a < C, >= 1 where a = 0, <= 1 where a = C
    assert np.all((a >= 0) & (a <= C)) and abs(a @ y64) < 1e-12 and np.max(np.abs(m_ref[free] - 1)) < 1e-12
    assert np.all(m_ref[a == 0] > 1) and np.all(m_ref[a == C] < 1)
    assert free.sum() == d + 1 and (a == C).sum() > 20  # not separable: many margin violators
    for h in (1e-3, 1e-4):
        w, b = (np.asarray(v, np.float64) for v in E.svm_fit(x, y, C=C, iters=500, smoothing=h))
        m = y64 * (x64 @ w + b)
        # complementary slackness: lambda = 0 outside the margin, C inside it, free only on it (|m - 1| <= 5 h;
        # the nearest other point is 0.012 away); stationarity (w = sum lambda_i y_i x_i, lambda.y = 0)
        # then fixes the d + 1 free lambdas, which must lie in [0, C] and equal the exact dual
        on = np.abs(m - 1) <= 5 * h
        np.testing.assert_array_equal(on, free)
        lam = np.where(m < 1, C, 0.0)
        lam[on] = np.linalg.solve(np.vstack([(y64[on, None] * x64[on]).T, y64[on]]),
                                  np.append(w - (lam * y64)[~on] @ x64[~on], -(lam * y64)[~on].sum()))
        assert np.all((lam >= 0) & (lam <= C)), lam[on]
        assert np.max(np.abs(lam - a)) < 10 * h
        assert np.max(np.abs(w - w_ref)) < 3 * h and abs(b - b_ref) < 2 * h
        assert 1 - w @ w_ref / np.linalg.norm(w) / np.linalg.norm(w_ref) < 1e-2 * h * h


def test_ortho_direction_matrix():
    L = jnp.asarray(RNG.normal(size=(7, 7)), jnp.float32)
    A = np.asarray(E.ortho_matrix(L), np.float64)
    np.testing.assert_allclose(A @ A.T, np.eye(7), atol=1e-6)
    rows = np.asarray(E.directions("ortho", {"log_mat_half": L}, latent_dim=9))
    assert rows.shape == (7, 9)
    np.testing.assert_allclose(rows[:, :7], A.T, atol=1e-6)
    np.testing.assert_array_equal(rows[:, 7:], 0)
    # the shift of eps * e_k is eps times row k
    s = E.deformator_shift("ortho", {"log_mat_half": L}, 2.0 * jnp.eye(7)[3], latent_dim=9)
    np.testing.assert_allclose(s, 2.0 * rows[3], atol=1e-6)
    w = jnp.asarray(RNG.normal(size=(9, 7)), jnp.float32)
    proj = np.asarray(E.directions("proj", {"weight": w}))
    np.testing.assert_allclose(np.linalg.norm(proj, axis=1), 1, atol=5e-7)
    with pytest.raises(ValueError):
        E.directions("fc", {})


def test_load_interfacegan(tmp_path):
    v = RNG.normal(size=(1, 512))
    v = v / np.linalg.norm(v)
    np.save(tmp_path / "stylegan_ffhq_smile_w_boundary.npy", v)
    n = load_interfacegan(tmp_path / "stylegan_ffhq_smile_w_boundary.npy")
    assert n.shape == (512,) and n.dtype == np.float32
    np.testing.assert_allclose(n, v[0], atol=1e-7)
    np.save(tmp_path / "bad.npy", np.zeros((2, 3, 4)))
    with pytest.raises(EditFileError, match="bad.npy"):
        load_interfacegan(tmp_path / "bad.npy")


def test_load_ganspace(tmp_path):
    C, d = 5, 16
    comp = _unit(RNG.normal(size=(C, 1, d))).astype(np.float32)
    np.savez_compressed(tmp_path / "g.npz", lat_comp=comp, lat_mean=np.ones((1, d), np.float32),
                        lat_stdev=np.arange(C, 0, -1).astype(np.float32), var_ratio=np.full(C, 0.1, np.float32),
                        act_comp=comp)
    g = load_ganspace(tmp_path / "g.npz")
    assert g["comp"].shape == (C, d) and g["stdev"].shape == (C,) and g["mean"].shape == (d,)
    np.testing.assert_array_equal(g["comp"], comp[:, 0])
    np.savez(tmp_path / "missing.npz", lat_comp=comp, lat_mean=np.ones(d))
    with pytest.raises(EditFileError, match=r"missing\.npz.*lat_stdev"):
        load_ganspace(tmp_path / "missing.npz")


def test_load_deformator_kinds_and_errors(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    W, b, L = rng.normal(size=(6, 3)).astype(np.float32), rng.normal(size=6).astype(np.float32), \
        rng.normal(size=(4, 4)).astype(np.float32)
    f = tmp_path / "models" / "deformator_100.pt"
    f.parent.mkdir()
    f.write_bytes(b"placeholder")
    monkeypatch.setattr(formats.torchfile, "load", lambda p: {"log_mat_half": L})
    out = formats.load_deformator(f)
    assert out["kind"] == "ortho"
    A = np.asarray(E.ortho_matrix(L))
    np.testing.assert_allclose(A @ A.T, np.eye(4), atol=1e-6)  # expm of a skew matrix is orthogonal
    monkeypatch.setattr(formats.torchfile, "load", lambda p: {"deformator": {"linear.weight": W, "linear.bias": b}})
    with pytest.raises(formats.EditFileError, match="deformator_100.pt: .*pass kind="):
        formats.load_deformator(f)
    (tmp_path / "args.json").write_text(json.dumps({"deformator": "proj"}))
    out = formats.load_deformator(f)
    assert out["kind"] == "proj"
    coords = np.asarray([[0.0, 2.5, 0.0]], np.float32)
    shift = np.asarray(E.deformator_shift("proj", out["params"], coords))
    expect = coords @ W.T + b  # the reference: linear output rescaled to |coords|
    np.testing.assert_allclose(shift, expect * 2.5 / np.linalg.norm(expect), rtol=5e-7)
    lin = np.asarray(E.deformator_shift("linear", formats.load_deformator(f, kind="linear")["params"], coords))
    np.testing.assert_allclose(lin, expect, rtol=5e-7)
    monkeypatch.setattr(formats.torchfile, "load", lambda p: {"net.0.weight": W})
    with pytest.raises(formats.EditFileError, match="not supported"):
        formats.load_deformator(f)
