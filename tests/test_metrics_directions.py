"""Direction-factor matrix and commutativity on synthetic scores with known answers."""

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.metrics import attributes as A
from jaxedit.metrics import directions as D


def score(x):
    """Toy attribute reader: attribute i = 0.5 * x_i (angles wrap), shape probs from x[8:11]."""
    a = 0.5 * x[:, :8]
    a = jnp.where(jnp.asarray(A.ANGULAR), A.wrap(a), a)
    return a, jax.nn.softmax(x[:, 8:11], -1)


def linear_edit(x, k, t):
    return x + t[:, None] * jax.nn.one_hot(k, x.shape[1])


def test_matrix_recovers_slopes_and_unwraps_angles():
    x = jax.random.normal(jax.random.key(0), (16, 11))
    strengths = jnp.linspace(-3, 3, 13)  # moves angles by up to 1.5 turns: needs unwrapping
    ch = jax.jit(lambda x: D.sweep_changes(score, linear_edit, x, jnp.arange(11), strengths, batch=64))(x)
    m = D.direction_factor_matrix(ch, strengths)
    expect = np.zeros((11, 9))
    expect[np.arange(8), np.arange(8)] = 0.5
    np.testing.assert_allclose(m["slope"][:8], expect[:8], atol=1e-5)
    assert list(m["main"][:8]) == list(range(8)) and np.all(m["leak"][:8] < 1e-4)
    assert np.all(m["magnitude"][8:, 8] > 0.01) and np.allclose(m["magnitude"][8:, :8], 0, atol=1e-6)


def test_commutativity_zero_for_translations_nonzero_for_rotations():
    x = jax.random.normal(jax.random.key(1), (32, 11))
    assert np.max(D.commutativity(score, linear_edit, x, (0, 1.0), (1, -2.0))) < 1e-6

    def rotate_or_scale(x, k, t):  # k=0: rotate coords (0, 1) by t rad; k=1: scale coord 0 by (1 + t)
        c, s = jnp.cos(t), jnp.sin(t)
        rot = x.at[:, 0].set(c * x[:, 0] - s * x[:, 1]).at[:, 1].set(s * x[:, 0] + c * x[:, 1])
        return jnp.where(k == 0, rot, x.at[:, 0].multiply(1 + t))

    got = D.commutativity(score, rotate_or_scale, x, (0, 0.5), (1, 1.0))
    ab = rotate_or_scale(rotate_or_scale(x, 0, jnp.full(32, 0.5)), 1, jnp.full(32, 1.0))
    ba = rotate_or_scale(rotate_or_scale(x, 1, jnp.full(32, 1.0)), 0, jnp.full(32, 0.5))
    np.testing.assert_allclose(got[:2], np.mean(np.abs(0.5 * (ab - ba)[:, :2]), 0), rtol=1e-5)
    assert got[0] > 0.05


def test_attribute_change_wraps_and_reads_angles():
    f = jnp.full((1, 12), 0.5).at[0, 5].set(0.5).at[0, 6].set(1.0)  # hue (cos, sin) = (0, 1) -> 0.25 turns
    out = {"factors": f, "shape_logits": jnp.zeros((1, 3))}
    a, p = A.read(out)
    assert abs(float(a[0, A.ATTRIBUTES.index("hue")]) - 0.25) < 1e-6
    a2 = a.at[0, 4].set(-0.45)
    np.testing.assert_allclose(A.change((a2, p), (a.at[0, 4].set(0.45), p))[0, 4], -0.1, atol=1e-6)
