"""LPIPS v0.1 (VGG) weights -> jaxedit params (no torch needed).

Two sources, both read with the hardened :func:`jaxedit.io.torchfile.load`:

- the backbone: torchvision's VGG16 state dict (``vgg16-397923af.pth``; ``features.{i}.weight``
  ``[O, I, 3, 3]`` and ``features.{i}.bias`` ``[O]``; the ``classifier.*`` tensors of the full
  file are dropped). The block layout is read from the conv indices (a conv and its ReLU take
  two indices, the max pool ending a block a third: gaps of 2 within a block, 3 across) and the
  widths from the shapes, each conv's input width checked against the previous output;
- the LPIPS linear layers (the released ``weights/v0.1/vgg.pth``, a legacy ``torch.save``
  stream): ``lin{l}.model.1.weight`` ``[1, C_l, 1, 1]``, one per block, ``C_l`` = the width of
  block l.

Floating leaves of any precision (the fp16 test backbone included) become float32. Every
wrong key, shape or dtype is a one-line :class:`ConversionError` naming the file and the key.

``convert(vgg_path, lin_path)`` -> ``(LPIPSConfig, params, info)``; write it with::

    checkpoint.save(dst, kind="lpips", model=cfg.to_dict(), params=params, source=info)
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.io.files import sha256
from jaxedit.errors import FormatError
from jaxedit.io import checkpoint, torchfile
from jaxedit.models.lpips import LPIPS, LPIPSConfig

CONVERTER_VERSION = "lpips-1"
FEATURE_KEY = re.compile(r"^features\.(\d+)\.(weight|bias)$")
DROPPED_KEY = re.compile(r"^classifier\.\d+\.(weight|bias)$")  # torchvision's full VGG16 file
LIN_KEY = re.compile(r"^lin(\d+)\.model\.1\.weight$")
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")


class ConversionError(FormatError):
    """The source cannot be converted; the message names the file and the key."""


def _state_dict(path: Path, what: str) -> dict[str, np.ndarray]:
    obj = torchfile.load(path)  # TorchFileError (a FormatError) names the file
    if isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
        return dict(obj)
    top = sorted(map(torchfile.describe, obj))[:8] if isinstance(obj, dict) else torchfile.describe(obj)
    raise ConversionError(f"{path.name}: not a state dict of tensors ({what}); top level: {top}")


def float32_tensor(a: np.ndarray, name: str, key: str, error: type[FormatError] | None = None) -> np.ndarray:
    """A float tensor of file ``name`` as a float32 copy; other dtypes or non-finite values raise ``error``
    (default this module's :class:`ConversionError`) naming the file and the key. Shared by the converters of
    plain state dicts."""
    error = error or ConversionError
    if a.dtype.name not in FLOAT_DTYPES:
        raise error(f"{name}: tensor {torchfile.describe(key)} has dtype {a.dtype.name}, expected a float "
                              f"({', '.join(FLOAT_DTYPES)})")
    out = np.array(a, np.float32, order="C")  # a copy (also detaches it from the file's memory map)
    if not np.all(np.isfinite(out)):
        raise error(f"{name}: tensor {torchfile.describe(key)} holds non-finite values")
    return out


def backbone(sd: dict[str, np.ndarray], name: str) -> tuple[list[list[tuple[int, np.ndarray, np.ndarray]]], list[str]]:
    """A torchvision VGG state dict -> ``(blocks of (index, weight OIHW, bias), dropped keys)``."""
    convs: dict[int, dict[str, np.ndarray]] = {}
    dropped = []
    for key, a in sd.items():
        m = FEATURE_KEY.match(key)
        if m:
            conv = convs.setdefault(int(m.group(1)), {})
            if m.group(2) in conv:
                raise ConversionError(f"{name}: tensor {torchfile.describe(key)} duplicates conv {int(m.group(1))}")
            conv[m.group(2)] = float32_tensor(a, name, key)
        elif DROPPED_KEY.match(key):
            dropped.append(key)
        else:
            hint = " (is this the LPIPS lin file? pass the VGG backbone first)" if LIN_KEY.match(key) else ""
            raise ConversionError(f"{name}: unexpected tensor {torchfile.describe(key)} in a torchvision VGG state "
                                  f"dict (expected features.N.weight / features.N.bias){hint}")
    if not convs:
        raise ConversionError(f"{name}: no features.N.weight tensors (not a torchvision VGG state dict)")
    blocks: list[list[tuple[int, np.ndarray, np.ndarray]]] = []
    prev_index, prev_width = None, 3
    for i in sorted(convs):
        key = f"features.{i}"
        for part in ("weight", "bias"):
            if part not in convs[i]:
                raise ConversionError(f"{name}: missing tensor '{key}.{part}'")
        w, b = convs[i]["weight"], convs[i]["bias"]
        if w.ndim != 4 or w.shape[2:] != (3, 3):
            raise ConversionError(f"{name}: tensor '{key}.weight' has shape {list(w.shape)}, expected a 3x3 conv "
                                  "weight [O, I, 3, 3]")
        if w.shape[1] != prev_width:
            raise ConversionError(f"{name}: tensor '{key}.weight' has {w.shape[1]} input channels, the layer before "
                                  f"it gives {prev_width}")
        if b.shape != (w.shape[0],):
            raise ConversionError(f"{name}: tensor '{key}.bias' has shape {list(b.shape)}, expected [{w.shape[0]}]")
        gap = None if prev_index is None else i - prev_index
        if gap is None and i != 0 or gap not in (None, 2, 3):
            raise ConversionError(f"{name}: conv '{key}' does not fit the VGG layout (conv + ReLU per layer, a max "
                                  f"pool after each block: indices 0, 2, 5, 7, ...; previous conv at {prev_index})")
        if gap in (None, 3):
            blocks.append([])
        elif w.shape[0] != prev_width:
            raise ConversionError(f"{name}: conv '{key}' has {w.shape[0]} output channels inside a block of width "
                                  f"{prev_width}")
        blocks[-1].append((i, w, b))
        prev_index, prev_width = i, w.shape[0]
    return blocks, sorted(dropped)


def lin_layers(sd: dict[str, np.ndarray], name: str) -> list[np.ndarray]:
    """The LPIPS lin file -> the L weight vectors ``[C_l]`` (from ``lin{l}.model.1.weight`` [1, C_l, 1, 1])."""
    lins: dict[int, np.ndarray] = {}
    for key, a in sd.items():
        m = LIN_KEY.match(key)
        if not m:
            hint = " (is this the VGG backbone? pass the lin file second)" if FEATURE_KEY.match(key) else ""
            raise ConversionError(f"{name}: unexpected tensor {torchfile.describe(key)} in an LPIPS lin file "
                                  f"(expected lin{{l}}.model.1.weight){hint}")
        if a.ndim != 4 or a.shape[0] != 1 or a.shape[2:] != (1, 1):
            raise ConversionError(f"{name}: tensor {torchfile.describe(key)} has shape {list(a.shape)}, expected "
                                  "[1, C, 1, 1]")
        lins[int(m.group(1))] = float32_tensor(a, name, key).reshape(-1)
    if not lins:
        raise ConversionError(f"{name}: no lin{{l}}.model.1.weight tensors (not an LPIPS lin file)")
    missing = sorted(set(range(max(lins) + 1)) - set(lins))
    if missing:
        raise ConversionError(f"{name}: missing tensor 'lin{missing[0]}.model.1.weight'")
    return [lins[l] for l in range(len(lins))]


def convert(vgg_path: str | Path, lin_path: str | Path) -> tuple[LPIPSConfig, dict, dict[str, Any]]:
    """Read the VGG backbone and the LPIPS lin file -> ``(config, params, info)``; ``info`` is the provenance
    (``source=`` of :func:`jaxedit.io.checkpoint.save`, with ``kind="lpips"``)."""
    vgg_path, lin_path = Path(vgg_path), Path(lin_path)
    vgg_sd = _state_dict(vgg_path, "a torchvision VGG16 backbone")
    lin_sd = _state_dict(lin_path, "the LPIPS lin layers")
    blocks, dropped = backbone(vgg_sd, vgg_path.name)
    lins = lin_layers(lin_sd, lin_path.name)
    widths = [blk[-1][1].shape[0] for blk in blocks]
    if [len(v) for v in lins] != widths:
        raise ConversionError(f"{lin_path.name}: lin layers of widths {[len(v) for v in lins]} do not match the "
                              f"backbone {vgg_path.name} (block widths {widths})")
    cfg = LPIPSConfig(blocks=tuple(len(blk) for blk in blocks), widths=tuple(widths))
    params: dict = {}
    for blk in blocks:
        for i, w, b in blk:
            params[f"features_{i}"] = {"kernel": np.ascontiguousarray(w.transpose(2, 3, 1, 0)), "bias": b}  # HWIO
    for l, v in enumerate(lins):
        params[f"lin{l}"] = {"kernel": v}
    checkpoint.check_tree(LPIPS(cfg).param_shapes(), params, f"{vgg_path.name} + {lin_path.name}")
    info = {"file": vgg_path.name, "sha256": sha256(vgg_path), "lin_file": lin_path.name,
            "lin_sha256": sha256(lin_path), "converter": CONVERTER_VERSION, "version": "0.1",
            "backbone": "vgg16" if cfg == LPIPSConfig() else "vgg",
            "fp16_tensors": int(sum(a.dtype.name in ("float16", "bfloat16") for a in vgg_sd.values())),
            "dropped": dropped}
    return cfg, params, info
