"""Released edit artifacts -> jaxedit arrays (no torch, no sklearn; torch files through
:mod:`jaxedit.io.torchfile`, which executes nothing from the file).

- InterFaceGAN ``boundaries/*.npy``: ``(1, d)`` float64 unit normals -> ``[d]`` float32.
- GANSpace ``cache/components/*.npz``: ``lat_comp (C, *latent_shape)`` e.g. ``(80, 1, 512)``,
  ``lat_mean``, ``lat_stdev (C,)`` (+ ``var_ratio``) -> ``{'comp': [C, d], 'stdev': [C],
  'mean': [d]}``.
- GANLatentDiscovery ``models/deformator_*.pt``: ``log_mat_half`` (ortho) or ``linear.{weight,bias}``
  (linear / proj) -> :func:`load_deformator`.
- WarpedGANSpace ``models/support_sets.pt``: state dict ``SUPPORT_SETS (K, 2N*d)``,
  ``ALPHAS (K, 2N)``, ``LOGGAMMA (K, 1)`` -> ``{'support_sets': [K, 2N, d], 'alphas': [K, 2N],
  'log_gamma': [K]}``.
- DeCurvEd / StyleFlow continuous normalizing flow ``.pt`` -> ``(CNFConfig, params)``
  (:func:`load_cnf`).

Each torch format has a ``*_from_state(obj, path)`` parser of the already-read object, so
:func:`sniff_torch` + a parser read a file once. Errors are :class:`EditFileError` naming the
file and the key.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.errors import FormatError
from jaxedit.io import arrays, files, torchfile
from jaxedit.models.flows import CNFConfig

CNF_PREFIX = "chain.0.odefunc.diffeq.layers."
_CNF_KEY = re.compile(r"^chain\.0\.odefunc\.diffeq\.layers\.(\d+)\._(layer|hyper_gate|hyper_bias)\.(weight|bias)$")


class EditFileError(FormatError):
    """An edit artifact cannot be read; the message names the file and the key."""


def _err(path, msg: str) -> EditFileError:
    return EditFileError(f"{path}: {msg}")


def _finite(path, key: str, a: np.ndarray) -> np.ndarray:
    if not np.all(np.isfinite(a)):
        raise _err(path, f"{key!r} contains non-finite values")
    return a


def read_torch(path: str | Path) -> Any:
    """The object of a torch file (tensors as numpy arrays); errors name the file."""
    path = Path(path)
    try:
        return torchfile.load(path)
    except torchfile.TorchFileError as e:
        raise _err(path, f"cannot read the torch file ({e})") from e
    except OSError as e:
        raise _err(path, f"cannot open ({e})") from e


def _tensor(path, obj: dict, key: str) -> np.ndarray:
    """``obj[key]`` as float32, refused (naming the key) unless the file holds a tensor there."""
    if not isinstance(obj[key], np.ndarray):
        raise _err(path, f"{key!r} is not a tensor ({type(obj[key]).__name__})")
    return np.asarray(obj[key], np.float32)


def sniff_torch(obj: Any) -> str | None:
    """Which edit family a read torch object holds: ``'warped'``, ``'curvilinear'``, ``'linear'``
    (a deformator) or ``None``."""
    if not isinstance(obj, dict):
        return None
    if "SUPPORT_SETS" in obj or isinstance(obj.get("support_sets"), dict):
        return "warped"
    if "log_mat_half" in obj or "linear.weight" in obj or isinstance(obj.get("deformator"), dict):
        return "linear"
    inner = next((obj[k] for k in ("state_dict", "flow", "model") if isinstance(obj.get(k), dict)), obj)
    if any(str(k).removeprefix("module.").startswith("chain.0.") for k in inner):
        return "curvilinear"
    return None


# ------------------------------------------------------------------------------ numpy formats
def npy_shape(path: str | Path) -> tuple[int, ...]:
    """The shape in a ``.npy`` header (nothing else read), else an error naming the file."""
    return arrays.npy_header(path, "directions", EditFileError)[0]


def load_interfacegan(path: str | Path, normalize: bool = True) -> np.ndarray:
    """InterFaceGAN boundary ``.npy`` ``(1, d)`` (float64 in the releases) -> unit normal ``[d]`` float32."""
    path = Path(path)
    a = arrays.load_one(path, "boundary", EditFileError)
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


def load_directions(path: str | Path) -> np.ndarray:
    """Plain directions ``.npy`` ``[K, d]`` (or ``[d]``) -> float32 ``[K, d]``, rows as given."""
    path = Path(path)
    a = arrays.load_one(path, "array", EditFileError)
    a = a[None] if a.ndim == 1 else a
    if a.ndim != 2 or a.size == 0:
        raise _err(path, f"linear directions must be [K, d], got {a.shape}")
    return _finite(path, "directions", a.astype(np.float32))


def load_editing_vectors(path: str | Path) -> np.ndarray:
    """EditGAN editing vectors ``.npy`` ``(K, num_ws, w_dim)`` (the releases: ``(1, 16, 512)`` float32, ``dw =
    w_edited - w``) -> float32 ``[K, num_ws, w_dim]``."""
    path = Path(path)
    a = arrays.load_one(path, "editing vector", EditFileError)
    if a.ndim != 3 or a.size == 0:
        raise _err(path, f"editing vectors must be (K, num_ws, w_dim), got {a.shape}")
    return _finite(path, "editing vectors", a.astype(np.float32))


def load_ganspace(path: str | Path) -> dict[str, np.ndarray]:
    """GANSpace component cache ``.npz`` -> ``{'comp': [C, d], 'stdev': [C], 'mean': [d]}`` float32.

    ``comp`` rows are unit norm (as saved); ``var_ratio [C]`` is included when present.
    ``lat_comp (C, 1, d)`` and ``lat_mean (1, d)`` are flattened to ``[C, d]`` / ``[d]``.
    """
    path = Path(path)
    z = arrays.load(path, "GANSpace components", EditFileError,
                    keys=("lat_comp", "lat_mean", "lat_stdev", "var_ratio"))
    if "" in z:
        raise _err(path, "expected an .npz archive with lat_comp, lat_mean, lat_stdev")
    for key in ("lat_comp", "lat_mean", "lat_stdev"):
        if key not in z:
            raise _err(path, f"missing key {key!r} (has {sorted(z)})")
        if z[key].dtype.kind not in "fiu":
            raise _err(path, f"{key!r} holds {z[key].dtype}, expected numbers")
    comp, mean, stdev, var_ratio = z["lat_comp"], z["lat_mean"], z["lat_stdev"], z.get("var_ratio")
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


# ------------------------------------------------------------------------------ torch formats
def warped_from_state(obj: Any, path: str | Path) -> dict[str, np.ndarray]:
    """A read WarpedGANSpace ``support_sets.pt`` (or training ``checkpoint.pt``) -> support sets dict."""
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


def load_warped(path: str | Path) -> dict[str, np.ndarray]:
    """WarpedGANSpace ``support_sets.pt`` -> ``{'support_sets': [K, 2N, d], 'alphas': [K, 2N], 'log_gamma': [K]}``.

    Also accepts a training ``checkpoint.pt`` (``{'support_sets': state_dict, ...}``).
    """
    return warped_from_state(read_torch(path), path)


def deformator_from_state(obj: Any, path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """A read GANLatentDiscovery deformator state dict -> ``{'kind', 'params'}`` (see :func:`load_deformator`)."""
    path = Path(path)
    if isinstance(obj, dict) and isinstance(obj.get("deformator"), dict):
        obj = obj["deformator"]
    if not isinstance(obj, dict):
        raise _err(path, f"expected a state dict, got {type(obj).__name__}")
    if "log_mat_half" in obj:
        L = _tensor(path, obj, "log_mat_half")
        if L.ndim != 2 or L.shape[0] != L.shape[1]:
            raise _err(path, f"'log_mat_half' must be square (K, K), got {L.shape}")
        return {"kind": "ortho", "params": {"log_mat_half": _finite(path, "log_mat_half", L)}}
    if "linear.weight" not in obj:
        raise _err(path, f"neither 'log_mat_half' (ortho) nor 'linear.weight' (linear/proj) found "
                         f"(has {sorted(map(str, obj))}); 'fc', 'id' and 'random' deformators are not supported")
    if kind is None:
        args = next((p for p in (path.parent / "args.json", path.parent.parent / "args.json") if p.is_file()), None)
        kind = files.read_json(args, EditFileError).get("deformator") if args else None
        if kind is None:
            raise _err(path, "a linear.weight deformator is 'linear' or 'proj': pass kind= (no args.json found)")
    if kind not in ("linear", "proj"):
        raise _err(path, f"deformator kind {kind!r} does not match the file's linear.weight (linear or proj)")
    W = _tensor(path, obj, "linear.weight")
    if W.ndim != 2:
        raise _err(path, f"'linear.weight' must be (d, K), got {W.shape}")
    params = {"weight": _finite(path, "linear.weight", W)}
    if "linear.bias" in obj:
        b = _tensor(path, obj, "linear.bias").reshape(-1)
        if b.shape != (W.shape[0],):
            raise _err(path, f"'linear.bias' has shape {b.shape}, expected ({W.shape[0]},)")
        params["bias"] = b
    return {"kind": kind, "params": params}


def load_deformator(path: str | Path, kind: str | None = None) -> dict[str, Any]:
    """GANLatentDiscovery ``models/deformator_*.pt`` -> ``{'kind', 'params'}`` for
    :func:`jaxedit.edits.linear.directions` / ``deformator_shift``.

    ``log_mat_half (K, K)`` -> kind ``'ortho'``; ``linear.weight (d, K)`` (+ ``linear.bias (d,)``)
    -> ``'linear'`` or ``'proj'``: the two store the same tensors, so the kind comes from
    ``kind=`` or the run's ``args.json`` (``deformator``) next to ``models/``; without either it
    is an error naming the file. Also accepts a training ``checkpoint.pt`` (``{'deformator': ...}``).
    """
    return deformator_from_state(read_torch(path), path, kind)


def cnf_from_state(obj: Any, path: str | Path, T: float | None = None) -> tuple[CNFConfig, dict[str, Any]]:
    """A read DeCurvEd flow (``{'state_dict': ...}``, a bare state dict, or a training checkpoint with a
    ``'flow'`` / ``'model'`` entry) -> ``(CNFConfig, params)`` (see :func:`load_cnf`)."""
    if isinstance(obj, dict):
        for k in ("state_dict", "flow", "model"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict):
        raise _err(path, f"expected a state dict, got {type(obj).__name__}")
    sd = {str(k).removeprefix("module."): v for k, v in obj.items()}
    other = [k for k in sd if not k.startswith("chain.0.")]
    if other:
        raise _err(path, f"only one CNF block (chain.0) is supported; found {other[:3]}")
    layers: dict[int, dict[str, np.ndarray]] = {}
    for k in sd:
        m = _CNF_KEY.match(k)
        if m:
            layers.setdefault(int(m[1]), {})[f"{m[2]}.{m[3]}"] = _tensor(path, sd, k)
        elif k not in ("chain.0.odefunc._num_evals", "chain.0.sqrt_end_time"):
            raise _err(path, f"unexpected key {k!r}")
    if not layers or sorted(layers) != list(range(len(layers))):
        raise _err(path, f"no ODE-net layers {CNF_PREFIX}<i>.* (found indices {sorted(layers)})")
    params, dims = {}, []
    for i in range(len(layers)):
        L = layers[i]
        for need in ("layer.weight", "layer.bias", "hyper_gate.weight", "hyper_gate.bias", "hyper_bias.weight"):
            if need not in L:
                raise _err(path, f"missing key {CNF_PREFIX}{i}._{need}")
        w = L["layer.weight"]
        if w.ndim != 2:
            raise _err(path, f"{CNF_PREFIX}{i}._layer.weight has shape {w.shape}, expected (out, in)")
        out, inp = w.shape
        if dims and inp != dims[-1]:
            raise _err(path, f"{CNF_PREFIX}{i}._layer.weight has input size {inp}, previous layer outputs {dims[-1]}")
        for name, shape in (("layer.bias", (out,)), ("hyper_gate.weight", (out, 1)), ("hyper_gate.bias", (out,)),
                            ("hyper_bias.weight", (out, 1))):
            if L[name].shape != shape:
                raise _err(path, f"{CNF_PREFIX}{i}._{name} has shape {L[name].shape}, expected {shape}")
        dims = dims or [inp]
        dims.append(out)
        params[f"layer{i}"] = {
            "layer": {"kernel": w.T, "bias": L["layer.bias"]},
            "hyper_gate": {"kernel": L["hyper_gate.weight"].T, "bias": L["hyper_gate.bias"]},
            "hyper_bias": {"kernel": L["hyper_bias.weight"].T},
        }
    if dims[-1] != dims[0]:
        raise _err(path, f"the ODE net maps {dims[0]} -> {dims[-1]} dimensions; a flow needs equal sizes")
    if T is None and "chain.0.sqrt_end_time" in sd:
        end = _tensor(path, sd, "chain.0.sqrt_end_time")
        if end.size != 1:
            raise _err(path, f"'chain.0.sqrt_end_time' has shape {end.shape}, expected one number")
        T = float(end.reshape(())) ** 2
    elif T is None:
        T = 0.1
    return CNFConfig(dim=dims[0], hidden=tuple(dims[1:-1]), T=T), params


def load_cnf(path: str | Path, T: float | None = None) -> tuple[CNFConfig, dict[str, Any]]:
    """DeCurvEd / StyleFlow CNF ``.pt`` -> ``(CNFConfig, params)`` for :class:`jaxedit.models.flows.CNF`.

    Reads ``torch.save({'state_dict': SequentialFlow state dict})`` (or the bare state dict, or a
    training checkpoint with a ``'flow'`` / ``'model'`` entry). Only the first CNF block (``chain.0``)
    is converted (DeCurvEd builds one; a chain with several blocks or batch-norm layers is refused by
    name). Layer sizes come from the tensor shapes; the integration time is ``sqrt_end_time ** 2``
    when the file has a learnable end time, else DeCurvEd's fixed ``T = 0.1``.
    """
    return cnf_from_state(read_torch(path), path, T)
