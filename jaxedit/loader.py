"""``jaxedit.load(path)``: any jaxedit checkpoint -> ``(model, params)``, dispatching on its ``kind``."""

from __future__ import annotations

import os

from jaxedit import edits, models
from jaxedit.io import checkpoint


def load(path: str | os.PathLike):
    """A checkpoint directory, or the name of an embedded default model (``"shapes32-stylegan2"``,
    ``"shapes32-probe"``, ``"shapes-clip"``) -> ``(model, params)``.

    ``model`` is hashable (a static argument of ``jax.jit``) and its methods are pure functions
    with ``params`` first: ``G.synthesis(params, ws)``, ``clip.encode_text(params, tokens)``, ...
    An editor checkpoint (``jaxedit.edits.save``, ``jaxedit fit``, a ``jaxedit discover`` run) gives
    ``(editor, None)``: an editor is a pytree that carries its arrays (``jaxedit.edits.apply``).
    """
    p = checkpoint.resolve(path)
    run_editor = p / edits.RUN_EDITOR  # a `jaxedit discover` run folder holds its editor there
    if checkpoint.is_checkpoint(run_editor) or checkpoint.read_meta(p).get("kind") == edits.KIND:
        return edits.load(p), None
    return models.load(p)
