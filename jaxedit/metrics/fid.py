"""FID and KID of image sets with the FID Inception network (:mod:`jaxedit.models.inception`).

The math lives in :mod:`jaxedit.metrics.distributions` (:class:`FeatureStats`, :func:`frechet_distance`,
:func:`kid`); this module feeds it pool3 features of image batches:

    net, params = jaxedit.load(ckpt)                        # kind "fid-inception"
    out = fid_of(net, params, batches_a, batches_b)         # {"fid": ..., "n_a": ..., "n_b": ...}
    out = fid_of(net, params, batches_a, batches_b, kid_subsets=100, kid_subset_size=1000, key=jax.random.key(0))
    out = fid_of(net, params, batches_a, load_stats("ffhq_stats.npz"))   # precomputed reference statistics

A "batches" argument is any iterable of image arrays ``[b, H, W, 3]`` in [-1, 1] (host or device; the
sizes may vary, every batch is padded to the first one's size so the network compiles once); images
of another size than 299 are resized as pytorch-fid does. Statistics are streamed (only the
running mean and scatter are held), unless KID is asked for: KID draws subsets of all features, so
those are kept (2048 float32 per image: 400 MB for 50k).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxedit.errors import InputError
from jaxedit.io import arrays, files
from jaxedit.metrics.distributions import FeatureStats, frechet_distance, kid
from jaxedit.models.inception import FEATURES, FIDInception
from jaxedit.parallel import pad_batch


def pool3_features(net: FIDInception, params: dict, batches: Iterable[Any]) -> Iterable[np.ndarray]:
    """Yield the pool3 features ``[b, 2048]`` (float32, host) of each image batch."""
    size = None
    for i, batch in enumerate(batches):
        x = np.asarray(batch)
        if x.ndim != 4 or x.shape[0] == 0:
            raise InputError(f"FID: image batch {i} must be [b, H, W, 3] with b >= 1, got {list(x.shape)}")
        size = size or x.shape[0]
        parts = [x[s:s + size] for s in range(0, len(x), size)]  # a batch larger than the first is split
        for part in parts:
            padded, n = pad_batch(part, size)
            yield np.asarray(net(params, padded))[:n]


def statistics(net: FIDInception, params: dict, batches: Iterable[Any],
               keep_features: bool = False) -> tuple[FeatureStats, np.ndarray | None]:
    """Stream ``batches`` through the network -> ``(FeatureStats, features [N, 2048] or None)``."""
    stats, kept = FeatureStats(), []
    for f in pool3_features(net, params, batches):
        stats.update(f)
        if keep_features:
            kept.append(f)
    if stats.n < 2:
        raise InputError(f"FID: a set needs at least 2 images, got {stats.n}")
    return stats, (np.concatenate(kept) if keep_features else None)


def save_stats(path: str | os.PathLike, stats: FeatureStats) -> Path:
    """Write ``mu``, ``sigma`` (pytorch-fid's ``--save-stats`` keys) and ``n`` to an ``.npz``."""
    return files.save_npz(path, mu=stats.mean, sigma=stats.cov, n=np.int64(stats.n))  # atomic, exactly ``path``


def load_stats(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """``(mu [D], sigma [D, D])`` (D = 2048 for pool3) from an ``.npz`` with keys ``mu`` and ``sigma``
    (:func:`save_stats`, pytorch-fid's ``--save-stats``); no pickles are loaded."""
    path = Path(path)
    z = arrays.load(path, "FID statistics", keys=("mu", "sigma"))
    missing = [k for k in ("mu", "sigma") if k not in z]
    if missing:
        raise InputError(f"{path}: FID statistics need keys 'mu' and 'sigma', missing {missing} "
                         f"(has {sorted(z)[:8]})")
    if z["mu"].dtype.kind not in "fiu" or z["sigma"].dtype.kind not in "fiu":
        raise InputError(f"{path}: mu and sigma must be numbers, got {z['mu'].dtype} and {z['sigma'].dtype}")
    mu, sigma = z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
    if mu.ndim != 1 or sigma.shape != (len(mu), len(mu)):
        raise InputError(f"{path}: mu {list(mu.shape)} and sigma {list(sigma.shape)} must be [D] and [D, D] "
                         f"(pool3 statistics: D = {FEATURES})")
    if not (np.all(np.isfinite(mu)) and np.all(np.isfinite(sigma))):
        raise InputError(f"{path}: mu or sigma holds non-finite values")
    return mu, sigma


def fid_of(net: FIDInception, params: dict, images_a: Iterable[Any], images_b: Any, *, kid_subsets: int = 0,
           kid_subset_size: int = 1000, key: jax.Array | None = None) -> dict[str, Any]:
    """FID (and KID with ``kid_subsets > 0``) between two image sets -> ``{"fid", "n_a", "n_b"[, "kid_mean",
    "kid_std"]}``.

    ``images_a``: batches ``[b, H, W, 3]`` in [-1, 1]. ``images_b``: batches likewise, or reference
    statistics ``(mu, sigma)`` (:func:`load_stats`) or a :class:`FeatureStats` (FID only: KID needs the
    features). KID draws its subsets from ``key`` (required then); ``kid_subset_size`` must not exceed
    either set's size.
    """
    want_kid = kid_subsets > 0
    if want_kid and key is None:
        raise InputError("fid_of: KID draws random subsets: pass key=jax.random.key(seed)")
    stats_a, feats_a = statistics(net, params, images_a, keep_features=want_kid)
    return compare(net, params, stats_a, feats_a, images_b, kid_subsets=kid_subsets,
                   kid_subset_size=kid_subset_size, key=key)


def compare(net: FIDInception, params: dict, stats_a: FeatureStats, feats_a: np.ndarray | None, images_b: Any, *,
            kid_subsets: int = 0, kid_subset_size: int = 1000, key: jax.Array | None = None) -> dict[str, Any]:
    """:func:`fid_of` with set A already reduced to its statistics (and features, for KID)."""
    want_kid = kid_subsets > 0
    if want_kid and (key is None or feats_a is None):
        raise InputError("fid_of: KID draws random subsets of both sets' features: pass key= and keep A's features")
    feats_b = None
    if isinstance(images_b, FeatureStats):
        mu_b, cov_b = images_b.result()
        n_b = images_b.n
    elif isinstance(images_b, tuple) and len(images_b) == 2 and all(isinstance(v, np.ndarray) for v in images_b):
        mu_b, cov_b = images_b
        n_b = None
    else:
        stats_b, feats_b = statistics(net, params, images_b, keep_features=want_kid)
        (mu_b, cov_b), n_b = stats_b.result(), stats_b.n
    if want_kid and feats_b is None:
        raise InputError("fid_of: KID needs the features of both sets, not precomputed statistics")
    out = {"fid": frechet_distance(*stats_a.result(), mu_b, cov_b), "n_a": stats_a.n, "n_b": n_b}
    if want_kid:
        out["kid_mean"], out["kid_std"] = kid(feats_a, feats_b, kid_subsets, kid_subset_size, key=key)
    return out
