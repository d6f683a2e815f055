"""StyleGAN2 PyTorch checkpoints -> jaxedit params (no torch needed).

Sources:
- NVIDIA stylegan2-ada-pytorch / stylegan3-repo ``.pkl`` (a pickle of ``{'G', 'D', 'G_ema', ...}``
  whose modules are ``torch_utils.persistence`` objects; ``G_ema`` by default).
- rosinality/stylegan2-pytorch ``.pt`` (``torch.save`` of ``{'g_ema', 'latent_avg', ...}``).

The config is read from tensor shapes (channel table, mapping depth, dims, architecture);
NVIDIA's ``_init_kwargs`` supply what shapes cannot (conv_clamp, mapping lr multiplier).
Parameter names and layouts map by the rules of :mod:`jaxedit.models.stylegan2.params`;
rosinality files are renamed to NVIDIA's names first. :func:`convert_discriminator` reads the
``D`` of an NVIDIA pickle or the ``d`` of a rosinality checkpoint (fine-tuning, and the discriminator's
reference parity).
"""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxedit.errors import FormatError
from jaxedit.io import torchfile
from jaxedit.io.checkpoint import CheckpointError, check_tree
from jaxedit.models.stylegan2 import Discriminator, DiscriminatorConfig, StyleGAN2, StyleGAN2Config
from jaxedit.models.stylegan2 import params as layout

CONVERTER_VERSION = "stylegan2-1"


class ConversionError(FormatError):
    """The source cannot be converted; the message names the file and the key."""


def convert(path: str | Path, key: str | None = None) -> tuple[StyleGAN2Config, dict, dict[str, Any]]:
    """Read ``path`` and return ``(config, params, info)``; ``info['format']`` names the source kind."""
    path = Path(path)
    obj = torchfile.load(path)
    if isinstance(obj, dict) and any(isinstance(v, torchfile.PersistentObject) for v in obj.values()):
        cfg, params, info = from_nvidia(obj, key or "G_ema", path.name)
    elif isinstance(obj, dict) and ("g_ema" in obj or "g" in obj or _looks_rosinality(obj)):
        cfg, params, info = from_rosinality(obj, key, path.name)
    else:
        keys = sorted(map(torchfile.describe, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(f"{path.name}: not a StyleGAN2 checkpoint of a known kind (top level: {keys})")
    _check_params(StyleGAN2(cfg), params, path.name)
    return cfg, params, info


# ----------------------------------------------------------------------------- NVIDIA


# Ranks of the NVIDIA tensors the config is read from (generator and discriminator names).
_RANKS = [(re.compile(p), r) for p, r in (
    (r"(mapping\.(fc\d+|embed)|.*\.affine|b4\.(fc|out))\.weight", 2),
    (r"(synthesis\.)?b\d+\.(conv0|conv1|conv|torgb|fromrgb|skip)\.weight", 4),
    (r"synthesis\.b4\.const", 3), (r".*\.noise_const", 2), (r".*\.noise_strength", 0),
    (r".*\.bias|mapping\.w_avg", 1))]
_KINDS = {"a number": (int, float, np.integer, np.floating), "an integer": (int, np.integer), "a dict": (dict,)}


def _kwarg(kwargs: dict, key: str, default: Any, kind: str, name: str) -> Any:
    """``kwargs.get(key, default)``, checked to be ``kind`` (a key of ``_KINDS``; a bool is no number)."""
    v = kwargs.get(key, default)
    if v is default or isinstance(v, _KINDS[kind]) and not isinstance(v, (bool, np.bool_)):
        return v
    raise ConversionError(f"{name}: _init_kwargs {key!r} is {torchfile.describe(v)}, not {kind}")


def _network(obj: dict, key: str, name: str) -> tuple[Any, dict, dict]:
    """``obj[key]`` of an NVIDIA pickle -> (network, state dict, init kwargs)."""
    if key not in obj or not isinstance(obj[key], torchfile.PersistentObject):
        found = [torchfile.describe(k) for k, v in obj.items() if isinstance(v, torchfile.PersistentObject)]
        raise ConversionError(f"{name}: no network {key!r} in the pickle (networks: {found})")
    net = obj[key]
    sd = torchfile.module_state_dict(net)
    for k, a in sd.items():
        rank = next((r for pattern, r in _RANKS if pattern.fullmatch(k)), None)
        if rank is not None and a.ndim != rank:
            raise ConversionError(f"{name}: tensor {key}.{k} has shape {list(a.shape)}, not {rank}-D")
    return net, sd, torchfile.init_kwargs(net)


def from_nvidia(obj: dict, key: str, name: str):
    net, sd, kwargs = _network(obj, key, name)
    if not any(k.startswith("synthesis.") for k in sd):
        raise ConversionError(f"{name}: {key!r} ({net.class_name}) is not a generator (no synthesis.* tensors; "
                              "a discriminator converts with convert_discriminator)")
    syn_kw = dict(_kwarg(kwargs, "synthesis_kwargs", None, "a dict", name) or {})
    for k in ("channel_base", "channel_max", "conv_clamp", "architecture", "num_fp16_res"):
        if k in kwargs:  # the stylegan3 repo's networks_stylegan2 passes synthesis kwargs flat
            syn_kw.setdefault(k, kwargs[k])
    map_kw = dict(_kwarg(kwargs, "mapping_kwargs", None, "a dict", name) or {})

    params = layout.from_state_dict(sd, name)
    cfg = _infer_config(params, name,
                        conv_clamp=_kwarg(syn_kw, "conv_clamp", None, "a number", name),
                        mapping_lr_mul=float(_kwarg(map_kw, "lr_multiplier", 0.01, "a number", name)),
                        img_channels_hint=_kwarg(kwargs, "img_channels", None, "an integer", name))
    _fill_missing_noise(cfg, params)
    info = {"format": "nvidia-pkl", "network": key, "class_name": net.class_name,
            "num_fp16_res": int(_kwarg(syn_kw, "num_fp16_res", 0, "an integer", name)),
            "note": "computed in float32 (the reference's force_fp32)"}
    return cfg, params, info


def _infer_config(params: dict, name: str, *, conv_clamp, mapping_lr_mul: float, img_channels_hint=None,
                  ) -> StyleGAN2Config:
    mp, syn = params.get("mapping", {}), params.get("synthesis", {})
    fcs = sorted(int(k[2:]) for k in mp if re.fullmatch(r"fc\d+", k))
    if not fcs or fcs != list(range(len(fcs))):
        raise ConversionError(f"{name}: mapping.fc* layers missing or not numbered 0..n-1 ({fcs})")
    res_list = sorted(int(k[1:]) for k in syn if re.fullmatch(r"b\d+", k))
    if not res_list or res_list[0] != 4 or res_list != [2 ** i for i in range(2, 2 + len(res_list))]:
        raise ConversionError(f"{name}: synthesis blocks {res_list} are not 4, 8, ..., R")
    try:
        channels = [syn[f"b{r}"]["conv1"]["weight"].shape[3] for r in res_list]
        last = syn[f"b{res_list[-1]}"]
        img_channels = last["torgb"]["weight"].shape[3]
    except KeyError as e:
        raise ConversionError(f"{name}: missing tensor {e} in the synthesis network") from None
    architecture = "resnet" if any("skip" in syn[f"b{r}"] for r in res_list) else "skip"
    if architecture == "skip" and any("torgb" not in syn[f"b{r}"] for r in res_list):
        raise ConversionError(f"{name}: only some blocks have torgb and none has skip: "
                              "the 'orig' architecture is not supported")
    has_embed = "embed" in mp
    z_in = mp["fc0"]["weight"].shape[0]
    embed = mp["embed"]["weight"].shape[1] if has_embed else None
    w_dim = mp[f"fc{fcs[-1]}"]["weight"].shape[1]
    hidden = mp["fc0"]["weight"].shape[1] if len(fcs) > 1 else None
    return StyleGAN2Config(
        z_dim=z_in - (embed or 0), w_dim=w_dim, c_dim=mp["embed"]["weight"].shape[0] if has_embed else 0,
        img_resolution=res_list[-1], img_channels=int(img_channels_hint or img_channels),
        mapping_layers=len(fcs), mapping_lr_mul=mapping_lr_mul,
        embed_features=embed if embed not in (None, w_dim) else None,
        layer_features=hidden if hidden not in (None, w_dim) else None,
        channels=tuple(int(c) for c in channels), architecture=architecture,
        conv_clamp=None if conv_clamp is None else float(conv_clamp))


def _fill_missing_noise(cfg: StyleGAN2Config, params: dict) -> None:
    """Generators built with ``use_noise=False`` have no noise tensors: zero strength is identical."""
    for layer in cfg.layer_ws():
        if layer.endswith("torgb"):
            continue
        block, conv = layer.split(".")
        p = params["synthesis"][block][conv]
        r = int(block[1:])
        p.setdefault("noise_strength", np.zeros((), np.float32))
        p.setdefault("noise_const", np.zeros((r, r), np.float32))


def convert_discriminator(path: str | Path, key: str | None = None
                          ) -> tuple[DiscriminatorConfig, dict, dict[str, Any]]:
    """A discriminator -> ``(config, params, info)``: ``key`` (default ``D``) of an NVIDIA ``.pkl``, or ``key``
    (default ``d``) of a rosinality ``.pt`` (config from shapes + NVIDIA's kwargs)."""
    path = Path(path)
    obj = torchfile.load(path)
    if isinstance(obj, dict) and any(isinstance(v, torchfile.PersistentObject) for v in obj.values()):
        key = key or "D"
        net, sd, kwargs = _network(obj, key, path.name)
        if "b4.out.weight" not in sd or any(k.startswith("synthesis.") for k in sd):
            raise ConversionError(f"{path.name}: {key!r} ({net.class_name}) is not a discriminator (no b4.out.weight)")
        params = layout.from_state_dict(sd, path.name)
        cfg = _infer_d_config(params, kwargs, path.name)
        info = {"format": "nvidia-pkl", "network": key, "class_name": net.class_name,
                "num_fp16_res": int(_kwarg(kwargs, "num_fp16_res", 0, "an integer", path.name)),
                "note": "computed in float32"}
    elif isinstance(obj, dict) and ("d" in obj or any(isinstance(k, str) and k.startswith("final_linear.")
                                                      for k in obj)):
        cfg, params, info = _rosinality_discriminator(obj, key, path.name)
    else:
        raise ConversionError(f"{path.name}: not an NVIDIA pickle or a rosinality checkpoint with a discriminator "
                              f"(top level: {torchfile.describe(obj)})")
    _check_params(Discriminator(cfg), params, path.name)
    return cfg, params, info


def _infer_d_config(params: dict, kwargs: dict, name: str) -> DiscriminatorConfig:
    res_list = sorted(int(k[1:]) for k in params if re.fullmatch(r"b\d+", k))
    if not res_list or res_list != [2 ** i for i in range(2, 2 + len(res_list))] or len(res_list) < 2:
        raise ConversionError(f"{name}: discriminator blocks {res_list} are not 4, 8, ..., R")
    top = res_list[-1]
    if any("fromrgb" in params[f"b{r}"] for r in res_list[:-1]):
        raise ConversionError(f"{name}: fromrgb in inner blocks: the 'skip' discriminator is not supported")
    try:
        channels = [params["b4"]["conv"]["weight"].shape[3]] + [params[f"b{r}"]["conv0"]["weight"].shape[3]
                                                                  for r in res_list[1:]]
        mbstd = params["b4"]["conv"]["weight"].shape[2] - channels[0]
        img_channels = params[f"b{top}"]["fromrgb"]["weight"].shape[2]
    except KeyError as e:
        raise ConversionError(f"{name}: missing tensor {e} in the discriminator") from None
    mapping = params.get("mapping", {})
    c_dim = mapping["embed"]["weight"].shape[0] if "embed" in mapping else 0
    cmap_dim = params["b4"]["out"]["weight"].shape[1] if c_dim else None
    epilogue = _kwarg(kwargs, "epilogue_kwargs", None, "a dict", name) or {}
    map_kw = _kwarg(kwargs, "mapping_kwargs", None, "a dict", name) or {}
    conv_clamp = _kwarg(kwargs, "conv_clamp", None, "a number", name)
    return DiscriminatorConfig(
        img_resolution=top, img_channels=int(img_channels), c_dim=int(c_dim), channels=tuple(int(c) for c in channels),
        architecture="resnet" if "skip" in params[f"b{top}"] else "orig",
        conv_clamp=None if conv_clamp is None else float(conv_clamp),
        mbstd_group_size=_kwarg(epilogue, "mbstd_group_size", 4, "an integer", name),
        mbstd_num_channels=int(mbstd),
        cmap_dim=None if cmap_dim in (None, channels[0]) else int(cmap_dim),
        mapping_layers=len([k for k in mapping if re.fullmatch(r"fc\d+", k)]) if c_dim else 8,
        mapping_lr_mul=float(_kwarg(map_kw, "lr_multiplier", 0.01, "a number", name)))


# ------------------------------------------------------------------------- rosinality


def _looks_rosinality(sd: dict) -> bool:
    return any(isinstance(k, str) and k.startswith("convs.") for k in sd)


def from_rosinality(obj: dict, key: str | None, name: str):
    key = key or ("g_ema" if "g_ema" in obj else "g" if "g" in obj else None)
    sd = obj if key is None else obj.get(key)
    if not isinstance(sd, dict):
        raise ConversionError(f"{name}: no state dict {key!r} in the file "
                              f"(keys: {sorted(map(torchfile.describe, obj))[:8]})")
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items() if isinstance(k, str) and isinstance(v, np.ndarray)}

    def get(k, ndim=None, size=None):
        if k not in sd:
            raise ConversionError(f"{name}: missing tensor {key}.{k}")
        if (ndim is not None and sd[k].ndim != ndim) or (size is not None and sd[k].size != size):
            raise ConversionError(f"{name}: tensor {key}.{k} has shape {list(sd[k].shape)}, not "
                                  + (f"{ndim}-D" if ndim is not None else f"{size} elements"))
        return sd[k]

    n_mlp = len([k for k in sd if re.fullmatch(r"style\.\d+\.weight", k)])
    n_convs = len([k for k in sd if re.fullmatch(r"convs\.\d+\.conv\.weight", k)])
    if n_mlp == 0 or n_convs % 2:
        raise ConversionError(f"{name}: not a rosinality generator (style layers {n_mlp}, convs {n_convs})")
    resolution = 4 * 2 ** (n_convs // 2)
    style_dim = get("style.1.weight", 2).shape[0]

    for k, v in sd.items():
        if k.endswith("kernel") and (v.shape != (4, 4) or not np.allclose(v, 4 * layout.STANDARD_FILTER, atol=1e-6)):
            raise ConversionError(f"{name}: {key}.{k} is not 4x the [1,3,3,1] FIR filter; unsupported")

    nv = {}  # NVIDIA names, torch layout
    for i in range(n_mlp):
        nv[f"mapping.fc{i}.weight"], nv[f"mapping.fc{i}.bias"] = get(f"style.{i + 1}.weight", 2), get(f"style.{i + 1}.bias", 1)

    def modulated(prefix, dst):
        nv[f"{dst}.affine.weight"] = get(f"{prefix}.conv.modulation.weight", 2)
        nv[f"{dst}.affine.bias"] = get(f"{prefix}.conv.modulation.bias", 1)

    def modconv(prefix, noise_name, dst, r):
        w = get(f"{prefix}.conv.weight", 5)[0]  # [O, I, k, k]
        # rosinality scales the weight by 1/sqrt(fan_in) before modulation: fold it in (exact)
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        nv[f"{dst}.weight"] = (w.astype(np.float64) / math.sqrt(fan_in)).astype(np.float32)  # correctly rounded
        modulated(prefix, dst)
        nv[f"{dst}.bias"] = get(f"{prefix}.activate.bias", 1)
        nv[f"{dst}.noise_strength"] = get(f"{prefix}.noise.weight", size=1).reshape(())
        nv[f"{dst}.noise_const"] = get(f"noises.{noise_name}", size=r * r).reshape(r, r)

    def torgb(prefix, dst):
        nv[f"{dst}.weight"] = get(f"{prefix}.conv.weight", 5)[0]
        modulated(prefix, dst)
        nv[f"{dst}.bias"] = get(f"{prefix}.bias").reshape(-1)

    nv["synthesis.b4.const"] = get("input.input", 4)[0]
    modconv("conv1", "noise_0", "synthesis.b4.conv1", 4)
    torgb("to_rgb1", "synthesis.b4.torgb")
    for i in range(n_convs // 2):
        r = 8 * 2 ** i
        modconv(f"convs.{2 * i}", f"noise_{2 * i + 1}", f"synthesis.b{r}.conv0", r)
        modconv(f"convs.{2 * i + 1}", f"noise_{2 * i + 2}", f"synthesis.b{r}.conv1", r)
        torgb(f"to_rgbs.{i}", f"synthesis.b{r}.torgb")
    params = layout.from_state_dict(nv, name)
    mapping, syn = params["mapping"], params["synthesis"]
    latent_avg = obj.get("latent_avg")
    if latent_avg is not None and not (isinstance(latent_avg, np.ndarray) and latent_avg.size == style_dim):
        raise ConversionError(f"{name}: latent_avg is {torchfile.describe(latent_avg)}, not {style_dim} numbers")
    channels = tuple(int(syn[f"b{4 * 2 ** i}"]["conv1"]["weight"].shape[3]) for i in range(n_convs // 2 + 1))
    cfg = StyleGAN2Config(z_dim=style_dim, w_dim=style_dim, img_resolution=resolution,
                          img_channels=int(syn["b4"]["torgb"]["weight"].shape[3]), mapping_layers=n_mlp,
                          channels=channels)
    info = {"format": "rosinality-pt", "network": key, "mapping_lr_mul": "0.01 (rosinality default lr_mlp)"}
    if latent_avg is not None:
        mapping["w_avg"] = np.asarray(latent_avg, np.float32).reshape(style_dim)
        info["w_avg"] = "latent_avg from the file"
    else:
        mapping["w_avg"] = _estimate_w_avg(cfg, params)
        info["w_avg"] = "estimated: mean of mapping(z) over 100,000 z (seed 0); the file has no latent_avg"
    return cfg, params, info


def _estimate_w_avg(cfg: StyleGAN2Config, params: dict, n: int = 100_000) -> np.ndarray:
    G = StyleGAN2(cfg)
    p = {"mapping": dict(params["mapping"], w_avg=np.zeros(cfg.w_dim, np.float32)), "synthesis": params["synthesis"]}
    z = jax.random.normal(jax.random.key(0), (n, cfg.z_dim))
    return np.asarray(jax.jit(lambda p, z: G.mapping(p, z)[:, 0].mean(0))(p, z))


def rosinality_d_names(resolution: int) -> list[tuple[str, str]]:
    """``(rosinality name, NVIDIA name)`` of every parameter of rosinality's ``Discriminator(resolution)``.

    ``convs.0`` = ConvLayer 1x1 (FromRGB), ``convs.k`` = ResBlock at ``R = resolution / 2^(k-1)``
    (``conv1`` -> ``conv0``, ``conv2`` (Blur, conv, act) -> ``conv1``, ``skip`` (Blur, conv) -> ``skip``),
    ``final_conv`` -> ``b4.conv``, ``final_linear.{0,1}`` -> ``b4.{fc,out}``. The Blur ``kernel`` buffers
    (the normalized [1,3,3,1] FIR) are at ``convs.k.{conv2,skip}.0.kernel``."""
    names = [("convs.0.0.weight", f"b{resolution}.fromrgb.weight"), ("convs.0.1.bias", f"b{resolution}.fromrgb.bias")]
    k, r = 1, resolution
    while r > 4:
        names += [(f"convs.{k}.conv1.0.weight", f"b{r}.conv0.weight"), (f"convs.{k}.conv1.1.bias", f"b{r}.conv0.bias"),
                  (f"convs.{k}.conv2.1.weight", f"b{r}.conv1.weight"), (f"convs.{k}.conv2.2.bias", f"b{r}.conv1.bias"),
                  (f"convs.{k}.skip.1.weight", f"b{r}.skip.weight")]
        k, r = k + 1, r // 2
    return names + [("final_conv.0.weight", "b4.conv.weight"), ("final_conv.1.bias", "b4.conv.bias"),
                    ("final_linear.0.weight", "b4.fc.weight"), ("final_linear.0.bias", "b4.fc.bias"),
                    ("final_linear.1.weight", "b4.out.weight"), ("final_linear.1.bias", "b4.out.bias")]


def _rosinality_discriminator(obj: dict, key: str | None, name: str):
    """rosinality's ``Discriminator`` (resnet, no clamp, minibatch stddev 4 x 1, unconditional) by renaming."""
    key = key or ("d" if "d" in obj else None)
    sd = obj if key is None else obj.get(key)
    if not isinstance(sd, dict):
        raise ConversionError(f"{name}: no state dict {key!r} in the file "
                              f"(keys: {sorted(map(torchfile.describe, obj))[:8]})")
    sd = {k: v for k, v in sd.items() if isinstance(k, str) and isinstance(v, np.ndarray)}
    n_res = len([k for k in sd if re.fullmatch(r"convs\.\d+\.conv1\.0\.weight", k)])
    if "convs.0.0.weight" not in sd or n_res == 0:
        raise ConversionError(f"{name}: {key or 'the file'} is not a rosinality discriminator "
                              "(no convs.0.0.weight / convs.k.conv1)")
    resolution = 4 * 2 ** n_res
    for k, v in sd.items():
        if k.endswith("kernel") and (v.shape != (4, 4) or not np.allclose(v, layout.STANDARD_FILTER, atol=1e-7)):
            raise ConversionError(f"{name}: {key}.{k} is not the [1,3,3,1] FIR filter; unsupported")
    pairs = rosinality_d_names(resolution)
    known = {r for r, _ in pairs}
    extra = sorted(k for k in sd if k not in known and not k.endswith("kernel"))
    if extra:
        raise ConversionError(f"{name}: unexpected tensors in {key} ({extra[:4]}): not the rosinality discriminator")
    nv = {}
    for ros, nvn in pairs:
        if ros not in sd:
            raise ConversionError(f"{name}: missing tensor {key}.{ros}")
        nv[nvn] = np.asarray(sd[ros], np.float32)
    params = layout.from_state_dict(nv, name)
    for dst, rank in (("b4.conv.weight", 4), ("b4.fc.weight", 2), ("b4.out.weight", 2)):
        if nv[dst].ndim != rank:
            raise ConversionError(f"{name}: tensor {key}.{ {b: a for a, b in pairs}[dst]} has shape "
                                  f"{list(nv[dst].shape)}, not {rank}-D")
    ch4 = params["b4"]["conv"]["weight"].shape[3]
    channels = [int(ch4)] + [int(params[f"b{4 * 2 ** i}"]["conv0"]["weight"].shape[3]) for i in range(1, n_res + 1)]
    cfg = DiscriminatorConfig(img_resolution=resolution, channels=tuple(channels), architecture="resnet",
                              img_channels=int(nv[f"b{resolution}.fromrgb.weight"].shape[1]),
                              mbstd_num_channels=int(params["b4"]["conv"]["weight"].shape[2] - ch4))
    return cfg, params, {"format": "rosinality-pt", "network": key, "note": "computed in float32"}


# ----------------------------------------------------------------------------- checks


def _check_params(model: StyleGAN2 | Discriminator, params: dict, name: str) -> None:
    try:
        check_tree(model.param_shapes(), params, name)
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
