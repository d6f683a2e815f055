"""Training StyleCLIP mappers: P mappers (one per prompt) in one ``lax.scan`` with vmapped parameters and Adam."""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxedit.edits.text.losses import Array, ImageEmbed, clip_cosine, identity_loss
from jaxedit.errors import InputError
from jaxedit.models.mapper import Mapper
from jaxedit.models.stylegan2 import StyleGAN2


def mapper_loss(M: Mapper, mparams, G: StyleGAN2, gparams, image_embed: ImageEmbed, ws: Array, text_emb: Array, *,
                clip_lambda: float = 1.0, l2_lambda: float = 0.8, noise_mode: str = "const",
                identity: ImageEmbed | None = None, id_lambda: float = 0.1):
    """The reference's mapper loss (``mapper/training/coach.py``) for one prompt ``text_emb [D]``:
    ``clip_lambda * mean_b D_clip + l2_lambda * mean((w_hat - w)^2)`` (torch ``MSELoss``), plus
    ``id_lambda * mean_b identity_loss`` against ``G(w)`` when ``identity`` is given (the
    reference: ArcFace, 0.1). -> ``(loss, metrics)``."""
    w_hat = M(mparams, ws)
    img = G.synthesis(gparams, w_hat, noise_mode)
    d = 1.0 - clip_cosine(image_embed, img, text_emb)
    clip, l2 = jnp.mean(d), jnp.mean(jnp.square(w_hat - ws))
    loss = clip_lambda * clip + l2_lambda * l2
    metrics = {"clip": clip, "l2": l2}
    if identity is not None:
        ref = jax.lax.stop_gradient(identity(G.synthesis(gparams, ws, noise_mode)))
        metrics["id"] = jnp.mean(identity_loss(identity, img, ref))
        loss = loss + id_lambda * metrics["id"]
    return loss, {"loss": loss, **metrics}


def init_mappers(M: Mapper, key: Array, num_prompts: int, optimizer: optax.GradientTransformation):
    """P independently initialized mappers and their optimizer states, stacked on a leading axis
    (mapper i from ``fold_in(key, i)``: the same whatever P)."""
    params = jax.vmap(lambda i: M.init(jax.random.fold_in(key, i)))(jnp.arange(num_prompts))
    return params, jax.vmap(optimizer.init)(params)


def _mapper_update(M: Mapper, G: StyleGAN2, image_embed: ImageEmbed, optimizer: optax.GradientTransformation,
                   **loss_kw):
    """``(mparams [P..], opt_state [P..], gparams, ws [B, L, D], text_emb [P, D]) -> (mparams, opt_state, metrics [P])``."""

    def one(mp, st, gparams, ws, t):
        grads, metrics = jax.grad(lambda p: mapper_loss(M, p, G, gparams, image_embed, ws, t, **loss_kw),
                                  has_aux=True)(mp)
        upd, st = optimizer.update(grads, st, mp)
        return optax.apply_updates(mp, upd), st, metrics

    return jax.vmap(one, in_axes=(0, 0, None, None, 0))


def make_mapper_step(M: Mapper, G: StyleGAN2, image_embed: ImageEmbed, optimizer: optax.GradientTransformation, *,
                     clip_lambda: float = 1.0, l2_lambda: float = 0.8, noise_mode: str = "const",
                     identity: ImageEmbed | None = None, id_lambda: float = 0.1):
    """A jitted training step for P mappers (one per prompt) on a shared batch of latents::

        step(mparams, opt_state, gparams, ws [B, num_ws, w_dim], text_emb [P, D])
            -> (mparams, opt_state, {'loss', 'clip', 'l2' (, 'id'): [P]})

    ``mparams`` / ``opt_state`` stacked over P (:func:`init_mappers`); ``vmap`` over both.
    Reference: Ranger (RAdam + Lookahead + gradient centralization) lr 0.5, batch 2, 50,000
    steps; ``optax.adam(lr)`` matches its ``--optim_name adam`` option.
    """
    return jax.jit(_mapper_update(M, G, image_embed, optimizer, clip_lambda=clip_lambda, l2_lambda=l2_lambda,
                                  noise_mode=noise_mode, identity=identity, id_lambda=id_lambda))


class MapperTrainResult(NamedTuple):
    params: dict  # P mappers stacked on a leading axis
    metrics: dict[str, Array]  # 'loss', 'clip' (mean D_clip of the step's batch), 'l2' (, 'id'): [steps, P]


def train_mappers(M: Mapper, G: StyleGAN2, gparams, image_embed: ImageEmbed, text_emb: Array, key: Array, *,
                  steps: int, batch: int = 8, psi: float = 0.7, lr: float = 0.5, clip_lambda: float = 1.0,
                  l2_lambda: float = 0.8, noise_mode: str = "const", identity: ImageEmbed | None = None,
                  id_lambda: float = 0.1, report: Callable[[Array, Array], None] | None = None,
                  report_every: int = 10) -> MapperTrainResult:
    """Train P mappers (one per prompt ``text_emb [P, D]``) in one program: ``lax.scan`` over
    ``steps``, each step on a fresh batch of ``batch`` latents ``G.mapping(z, psi)`` shared by the
    P mappers (the reference trains on e4e inversions of real images; a generator's own latents
    stand in for them). Adam(``lr``; 0.5 is the reference's Ranger lr, and the best of 0.005-0.5
    on the shapes world); the loss is :func:`mapper_loss`. -> params stacked ``[P, ...]`` and
    per-step metrics ``[steps, P]``. ``report(step, clip [P])``, if given, is called from inside
    the program (``jax.debug.callback``) every ``report_every`` steps, e.g. to drive a progress bar.
    """
    if text_emb.ndim != 2:
        raise InputError(f"text_emb must be [P, D], got {list(text_emb.shape)}")
    optimizer = optax.adam(lr)
    update = _mapper_update(M, G, image_embed, optimizer, clip_lambda=clip_lambda, l2_lambda=l2_lambda,
                            noise_mode=noise_mode, identity=identity, id_lambda=id_lambda)
    k_init, k_data = jax.random.split(key)
    mparams, state = init_mappers(M, k_init, text_emb.shape[0], optimizer)

    def step(carry, inp):
        mp, st = carry
        i, k = inp
        ws = G.mapping(gparams, jax.random.normal(k, (batch, G.cfg.z_dim)), psi=psi)
        mp, st, m = update(mp, st, gparams, ws, text_emb)
        if report is not None:
            jax.lax.cond((i + 1) % report_every == 0, lambda: jax.debug.callback(report, i + 1, m["clip"]), lambda: None)
        return (mp, st), m

    (mparams, _), metrics = jax.lax.scan(step, (mparams, state), (jnp.arange(steps), jax.random.split(k_data, steps)))
    return MapperTrainResult(mparams, metrics)
