"""StyleCLIP latent optimization in W+ for every (prompt, image) pair in one program."""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxedit.edits.text.losses import Array, ImageEmbed, identity_loss, minimize, unit
from jaxedit.models.stylegan2 import StyleGAN2


def styleclip_lr(lr: float, steps: int, rampdown: float = 0.25, rampup: float = 0.05) -> optax.Schedule:
    """StyleCLIP's ``get_lr``: at step i, t = i / steps,
    ``lr * (0.5 - 0.5 cos(pi * min(1, (1 - t) / rampdown))) * min(1, t / rampup)`` (0 at step 0)."""

    def schedule(count):
        t = count / steps
        ramp = 0.5 - 0.5 * jnp.cos(jnp.pi * jnp.minimum(1.0, (1.0 - t) / rampdown))
        return lr * ramp * jnp.minimum(1.0, t / rampup)

    return schedule


class LatentOptResult(NamedTuple):
    ws: Array  # [P, N, num_ws, w_dim] edited W+
    loss: Array  # [steps, P, N] total loss before each step's update
    cosine: Array  # [steps, P, N] CLIP cosine(image, text) before each step's update


def optimize_latents(G: StyleGAN2, gparams, image_embed: ImageEmbed, w0: Array, text_emb: Array, *,
                     steps: int = 300, lr: float = 0.1, l2_lambda: float = 0.008, rampdown: float = 0.25,
                     rampup: float = 0.05, noise_mode: str = "const", identity: ImageEmbed | None = None,
                     id_lambda: float = 0.0) -> LatentOptResult:
    """StyleCLIP latent optimization (``optimization/run_optimization.py``, edit mode) for every
    (prompt, image) pair at once.

    w0 ``[N, num_ws, w_dim]`` start latents, text_emb ``[P, D]``. Per pair, minimizes
    ``(1 - cos(E(G(w)), t_p)) + l2_lambda * sum((w - w0_n)^2) [+ id_lambda * identity_loss]``
    over W+ with Adam (betas 0.9, 0.999, eps 1e-8) and :func:`styleclip_lr` (learning rate 0 at
    the first step, as in the reference, whose Adam moments still see that step's gradient). The
    optional identity term (:func:`identity_loss` against ``G(w0_n)``; reference: ArcFace, weight
    0 by default) is used when ``identity`` is given. Noise: ``'const'`` (the reference's
    ``randomize_noise=False``).
    """
    P, N = text_emb.shape[0], w0.shape[0]
    L, D = w0.shape[1:]
    start = jnp.broadcast_to(w0[None], (P, N, L, D))
    t = unit(text_emb)[:, None]  # [P, 1, D]
    if identity is not None:
        feats0 = jax.lax.stop_gradient(jnp.tile(identity(G.synthesis(gparams, w0, noise_mode)), (P, 1)))

    def losses(ws):
        img = G.synthesis(gparams, ws.reshape(P * N, L, D), noise_mode)
        cos = jnp.sum(unit(image_embed(img)).reshape(P, N, -1) * t, axis=-1)
        loss = (1.0 - cos) + l2_lambda * jnp.sum(jnp.square(ws - start), axis=(-2, -1))
        if identity is not None:
            loss = loss + id_lambda * identity_loss(identity, img, feats0).reshape(P, N)
        return jnp.sum(loss), (loss, cos)

    ws, (loss, cos) = minimize(losses, start, optax.adam(styleclip_lr(lr, steps, rampdown, rampup)), steps)
    return LatentOptResult(ws, loss, cos)
