"""Distribution distances for generator quality: Frechet distance in a feature space and
1-D Wasserstein distances between factor distributions.

Feature statistics are accumulated on device in batches (sum and sum of outer products in
float32 per batch, combined in float64 on the host), so 10k-1M samples never sit in memory.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np


def feature_stats(features_of_batch: Callable[[jax.Array], jax.Array], key: jax.Array, n: int,
                  batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (float64) of ``features_of_batch(key_i)`` ``[batch, D]``
    over ``ceil(n / batch)`` batches with keys ``fold_in(key, i)``."""

    @jax.jit
    def moments(k):
        f = features_of_batch(k).astype(jnp.float32)
        return f.sum(0), f.T @ f

    s = ss = None
    batches = -(-n // batch)
    for i in range(batches):
        a, b = (np.asarray(x, np.float64) for x in moments(jax.random.fold_in(key, i)))
        s, ss = (a, b) if s is None else (s + a, ss + b)
    count = batches * batch
    mu = s / count
    cov = (ss - count * np.outer(mu, mu)) / (count - 1)
    return mu, cov


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2)`` (the FID formula), in float64."""
    s1 = _sqrtm_psd(cov1)
    cross = _sqrtm_psd(s1 @ cov2 @ s1)
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * np.trace(cross))


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two empirical 1-D distributions (any sizes): integral of |F_a - F_b|."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    grid = np.concatenate([a, b])
    grid.sort()
    fa = np.searchsorted(a, grid[:-1], side="right") / len(a)
    fb = np.searchsorted(b, grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * np.diff(grid)))
