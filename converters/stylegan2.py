"""StyleGAN2 PyTorch checkpoints -> jaxedit params (no torch needed).

Sources:
- NVIDIA stylegan2-ada-pytorch / stylegan3-repo ``.pkl`` (a pickle of ``{'G', 'D', 'G_ema', ...}``
  whose modules are ``torch_utils.persistence`` objects; ``G_ema`` by default).
- rosinality/stylegan2-pytorch ``.pt`` (``torch.save`` of ``{'g_ema', 'latent_avg', ...}``).

The config is read from tensor shapes (channel table, mapping depth, dims, architecture);
NVIDIA's ``_init_kwargs`` supply what shapes cannot (conv_clamp, mapping lr multiplier).
Parameter names map by rule: the jaxedit tree mirrors NVIDIA's state-dict names with
dense weights transposed to ``[in, out]`` and conv kernels to HWIO.
"""

from __future__ import annotations

import hashlib
import math
import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.io import torchfile
from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config
from jaxedit.errors import CheckpointError, FormatError

CONVERTER_VERSION = "stylegan2-1"
STANDARD_FILTER = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64.0


class ConversionError(FormatError):
    """The source cannot be converted; the message names the file and the key."""


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def convert(path: str | Path, key: str | None = None) -> tuple[StyleGAN2Config, dict, dict[str, Any]]:
    """Read ``path`` and return ``(config, params, info)``; ``info['format']`` names the source kind."""
    path = Path(path)
    obj = torchfile.load(path)
    if isinstance(obj, dict) and any(isinstance(v, torchfile.PersistentObject) for v in obj.values()):
        cfg, params, info = from_nvidia(obj, key or "G_ema", path.name)
    elif isinstance(obj, dict) and ("g_ema" in obj or "g" in obj or _looks_rosinality(obj)):
        cfg, params, info = from_rosinality(obj, key, path.name)
    else:
        keys = sorted(obj)[:8] if isinstance(obj, dict) else type(obj).__name__
        raise ConversionError(f"{path.name}: not a StyleGAN2 checkpoint of a known kind (top level: {keys})")
    G = StyleGAN2(cfg)
    _check_params(G, params, path.name)
    return cfg, params, info


# ----------------------------------------------------------------------------- NVIDIA


def from_nvidia(obj: dict, key: str, name: str):
    if key not in obj or not isinstance(obj[key], torchfile.PersistentObject):
        found = [k for k, v in obj.items() if isinstance(v, torchfile.PersistentObject)]
        raise ConversionError(f"{name}: no network {key!r} in the pickle (networks: {found})")
    net = obj[key]
    sd = torchfile.module_state_dict(net)
    kwargs = torchfile.init_kwargs(net)
    if not any(k.startswith("synthesis.") for k in sd):
        raise ConversionError(f"{name}: {key!r} ({net.class_name}) is not a generator (no synthesis.* tensors)")
    syn_kw = dict(kwargs.get("synthesis_kwargs") or {})
    for k in ("channel_base", "channel_max", "conv_clamp", "architecture", "num_fp16_res"):
        if k in kwargs:  # the stylegan3 repo's networks_stylegan2 passes synthesis kwargs flat
            syn_kw.setdefault(k, kwargs[k])
    map_kw = dict(kwargs.get("mapping_kwargs") or {})

    params: dict = {}
    for tname, arr in sd.items():
        if tname.endswith("resample_filter"):
            if not np.allclose(np.asarray(arr, np.float32), STANDARD_FILTER, atol=1e-7):
                raise ConversionError(f"{name}: {tname} is not the [1,3,3,1] FIR filter; unsupported")
            continue
        _put(params, tname, _to_jax_layout(tname, np.asarray(arr, np.float32)))

    cfg = _infer_config(params, name,
                        conv_clamp=syn_kw.get("conv_clamp"),
                        mapping_lr_mul=float(map_kw.get("lr_multiplier", 0.01)),
                        img_channels_hint=kwargs.get("img_channels"))
    _fill_missing_noise(cfg, params)
    info = {"format": "nvidia-pkl", "network": key, "class_name": net.class_name,
            "num_fp16_res": syn_kw.get("num_fp16_res", 0),
            "note": "computed in float32 (the reference's force_fp32)"}
    return cfg, params, info


def _to_jax_layout(name: str, a: np.ndarray) -> np.ndarray:
    if name.endswith("synthesis.b4.const"):
        return a.transpose(1, 2, 0)  # [C, 4, 4] -> [4, 4, C]
    if a.ndim == 4:
        return a.transpose(2, 3, 1, 0)  # OIHW -> HWIO
    if a.ndim == 2 and name.endswith(".weight"):
        return a.T  # [out, in] -> [in, out]
    return a


def _put(tree: dict, dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    for p in parents:
        tree = tree.setdefault(p, {})
    tree[leaf] = value


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


# ------------------------------------------------------------------------- rosinality


def _looks_rosinality(sd: dict) -> bool:
    return any(isinstance(k, str) and k.startswith("convs.") for k in sd)


def from_rosinality(obj: dict, key: str | None, name: str):
    key = key or ("g_ema" if "g_ema" in obj else "g" if "g" in obj else None)
    sd = obj if key is None else obj.get(key)
    if not isinstance(sd, dict):
        raise ConversionError(f"{name}: no state dict {key!r} in the file (keys: {sorted(obj)})")
    sd = {k: np.asarray(v, np.float32) for k, v in sd.items() if isinstance(v, np.ndarray)}

    def get(k):
        if k not in sd:
            raise ConversionError(f"{name}: missing tensor {key}.{k}")
        return sd[k]

    n_mlp = len([k for k in sd if re.fullmatch(r"style\.\d+\.weight", k)])
    n_convs = len([k for k in sd if re.fullmatch(r"convs\.\d+\.conv\.weight", k)])
    if n_mlp == 0 or n_convs % 2:
        raise ConversionError(f"{name}: not a rosinality generator (style layers {n_mlp}, convs {n_convs})")
    resolution = 4 * 2 ** (n_convs // 2)
    style_dim = get("style.1.weight").shape[0]

    for k, v in sd.items():
        if k.endswith("kernel") and not np.allclose(v, 4 * STANDARD_FILTER, atol=1e-6):
            raise ConversionError(f"{name}: {key}.{k} is not 4x the [1,3,3,1] FIR filter; unsupported")

    mapping = {f"fc{i}": {"weight": get(f"style.{i + 1}.weight").T, "bias": get(f"style.{i + 1}.bias")}
               for i in range(n_mlp)}
    latent_avg = obj.get("latent_avg")

    def modconv(prefix, noise_name, r):
        w = get(f"{prefix}.conv.weight")[0]  # [O, I, k, k]
        fan_in = w.shape[1] * w.shape[2] * w.shape[3]
        return {  # rosinality scales the weight by 1/sqrt(fan_in) before modulation: fold it in (exact)
            "weight": (w / math.sqrt(fan_in)).transpose(2, 3, 1, 0),
            "affine": {"weight": get(f"{prefix}.conv.modulation.weight").T,
                       "bias": get(f"{prefix}.conv.modulation.bias")},
            "bias": get(f"{prefix}.activate.bias"),
            "noise_strength": get(f"{prefix}.noise.weight").reshape(()),
            "noise_const": get(f"noises.{noise_name}").reshape(r, r),
        }

    def torgb(prefix):
        return {"weight": get(f"{prefix}.conv.weight")[0].transpose(2, 3, 1, 0),
                "affine": {"weight": get(f"{prefix}.conv.modulation.weight").T,
                           "bias": get(f"{prefix}.conv.modulation.bias")},
                "bias": get(f"{prefix}.bias").reshape(-1)}

    syn = {"b4": {"const": get("input.input")[0].transpose(1, 2, 0),
                  "conv1": modconv("conv1", "noise_0", 4), "torgb": torgb("to_rgb1")}}
    for i in range(n_convs // 2):
        r = 8 * 2 ** i
        syn[f"b{r}"] = {"conv0": modconv(f"convs.{2 * i}", f"noise_{2 * i + 1}", r),
                        "conv1": modconv(f"convs.{2 * i + 1}", f"noise_{2 * i + 2}", r),
                        "torgb": torgb(f"to_rgbs.{i}")}
    channels = tuple(int(syn[f"b{4 * 2 ** i}"]["conv1"]["weight"].shape[3]) for i in range(n_convs // 2 + 1))
    cfg = StyleGAN2Config(z_dim=style_dim, w_dim=style_dim, img_resolution=resolution,
                          img_channels=int(syn["b4"]["torgb"]["weight"].shape[3]), mapping_layers=n_mlp,
                          channels=channels)
    params = {"mapping": mapping, "synthesis": syn}
    info = {"format": "rosinality-pt", "network": key, "mapping_lr_mul": "0.01 (rosinality default lr_mlp)"}
    if latent_avg is not None:
        mapping["w_avg"] = np.asarray(latent_avg, np.float32).reshape(style_dim)
        info["w_avg"] = "latent_avg from the file"
    else:
        mapping["w_avg"] = _estimate_w_avg(cfg, params)
        info["w_avg"] = "estimated: mean of mapping(z) over 100,000 z (seed 0); the file has no latent_avg"
    return cfg, params, info


def _estimate_w_avg(cfg: StyleGAN2Config, params: dict, n: int = 100_000) -> np.ndarray:
    import jax

    G = StyleGAN2(cfg)
    p = {"mapping": dict(params["mapping"], w_avg=np.zeros(cfg.w_dim, np.float32)), "synthesis": params["synthesis"]}
    z = jax.random.normal(jax.random.key(0), (n, cfg.z_dim))
    return np.asarray(jax.jit(lambda p, z: G.mapping(p, z)[:, 0].mean(0))(p, z))


# ----------------------------------------------------------------------------- checks


def _check_params(G: StyleGAN2, params: dict, name: str) -> None:
    from jaxedit.io.checkpoint import CheckpointError, check_tree

    try:
        check_tree(G.param_shapes(), params, name)
    except CheckpointError as e:
        raise ConversionError(str(e)) from None
