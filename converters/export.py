"""jaxedit StyleGAN2 checkpoints -> PyTorch-world files, written without torch.

- ``rosinality``: a ``torch.save``-compatible zip (``archive/data.pkl``: a protocol-2 pickle
  whose tensors are ``torch._utils._rebuild_tensor_v2`` over persistent-id storages,
  ``archive/data/N``: each storage's raw little-endian bytes, 64-byte aligned,
  ``archive/byteorder``, ``archive/version``) holding ``{'g_ema': state dict, 'latent_avg'}`` for a
  generator or ``{'d': state dict}`` for a discriminator, in rosinality/stylegan2-pytorch's names
  and layouts; ``torch.load(..., weights_only=True)`` opens it (only allow-listed globals).
- ``safetensors``: the NVIDIA (stylegan2-ada-pytorch) state dict, every buffer included, torch
  layout; the jaxedit config rides in the metadata (``jaxedit.kind``, ``jaxedit.model``), so
  :func:`load_safetensors` rebuilds the model.

Files are written atomically and never replace an existing file unless ``force``.
"""

from __future__ import annotations

import json
import math
import struct
import zipfile
from pathlib import Path
from typing import Any

import jax
import numpy as np
from safetensors.numpy import load_file as st_load_file
from safetensors.numpy import save_file as st_save_file

from jaxedit.converters import stylegan2 as sg2_converter
from jaxedit.errors import InputError
from jaxedit.io.checkpoint import check_tree
from jaxedit.io import files
from jaxedit.io.files import atomic_path
from jaxedit.models import stylegan2
from jaxedit.models.stylegan2 import Discriminator, DiscriminatorConfig, StyleGAN2, StyleGAN2Config
from jaxedit.models.stylegan2 import discriminator as d_lib
from jaxedit.models.stylegan2 import params as layout

FORMATS = ("rosinality", "safetensors")


class ExportError(InputError):
    """The model cannot be written in the requested format, or not to that path; the message says why."""


# --------------------------------------------------------------------------- NVIDIA state dict


def _c(a: Any) -> np.ndarray:
    """A C-contiguous float32 copy that keeps 0-d arrays 0-d (``np.ascontiguousarray`` makes them 1-d)."""
    return np.array(a, np.float32, order="C")


def to_torch(name: str, a: np.ndarray) -> np.ndarray:
    """One tensor, jaxedit layout -> torch layout (the inverse of ``params.to_jax``)."""
    a = np.asarray(a, np.float32)
    if name == layout.CONST:
        return _c(a.transpose(2, 0, 1))
    if a.ndim == 4:
        return _c(a.transpose(3, 2, 0, 1))
    if a.ndim == 2 and name.endswith(".weight"):
        return _c(a.T)
    return _c(a)


def _flat(params: dict) -> dict[str, np.ndarray]:
    return {".".join(str(getattr(k, "key", k)) for k in path): np.asarray(v)
            for path, v in jax.tree_util.tree_leaves_with_path(params)}


def nvidia_state_dict(model: StyleGAN2 | Discriminator, params: dict) -> dict[str, np.ndarray]:
    """params -> the NVIDIA state dict (names, torch layout, float32), ``resample_filter`` buffers included
    where stylegan2-ada-pytorch registers them (blocks and their resampling-capable convs)."""
    sd = {name: to_torch(name, a) for name, a in _flat(params).items()}
    fir = layout.STANDARD_FILTER.copy()
    if isinstance(model, StyleGAN2):
        for r in model.cfg.resolutions:
            sd[f"synthesis.b{r}.{layout.FIR_BUFFER}"] = fir
            for conv in ("conv0", "conv1", "skip"):
                if f"synthesis.b{r}.{conv}.weight" in sd:
                    sd[f"synthesis.b{r}.{conv}.{layout.FIR_BUFFER}"] = fir
    else:
        for r in model.cfg.block_resolutions:
            sd[f"b{r}.{layout.FIR_BUFFER}"] = fir
            for conv in ("fromrgb", "conv0", "conv1", "skip"):
                if f"b{r}.{conv}.weight" in sd:
                    sd[f"b{r}.{conv}.{layout.FIR_BUFFER}"] = fir
        sd[f"b4.conv.{layout.FIR_BUFFER}"] = fir
    return dict(sorted(sd.items()))


# ------------------------------------------------------------------------------ rosinality


def _check_clamp(conv_clamp, drop_clamp: bool, what: str) -> None:
    if conv_clamp is not None and not drop_clamp:
        raise ExportError(f"{what} clamps conv outputs at {conv_clamp:g}, which rosinality's code has no place for; "
                          "pass --drop-clamp to write it anyway (identical while activations stay below the clamp)")


def rosinality_generator(cfg: StyleGAN2Config, params: dict, *, drop_clamp: bool = False
                         ) -> dict[str, np.ndarray]:
    """Generator params -> rosinality's ``Generator`` state dict (``style.*``, ``conv1``, ``convs.*``, ``to_rgb*``,
    ``noises.*``, blur / upsample kernels); conv weights are ``[1, O, I, k, k]`` and unscaled by 1/sqrt(fan_in)."""
    problems = [p for p, bad in (
        ("a conditional generator", cfg.c_dim > 0),
        (f"the {cfg.architecture!r} architecture", cfg.architecture != "skip"),
        (f"z_dim {cfg.z_dim} != w_dim {cfg.w_dim}", cfg.z_dim != cfg.w_dim),
        (f"{cfg.img_channels} image channels", cfg.img_channels != 3),
        (f"mapping lr multiplier {cfg.mapping_lr_mul:g} (rosinality's lr_mlp is 0.01)", cfg.mapping_lr_mul != 0.01),
        ("mapping hidden width != w_dim", cfg.layer_features not in (None, cfg.w_dim))) if bad]
    if problems:
        raise ExportError(f"rosinality's Generator cannot hold this model: {', '.join(problems)}")
    _check_clamp(cfg.conv_clamp, drop_clamp, "this generator")
    mp, syn = params["mapping"], params["synthesis"]
    f32 = _c
    sd: dict[str, np.ndarray] = {}
    for i in range(cfg.mapping_layers):
        sd[f"style.{i + 1}.weight"] = f32(np.asarray(mp[f"fc{i}"]["weight"]).T)
        sd[f"style.{i + 1}.bias"] = f32(mp[f"fc{i}"]["bias"])
    sd["input.input"] = f32(np.asarray(syn["b4"]["const"]).transpose(2, 0, 1)[None])

    def modulation(prefix, p):
        sd[f"{prefix}.conv.modulation.weight"] = f32(np.asarray(p["affine"]["weight"]).T)
        sd[f"{prefix}.conv.modulation.bias"] = f32(p["affine"]["bias"])

    def modconv(prefix, p, up):
        w = np.asarray(p["weight"], np.float32).transpose(3, 2, 0, 1)  # [O, I, k, k]
        # rosinality scales by 1/sqrt(fan_in) at run time (the converter divides it out again); correctly rounded
        sd[f"{prefix}.conv.weight"] = f32(w[None].astype(np.float64) * math.sqrt(w.shape[1] * w.shape[2] * w.shape[3]))
        if up:
            sd[f"{prefix}.conv.blur.kernel"] = 4 * layout.STANDARD_FILTER
        modulation(prefix, p)
        sd[f"{prefix}.noise.weight"] = f32(np.reshape(p["noise_strength"], (1,)))
        sd[f"{prefix}.activate.bias"] = f32(p["bias"])

    def torgb(prefix, p, up):
        sd[f"{prefix}.bias"] = f32(np.reshape(p["bias"], (1, -1, 1, 1)))
        if up:
            sd[f"{prefix}.upsample.kernel"] = 4 * layout.STANDARD_FILTER
        sd[f"{prefix}.conv.weight"] = f32(np.asarray(p["weight"]).transpose(3, 2, 0, 1)[None])
        modulation(prefix, p)

    modconv("conv1", syn["b4"]["conv1"], False)
    torgb("to_rgb1", syn["b4"]["torgb"], False)
    noises = [syn["b4"]["conv1"]["noise_const"]]
    for i, r in enumerate(cfg.resolutions[1:]):
        modconv(f"convs.{2 * i}", syn[f"b{r}"]["conv0"], True)
        modconv(f"convs.{2 * i + 1}", syn[f"b{r}"]["conv1"], False)
        noises += [syn[f"b{r}"]["conv0"]["noise_const"], syn[f"b{r}"]["conv1"]["noise_const"]]
    for i, r in enumerate(cfg.resolutions[1:]):
        torgb(f"to_rgbs.{i}", syn[f"b{r}"]["torgb"], True)
    for i, n in enumerate(noises):
        sd[f"noises.noise_{i}"] = f32(np.asarray(n)[None, None])
    return sd


def rosinality_discriminator(cfg: DiscriminatorConfig, params: dict, *, drop_clamp: bool = False
                             ) -> dict[str, np.ndarray]:
    """Discriminator params -> rosinality's ``Discriminator`` state dict (names:
    ``converters.stylegan2.rosinality_d_names``; Blur kernels included)."""
    problems = [p for p, bad in (
        ("a conditional discriminator", cfg.c_dim > 0),
        (f"the {cfg.architecture!r} architecture", cfg.architecture != "resnet"),
        (f"minibatch-stddev {cfg.mbstd_group_size} x {cfg.mbstd_num_channels} (rosinality: 4 x 1)",
         (cfg.mbstd_group_size, cfg.mbstd_num_channels) != (4, 1))) if bad]
    if problems:
        raise ExportError(f"rosinality's Discriminator cannot hold this model: {', '.join(problems)}")
    _check_clamp(cfg.conv_clamp, drop_clamp, "this discriminator")
    nv = _flat(params)
    sd = {ros: to_torch(nvn, nv[nvn]) for ros, nvn in sg2_converter.rosinality_d_names(cfg.img_resolution)}
    for k in range(1, len(cfg.block_resolutions) + 1):
        sd[f"convs.{k}.conv2.0.kernel"] = layout.STANDARD_FILTER.copy()
        sd[f"convs.{k}.skip.0.kernel"] = layout.STANDARD_FILTER.copy()
    return sd


# ---------------------------------------------------------------------- torch.save zip writer


def _str(s: str) -> bytes:
    b = s.encode("utf-8")
    return b"X" + struct.pack("<I", len(b)) + b


def _int(n: int) -> bytes:
    if 0 <= n < 256:
        return b"K" + bytes([n])
    if 0 <= n < 65536:
        return b"M" + struct.pack("<H", n)
    if -2 ** 31 <= n < 2 ** 31:
        return b"J" + struct.pack("<i", n)
    b = n.to_bytes((n.bit_length() + 8) // 8, "little", signed=True)
    return b"\x8a" + bytes([len(b)]) + b


def _tuple(items: list[bytes]) -> bytes:
    return b"(" + b"".join(items) + b"t" if items else b")"


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _pickle_tree(obj: Any, storages: list[np.ndarray]) -> bytes:
    """A dict-of-dicts-of-arrays as protocol-2 pickle opcodes; arrays become torch float32 tensors whose
    storages (appended to ``storages``) are persistent ids ``('storage', FloatStorage, key, 'cpu', numel)``."""
    if isinstance(obj, dict):
        if not obj:
            return b"}"
        return b"}(" + b"".join(_str(k) + _pickle_tree(v, storages) for k, v in obj.items()) + b"u"
    a = _c(np.asarray(obj, np.float32))
    key = str(len(storages))
    storages.append(a)
    stride = [int(np.prod(a.shape[i + 1:], dtype=np.int64)) for i in range(a.ndim)]
    pid = _tuple([_str("storage"), _global("torch", "FloatStorage"), _str(key), _str("cpu"), _int(a.size)])
    args = _tuple([pid + b"Q", _int(0), _tuple([_int(int(s)) for s in a.shape]), _tuple([_int(s) for s in stride]),
                   b"\x89", _global("collections", "OrderedDict") + b")R"])
    return _global("torch._utils", "_rebuild_tensor_v2") + args + b"R"


def _write_member(zf: zipfile.ZipFile, name: str, data: bytes, align: int = 64) -> None:
    """A stored (uncompressed) member whose data starts at a multiple of ``align`` (as torch writes them)."""
    info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
    info.compress_type = zipfile.ZIP_STORED
    offset = zf.fp.tell() + 30 + len(name.encode()) + 4
    pad = -offset % align
    info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
    zf.writestr(info, data)


def write_torch_zip(path: str | Path, obj: dict) -> None:
    """``torch.save(obj, path)`` for a nested dict of str -> float32 arrays (torch's zip format, no torch)."""
    storages: list[np.ndarray] = []
    pkl = b"\x80\x02" + _pickle_tree(obj, storages) + b"."
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        _write_member(zf, "archive/data.pkl", pkl)
        _write_member(zf, "archive/byteorder", b"little")
        for i, a in enumerate(storages):
            _write_member(zf, f"archive/data/{i}", a.astype("<f4").tobytes())
        _write_member(zf, "archive/version", b"3\n")


# ------------------------------------------------------------------------------------ export


def export(model: StyleGAN2 | Discriminator, params: dict, out: str | Path, fmt: str, *, force: bool = False,
           drop_clamp: bool = False) -> Path:
    """Write ``model``'s ``params`` to ``out`` as ``fmt`` (one of :data:`FORMATS`), atomically; returns the path."""
    out = Path(out)
    if fmt not in FORMATS:
        raise ExportError(f"format {fmt!r} is not one of {FORMATS}")
    if not isinstance(model, (StyleGAN2, Discriminator)):
        raise ExportError(f"only StyleGAN2 generators and discriminators export, not a {type(model).__name__}")
    if out.is_dir():
        raise ExportError(f"{out} is a folder; give a file name")
    if out.exists() and not force:
        raise ExportError(f"{out} already exists; pass --force to replace it")
    if out.exists() and not files.wrote(out):
        raise ExportError(f"{out} exists and jaxedit did not write it (or it changed since); --force replaces only "
                          "files jaxedit wrote: move it away first")
    params = jax.tree.map(np.asarray, params)
    generator = isinstance(model, StyleGAN2)
    if fmt == "safetensors":
        kind = stylegan2.KIND if generator else d_lib.KIND
        meta = {"format": "pt", "jaxedit.kind": kind, "jaxedit.model": json.dumps(model.cfg.to_dict(), sort_keys=True)}
        tensors = nvidia_state_dict(model, params)
        with atomic_path(out) as tmp:
            st_save_file(tensors, str(tmp), metadata=meta)
        return out
    if generator:
        obj = {"g_ema": rosinality_generator(model.cfg, params, drop_clamp=drop_clamp),
               "latent_avg": np.asarray(params["mapping"]["w_avg"], np.float32)}
    else:
        obj = {"d": rosinality_discriminator(model.cfg, params, drop_clamp=drop_clamp)}
    with atomic_path(out) as tmp:
        write_torch_zip(tmp, obj)
    return out


SAFETENSORS_MAX_HEADER = 100_000_000  # the safetensors library's own limit


def load_safetensors(path: str | Path) -> tuple[StyleGAN2 | Discriminator, dict]:
    """A file written by :func:`export` as safetensors -> ``(model, params)`` (config from its metadata)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > SAFETENSORS_MAX_HEADER:
                raise ExportError(f"{path}: a safetensors header of {n} bytes (at most {SAFETENSORS_MAX_HEADER})")
            header = json.loads(f.read(n))
        meta = header.get("__metadata__") if isinstance(header, dict) else None
        meta = meta if isinstance(meta, dict) else {}
        kind, model_cfg = meta.get("jaxedit.kind"), json.loads(meta.get("jaxedit.model", "null"))
    except (OSError, struct.error, ValueError, RecursionError, TypeError) as e:  # TypeError: a non-string model
        if isinstance(e, ExportError):
            raise
        raise ExportError(f"{path}: not a readable safetensors file ({type(e).__name__}: {e})") from None
    if kind in (stylegan2.KIND, d_lib.KIND) and not isinstance(model_cfg, dict):
        raise ExportError(f"{path}: metadata jaxedit.model is not a model config")
    if kind == stylegan2.KIND:
        model = StyleGAN2(StyleGAN2Config.from_dict(model_cfg))
    elif kind == d_lib.KIND:
        model = Discriminator(DiscriminatorConfig.from_dict(model_cfg))
    else:
        raise ExportError(f"{path}: no jaxedit model in the metadata (jaxedit.kind {kind!r})")
    params = layout.from_state_dict(st_load_file(str(path)), path.name)
    check_tree(model.param_shapes(), params, str(path))
    return model, params
