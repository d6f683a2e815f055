"""The NVIDIA (stylegan2-ada-pytorch) parameter layout of StyleGAN2 networks, written once.

jaxedit parameter trees mirror NVIDIA's state-dict names: the tensor named
``synthesis.b16.conv0.affine.weight`` is ``params['synthesis']['b16']['conv0']['affine']['weight']``
(generator: ``mapping.fc{i}``, ``mapping.embed``, ``mapping.w_avg``, ``synthesis.b4.const``,
``synthesis.b{R}.{conv0,conv1,torgb}.{weight,bias,affine.*}``, ``.noise_strength``, ``.noise_const``,
``synthesis.b{R}.skip``; discriminator: ``b{R}.{fromrgb,conv0,conv1,skip}``, ``b4.{conv,fc,out}``,
``mapping.{embed,fc{i}}``). Arrays differ only in layout, by rule on the name and rank:

==============================  ====================  ======================
tensor                          torch                 jaxedit
==============================  ====================  ======================
any 4-D weight (conv)           ``[O, I, kh, kw]``    ``[kh, kw, I, O]`` (HWIO)
2-D ``*.weight`` (dense)        ``[out, in]``         ``[in, out]``
``synthesis.b4.const``          ``[C, 4, 4]``         ``[4, 4, C]``
everything else                 as is                 as is
``*resample_filter`` buffers    [1,3,3,1] FIR         not stored (built in; checked)
==============================  ====================  ======================

Other layouts (rosinality) are first renamed to these names, then go through the same rules.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxedit.errors import FormatError

FIR_BUFFER = "resample_filter"
STANDARD_FILTER = np.outer([1, 3, 3, 1], [1, 3, 3, 1]).astype(np.float32) / 64.0
CONST = "synthesis.b4.const"


def to_jax(name: str, a: np.ndarray) -> np.ndarray:
    """One tensor, torch layout -> jaxedit layout (by its state-dict ``name``)."""
    if name == CONST:
        return a.transpose(1, 2, 0)
    if a.ndim == 4:
        return a.transpose(2, 3, 1, 0)
    if a.ndim == 2 and name.endswith(".weight"):
        return a.T
    return a


def from_state_dict(sd: Mapping[str, Any], source: str) -> dict:
    """NVIDIA-named state dict (torch layout) -> nested jaxedit params (float32 numpy).

    ``resample_filter`` buffers are dropped after checking they hold the standard FIR; ``source``
    names the file in errors."""
    tree: dict = {}
    for name, arr in sd.items():
        a = np.asarray(arr, np.float32)
        if name.endswith(FIR_BUFFER):
            if not np.allclose(a, STANDARD_FILTER, atol=1e-7):
                raise FormatError(f"{source}: {name} is not the [1,3,3,1] FIR filter; unsupported")
            continue
        *parents, leaf = name.split(".")
        node = tree
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = to_jax(name, a)
    return tree
