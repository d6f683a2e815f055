"""EditGAN's segmentation branch: the DatasetGAN pixel-classifier ensemble over generator features.

The reference (``nv-tlabs/editGAN_release``, ``models/DatasetGAN/classifer.py`` and
``utils/model_utils.py``; DatasetGAN's ``train_interpreter.py`` for the uncertainty):

- every synthesis layer's output (car, 512 px: the 4x4 const input, ``b4.conv1``, then ``conv0``
  and ``conv1`` of every block 8..512: 16 maps, 6016 channels) is upsampled to the output size
  (``nn.Upsample(scale_factor, mode="nearest")`` to train and edit, ``"bilinear"``,
  ``align_corners=False``, for display) and concatenated: a ``[H, W, D]`` feature per pixel;
- each of the ``M`` ensemble members (10 for EditGAN) is a per-pixel MLP
  ``Linear(D, h1) -> ReLU -> BatchNorm1d -> Linear(h1, h2) -> ReLU -> BatchNorm1d -> Linear(h2, C)``
  with ``(h1, h2) = (128, 32)`` for fewer than 32 classes, else ``(256, 128)``; BatchNorm in eval
  mode (running statistics, ``eps = 1e-5``), applied as torch's CPU kernel does:
  ``x * a + (bias - mean * a)`` with ``a = scale / sqrt(var + eps)``;
- the segmentation is the argmax of the ensemble-mean logits; DatasetGAN scores a generated sample's
  reliability by the Jensen-Shannon uncertainty (:func:`uncertainty`).

**The memory-efficient branch** (:meth:`PixelClassifier.segment`). The first layer and the
upsampling are both linear, so ``W1 . concat_i(up(f_i)) = sum_i up(W1_i . f_i)`` with ``W1_i`` the
rows of the first-layer weight that read layout entry ``i``. The maps of one resolution are projected
together (one GEMM for all members: ``W1`` as ``[D, M * h1]``) at their own resolution, then
upsampled and summed; the ReLU / BatchNorm / Linear tail runs per pixel (vmapped over the members).
Projection alone does not save memory with 10 members (``M * h1`` = 2560 channels exceed the 64 and
128 of the 512 and 256 px maps), so the output is computed in tiles of ``tile_pixels`` output pixels
(a ``fori_loop`` writing each tile in place; each tile under ``jax.checkpoint``, so a gradient keeps
no per-tile activations): a tile reads only the rows of each map its pixels resample from (a window
found statically from the resampling taps). The ``[H, W, D]`` concatenation and the full-size
``[M, H, W, h1]`` hidden activation never exist: at 512 px for the car, XLA plans 0.15 GB of
temporaries (forward) against 11.7 GB for the reference's order
(``experiments/bench_segmenter.py``). Exact up to float rounding (the sum is taken in another
order) for both resampling modes and any output size: nearest (``floor(dst * in / out)``, torch's
legacy ``nearest``; an integer factor is a broadcast) and bilinear (torch's ``align_corners=False``
two-tap formula, clamped at the edges) are both per-axis gathers of at most two rows/columns.
:meth:`PixelClassifier.segment_naive` is the reference's order (concatenate, then the MLPs under one
vmap), for tests and benchmarks.

**The feature layout** (``PixelClassifierConfig.layout``): the ordered ``(name, channels)`` list
whose concatenation is the classifier's input; it fixes which rows of ``W1`` read which map.
EditGAN's is every synthesis layer's output, which jaxedit's StyleGAN2 ``synthesis(..., return_features=True)``
returns: ``G.cfg.feature_layout()``, or ``stylegan2.feature_layout(config_f_channels(512))`` for the released
car (names ``b4.const``, ``b4.conv1``, ``b{res}.conv0``, ``b{res}.conv1``; 16 maps, 6016 channels).

Pure interface: ``clf = PixelClassifier(cfg)``, ``params = clf.init(key)`` or ``clf, params =
load(path)``::

    clf(params, x)                                  # x [N, D] -> logits [M, N, C]
    clf.segment(params, feats, 512)                 # {name: [B, r, r, ch]} -> [M, B, 512, 512, C]
    clf.segment(params, feats, 512, ensemble_mean=True)   # [B, 512, 512, C] (what EditGAN's loss reads)
    uncertainty(logits)                             # the DatasetGAN quantities (dict)

The ensemble's parameters are stacked over members (leading axis ``M``) and every member runs under
one ``jax.vmap``. The parameter tree mirrors the torch names (``layers.<i>`` -> ``layers_<i>``):
``layers_{0,3,6}.kernel [M, in, out]`` / ``.bias [M, out]`` and ``layers_{2,5}.{scale, bias, mean,
var} [M, c]`` (``mean``/``var`` are ``nnx.BatchStat``: running statistics, never trained here).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError
from jaxedit.io import checkpoint
from jaxedit.nn.handle import ModelHandle, compiled

KIND = "pixel-classifier"
BN_EPS = 1e-5
INIT_STD = 0.02  # the reference's init_weights('normal', gain=0.02) on the Linear weights; biases 0
MODES = ("nearest", "bilinear")
TILE_PIXELS = 4096  # output pixels per tile of segment() (x M x h1 floats of hidden activation: 40 MB for the car)
HIGHEST = jax.lax.Precision.HIGHEST


def reference_widths(num_classes: int) -> tuple[int, int]:
    """The reference's hidden widths: ``(128, 32)`` below 32 classes, else ``(256, 128)``."""
    return (128, 32) if num_classes < 32 else (256, 128)


def config_f_channels(resolution: int) -> dict[int, int]:
    """StyleGAN2 config-f channels per block resolution 4..resolution: ``min(32768 // res, 512)``."""
    return {2 ** i: min(32768 // 2 ** i, 512) for i in range(2, int(math.log2(resolution)) + 1)}


@dataclasses.dataclass(frozen=True)
class PixelClassifierConfig(JSONConfig):
    """An ensemble of ``num_members`` per-pixel MLPs ``in_dim -> hidden[0] -> hidden[1] -> num_classes``.

    ``hidden`` empty means the reference's widths for ``num_classes`` (:func:`reference_widths`);
    ``layout`` empty means one entry ``("features", in_dim)`` (a pre-concatenated feature).
    """

    in_dim: int = 6016
    num_classes: int = 32
    num_members: int = 10
    hidden: tuple[int, ...] = ()
    layout: tuple[tuple[str, int], ...] = ()

    def __post_init__(self):
        for name in ("in_dim", "num_classes", "num_members"):
            v = getattr(self, name)
            if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or v < 1:
                raise InputError(f"PixelClassifierConfig: {name} must be a positive int, got {v!r}")
        hidden = tuple(self.hidden) or reference_widths(self.num_classes)
        if len(hidden) != 2 or not all(isinstance(h, (int, np.integer)) and h >= 1 for h in hidden):
            raise InputError(f"PixelClassifierConfig: hidden must be two positive widths, got {list(hidden)}")
        try:
            layout = tuple((str(n), int(c)) for n, c in (self.layout or (("features", self.in_dim),)))
        except (TypeError, ValueError):
            raise InputError(f"PixelClassifierConfig: layout must be a list of (name, channels) pairs, got "
                             f"{self.layout!r}") from None
        names = [n for n, _ in layout]
        if len(set(names)) != len(names) or min(c for _, c in layout) < 1:
            raise InputError(f"PixelClassifierConfig: layout names must be unique and channels positive, got "
                             f"{[list(e) for e in layout]}")
        if sum(c for _, c in layout) != self.in_dim:
            raise InputError(f"PixelClassifierConfig: layout channels sum to {sum(c for _, c in layout)}, in_dim "
                             f"is {self.in_dim}")
        object.__setattr__(self, "hidden", tuple(int(h) for h in hidden))
        object.__setattr__(self, "layout", layout)

    def offsets(self) -> dict[str, tuple[int, int]]:
        """Layout name -> ``(first, last + 1)`` rows of the first-layer weight that read it."""
        out, i = {}, 0
        for name, c in self.layout:
            out[name] = (i, i + c)
            i += c
        return out


# ------------------------------------------------------------------------------ module (structure, init)
class _Dense(nnx.Module):
    """``M`` stacked ``nn.Linear``: kernel ``[M, in, out]`` (the torch weight transposed), bias ``[M, out]``."""

    def __init__(self, m: int, din: int, dout: int, rngs: nnx.Rngs):
        self.kernel = nnx.Param(INIT_STD * jax.random.normal(rngs.params(), (m, din, dout)))
        self.bias = nnx.Param(jnp.zeros((m, dout)))


class _BatchNorm(nnx.Module):
    """``M`` stacked eval-mode ``BatchNorm1d`` (torch defaults: scale 1, bias 0, mean 0, var 1)."""

    def __init__(self, m: int, c: int):
        self.scale = nnx.Param(jnp.ones((m, c)))
        self.bias = nnx.Param(jnp.zeros((m, c)))
        self.mean = nnx.BatchStat(jnp.zeros((m, c)))
        self.var = nnx.BatchStat(jnp.ones((m, c)))


class PixelMLPEnsemble(nnx.Module):
    """The parameter structure; the math is in the pure per-member functions below (vmapped over ``M``)."""

    def __init__(self, cfg: PixelClassifierConfig, *, rngs: nnx.Rngs):
        m, (h1, h2) = cfg.num_members, cfg.hidden
        self.layers_0 = _Dense(m, cfg.in_dim, h1, rngs)
        self.layers_2 = _BatchNorm(m, h1)
        self.layers_3 = _Dense(m, h1, h2, rngs)
        self.layers_5 = _BatchNorm(m, h2)
        self.layers_6 = _Dense(m, h2, cfg.num_classes, rngs)


# ------------------------------------------------------------------------------ per-member math
def _dense(p: dict, x: jax.Array) -> jax.Array:
    return jnp.matmul(x, p["kernel"], precision=HIGHEST) + p["bias"]


def _batch_norm(p: dict, x: jax.Array) -> jax.Array:
    mean, var = jax.lax.stop_gradient(p["mean"]), jax.lax.stop_gradient(p["var"])
    alpha = p["scale"] * jax.lax.rsqrt(var + BN_EPS)
    return x * alpha + (p["bias"] - mean * alpha)


def _tail(p: dict, h: jax.Array) -> jax.Array:
    """One member after its first Linear: ``h`` = ``x W1 + b1`` ``[..., h1]`` -> logits ``[..., C]``."""
    h = _batch_norm(p["layers_2"], jax.nn.relu(h))
    h = _batch_norm(p["layers_5"], jax.nn.relu(_dense(p["layers_3"], h)))
    return _dense(p["layers_6"], h)


def _member(p: dict, x: jax.Array) -> jax.Array:
    return _tail(p, _dense(p["layers_0"], x))


def _batch_norm_train(p: dict, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    """Training-mode ``BatchNorm1d`` over the rows of ``x [N, c]``: normalized by the batch's mean and biased
    variance; -> (output, ``{'mean', 'var'}`` with the unbiased variance, what torch's running stats average)."""
    mean, var = jnp.mean(x, axis=0), jnp.var(x, axis=0)
    y = (x - mean) * jax.lax.rsqrt(var + BN_EPS) * p["scale"] + p["bias"]
    n = x.shape[0]
    return y, {"mean": jax.lax.stop_gradient(mean), "var": jax.lax.stop_gradient(var * n / max(n - 1, 1))}


def _member_train(p: dict, x: jax.Array) -> tuple[jax.Array, dict]:
    h, s2 = _batch_norm_train(p["layers_2"], jax.nn.relu(_dense(p["layers_0"], x)))
    h, s5 = _batch_norm_train(p["layers_5"], jax.nn.relu(_dense(p["layers_3"], h)))
    return _dense(p["layers_6"], h), {"layers_2": s2, "layers_5": s5}


def train_logits(params: dict, x: jax.Array) -> tuple[jax.Array, dict]:
    """The ensemble in training mode (BatchNorm on batch statistics, as the reference trains): ``x [M, N, D]``
    (each member its own ``N`` pixels) -> (logits ``[M, N, C]``, batch statistics ``{layers_i: {mean, var}
    [M, c]}`` for :func:`update_running_stats`)."""
    return jax.vmap(_member_train)(params, x)


def update_running_stats(params: dict, stats: dict, momentum: float = 0.1) -> dict:
    """torch's running statistics: ``running = (1 - momentum) running + momentum batch`` for each BatchNorm."""
    out = dict(params)
    for name, st in stats.items():
        out[name] = {**params[name], **{k: (1 - momentum) * params[name][k] + momentum * v for k, v in st.items()}}
    return out


def _ensemble(params: dict, x: jax.Array) -> jax.Array:
    """``x [..., D]`` -> ``[M, ..., C]``: every member under one vmap over the stacked parameters."""
    return jax.vmap(_member, in_axes=(0, None))(params, x)


# ------------------------------------------------------------------------------ resampling taps
def resample_taps(n_in: int, n_out: int, mode: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per output index along one axis: source indices ``i0, i1`` and weight ``lam`` (``out = (1 - lam)
    in[i0] + lam in[i1]``), as torch's ``F.interpolate`` computes them with the output size given (equal
    to EditGAN's ``scale_factor = out / in`` for integer ratios):

    - ``nearest``: ``i0 = i1 = min(floor(o * in / out), in - 1)``, ``lam = 0``;
    - ``bilinear`` (``align_corners=False``): source ``max((o + 0.5) * in / out - 0.5, 0)``, ``i0`` its
      floor, ``i1 = min(i0 + 1, in - 1)``, ``lam`` the fraction.
    """
    o = np.arange(n_out, dtype=np.float64)
    if mode == "nearest":
        i0 = np.minimum(np.floor(o * (n_in / n_out)).astype(np.int64), n_in - 1)
        return i0, i0, np.zeros(n_out, np.float32)
    src = np.maximum((o + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0).astype(np.float32)


def _repeat_factor(i0: np.ndarray, lam: np.ndarray, n_in: int) -> int | None:
    """``s`` when taps are plain repetition (``i0 == repeat(arange(n_in), s)``, no blending: nearest
    up-sampling by an integer factor, or the identity), else None."""
    if np.any(lam) or len(i0) % n_in:
        return None
    s = len(i0) // n_in
    return s if np.array_equal(i0, np.repeat(np.arange(n_in), s)) else None


def _repeat(x: jax.Array, s: int, axis: int) -> jax.Array:
    """Each index of ``axis`` ``s`` times, as a broadcast (fuses into its consumer; a gather is a copy)."""
    if s == 1:
        return x
    x = jnp.expand_dims(x, axis + 1)
    x = jnp.broadcast_to(x, (*x.shape[:axis + 1], s, *x.shape[axis + 2:]))
    return x.reshape(*x.shape[:axis], -1, *x.shape[axis + 2:])


def _resample(x: jax.Array, taps, axis: int) -> jax.Array:
    i0, i1, lam = taps
    s = _repeat_factor(i0, lam, x.shape[axis])
    if s is not None:
        return _repeat(x, s, axis)
    a = jnp.take(x, jnp.asarray(i0, jnp.int32), axis=axis)
    if not np.any(lam):  # nearest, or bilinear at an integer-aligned grid
        return a
    b = jnp.take(x, jnp.asarray(i1, jnp.int32), axis=axis)
    shape = [1] * x.ndim
    shape[axis] = -1
    lam = jnp.asarray(lam, x.dtype).reshape(shape)
    return (1 - lam) * a + lam * b


def resize(x: jax.Array, out_hw: tuple[int, int], mode: str = "nearest") -> jax.Array:
    """``[..., h, w, c]`` -> ``[..., H, W, c]`` with :func:`resample_taps` (rows, then columns)."""
    h, w = x.shape[-3:-1]
    x = _resample(x, resample_taps(h, out_hw[0], mode), x.ndim - 3)
    return _resample(x, resample_taps(w, out_hw[1], mode), x.ndim - 2)


def gather_features(feats: dict[str, jax.Array], layout, out_hw: tuple[int, int], b: jax.Array, y: jax.Array,
                    x: jax.Array, mode: str = "nearest") -> jax.Array:
    """The classifier's input at chosen output pixels only: ``feats {name: [B, h, w, ch]}``, pixel indices
    ``b, y, x`` (any equal shape ``S``) -> ``[*S, D]``, equal to the naive concatenation of the maps resampled
    to ``out_hw`` read at those pixels (the training stream: no map is resampled whole)."""
    parts = []
    for name, _ in layout:
        f = feats[name]
        ty, tx = resample_taps(f.shape[1], out_hw[0], mode), resample_taps(f.shape[2], out_hw[1], mode)

        def tap(t, i):
            return jnp.asarray(t[0], jnp.int32)[i], jnp.asarray(t[1], jnp.int32)[i], jnp.asarray(t[2])[i]

        (y0, y1, ly), (x0, x1, lx) = tap(ty, y), tap(tx, x)
        ly, lx = ly[..., None], lx[..., None]
        top = (1 - lx) * f[b, y0, x0] + lx * f[b, y0, x1]
        bottom = (1 - lx) * f[b, y1, x0] + lx * f[b, y1, x1]
        parts.append((1 - ly) * top + ly * bottom)
    return jnp.concatenate(parts, axis=-1)


def tile_rows(out_h: int, out_w: int, tile_pixels: int | None) -> int:
    """The rows per tile: the largest divisor of ``out_h`` with ``rows * out_w <= tile_pixels`` (at least
    one row); ``None`` is one tile."""
    if tile_pixels is None:
        return out_h
    best = 1
    for t in range(1, out_h + 1):
        if out_h % t == 0 and t * out_w <= tile_pixels:
            best = t
    return best


def _row_windows(n_in: int, out_h: int, rows: int, mode: str):
    """For each of the ``out_h // rows`` tiles: the first source row of its window (``[n_tiles]``), the
    window length ``K`` (static, the same for every tile) and the tile's taps relative to the window
    (``i0, i1 [n_tiles, rows]``, ``lam [n_tiles, rows]``)."""
    i0, i1, lam = resample_taps(n_in, out_h, mode)
    n = out_h // rows
    i0, i1, lam = i0.reshape(n, rows), i1.reshape(n, rows), lam.reshape(n, rows)
    lo, hi = i0.min(axis=1), i1.max(axis=1)
    k = int((hi - lo).max()) + 1
    start = np.minimum(lo, n_in - k)
    return start.astype(np.int32), k, ((i0 - start[:, None]).astype(np.int32),
                                       (i1 - start[:, None]).astype(np.int32), lam)


# ------------------------------------------------------------------------------ uncertainty (DatasetGAN)
def uncertainty(logits: jax.Array) -> dict[str, jax.Array]:
    """DatasetGAN's ensemble quantities from per-member logits ``[M, ..., C]`` (``train_interpreter.py``):

    - ``ensemble_mean_logits`` ``[..., C]`` and its argmax ``ensemble_argmax`` (EditGAN's segmentation);
    - ``per_model_argmax`` ``[M, ...]`` and ``majority_vote`` (``torch.mode`` over members: the most
      frequent label, the smallest among ties);
    - ``per_model_entropy`` ``[M, ...]`` (``Categorical(logits=...).entropy()``), ``mean_softmax``
      ``[..., C]`` (the members' softmax averaged), ``full_entropy`` (``Categorical(probs=mean_softmax)``:
      probabilities clamped to ``[eps, 1 - eps]`` inside the log, as torch does), and ``js`` = full
      entropy - mean per-model entropy (the Jensen-Shannon divergence of the members).

    :func:`top_fraction_mean` of ``js`` over an image's pixels is DatasetGAN's sample score.
    """
    logits = jnp.asarray(logits)
    if logits.ndim < 2 or not jnp.issubdtype(logits.dtype, jnp.floating):
        raise InputError(f"uncertainty: logits must be float [M, ..., C], got {logits.dtype} {list(logits.shape)}")
    return _uncertainty(logits)


@jax.jit
def _uncertainty(logits: jax.Array) -> dict[str, jax.Array]:
    c = logits.shape[-1]
    logp = jax.nn.log_softmax(logits, axis=-1)
    p = jnp.exp(logp)
    per_model_entropy = -jnp.sum(p * logp, axis=-1)
    mean_softmax = jnp.mean(p, axis=0)
    q = mean_softmax / jnp.sum(mean_softmax, axis=-1, keepdims=True)
    eps = jnp.finfo(q.dtype).eps
    full_entropy = -jnp.sum(q * jnp.log(jnp.clip(q, eps, 1 - eps)), axis=-1)
    mean_logits = jnp.mean(logits, axis=0)
    per_model_argmax = jnp.argmax(logits, axis=-1)
    votes = jnp.sum(jax.nn.one_hot(per_model_argmax, c, dtype=jnp.int32), axis=0)
    return {"ensemble_mean_logits": mean_logits, "ensemble_argmax": jnp.argmax(mean_logits, axis=-1),
            "per_model_argmax": per_model_argmax, "majority_vote": jnp.argmax(votes, axis=-1),
            "per_model_entropy": per_model_entropy, "mean_softmax": mean_softmax, "full_entropy": full_entropy,
            "js": full_entropy - jnp.mean(per_model_entropy, axis=0)}


def top_fraction_mean(x: jax.Array, num_axes: int | None = None, fraction: float = 0.1) -> jax.Array:
    """The mean of the largest ``int(N * fraction)`` values over the last ``num_axes`` axes (all by
    default; ``N`` their size): DatasetGAN's ``js.sort()[0][-int(N / 10):].mean()``. As there, when
    ``int(N * fraction)`` is 0 the slice ``[-0:]`` is the whole array: the mean of all values."""
    x = jnp.asarray(x)
    num_axes = x.ndim if num_axes is None else num_axes
    if not 0 <= num_axes <= x.ndim or x.ndim == 0:
        raise InputError(f"top_fraction_mean: num_axes {num_axes} for an array of shape {list(x.shape)}")
    flat = x.reshape(*x.shape[:x.ndim - num_axes], -1)
    n = flat.shape[-1]
    k = int(n * fraction) or n
    return jnp.mean(jax.lax.top_k(flat, k)[0], axis=-1)


# ------------------------------------------------------------------------------ handle
Params = dict[str, Any]


@dataclasses.dataclass(frozen=True)
class PixelClassifier(ModelHandle):
    """Hashable handle: pure functions of ``params`` for one :class:`PixelClassifierConfig` (module doc)."""

    cfg: PixelClassifierConfig = PixelClassifierConfig()
    module = PixelMLPEnsemble

    # -------------------------------------------------------------------------- checks
    def _check_features(self, x: jax.Array) -> None:
        d = self.cfg.in_dim
        if getattr(x, "ndim", 0) < 1 or x.shape[-1] != d or not jnp.issubdtype(x.dtype, jnp.floating):
            raise InputError(f"PixelClassifier: features must be float [..., {d}], got "
                             f"{getattr(x, 'dtype', type(x).__name__)} {list(getattr(x, 'shape', ()))}")

    def _maps(self, feats: dict[str, jax.Array], out_size, mode: str) -> tuple[dict, tuple[int, int]]:
        if mode not in MODES:
            raise InputError(f"segment: mode must be one of {MODES}, got {mode!r}")
        hw = (out_size, out_size) if isinstance(out_size, (int, np.integer)) else tuple(out_size)
        if len(hw) != 2 or not all(isinstance(s, (int, np.integer)) and s >= 1 for s in hw):
            raise InputError(f"segment: out_size must be a positive int or (H, W), got {out_size!r}")
        if not isinstance(feats, dict):
            raise InputError(f"segment: features must be a dict {{name: [B, h, w, ch]}}, got {type(feats).__name__}")
        missing = [n for n, _ in self.cfg.layout if n not in feats]
        if missing:
            raise InputError(f"segment: features lack {missing[:4]}{' ...' if len(missing) > 4 else ''} of the "
                             f"classifier's layout (given: {sorted(feats)[:6]})")
        batch = None
        for name, ch in self.cfg.layout:
            f = feats[name]
            if (getattr(f, "ndim", 0) != 4 or f.shape[-1] != ch or not jnp.issubdtype(f.dtype, jnp.floating)
                    or (batch is not None and f.shape[0] != batch)):
                raise InputError(f"segment: feature {name!r} must be float [B, h, w, {ch}]"
                                 f"{'' if batch is None else f' with B = {batch}'}, got "
                                 f"{getattr(f, 'dtype', type(f).__name__)} {list(getattr(f, 'shape', ()))}")
            batch = f.shape[0]
        return {n: feats[n] for n, _ in self.cfg.layout}, (int(hw[0]), int(hw[1]))

    # -------------------------------------------------------------------------- public methods
    def __call__(self, params: Params, features: jax.Array) -> jax.Array:
        """Per-pixel features ``[..., D]`` (``[N, D]`` in the reference) -> logits ``[M, ..., C]``."""
        self._check_features(features)
        return self._logits(params, features)

    def segment(self, params: Params, feats: dict[str, jax.Array], out_size: int | tuple[int, int],
                mode: str = "nearest", ensemble_mean: bool = False, tile_pixels: int | None = TILE_PIXELS):
        """Generator feature maps ``{name: [B, h, w, ch]}`` (the layout's names; extra keys are ignored)
        -> logits ``[M, B, H, W, C]`` at ``out_size`` (``int`` or ``(H, W)``), or their member mean
        ``[B, H, W, C]`` with ``ensemble_mean``. Projection at each map's own resolution, then
        ``mode`` resampling ("nearest": EditGAN's training and editing; "bilinear": its display), in
        tiles of about ``tile_pixels`` output pixels (``None``: one tile). See the module doc."""
        maps, hw = self._maps(feats, out_size, mode)
        return self._segment(params, maps, hw, mode, bool(ensemble_mean), tile_pixels)

    def segment_naive(self, params: Params, feats: dict[str, jax.Array], out_size: int | tuple[int, int],
                      mode: str = "nearest", ensemble_mean: bool = False):
        """As :meth:`segment`, in the reference's order: every map resampled to the output size and
        concatenated (``[B, H, W, D]``), then the MLPs. For tests and benchmarks."""
        maps, hw = self._maps(feats, out_size, mode)
        return self._segment_naive(params, maps, hw, mode, bool(ensemble_mean))

    # -------------------------------------------------------------------------- compiled bodies
    @compiled()
    def _logits(self, params: Params, x: jax.Array) -> jax.Array:
        return _ensemble(params, x)

    @compiled("hw", "mode", "ensemble_mean")
    def _segment_naive(self, params: Params, maps: dict, hw: tuple[int, int], mode: str, ensemble_mean: bool):
        x = jnp.concatenate([resize(maps[n], hw, mode) for n, _ in self.cfg.layout], axis=-1)
        out = _ensemble(params, x)
        return out.mean(axis=0) if ensemble_mean else out

    @compiled("hw", "mode", "ensemble_mean", "tile_pixels")
    def _segment(self, params: Params, maps: dict, hw: tuple[int, int], mode: str, ensemble_mean: bool,
                 tile_pixels: int | None):
        out_h, out_w = hw
        rows = tile_rows(out_h, out_w, tile_pixels)
        n_tiles = out_h // rows
        offsets = self.cfg.offsets()
        groups: dict[tuple[int, int], list[str]] = {}  # maps of one size share their resampling
        for name, _ in self.cfg.layout:
            groups.setdefault(tuple(maps[name].shape[1:3]), []).append(name)
        plan = []
        for (h, w), names in groups.items():
            start, k, (i0, i1, lam) = _row_windows(h, out_h, rows, mode)
            # every tile reads its window's rows the same way: nearest by an integer factor is a broadcast
            same = all(np.array_equal(a[0], a[j]) for a in (i0, i1, lam) for j in range(n_tiles))
            row_repeat = _repeat_factor(i0[0], lam[0], k) if same else None
            spans = [offsets[n] for n in names]
            contiguous = all(b == a2 for (_, b), (a2, _) in itertools.pairwise(spans))
            plan.append((names, spans, contiguous, start, k, row_repeat, (i0, i1, lam),
                         resample_taps(w, out_w, mode)))

        m, _, h1 = params["layers_0"]["kernel"].shape
        # The first layer of all members as one GEMM per group (the members share its input): W1 as
        # [D, M * h1], rows of a layout entry contiguous; transposed once, outside the tile loop.
        w1 = jnp.moveaxis(params["layers_0"]["kernel"], 0, 1).reshape(-1, m * h1)

        def tile(t: jax.Array) -> jax.Array:
            """Output rows ``[t * rows, (t + 1) * rows)`` -> logits ``[M, B, rows, W, C]`` (or their mean)."""
            acc = None
            for names, spans, contiguous, start, k, row_repeat, (i0, i1, lam), col_taps in plan:
                s = jnp.asarray(start)[t]
                wins = [jax.lax.dynamic_slice_in_dim(maps[n], s, k, axis=1) for n in names]  # [B, k, w, ch]
                win = wins[0] if len(wins) == 1 else jnp.concatenate(wins, axis=-1)
                rows_w1 = (w1[spans[0][0]:spans[-1][1]] if contiguous
                           else jnp.concatenate([w1[a:b] for a, b in spans], axis=0))
                proj = jnp.matmul(win, rows_w1, precision=HIGHEST)  # [B, k, w, M * h1]: the group at its size
                if row_repeat is not None:
                    proj = _repeat(proj, row_repeat, 1)
                else:
                    proj = _resample_dynamic(proj, (jnp.asarray(i0)[t], jnp.asarray(i1)[t], jnp.asarray(lam)[t]),
                                             bool(lam.any()))
                up = _resample(proj, col_taps, 2)
                acc = up if acc is None else acc + up
            acc = acc.reshape(*acc.shape[:-1], m, h1) + params["layers_0"]["bias"]  # [B, rows, W, M, h1]
            out = jax.vmap(_tail, in_axes=(0, 3))(params, acc)  # [M, B, rows, W, C]
            return out.mean(axis=0) if ensemble_mean else out

        tile = jax.checkpoint(tile)
        if n_tiles == 1:
            return tile(jnp.int32(0))
        axis = 1 if ensemble_mean else 2  # the rows axis of the output
        one = jax.eval_shape(tile, jnp.int32(0))
        out = jnp.zeros((*one.shape[:axis], out_h, *one.shape[axis + 1:]), one.dtype)

        def body(t, out):  # each tile written in place (a stacked lax.map result would need a transposed copy)
            return jax.lax.dynamic_update_slice_in_dim(out, tile(t), t * rows, axis=axis)

        return jax.lax.fori_loop(0, n_tiles, body, out)


def _resample_dynamic(x: jax.Array, taps, blend: bool) -> jax.Array:
    """Rows (axis 1 of ``[B, k, w, c]``) with traced taps ``(i0, i1, lam)`` of one tile."""
    i0, i1, lam = taps
    a = jnp.take(x, i0, axis=1)
    if not blend:
        return a
    b = jnp.take(x, i1, axis=1)
    lam = lam.astype(x.dtype)[None, :, None, None]
    return (1 - lam) * a + lam * b


def load(path) -> tuple[PixelClassifier, Params]:
    """A ``kind="pixel-classifier"`` checkpoint (``converters/pixel_classifier.py``) -> ``(handle, params)``."""
    return checkpoint.load_handle(path, KIND, lambda cfg: PixelClassifier(PixelClassifierConfig.from_dict(cfg)))
