"""Distribution distances in a feature space: the Frechet distance (FID's formula), the kernel
distance (KID's unbiased polynomial-kernel MMD^2), and 1-D Wasserstein distances between factor
distributions.

Feature statistics are streamed: :class:`FeatureStats` merges the mean and centred scatter matrix of
each batch into the running ones in float64 on the host (Chan, Golub & LeVeque's pairwise update),
so 10k-1M samples never sit in memory and no large sum of squares is differenced at the end.
The Inception-specific glue (FID/KID of image sets) is :mod:`jaxedit.metrics.fid`.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.errors import InputError


class FeatureStats:
    """Running count, mean ``[D]`` and scatter matrix ``sum (f - mean)(f - mean)^T`` ``[D, D]`` (float64) of
    feature rows fed batch by batch: ``stats.update(f)`` with ``f`` ``[b, D]``; ``stats.mean``, ``stats.cov``
    (unbiased, ``n - 1``, as ``np.cov``); ``a.merge(b)`` combines two (e.g. per-host) accumulators."""

    def __init__(self):
        self.n = 0
        self.mean: np.ndarray | None = None
        self.scatter: np.ndarray | None = None

    @property
    def dim(self) -> int | None:
        return None if self.mean is None else len(self.mean)

    def _add(self, n: int, mean: np.ndarray, scatter: np.ndarray) -> FeatureStats:
        if self.n == 0:
            self.n, self.mean, self.scatter = n, mean, scatter
            return self
        total = self.n + n
        delta = mean - self.mean
        self.scatter = self.scatter + scatter + np.outer(delta, delta) * (self.n * n / total)
        self.mean = self.mean + delta * (n / total)
        self.n = total
        return self

    def update(self, features) -> FeatureStats:
        """Add the rows of ``features`` ``[b, D]`` (any float dtype; computed in float64)."""
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or (self.dim is not None and f.shape[1] != self.dim):
            raise InputError(f"FeatureStats: features must be [batch, {self.dim or 'D'}], got {list(f.shape)}")
        if not np.all(np.isfinite(f)):
            raise InputError(f"FeatureStats: features [batch {len(f)}] hold non-finite values")
        if len(f) == 0:
            return self
        mean = f.mean(axis=0)
        c = f - mean
        return self._add(len(f), mean, c.T @ c)

    def merge(self, other: FeatureStats) -> FeatureStats:
        """Add another accumulator's rows (in place; returns self)."""
        if other.n == 0:
            return self
        if self.dim is not None and other.dim != self.dim:
            raise InputError(f"FeatureStats: cannot merge statistics of dimension {other.dim} into {self.dim}")
        return self._add(other.n, other.mean.copy(), other.scatter.copy())

    @property
    def cov(self) -> np.ndarray:
        if self.n < 2:
            raise InputError(f"FeatureStats: a covariance needs at least 2 samples, got {self.n}")
        return self.scatter / (self.n - 1)

    def result(self) -> tuple[np.ndarray, np.ndarray]:
        """``(mean [D], covariance [D, D])`` in float64."""
        return self.mean, self.cov


def feature_stats(features_of_batch: Callable[[jax.Array], jax.Array], key: jax.Array, n: int,
                  batch: int) -> tuple[np.ndarray, np.ndarray]:
    """Mean ``[D]`` and covariance ``[D, D]`` (float64) of ``features_of_batch(key_i)`` ``[batch, D]``
    over ``ceil(n / batch)`` batches with keys ``fold_in(key, i)``."""
    fn = jax.jit(lambda k: features_of_batch(k).astype(jnp.float32))
    stats = FeatureStats()
    for i in range(-(-n // batch)):
        stats.update(fn(jax.random.fold_in(key, i)))
    return stats.result()


def _sqrtm_psd(a: np.ndarray) -> np.ndarray:
    w, v = np.linalg.eigh((a + a.T) / 2)
    return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """``|mu1 - mu2|^2 + tr(C1) + tr(C2) - 2 tr((C1^1/2 C2 C1^1/2)^1/2)`` (the FID formula), in float64.

    ``(C1^1/2 C2 C1^1/2)^1/2`` has the trace of pytorch-fid's ``sqrtm(C1 C2)`` (the same eigenvalues),
    but is symmetric positive semi-definite: two symmetric eigendecompositions, no complex parts, and
    singular covariances (fewer samples than dimensions) need no ``eps`` offset; eigenvalues that
    rounding makes slightly negative count as 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    d = mu1.shape[-1] if mu1.ndim == 1 else -1
    if mu1.ndim != 1 or mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise InputError(f"frechet_distance: means [D] and covariances [D, D] of one D, got {list(mu1.shape)} "
                         f"{list(cov1.shape)} and {list(mu2.shape)} {list(cov2.shape)}")
    s1 = _sqrtm_psd(cov1)
    cross = np.linalg.eigvalsh(s1 @ cov2 @ s1)
    tr_cross = float(np.sum(np.sqrt(np.clip(cross, 0, None))))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(cov1) + np.trace(cov2) - 2 * tr_cross)


@jax.jit
def _poly_mmd_sums(a: jax.Array, b: jax.Array, ia: jax.Array, ib: jax.Array) -> tuple[jax.Array, ...]:
    """Per subset ``s`` and row: the kernel sums of rows ``a[ia[s]]`` and ``b[ib[s]]``, ``k(x, y) = (x.y / D + 1)^3``:
    off-diagonal sums of K_aa and K_bb, and the sums of K_ab, each ``[S, m]`` (float32; summed in float64 by
    the caller)."""
    d = a.shape[1]
    hi = jax.lax.Precision.HIGHEST

    def one(idx):
        x, y = a[idx[0]], b[idx[1]]
        k = lambda u, v: (jnp.matmul(u, v.T, precision=hi) / d + 1.0) ** 3
        off = ~jnp.eye(x.shape[0], dtype=bool)
        return (jnp.where(off, k(x, x), 0.0).sum(1), jnp.where(off, k(y, y), 0.0).sum(1), k(x, y).sum(1))

    return jax.lax.map(one, (ia, ib))


def kid(feats_a, feats_b, subsets: int = 100, subset_size: int = 1000, *, key: jax.Array) -> tuple[float, float]:
    """Kernel Inception Distance (Binkowski et al. 2018, torch-fidelity's): the unbiased MMD^2 between
    ``feats_a`` ``[Na, D]`` and ``feats_b`` ``[Nb, D]`` under ``k(x, y) = (x.y / D + 1)^3``, on ``subsets``
    random subsets of ``subset_size`` rows of each (drawn without replacement, independently per
    subset, from ``key``) -> ``(mean, std)`` over the subsets (``std`` with ``ddof = 0``, as torch-fidelity)::

        MMD^2 = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
                - 2 sum_{i, j} k(x_i, y_j) / m^2

    Kernel matrices in float32 (matmuls at full precision), their sums in float64. Unbiased: two samples of
    one distribution give a mean near 0 (either sign) within a few ``std / sqrt(subsets)``.
    """
    a, b = np.asarray(feats_a, np.float32), np.asarray(feats_b, np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise InputError(f"kid: features must be [N, D] with one D, got {list(a.shape)} and {list(b.shape)}")
    if subsets < 1 or subset_size < 2:
        raise InputError(f"kid: subsets must be >= 1 and subset_size >= 2, got {subsets} and {subset_size}")
    if subset_size > min(len(a), len(b)):
        raise InputError(f"kid: subset_size {subset_size} exceeds the number of features ({len(a)} and {len(b)}); "
                         "pass a smaller subset_size")
    if not (np.all(np.isfinite(a)) and np.all(np.isfinite(b))):
        raise InputError("kid: features hold non-finite values")
    keys = jax.random.split(key, (subsets, 2))
    draw = jax.jit(jax.vmap(lambda k, n: jax.random.choice(k, n, (subset_size,), replace=False), (0, None)),
                   static_argnums=1)
    ia, ib = draw(keys[:, 0], len(a)), draw(keys[:, 1], len(b))
    saa, sbb, sab = (np.asarray(s, np.float64).sum(axis=1) for s in _poly_mmd_sums(a, b, ia, ib))
    m = subset_size
    mmd = (saa + sbb) / (m * (m - 1)) - 2 * sab / (m * m)
    return float(mmd.mean()), float(mmd.std())


def wasserstein_1d(a: np.ndarray, b: np.ndarray) -> float:
    """W1 between two empirical 1-D distributions (any sizes): integral of |F_a - F_b|."""
    a, b = np.sort(np.asarray(a, np.float64)), np.sort(np.asarray(b, np.float64))
    grid = np.concatenate([a, b])
    grid.sort()
    fa = np.searchsorted(a, grid[:-1], side="right") / len(a)
    fb = np.searchsorted(b, grid[:-1], side="right") / len(b)
    return float(np.sum(np.abs(fa - fb) * np.diff(grid)))
