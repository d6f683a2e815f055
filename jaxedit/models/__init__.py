"""The models, each a hashable handle whose methods are pure functions with ``params`` first.

:func:`load` reads any model checkpoint, dispatching on the ``kind`` in its ``jaxedit.json``.
"""

from __future__ import annotations

import os

from jaxedit.errors import CheckpointError
from jaxedit.io import checkpoint
from jaxedit.models import clip, e4e, irse, lpips, mapper, probe, stylegan2, stylegan3
from jaxedit.models.stylegan2 import discriminator

LOADERS = {
    stylegan2.KIND: stylegan2.load,
    stylegan3.KIND: stylegan3.load,
    discriminator.KIND: discriminator.load,
    "clip": clip.load,
    "probe": probe.load,
    lpips.KIND: lpips.load,
    mapper.MAPPER_KIND: mapper.load,
    e4e.KIND: e4e.load,
    irse.KIND: irse.load,
}


def load(path: str | os.PathLike):
    """Any model checkpoint -> ``(model, params)``: ``model`` hashable, its methods pure with ``params`` first."""
    kind = checkpoint.read_meta(path).get("kind")
    if kind not in LOADERS:
        raise CheckpointError(f"{path}: kind {kind!r} is not a model (models: {', '.join(sorted(LOADERS))})")
    return LOADERS[kind](path)
