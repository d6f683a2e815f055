"""The FID Inception network (the TF "inception-2015-12-05" graph as pytorch-fid ports it) in Flax NNX:
images -> the 2048-d pool3 features that FID and KID compare.

Structure (torchvision's ``inception_v3`` layout with pytorch-fid's FID patches), NHWC here. Every
conv is a ``BasicConv2d``: conv without bias -> inference BatchNorm (``eps = 0.001``) -> ReLU.

- stem: ``Conv2d_1a_3x3`` (3->32, stride 2, no padding), ``Conv2d_2a_3x3`` (32->32, no padding),
  ``Conv2d_2b_3x3`` (32->64, padding 1), max pool 3x3 stride 2 [block 0 ends: 73x73x64 at 299 px],
  ``Conv2d_3b_1x1`` (64->80), ``Conv2d_4a_3x3`` (80->192, no padding), max pool 3x3 stride 2
  [block 1 ends: 35x35x192];
- ``Mixed_5b/5c/5d`` (InceptionA; pool branch width 32, 64, 64), ``Mixed_6a`` (InceptionB, stride 2),
  ``Mixed_6b..6e`` (InceptionC; 7x7 branch width 128, 160, 160, 192) [block 2 ends: 17x17x768],
  ``Mixed_7a`` (InceptionD, stride 2), ``Mixed_7b`` (InceptionE), ``Mixed_7c`` (InceptionE), the mean
  over positions -> pool3 ``[B, 2048]`` (8x8 maps at 299 px).
- the FID patches: the pool branch of every InceptionA/C and of ``Mixed_7b`` is a 3x3 average pool
  (stride 1, padding 1) that does NOT count the padded zeros (TF's; torchvision counts them); in
  ``Mixed_7c`` it is a 3x3 max pool (stride 1, padding 1) instead.
- input: pytorch-fid takes images in [0, 1], resizes them to 299x299 with torch's bilinear
  interpolation (``align_corners=False``, no antialiasing; skipped here when the input is 299x299 already,
  where torch's is the identity) and maps them to [-1, 1] with ``2x - 1``. Here images are the house
  [-1, 1]; other sizes go through ``(x + 1) / 2`` -> the same resize -> ``2x - 1``.

Stride-1 convs with padding are "same" convs (padding ``(kh // 2, kw // 2)``, 1x7 / 7x1 / 1x3 / 3x1
included), 1x1 convs are matmuls; the others (stride 2 or no padding) are plain VALID convolutions.
The logits layer ``fc`` (1008 classes) is not part of the FID features and is not kept.

The parameter tree mirrors the torch names: ``Mixed_6b.branch7x7_2.conv.weight`` [O, I, kh, kw] ->
``params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"]`` HWIO, ``...bn.{weight, bias, running_mean,
running_var}`` -> ``["bn"]["scale" | "bias" | "mean" | "var"]``.

Pure interface: ``net = FIDInception()``, ``net, params = load(path)``; images ``[B, H, W, 3]`` float32
in [-1, 1] (H, W >= 75 without resizing; any size is resized to ``cfg.input_size`` by default)::

    net(params, images)          # pool3 [B, 2048]
    net.blocks(params, images)   # (block0, block1, block2, pool3): pytorch-fid's output_blocks 0-3
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from jaxedit.config import JSONConfig
from jaxedit.errors import InputError
from jaxedit.io import checkpoint
from jaxedit.models.irse import BatchNorm
from jaxedit.nn import ops
from jaxedit.nn.handle import ModelHandle, compiled

KIND = "fid-inception"
BN_EPS = 1e-3
FEATURES = 2048

# name: (in, out, kh, kw, stride, padded); padded stride-1 convs are 'same', the rest VALID.
STEM = {
    "Conv2d_1a_3x3": (3, 32, 3, 3, 2, False),
    "Conv2d_2a_3x3": (32, 32, 3, 3, 1, False),
    "Conv2d_2b_3x3": (32, 64, 3, 3, 1, True),
    "Conv2d_3b_1x1": (64, 80, 1, 1, 1, False),
    "Conv2d_4a_3x3": (80, 192, 3, 3, 1, False),
}


def _block_a(cin: int, pool: int) -> dict:
    return {"branch1x1": (cin, 64, 1, 1, 1, False), "branch5x5_1": (cin, 48, 1, 1, 1, False),
            "branch5x5_2": (48, 64, 5, 5, 1, True), "branch3x3dbl_1": (cin, 64, 1, 1, 1, False),
            "branch3x3dbl_2": (64, 96, 3, 3, 1, True), "branch3x3dbl_3": (96, 96, 3, 3, 1, True),
            "branch_pool": (cin, pool, 1, 1, 1, False)}


def _block_b(cin: int) -> dict:
    return {"branch3x3": (cin, 384, 3, 3, 2, False), "branch3x3dbl_1": (cin, 64, 1, 1, 1, False),
            "branch3x3dbl_2": (64, 96, 3, 3, 1, True), "branch3x3dbl_3": (96, 96, 3, 3, 2, False)}


def _block_c(cin: int, c7: int) -> dict:
    return {"branch1x1": (cin, 192, 1, 1, 1, False), "branch7x7_1": (cin, c7, 1, 1, 1, False),
            "branch7x7_2": (c7, c7, 1, 7, 1, True), "branch7x7_3": (c7, 192, 7, 1, 1, True),
            "branch7x7dbl_1": (cin, c7, 1, 1, 1, False), "branch7x7dbl_2": (c7, c7, 7, 1, 1, True),
            "branch7x7dbl_3": (c7, c7, 1, 7, 1, True), "branch7x7dbl_4": (c7, c7, 7, 1, 1, True),
            "branch7x7dbl_5": (c7, 192, 1, 7, 1, True), "branch_pool": (cin, 192, 1, 1, 1, False)}


def _block_d(cin: int) -> dict:
    return {"branch3x3_1": (cin, 192, 1, 1, 1, False), "branch3x3_2": (192, 320, 3, 3, 2, False),
            "branch7x7x3_1": (cin, 192, 1, 1, 1, False), "branch7x7x3_2": (192, 192, 1, 7, 1, True),
            "branch7x7x3_3": (192, 192, 7, 1, 1, True), "branch7x7x3_4": (192, 192, 3, 3, 2, False)}


def _block_e(cin: int) -> dict:
    return {"branch1x1": (cin, 320, 1, 1, 1, False), "branch3x3_1": (cin, 384, 1, 1, 1, False),
            "branch3x3_2a": (384, 384, 1, 3, 1, True), "branch3x3_2b": (384, 384, 3, 1, 1, True),
            "branch3x3dbl_1": (cin, 448, 1, 1, 1, False), "branch3x3dbl_2": (448, 384, 3, 3, 1, True),
            "branch3x3dbl_3a": (384, 384, 1, 3, 1, True), "branch3x3dbl_3b": (384, 384, 3, 1, 1, True),
            "branch_pool": (cin, 192, 1, 1, 1, False)}


# name: (block type, conv table); "E" pools by average, "E_max" by max (Mixed_7c).
MIXED = {
    "Mixed_5b": ("A", _block_a(192, 32)), "Mixed_5c": ("A", _block_a(256, 64)), "Mixed_5d": ("A", _block_a(288, 64)),
    "Mixed_6a": ("B", _block_b(288)),
    "Mixed_6b": ("C", _block_c(768, 128)), "Mixed_6c": ("C", _block_c(768, 160)),
    "Mixed_6d": ("C", _block_c(768, 160)), "Mixed_6e": ("C", _block_c(768, 192)),
    "Mixed_7a": ("D", _block_d(768)), "Mixed_7b": ("E", _block_e(1280)), "Mixed_7c": ("E_max", _block_e(2048)),
}


def conv_table() -> dict[str, tuple[int, int, int, int, int, bool]]:
    """Every BasicConv2d: ``{torch prefix: (in, out, kh, kw, stride, padded)}`` (``Mixed_5b.branch1x1``, ...)."""
    out = dict(STEM)
    for block, (_, convs) in MIXED.items():
        out.update({f"{block}.{name}": spec for name, spec in convs.items()})
    return out


@dataclasses.dataclass(frozen=True)
class FIDInceptionConfig(JSONConfig):
    """``input_size``: the side images are resized to when they have another size (299, pytorch-fid's)."""

    input_size: int = 299

    def __post_init__(self):
        if not isinstance(self.input_size, int) or self.input_size < 75:
            raise InputError(f"FIDInceptionConfig: input_size must be an int >= 75, got {self.input_size!r}")


# ------------------------------------------------------------------------------ layers
def _conv(x: jax.Array, w: jax.Array, stride: int, padded: bool) -> jax.Array:
    """One BasicConv2d's convolution. 'same' convs on maps under 3 pixels a side or 36 pixels are one matmul
    of the shifted copies (im2col), where XLA:CPU's conv is pathological (:func:`jaxedit.models.lpips._conv3x3`;
    at 299 px the smallest maps are 8x8, where both took the same time here: 3x3 448->384 at batch 16
    97 vs 93 ms, 1x3 384->384 24 vs 30 ms; on 17x17 1x7 / 7x1 and 35x35 the conv is 2-6x faster)."""
    kh, kw = w.shape[:2]
    if (kh, kw) == (1, 1) and stride == 1:
        return jnp.einsum("bhwi,io->bhwo", x, w[0, 0])
    if padded and stride == 1:
        h, wd = x.shape[1:3]
        if min(h, wd) > 2 and h * wd > 36:
            return ops.conv2d(x, w)
        xp = jnp.pad(x, ((0, 0), (kh // 2, kh // 2), (kw // 2, kw // 2), (0, 0)))
        cols = jnp.concatenate([xp[:, dy:dy + h, dx:dx + wd] for dy in range(kh) for dx in range(kw)], axis=-1)
        return cols @ w.reshape(-1, w.shape[-1])
    return jax.lax.conv_general_dilated(x, w, (stride, stride), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))


def max_pool(x: jax.Array, stride: int, padded: bool = False) -> jax.Array:
    """3x3 max pool: ``MaxPool2d(3, stride)`` (no padding, floor), or with padding 1 (-inf borders)."""
    pad = ((0, 0), (1, 1), (1, 1), (0, 0)) if padded else "VALID"
    return jax.lax.reduce_window(x, -jnp.inf, jax.lax.max, (1, 3, 3, 1), (1, stride, stride, 1), pad)


def avg_pool_exclude_pad(x: jax.Array) -> jax.Array:
    """3x3 average pool, stride 1, padding 1, ``count_include_pad=False``: the window sum over the
    in-image pixels divided by their count (9 inside, 6 on edges, 4 in corners)."""
    h, w = x.shape[1:3]
    s = jax.lax.reduce_window(x, 0.0, jax.lax.add, (1, 3, 3, 1), (1, 1, 1, 1), ((0, 0), (1, 1), (1, 1), (0, 0)))
    edge = lambda n: np.minimum(np.arange(n) + 1, n - 1) - np.maximum(np.arange(n) - 1, 0) + 1
    count = np.outer(edge(h), edge(w)).astype(np.float32)
    return s / jnp.asarray(count)[None, :, :, None]


class BasicConv(nnx.Module):
    """torchvision ``BasicConv2d``: conv (no bias) -> BatchNorm (eps 0.001, running statistics) -> ReLU."""

    def __init__(self, spec: tuple[int, int, int, int, int, bool], rngs: nnx.Rngs):
        cin, cout, kh, kw, self.stride, self.padded = spec
        std = (2.0 / (kh * kw * cin)) ** 0.5
        self.conv = _Kernel(std * jax.random.normal(rngs.params(), (kh, kw, cin, cout)))
        self.bn = BatchNorm(cout)

    def __call__(self, x: jax.Array) -> jax.Array:
        bn = self.bn
        alpha = bn.scale[...] * jax.lax.rsqrt(bn.var[...] + BN_EPS)
        y = _conv(x, self.conv.kernel[...], self.stride, self.padded)
        return jax.nn.relu(y * alpha + (bn.bias[...] - bn.mean[...] * alpha))


class _Kernel(nnx.Module):
    def __init__(self, kernel: jax.Array):
        self.kernel = nnx.Param(kernel)


class Mixed(nnx.Module):
    """One Inception block (A, B, C, D, E; see the module doc), its branches concatenated on channels in
    torchvision's order."""

    def __init__(self, kind: str, convs: dict, rngs: nnx.Rngs):
        self.kind = kind
        for name, spec in convs.items():
            setattr(self, name, BasicConv(spec, rngs))

    def _chain(self, x: jax.Array, *names: str) -> jax.Array:
        for n in names:
            x = getattr(self, n)(x)
        return x

    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kind
        if k == "A":
            out = [self.branch1x1(x), self._chain(x, "branch5x5_1", "branch5x5_2"),
                   self._chain(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                   self.branch_pool(avg_pool_exclude_pad(x))]
        elif k == "B":
            out = [self.branch3x3(x), self._chain(x, "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"),
                   max_pool(x, 2)]
        elif k == "C":
            out = [self.branch1x1(x), self._chain(x, "branch7x7_1", "branch7x7_2", "branch7x7_3"),
                   self._chain(x, *(f"branch7x7dbl_{i}" for i in range(1, 6))),
                   self.branch_pool(avg_pool_exclude_pad(x))]
        elif k == "D":
            out = [self._chain(x, "branch3x3_1", "branch3x3_2"),
                   self._chain(x, *(f"branch7x7x3_{i}" for i in range(1, 5))), max_pool(x, 2)]
        else:  # E: 1x3 and 3x1 splits concatenated inside their branches
            b3 = self.branch3x3_1(x)
            d3 = self._chain(x, "branch3x3dbl_1", "branch3x3dbl_2")
            pooled = max_pool(x, 1, padded=True) if k == "E_max" else avg_pool_exclude_pad(x)
            out = [self.branch1x1(x), self.branch3x3_2a(b3), self.branch3x3_2b(b3),
                   self.branch3x3dbl_3a(d3), self.branch3x3dbl_3b(d3), self.branch_pool(pooled)]
        return jnp.concatenate(out, axis=-1)


class InceptionNet(nnx.Module):
    def __init__(self, cfg: FIDInceptionConfig, *, rngs: nnx.Rngs):
        for name, spec in STEM.items():
            setattr(self, name, BasicConv(spec, rngs))
        for name, (kind, convs) in MIXED.items():
            setattr(self, name, Mixed(kind, convs, rngs))

    def blocks(self, x: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
        """Network input [B, H, W, 3] in [-1, 1] -> pytorch-fid's blocks 0-3 (block 3 = pool3 [B, 2048])."""
        x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
        b0 = max_pool(x, 2)
        b1 = max_pool(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(b0)), 2)
        x = b1
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = getattr(self, name)(x)
        b2 = x
        for name in ("Mixed_7a", "Mixed_7b", "Mixed_7c"):
            x = getattr(self, name)(x)
        return b0, b1, b2, jnp.mean(x, axis=(1, 2))


def bilinear_taps(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """torch's bilinear taps along one axis (``align_corners=False``, output size given), in float32 as its CPU
    kernel computes them: source ``max((o + 0.5) * (n_in / n_out) - 0.5, 0)``, ``i0`` its floor, ``i1 = min(i0 + 1,
    n_in - 1)``, ``lam`` the fraction; ``out = (1 - lam) in[i0] + lam in[i1]``."""
    f = np.float32
    src = np.maximum(f(n_in / n_out) * (np.arange(n_out, dtype=f) + f(0.5)) - f(0.5), f(0))
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    return i0, np.minimum(i0 + 1, n_in - 1), (src - i0.astype(f)).astype(f)


def resize_bilinear(x: jax.Array, size: tuple[int, int]) -> jax.Array:
    """``[B, h, w, C]`` -> ``[B, H, W, C]`` as torch ``F.interpolate(mode="bilinear", align_corners=False)``
    (no antialiasing): two taps per axis, columns first, then rows, as torch's CPU kernel groups them
    (``(1 - a) (...)_row0 + a (...)_row1``); gathers and a multiply-add, whatever the input size."""
    h, w = x.shape[1:3]
    if (h, w) == tuple(size):
        return x
    for axis, (n_in, n_out) in ((2, (w, size[1])), (1, (h, size[0]))):
        i0, i1, lam = bilinear_taps(n_in, n_out)
        shape = [1, 1, 1, 1]
        shape[axis] = n_out
        lam = jnp.asarray(lam).reshape(shape)
        x = (1 - lam) * jnp.take(x, jnp.asarray(i0), axis=axis) + lam * jnp.take(x, jnp.asarray(i1), axis=axis)
    return x


@dataclasses.dataclass(frozen=True)
class FIDInception(ModelHandle):
    """Hashable handle: pure functions of ``params`` (see the module doc)."""

    cfg: FIDInceptionConfig = FIDInceptionConfig()
    module = InceptionNet

    def _check(self, images: jax.Array, resize: bool) -> None:
        ok = (getattr(images, "ndim", 0) == 4 and images.shape[-1] == 3 and jnp.issubdtype(images.dtype, jnp.floating)
              and min(images.shape[1:3]) >= (1 if resize else 75))
        if not ok:
            raise InputError(f"FIDInception: images must be float [B, H, W, 3] in [-1, 1]"
                             f"{'' if resize else ' with H, W >= 75'}, got {getattr(images, 'dtype', type(images).__name__)} "
                             f"{list(getattr(images, 'shape', ()))}")

    def __call__(self, params: dict, images: jax.Array, resize: bool = True) -> jax.Array:
        """pool3 features ``[B, 2048]`` of images ``[B, H, W, 3]`` in [-1, 1]; with ``resize`` (pytorch-fid's
        default) images of another size than ``cfg.input_size`` are resized to it first."""
        self._check(images, resize)
        return self._blocks(params, images, resize)[3]

    def blocks(self, params: dict, images: jax.Array, resize: bool = True) -> tuple[jax.Array, ...]:
        """pytorch-fid's four output blocks: maxpool1 ``[B, 73, 73, 64]``, maxpool2 ``[B, 35, 35, 192]``,
        Mixed_6e ``[B, 17, 17, 768]`` and pool3 ``[B, 2048]`` (sizes at 299 px)."""
        self._check(images, resize)
        return self._blocks(params, images, resize)

    def network_input(self, images: jax.Array, resize: bool = True) -> jax.Array:
        """[-1, 1] images -> what the first conv sees: resized as pytorch-fid does (in [0, 1]) when needed."""
        s = self.cfg.input_size
        if not resize or images.shape[1:3] == (s, s):
            return images
        return 2 * resize_bilinear((images + 1) / 2, (s, s)) - 1

    @compiled("resize")
    def _blocks(self, params: dict, images: jax.Array, resize: bool) -> tuple[jax.Array, ...]:
        with jax.default_matmul_precision("highest"):  # no bf16 / tf32 passes on accelerators (CPU: no-op)
            return self.model(params).blocks(self.network_input(images.astype(jnp.float32), resize))


def load(path) -> tuple[FIDInception, dict]:
    """A ``kind="fid-inception"`` checkpoint (``converters/fid_inception.py``) -> ``(FIDInception, params)``."""
    return checkpoint.load_handle(path, KIND, lambda cfg: FIDInception(FIDInceptionConfig.from_dict(cfg)))
