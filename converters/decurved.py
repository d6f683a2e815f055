"""DeCurvEd / StyleFlow continuous normalizing flow ``.pt`` -> (CNFConfig, params), without torch.

Reads ``torch.save({'state_dict': SequentialFlow state dict})`` (or the bare state dict, or a
training checkpoint with a ``'flow'`` / ``'model'`` entry) through :mod:`jaxedit.io.torchfile`.
Only the first CNF block (``chain.0``) is converted (DeCurvEd builds one; a chain with several
blocks or batch-norm layers is refused by name). The layer sizes come from the tensor shapes;
the integration time is ``sqrt_end_time ** 2`` when the file has a learnable end time, else
DeCurvEd's fixed ``T = 0.1``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np

from jaxedit.io import torchfile
from jaxedit.models.flows import CNFConfig
from jaxedit.errors import FormatError

PREFIX = "chain.0.odefunc.diffeq.layers."
_KEY = re.compile(r"^chain\.0\.odefunc\.diffeq\.layers\.(\d+)\._(layer|hyper_gate|hyper_bias)\.(weight|bias)$")


class FlowFileError(FormatError):
    """A flow file that cannot be converted; the message names the file and the key."""


def load_cnf(path: str | Path, T: float | None = None) -> tuple[CNFConfig, dict[str, Any]]:
    path = Path(path)
    err = lambda msg: FlowFileError(f"{path}: {msg}")
    try:
        obj = torchfile.load(path)
    except torchfile.TorchFileError as e:
        raise err(f"cannot read the torch file ({e})") from e
    except OSError as e:
        raise err(f"cannot open ({e})") from e
    if isinstance(obj, dict):
        for k in ("state_dict", "flow", "model"):
            if isinstance(obj.get(k), dict):
                obj = obj[k]
                break
    if not isinstance(obj, dict):
        raise err(f"expected a state dict, got {type(obj).__name__}")
    sd = {str(k).removeprefix("module."): v for k, v in obj.items()}
    other = [k for k in sd if not k.startswith("chain.0.") ]
    if other:
        raise err(f"only one CNF block (chain.0) is supported; found {other[:3]}")
    layers: dict[int, dict[str, np.ndarray]] = {}
    for k, v in sd.items():
        m = _KEY.match(k)
        if m:
            layers.setdefault(int(m[1]), {})[f"{m[2]}.{m[3]}"] = np.asarray(v, np.float32)
        elif k not in ("chain.0.odefunc._num_evals", "chain.0.sqrt_end_time"):
            raise err(f"unexpected key {k!r}")
    if not layers or sorted(layers) != list(range(len(layers))):
        raise err(f"no ODE-net layers {PREFIX}<i>.* (found indices {sorted(layers)})")
    params, dims = {}, []
    for i in range(len(layers)):
        L = layers[i]
        for need in ("layer.weight", "layer.bias", "hyper_gate.weight", "hyper_gate.bias", "hyper_bias.weight"):
            if need not in L:
                raise err(f"missing key {PREFIX}{i}._{need}")
        w = L["layer.weight"]
        out, inp = w.shape
        if dims and inp != dims[-1]:
            raise err(f"{PREFIX}{i}._layer.weight has input size {inp}, previous layer outputs {dims[-1]}")
        for name, shape in (("layer.bias", (out,)), ("hyper_gate.weight", (out, 1)), ("hyper_gate.bias", (out,)),
                            ("hyper_bias.weight", (out, 1))):
            if L[name].shape != shape:
                raise err(f"{PREFIX}{i}._{name} has shape {L[name].shape}, expected {shape}")
        dims = dims or [inp]
        dims.append(out)
        params[f"layer{i}"] = {
            "layer": {"kernel": w.T, "bias": L["layer.bias"]},
            "hyper_gate": {"kernel": L["hyper_gate.weight"].T, "bias": L["hyper_gate.bias"]},
            "hyper_bias": {"kernel": L["hyper_bias.weight"].T},
        }
    if dims[-1] != dims[0]:
        raise err(f"the ODE net maps {dims[0]} -> {dims[-1]} dimensions; a flow needs equal sizes")
    if T is None:
        T = float(np.asarray(sd["chain.0.sqrt_end_time"])) ** 2 if "chain.0.sqrt_end_time" in sd else 0.1
    return CNFConfig(dim=dims[0], hidden=tuple(dims[1:-1]), T=T), params
