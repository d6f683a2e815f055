"""Distribution metrics against closed forms."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.metrics.distributions import feature_stats, frechet_distance, wasserstein_1d


def test_frechet_gaussians_closed_form():
    rng = np.random.default_rng(0)
    a = rng.standard_normal((4, 4))
    c1 = a @ a.T + np.eye(4)
    mu = rng.standard_normal(4)
    assert abs(frechet_distance(mu, c1, mu, c1)) < 1e-8
    # commuting covariances: FD = |dmu|^2 + sum (sqrt(l1) - sqrt(l2))^2
    l1, l2 = np.array([1.0, 2.0, 3.0, 4.0]), np.array([4.0, 1.0, 9.0, 0.25])
    expected = 1.0 + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2)
    got = frechet_distance(np.zeros(4), np.diag(l1), np.eye(4)[0], np.diag(l2))
    assert abs(got - expected) < 1e-9


def test_feature_stats_match_numpy():
    f = lambda k: jax.random.normal(k, (50, 3)) * jnp.array([1.0, 2.0, 0.5]) + jnp.array([1.0, -1.0, 0.0])
    key = jax.random.key(0)
    mu, cov = feature_stats(f, key, 200, 50)
    allf = np.concatenate([np.asarray(f(jax.random.fold_in(key, i))) for i in range(4)])
    assert np.allclose(mu, allf.mean(0), atol=1e-5)
    assert np.allclose(cov, np.cov(allf.T), atol=1e-4)


def test_wasserstein_1d():
    a = np.array([0.0, 1.0, 2.0])
    assert abs(wasserstein_1d(a, a + 0.5) - 0.5) < 1e-12  # a shift moves every unit of mass by 0.5
    assert abs(wasserstein_1d(np.zeros(10), np.ones(5)) - 1.0) < 1e-12
    rng = np.random.default_rng(0)
    x, y = rng.uniform(size=1000), rng.uniform(size=700)
    assert wasserstein_1d(x, y) < 0.05 and abs(wasserstein_1d(x, y) - wasserstein_1d(y, x)) < 1e-12
