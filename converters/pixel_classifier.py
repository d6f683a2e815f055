"""EditGAN / DatasetGAN pixel-classifier ensembles -> jaxedit params (no torch needed).

The released files (``datasetgan_pretrain/classifier/car_model_{i}.pth``, or
``car_model_iter{N}_number_{i}.pth``), one per ensemble member, read with the hardened
:func:`jaxedit.io.torchfile.load`: ``{'model_state_dict': state dict}`` saved from an
``nn.DataParallel`` wrapper, so the keys are ``module.layers.<i>.*`` (a bare state dict, and keys
without ``module.``, are accepted too). The ``nn.Sequential`` indices: 0, 3, 6 are the Linear layers
(``weight [out, in]``, ``bias [out]``), 2 and 5 the BatchNorm1d layers (``weight``, ``bias``,
``running_mean``, ``running_var`` ``[c]`` and an integer ``num_batches_tracked``, dropped; its value
per member is kept in the provenance), 1 and 4 the ReLUs (no tensors).

The structure comes from the tensor shapes (input width, the two hidden widths, the classes) and
every member must have the same; the members are stacked in the order given. The feature layout
(which generator maps the ``in_dim`` input columns read, :mod:`jaxedit.models.segmenter`) is not in
the files: ``layout=`` gives it; by default an ``in_dim`` equal to EditGAN's per-layer layout of a
config-f StyleGAN2 at some resolution (6016 for the released 512 px car) gets that layout, any other
one entry ``("features", in_dim)``.

Floating tensors of any precision become float32. Every wrong key, shape or dtype, or a member
that disagrees with the first, is a one-line :class:`ConversionError` naming the file and the key.

``convert(paths)`` -> ``(PixelClassifierConfig, params, info)``; write it with::

    checkpoint.save(dst, kind="pixel-classifier", model=cfg.to_dict(), params=params, source=info)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.converters.lpips import float32_tensor
from jaxedit.io.files import sha256
from jaxedit.errors import FormatError, InputError
from jaxedit.io import checkpoint, torchfile
from jaxedit.models.segmenter import (
    PixelClassifier,
    PixelClassifierConfig,
    config_f_channels,
    reference_widths,
)
from jaxedit.models.stylegan2 import feature_layout

CONVERTER_VERSION = "pixel-classifier-1"
KEY = re.compile(r"^(module\.)?layers\.(\d+)\.(weight|bias|running_mean|running_var|num_batches_tracked)$")
LINEAR, NORM = (0, 3, 6), (2, 5)
EXPECTED = {**{i: ("weight", "bias") for i in LINEAR},
            **{i: ("weight", "bias", "running_mean", "running_var", "num_batches_tracked") for i in NORM}}
INT_DTYPES = ("int64", "int32")


class ConversionError(FormatError):
    """The source cannot be converted; the message names the file and the key."""


def _state_dict(path: Path) -> dict[str, np.ndarray]:
    obj = torchfile.load(path)  # TorchFileError (a FormatError) names the file
    if isinstance(obj, dict) and set(obj) == {"model_state_dict"}:
        obj = obj["model_state_dict"]
    elif isinstance(obj, dict) and "model_state_dict" in obj:
        extra = ", ".join(sorted(map(torchfile.describe, set(obj) - {"model_state_dict"}))[:4])
        raise ConversionError(f"{path.name}: unexpected entries {extra} beside 'model_state_dict' (expected "
                              "{'model_state_dict': state dict})")
    if isinstance(obj, dict) and obj and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
        return dict(obj)
    top = ", ".join(sorted(map(torchfile.describe, obj))[:8]) if isinstance(obj, dict) else torchfile.describe(obj)
    raise ConversionError(f"{path.name}: not a pixel-classifier checkpoint ({{'model_state_dict': state dict}} "
                          f"of tensors); top level: {top}")


def _float32(a: np.ndarray, name: str, key: str) -> np.ndarray:
    return float32_tensor(a, name, key, ConversionError)


def member(sd: dict[str, np.ndarray], name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """One member's state dict -> ``(params without the member axis, facts)``; ``facts``: the widths
    ``(in_dim, h1, h2, classes)``, ``prefix`` (``'module.'`` or ``''``), ``num_batches_tracked`` and the
    original key of every parameter (for the messages)."""
    tensors: dict[tuple[int, str], tuple[str, np.ndarray]] = {}
    prefixes = set()
    for key, a in sd.items():
        m = KEY.match(key)
        if not m or int(m.group(2)) not in EXPECTED:
            raise ConversionError(f"{name}: unexpected tensor {torchfile.describe(key)} in a pixel classifier "
                                  "(expected [module.]layers.{0,3,6}.{weight,bias} and layers.{2,5}.{weight,bias,"
                                  "running_mean,running_var,num_batches_tracked})")
        i, part = int(m.group(2)), m.group(3)
        if part not in EXPECTED[i]:
            raise ConversionError(f"{name}: unexpected tensor {torchfile.describe(key)}: layer {i} is a "
                                  f"{'Linear' if i in LINEAR else 'BatchNorm1d'} ({', '.join(EXPECTED[i])})")
        if (i, part) in tensors:
            raise ConversionError(f"{name}: tensor {torchfile.describe(key)} duplicates "
                                  f"{torchfile.describe(tensors[i, part][0])}")
        tensors[i, part] = (key, a)
        prefixes.add(m.group(1) or "")
    if len(prefixes) > 1:
        plain = next(k for k, _ in tensors.values() if not k.startswith("module."))
        raise ConversionError(f"{name}: tensor {torchfile.describe(plain)} lacks the 'module.' prefix of the others")
    prefix = prefixes.pop() if prefixes else ""
    for i, parts in EXPECTED.items():
        for part in parts:
            if (i, part) not in tensors:
                raise ConversionError(f"{name}: missing tensor '{prefix}layers.{i}.{part}'")
    keys = {(i, p): k for (i, p), (k, _) in tensors.items()}

    def get(i: int, part: str, shape: tuple[int, ...], what: str) -> np.ndarray:
        key, a = tensors[i, part]
        if a.shape != shape:
            raise ConversionError(f"{name}: tensor {torchfile.describe(key)} has shape {list(a.shape)}, expected "
                                  f"{list(shape)} ({what})")
        return _float32(a, name, key)

    widths = []
    for i in LINEAR:
        key, w = tensors[i, "weight"]
        if w.ndim != 2 or min(w.shape) < 1:
            raise ConversionError(f"{name}: tensor {torchfile.describe(key)} has shape {list(w.shape)}, expected a "
                                  "Linear weight [out, in]")
        if widths and w.shape[1] != widths[-1]:
            raise ConversionError(f"{name}: tensor {torchfile.describe(key)} has {w.shape[1]} inputs, the layer "
                                  f"before it gives {widths[-1]}")
        widths += [w.shape[1]] if not widths else []
        widths.append(w.shape[0])
    params: dict[str, Any] = {}
    for i in LINEAR:
        din, dout = tensors[i, "weight"][1].shape[::-1]
        params[f"layers_{i}"] = {"kernel": get(i, "weight", (dout, din), "Linear weight").T.copy(),
                                 "bias": get(i, "bias", (dout,), f"the {dout} outputs of layer {i}")}
    tracked = []
    for i, c in zip(NORM, widths[1:3]):
        what = f"BatchNorm1d over the {c} outputs of layer {i - 2}"
        p = {"scale": get(i, "weight", (c,), what), "bias": get(i, "bias", (c,), what),
             "mean": get(i, "running_mean", (c,), what), "var": get(i, "running_var", (c,), what)}
        if np.any(p["var"] < 0):
            raise ConversionError(f"{name}: tensor {torchfile.describe(keys[i, 'running_var'])} holds negative "
                                  "variances")
        params[f"layers_{i}"] = p
        key, n = tensors[i, "num_batches_tracked"]
        if n.shape != () or n.dtype.name not in INT_DTYPES:
            raise ConversionError(f"{name}: tensor {torchfile.describe(key)} has dtype {n.dtype.name} shape "
                                  f"{list(n.shape)}, expected an integer scalar")
        tracked.append(int(n))
    return params, {"widths": tuple(int(w) for w in widths), "prefix": prefix, "num_batches_tracked": tracked,
                    "keys": keys}


def infer_layout(in_dim: int) -> tuple[tuple[tuple[str, int], ...] | None, str]:
    """EditGAN's per-layer layout of a config-f StyleGAN2 whose channels sum to ``in_dim`` (8..1024 px),
    else ``(None, "flat")``."""
    for k in range(3, 11):
        layout = feature_layout(config_f_channels(2 ** k))
        if sum(c for _, c in layout) == in_dim:
            return layout, f"editgan-config-f-{2 ** k}"
    return None, "flat"


def convert(paths: Sequence[str | Path], layout: Sequence[tuple[str, int]] | None = None
            ) -> tuple[PixelClassifierConfig, dict, dict[str, Any]]:
    """Read the members' files (in ensemble order) -> ``(config, params stacked over members, info)``;
    ``info`` is the provenance (``source=`` of :func:`jaxedit.io.checkpoint.save`, ``kind="pixel-classifier"``)."""
    paths = [Path(p) for p in (paths if isinstance(paths, (list, tuple)) else [paths])]
    if not paths:
        raise ConversionError("no pixel-classifier files given (one .pth per ensemble member)")
    seen: dict[Path, int] = {}
    for j, p in enumerate(paths):
        if p.resolve() in seen:
            raise ConversionError(f"{p.name}: given twice (members {seen[p.resolve()]} and {j})")
        seen[p.resolve()] = j
    members, facts = [], []
    for p in paths:
        params, f = member(_state_dict(p), p.name)
        if facts and f["widths"] != facts[0]["widths"]:
            for (i, part), key in sorted(f["keys"].items()):
                mine = tuple(_shape(params, i, part))
                first = tuple(_shape(members[0], i, part))
                if mine != first:
                    raise ConversionError(f"{p.name}: tensor {torchfile.describe(key)} has shape "
                                          f"{list(_torch(mine, part))}, the first member ({paths[0].name}) has "
                                          f"{list(_torch(first, part))}")
        members.append(params)
        facts.append(f)
    in_dim, h1, h2, classes = facts[0]["widths"]
    source = "given"
    if layout is None:
        layout, source = infer_layout(in_dim)
    try:
        cfg = PixelClassifierConfig(in_dim=in_dim, num_classes=classes, num_members=len(members), hidden=(h1, h2),
                                    layout=tuple(layout or ()))
    except InputError as e:
        raise ConversionError(f"{paths[0].name}: {e}") from None
    stacked = {layer: {k: np.stack([m[layer][k] for m in members]) for k in members[0][layer]} for layer in members[0]}
    checkpoint.check_tree(PixelClassifier(cfg).param_shapes(), stacked, " + ".join(p.name for p in paths))
    shas = [sha256(p) for p in paths]
    info = {"file": paths[0].name, "sha256": shas[0], "files": [p.name for p in paths], "sha256_files": shas,
            "converter": CONVERTER_VERSION, "layout": source, "reference_widths": (h1, h2) == reference_widths(classes),
            "module_prefix": [f["prefix"] == "module." for f in facts],
            "num_batches_tracked": [f["num_batches_tracked"] for f in facts]}
    return cfg, stacked, info


def _shape(params: dict, i: int, part: str) -> tuple[int, ...]:
    if i in LINEAR:
        return params[f"layers_{i}"]["kernel" if part == "weight" else "bias"].shape
    if part == "num_batches_tracked":
        return ()
    return params[f"layers_{i}"][{"weight": "scale", "bias": "bias", "running_mean": "mean",
                                  "running_var": "var"}[part]].shape


def _torch(shape: tuple[int, ...], part: str) -> tuple[int, ...]:
    """A kernel shape ``[in, out]`` back to the torch weight's ``[out, in]`` (for the messages)."""
    return shape[::-1] if part == "weight" and len(shape) == 2 else shape
