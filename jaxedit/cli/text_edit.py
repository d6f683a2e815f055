"""``jaxedit text-edit``: text-guided edits of seeds (or inverted W+ latents) as a PNG grid, several prompts at once.

Every prompt x seed (x strength) of one command runs in ONE compiled program
(:mod:`jaxedit.edits.text`); the generator's and CLIP's parameters are arguments of that program,
not constants baked into it.

The start latents are the seeds' z mapped to W+ with truncation ``--psi`` (default 0.7), or with
``--latents`` the W+ codes of ``jaxedit invert``'s ``latents.npz`` (or a ``.npy`` ``[N, num_ws, w_dim]``)
as they are: every method starts from them, rows are labelled by their names, and ``--psi`` is
refused with them (except to truncate the random training latents of ``--method mapper``).

- ``--method optimize``: StyleCLIP latent optimization in W+; grid rows = seeds, columns =
  the original then one column per prompt.
- ``--method global``: StyleCLIP global directions (channel relevance ``fs3`` computed for this
  generator and CLIP, or read with ``--fs3``); rows = prompts x seeds, columns = strengths alpha.
- ``--method shift``: the CLIP-guided shift of one conv layer's weights, one shift per prompt
  optimized over all the seeds; rows = prompts x seeds, columns = strengths k.
- ``--method mapper``: StyleCLIP latent mappers ``w + 0.1 M(w)``, one per prompt, trained together
  on fresh random latents (``--steps`` x ``--batch-size``) then applied to the seeds, or read from a
  mapper checkpoint (``--mapper``: ``--save-mapper`` or ``jaxedit convert mapper``); rows = seeds,
  columns = the original then one per prompt.
"""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.cli.common import (
    DEFAULT_CLIP,
    check_outputs,
    inverted_latents,
    load_generator,
    model_path,
    parse_seeds,
    parse_strengths,
    require_stylegan2,
    seed_latents,
    strength_labels,
    text_label,
)
from jaxedit.converters.styleclip import load_fs3
from jaxedit.edits import text
from jaxedit.errors import UsageError
from jaxedit.io import checkpoint, files
from jaxedit.io import images as imio
from jaxedit.io.progress import Progress
from jaxedit.models import clip
from jaxedit.models import mapper as mapper_lib

DEFAULT_SEEDS = "0-7"
DEFAULT_PSI = 0.7  # truncation of the seeds' start latents (and of the mapper's training latents)
DEFAULT_STRENGTHS = {"global": "0:4:5", "shift": "-3:3:7"}
DEFAULT_STEPS = {"optimize": 100, "shift": 100, "mapper": 500}
DEFAULT_LR = {"optimize": 0.1, "shift": 0.01, "mapper": 0.5}
DEFAULT_L2 = {"optimize": 0.008, "shift": 0.05, "mapper": 0.8}


def _load(args, seeds):
    """-> G, gparams, guide, clip params, tokenizer, prompts, row names, start latents x, mappers ((Mapper, params)
    or None); x is z ``[N, z_dim]`` of ``seeds``, or the W+ ``[N, num_ws, w_dim]`` of ``--latents`` (``seeds``
    None), read and checked right after the generator (whose W+ shape they must have), before CLIP or any compute."""
    G, gp = load_generator(args.ckpt, unconditional="text-edit")
    if args.latents:
        x, names = inverted_latents(args.latents, G)
    else:
        x, names = seed_latents(seeds, G.cfg.z_dim), [str(s) for s in seeds]
    if args.method in ("global", "shift"):
        require_stylegan2(G, f"text-edit --method {args.method}")
    guide, cp, tok = clip.load_guide(model_path(args.clip, DEFAULT_CLIP), args.preprocess)
    if args.mapper:
        if args.method != "mapper":
            raise UsageError("--mapper is for --method mapper")
        if args.prompt:
            raise UsageError("--mapper: the prompts come from the mapper checkpoint; drop --prompt")

        M, mparams, prompts = mapper_lib.load_mappers(args.mapper)
        if (M.cfg.num_ws, M.cfg.w_dim) != (G.cfg.num_ws, G.cfg.w_dim):
            raise UsageError(f"--mapper {args.mapper}: maps W+ {M.cfg.num_ws} x {M.cfg.w_dim}, but the generator's "
                             f"W+ is {G.cfg.num_ws} x {G.cfg.w_dim}")
        mappers = (M, mparams)
    else:
        mappers = None
        prompts = [p for p in args.prompt if p.strip()]
        if not prompts:
            raise UsageError("text-edit: give at least one non-empty --prompt")
    return G, gp, guide, cp, tok, prompts, names, x, mappers


def _start(args, G, gp, x):
    """The W+ start latents (inside the compiled program): the seeds' z mapped with --psi, or --latents as given."""
    return x if args.latents else G.mapping(gp, x, psi=args.psi)


def _tokens(tok, guide, texts):

    return jnp.asarray(tok(texts, context_length=guide.model.cfg.context_length, truncate=True))


def _optimize(args, G, gp, guide, cp, tok, prompts, z):

    @jax.jit
    def run(gp, cp, z, tokens):
        w0 = _start(args, G, gp, z)
        embed = lambda x: guide.embed_images(cp, x)  # noqa: E731
        res = text.optimize_latents(G, gp, embed, w0, guide.embed_texts(cp, tokens), steps=args.steps, lr=args.lr,
                                    l2_lambda=args.l2, identity=embed if args.id_lambda else None,
                                    id_lambda=args.id_lambda)
        P, N = res.ws.shape[:2]
        imgs = G.synthesis(gp, jnp.concatenate([w0, res.ws.reshape(P * N, *w0.shape[1:])]))
        return imgs, res.cosine[0], text.clip_cosine(embed, imgs[N:], jnp.repeat(
            guide.embed_texts(cp, tokens), N, axis=0)).reshape(P, N), res.ws

    imgs, cos0, cos1, ws = jax.device_get(run(gp, cp, jnp.asarray(z), _tokens(tok, guide, prompts)))
    N = z.shape[0]
    cells = imgs.reshape(len(prompts) + 1, N, *imgs.shape[1:]).transpose(1, 0, 2, 3, 4)  # rows = seeds
    return cells.reshape(-1, *imgs.shape[1:]), len(prompts) + 1, cos0, cos1, {"ws": ws}


def _global(args, G, gp, guide, cp, tok, prompts, z, strengths):

    templates = args.template or ["{}"]
    fill = lambda t: [tpl.format(t) for tpl in templates]  # noqa: E731
    target = _tokens(tok, guide, [s for p in prompts for s in fill(p)])
    neutral = _tokens(tok, guide, fill(args.neutral))
    key = jax.random.key(args.stats_seed)

    @jax.jit
    def stats_fs3(gp, cp):
        stats = text.style_channel_stats(G, gp, key, args.stats_samples)
        ws = G.mapping(gp, jax.random.normal(jax.random.fold_in(key, 1), (args.fs3_images, G.cfg.z_dim)), psi=0.7)
        embed = lambda x: guide.embed_images(cp, x)  # noqa: E731
        return stats, text.channel_relevance(G, gp, embed, ws, stats)

    @jax.jit
    def run(gp, cp, z, fs3, stats, target, neutral):
        T = len(templates)
        dt = text.text_direction(guide.embed_texts(cp, target).reshape(len(prompts), T, -1),
                                 guide.embed_texts(cp, neutral))
        styles = G.ws_to_styles(gp, _start(args, G, gp, z))
        edited = text.global_edit(styles, fs3, stats, dt, jnp.asarray(strengths), args.beta)
        flat = {k: v.reshape(-1, v.shape[-1]) for k, v in edited.items()}
        imgs = G.synthesis_from_styles(gp, flat)  # [P * A * N, ...]
        channels = jnp.sum(text.channel_weights(fs3, dt, args.beta) != 0, axis=-1)
        return imgs, channels, dt

    if args.fs3:

        fs3 = load_fs3(args.fs3, G, guide.model.cfg.embed_dim)
        stats, _ = jax.jit(lambda gp: (text.style_channel_stats(G, gp, key, args.stats_samples), 0))(gp)
    else:
        stats, fs3 = stats_fs3(gp, cp)
    imgs, channels, dt = jax.device_get(run(gp, cp, jnp.asarray(z), jnp.asarray(fs3), stats, target, neutral))
    P, A, N = len(prompts), len(strengths), z.shape[0]
    cells = imgs.reshape(P, A, N, *imgs.shape[1:]).transpose(0, 2, 1, 3, 4, 5)  # rows = prompt x seed
    for p, c in zip(prompts, channels):
        print(f"  {p!r}: {int(c)} channels above beta {args.beta}")
    return cells.reshape(-1, *imgs.shape[1:]), A, {"fs3": np.asarray(fs3), "dt": dt}


def _shift(args, G, gp, guide, cp, tok, prompts, z, strengths):

    if args.layer not in G.cfg.layer_ws():
        raise UsageError(f"--layer {args.layer!r}: not a modulated layer of this generator; choose from "
                         f"{list(G.cfg.layer_ws())}")

    @jax.jit
    def run(gp, cp, z, tokens):
        ws = _start(args, G, gp, z)
        embed = lambda x: guide.embed_images(cp, x)  # noqa: E731
        res = text.optimize_layer_shift(G, gp, embed, ws, guide.embed_texts(cp, tokens), args.layer,
                                        steps=args.steps, lr=args.lr, lambda2=args.l2)
        imgs = jax.vmap(lambda x: text.apply_layer_shifts(G, gp, ws, [(args.layer, x, jnp.asarray(strengths))]))(
            res.shifts)  # [P, K, N, ...]
        return imgs, res.clip_distance[0], res.clip_distance[-1], res.shifts

    imgs, d0, d1, shifts = jax.device_get(run(gp, cp, jnp.asarray(z), _tokens(tok, guide, prompts)))
    P, K, N = imgs.shape[:3]
    cells = imgs.transpose(0, 2, 1, 3, 4, 5)  # rows = prompt x seed
    return cells.reshape(-1, *imgs.shape[3:]), K, 1 - d0, 1 - d1, {"shifts": shifts, "layer": args.layer}


def _mapper(args, G, gp, guide, cp, tok, prompts, z, trained=None):

    tokens = _tokens(tok, guide, prompts)
    M = trained[0] if trained else mapper_lib.Mapper(mapper_lib.MapperConfig.for_generator(G.cfg.num_ws, G.cfg.w_dim))

    bar = None if trained else Progress(total=args.steps, unit="step", desc=f"training {len(prompts)} mappers")

    def report(step, clip):
        if bar.done == 0:
            bar.restart_rate(0)  # the first report comes after the compile: measure the rate from here
        bar.update(int(step), D_clip=float(np.mean(clip)))

    @jax.jit
    def run(gp, cp, z, tokens, mparams):
        t = guide.embed_texts(cp, tokens)
        embed = lambda x: guide.embed_images(cp, x)  # noqa: E731
        if mparams is None:
            mparams = text.train_mappers(M, G, gp, embed, t, jax.random.key(args.train_seed), steps=args.steps,
                                         batch=args.batch_size, psi=args.psi, lr=args.lr, l2_lambda=args.l2,
                                         identity=embed if args.id_lambda else None, id_lambda=args.id_lambda,
                                         report=report, report_every=max(1, args.steps // 100)).params
        w0 = _start(args, G, gp, z)
        ws = jax.vmap(lambda p: M(p, w0))(mparams)  # [P, N, L, D]
        P, N = ws.shape[:2]
        imgs = G.synthesis(gp, jnp.concatenate([w0, ws.reshape(P * N, *w0.shape[1:])]))
        unit = lambda v: v / jnp.linalg.norm(v, axis=-1, keepdims=True)  # noqa: E731
        cos0 = unit(t) @ unit(embed(imgs[:N])).T  # [P, N]: the originals embedded once
        cos1 = text.clip_cosine(embed, imgs[N:], jnp.repeat(t, N, axis=0)).reshape(P, N)
        return imgs, cos0, cos1, mparams, ws

    try:
        imgs, cos0, cos1, mparams, ws = jax.device_get(run(gp, cp, jnp.asarray(z), tokens,
                                                           trained[1] if trained else None))
    finally:
        if bar is not None:
            bar.close()
    N = z.shape[0]
    cells = imgs.reshape(len(prompts) + 1, N, *imgs.shape[1:]).transpose(1, 0, 2, 3, 4)  # rows = seeds
    if args.save_mapper:
        mapper_lib.save_mappers(args.save_mapper, M, mparams, prompts, force=args.force,
                          source={"trained_by": "jaxedit text-edit --method mapper", "steps": args.steps,
                                  "batch": args.batch_size, "lr": args.lr, "l2": args.l2, "id_lambda": args.id_lambda,
                                  "psi": args.psi,
                                  "clip": str(args.clip or DEFAULT_CLIP)})
    return cells.reshape(-1, *imgs.shape[1:]), len(prompts) + 1, cos0, cos1, {"ws": ws}


def run_text_edit(args) -> None:

    out = Path(args.out)
    if args.method != "global":
        args.steps = DEFAULT_STEPS[args.method] if args.steps is None else args.steps
        args.lr = DEFAULT_LR[args.method] if args.lr is None else args.lr
        args.l2 = DEFAULT_L2[args.method] if args.l2 is None else args.l2
        if args.steps <= 0:
            raise UsageError(f"--steps {args.steps}: must be positive")
    if args.batch_size <= 0:
        raise UsageError(f"--batch-size {args.batch_size}: must be positive")
    if args.latents and args.seeds is not None:
        raise UsageError(f"--latents {args.latents} and --seeds {args.seeds}: give one of them (the start latents)")
    if args.latents and args.psi is not None and (args.method != "mapper" or args.mapper):
        raise UsageError(f"--psi {args.psi}: truncation is for the seeds' latents, --latents {args.latents} are used "
                         "as given; drop --psi")
    args.psi = DEFAULT_PSI if args.psi is None else args.psi
    seeds = None if args.latents else parse_seeds(args.seeds or DEFAULT_SEEDS)
    if not args.mapper and not any(p.strip() for p in args.prompt):
        raise UsageError("text-edit: give at least one non-empty --prompt")
    if args.id_lambda and (args.method not in ("optimize", "mapper") or args.mapper or args.id_lambda < 0):
        raise UsageError(f"--id-lambda {args.id_lambda}: a weight >= 0 for --method optimize or mapper (training)")
    check_outputs("--out", [out], args.force)
    check_outputs("--save", [args.save], args.force)
    if args.save_mapper:
        if args.method != "mapper" or args.mapper:
            raise UsageError("--save-mapper is for --method mapper when training (without --mapper)")
        checkpoint.check_writable(args.save_mapper, args.force, mapper_lib.MAPPER_KIND)
    G, gp, guide, cp, tok, prompts, names, z, mappers = _load(args, seeds)
    what = "latents" if args.latents else "seeds"
    t0 = time.perf_counter()
    if args.method in ("optimize", "mapper"):
        if args.method == "optimize":
            grid, cols, before, after, saved = _optimize(args, G, gp, guide, cp, tok, prompts, z)
        else:
            grid, cols, before, after, saved = _mapper(args, G, gp, guide, cp, tok, prompts, z, mappers)
        layout = f"rows = {what}, columns = original then one per prompt"
        rows = [text_label(n) if args.latents else f"seed {n}" for n in names]
        columns = ["original", *map(text_label, prompts)]
    else:
        strengths = parse_strengths(args.strengths or DEFAULT_STRENGTHS[args.method])
        if args.method == "global":
            grid, cols, saved = _global(args, G, gp, guide, cp, tok, prompts, z, strengths)
            before = after = None
        else:
            grid, cols, before, after, saved = _shift(args, G, gp, guide, cp, tok, prompts, z, strengths)
        layout = f"rows = prompts x {what}, columns = strengths {np.round(strengths, 3).tolist()}"
        rows = [f"{text_label(p, 16)} / {text_label(n, 16)}" for p in prompts for n in names]
        columns = strength_labels(strengths)
    dt = time.perf_counter() - t0
    args.signals.check()
    imio.save_grid(grid, out, cols=cols, row_labels=rows, col_labels=columns)
    if args.save:
        start = {"names": np.asarray(names)} if args.latents else {"seeds": np.asarray(seeds)}
        files.save_npz(args.save, prompts=np.asarray(prompts), **start, **saved)
    print(f"text-edit --method {args.method}: {len(prompts)} prompts x {len(names)} {what} in {dt:.2f} s "
          f"(one program, incl. compile) -> {out} ({layout})")
    if before is not None:
        for p, b, a in zip(prompts, np.asarray(before), np.asarray(after)):
            print(f"  {p!r}: CLIP cosine {float(np.mean(b)):.3f} -> {float(np.mean(a)):.3f}")
