"""pytorch-fid's FID Inception weights -> jaxedit params (no torch needed).

The source is the state dict ``pt_inception-2015-12-05-6726825d.pth`` (the TF FID graph ported by
pytorch-fid; torchvision ``inception_v3`` names with the FIDInceptionA/C/E blocks), read with the
hardened :func:`jaxedit.io.torchfile.load`. Per ``BasicConv2d`` prefix ``P`` (``Conv2d_1a_3x3``,
``Mixed_6b.branch7x7_2``, ...; the table is :func:`jaxedit.models.inception.conv_table`):
``P.conv.weight`` ``[O, I, kh, kw]`` -> HWIO, ``P.bn.{weight, bias, running_mean, running_var}`` ``[O]``;
``P.bn.num_batches_tracked`` (an int counter) and the classifier ``fc.weight`` ``[1008, 2048]`` /
``fc.bias`` ``[1008]`` (not part of the pool3 features) are checked and dropped. Every tensor must be
there with its shape; floats of any precision (the fp16 test file included) become float32. Every
wrong key, shape or dtype is a one-line :class:`ConversionError` naming the file and the key.

``convert(path)`` -> ``(FIDInceptionConfig, params, info)``; write it with::

    checkpoint.save(dst, kind="fid-inception", model=cfg.to_dict(), params=params, source=info)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.io.files import sha256
from jaxedit.errors import FormatError
from jaxedit.io import checkpoint, torchfile
from jaxedit.models.inception import (
    FEATURES,
    KIND,
    FIDInception,
    FIDInceptionConfig,
    conv_table,
)

CONVERTER_VERSION = "fid-inception-1"
FLOAT_DTYPES = ("float16", "bfloat16", "float32", "float64")
BN_PARTS = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
FC = {"fc.weight": (1008, FEATURES), "fc.bias": (1008,)}


class ConversionError(FormatError):
    """The source cannot be converted; the message names the file and the key."""


def _float32(a: Any, name: str, key: str, shape: tuple[int, ...]) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise ConversionError(f"{name}: {torchfile.describe(key)} is {torchfile.describe(a)}, not a tensor")
    if a.dtype.name not in FLOAT_DTYPES:
        raise ConversionError(f"{name}: tensor {torchfile.describe(key)} has dtype {a.dtype.name}, expected a float "
                              f"({', '.join(FLOAT_DTYPES)})")
    if a.shape != shape:
        raise ConversionError(f"{name}: tensor {torchfile.describe(key)} has shape {list(a.shape)}, expected "
                              f"{list(shape)}")
    out = np.array(a, np.float32, order="C")  # a copy (also detaches it from the file's memory map)
    if not np.all(np.isfinite(out)):
        raise ConversionError(f"{name}: tensor {torchfile.describe(key)} holds non-finite values")
    return out


def _nested_set(tree: dict, path: list[str], value: np.ndarray) -> None:
    for p in path[:-1]:
        tree = tree.setdefault(p, {})
    tree[path[-1]] = value


def params_from_state_dict(sd: dict[str, Any], name: str) -> tuple[dict, list[str]]:
    """The torch state dict -> ``(params, dropped keys)``; ``name`` (the file's) prefixes every error."""
    if not isinstance(sd, dict) or not all(isinstance(k, str) for k in sd):
        top = sorted(map(torchfile.describe, sd))[:8] if isinstance(sd, dict) else torchfile.describe(sd)
        raise ConversionError(f"{name}: not a state dict of tensors (the FID Inception weights); top level: {top}")
    expected: dict[str, tuple[tuple[int, ...], list[str] | None]] = {}
    for prefix, (cin, cout, kh, kw, _, _) in conv_table().items():
        path = prefix.split(".")
        expected[f"{prefix}.conv.weight"] = ((cout, cin, kh, kw), path + ["conv", "kernel"])
        for part, leaf in BN_PARTS.items():
            expected[f"{prefix}.bn.{part}"] = ((cout,), path + ["bn", leaf])
    for key, shape in FC.items():
        expected[key] = (shape, None)
    counters = {f"{prefix}.bn.num_batches_tracked" for prefix in conv_table()}
    unexpected = [k for k in sd if k not in expected and k not in counters]
    if unexpected:
        hint = (" (torchvision's inception_v3 has AuxLogits; pytorch-fid's FID weights do not)"
                if any(k.startswith("AuxLogits.") for k in unexpected) else "")
        raise ConversionError(f"{name}: unexpected tensor {torchfile.describe(min(unexpected))} in the FID "
                              f"Inception state dict{hint}")
    params: dict = {}
    for key, (shape, path) in expected.items():
        if key not in sd:
            raise ConversionError(f"{name}: missing tensor {torchfile.describe(key)} (not pytorch-fid's FID Inception "
                                  "weights pt_inception-2015-12-05)")
        a = _float32(sd[key], name, key, shape)
        if path is None:
            continue
        _nested_set(params, path, np.ascontiguousarray(a.transpose(2, 3, 1, 0)) if a.ndim == 4 else a)
    for key in counters & set(sd):
        a = sd[key]
        if not isinstance(a, np.ndarray) or a.shape != () or a.dtype.kind not in "iu":
            raise ConversionError(f"{name}: {torchfile.describe(key)} is {torchfile.describe(a)}, expected an int "
                                  "counter")
    bad_var = next((k for k in expected if k.endswith("running_var") and np.any(np.asarray(sd[k]) < 0)), None)
    if bad_var:
        raise ConversionError(f"{name}: tensor {torchfile.describe(bad_var)} holds negative variances")
    return params, sorted(set(FC) | (counters & set(sd)))


def convert(path: str | Path) -> tuple[FIDInceptionConfig, dict, dict[str, Any]]:
    """Read the FID Inception state dict -> ``(config, params, info)``; ``info`` is the provenance
    (``source=`` of :func:`jaxedit.io.checkpoint.save`, with ``kind="fid-inception"``)."""
    path = Path(path)
    sd = torchfile.load(path)  # TorchFileError (a FormatError) names the file
    params, dropped = params_from_state_dict(sd, path.name)
    cfg = FIDInceptionConfig()
    checkpoint.check_tree(FIDInception(cfg).param_shapes(), params, path.name)
    info = {"file": path.name, "sha256": sha256(path), "converter": CONVERTER_VERSION, "kind": KIND,
            "fp16_tensors": int(sum(getattr(a, "dtype", None) is not None and a.dtype.name in ("float16", "bfloat16")
                                    for a in sd.values())),
            "dropped": [k for k in dropped if not k.endswith("num_batches_tracked")],
            "dropped_counters": sum(k.endswith("num_batches_tracked") for k in dropped)}
    return cfg, params, info
