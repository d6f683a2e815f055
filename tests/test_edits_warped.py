"""WarpedGANSpace vector fields: reference fixture, analytic gradient, batched traversal, converter."""

import numpy as np
import jax
import jax.numpy as jnp
import pytest

from conftest import fixture, max_abs, ref
from jaxedit.edits.formats import EditFileError, load_warped
from jaxedit.edits import warped as W


def _params():
    return {k: jnp.asarray(v) for k, v in load_warped(fixture("warped_support_sets.pt")).items()}


def _random_params(key, K=3, N=4, d=6, dtype=jnp.float32):
    k1, k2 = jax.random.split(key)
    alphas = jnp.tile(jnp.asarray([1.0, -1.0], dtype), (K, N))
    return {"support_sets": jax.random.normal(k1, (K, 2 * N, d), dtype),
            "alphas": alphas,
            "log_gamma": jnp.log(jnp.full((K,), 1.0 / d, dtype)) + 0.1 * jax.random.normal(k2, (K,), dtype)}


def test_load_warped_shapes():
    p = load_warped(fixture("warped_support_sets.pt"))
    assert p["support_sets"].shape == (6, 16, 32)
    assert p["alphas"].shape == (6, 16) and p["log_gamma"].shape == (6,)
    assert all(v.dtype == np.float32 for v in p.values())
    np.testing.assert_array_equal(p["alphas"][0], np.tile([1.0, -1.0], 8))


def test_load_warped_errors(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(EditFileError, match="bad.pt"):
        load_warped(bad)
    with pytest.raises(EditFileError, match="missing.pt"):
        load_warped(tmp_path / "missing.pt")


def test_unit_grad_matches_reference():
    p, r = _params(), ref("warped_support_sets_ref.npz")
    z = jnp.asarray(r["z"])
    ug = jax.vmap(lambda k: W.unit_grad(p, z, k))(jnp.arange(p["support_sets"].shape[0]))
    assert ug.shape == r["unit_grad"].shape
    assert max_abs(ug, r["unit_grad"]) < 1e-6  # measured 2.2e-7


def test_traverse_matches_reference_path2():
    # The reference: z after each of 4 steps z <- z + 0.2 * unit_grad_2(z) (positive side of path 2).
    p, r = _params(), ref("warped_support_sets_ref.npz")
    want = r["traverse_path2_eps0.2"]
    steps = want.shape[0]
    z = jnp.asarray(r["z"])
    path = W.traverse(p, z, steps, 0.2)
    assert path.shape == (6, 2 * steps + 1) + z.shape
    assert max_abs(path[2, steps + 1:], want) < 1e-6  # measured 2.4e-7
    assert max_abs(W.walk(p, z, 2, steps, 0.2), want) < 1e-6
    np.testing.assert_array_equal(np.asarray(path[:, steps]), np.broadcast_to(np.asarray(z), (6,) + z.shape))


def test_analytic_grad_matches_autodiff():
    p = _params()
    z = jnp.asarray(ref("warped_support_sets_ref.npz")["z"])
    ks = jnp.arange(p["support_sets"].shape[0])
    auto = jax.vmap(lambda k: jax.vmap(jax.grad(lambda x: W.field(p, x, k)))(z))(ks)
    got = jax.vmap(lambda k: W.grad_f(p, z, k))(ks)
    assert max_abs(got, auto) <= 5e-7 * float(jnp.max(jnp.abs(auto)))  # measured 1.3e-7


def test_analytic_grad_matches_finite_differences_float64():
    with jax.enable_x64(True):
        p = _random_params(jax.random.key(1), dtype=jnp.float64)
        z = jax.random.normal(jax.random.key(2), (3, 6), jnp.float64) * 0.7
        h = 1e-6
        e = h * jnp.eye(6, dtype=jnp.float64)  # [d, d] perturbations
        ks = jnp.arange(3)
        f = jax.vmap(lambda k, x: W.field(p, x, k), in_axes=(0, None))  # -> [K, d, B]
        fd = (f(ks, z[None] + e[:, None]) - f(ks, z[None] - e[:, None])) / (2 * h)
        fd = np.asarray(jnp.swapaxes(fd, 1, 2))  # [K, B, d]
        g = np.asarray(jax.vmap(lambda k: W.grad_f(p, z, k))(ks))
        assert g.dtype == np.float64
        assert np.max(np.abs(g - fd)) < 1e-9  # measured 2.0e-10 (|g| <= 0.7)


def test_traverse_equals_per_path_loop():
    p = _random_params(jax.random.key(3))
    z = jax.random.normal(jax.random.key(4), (2, 6))
    S, eps = 3, 0.25
    path = np.asarray(W.traverse(p, z, S, eps))
    assert path.shape == (3, 2 * S + 1, 2, 6)
    grad = jax.jit(lambda x, k: W.grad_f(p, x, k))
    for k in range(3):
        for sign in (1, -1):
            zc = np.asarray(z, np.float64)
            for j in range(1, S + 1):
                g = np.asarray(grad(zc.astype(np.float32), k), np.float64)
                zc = zc + sign * eps * g / np.linalg.norm(g, axis=-1, keepdims=True)
                np.testing.assert_allclose(path[k, S + sign * j], np.asarray(zc), atol=5e-7)  # measured 1.4e-7


def test_reference_frames():
    p = _random_params(jax.random.key(5))
    z = jax.random.normal(jax.random.key(6), (2, 6))
    path = W.traverse(p, z, 2, 0.2)
    frames = np.asarray(W.reference_frames(path))
    path = np.asarray(path)
    np.testing.assert_array_equal(frames[:, 2], path[:, 2])
    np.testing.assert_allclose(frames[:, 3], 2 * path[:, 3] - path[:, 2], atol=3e-7)  # measured 0; 1 ulp at 2 is 2.4e-7
    np.testing.assert_allclose(frames[:, 0], 2 * path[:, 0] - path[:, 1], atol=3e-7)


def test_render_chunks_equal_direct_frames():
    from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config

    G = StyleGAN2(StyleGAN2Config(z_dim=6, w_dim=8, img_resolution=8, mapping_layers=1, channels=(8, 8)))
    gp = G.init(jax.random.key(0))
    p = _random_params(jax.random.key(7))
    path = W.traverse(p, jax.random.normal(jax.random.key(8), (2, 6)), 2, 0.3)  # [3, 5, 2, 6]: 30 frames
    imgs = np.asarray(W.render(G, gp, path, batch=4, psi=0.7))  # chunks of 4 do not divide 30
    assert imgs.shape == (3, 5, 2, 8, 8, 3)
    direct = np.asarray(G(gp, path.reshape(-1, 6), psi=0.7, noise_mode="const")).reshape(imgs.shape)
    np.testing.assert_allclose(imgs, direct, atol=1e-5)  # measured 3.3e-6 (|img| up to 7)
    ws = G.mapping(gp, path.reshape(-1, 6))[:, 0].reshape(3, 5, 2, 8)
    np.testing.assert_allclose(np.asarray(W.render(G, gp, ws, batch=8, space="w")),
                               np.asarray(G.synthesis(gp, G.mapping(gp, path.reshape(-1, 6)))).reshape(imgs.shape),
                               atol=1e-6)  # measured 0; 1 ulp at 8 is 9.5e-7
