"""The models, each a hashable handle whose methods are pure functions with ``params`` first.

:func:`load` reads any model checkpoint, dispatching on the ``kind`` in its ``jaxedit.json``.
"""

from __future__ import annotations

import os

from jaxedit.errors import CheckpointError
from jaxedit.io import checkpoint
from jaxedit.models import clip, e4e, inception, irse, l2sae, lpips, mapper, probe, segmenter, stylegan2, stylegan3
from jaxedit.models.stylegan2 import discriminator

LOADERS = {
    stylegan2.KIND: stylegan2.load,
    stylegan3.KIND: stylegan3.load,
    discriminator.KIND: discriminator.load,
    "clip": clip.load,
    "probe": probe.load,
    lpips.KIND: lpips.load,
    inception.KIND: inception.load,
    mapper.MAPPER_KIND: mapper.load,
    e4e.KIND: e4e.load,
    irse.KIND: irse.load,
    segmenter.KIND: segmenter.load,
    l2sae.KIND: l2sae.load,
}


#: The generator handles: same ``mapping``/``synthesis``/``__call__`` signatures, so every latent-space editor,
#: fit, discovery and text edit takes either.
GENERATORS = (stylegan2.StyleGAN2, stylegan3.StyleGAN3)


def load(path: str | os.PathLike):
    """Any model checkpoint -> ``(model, params)``: ``model`` hashable, its methods pure with ``params`` first."""
    kind = checkpoint.read_meta(path).get("kind")
    if kind not in LOADERS:
        raise CheckpointError(f"{path}: kind {kind!r} is not a model (models: {', '.join(sorted(LOADERS))})")
    return LOADERS[kind](path)


def load_generator(path: str | os.PathLike):
    """A generator checkpoint (StyleGAN2 or StyleGAN3) -> ``(G, params)``; any other kind is refused."""
    model, params = load(path)
    if not isinstance(model, GENERATORS):
        raise CheckpointError(f"{path}: a {checkpoint.read_meta(path).get('kind')!r} checkpoint, not a generator "
                              f"({stylegan2.KIND} or {stylegan3.KIND})")
    return model, params
