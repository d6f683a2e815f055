"""The probe's region pooling: per-class areas and colours are exact sums over the label map."""

import jax
import numpy as np
import pytest

from jaxedit.errors import ConfigError
from jaxedit.models import probe


def test_region_stats_are_areas_and_weighted_means():
    labels = jax.random.randint(jax.random.key(0), (2, 8, 8), 0, 3)
    values = jax.random.normal(jax.random.key(1), (2, 8, 8, 4))
    logits = 50.0 * jax.nn.one_hot(labels, 3)  # softmax is one-hot to float precision
    got = np.asarray(probe._region_stats(logits, values)).reshape(2, 3, 6)
    lab, val = np.asarray(labels), np.asarray(values)
    for b in range(2):
        for c in range(3):
            m = lab[b] == c
            np.testing.assert_allclose(got[b, c, 0], 10.0 * m.mean(), rtol=1e-6)
            np.testing.assert_allclose(got[b, c, 1], np.log(m.mean() + 1e-4), rtol=1e-5)
            np.testing.assert_allclose(got[b, c, 2:], val[b][m].sum(0) / (m.sum() + 1e-3), rtol=1e-5, atol=1e-6)


def test_region_pooling_feeds_only_the_factor_head():
    cfg = probe.ProbeConfig(widths=(8, 8), decoder_widths=(8, 8), feature_dim=16, factor_hidden=0)
    P = probe.Probe(cfg)
    params = jax.eval_shape(P.init, jax.random.key(0))
    out = jax.eval_shape(P, params, jax.ShapeDtypeStruct((3, 32, 32, 3), np.float32))
    assert out["factors"].shape == (3, len(probe.FACTOR_NAMES)) and out["features"].shape == (3, 16)
    assert params["factor_head"]["kernel"].shape[0] == 16 + 3 * (2 + 3 + 8)  # embedding + 3 classes x (area, log area, rgb, decoder)
    assert params["shape_head"]["kernel"].shape[0] == 16
    off = probe.Probe(probe.ProbeConfig(widths=(8, 8), decoder_widths=(8, 8), feature_dim=16, region_pooling=False,
                                            factor_hidden=0))
    assert jax.eval_shape(off.init, jax.random.key(0))["factor_head"]["kernel"].shape[0] == 16


def test_region_stop_gradient_is_checked():
    with pytest.raises(ConfigError, match="region_stop_gradient 'all'"):
        jax.eval_shape(probe.Probe(probe.ProbeConfig(region_stop_gradient="all")).init, jax.random.key(0))
