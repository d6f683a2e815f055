"""The CLIP-guided shift of one conv layer's weights (seed 002): one shift per prompt over a batch of latents."""

from __future__ import annotations

from typing import Mapping, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import optax

from jaxedit.edits.text.losses import Array, ImageEmbed, check_layer, clip_cosine, l2_norm, minimize
from jaxedit.errors import InputError
from jaxedit.models.stylegan2 import StyleGAN2, WeightShift


def layer_shift_loss(G: StyleGAN2, gparams, image_embed: ImageEmbed, ws: Array, text_emb: Array, layer: str,
                     x: Array, *, lambda2: float = 0.05, clip_weight: float = 10.0, noise_mode: str = "const"):
    """``clip_weight * mean_n D_clip(G_{theta + x}(w_n), t) + lambda2 * |x|_2`` -> ``(loss, mean D_clip)``.

    ws ``[N, num_ws, w_dim]``, text_emb ``[D]``, x the shape of ``layer``'s stored weight (HWIO).
    ``|x|_2`` is the plain (not squared) Euclidean norm, as written in the method's loss, with
    gradient 0 at x = 0.
    """
    img = G.synthesis(gparams, ws, noise_mode, deltas={layer: x})
    d = jnp.mean(1.0 - clip_cosine(image_embed, img, text_emb))
    return clip_weight * d + lambda2 * l2_norm(x), d


class LayerShiftResult(NamedTuple):
    shifts: Array  # [P, *layer_weight_shape]
    loss: Array  # [steps, P] loss before each step's update
    clip_distance: Array  # [steps, P] mean D_clip over the N latents before each step's update


def optimize_layer_shift(G: StyleGAN2, gparams, image_embed: ImageEmbed, ws: Array, text_emb: Array, layer: str, *,
                         steps: int = 100, lr: float = 0.01, lambda2: float = 0.05, clip_weight: float = 10.0,
                         noise_mode: str = "const") -> LayerShiftResult:
    """CLIP-guided shift of one generator layer's weights (seed 002, after NaviGAN), one per prompt.

    For each prompt p (text_emb ``[P, D]``), ``x_p`` (shape ``G.layer_weight_shape(layer)``,
    from 0) minimizes :func:`layer_shift_loss` over the batch of N latents ``ws [N, num_ws, w_dim]``;
    all prompts in one program (``vmap`` over prompts; Adam at constant ``lr`` — the method fixes
    no optimizer, steps or lr; lambda2 in [0.01, 0.1] by edit type, clip weight 10). Apply with
    :func:`apply_layer_shifts` and k in [-3, 3].

    **x acts on the raw stored weight** (what the generator's ``deltas`` do): the weight before
    any equalized-lr scaling, whose entries are N(0, 1) at init in every layer. This is
    NaviGAN's convention (it adds its shift to rosinality's unscaled ``conv.weight``), and since a
    demodulated conv is invariant to a constant weight gain, rosinality's scaled weight
    ``c W`` (c = 1/sqrt(fan_in)) plus a shift y equals the raw weight plus ``y / c``: raw shifts
    have the same scale in every layer, so one lambda2 and one k range mean the same thing
    whichever layer is edited. (ToRGB: the generator applies its gain to the style, so raw
    is again the stored weight.)

    Per-prompt weights under ``vmap`` make that one layer a grouped conv (the rest of G stays
    shared-weight); the generator's ``WeightShift`` holds a single direction, so P directions cannot
    use its shared-conv path.
    """
    shape = check_layer(G, layer)
    P = text_emb.shape[0]

    def total(xs):
        loss, d = jax.vmap(lambda x, t: layer_shift_loss(G, gparams, image_embed, ws, t, layer, x, lambda2=lambda2,
                                                         clip_weight=clip_weight, noise_mode=noise_mode))(xs, text_emb)
        return jnp.sum(loss), (loss, d)

    xs, (loss, d) = minimize(total, jnp.zeros((P, *shape), ws.dtype), optax.adam(lr), steps)
    return LayerShiftResult(xs, loss, d)


def apply_layer_shifts(G: StyleGAN2, gparams, ws: Array,
                       shifts: Sequence[tuple[str, Array, float | Array]] | Mapping[str, tuple[Array, float | Array]],
                       *, noise_mode: str = "const", key: Array | None = None) -> Array:
    """Render ``G_{theta + sum_i k_i x_i}(w)`` for a sweep of strengths: -> images ``[K, N, H, W, C]``.

    ws ``[N, num_ws, w_dim]``; shifts ``[(layer, x, k), ...]`` (or ``{layer: (x, k)}``), each k
    a scalar or ``[K]`` (scalars broadcast over the sweep). Several shifts on the same layer
    add (``k_1 x_1 + k_2 x_2``); shifts on different layers each act on their own layer. k = 0
    renders the original image. A layer with one shift uses the generator's shared-conv
    ``WeightShift`` path; a layer with several gets the per-strength weight (a grouped conv there).
    """
    if isinstance(shifts, Mapping):
        items = [(layer, x, k) for layer, (x, k) in shifts.items()]
    else:
        items = [tuple(s) for s in shifts]
    if not items:
        raise InputError("apply_layer_shifts needs at least one (layer, x, k) shift")
    ks = [jnp.atleast_1d(jnp.asarray(k, ws.dtype)) for _, _, k in items]
    K = max(k.shape[0] for k in ks)
    for (layer, x, _), k in zip(items, ks):
        if x.shape != check_layer(G, layer):
            raise InputError(f"shift for {layer!r} has shape {x.shape}, the layer weight {G.layer_weight_shape(layer)}")
        if k.ndim != 1 or k.shape[0] not in (1, K):
            raise InputError(f"shift strengths must be scalars or [K] with one K, got shapes {[k.shape for k in ks]}")
    kk = jnp.stack([jnp.broadcast_to(k, (K,)) for k in ks], axis=1)  # [K, S]
    by_layer: dict[str, list[int]] = {}
    for i, (layer, _, _) in enumerate(items):
        by_layer.setdefault(layer, []).append(i)

    def render(kv):
        deltas = {}
        for layer, idx in by_layer.items():
            if len(idx) == 1:
                deltas[layer] = WeightShift(items[idx[0]][1], kv[idx[0]])
            else:
                deltas[layer] = sum(kv[i] * items[i][1] for i in idx)
        return G.synthesis(gparams, ws, noise_mode, key, deltas=deltas)

    return jax.vmap(render)(kk)
