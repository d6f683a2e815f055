"""``jaxedit.load(path)``: any jaxedit checkpoint -> ``(model, params)``, dispatching on its ``kind``."""

from __future__ import annotations

import os
from pathlib import Path

from jaxedit import models
from jaxedit.io import checkpoint


def load(path: str | os.PathLike):
    """A checkpoint directory, or the name of an embedded default model (``"shapes32-stylegan2"``,
    ``"shapes32-probe"``, ``"shapes-clip"``) -> ``(model, params)``.

    ``model`` is hashable (a static argument of ``jax.jit``) and its methods are pure functions
    with ``params`` first: ``G.synthesis(params, ws)``, ``clip.encode_text(params, tokens)``, ...
    """
    p = Path(path)
    if not p.exists() and os.sep not in str(path) and "/" not in str(path):
        p = checkpoint.default_path(str(path))
    return models.load(p)
