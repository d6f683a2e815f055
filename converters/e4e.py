"""e4e encoder checkpoints and the ArcFace identity network (IR-SE) -> jaxedit params, without torch.

Sources:

- e4e (omertov/encoder4editing, also pSp-style checkpoints with ``encoder_type`` Encoder4Editing):
  ``torch.save`` of ``{'state_dict', 'opts', 'latent_avg', ...}``; the state dict holds
  ``encoder.*`` (converted here) and ``decoder.*`` (the StyleGAN2 generator in rosinality's
  layout: ignored here, reported in ``info['decoder']``; ``jaxedit convert stylegan2`` reads
  generators). ``opts`` gives ``encoder_type`` (must be Encoder4Editing: pSp's
  GradualStyleEncoder has the same tensors but another forward), ``start_from_latent_avg``
  and ``stylegan_size`` (checked against the number of style blocks).
- ArcFace ``model_ir_se50.pth`` (TreB1eN/InsightFace_Pytorch ``Backbone``, as pSp / e4e /
  StyleCLIP load it): a plain state dict ``input_layer.*``, ``body.N.*``, ``output_layer.*``
  (no prefix). A BatchNorm1d built with ``affine=False`` (model_irse's ``IR_SE_50``) has no
  weight/bias: they become 1 and 0.

The backbone's structure is read from shapes and names: the input width from
``input_layer.0.weight``; a unit's widths from ``res_layer.0`` (in) and ``res_layer.1`` (out); a
new stage at unit 0 and at every unit with a 1x1 conv shortcut (``shortcut_layer.0``: the width
changes); the SE reduction from ``res_layer.5.fc1`` (no ``res_layer.5``: the plain IR unit).
Strides are not in the tensors: every stage starts with stride 2, as ``get_blocks`` builds all
IR/IR-SE 50/100/152 bodies. ``num_batches_tracked`` buffers are dropped.

``convert_e4e(path)`` / ``convert_arcface(path)`` -> ``(config, params, info)``; write with
``checkpoint.save(dst, kind=KIND, model=cfg.to_dict(), params=params, source=info)``
(``KIND`` of :mod:`jaxedit.models.e4e` / :mod:`jaxedit.models.irse`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import ml_dtypes
import numpy as np

from jaxedit.io.files import sha256
from jaxedit.errors import FormatError, InputError
from jaxedit.io import torchfile
from jaxedit.models.e4e import E4EConfig, Encoder
from jaxedit.models.irse import ArcFace, ArcFaceConfig

CONVERTER_VERSION = "e4e-1"
#: The reference's hard-coded body units whose outputs are c1, c2, c3 (IR-SE50: the ends of stages 2-4).
E4E_FEATURE_UNITS = (6, 20, 23)
_FLOATS = (np.float16, np.float32, np.float64, ml_dtypes.bfloat16)
_BN = {"weight": "scale", "bias": "bias", "running_mean": "mean", "running_var": "var"}
_BNF = r"\.(?P<f>weight|bias|running_mean|running_var)"
DROPPED = re.compile(r"\.num_batches_tracked$")


class ConversionError(FormatError):
    """The source cannot be converted; the message names the file and the key."""


def _hwio(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0)  # OIHW -> HWIO


def _t(a: np.ndarray) -> np.ndarray:
    return a.T  # torch Linear [out, in] -> [in, out]


#: (torch-name regex, jaxedit path template, transform); a template ending in ``.`` is a BatchNorm whose
#: leaf comes from the ``f`` group (weight -> scale, running_mean -> mean, ...).
BACKBONE_RULES: tuple = (
    (r"input_layer\.0\.weight", "backbone.input_conv.kernel", _hwio),
    (r"input_layer\.1" + _BNF, "backbone.input_bn.", None),
    (r"input_layer\.2\.weight", "backbone.input_prelu.alpha", None),
    (r"body\.(\d+)\.res_layer\.0" + _BNF, r"backbone.body_\1.bn1.", None),
    (r"body\.(\d+)\.res_layer\.1\.weight", r"backbone.body_\1.conv1.kernel", _hwio),
    (r"body\.(\d+)\.res_layer\.2\.weight", r"backbone.body_\1.prelu.alpha", None),
    (r"body\.(\d+)\.res_layer\.3\.weight", r"backbone.body_\1.conv2.kernel", _hwio),
    (r"body\.(\d+)\.res_layer\.4" + _BNF, r"backbone.body_\1.bn2.", None),
    (r"body\.(\d+)\.res_layer\.5\.fc([12])\.weight", r"backbone.body_\1.se_fc\2.kernel", _hwio),
    (r"body\.(\d+)\.shortcut_layer\.0\.weight", r"backbone.body_\1.shortcut_conv.kernel", _hwio),
    (r"body\.(\d+)\.shortcut_layer\.1" + _BNF, r"backbone.body_\1.shortcut_bn.", None),
)
E4E_RULES: tuple = BACKBONE_RULES + (
    (r"styles\.(\d+)\.convs\.(\d*[02468])\.(weight|bias)", None, None),  # see _e4e_conv (Sequential index / 2)
    (r"styles\.(\d+)\.linear\.weight", r"styles_\1.linear.weight", _t),
    (r"styles\.(\d+)\.linear\.bias", r"styles_\1.linear.bias", None),
    (r"latlayer([12])\.weight", r"latlayer\1.kernel", _hwio),
    (r"latlayer([12])\.bias", r"latlayer\1.bias", None),
)
ARCFACE_RULES: tuple = BACKBONE_RULES + (
    (r"output_layer\.0" + _BNF, "output_bn.", None),
    (r"output_layer\.3\.weight", "output_linear.kernel", None),  # permuted in to_params (needs the config)
    (r"output_layer\.3\.bias", "output_linear.bias", None),
    (r"output_layer\.4" + _BNF, "output_bn1d.", None),
)


def jax_name(torch_name: str, rules: tuple) -> tuple[str, Callable | None] | None:
    """Torch name (no ``encoder.`` prefix) -> (dotted jaxedit path, transform), or None if no rule matches."""
    for pattern, template, fn in rules:
        m = re.fullmatch(pattern, torch_name)
        if not m:
            continue
        if template is None:  # GradualStyleBlock convs: Sequential(conv, lrelu, conv, lrelu, ...)
            leaf = "kernel" if m.group(3) == "weight" else "bias"
            return f"styles_{m.group(1)}.convs_{int(m.group(2)) // 2}.{leaf}", _hwio if leaf == "kernel" else None
        path = m.expand(template)
        return (path + _BN[m.group("f")] if path.endswith(".") else path), fn
    return None


_BN_INV = {v: k for k, v in _BN.items()}
_INVERSE: tuple = (  # jaxedit path (without the BN leaf for templates ending in ".") -> torch name
    (r"backbone\.input_conv\.kernel", "input_layer.0.weight"),
    (r"backbone\.input_bn\.", "input_layer.1."),
    (r"backbone\.input_prelu\.alpha", "input_layer.2.weight"),
    (r"backbone\.body_(\d+)\.bn1\.", r"body.\1.res_layer.0."),
    (r"backbone\.body_(\d+)\.conv1\.kernel", r"body.\1.res_layer.1.weight"),
    (r"backbone\.body_(\d+)\.prelu\.alpha", r"body.\1.res_layer.2.weight"),
    (r"backbone\.body_(\d+)\.conv2\.kernel", r"body.\1.res_layer.3.weight"),
    (r"backbone\.body_(\d+)\.bn2\.", r"body.\1.res_layer.4."),
    (r"backbone\.body_(\d+)\.se_fc([12])\.kernel", r"body.\1.res_layer.5.fc\2.weight"),
    (r"backbone\.body_(\d+)\.shortcut_conv\.kernel", r"body.\1.shortcut_layer.0.weight"),
    (r"backbone\.body_(\d+)\.shortcut_bn\.", r"body.\1.shortcut_layer.1."),
    (r"styles_(\d+)\.linear\.(weight|bias)", r"styles.\1.linear.\2"),
    (r"latlayer([12])\.kernel", r"latlayer\1.weight"),
    (r"latlayer([12])\.bias", r"latlayer\1.bias"),
    (r"output_bn\.", "output_layer.0."),
    (r"output_linear\.kernel", "output_layer.3.weight"),
    (r"output_linear\.bias", "output_layer.3.bias"),
    (r"output_bn1d\.", "output_layer.4."),
)


def torch_name(jname: str) -> str:
    """Inverse of :func:`jax_name` (for messages and checks); unknown paths are returned unchanged."""
    m = re.fullmatch(r"styles_(\d+)\.convs_(\d+)\.(kernel|bias)", jname)
    if m:
        return f"styles.{m.group(1)}.convs.{2 * int(m.group(2))}.{'weight' if m.group(3) == 'kernel' else 'bias'}"
    head, _, leaf = jname.rpartition(".")
    for pattern, template in _INVERSE:
        if pattern.endswith("\\.") and leaf in _BN_INV and (m := re.fullmatch(pattern, head + ".")):
            return m.expand(template) + _BN_INV[leaf]
        if (m := re.fullmatch(pattern, jname)):
            return m.expand(template)
    return jname


# ------------------------------------------------------------------------------ reading and checks
def _checked(sd: Any, name: str, what: str, prefix: str = "") -> dict[str, np.ndarray]:
    """The state dict's arrays, every key a str and every value a floating-point array (BN counters dropped).
    ``prefix``: what the file's keys carry before these names (for messages)."""
    if not isinstance(sd, dict):
        raise ConversionError(f"{name}: {what} is {torchfile.describe(sd)}, not a state dict")
    out = {}
    for k, v in sd.items():
        if not isinstance(k, str):
            raise ConversionError(f"{name}: {what} has a non-string key {torchfile.describe(k)}")
        if DROPPED.search(k):
            continue
        if not isinstance(v, np.ndarray) or v.dtype.type not in _FLOATS:
            raise ConversionError(f"{name}: tensor {torchfile.describe(prefix + k)} is {torchfile.describe(v)}, "
                                  "not a floating-point array")
        out[k] = v
    return out


def _shape(sd: dict, key: str, name: str, ndim: int, prefix: str = "") -> tuple[int, ...]:
    if key not in sd:
        raise ConversionError(f"{name}: missing tensor {prefix + key!r}")
    if sd[key].ndim != ndim:
        raise ConversionError(f"{name}: tensor {prefix + key!r} has shape {list(sd[key].shape)}, not {ndim}-D")
    return tuple(sd[key].shape)


def _indices(sd: dict, pattern: str, name: str, what: str) -> list[int]:
    """The integers N of keys matching ``pattern`` (one group), checked to be 0..n-1."""
    found = sorted({int(m.group(1)) for k in sd if (m := re.match(pattern, k))})
    if found != list(range(len(found))):
        raise ConversionError(f"{name}: {what} are not numbered 0..n-1 (found {found[:12]})")
    return found


def backbone_structure(sd: dict[str, np.ndarray], name: str, prefix: str = "") -> dict[str, Any]:
    """IRSEConfig fields read from a backbone state dict (names without ``prefix``, which messages show)."""
    c_in = _shape(sd, "input_layer.0.weight", name, 4, prefix)
    if c_in[1:] != (3, 3, 3):
        raise ConversionError(f"{name}: tensor '{prefix}input_layer.0.weight' has shape {list(c_in)}, "
                              "not [C, 3, 3, 3]")
    units = _indices(sd, r"body\.(\d+)\.", name, "body units")
    if not units:
        raise ConversionError(f"{name}: no {prefix}body.N.* tensors (not an IR-SE backbone)")
    stage_units, stage_channels, se_widths = [], [], []
    prev = c_in[0]
    for i in units:
        cin = _shape(sd, f"body.{i}.res_layer.0.weight", name, 1, prefix)[0]
        depth = _shape(sd, f"body.{i}.res_layer.1.weight", name, 4, prefix)[0]
        if cin != prev:
            raise ConversionError(f"{name}: tensor '{prefix}body.{i}.res_layer.0.weight' has {cin} channels, but "
                                  f"the previous layer gives {prev}")
        if i == 0 or f"body.{i}.shortcut_layer.0.weight" in sd:
            stage_units.append(0)
            stage_channels.append(depth)
        elif depth != cin:
            raise ConversionError(f"{name}: unit {prefix}body.{i} maps {cin} to {depth} channels without a "
                                  "shortcut_layer.0 conv")
        stage_units[-1] += 1
        key = f"body.{i}.res_layer.5.fc1.weight"
        se_widths.append((depth, _shape(sd, key, name, 4, prefix)[0]) if key in sd else (depth, 0))
        prev = depth
    hidden = [h for _, h in se_widths]
    if any(hidden) and not all(hidden):
        raise ConversionError(f"{name}: only some units have an SE module (res_layer.5)")
    reduction = se_widths[0][0] // se_widths[0][1] if all(hidden) else 0
    if reduction and any(d // reduction != h for d, h in se_widths):
        raise ConversionError(f"{name}: SE widths {sorted(set(se_widths))[:4]} do not follow one reduction "
                              "(depth // r)")
    return {"input_channels": c_in[0], "stage_units": tuple(stage_units), "stage_channels": tuple(stage_channels),
            "stage_strides": (2,) * len(stage_units), "se_reduction": reduction}


def to_params(sd: dict[str, np.ndarray], rules: tuple, expected: dict, name: str, prefix: str = "",
              special: Callable[[str, np.ndarray], np.ndarray] | None = None) -> dict:
    """Map every tensor by ``rules`` (float32, C order) and check names and shapes against ``expected``
    (the handle's ``param_shapes()``). Messages name the torch key (with ``prefix``)."""
    params: dict = {}
    origin: dict[str, str] = {}
    for tname, arr in sd.items():
        mapped = jax_name(tname, rules)
        if mapped is None:
            raise ConversionError(f"{name}: unexpected tensor {torchfile.describe(prefix + tname)} "
                                  f"{list(arr.shape)}")
        jname, fn = mapped
        a = np.asarray(arr, np.float32)
        if fn is _hwio and a.ndim != 4 or fn is _t and a.ndim != 2:
            raise ConversionError(f"{name}: tensor {torchfile.describe(prefix + tname)} has shape {list(a.shape)}, "
                                  f"not a {'conv' if fn is _hwio else 'linear'} weight")
        a = fn(a) if fn is not None else a
        if special is not None:
            a = special(jname, a)
        *parents, leaf = jname.split(".")
        node = params
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.array(a, np.float32, order="C")  # a copy: detached from the file's memory map
        origin[jname] = prefix + tname
    flat = lambda tree: {".".join(str(k.key) for k in path): v for path, v in jax.tree_util.tree_leaves_with_path(tree)}
    want, got = flat(expected), flat(params)
    unexpected = sorted(torchfile.describe(origin[k]) for k in set(got) - set(want))
    if unexpected:
        raise ConversionError(f"{name}: unexpected tensors {', '.join(unexpected[:5])} for the inferred "
                              "architecture")
    missing = sorted(prefix + torch_name(k) for k in set(want) - set(got))
    if missing:
        raise ConversionError(f"{name}: missing tensors {missing[:5]} for the inferred architecture")
    for k, s in want.items():
        if tuple(got[k].shape) != tuple(s.shape):
            src = origin[k]
            raise ConversionError(f"{name}: tensor {torchfile.describe(src)} has shape "
                                  f"{list(np.shape(sd[src[len(prefix):]]))}, which does not fit the inferred "
                                  f"architecture (expected {list(s.shape)} after layout)")
    return params


# ------------------------------------------------------------------------------ e4e
def _opts(obj: dict, name: str) -> dict | None:
    opts = obj.get("opts")
    if opts is None:
        return None
    if isinstance(opts, torchfile.Namespace):
        opts = vars(opts)
    if not isinstance(opts, dict):
        raise ConversionError(f"{name}: 'opts' is {torchfile.describe(opts)}, not a dict")
    return opts


def _pools(sd: dict, i: int, name: str) -> int:
    """Number of stride-2 convs of style block ``i`` (Sequential indices 0, 2, 4, ...: LeakyReLUs between)."""
    idx = sorted(int(m.group(1)) for k in sd if (m := re.fullmatch(rf"styles\.{i}\.convs\.(\d+)\.weight", k)))
    if not idx or idx != list(range(0, 2 * len(idx), 2)):
        raise ConversionError(f"{name}: style block encoder.styles.{i}'s convs are not numbered 0, 2, 4, ... "
                              f"(found {idx[:8]})")
    return len(idx)


def from_e4e(obj: Any, name: str) -> tuple[E4EConfig, dict, dict[str, Any]]:
    """The object of an e4e checkpoint (``torchfile.load``'s result) -> ``(config, params, info)``."""
    if not isinstance(obj, dict) or "state_dict" not in obj:
        what = ", ".join(sorted(map(torchfile.describe, obj))[:8]) if isinstance(obj, dict) else torchfile.describe(obj)
        raise ConversionError(f"{name}: not an e4e checkpoint (no 'state_dict'; top level: {what})")
    full = obj["state_dict"]
    if not isinstance(full, dict):
        raise ConversionError(f"{name}: 'state_dict' is {torchfile.describe(full)}, not a dict")
    others = sorted(torchfile.describe(k) for k in full
                    if not (isinstance(k, str) and k.startswith(("encoder.", "decoder."))))
    if others:
        raise ConversionError(f"{name}: unexpected tensors {', '.join(others[:5])} (an e4e state dict holds "
                              "encoder.* and decoder.*)")
    n_decoder = sum(k.startswith("decoder.") for k in full)
    sd = _checked({k[len("encoder."):]: v for k, v in full.items() if k.startswith("encoder.")}, name,
                  "'state_dict'", "encoder.")
    if not sd:
        raise ConversionError(f"{name}: no encoder.* tensors in 'state_dict'")
    opts = _opts(obj, name)
    encoder_type = (opts or {}).get("encoder_type", "Encoder4Editing")
    if encoder_type != "Encoder4Editing":
        raise ConversionError(f"{name}: encoder_type {torchfile.describe(encoder_type)} in 'opts'; only "
                              "Encoder4Editing (e4e) converts")

    structure = backbone_structure(sd, name, "encoder.")
    styles = _indices(sd, r"styles\.(\d+)\.", name, "style blocks")
    if not styles:
        raise ConversionError(f"{name}: missing tensor 'encoder.styles.0.linear.weight'")
    pools = tuple(_pools(sd, i, name) for i in styles)
    width = _shape(sd, "styles.0.convs.0.weight", name, 4, "encoder.")[0]
    w_dim = _shape(sd, "styles.0.linear.weight", name, 2, "encoder.")[0]
    size = (opts or {}).get("stylegan_size")
    if size is not None:
        if not isinstance(size, int) or size < 4 or size & (size - 1):
            raise ConversionError(f"{name}: opts stylegan_size is {torchfile.describe(size)}, not a power of two")
        if 2 * int(math.log2(size)) - 2 != len(styles):
            raise ConversionError(f"{name}: {len(styles)} style blocks, but opts stylegan_size {size} needs "
                                  f"{2 * int(math.log2(size)) - 2}")
    n_units = sum(structure["stage_units"])
    if n_units <= E4E_FEATURE_UNITS[-1]:
        raise ConversionError(f"{name}: the body has {n_units} units; e4e reads units {E4E_FEATURE_UNITS}")

    add = (opts or {}).get("start_from_latent_avg", True)
    if not isinstance(add, bool):
        raise ConversionError(f"{name}: opts start_from_latent_avg is {torchfile.describe(add)}, not a bool")
    latent_avg = obj.get("latent_avg")
    if add and latent_avg is None:
        raise ConversionError(f"{name}: opts start_from_latent_avg is set but the checkpoint has no 'latent_avg' "
                              "(the reference would estimate it from the generator)")
    try:
        cfg = E4EConfig(**structure, n_styles=len(styles), style_width=width, w_dim=w_dim, style_pools=pools,
                        feature_units=E4E_FEATURE_UNITS, add_latent_avg=add)
    except InputError as e:
        raise ConversionError(f"{name}: inconsistent architecture ({e})") from None
    expected = {k: v for k, v in Encoder(cfg).param_shapes().items() if k != "latent_avg"}  # not a state-dict entry
    params = to_params(sd, E4E_RULES, expected, name, prefix="encoder.")
    if add:
        if not isinstance(latent_avg, np.ndarray) or latent_avg.dtype.type not in _FLOATS:
            raise ConversionError(f"{name}: 'latent_avg' is {torchfile.describe(latent_avg)}, not a float array")
        if latent_avg.shape not in ((w_dim,), (1, w_dim), (len(styles), w_dim)):
            raise ConversionError(f"{name}: 'latent_avg' has shape {list(latent_avg.shape)}, expected "
                                  f"[{len(styles)}, {w_dim}] or [{w_dim}]")
        params["latent_avg"] = np.array(np.broadcast_to(np.asarray(latent_avg, np.float32), (len(styles), w_dim)))
    info = {"format": "e4e", "converter": CONVERTER_VERSION, "encoder_type": encoder_type,
            "stylegan_size": size, "latent_avg": bool(add),
            "decoder": {"present": n_decoder > 0, "tensors": n_decoder,
                        "note": "the StyleGAN2 generator (rosinality layout), not converted here"},
            "dropped": ["num_batches_tracked"] if any(DROPPED.search(k) for k in full) else []}
    return cfg, params, info


def convert_e4e(path: str | Path) -> tuple[E4EConfig, dict, dict[str, Any]]:
    """Read an e4e ``.pt`` and return ``(E4EConfig, params, info)``; ``info`` is the provenance."""
    path = Path(path)
    cfg, params, info = from_e4e(torchfile.load(path), path.name)
    return cfg, params, {"file": path.name, "sha256": sha256(path), **info}


# ------------------------------------------------------------------------------ ArcFace
def from_arcface(obj: Any, name: str) -> tuple[ArcFaceConfig, dict, dict[str, Any]]:
    """An ArcFace state dict (``torchfile.load``'s result) -> ``(config, params, info)``."""
    if isinstance(obj, dict) and "state_dict" in obj:
        raise ConversionError(f"{name}: a checkpoint with a 'state_dict' (an e4e / pSp file?), not an ArcFace "
                              "state dict (input_layer.*, body.*, output_layer.*)")
    sd = _checked(obj, name, "the file")
    if "output_layer.3.weight" not in sd:
        hint = " (an e4e encoder: convert it with convert_e4e)" if "styles.0.linear.weight" in sd else ""
        raise ConversionError(f"{name}: missing tensor 'output_layer.3.weight': not an ArcFace (IR-SE) state "
                              f"dict{hint}")
    structure = backbone_structure(sd, name)
    embed, flat = _shape(sd, "output_layer.3.weight", name, 2)
    c = structure["stage_channels"][-1]
    side = math.isqrt(flat // c) if flat % c == 0 else 0
    if side * side * c != flat:
        raise ConversionError(f"{name}: tensor 'output_layer.3.weight' has {flat} inputs, not {c} x S x S "
                              "(the body's last width times a square map)")
    affine = "output_layer.4.weight" in sd or "output_layer.4.bias" in sd
    if not affine:  # BatchNorm1d(affine=False)
        sd = {**sd, "output_layer.4.weight": np.ones((embed,), np.float32),
              "output_layer.4.bias": np.zeros((embed,), np.float32)}
    try:
        cfg = ArcFaceConfig(**structure, embed_dim=embed, output_size=side)
    except InputError as e:
        raise ConversionError(f"{name}: inconsistent architecture ({e})") from None

    def permute(jname: str, a: np.ndarray) -> np.ndarray:
        if jname != "output_linear.kernel":
            return a
        # torch flattens [C, S, S] maps; jaxedit flattens NHWC [S, S, C]: reorder the columns, then [in, out]
        return a.reshape(embed, c, side, side).transpose(2, 3, 1, 0).reshape(side * side * c, embed)

    params = to_params(sd, ARCFACE_RULES, ArcFace(cfg).param_shapes(), name, special=permute)
    info = {"format": "arcface-irse", "converter": CONVERTER_VERSION, "input_size": cfg.input_size,
            "output_bn_affine": affine,
            "dropped": ["num_batches_tracked"] if any(DROPPED.search(k) for k in obj) else []}
    return cfg, params, info


def convert_arcface(path: str | Path) -> tuple[ArcFaceConfig, dict, dict[str, Any]]:
    """Read ``model_ir_se50.pth`` (or any IR / IR-SE ``Backbone`` state dict) -> ``(ArcFaceConfig, params, info)``."""
    path = Path(path)
    cfg, params, info = from_arcface(torchfile.load(path), path.name)
    return cfg, params, {"file": path.name, "sha256": sha256(path), **info}
