"""Released edit artifacts -> jaxedit arrays (no torch, no sklearn).

- InterFaceGAN ``boundaries/*.npy``: ``(1, d)`` float64 unit normals -> ``[d]`` float32.
- GANSpace ``cache/components/*.npz``: ``lat_comp (C, *latent_shape)`` e.g. ``(80, 1, 512)``,
  ``lat_mean``, ``lat_stdev (C,)`` (+ ``var_ratio``) -> ``{'comp': [C, d], 'stdev': [C],
  'mean': [d]}``.
- GANLatentDiscovery ``models/deformator_*.pt``: ``log_mat_half`` (ortho) or ``linear.{weight,bias}``
  (linear / proj) -> :func:`load_deformator`.
- WarpedGANSpace ``models/support_sets.pt``: state dict ``SUPPORT_SETS (K, 2N*d)``,
  ``ALPHAS (K, 2N)``, ``LOGGAMMA (K, 1)`` -> ``{'support_sets': [K, 2N, d], 'alphas': [K, 2N],
  'log_gamma': [K]}``.

Errors are :class:`EditFileError` (a ``ValueError``) naming the file and the key.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.io import torchfile
from jaxedit.errors import FormatError


class EditFileError(FormatError):
    """An edit artifact cannot be read; the message names the file and the key."""


def _err(path, msg: str) -> EditFileError:
    return EditFileError(f"{path}: {msg}")


def _finite(path, key: str, a: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise _err(path, f"{key!r} contains non-finite values")
    return a


def _load_torch(path: Path) -> Any:
    try:
        return torchfile.load(path)
    except torchfile.TorchFileError as e:
        raise _err(path, f"cannot read the torch file ({e})") from e
    except OSError as e:
        raise _err(path, f"cannot open ({e})") from e


def load_interfacegan(path: str | Path, normalize: bool = True) -> np.ndarray:
    """InterFaceGAN boundary ``.npy`` ``(1, d)`` (float64 in the releases) -> unit normal ``[d]`` float32."""
    path = Path(path)
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise _err(path, f"not a readable .npy boundary ({e})") from e
    if not isinstance(a, np.ndarray) or a.dtype.kind not in "fiu":
        raise _err(path, f"expected a numeric array, got {getattr(a, 'dtype', type(a))}")
    if a.ndim == 2 and a.shape[0] == 1:
        a = a[0]
    if a.ndim != 1 or a.size == 0:
        raise _err(path, f"expected a boundary of shape (1, d) or (d,), got {a.shape}")
    a = _finite(path, "boundary", a.astype(np.float64))
    if normalize:
        norm = np.linalg.norm(a)
        if norm == 0:
            raise _err(path, "boundary has zero norm")
        a = a / norm
    return a.astype(np.float32)


def load_ganspace(path: str | Path) -> dict[str, np.ndarray]:
    """GANSpace component cache ``.npz`` -> ``{'comp': [C, d], 'stdev': [C], 'mean': [d]}`` float32.

    ``comp`` rows are unit norm (as saved); ``var_ratio [C]`` is included when present.
    ``lat_comp (C, 1, d)`` and ``lat_mean (1, d)`` are flattened to ``[C, d]`` / ``[d]``.
    """
    path = Path(path)
    try:
        z = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile) as e:
        raise _err(path, f"not a readable .npz component file ({e})") from e
    if not hasattr(z, "files"):
        raise _err(path, "expected an .npz archive with lat_comp, lat_mean, lat_stdev")
    with z:
        for key in ("lat_comp", "lat_mean", "lat_stdev"):
            if key not in z.files:
                raise _err(path, f"missing key {key!r} (has {sorted(z.files)})")
        comp = np.asarray(z["lat_comp"])
        mean = np.asarray(z["lat_mean"])
        stdev = np.asarray(z["lat_stdev"])
        var_ratio = np.asarray(z["var_ratio"]) if "var_ratio" in z.files else None
    if comp.ndim < 2:
        raise _err(path, f"'lat_comp' must be (C, *latent_shape), got {comp.shape}")
    C = comp.shape[0]
    comp = comp.reshape(C, -1)
    d = comp.shape[1]
    mean = mean.reshape(-1)
    stdev = stdev.reshape(-1)
    if mean.shape != (d,):
        raise _err(path, f"'lat_mean' has {mean.size} values, expected {d} to match 'lat_comp' {comp.shape}")
    if stdev.shape != (C,):
        raise _err(path, f"'lat_stdev' has shape {stdev.shape}, expected ({C},) to match 'lat_comp'")
    out = {"comp": _finite(path, "lat_comp", comp.astype(np.float32)),
           "stdev": _finite(path, "lat_stdev", stdev.astype(np.float32)),
           "mean": _finite(path, "lat_mean", mean.astype(np.float32))}
    if var_ratio is not None:
        out["var_ratio"] = var_ratio.reshape(-1).astype(np.float32)
    return out


def load_warped(path: str | Path) -> dict[str, np.ndarray]:
    """WarpedGANSpace ``support_sets.pt`` -> ``{'support_sets': [K, 2N, d], 'alphas': [K, 2N], 'log_gamma': [K]}``.

    Also accepts a training ``checkpoint.pt`` (``{'support_sets': state_dict, ...}``).
    """
    path = Path(path)
    obj: Any = _load_torch(path)
    if isinstance(obj, dict) and "SUPPORT_SETS" not in obj and isinstance(obj.get("support_sets"), dict):
        obj = obj["support_sets"]
    if not isinstance(obj, dict):
        raise _err(path, f"expected a state dict, got {type(obj).__name__}")
    for key in ("SUPPORT_SETS", "ALPHAS", "LOGGAMMA"):
        if key not in obj:
            raise _err(path, f"missing key {key!r} (has {sorted(map(str, obj))})")
        if not isinstance(obj[key], np.ndarray):
            raise _err(path, f"{key!r} is not a tensor ({type(obj[key]).__name__})")
    ss = np.asarray(obj["SUPPORT_SETS"], np.float32)
    al = np.asarray(obj["ALPHAS"], np.float32)
    lg = np.asarray(obj["LOGGAMMA"], np.float32)
    if al.ndim != 2:
        raise _err(path, f"'ALPHAS' must be (K, 2N), got {al.shape}")
    K, M = al.shape
    if ss.ndim != 2 or ss.shape[0] != K or ss.shape[1] % M:
        raise _err(path, f"'SUPPORT_SETS' must be (K={K}, 2N*d) with 2N={M}, got {ss.shape}")
    if lg.size != K:
        raise _err(path, f"'LOGGAMMA' must be (K={K}, 1), got {lg.shape}")
    return {"support_sets": _finite(path, "SUPPORT_SETS", ss.reshape(K, M, ss.shape[1] // M)),
            "alphas": _finite(path, "ALPHAS", al),
            "log_gamma": _finite(path, "LOGGAMMA", lg.reshape(K))}


def load_deformator(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """GANLatentDiscovery ``models/deformator_*.pt`` -> ``{'kind', 'params'}`` for
    :func:`jaxedit.edits.linear.directions` / ``deformator_shift``.

    ``log_mat_half (K, K)`` -> kind ``'ortho'``; ``linear.weight (d, K)`` (+ ``linear.bias (d,)``)
    -> ``'linear'`` or ``'proj'``: the two store the same tensors, so the kind comes from
    ``kind=`` or the run's ``args.json`` (``deformator``) next to ``models/``; without either it
    is an error naming the file. Also accepts a training ``checkpoint.pt`` (``{'deformator': ...}``).
    """
    import json

    path = Path(path)
    obj: Any = _load_torch(path)
    if isinstance(obj, dict) and isinstance(obj.get("deformator"), dict):
        obj = obj["deformator"]
    if not isinstance(obj, dict):
        raise _err(path, f"expected a state dict, got {type(obj).__name__}")
    if "log_mat_half" in obj:
        L = np.asarray(obj["log_mat_half"], np.float32)
        if L.ndim != 2 or L.shape[0] != L.shape[1]:
            raise _err(path, f"'log_mat_half' must be square (K, K), got {L.shape}")
        return {"kind": "ortho", "params": {"log_mat_half": _finite(path, "log_mat_half", L)}}
    if "linear.weight" not in obj:
        raise _err(path, f"neither 'log_mat_half' (ortho) nor 'linear.weight' (linear/proj) found "
                         f"(has {sorted(map(str, obj))}); 'fc', 'id' and 'random' deformators are not supported")
    if kind is None:
        args = next((p for p in (path.parent / "args.json", path.parent.parent / "args.json") if p.is_file()), None)
        kind = json.loads(args.read_text()).get("deformator") if args else None
        if kind is None:
            raise _err(path, "a linear.weight deformator is 'linear' or 'proj': pass kind= (no args.json found)")
    if kind not in ("linear", "proj"):
        raise _err(path, f"deformator kind {kind!r} does not match the file's linear.weight (linear or proj)")
    W = np.asarray(obj["linear.weight"], np.float32)
    if W.ndim != 2:
        raise _err(path, f"'linear.weight' must be (d, K), got {W.shape}")
    params = {"weight": _finite(path, "linear.weight", W)}
    if "linear.bias" in obj:
        b = np.asarray(obj["linear.bias"], np.float32).reshape(-1)
        if b.shape != (W.shape[0],):
            raise _err(path, f"'linear.bias' has shape {b.shape}, expected ({W.shape[0]},)")
        params["bias"] = b
    return {"kind": kind, "params": params}
