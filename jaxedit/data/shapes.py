"""The procedural "shapes world": one anti-aliased object with an inner spot on a plain background.

Pure JAX (jit- and vmap-able, device-agnostic), deterministic from a PRNG key. Images are NHWC
float32 in [-1, 1]. See DESIGN.md section 5.

Canvas and geometry
-------------------
The canvas is the unit square: ``x`` runs left -> right and ``y`` top -> bottom (image rows), both
in [0, 1]; pixel ``(i, j)`` (row, column) covers ``[j/H, (j+1)/H] x [i/H, (i+1)/H]``. Angles are
counter-clockwise *as seen on screen*.

Every shape is described by its circumscribed circle: centre ``(x, y)``, circumradius
``R = scale / 2`` (``scale`` = diameter of the circumscribed circle / canvas side), so the object
stays inside that circle at every rotation and, with ``x, y in [0.35, 0.65]`` and
``scale <= 0.6``, at least 0.05 of the canvas away from every border.

* circle: the disk of radius ``R``; rotation is meaningless (sampled as 0, see below);
* square: regular 4-gon, apothem ``R cos(pi/4)``; at rotation 0 its edges are axis-aligned;
* triangle: equilateral (regular 3-gon), apothem (inradius) ``R / 2``; at rotation 0 it points up.

Rotation angle ``theta = rot * period`` with the normalized rotation ``rot in [0, 1)`` and
``period = pi/2`` (square) or ``2 pi/3`` (triangle); ``rot`` covers exactly one symmetry
period, so ``rot`` and ``rot + 1`` render the same image. Circles have ``rot = 0``.

Spot rule: a disk at the object centre with radius
``spot_ratio * SPOT_SCALE[shape] * R``, ``SPOT_SCALE = (1, 1, 1/sqrt 2)`` (circle, square,
triangle); equivalently ``spot_ratio * min(R, sqrt(2) * inradius)``. With ``spot_ratio <= 0.45``
the spot lies strictly inside the body for every shape, rotation and position: at most 45 % of
the circle's radius and 64 % of the square's and triangle's inradius (squares and triangles keep
the same relative body ring; with the plain ``spot_ratio * R`` rule a triangle's ring shrinks to
0.05 R and at 32 px 19 % of the triangles had spot pixels touching the background).
:func:`spot_radius` gives the radius in canvas units.

Colours: HSV with fixed saturation/value per part (object S=0.85 V=0.95, background S=0.5
V=0.35, spot S=0.6 V=1.0, so the spot differs from the body even at the same hue) converted by a
smooth HSV -> RGB formula (the standard piecewise-linear hue ramps passed through smoothstep
``c^2 (3 - 2c)``: C1 in hue, exact at the primaries and secondaries).

Anti-aliasing (supersampled signed-distance coverage)
-----------------------------------------------------
Each pixel is split into ``supersample x supersample`` sub-pixels. At every sub-pixel centre
the signed distance ``d`` to the body and to the spot (negative inside) gives a smooth
coverage ``clip(0.5 - d / w, 0, 1)`` with ``w`` the sub-pixel width (the exact area of the
sub-pixel under a straight edge crossing it along an axis); the pixel coverage is the mean over
its sub-pixels. The polygon distance is the max of the edge half-plane distances (exact inside
and at the boundary, which is all the coverage needs; corners stay sharp). ``supersample=1``
gives plain analytic SDF coverage at pixel centres. With body coverage ``cb`` (spot included)
and spot coverage ``cs`` (``cs <= cb`` since the spot is inside the body)::

    rgb = (1 - cb) * background + (cb - cs) * object + cs * spot

Label map: at the final resolution, ``argmax`` of the three colour shares
``(1 - cb, cb - cs, cs)`` -> {0 background, 1 body, 2 spot}: a pixel gets the label whose
colour has the largest share in it (majority whenever one part covers more than half).

Factor vector (``factor_vector``, the probe's regression target), every column in [0, 1]::

    x, y         (v - 0.35) / 0.30
    scale        (v - 0.25) / 0.35
    rot_cos/sin  (cos / sin(2 pi rot) + 1) / 2      circles: rot = 0 -> (1, 0.5)
    hue_cos/sin, bg_cos/sin, spot_hue_cos/sin       (cos / sin(2 pi hue) + 1) / 2
    spot_ratio   (v - 0.15) / 0.30

(ranges taken from the ``ShapesConfig``; the above are the defaults). The shape is kept apart
as an int32 (``factors['shape']``).

Captions (host side, numpy): object and spot size words from the thirds of their ranges
(small / medium / large), colour names from hue bins in degrees (``HUE_BINS``: red 345-15,
orange 15-45, yellow 45-75, green 75-160, cyan 160-200, blue 200-260, purple 260-290,
pink 290-345; the background is named by its hue too), position from the thirds of the
position range (x < 0.45 left, > 0.55 right; y < 0.45 top, > 0.55 bottom; else centre), six
templates and synonyms drawn from a ``numpy.random.Generator``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from collections.abc import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import parallel
from jaxedit.errors import InputError

CIRCLE, SQUARE, TRIANGLE = 0, 1, 2
SHAPE_NAMES: tuple[str, ...] = ("circle", "square", "triangle")

#: Spot radius / (spot_ratio * circumradius) per shape (circle, square, triangle); see module doc.
SPOT_SCALE: tuple[float, float, float] = (1.0, 1.0, 1.0 / math.sqrt(2.0))

#: Names of the raw factors returned by :func:`sample_factors` (each ``[B]``; ``shape`` int32).
RAW_FACTOR_NAMES: tuple[str, ...] = ("shape", "x", "y", "scale", "rot", "hue", "bg_hue", "spot_hue", "spot_ratio")

#: Columns of :func:`factor_vector` (all continuous, normalized to [0, 1]).
FACTOR_NAMES: tuple[str, ...] = (
    "x", "y", "scale", "rot_cos", "rot_sin", "hue_cos", "hue_sin",
    "bg_cos", "bg_sin", "spot_hue_cos", "spot_hue_sin", "spot_ratio",
)


@dataclasses.dataclass(frozen=True)
class ShapesConfig:
    """Static renderer configuration (hashable: pass it as a static argument to ``jax.jit``).

    resolution: output side H = W in pixels (32 default; 64, 128 supported, any >= 8 works).
    supersample: sub-pixels per pixel side for anti-aliasing (1 = analytic SDF coverage only).
    *_range: sampling ranges (uniform) of the continuous factors, as fractions of the canvas.
    *_sv: fixed (saturation, value) of object, background and spot colours.
    chunk_pixels: render batches in chunks of about this many output pixels (cache-sized working
        set; 5x faster for large batches on CPU); 0 = whole batch at once; -1 (default) = 65536
        on the CPU backend, whole batch on accelerators. Changes the result only by float32 rounding.
    """

    resolution: int = 32
    supersample: int = 4
    x_range: tuple[float, float] = (0.35, 0.65)
    y_range: tuple[float, float] = (0.35, 0.65)
    scale_range: tuple[float, float] = (0.25, 0.6)
    spot_range: tuple[float, float] = (0.15, 0.45)
    object_sv: tuple[float, float] = (0.85, 0.95)
    background_sv: tuple[float, float] = (0.5, 0.35)
    spot_sv: tuple[float, float] = (0.6, 1.0)
    chunk_pixels: int = -1

    def __post_init__(self):
        if self.resolution < 1 or self.supersample < 1:
            raise InputError(f"resolution and supersample must be >= 1, got {self.resolution}, {self.supersample}")
        if self.spot_range[1] >= 1 / math.sqrt(2):
            raise InputError("spot_range max must be < 1/sqrt(2) so the spot stays inside the square and triangle")
        lo = min(self.x_range[0], self.y_range[0]) - self.scale_range[1] / 2
        hi = max(self.x_range[1], self.y_range[1]) + self.scale_range[1] / 2
        if lo < 0 or hi > 1:
            raise InputError("position and scale ranges let the object leave the canvas")


# --------------------------------------------------------------------------------------------
# colour


def hsv_to_rgb(h: jax.Array, s, v) -> jax.Array:
    """Smooth HSV -> RGB. ``h`` [...] in turns (any real; periodic with period 1), ``s``, ``v``
    broadcastable scalars/arrays in [0, 1] -> ``[..., 3]`` RGB in [0, 1]."""
    h = jnp.asarray(h, jnp.float32)[..., None]
    k = jnp.asarray([0.0, 4.0, 2.0], jnp.float32)
    c = jnp.clip(jnp.abs(jnp.mod(h * 6.0 + k, 6.0) - 3.0) - 1.0, 0.0, 1.0)
    c = c * c * (3.0 - 2.0 * c)
    s = jnp.asarray(s, jnp.float32)[..., None] if jnp.ndim(s) else s
    v = jnp.asarray(v, jnp.float32)[..., None] if jnp.ndim(v) else v
    return v * (1.0 - s + s * c)


def colors(factors: Mapping[str, jax.Array], cfg: ShapesConfig = ShapesConfig()) -> dict[str, jax.Array]:
    """RGB in [0, 1] of each part: ``{'object', 'background', 'spot'}``, each ``[B, 3]``."""
    return dict(
        object=hsv_to_rgb(factors["hue"], *cfg.object_sv),
        background=hsv_to_rgb(factors["bg_hue"], *cfg.background_sv),
        spot=hsv_to_rgb(factors["spot_hue"], *cfg.spot_sv),
    )


# --------------------------------------------------------------------------------------------
# sampling


def _uniform(key, batch, rng):
    return jax.random.uniform(key, (batch,), jnp.float32, rng[0], rng[1])


@functools.partial(jax.jit, static_argnames=("batch", "cfg"))
def sample_factors(key: jax.Array, batch: int, cfg: ShapesConfig = ShapesConfig()) -> dict[str, jax.Array]:
    """Draw ``batch`` independent raw factor sets (all uniform), each entry ``[B]``:

    shape int32 in {0 circle, 1 square, 2 triangle}; x, y centre; scale (circumscribed diameter /
    canvas); rot in [0, 1) of the shape's symmetry period (0 for circles); hue, bg_hue, spot_hue
    in [0, 1) turns; spot_ratio (spot radius / circumradius).
    """
    ks = jax.random.split(key, 9)
    shape = jax.random.randint(ks[0], (batch,), 0, 3, jnp.int32)
    rot = jax.random.uniform(ks[4], (batch,), jnp.float32)
    return dict(
        shape=shape,
        x=_uniform(ks[1], batch, cfg.x_range),
        y=_uniform(ks[2], batch, cfg.y_range),
        scale=_uniform(ks[3], batch, cfg.scale_range),
        rot=jnp.where(shape == CIRCLE, 0.0, rot),
        hue=jax.random.uniform(ks[5], (batch,), jnp.float32),
        bg_hue=jax.random.uniform(ks[6], (batch,), jnp.float32),
        spot_hue=jax.random.uniform(ks[7], (batch,), jnp.float32),
        spot_ratio=_uniform(ks[8], batch, cfg.spot_range),
    )


# --------------------------------------------------------------------------------------------
# rendering


def _coverage(factors: Mapping[str, jax.Array], cfg: ShapesConfig) -> tuple[jax.Array, jax.Array]:
    """Body (spot included) and spot coverage ``[B, H, W]`` in [0, 1], supersampled.

    Distances are in sub-pixel units (so the smooth coverage is ``clip(0.5 - d, 0, 1)``). Each
    plane distance is an outer sum ``row term + column term`` of small ``[ss, B, 4, H]`` tables.
    A ``fori_loop`` over the ``ss`` sub-pixel rows (the ``ss`` sub-pixel columns unrolled inside)
    accumulates the coverage at the final resolution: no ``[B, H*ss, W*ss]`` intermediate, and
    the loop carry is materialized once, so XLA cannot duplicate the whole supersampled program
    into each consumer (colour channels, label argmax) - on CPU 5-10x faster than rendering at
    ``H*ss`` and reshape-averaging.
    """
    res, ss = cfg.resolution, cfg.supersample
    n = res * ss
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    shape = jnp.asarray(factors["shape"], jnp.int32)
    cx, cy, scale = f32(factors["x"]), f32(factors["y"]), f32(factors["scale"])
    rot, ratio = f32(factors["rot"]), f32(factors["spot_ratio"])
    radius = 0.5 * scale * n                                              # circumradius, sub-pixels

    # Sub-pixel centres: g[o, i] = i * ss + o + 0.5 for offset o in [0, ss) of pixel i.
    g = (jnp.arange(n, dtype=jnp.float32) + 0.5).reshape(res, ss).T       # [ss, res]
    px = g[:, None, :] - (cx * n)[None, :, None]                          # [ss, B, W] x - cx
    pu = (cy * n)[None, :, None] - g[:, None, :]                          # [ss, B, H] "up" = cy - y

    # Edge normals (angles in the x-right / y-up frame): square phi_k = theta + k pi/2;
    # triangle (apex up at theta = 0) phi_k = theta - pi/2 + k 2pi/3, its first normal repeated
    # as a 4th plane so every polygon is max over 4 half-planes minus the apothem.
    is_tri = shape == TRIANGLE
    theta = rot * jnp.where(is_tri, 2 * math.pi / 3, math.pi / 2)
    k = jnp.arange(4, dtype=jnp.float32)
    phi = jnp.where(is_tri[:, None],
                    theta[:, None] - math.pi / 2 + jnp.minimum(k, 2.0)[None] * (2 * math.pi / 3),
                    theta[:, None] + k[None] * (math.pi / 2))                        # [B, 4]
    apothem = radius * jnp.where(is_tri, 0.5, math.cos(math.pi / 4))
    u = px[:, :, None, :] * jnp.cos(phi)[None, :, :, None]                           # [ss, B, 4, W]
    v = pu[:, :, None, :] * jnp.sin(phi)[None, :, :, None] - apothem[None, :, None, None]
    px2, pu2 = jnp.square(px), jnp.square(pu)
    is_circle = (shape == CIRCLE)[:, None, None]
    r_body = radius[:, None, None]
    r_spot = (ratio * radius * jnp.asarray(SPOT_SCALE, jnp.float32)[shape])[:, None, None]

    def row(oy, carry):
        cb, cs = carry
        v_o, pu2_o = v[oy], pu2[oy]                                       # [B, 4, H], [B, H]
        for ox in range(ss):
            plane = [v_o[:, j, :, None] + u[ox, :, j, None, :] for j in range(4)]   # [B, H, W]
            d_poly = jnp.maximum(jnp.maximum(plane[0], plane[1]), jnp.maximum(plane[2], plane[3]))
            rho = jnp.sqrt(pu2_o[:, :, None] + px2[ox, :, None, :])
            d_body = jnp.where(is_circle, rho - r_body, d_poly)
            cb = cb + jnp.clip(0.5 - d_body, 0.0, 1.0)
            cs = cs + jnp.clip(0.5 - (rho - r_spot), 0.0, 1.0)
        return cb, cs

    zeros = jnp.zeros((shape.shape[0], res, res), jnp.float32)
    cb, cs = jax.lax.fori_loop(0, ss, row, (zeros, zeros))
    return cb * (1.0 / ss**2), cs * (1.0 / ss**2)


def spot_radius(factors: Mapping[str, jax.Array]) -> jax.Array:
    """Spot radius ``[B]`` as a fraction of the canvas side (``spot_ratio * SPOT_SCALE[shape] * scale / 2``)."""
    scale = jnp.asarray(SPOT_SCALE, jnp.float32)[jnp.asarray(factors["shape"], jnp.int32)]
    return jnp.asarray(factors["spot_ratio"], jnp.float32) * scale * 0.5 * jnp.asarray(factors["scale"], jnp.float32)


def object_area(factors: Mapping[str, jax.Array]) -> jax.Array:
    """Analytic body area (spot included) ``[B]`` as a fraction of the canvas: circle ``pi R^2``,
    square ``2 R^2``, triangle ``3 sqrt(3) / 4 R^2`` with ``R = scale / 2``."""
    k = jnp.asarray([math.pi, 2.0, 3.0 * math.sqrt(3.0) / 4.0], jnp.float32)[jnp.asarray(factors["shape"], jnp.int32)]
    return k * jnp.square(0.5 * jnp.asarray(factors["scale"], jnp.float32))


def _render(factors: Mapping[str, jax.Array], col: Mapping[str, jax.Array], cfg: ShapesConfig
            ) -> tuple[jax.Array, jax.Array]:
    cb, cs = _coverage(factors, cfg)
    cs = jnp.minimum(cs, cb)
    body = cb - cs
    rgb = ((1.0 - cb)[..., None] * col["background"][:, None, None, :]
           + body[..., None] * col["object"][:, None, None, :]
           + cs[..., None] * col["spot"][:, None, None, :])
    labels = jnp.argmax(jnp.stack([1.0 - cb, body, cs], axis=-1), axis=-1).astype(jnp.int32)
    return rgb * 2.0 - 1.0, labels


def _chunk_size(cfg: ShapesConfig) -> int | None:
    pixels = cfg.chunk_pixels
    if pixels < 0:
        pixels = 1 << 16 if jax.default_backend() == "cpu" else 0
    return max(1, pixels // cfg.resolution**2) if pixels else None


@functools.partial(jax.jit, static_argnames=("cfg",))
def render(factors: Mapping[str, jax.Array], cfg: ShapesConfig = ShapesConfig(),
           rgb: Mapping[str, jax.Array] | None = None) -> tuple[jax.Array, jax.Array]:
    """Render raw factors (each ``[B]``) -> ``(image [B, H, W, 3] float32 in [-1, 1],
    labels [B, H, W] int32 {0 background, 1 body, 2 spot})``; H = W = ``cfg.resolution``.

    ``rgb``: parts whose colour replaces the factors' (``{'object' | 'background' | 'spot': [B, 3]}`` in [0, 1],
    any colour, also off the world's saturation and value): the same geometry and anti-aliasing, recoloured.

    Batches larger than ``cfg.chunk_pixels`` pixels are rendered chunk by chunk (``lax.map``)
    so the working set stays in cache (the result depends on it only up to float32 rounding).
    """
    factors = {k: jnp.asarray(factors[k]) for k in RAW_FACTOR_NAMES}
    col = {**colors(factors, cfg), **{k: jnp.asarray(v, jnp.float32) for k, v in (rgb or {}).items()}}
    if set(col) != {"object", "background", "spot"}:
        raise InputError(f"rgb: parts must be object, background, spot; got {sorted(rgb)}")
    chunk = _chunk_size(cfg)
    if chunk is None or factors["shape"].shape[0] <= chunk:
        return _render(factors, col, cfg)
    return parallel.chunked_map(lambda fc: _render(*fc, cfg), (factors, col), chunk)


def factor_vector(factors: Mapping[str, jax.Array], cfg: ShapesConfig = ShapesConfig()) -> jax.Array:
    """Raw factors -> ``[B, F]`` float32 in [0, 1], columns ``FACTOR_NAMES`` (see module doc):
    linear ranges min-max scaled by the config's ranges, circular ones as ``(cos, sin)`` of
    ``2 pi * turns`` mapped by ``(v + 1) / 2``."""
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    lin = lambda a, r: (f32(a) - r[0]) / (r[1] - r[0])
    circ = lambda a: ((jnp.cos(2 * jnp.pi * f32(a)) + 1) / 2, (jnp.sin(2 * jnp.pi * f32(a)) + 1) / 2)
    cols = [lin(factors["x"], cfg.x_range), lin(factors["y"], cfg.y_range), lin(factors["scale"], cfg.scale_range),
            *circ(factors["rot"]), *circ(factors["hue"]), *circ(factors["bg_hue"]), *circ(factors["spot_hue"]),
            lin(factors["spot_ratio"], cfg.spot_range)]
    return jnp.stack(cols, axis=-1)


@functools.partial(jax.jit, static_argnames=("batch", "cfg"))
def sample(key: jax.Array, batch: int, cfg: ShapesConfig = ShapesConfig()) -> dict:
    """Sample and render ``batch`` images in one compiled program (``batch``, ``cfg`` static).

    Returns ``image [B, H, W, 3]`` float32 in [-1, 1], ``labels [B, H, W]`` int32,
    ``factors`` (raw dict, each ``[B]``), ``vector [B, len(FACTOR_NAMES)]`` in [0, 1].
    """
    factors = sample_factors(key, batch, cfg)
    image, labels = render(factors, cfg)
    return dict(image=image, labels=labels, factors=factors, vector=factor_vector(factors, cfg))


# --------------------------------------------------------------------------------------------
# captions (host side, numpy)

#: Hue bins in degrees, ``(upper bound, name)``; red wraps around 345..15.
HUE_BINS: tuple[tuple[float, str], ...] = (
    (15, "red"), (45, "orange"), (75, "yellow"), (160, "green"), (200, "cyan"),
    (260, "blue"), (290, "purple"), (345, "pink"), (360, "red"),
)
COLOR_SYNONYMS: dict[str, tuple[str, ...]] = {
    "red": ("red", "scarlet"), "orange": ("orange",), "yellow": ("yellow",), "green": ("green",),
    "cyan": ("cyan", "turquoise"), "blue": ("blue",), "purple": ("purple", "violet"),
    "pink": ("pink", "magenta"),
}
SHAPE_SYNONYMS: dict[int, tuple[str, ...]] = {
    CIRCLE: ("circle", "disk", "round shape", "ball"),
    SQUARE: ("square", "box", "block"),
    TRIANGLE: ("triangle", "triangular shape"),
}
SIZE_SYNONYMS: dict[str, tuple[str, ...]] = {
    "small": ("small", "little", "tiny"), "medium": ("medium", "medium-sized", "mid-sized"),
    "large": ("large", "big", "huge"),
}
SPOT_WORDS: tuple[str, ...] = ("spot", "dot", "centre dot", "central spot")


def hue_name(hue: float) -> str:
    """Base colour name of a hue in turns (see ``HUE_BINS``)."""
    deg = (float(hue) % 1.0) * 360.0
    for upper, name in HUE_BINS:
        if deg < upper:
            return name
    return "red"


def _tercile(v: float, rng: tuple[float, float]) -> str:
    t = (float(v) - rng[0]) / (rng[1] - rng[0])
    return "small" if t < 1 / 3 else ("medium" if t < 2 / 3 else "large")


def position_name(x: float, y: float, cfg: ShapesConfig = ShapesConfig()) -> str:
    """'top left', 'top', 'left', 'centre', ... from the thirds of the position ranges
    (defaults: x < 0.45 left, x > 0.55 right, y < 0.45 top, y > 0.55 bottom)."""
    third = lambda v, r, lo, hi: lo if _tercile(v, r) == "small" else (hi if _tercile(v, r) == "large" else "")
    words = (third(y, cfg.y_range, "top", "bottom"), third(x, cfg.x_range, "left", "right"))
    return " ".join(w for w in words if w) or "centre"


def describe(f: Mapping, cfg: ShapesConfig = ShapesConfig()) -> dict[str, str]:
    """Canonical words of one factor row (``f[name]`` scalars): shape, size, color, spot_size,
    spot_color, position, background."""
    return dict(
        shape=SHAPE_NAMES[int(f["shape"])], size=_tercile(f["scale"], cfg.scale_range),
        color=hue_name(f["hue"]), spot_size=_tercile(f["spot_ratio"], cfg.spot_range),
        spot_color=hue_name(f["spot_hue"]), position=position_name(f["x"], f["y"], cfg),
        background=hue_name(f["bg_hue"]),
    )


def _article(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _position_phrases(pos: str) -> tuple[str, ...]:
    if pos == "centre":
        return ("in the centre", "in the middle", "at the centre")
    if pos in ("left", "right"):
        return (f"on the {pos}", f"at the {pos}", f"to the {pos}")
    if pos in ("top", "bottom"):
        return (f"at the {pos}", f"near the {pos}")
    row, col = pos.split()
    vertical = "upper" if row == "top" else "lower"
    return (f"at the {pos}", f"in the {pos}", f"in the {pos} corner", f"in the {vertical} {col}")


_TEMPLATES = (
    "{a_size_color_shape} with {a_spot} {pos} on {a_bg} background",
    "{a_size_color_shape} {pos} with {a_spot}, on {a_bg} background",
    "{Pos}, {a_size_color_shape} with {a_spot} on {a_bg} background",
    "{bg} background with {a_size_color_shape} {pos}; it has {a_spot}",
    "a picture of {a_size_color_shape} with {a_spot}, {pos}, on {bg}",
    "{a_color_shape}, {size}, {pos}, with {a_spot} in it, {bg} background",
)


def caption(f: Mapping, rng: np.random.Generator, cfg: ShapesConfig = ShapesConfig()) -> str:
    """Caption of one factor row. ``f`` is anything indexable by the raw factor names with scalar
    values (a dict of scalars, a numpy structured record). Templates and synonyms are chosen with
    ``rng``, so the caption is deterministic given the generator state. Example:
    ``"a large red square with a small yellow spot at the top left on a blue background"``."""
    w = describe(f, cfg)
    pick = lambda seq: seq[int(rng.integers(len(seq)))]
    size = pick(SIZE_SYNONYMS[w["size"]])
    color = pick(COLOR_SYNONYMS[w["color"]])
    shape = pick(SHAPE_SYNONYMS[int(f["shape"])])
    spot = f"{pick(SIZE_SYNONYMS[w['spot_size']])} {pick(COLOR_SYNONYMS[w['spot_color']])} {pick(SPOT_WORDS)}"
    bg = pick(COLOR_SYNONYMS[w["background"]])
    pos = pick(_position_phrases(w["position"]))
    template = pick(_TEMPLATES)
    return template.format(
        a_size_color_shape=_article(f"{size} {color} {shape}"), a_color_shape=_article(f"{color} {shape}"),
        size=size, a_spot=_article(spot), pos=pos, Pos=pos[0].upper() + pos[1:], a_bg=_article(bg), bg=bg,
    )


#: The parts a partial caption may name (:func:`partial_caption`).
CAPTION_PARTS: tuple[str, ...] = ("size", "color", "shape", "spot_size", "spot_color", "position", "background")


def partial_caption(f: Mapping, rng: np.random.Generator, cfg: ShapesConfig = ShapesConfig(),
                    keep: float = 0.5) -> str:
    """A caption naming a random non-empty subset of the factors (each of :data:`CAPTION_PARTS`
    kept with probability ``keep``), e.g. ``"a red shape"``, ``"a large square on a blue
    background"``, ``"an object with a small spot at the top"``. Short prompts such as these
    are what people type; training on them makes a CLIP answer them (the full captions of
    :func:`caption` always name everything). Deterministic given ``rng``."""
    w = describe(f, cfg)
    pick = lambda seq: seq[int(rng.integers(len(seq)))]
    on = dict(zip(CAPTION_PARTS, rng.random(len(CAPTION_PARTS)) < keep))
    if not any(on.values()):
        on[CAPTION_PARTS[int(rng.integers(len(CAPTION_PARTS)))]] = True
    noun = pick(SHAPE_SYNONYMS[int(f["shape"])]) if on["shape"] else pick(("shape", "object"))
    head = [pick(SIZE_SYNONYMS[w["size"]])] if on["size"] else []
    head += [pick(COLOR_SYNONYMS[w["color"]])] if on["color"] else []
    tail = []
    if on["spot_size"] or on["spot_color"]:
        spot = [pick(SIZE_SYNONYMS[w["spot_size"]])] if on["spot_size"] else []
        spot += [pick(COLOR_SYNONYMS[w["spot_color"]])] if on["spot_color"] else []
        tail.append("with " + _article(" ".join(spot + [pick(SPOT_WORDS)])))
    if on["position"]:
        tail.append(pick(_position_phrases(w["position"])))
    if on["background"]:
        tail.append(f"on {_article(pick(COLOR_SYNONYMS[w['background']]))} background")
    order = rng.permutation(len(tail))
    return " ".join([_article(" ".join(head + [noun]))] + [tail[i] for i in order])


def captions(factors: Mapping[str, Sequence], seed: int, cfg: ShapesConfig = ShapesConfig(),
             partial: float = 0.0) -> list[str]:
    """Captions of a batch of raw factors (dict of ``[B]`` arrays, jax or numpy); one
    ``numpy.random.default_rng(seed)`` drives all rows in order. A fraction ``partial`` of the
    rows (drawn per row) get a :func:`partial_caption` instead of a full one."""
    rng = np.random.default_rng(seed)
    cols = {k: np.asarray(factors[k]) for k in RAW_FACTOR_NAMES}
    n = len(cols["shape"])
    out = []
    for i in range(n):
        row = {k: c[i] for k, c in cols.items()}
        short = partial > 0 and rng.random() < partial
        out.append(partial_caption(row, rng, cfg) if short else caption(row, rng, cfg))
    return out
