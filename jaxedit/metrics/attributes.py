"""Shapes-world attributes read off an image by the probe, in units where edits can be compared.

The probe predicts the factor vector of :mod:`jaxedit.data.shapes` (12 columns in [0, 1],
circular factors as (cos, sin) pairs). Edits are scored on the 8 *semantic* attributes:

    x, y, scale, spot_ratio          fraction of the sampling range (the probe's columns)
    rotation, hue, bg_hue, spot_hue  angle in turns (rotation: turns of the shape's symmetry
                                     period), decoded from the (cos, sin) pair with atan2
    shape                            (only in changes) total-variation distance of the
                                     predicted shape probabilities

Angles wrap, so a change of an angle is the wrapped difference in (-0.5, 0.5] turns
(:func:`change`); a full hue cycle is 1, the full x range is 1.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.data.shapes import FACTOR_NAMES, ShapesConfig, describe

ATTRIBUTES: tuple[str, ...] = ("x", "y", "scale", "rotation", "hue", "bg_hue", "spot_hue", "spot_ratio")
ANGULAR: tuple[bool, ...] = tuple(a in ("rotation", "hue", "bg_hue", "spot_hue") for a in ATTRIBUTES)
#: Columns of :func:`change`: the attributes plus the shape's total-variation change.
CHANGE_NAMES: tuple[str, ...] = (*ATTRIBUTES, "shape")

_col = {n: i for i, n in enumerate(FACTOR_NAMES)}
_PAIRS = {"rotation": ("rot_cos", "rot_sin"), "hue": ("hue_cos", "hue_sin"), "bg_hue": ("bg_cos", "bg_sin"),
          "spot_hue": ("spot_hue_cos", "spot_hue_sin")}


def read(probe_out: dict[str, jax.Array]) -> tuple[jax.Array, jax.Array]:
    """Probe output (``Probe.__call__``) -> (attributes ``[..., 8]`` as :data:`ATTRIBUTES`,
    shape probabilities ``[..., 3]``). Angles in turns in (-0.5, 0.5]."""
    f = probe_out["factors"]
    cols = []
    for name in ATTRIBUTES:
        if name in _PAIRS:
            c, s = (2 * f[..., _col[k]] - 1 for k in _PAIRS[name])
            cols.append(jnp.arctan2(s, c) / (2 * jnp.pi))
        else:
            cols.append(f[..., _col[name]])
    return jnp.stack(cols, -1), jax.nn.softmax(probe_out["shape_logits"], -1)


def attribute_of(factor: str) -> str | None:
    """The :data:`CHANGE_NAMES` column a probe factor (``FACTOR_NAMES``) or attribute name belongs to:
    ``'hue_cos'`` -> ``'hue'``, ``'rot_sin'`` -> ``'rotation'``, ``'scale'`` -> ``'scale'``; ``None`` if unknown."""
    if factor in CHANGE_NAMES:
        return factor
    return next((name for name, pair in _PAIRS.items() if factor in pair), None)


def wrap(delta: jax.Array) -> jax.Array:
    """Wrap angular differences (turns) into [-0.5, 0.5)."""
    return (delta + 0.5) % 1.0 - 0.5


def change(a0: tuple[jax.Array, jax.Array], a1: tuple[jax.Array, jax.Array]) -> jax.Array:
    """Signed change from ``a0`` to ``a1`` (both from :func:`read`) -> ``[..., 9]`` (:data:`CHANGE_NAMES`):
    attribute differences (angles wrapped) and the shape's total-variation distance (>= 0)."""
    (x0, p0), (x1, p1) = a0, a1
    d = x1 - x0
    d = jnp.where(jnp.asarray(ANGULAR), wrap(d), d)
    tv = 0.5 * jnp.sum(jnp.abs(p1 - p0), -1, keepdims=True)
    return jnp.concatenate([d, tv], -1)


def words(probe_out: dict[str, jax.Array], cfg: ShapesConfig = ShapesConfig()) -> list[dict[str, str]]:
    """Probe output for B images -> per image the caption words of :func:`jaxedit.data.shapes.describe`
    (shape, size, color, spot_size, spot_color, position, background), read off the probe's
    factors (host side). What a person would say the image shows, as far as the probe sees it."""
    attrs, probs = (np.asarray(a) for a in read(probe_out))
    shape = np.argmax(probs, -1)
    lin = lambda v, r: r[0] + float(v) * (r[1] - r[0])  # noqa: E731
    col = {n: i for i, n in enumerate(ATTRIBUTES)}
    out = []
    for i in range(attrs.shape[0]):
        a = attrs[i]
        out.append(describe(dict(shape=int(shape[i]), x=lin(a[col["x"]], cfg.x_range), y=lin(a[col["y"]], cfg.y_range),
                                 scale=lin(a[col["scale"]], cfg.scale_range), hue=float(a[col["hue"]]) % 1.0,
                                 bg_hue=float(a[col["bg_hue"]]) % 1.0, spot_hue=float(a[col["spot_hue"]]) % 1.0,
                                 spot_ratio=lin(a[col["spot_ratio"]], cfg.spot_range)), cfg))
    return out
