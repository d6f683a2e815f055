"""StyleCLIP global directions in StyleSpace: channel statistics, relevance ``fs3``, text direction, the edit."""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import parallel
from jaxedit.edits.text.losses import Array, ImageEmbed, Styles, unit
from jaxedit.errors import InputError
from jaxedit.models.stylegan2 import StyleGAN2

_LAYER_ORDER = {"conv0": 0, "conv1": 1, "torgb": 2}


def _synthesis_order(names) -> list[str]:
    """StyleSpace names ``b{res}.{conv0|conv1|torgb}`` in synthesis order (the reference's S list)."""
    def key(n):
        block, layer = n.split(".")
        return int(block[1:]), _LAYER_ORDER[layer]
    return sorted(names, key=key)


def relevance_layers(G: StyleGAN2, max_resolution: int = 128) -> tuple[str, ...]:
    """The layers whose channels get an ``fs3`` row: every non-ToRGB layer up to ``max_resolution``
    (the reference: S-list indices <= 16 of a 1024 generator, i.e. up to 128 x 128), synthesis order."""
    return tuple(n for n in G.cfg.layer_ws() if not n.endswith("torgb") and int(n.split(".")[0][1:]) <= max_resolution)


def fs3_layers(style_dims: Mapping[str, int], rows: int, where: str = "fs3") -> tuple[str, ...]:
    """The non-ToRGB layers (synthesis order) whose channels an ``fs3`` of ``rows`` rows covers.

    As the reference's ``SplitS``, rows fill the non-ToRGB layers in order; the rest get no
    edit. ``style_dims``: ``{layer: channels}`` (e.g. ``{k: v.shape[-1] for k, v in styles.items()}``).
    """
    out, total = [], 0
    for name in _synthesis_order(style_dims):
        if total == rows:
            break
        if name.endswith("torgb"):
            continue
        total += int(style_dims[name])
        out.append(name)
    if total != rows:
        raise InputError(f"{where}: {rows} rows do not cover whole non-ToRGB StyleSpace layers of this "
                                f"generator (channel counts in order: {[int(style_dims[n]) for n in out]})")
    return tuple(out)


def style_dims(G: StyleGAN2) -> dict[str, int]:
    """``{layer: StyleSpace channels}`` of a generator."""
    shapes = G.param_shapes()["synthesis"]
    return {n: shapes[n.split(".")[0]][n.split(".")[1]]["affine"]["weight"].shape[1] for n in G.cfg.layer_ws()}


def style_channel_stats(G: StyleGAN2, gparams, key: Array, n: int = 100_000, *, psi: float = 0.7,
                        cutoff: int | None = 8, batch: int = 1000) -> dict[str, Styles]:
    """Per-channel mean and std of every StyleSpace layer over ``n`` samples: ``{'mean': {layer: [C]},
    'std': {layer: [C]}}`` (population std, numpy's default, as the reference's ``GetCodeMS``).

    Reference (``global_torch/manipulate.py``): 100,000 z from ``RandomState(5)``, truncation
    psi 0.7 with cutoff 8. Here z comes from ``key`` and the moments are merged chunk by chunk
    (Chan et al.'s pairwise update, exact and stable) in one ``lax.scan``.
    """
    chunks = -(-n // batch)
    keys = jax.random.split(key, chunks)
    dims = style_dims(G)

    def chunk(carry, inp):
        k, i = inp
        z = jax.random.normal(k, (batch, G.cfg.z_dim))
        styles = G.ws_to_styles(gparams, G.mapping(gparams, z, psi=psi, cutoff=cutoff))
        valid = (i * batch + jnp.arange(batch)) < n
        nb = jnp.sum(valid).astype(jnp.float32)
        new = {}
        for name, (na, ma, m2a) in carry.items():
            s = styles[name]
            mb = jnp.sum(jnp.where(valid[:, None], s, 0.0), 0) / nb
            m2b = jnp.sum(jnp.where(valid[:, None], jnp.square(s - mb), 0.0), 0)
            tot = na + nb
            d = mb - ma
            new[name] = (tot, ma + d * nb / tot, m2a + m2b + jnp.square(d) * na * nb / tot)
        return new, None

    init = {name: (jnp.zeros(()), jnp.zeros((c,)), jnp.zeros((c,))) for name, c in dims.items()}
    acc, _ = jax.lax.scan(chunk, init, (keys, jnp.arange(chunks)))
    return {"mean": {k: v[1] for k, v in acc.items()},
            "std": {k: jnp.sqrt(v[2] / v[0]) for k, v in acc.items()}}


def channel_relevance(G: StyleGAN2, gparams, image_embed: ImageEmbed, ws: Array, stats: Mapping[str, Styles], *,
                      delta: float = 5.0, layers: Sequence[str] | None = None, batch: int = 256,
                      noise_mode: str = "const", cumulative_means: bool = False) -> Array:
    """StyleCLIP's channel relevance ``fs3 [C_total, D]`` (``global_torch/SingleChannel.py``).

    For each channel c of ``layers`` (default :func:`relevance_layers`; rows in synthesis
    order, channels in order) and each of the M latents ``ws [M, num_ws, w_dim]``: set
    ``s_c := mean_c`` and render with ``s_c - delta std_c`` and ``s_c + delta std_c``; CLIP-embed
    and normalize both; ``diff = e(+) - e(-)``, normalized; average over the M images;
    normalize (``GetFs``). The reference uses the first 100 of its 100,000 stats samples.

    Batched (:func:`jaxedit.parallel.chunked_map`): one step renders ``2 * M * k`` images for a chunk of
    ``k = max(1, batch // (2 M))`` channels (channel index, sign and image vectorized); the
    reference renders one image at a time (about 1.1 M renders for FFHQ).

    Differences from the reference, which are the caller's or on purpose:

    - its images go to CLIP as uint8 through PIL and CLIP's standard preprocessing;
      here whatever ``image_embed`` does (float pixels);
    - its loop writes the means into the style arrays *in place through a shallow copy*, so
      when channel f is measured every earlier channel (all earlier rows of fs3) is still
      held at its mean. The default measures each channel on the unmodified images (the evident
      intent); ``cumulative_means=True`` reproduces the reference's behaviour (for parity with
      released ``fs3.npy`` files).
    """
    layers = relevance_layers(G) if layers is None else tuple(_synthesis_order(layers))
    styles = G.ws_to_styles(gparams, ws)
    for name in layers:
        if name not in styles or name.endswith("torgb"):
            raise InputError(f"relevance layer {name!r} is not a non-ToRGB StyleSpace layer of this generator")
    M = ws.shape[0]
    dims = [styles[n].shape[1] for n in layers]
    offsets = np.concatenate([[0], np.cumsum(dims)])
    total = int(offsets[-1])
    layer_of = jnp.asarray(np.repeat(np.arange(len(layers)), dims))
    per = max(1, batch // (2 * M))
    sign = jnp.array([-1.0, 1.0])

    def chunk(f):  # f [k] global channel indices
        k = f.shape[0]
        edited = {}
        for name, s in styles.items():
            base = jnp.broadcast_to(s[None, None], (k, 2, M, s.shape[1]))
            if name in layers:
                j = layers.index(name)
                local = jnp.clip(f - offsets[j], 0, dims[j] - 1)
                hit = (jnp.arange(dims[j])[None] == local[:, None]) & (layer_of[f] == j)[:, None]  # [k, C]
                mean, std = stats["mean"][name], stats["std"][name]
                value = mean[local][:, None] + sign[None] * delta * std[local][:, None]  # [k, 2]
                if cumulative_means:
                    earlier = (offsets[j] + jnp.arange(dims[j]))[None] < f[:, None]  # [k, C]
                    base = jnp.where(earlier[:, None, None], mean, base)
                base = jnp.where(hit[:, None, None], value[:, :, None, None], base)
            edited[name] = base.reshape(k * 2 * M, s.shape[1])
        img = G.synthesis_from_styles(gparams, edited, noise_mode)
        e = unit(image_embed(img)).reshape(k, 2, M, -1)
        return unit(jnp.mean(unit(e[:, 1] - e[:, 0]), axis=1))

    return parallel.chunked_map(chunk, jnp.arange(total), per)


def prompt_embedding(text_emb: Array) -> Array:
    """Template ensemble: ``[..., T, D]`` -> ``[..., D]``: normalize each, average over T, normalize."""
    return unit(jnp.mean(unit(text_emb), axis=-2))


def text_direction(target_emb: Array, neutral_emb: Array) -> Array:
    """StyleCLIP's ``GetDt``: ``normalize(prompt_embedding(target) - prompt_embedding(neutral))``.

    target ``[P, T, D]`` and neutral ``[T, D]`` (or ``[P, T, D]``): the T prompt templates
    (reference: 79 ImageNet templates such as ``'a bad photo of a {}.'``) filled with the target /
    neutral text and encoded by the caller. Returns ``dt [P, D]``.
    """
    return unit(prompt_embedding(target_emb) - prompt_embedding(neutral_emb))


def channel_weights(fs3: Array, dt: Array, beta: float | Array) -> Array:
    """``r = fs3 . dt`` with ``|r| < beta`` zeroed, divided by ``max |r|`` (``GetBoundary``): ``[P, C]``.

    All-zero rows (``beta`` above every ``|r|``) stay zero.
    """
    r = jnp.einsum("cd,pd->pc", fs3, jnp.atleast_2d(dt))
    r = jnp.where(jnp.abs(r) < beta, 0.0, r)
    m = jnp.max(jnp.abs(r), axis=-1, keepdims=True)
    return r / jnp.where(m > 0, m, 1.0)


def global_edit(styles: Styles, fs3: Array, stats: Mapping[str, Styles], dt: Array, alpha: float | Array,
                beta: float | Array) -> Styles:
    """``s' = s + alpha * r * std`` (``r`` from :func:`channel_weights`) for prompts x strengths x images.

    styles ``{layer: [N, C]}`` (``G.ws_to_styles``), fs3 ``[C_total, D]``, dt ``[P, D]``, alpha
    scalar or ``[A]``. Returns ``{layer: [P, A, N, C]}``; layers without fs3 rows (ToRGB, high
    resolutions) are unchanged. Render with ``G.synthesis_from_styles`` on the styles
    reshaped to ``[P * A * N, C]``.
    """
    dims = {k: v.shape[-1] for k, v in styles.items()}
    layers = fs3_layers(dims, fs3.shape[0])
    r = channel_weights(fs3, dt, beta)  # [P, C_total]
    alpha = jnp.atleast_1d(jnp.asarray(alpha, r.dtype))
    P, A = r.shape[0], alpha.shape[0]
    out, start = {}, 0
    for name in _synthesis_order(styles):
        s = styles[name]
        if name in layers:
            rl = r[:, start:start + dims[name]]
            start += dims[name]
            shift = alpha[None, :, None] * (rl * stats["std"][name])[:, None, :]  # [P, A, C]
            out[name] = s[None, None] + shift[:, :, None, :]
        else:
            out[name] = jnp.broadcast_to(s, (P, A, *s.shape))
    return out
