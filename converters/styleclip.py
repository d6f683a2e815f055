"""Released StyleCLIP artifacts -> jaxedit arrays (no torch).

- global directions ``fs3.npy`` (``(C, 512)`` channel relevance) -> :func:`load_fs3`;
- latent mappers ``mapper/*.pt`` (``LevelsMapper`` in W+) -> :func:`load_mapper` ->
  ``(jaxedit.edits.mapper_lib.Mapper, params, description)``; ``jaxedit convert mapper`` writes them as
  a jaxedit checkpoint (``jaxedit.edits.mapper_lib.save_mappers``).

Errors are :class:`jaxedit.edits.text.InputError` (a ``ValueError``) naming the file and the key.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.edits.text.global_directions import fs3_layers, style_dims
from jaxedit.errors import InputError
from jaxedit.io import arrays, torchfile
from jaxedit.models.mapper import MAPPER_GROUPS, Mapper, MapperConfig
from jaxedit.models.stylegan2 import StyleGAN2

_TORCH_GROUPS = {"coarse": "course_mapping", "medium": "medium_mapping", "fine": "fine_mapping"}


def load_fs3(path: str | Path, G: StyleGAN2 | None = None, embed_dim: int | None = None) -> np.ndarray:
    """A released ``fs3.npy`` (``(C, 512)`` float32, e.g. ``global_torch/npy/ffhq/fs3.npy``) -> ``[C, D]`` float32.

    With ``G``: C must cover whole non-ToRGB layers of G in synthesis order (:func:`fs3_layers`);
    with ``embed_dim``: D must match the CLIP in use. Errors name the file.
    """
    path = Path(path)
    a = arrays.load_one(path, "fs3", kinds="f")
    if a.ndim != 2:
        raise InputError(f"{path}: expected a float array of shape (C, D), got {a.dtype} {a.shape}")
    if embed_dim is not None and a.shape[1] != embed_dim:
        raise InputError(f"{path}: fs3 has shape {a.shape}, expected (C, {embed_dim}) for this CLIP")
    if not np.all(np.isfinite(a)):
        raise InputError(f"{path}: fs3 contains non-finite values")
    if G is not None:
        fs3_layers(style_dims(G), a.shape[0], where=f"{path}: fs3 of shape {a.shape}")
    return a.astype(np.float32)


def load_mapper(path: str | Path, num_ws: int | None = None) -> tuple[Mapper, dict, str]:
    """A released StyleCLIP mapper ``.pt`` (``{'state_dict': {mapper.*, decoder.*}, 'opts': {...}}``) ->
    ``(Mapper, params, description)``, the description being the text it was trained for
    (``opts['description']``, '' if absent). Only ``mapper.*`` is read (the bundled StyleGAN2
    decoder is ignored).

    ``mapper.{course,medium,fine}_mapping.mapping.{1..depth}.{weight (out, in), bias}`` become
    ``{coarse,medium,fine}.fc{0..}.{weight [in, out], bias}`` (index 0 is the parameter-free
    PixelNorm; "course" is the reference's spelling); a missing group is disabled, as
    ``--no_*_mapper``. ``num_ws`` defaults to ``2 log2(opts['stylegan_size']) - 2`` (18 for
    1024). Only ``LevelsMapper`` in W+ is supported.
    """
    path = Path(path)
    try:
        obj: Any = torchfile.load(path)
    except torchfile.TorchFileError as e:
        raise InputError(f"{path}: cannot read the torch file ({e})") from e
    except OSError as e:
        raise InputError(f"{path}: cannot open ({e})") from e
    if not isinstance(obj, dict):
        raise InputError(f"{path}: expected a dict with 'state_dict', got {type(obj).__name__}")
    sd = obj.get("state_dict", obj)
    opts = obj.get("opts") or {}
    opts = opts if isinstance(opts, dict) else getattr(opts, "__dict__", None)
    if not isinstance(sd, dict) or not isinstance(opts, dict):
        raise InputError(f"{path}: 'state_dict' / 'opts' are not dicts or namespaces")
    if opts.get("work_in_stylespace"):
        raise InputError(f"{path}: StyleSpace mappers (work_in_stylespace) are not supported")
    if opts.get("mapper_type", "LevelsMapper") != "LevelsMapper":
        raise InputError(f"{path}: mapper_type {opts['mapper_type']!r} is not supported (LevelsMapper only)")
    groups, depth, w_dim = [], None, None
    for g in MAPPER_GROUPS:
        prefix = f"mapper.{_TORCH_GROUPS[g]}.mapping."
        heads = {k[len(prefix):].split(".")[0] for k in sd if isinstance(k, str) and k.startswith(prefix)}
        if not all(h.isdigit() for h in heads):
            raise InputError(f"{path}: unexpected keys under '{prefix}': layers {sorted(heads)}")
        idx = sorted(int(h) for h in heads)
        groups.append(bool(idx))
        if not idx:
            continue
        if idx != list(range(1, len(idx) + 1)) or (depth is not None and len(idx) != depth):
            raise InputError(f"{path}: '{prefix}*' has layers {idx}, expected 1..{depth or len(idx)}")
        depth = len(idx)
    if depth is None:
        raise InputError(f"{path}: no 'mapper.*_mapping.mapping.*' tensors found")
    if num_ws is None:
        size = opts.get("stylegan_size")
        if not isinstance(size, int) or size < 4 or size & (size - 1):
            raise InputError(f"{path}: opts has no valid 'stylegan_size' ({size!r}), so the W+ size is "
                                    "unknown (in Python: load_mapper(path, num_ws=...))")
        num_ws = 2 * int(math.log2(size)) - 2
    params: dict[str, Any] = {}
    for g, on in zip(MAPPER_GROUPS, groups):
        if not on:
            continue
        params[g] = {}
        for i in range(depth):
            key = f"mapper.{_TORCH_GROUPS[g]}.mapping.{i + 1}"
            W, b = sd.get(f"{key}.weight"), sd.get(f"{key}.bias")
            if not isinstance(W, np.ndarray) or not isinstance(b, np.ndarray):
                raise InputError(f"{path}: missing tensor {key}.weight or {key}.bias")
            w_dim = W.shape[1] if w_dim is None else w_dim
            if W.shape != (w_dim, w_dim) or b.shape != (w_dim,):
                raise InputError(f"{path}: {key}.weight {W.shape} / bias {b.shape}, expected "
                                        f"({w_dim}, {w_dim}) / ({w_dim},)")
            W, b = np.asarray(W, np.float32), np.asarray(b, np.float32)
            if not (np.all(np.isfinite(W)) and np.all(np.isfinite(b))):
                raise InputError(f"{path}: {key} contains non-finite values")
            params[g][f"fc{i}"] = {"weight": W.T.copy(), "bias": b}
    try:
        cfg = MapperConfig(w_dim=w_dim, num_ws=num_ws, groups=tuple(groups), depth=depth, norm="layers")
    except ValueError as e:
        raise InputError(f"{path}: {e}") from e
    return Mapper(cfg), params, str(opts.get("description") or "")
