"""What a source file (``.pkl`` / ``.pt``) holds, read with the hardened reader and never run or converted.

:func:`describe` reports the file's format, its networks (role, class, tensor and element
counts) and, for StyleGAN2 generators (NVIDIA PyTorch and TensorFlow pickles, rosinality
files), the config that ``jaxedit convert stylegan2`` would infer from the shapes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxedit.converters import stylegan2 as sg2
from jaxedit.converters import stylegan2_tf
from jaxedit.errors import FormatError
from jaxedit.io import torchfile


def _arrays(obj: Any) -> list[np.ndarray]:
    """Every array reachable in a loaded object (the reader guarantees a small acyclic graph)."""
    out, stack = [], [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, np.ndarray):
            out.append(x)
        elif isinstance(x, dict):
            stack.extend(x.values())
        elif isinstance(x, (list, tuple)):
            stack.extend(x)
        elif isinstance(x, (torchfile.PersistentObject, torchfile.TFNetwork, torchfile.ScriptObject)):
            stack.append(x.state)
    return out


def _container(path: Path) -> str:
    with open(path, "rb") as f:
        head = f.read(64)
    if head[:4] == b"PK\x03\x04":
        return "torch.save zip archive"
    return "pickle" if head[:1] == b"\x80" else "legacy torch.save stream"


def _count(arrays) -> dict:
    return {"arrays": len(arrays), "elements": int(sum(a.size for a in arrays))}


def _try_generator(read, obj: Any, key: str | None, name: str) -> dict:
    """The config and converted sizes of a StyleGAN2 generator, or why it would not convert."""
    try:
        cfg, params, _ = read(obj, key, name)
    except FormatError as e:
        return {"role": "generator", "problem": str(e)}
    leaves = jax.tree.leaves(params)
    return {"role": "generator", "config": cfg, "converted_arrays": len(leaves),
            "converted_elements": int(sum(np.size(a) for a in leaves))}


def describe(path: str | Path) -> dict:
    """``{'file', 'format', 'networks': [{'key', 'role', 'class', 'arrays', 'elements', 'config'?, ...}],
    'default'}`` for a source file; generators carry their inferred :class:`StyleGAN2Config`."""
    path = Path(path)
    name = path.name
    obj = torchfile.load(path)
    out: dict[str, Any] = {"file": str(path), "container": _container(path), "networks": [], "default": None}
    nets = out["networks"]
    if stylegan2_tf.is_tf_pickle(obj):
        out["format"] = "NVIDIA TensorFlow StyleGAN2 pickle (dnnlib.tflib Networks; TF source code not run)"
        out["default"] = "Gs"
        for key, net in stylegan2_tf.networks(obj, name).items():
            kw = stylegan2_tf.static_kwargs(net, name, key)
            entry = {"key": key, "class": str(net.state.get("build_func_name", "?")),
                     **_count(list(stylegan2_tf.variables(net, name, key).values())),
                     "resolution": kw.get("resolution")}
            if key != "D":
                entry.update(_try_generator(stylegan2_tf.from_tf, obj, key, name))
            else:
                entry["role"] = "discriminator"
            nets.append(entry)
    elif isinstance(obj, dict) and any(isinstance(v, torchfile.PersistentObject) for v in obj.values()):
        out["format"] = "NVIDIA stylegan2-ada / stylegan3 PyTorch pickle (persistence source code not run)"
        out["default"] = "G_ema"
        for key, net in obj.items():
            if not isinstance(net, torchfile.PersistentObject):
                continue
            sd = torchfile.module_state_dict(net)
            entry = {"key": str(key), "class": net.class_name, **_count(list(sd.values())),
                     "resolution": torchfile.init_kwargs(net).get("img_resolution")}
            if any(k.startswith("synthesis.") for k in sd):
                entry.update(_try_generator(sg2.from_nvidia, obj, key, name))
            else:
                entry["role"] = "discriminator" if "b4.out.weight" in sd else "other"
            nets.append(entry)
    elif isinstance(obj, dict) and ("g_ema" in obj or "g" in obj or sg2._looks_rosinality(obj)):
        out["format"] = "rosinality/stylegan2-pytorch checkpoint"
        keys = [k for k in ("g_ema", "g", "d") if isinstance(obj.get(k), dict)] or [None]
        out["default"] = keys[0]
        for key in keys:
            sd = obj if key is None else obj[key]
            entry = {"key": key or "<top level>", "class": "state dict", **_count(_arrays(sd))}
            style = sd.get("style.1.weight")
            if isinstance(style, np.ndarray) and style.ndim == 2:
                # a stand-in latent_avg: describing must not estimate w_avg (convert does, when absent)
                stand_in = {**obj, "latent_avg": np.zeros(style.shape[0], np.float32)}
                entry.update(_try_generator(sg2.from_rosinality, stand_in, key, name))
                entry["latent_avg"] = "in the file" if "latent_avg" in obj else "absent (convert estimates it)"
            else:
                entry["role"] = "discriminator" if key == "d" else "other"
            nets.append(entry)
    else:
        out["format"] = "PyTorch file of no StyleGAN2 kind jaxedit knows"
        top = sorted(map(torchfile.describe, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        nets.append({"key": "<top level>", "class": str(top), "role": "other", **_count(_arrays(obj))})
    return out
