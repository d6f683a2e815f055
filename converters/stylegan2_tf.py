"""Legacy TensorFlow StyleGAN2 ``.pkl`` (NVlabs/stylegan2, stylegan2-ada TF) -> jaxedit params, TF-free.

Generators (``Gs``, ``G``) and the discriminator (``D``, :func:`from_tf_discriminator`) convert.
The file is a pickled tuple ``(G, D, Gs)`` of ``dnnlib.tflib.network.Network`` states, read by
:func:`jaxedit.io.torchfile.load` as inert :class:`~jaxedit.io.torchfile.TFNetwork` objects
(their ``build_module_src`` is dropped, never run). Variables are collected by TF name through
the components (``mapping/Dense0/weight``, ``synthesis/8x8/Conv0_up/mod_bias``, ...), renamed
to NVIDIA PyTorch names by the rules of :data:`RULES` (the mapping ``legacy.py`` of
stylegan2-ada-pytorch uses), then go through the shared layout and config inference:

==========================  ======================  ================================
TF                          layout                  jaxedit
==========================  ======================  ================================
conv ``weight``             ``[kh, kw, I, O]``      same (HWIO); ``Conv0_up`` and
                                                    ``Skip`` flipped in kh and kw
``Dense*`` / ``mod_weight`` ``[in, out]``           same
``mod_bias``                stored without the +1   ``affine.bias`` = ``mod_bias + 1``
``4x4/Const/const``         ``[1, C, 4, 4]``        ``[4, 4, C]``
``noise{i}``                ``[1, 1, r, r]``        ``noise_const [r, r]`` of layer i
``dlatent_avg``             ``[w_dim]``             ``mapping.w_avg``
==========================  ======================  ================================
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.converters import stylegan2 as sg2
from jaxedit.io import torchfile
from jaxedit.models.stylegan2 import Discriminator, StyleGAN2
from jaxedit.models.stylegan2 import params as layout

NETWORKS = ("G", "D", "Gs")
#: TF generator static kwargs jaxedit understands (the set legacy.py accepts).
KNOWN_KWARGS = frozenset({
    "latent_size", "label_size", "dlatent_size", "resolution", "num_channels", "mapping_layers", "label_fmaps",
    "mapping_fmaps", "mapping_nonlinearity", "mapping_lrmul", "w_avg_beta", "fmap_base", "fmap_max",
    "num_fp16_res", "conv_clamp", "architecture", "resample_kernel", "use_noise", "nonlinearity",
    "truncation_psi", "truncation_cutoff", "style_mixing_prob", "structure"})
#: TF discriminator static kwargs jaxedit understands (unconditional resnet D of NVlabs/stylegan2 and -ada TF).
KNOWN_D_KWARGS = frozenset({
    "num_channels", "resolution", "label_size", "fmap_base", "fmap_max", "fmap_min", "fmap_decay", "architecture",
    "nonlinearity", "mbstd_group_size", "mbstd_num_features", "resample_kernel", "num_fp16_res", "conv_clamp",
    "dtype", "structure"})
_SNIFF = (b"dnnlib.tflib.network\nNetwork\n", b"\x14dnnlib.tflib.network\x94\x8c\x07Network",
          b"\x14dnnlib.tflib.network\x8c\x07Network")


def _t(a: np.ndarray) -> np.ndarray:  # TF [kh, kw, I, O] -> torch [O, I, kh, kw]
    return a.transpose(3, 2, 0, 1)


def _flip(a: np.ndarray) -> np.ndarray:  # TF's transposed / strided convs see the kernel flipped
    return a[::-1, ::-1].transpose(3, 2, 0, 1)


_LAYER = {"Conv0_up": "conv0", "Conv1": "conv1", "ToRGB": "torgb"}
_SUB = {"weight": ("weight", _t, 4), "bias": ("bias", None, 1), "mod_weight": ("affine.weight", np.transpose, 2),
        "mod_bias": ("affine.bias", lambda a: a + 1, 1), "noise_strength": ("noise_strength", None, 0)}


def _rename(tf: str) -> tuple[str, Any, int] | None:
    """TF variable name -> (NVIDIA name, torch-layout transform or None, expected rank); None if unknown."""
    if tf == "dlatent_avg":
        return "mapping.w_avg", None, 1
    if m := re.fullmatch(r"mapping/Dense(\d+)/(weight|bias)", tf):
        return f"mapping.fc{int(m[1])}.{m[2]}", (np.transpose if m[2] == "weight" else None), (2 if m[2] == "weight" else 1)
    if m := re.fullmatch(r"mapping/LabelEmbed/(weight|bias)", tf):
        return f"mapping.embed.{m[1]}", (np.transpose if m[1] == "weight" else None), (2 if m[1] == "weight" else 1)
    if tf == "synthesis/4x4/Const/const":
        return layout.CONST, lambda a: a[0], 4
    if m := re.fullmatch(r"synthesis/noise(\d+)", tf):
        i = int(m[1])
        r = 4 if i == 0 else 2 ** ((i + 5) // 2)
        conv = "conv1" if i == 0 or i % 2 == 0 else "conv0"
        return f"synthesis.b{r}.{conv}.noise_const", lambda a: a[0, 0], 4
    if m := re.fullmatch(r"synthesis/(\d+)x\1/Skip/weight", tf):
        return f"synthesis.b{int(m[1])}.skip.weight", _flip, 4
    if m := re.fullmatch(r"synthesis/(4)x4/(Conv)/(\w+)|synthesis/(\d+)x\4/(Conv0_up|Conv1|ToRGB)/(\w+)", tf):
        res, kind, sub = (m[1], "Conv1", m[3]) if m[1] else (m[4], m[5], m[6])
        if sub not in _SUB or (kind == "ToRGB" and sub == "noise_strength"):
            return None
        name, fn, rank = _SUB[sub]
        if kind == "Conv0_up" and sub == "weight":
            fn = _flip
        return f"synthesis.b{int(res)}.{_LAYER[kind]}.{name}", fn, rank
    return None


def _rename_d(tf: str) -> tuple[str, Any, int] | None:
    """TF discriminator variable -> (NVIDIA name, torch-layout transform, rank), the rules of legacy.py (no flips:
    TF's strided convs correlate as torch's do)."""
    if m := re.fullmatch(r"(\d+)x\1/(FromRGB|Conv0|Conv1_down|Skip)/(weight|bias)", tf):
        layer = {"FromRGB": "fromrgb", "Conv0": "conv0", "Conv1_down": "conv1", "Skip": "skip"}[m[2]]
        return f"b{int(m[1])}.{layer}.{m[3]}", (_t if m[3] == "weight" else None), (4 if m[3] == "weight" else 1)
    if m := re.fullmatch(r"4x4/Conv/(weight|bias)", tf):
        return f"b4.conv.{m[1]}", (_t if m[1] == "weight" else None), (4 if m[1] == "weight" else 1)
    if m := re.fullmatch(r"(4x4/Dense0|Output)/(weight|bias)", tf):
        layer = "fc" if m[1] == "4x4/Dense0" else "out"  # Dense0 flattens NCHW, as torch does
        return f"b4.{layer}.{m[2]}", (np.transpose if m[2] == "weight" else None), (2 if m[2] == "weight" else 1)
    return None


#: The rules, for documentation: TF pattern -> NVIDIA name (see :func:`_rename`).
RULES = {
    "dlatent_avg": "mapping.w_avg", "mapping/Dense{i}/{weight,bias}": "mapping.fc{i}.* (weight as is)",
    "mapping/LabelEmbed/*": "mapping.embed.*", "synthesis/4x4/Const/const": "synthesis.b4.const",
    "synthesis/noise{i}": "noise_const of b4.conv1 (i=0), b{2^((i+5)//2)}.conv0 (odd i), .conv1 (even i)",
    "synthesis/4x4/Conv/*": "synthesis.b4.conv1.*", "synthesis/{r}x{r}/{Conv0_up,Conv1,ToRGB}/*":
    "synthesis.b{r}.{conv0,conv1,torgb}.*", "*/mod_weight, */mod_bias": "*.affine.weight, *.affine.bias (+1)",
    "synthesis/{r}x{r}/Skip/weight": "synthesis.b{r}.skip.weight", "lod": "ignored (0 in StyleGAN2)",
    "D: {r}x{r}/{FromRGB,Conv0,Conv1_down,Skip}/*": "b{r}.{fromrgb,conv0,conv1,skip}.*",
    "D: 4x4/{Conv,Dense0}/*, Output/*": "b4.{conv,fc,out}.*"}


def looks_like_tf_pickle(path: str | Path) -> bool:
    """Cheap routing test on the first 4 KiB: does the pickle start with a TF ``Network`` global?"""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return False
    return head[:1] == b"\x80" and any(s in head for s in _SNIFF)


def is_tf_pickle(obj: Any) -> bool:
    """Is a loaded object a TF release pickle (a TFNetwork, or a tuple of them)?"""
    return isinstance(obj, torchfile.TFNetwork) or (
        isinstance(obj, tuple) and bool(obj) and all(isinstance(n, torchfile.TFNetwork) for n in obj))


def networks(obj: Any, name: str) -> dict[str, torchfile.TFNetwork]:
    """``{'G', 'D', 'Gs'}`` of a ``(G, D, Gs)`` tuple (a lone network is ``Gs``)."""
    if isinstance(obj, torchfile.TFNetwork):
        return {"Gs": obj}
    if not is_tf_pickle(obj) or len(obj) != 3:
        raise sg2.ConversionError(f"{name}: not a TensorFlow StyleGAN2 pickle (expected a tuple (G, D, Gs) of "
                                  f"dnnlib.tflib Networks, got {torchfile.describe(obj)})")
    return dict(zip(NETWORKS, obj))


def _state(net: torchfile.TFNetwork, name: str, where: str) -> dict:
    st = net.state
    if not isinstance(st, dict):
        raise sg2.ConversionError(f"{name}: TF network {where!r} has no state")
    if not (isinstance(st.get("version"), int) and st["version"] >= 4):
        raise sg2.ConversionError(f"{name}: TF network {where!r} has pickle version "
                                  f"{torchfile.describe(st.get('version'))}; 4 or later is supported")
    for k, kind in (("static_kwargs", dict), ("components", dict), ("variables", list)):
        if not isinstance(st.get(k, kind()), kind):
            raise sg2.ConversionError(f"{name}: TF network {where!r}: {k} is {torchfile.describe(st.get(k))}, "
                                      f"not a {kind.__name__}")
    return st


def variables(net: torchfile.TFNetwork, name: str, where: str = "") -> dict[str, np.ndarray]:
    """All variables of ``net`` and its components by TF name (``synthesis/4x4/Conv/weight``)."""
    out: dict[str, np.ndarray] = {}

    def walk(n, prefix):
        st = _state(n, name, prefix.rstrip("/") or where)
        for item in st.get("variables", []):
            if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
                    and isinstance(item[1], (np.ndarray, np.generic)) and item[1].dtype.kind in "biuf"):
                raise sg2.ConversionError(f"{name}: TF network {where!r}: variable {torchfile.describe(item)} "
                                          "is not a (name, array) pair")
            out[prefix + item[0]] = np.asarray(item[1])  # TF gives 0-d variables as numpy scalars
        for k, comp in st.get("components", {}).items():
            if not (isinstance(k, str) and isinstance(comp, torchfile.TFNetwork)):
                raise sg2.ConversionError(f"{name}: TF network {where!r}: component {torchfile.describe(k)} "
                                          "is not a named Network")
            walk(comp, f"{prefix}{k}/")

    walk(net, "")
    return out


def static_kwargs(net: torchfile.TFNetwork, name: str, where: str) -> dict:
    return dict(_state(net, name, where).get("static_kwargs", {}))


def _check_kwargs(kw: dict, name: str, key: str) -> None:
    unknown = sorted(k for k in kw if k not in KNOWN_KWARGS)
    if unknown:
        raise sg2.ConversionError(f"{name}: {key} has TF static kwarg {torchfile.describe(unknown[0])} that jaxedit "
                                  "does not know (the network may compute something else)")
    checks = {"nonlinearity": ("lrelu",), "mapping_nonlinearity": ("lrelu",), "architecture": ("skip", "resnet"),
              "structure": ("auto", "fixed")}
    for k, allowed in checks.items():
        if kw.get(k) is not None and kw[k] not in allowed:
            raise sg2.ConversionError(f"{name}: {key} static kwarg {k}={torchfile.describe(kw[k])} is not supported "
                                      f"(only {', '.join(allowed)})")
    rk = kw.get("resample_kernel")
    if rk is not None and (not isinstance(rk, (list, tuple)) or list(rk) != [1, 3, 3, 1]):
        raise sg2.ConversionError(f"{name}: {key} resample_kernel {torchfile.describe(rk)} is not [1, 3, 3, 1]")
    for k in ("conv_clamp", "mapping_lrmul"):
        v = kw.get(k)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))
                              or not math.isfinite(v)):
            raise sg2.ConversionError(f"{name}: {key} static kwarg {k} is {torchfile.describe(v)}, not a number")


def to_state_dict(vars_: dict[str, np.ndarray], name: str, key: str, rename=_rename) -> dict[str, np.ndarray]:
    """TF variables -> NVIDIA state-dict names in torch layout by ``rename`` (every variable must map)."""
    sd: dict[str, np.ndarray] = {}
    for tf, a in vars_.items():
        if tf == "lod":
            continue
        if re.fullmatch(r"(synthesis/)?ToRGB_lod\d+/.*", tf):
            raise sg2.ConversionError(f"{name}: {key} variable {tf!r}: the 'orig' (progressive-growing) "
                                      "architecture is not supported")
        if tf == "mapping/LabelConcat/weight":
            raise sg2.ConversionError(f"{name}: {key} variable {tf!r}: conditional NVlabs/stylegan2 (LabelConcat) "
                                      "generators are not supported (stylegan2-ada LabelEmbed ones are)")
        rule = rename(tf)
        if rule is None:
            raise sg2.ConversionError(f"{name}: {key} has TF variable {tf!r} that jaxedit cannot map")
        nv, fn, rank = rule
        if a.ndim != rank:
            raise sg2.ConversionError(f"{name}: {key} variable {tf!r} has shape {list(a.shape)}, not {rank}-D")
        if rank == 4 and nv.endswith("noise_const") and a.shape[:2] != (1, 1) or nv == layout.CONST and a.shape[0] != 1:
            raise sg2.ConversionError(f"{name}: {key} variable {tf!r} has shape {list(a.shape)}, not [1, ...]")
        if nv in sd:
            raise sg2.ConversionError(f"{name}: {key} variables map twice to {nv}")
        sd[nv] = np.asarray(fn(a) if fn is not None else a, np.float32)
    return sd


def from_tf(obj: Any, key: str, name: str):
    """A loaded TF pickle's generator ``key`` ('Gs' or 'G') -> ``(config, params, info)``."""
    nets = networks(obj, name)
    if key == "D":
        raise sg2.ConversionError(f"{name}: {key!r} is the discriminator; it converts with --key D "
                                  "(convert_discriminator)")
    if key not in nets:
        raise sg2.ConversionError(f"{name}: no network {key!r} in the TF pickle (networks: {list(nets)})")
    net = nets[key]
    kw = static_kwargs(net, name, key)
    _check_kwargs(kw, name, key)
    vars_ = variables(net, name, key)
    if not any(v.startswith("synthesis/") for v in vars_):
        raise sg2.ConversionError(f"{name}: {key!r} is not a generator (no synthesis/* variables)")
    sd = to_state_dict(vars_, name, key)
    if "mapping.w_avg" not in sd:
        raise sg2.ConversionError(f"{name}: {key} has no dlatent_avg variable")
    params = layout.from_state_dict(sd, name)
    conv_clamp = kw.get("conv_clamp")
    cfg = sg2._infer_config(params, name, conv_clamp=conv_clamp,
                            mapping_lr_mul=float(kw.get("mapping_lrmul") or 0.01),
                            img_channels_hint=None)
    for tf_k, got in (("resolution", cfg.img_resolution), ("num_channels", cfg.img_channels),
                      ("latent_size", cfg.z_dim), ("dlatent_size", cfg.w_dim), ("label_size", cfg.c_dim)):
        if kw.get(tf_k) is not None and kw[tf_k] != got:
            raise sg2.ConversionError(f"{name}: {key} static kwarg {tf_k}={torchfile.describe(kw[tf_k])} but the "
                                      f"variables give {got}")
    if kw.get("architecture") is not None and kw["architecture"] != cfg.architecture:
        raise sg2.ConversionError(f"{name}: {key} static kwarg architecture={kw['architecture']!r} but the variables "
                                  f"give {cfg.architecture!r}")
    sg2._fill_missing_noise(cfg, params)
    sg2._check_params(StyleGAN2(cfg), params, name)
    st = net.state
    info = {"format": "nvidia-tf-pkl", "network": key, "class_name": str(st.get("build_func_name", "?")),
            "num_fp16_res": int(kw.get("num_fp16_res") or 0),
            "note": "TensorFlow release pickle read without TF; computed in float32"}
    if kw.get("truncation_psi") is not None:
        info["tf_truncation_psi"] = float(kw["truncation_psi"])
    return cfg, params, info


def from_tf_discriminator(obj: Any, name: str):
    """A loaded TF pickle's ``D`` -> ``(DiscriminatorConfig, params, info)``.

    As stylegan2-ada-pytorch's ``legacy.py`` converts it: a pickle without ``mbstd_group_size`` gets ``None``,
    i.e. the whole batch is one minibatch-stddev group (TF's own default was 4; set the config to change it).
    """
    key = "D"
    net = networks(obj, name)[key]
    kw = static_kwargs(net, name, key)
    unknown = sorted(k for k in kw if k not in KNOWN_D_KWARGS)
    if unknown:
        raise sg2.ConversionError(f"{name}: {key} has TF static kwarg {torchfile.describe(unknown[0])} that jaxedit "
                                  "does not know (the network may compute something else)")
    if kw.get("label_size"):
        raise sg2.ConversionError(f"{name}: {key} is conditional (label_size={torchfile.describe(kw['label_size'])}); "
                                  "conditional TF discriminators are not supported")
    if kw.get("architecture", "resnet") != "resnet":
        raise sg2.ConversionError(f"{name}: {key} static kwarg architecture={torchfile.describe(kw['architecture'])} "
                                  "is not supported (only resnet)")
    _check_kwargs({k: v for k, v in kw.items() if k in ("nonlinearity", "resample_kernel", "conv_clamp")}, name, key)
    group = kw.get("mbstd_group_size")
    features = kw.get("mbstd_num_features", 1)
    for k, v in (("mbstd_group_size", group), ("mbstd_num_features", features)):
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not 1 <= v <= 64):
            raise sg2.ConversionError(f"{name}: {key} static kwarg {k} is {torchfile.describe(v)}, not 1..64")
    sd = to_state_dict(variables(net, name, key), name, key, rename=_rename_d)
    if "b4.out.weight" not in sd:
        raise sg2.ConversionError(f"{name}: {key!r} is not a discriminator (no Output/weight variable)")
    params = layout.from_state_dict(sd, name)
    cfg = sg2._infer_d_config(params, {"conv_clamp": kw.get("conv_clamp")}, name)
    if cfg.mbstd_num_channels != features:
        raise sg2.ConversionError(f"{name}: {key} mbstd_num_features={features} but 4x4/Conv/weight gives "
                                  f"{cfg.mbstd_num_channels}")
    cfg = dataclasses.replace(cfg, mbstd_group_size=None if group is None else int(group))
    for tf_k, got in (("resolution", cfg.img_resolution), ("num_channels", cfg.img_channels)):
        if kw.get(tf_k) is not None and kw[tf_k] != got:
            raise sg2.ConversionError(f"{name}: {key} static kwarg {tf_k}={torchfile.describe(kw[tf_k])} but the "
                                      f"variables give {got}")
    info = {"format": "nvidia-tf-pkl", "network": key, "class_name": str(net.state.get("build_func_name", "?")),
            "num_fp16_res": int(kw.get("num_fp16_res") or 0),
            "note": "TensorFlow release pickle read without TF; computed in float32; minibatch-stddev group "
                    f"{'the whole batch' if group is None else group} (as legacy.py)"}
    return cfg, params, info


def convert(path: str | Path, key: str | None = None):
    """Read a TF StyleGAN2 ``.pkl`` and return ``(config, params, info)`` (default network ``Gs``)."""
    path = Path(path)
    obj = torchfile.load(path)
    return from_tf(obj, key or "Gs", path.name)


def convert_discriminator(path: str | Path, key: str | None = None):
    """Read a TF StyleGAN2 ``.pkl`` and return its discriminator ``(config, params, info)``."""
    path = Path(path)
    if key not in (None, "D", "d"):
        raise sg2.ConversionError(f"{path.name}: the TF discriminator is network 'D', not {key!r}")
    cfg, params, info = from_tf_discriminator(torchfile.load(path), path.name)
    sg2._check_params(Discriminator(cfg), params, path.name)
    return cfg, params, info
