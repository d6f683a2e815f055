"""StyleGAN3 NVIDIA ``.pkl`` (NVlabs/stylegan3, configs T and R) -> jaxedit params (no torch needed).

The pickle is read by :mod:`jaxedit.io.torchfile` (nothing from the file is executed). The
config comes from the generator's ``_init_kwargs`` with the reference's defaults for what is not
stored; every tensor shape is then checked against the config. The FIR filters are stored in the
state as buffers (``up_filter``, ``down_filter``) and are used as stored. Layouts: the rules of
:mod:`jaxedit.models.stylegan2.params` (dense ``[in, out]``, conv HWIO).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.converters.stylegan2 import ConversionError
from jaxedit.errors import InputError
from jaxedit.io import torchfile
from jaxedit.io.checkpoint import CheckpointError, check_tree
from jaxedit.models.stylegan2 import params as layout
from jaxedit.models.stylegan3 import StyleGAN3, StyleGAN3Config

CONVERTER_VERSION = "stylegan3-1"
__all__ = ["CONVERTER_VERSION", "ConversionError", "convert"]

# reference kwarg -> StyleGAN3Config field (synthesis kwargs are flat in the Generator's kwargs)
_FIELDS = {k: k for k in ("z_dim", "w_dim", "c_dim", "img_resolution", "img_channels", "channel_base", "channel_max",
                          "num_layers", "num_critical", "first_cutoff", "first_stopband", "last_stopband_rel",
                          "margin_size", "output_scale", "conv_kernel", "filter_size", "lrelu_upsampling",
                          "use_radial_filters", "conv_clamp")}
# kwargs that only matter for training or fp16 on GPU
_IGNORED = {"num_fp16_res", "magnitude_ema_beta", "mapping_kwargs"}
_NUMBER = (int, float, np.integer, np.floating)


def convert(path: str | Path, key: str = "G_ema") -> tuple[StyleGAN3Config, dict, dict[str, Any]]:
    """An NVIDIA StyleGAN3 ``.pkl`` -> ``(config, params, info)``; ``key`` picks the network (``G_ema``)."""
    path = Path(path)
    name = path.name
    obj = torchfile.load(path)
    if not (isinstance(obj, dict) and any(isinstance(v, torchfile.PersistentObject) for v in obj.values())):
        raise ConversionError(f"{name}: not an NVIDIA pickle of networks")
    net = obj.get(key)
    if not isinstance(net, torchfile.PersistentObject):
        found = [torchfile.describe(k) for k, v in obj.items() if isinstance(v, torchfile.PersistentObject)]
        raise ConversionError(f"{name}: no network {key!r} in the pickle (networks: {found})")
    sd = torchfile.module_state_dict(net)
    if "synthesis.input.freqs" not in sd:
        hint = " (a StyleGAN2 generator: convert it as stylegan2)" if "synthesis.b4.const" in sd else ""
        raise ConversionError(f"{name}: {key!r} ({net.class_name}) is not a StyleGAN3 generator{hint}")
    cfg = _config(torchfile.init_kwargs(net), name)
    params = layout.from_state_dict(sd, name)
    try:
        check_tree(StyleGAN3(cfg).param_shapes(), params, name)
    except CheckpointError as e:
        raise ConversionError(f"{e} (config from _init_kwargs: {cfg})") from None
    info = {"format": "nvidia-pkl", "network": key, "class_name": net.class_name,
            "config": "R" if cfg.use_radial_filters else "T",
            "note": "computed in float32 (the reference's force_fp32); FIR filters as stored"}
    return cfg, params, info


def _config(kwargs: dict, name: str) -> StyleGAN3Config:
    unknown = sorted(set(kwargs) - set(_FIELDS) - _IGNORED)
    if unknown:
        raise ConversionError(f"{name}: unsupported generator kwargs {unknown}")
    out = {}
    for k, field in _FIELDS.items():
        if k not in kwargs:
            continue
        v = kwargs[k]
        if k == "use_radial_filters":
            if not isinstance(v, (bool, np.bool_)):
                raise ConversionError(f"{name}: _init_kwargs {k!r} is {torchfile.describe(v)}, not a bool")
            out[field] = bool(v)
        elif k == "conv_clamp" and v is None:
            out[field] = None
        elif isinstance(v, _NUMBER) and not isinstance(v, (bool, np.bool_)):
            out[field] = float(v) if isinstance(v, (float, np.floating)) or k == "conv_clamp" else int(v)
        else:
            raise ConversionError(f"{name}: _init_kwargs {k!r} is {torchfile.describe(v)}, not a number")
    mapping = kwargs.get("mapping_kwargs") or {}
    if not isinstance(mapping, dict):
        raise ConversionError(f"{name}: _init_kwargs 'mapping_kwargs' is {torchfile.describe(mapping)}, not a dict")
    extra = sorted(set(mapping) - {"num_layers", "lr_multiplier", "w_avg_beta"})
    if extra:
        raise ConversionError(f"{name}: unsupported mapping kwargs {extra}")
    for k, field, kind in (("num_layers", "mapping_layers", int), ("lr_multiplier", "mapping_lr_mul", float)):
        if k in mapping:
            v = mapping[k]
            if not isinstance(v, _NUMBER) or isinstance(v, (bool, np.bool_)):
                raise ConversionError(f"{name}: mapping_kwargs {k!r} is {torchfile.describe(v)}, not a number")
            out[field] = kind(v)
    for k in ("z_dim", "w_dim", "img_resolution"):
        if k not in out:
            raise ConversionError(f"{name}: _init_kwargs lack {k!r}")
    try:
        return StyleGAN3Config(**out)
    except InputError as e:
        raise ConversionError(f"{name}: {e}") from None
