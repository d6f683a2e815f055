"""OpenAI CLIP checkpoints -> jaxedit params (no torch needed).

Sources: the released TorchScript archives (``ViT-B-32.pt``, ``RN50.pt``, ...: a scripted
``CLIP`` module, read as an inert ``ScriptObject``) and plain ``torch.save`` state dicts with
the same names (``clip.load(..., jit=False)`` fallback, open_clip's ``-quickgelu`` models).
The architecture is read from tensor shapes as openai/CLIP's ``build_model`` does (ViT iff
``visual.proj`` exists; heads = width // 64); fp16 leaves become float32; the scalar entries
``input_resolution``, ``context_length``, ``vocab_size``, BN ``num_batches_tracked`` and
TorchScript ``attn_mask`` buffers are dropped. Names map by :data:`RULES` (see
``jaxedit.models.clip``).

``convert(path)`` -> ``(CLIPConfig, params, info)``; ``save(dst, cfg, params, info, vocab)``
writes the jaxedit checkpoint (kind ``"clip"``), copies the BPE merges file beside it and
verifies the reload.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jaxedit.io.files import sha256
from jaxedit.errors import CheckpointError, FormatError
from jaxedit.io import checkpoint, torchfile
from jaxedit.models import clip as clip_model
from jaxedit.models.clip import CLIP, CLIPConfig
from jaxedit.models.clip.tokenizer import VOCAB_FILE, Tokenizer, find_vocab

CONVERTER_VERSION = "clip-1"
DROPPED = re.compile(r"^(input_resolution|context_length|vocab_size)$|\.(num_batches_tracked|attn_mask)$")


class ConversionError(FormatError):
    """The source cannot be converted; the message names the file and the key."""


def _t(a: np.ndarray) -> np.ndarray:
    return a.T  # torch [out, in] -> [in, out]


def _hwio(a: np.ndarray) -> np.ndarray:
    return a.transpose(2, 3, 1, 0)  # OIHW -> HWIO


#: (torch-name regex, jaxedit-name template, array transform), first match wins; applied after
#: ``<name>.<i>`` -> ``<name>_<i>`` (``resblocks.3`` -> ``resblocks_3``, ``layer2.0``, ``downsample.1``).
RULES: tuple = (
    (r"^(.*)\.in_proj_weight$", r"\1.in_proj.kernel", _t),
    (r"^(.*)\.in_proj_bias$", r"\1.in_proj.bias", None),
    (r"^(.*(?:conv\d|downsample_0))\.weight$", r"\1.kernel", _hwio),
    (r"^(.*(?:bn\d|downsample_1))\.weight$", r"\1.scale", None),
    (r"^(.*(?:bn\d|downsample_1))\.running_mean$", r"\1.mean", None),
    (r"^(.*(?:bn\d|downsample_1))\.running_var$", r"\1.var", None),
    (r"^(.*ln_\w+)\.weight$", r"\1.scale", None),
    (r"^token_embedding\.weight$", "token_embedding.embedding", None),
    (r"^(.*)\.weight$", r"\1.kernel", _t),  # the remaining Linear layers
    (r"^(.*)$", r"\1", None),  # biases and bare parameters (embeddings, proj, logit_scale)
)


def jax_name(torch_name: str) -> tuple[str, Any]:
    """Torch state-dict name -> (dotted jaxedit name, transform or None)."""
    name = re.sub(r"\.(\d+)(?=\.|$)", r"_\1", torch_name)
    pattern, template, fn = next(rule for rule in RULES if re.match(rule[0], name))  # the last rule matches all
    return re.sub(pattern, template, name), fn


def torch_name(jname: str) -> str:
    """Inverse of :func:`jax_name` (for messages and checks)."""
    n = re.sub(r"\.in_proj\.kernel$", ".in_proj_weight", jname)
    n = re.sub(r"\.in_proj\.bias$", ".in_proj_bias", n)
    n = re.sub(r"\.(kernel|scale)$", ".weight", n)
    n = re.sub(r"\.(mean|var)$", r".running_\1", n)
    n = re.sub(r"^token_embedding\.embedding$", "token_embedding.weight", n)
    return re.sub(r"(resblocks|layer\d|downsample)_(\d+)(?=\.)", r"\1.\2", n)


def state_dict(path: str | Path) -> tuple[dict[str, np.ndarray], str]:
    """The torch state dict of a CLIP file and its kind (``"torchscript"`` or ``"state_dict"``)."""
    path = Path(path)
    obj = torchfile.load(path)  # TorchFileError (a ValueError) names the file
    if isinstance(obj, torchfile.ScriptObject):
        return torchfile.module_state_dict(obj), "torchscript"
    if isinstance(obj, dict) and all(isinstance(k, str) and isinstance(v, np.ndarray) for k, v in obj.items()):
        return dict(obj), "state_dict"
    what = sorted(map(torchfile.describe, obj))[:8] if isinstance(obj, dict) else type(obj).__name__
    raise ConversionError(f"{path.name}: not a CLIP TorchScript archive or state dict (top level: {what})")


def infer_config(sd: dict[str, np.ndarray], name: str) -> CLIPConfig:
    """openai/CLIP ``build_model``'s reading of the architecture from shapes."""
    def shape(key: str) -> tuple[int, ...]:
        if key not in sd:
            raise ConversionError(f"{name}: missing tensor {key!r} (not an OpenAI-layout CLIP state dict?)")
        if sd[key].ndim == 0:
            raise ConversionError(f"{name}: tensor {key!r} is a scalar, not an array")
        return tuple(sd[key].shape)

    def count(prefix: str) -> int:
        return len({k[len(prefix):].split(".")[0] for k in sd if k.startswith(prefix)})

    if "visual.proj" in sd:
        conv1 = shape("visual.conv1.weight")
        grid = round((shape("visual.positional_embedding")[0] - 1) ** 0.5)
        kw = dict(vision_layers=count("visual.transformer.resblocks."), vision_width=conv1[0],
                  vision_patch_size=conv1[-1], image_resolution=conv1[-1] * grid)
    else:
        pos = shape("visual.attnpool.positional_embedding")[0]
        grid = round((pos - 1) ** 0.5)
        if grid * grid + 1 != pos:
            raise ConversionError(f"{name}: visual.attnpool.positional_embedding has {pos} rows, not a square + 1")
        kw = dict(vision_layers=tuple(count(f"visual.layer{i}.") for i in range(1, 5)),
                  vision_width=shape("visual.layer1.0.conv1.weight")[0], vision_patch_size=None,
                  image_resolution=grid * 32)
    width = shape("ln_final.weight")[0]
    kw.update(embed_dim=shape("text_projection")[-1], context_length=shape("positional_embedding")[0],
              vocab_size=shape("token_embedding.weight")[0], transformer_width=width, transformer_heads=width // 64,
              transformer_layers=count("transformer.resblocks."))
    try:
        return CLIPConfig(**kw)
    except ValueError as e:
        raise ConversionError(f"{name}: inconsistent architecture ({e})") from None


def to_params(sd: dict[str, np.ndarray], cfg: CLIPConfig, name: str) -> dict:
    """Map every tensor by :data:`RULES` (float32) and check the tree against ``cfg``'s shapes."""
    params: dict = {}
    origin: dict[str, str] = {}
    for tname, arr in sd.items():
        if DROPPED.search(tname):
            continue
        jname, fn = jax_name(tname)
        a = np.asarray(arr, np.float32)
        if fn is _hwio and a.ndim != 4:
            raise ConversionError(f"{name}: tensor {torchfile.describe(tname)} has shape {list(a.shape)}, not a 4-D conv weight")
        a = fn(a) if fn is not None else a
        *parents, leaf = jname.split(".")
        node = params
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = np.array(a, order="C")  # a C-ordered copy (also detaches it from the file's memory map)
        origin[jname] = tname
    expected = {".".join(str(k.key) for k in path): v.shape
                for path, v in jax.tree_util.tree_leaves_with_path(CLIP(cfg).param_shapes())}
    got = {".".join(str(k.key) for k in path): np.shape(v) for path, v in jax.tree_util.tree_leaves_with_path(params)}
    unexpected = sorted(origin[k] for k in set(got) - set(expected))
    if unexpected:
        raise ConversionError(f"{name}: unexpected tensors {unexpected[:5]} for the inferred architecture")
    missing = sorted(torch_name(k) for k in set(expected) - set(got))
    if missing:
        raise ConversionError(f"{name}: missing tensors {missing[:5]} for the inferred architecture")
    for k, s in expected.items():
        if tuple(got[k]) != tuple(s):
            raise ConversionError(f"{name}: tensor {torchfile.describe(origin[k])} has shape {list(np.shape(sd[origin[k]]))}, "
                                  f"which does not fit the inferred architecture (expected {list(s)} after layout)")
    return params


def convert(path: str | Path) -> tuple[CLIPConfig, dict, dict[str, Any]]:
    """Read an OpenAI CLIP ``.pt`` and return ``(config, params, info)``; ``info`` is the provenance."""
    path = Path(path)
    sd, kind = state_dict(path)
    cfg = infer_config(sd, path.name)
    params = to_params(sd, cfg, path.name)
    info = {"file": path.name, "sha256": sha256(path), "converter": CONVERTER_VERSION, "format": kind,
            "fp16_tensors": int(sum(np.asarray(a).dtype == np.float16 for a in sd.values())),
            "dropped": sorted({DROPPED.search(k).group(0).lstrip(".") for k in sd if DROPPED.search(k)})}
    return cfg, params, info


# ------------------------------------------------------------------------------ vocab and saving
def default_vocab(src: str | Path) -> Path | None:
    """The BPE merges file next to a source checkpoint, if there is one (``bpe_simple_vocab_16e6.txt.gz``)."""
    p = Path(src).parent / VOCAB_FILE
    return p if p.is_file() else None


def save(dst: str | Path, cfg: CLIPConfig, params: dict, info: dict[str, Any], vocab: str | Path | None = None,
         force: bool = False, replace_kind: bool = False) -> tuple[Path, str]:
    """Write the checkpoint (kind ``"clip"``) carrying ``vocab``, reload and compare.

    ``vocab`` (a merges file or a folder holding one) must give ``cfg.vocab_size`` tokens.
    Returns ``(path, summary of the check)``.
    """
    files = {}
    if vocab is not None:
        vocab = find_vocab(vocab)
        files[vocab.name] = vocab
    checkpoint.check_writable(dst, force, "clip", new_files=tuple(files), replace_kind=replace_kind)
    if vocab is not None:
        n = Tokenizer.from_file(vocab).vocab_size
        if n != cfg.vocab_size:
            raise ConversionError(f"{find_vocab(vocab)}: the merges give {n} tokens but the model has "
                                  f"vocab_size {cfg.vocab_size}")
    source = {**info, "vocab": find_vocab(vocab).name if vocab is not None else None, "preprocess": "clip"}
    dst = checkpoint.save(dst, kind="clip", model=cfg.to_dict(), params=params, source=source, files=files,
                          force=force, replace_kind=replace_kind)
    model, reloaded = clip_model.load(dst)
    if model.cfg != cfg:
        raise CheckpointError(f"{dst}: reloaded config differs from the converted one")
    mine, theirs = jax.tree.leaves(params), jax.tree.leaves(reloaded)
    if len(mine) != len(theirs) or not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(mine, theirs)):
        raise CheckpointError(f"{dst}: reloaded parameters differ from the converted ones")
    r = cfg.image_resolution
    images = jax.random.normal(jax.random.key(0), (1, r, r, 3))
    tokens = np.zeros((1, cfg.context_length), np.int32)
    tokens[0, :3] = [cfg.vocab_size - 2, 1, cfg.vocab_size - 1]
    fwd = jax.jit(lambda p: model(p, images, tokens)[0])
    a, b = np.asarray(fwd(params)), np.asarray(fwd(reloaded))
    if not np.all(np.isfinite(a)) or not np.array_equal(a, b):
        raise CheckpointError(f"{dst}: reloaded model's forward pass differs")
    if vocab is not None:
        Tokenizer.from_file(dst)
    return dst, "config and parameters bit-identical, forward pass identical" + (", vocab copied" if vocab else "")
