"""Text-guided (CLIP) edits: StyleCLIP's three methods and the CLIP-guided one-layer weight shift.

Methods (facts from ``orpatashnik/StyleCLIP``; see ``shared/notes/edit-methods-reference.md``):

1. Latent optimization (:func:`optimize_latents`): W+ by Adam on
   ``D_clip(G(w), t) + l2_lambda |w - w0|^2`` with the reference's learning-rate ramp.
2. Global directions in StyleSpace: :func:`style_channel_stats`, :func:`channel_relevance`
   (``fs3``), :func:`text_direction`, :func:`channel_weights`, :func:`global_edit`.
3. Latent mapper ``w + 0.1 M(w)`` (:class:`Mapper`, :func:`make_mapper_step`, :func:`train_mappers`).
4. CLIP-guided shift of one conv layer's weights (seed 002): :func:`optimize_layer_shift`,
   :func:`apply_layer_shifts`.

Released StyleCLIP files (``fs3.npy``, mapper ``.pt``) are read by :mod:`jaxedit.converters.styleclip`.

CLIP enters only as arguments, so any CLIP works (this module imports none):

- ``image_embed(images [B, H, W, 3] in [-1, 1]) -> [B, D]``: a pure, jit-able callable that
  includes the preprocessing, e.g. ``lambda x: clip.encode_image(cp, preprocess(x, 224, "styleclip"))``
  for StyleCLIP's quirk (x7 nearest up, average pool to 224, no mean/std normalization). It
  must treat rows independently (no batch statistics): batching relies on it.
- text embeddings ``[P, D]`` (``[..., T, D]`` with templates), already encoded by the caller.

Embeddings are L2-normalized here and ``D_clip = 1 - cos`` (the reference's
``1 - logits_per_image / 100`` is the same number for OpenAI's CLIP, whose logit scale is 100).

Batching: every method runs all prompts x images in one program. The variables of all
pairs are stacked (``[P, N, ...]``) and the per-pair losses are *summed*; Adam is
element-wise, so one Adam on the stack is exactly P*N independent Adams (each entry's
gradient is its own pair's gradient), i.e. the optimizer state is batched over pairs. Steps
run in ``lax.scan``. The mapper trains P mappers at once with ``vmap`` over parameters and
optimizer state. Functions are pure: ``jax.jit`` them with ``G``, ``image_embed``, ``steps``
and layer names static (``functools.partial`` then ``jax.jit``).

Speed: inside ``lax.scan`` the generator's gradient convs stay fast because
``jaxedit.nn.ops.conv2d`` writes its backward pass as forward-form convs (XLA:CPU's generic
path for them inside loops was measured 80x slower).
"""

from jaxedit.edits.text.global_directions import (
                                                  channel_relevance,
                                                  channel_weights,
                                                  fs3_layers,
                                                  global_edit,
                                                  prompt_embedding,
                                                  relevance_layers,
                                                  style_channel_stats,
                                                  style_dims,
                                                  text_direction,
)
from jaxedit.edits.text.layer_shift import LayerShiftResult, apply_layer_shifts, layer_shift_loss, optimize_layer_shift
from jaxedit.edits.text.losses import clip_cosine, identity_loss
from jaxedit.edits.text.mapper import MapperTrainResult, init_mappers, make_mapper_step, mapper_loss, train_mappers
from jaxedit.edits.text.optimize import LatentOptResult, optimize_latents, styleclip_lr
