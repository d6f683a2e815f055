"""Do text-guided edits of the default generator do what the prompt says? (issue 5's table)

For every factor word of the shapes world (``jaxedit.train.clip.factor_prompts``: "a square",
"a red shape", "a large shape", "with a small spot", "a shape at the top left", "on a blue
background", ...) and a few compound prompts ("a large red circle"), each method edits the same
N latents (``shapes32-stylegan2``, psi 0.7), guided by ``shapes-clip``; the probe
(``shapes32-probe``) reads the caption words of every image before and after
(``jaxedit.metrics.attributes.words``). Per prompt:

- **success**: fraction of edited images whose named factor(s) read as the prompt says
  (compound prompts: all named factors at once); **before**: the same fraction on the originals
  (what "doing nothing" scores);
- **others**: fraction of the other factor words that changed (position, shape, size, colours;
  a word of the prompt itself never counts), and the mean |change| of the other continuous
  attributes (``attributes.change``: fractions of their ranges, hue turns).

Methods (all prompts x latents in one compiled program each):

- ``optimize``: StyleCLIP latent optimization in W+ (``STEPS`` steps, lr 0.1, L2 ``L2``);
- ``optimize-id``: the same plus the identity term with shapes-clip's image tower as the feature
  network (``ID_LAMBDA``), StyleCLIP's ID loss with CLIP standing in for ArcFace;
- ``shift``: one weight shift of ``LAYER`` per prompt, optimized over the N latents, applied with
  k = 1 to them (train) and to N other latents (held out);
- ``global``: StyleCLIP global directions (fs3 over ``FS3_IMAGES`` images, stats over 20,000
  samples, neutral "a shape"), every strength of ``ALPHAS`` x threshold of ``BETAS``;
- ``mapper``: one StyleCLIP mapper per prompt (``MAPPER_STEPS`` steps x ``MAPPER_BATCH`` fresh random
  latents, Adam ``MAPPER_LR``, L2 ``MAPPER_L2``), applied to the N latents (never seen in training);
  input PixelNorm over the features (``MapperConfig.for_generator``);
- ``mapper-refnorm``: the same with the reference's PixelNorm over the W+ layers, which on these
  equal-layer latents feeds the mapper only ``sign(w)``.

Writes ``experiments/results/text_edits_shapes.{md,json}`` and a PNG of a few prompts.

    python experiments/text_edits_shapes.py [--clip DIR] [--n 16] [--steps 50]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.io import checkpoint

from jaxedit.models import stylegan2
from jaxedit.io import images as imio
from jaxedit.edits import text
from jaxedit.models import mapper as mapper_lib
from jaxedit.metrics import attributes as A
from jaxedit.models import clip
from jaxedit.models import probe as probe_lib
from jaxedit.train.clip import factor_prompts

RESULTS = Path(__file__).resolve().parent / "results"
N, STEPS, L2, LR_SHIFT, LAMBDA2, LAYER = 16, 50, 0.008, 0.01, 0.05, "b16.conv1"
ALPHAS, BETAS, FS3_IMAGES, NEUTRAL = (2.0, 4.0), (0.15, 0.3), 16, "a shape"
PSI, SEED = 0.7, 0
MAPPER_STEPS, MAPPER_BATCH, MAPPER_LR, MAPPER_L2 = 500, 8, 0.5, 0.8
ID_LAMBDA = 0.2
#: Compound prompts: {prompt: {factor: word}}.
COMPOUND = {
    "a large red circle": {"size": "large", "color": "red", "shape": "circle"},
    "a small blue square": {"size": "small", "color": "blue", "shape": "square"},
    "a yellow triangle on a purple background": {"color": "yellow", "shape": "triangle", "background": "purple"},
}
#: Factor -> the attributes.CHANGE_NAMES columns it moves (rotation is left out: undefined for circles).
ATTR_OF = {"shape": ("shape",), "color": ("hue",), "size": ("scale",), "spot_color": ("spot_hue",),
           "spot_size": ("spot_ratio",), "position": ("x", "y"), "background": ("bg_hue",)}
SHOWN = ("a large red circle", "a triangle", "a green shape", "with a cyan spot", "a small shape")
GRID_METHODS = ("optimize", "shift", "global alpha 2 beta 0.3", "mapper")


def prompt_table() -> dict[str, dict[str, str]]:
    out = {p: {factor: word} for factor, d in factor_prompts().items() for word, p in d.items()}
    out.update(COMPOUND)
    return out


def score(P, pp, images):
    out = P(pp, jnp.clip(images, -1, 1))
    return A.words(out), A.read(out)


def evaluate(words0, read0, words1, read1, targets: list[dict[str, str]], n: int) -> list[dict]:
    """Per prompt (rows of images in prompt-major order): success, before, others changed."""
    rows = []
    delta = np.abs(np.asarray(A.change(read0, read1)))  # [P * n, 9]
    names = list(A.CHANGE_NAMES)
    for p, tgt in enumerate(targets):
        idx = range(p * n, (p + 1) * n)
        hit1 = [all(words1[i][f] == w for f, w in tgt.items()) for i in idx]
        hit0 = [all(words0[i][f] == w for f, w in tgt.items()) for i in idx]
        others = [f for f in ATTR_OF if f not in tgt]
        changed = [np.mean([words1[i][f] != words0[i][f] for f in others]) for i in idx]
        cols = [names.index(a) for f in others for a in ATTR_OF[f]]
        rows.append(dict(success=float(np.mean(hit1)), before=float(np.mean(hit0)),
                         others_changed=float(np.mean(changed)),
                         others_delta=float(delta[p * n:(p + 1) * n][:, cols].mean())))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clip", help="CLIP checkpoint (default: checkpoints/shapes-clip)")
    ap.add_argument("--n", type=int, default=N)
    ap.add_argument("--steps", type=int, default=STEPS)
    ap.add_argument("--methods", default="optimize,optimize-id,shift,global,mapper,mapper-refnorm")
    ap.add_argument("--mapper-steps", type=int, default=MAPPER_STEPS)
    ap.add_argument("--merge", action="store_true",
                    help="add these methods to the existing results (.md/.json; the .png is left as it is)")
    ap.add_argument("--out", default=str(RESULTS / "text_edits_shapes"))
    args = ap.parse_args()
    n, steps = args.n, args.steps
    G, gp = stylegan2.load(checkpoint.default_path("shapes32-stylegan2"))
    P, pp = probe_lib.load(checkpoint.default_path("shapes32-probe"))
    clip_path = args.clip or checkpoint.default_path("shapes-clip")
    guide, cp, tok = clip.load_guide(clip_path)
    table = prompt_table()
    prompts, targets = list(table), list(table.values())
    tokens = jnp.asarray(tok(prompts, context_length=guide.model.cfg.context_length, truncate=True))
    key = jax.random.key(SEED)
    z = jax.random.normal(key, (n, G.cfg.z_dim))
    z_held = jax.random.normal(jax.random.fold_in(key, 1), (n, G.cfg.z_dim))
    Pn = len(prompts)
    embed = lambda cp: (lambda x: guide.embed_images(cp, x))  # noqa: E731
    ws0 = G.mapping(gp, z, psi=PSI)
    img0 = G.synthesis(gp, ws0)
    words0, read0 = score(P, pp, jnp.tile(img0, (Pn, 1, 1, 1)))
    results, timings, shown = {}, {}, {}

    def record(name, imgs, w0=words0, r0=read0):
        words1, read1 = score(P, pp, imgs)
        results[name] = evaluate(w0, r0, words1, read1, targets, n)
        shown[name] = np.asarray(imgs).reshape(Pn, n, *imgs.shape[1:])

    methods = args.methods.split(",")
    for name, id_lambda in (("optimize", 0.0), ("optimize-id", ID_LAMBDA)):
        if name not in methods:
            continue

        @jax.jit
        def run_opt(gp, cp, ws0, tokens):
            e = embed(cp)
            res = text.optimize_latents(G, gp, e, ws0, guide.embed_texts(cp, tokens), steps=steps, l2_lambda=L2,
                                        identity=e if id_lambda else None, id_lambda=id_lambda)
            return G.synthesis(gp, res.ws.reshape(-1, *ws0.shape[1:])), res.cosine

        t0 = time.perf_counter()
        imgs, cos = jax.block_until_ready(run_opt(gp, cp, ws0, tokens))
        timings[name] = time.perf_counter() - t0
        record(name, imgs)
        print(f"{name}: {timings[name]:.0f} s (incl. compile); CLIP cosine {float(cos[0].mean()):.3f} -> "
              f"{float(cos[-1].mean()):.3f}")
    if "shift" in methods:
        @jax.jit
        def run_shift(gp, cp, ws0, ws_held, tokens):
            res = text.optimize_layer_shift(G, gp, embed(cp), ws0, guide.embed_texts(cp, tokens), LAYER, steps=steps,
                                            lr=LR_SHIFT, lambda2=LAMBDA2)
            render = lambda ws: jax.vmap(lambda x: text.apply_layer_shifts(G, gp, ws, [(LAYER, x, 1.0)])[0])(
                res.shifts)
            return render(ws0), render(ws_held), res.clip_distance

        ws_held = G.mapping(gp, z_held, psi=PSI)
        t0 = time.perf_counter()
        imgs, imgs_held, d = jax.block_until_ready(run_shift(gp, cp, ws0, ws_held, tokens))
        timings["shift"] = time.perf_counter() - t0
        record("shift", imgs.reshape(-1, *imgs.shape[2:]))
        w_h, r_h = score(P, pp, jnp.tile(G.synthesis(gp, ws_held), (Pn, 1, 1, 1)))
        record("shift (held-out latents)", imgs_held.reshape(-1, *imgs_held.shape[2:]), w_h, r_h)
        print(f"shift: {timings['shift']:.0f} s; D_clip {float(d[0].mean()):.3f} -> {float(d[-1].mean()):.3f}")
    if "global" in methods:
        @jax.jit
        def run_global(gp, cp, ws0, tokens, neutral):
            k = jax.random.key(5)
            stats = text.style_channel_stats(G, gp, k, 20_000)
            ws_fs3 = G.mapping(gp, jax.random.normal(jax.random.fold_in(k, 1), (FS3_IMAGES, G.cfg.z_dim)), psi=PSI)
            fs3 = text.channel_relevance(G, gp, embed(cp), ws_fs3, stats)
            dt = text.text_direction(guide.embed_texts(cp, tokens)[:, None], guide.embed_texts(cp, neutral))
            out = {}
            for beta in BETAS:
                edited = text.global_edit(G.ws_to_styles(gp, ws0), fs3, stats, dt, jnp.asarray(ALPHAS), beta)
                for a, alpha in enumerate(ALPHAS):
                    flat = {k: v[:, a].reshape(-1, v.shape[-1]) for k, v in edited.items()}
                    out[alpha, beta] = G.synthesis_from_styles(gp, flat)
            return out, {b: jnp.sum(text.channel_weights(fs3, dt, b) != 0, -1) for b in BETAS}

        neutral = jnp.asarray(tok([NEUTRAL], context_length=guide.model.cfg.context_length))
        t0 = time.perf_counter()
        imgs, channels = jax.block_until_ready(run_global(gp, cp, ws0, tokens, neutral))
        timings["global"] = time.perf_counter() - t0
        for (alpha, beta), im in imgs.items():
            record(f"global alpha {alpha:g} beta {beta:g}", im)
        print(f"global: {timings['global']:.0f} s; channels per prompt (median) "
              f"{ {b: int(np.median(c)) for b, c in channels.items()} }")

    for name, norm in (("mapper", "features"), ("mapper-refnorm", "layers")):
        if name not in methods:
            continue
        M = mapper_lib.Mapper(mapper_lib.MapperConfig.for_generator(G.cfg.num_ws, G.cfg.w_dim, norm=norm))

        @jax.jit
        def run_mapper(gp, cp, ws0, tokens):
            res = text.train_mappers(M, G, gp, embed(cp), guide.embed_texts(cp, tokens), jax.random.key(3),
                                     steps=args.mapper_steps, batch=MAPPER_BATCH, psi=PSI, lr=MAPPER_LR,
                                     l2_lambda=MAPPER_L2)
            ws = jax.vmap(lambda p: M(p, ws0))(res.params)
            return G.synthesis(gp, ws.reshape(-1, *ws0.shape[1:])), res.metrics["clip"]

        t0 = time.perf_counter()
        imgs, d = jax.block_until_ready(run_mapper(gp, cp, ws0, tokens))
        timings[name] = time.perf_counter() - t0
        record(name, imgs)
        print(f"{name}: {timings[name]:.0f} s; training D_clip {float(d[:10].mean()):.3f} -> "
              f"{float(d[-10:].mean()):.3f}")

    write(args, prompts, targets, results, timings, shown, n, steps, clip_path, np.asarray(img0))


def summarize(prompts, targets, rows):
    """Per factor (single-factor prompts) and for the compound prompts: mean of the per-prompt numbers."""
    groups: dict[str, list[dict]] = {}
    for p, t, r in zip(prompts, targets, rows):
        groups.setdefault(next(iter(t)) if len(t) == 1 else "compound", []).append(r)
    return {g: {k: float(np.mean([r[k] for r in rs])) for k in rs[0]} | {"prompts": len(rs)} for g, rs in groups.items()}


def write(args, prompts, targets, results, timings, shown, n, steps, clip_path, originals):
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if args.merge:
        old = json.loads(out.with_suffix(".json").read_text())
        if old["prompts"] != prompts or old["n"] != n or old["steps"] != steps:
            raise SystemExit(f"--merge: {out.with_suffix('.json')} has other prompts, n or steps")
        results, timings = old["results"] | results, old["timings"] | timings
    summary = {m: summarize(prompts, targets, rows) for m, rows in results.items()}
    lines = ["# Text-guided edits of `shapes32-stylegan2`, scored by `shapes32-probe`", "",
             f"CLIP: `{Path(clip_path).name}`. {n} latents (psi {PSI}) per prompt, {len(prompts)} prompts "
             f"(every factor word + {len(COMPOUND)} compound). optimize: {steps} steps, L2 {L2}; shift: layer "
             f"`{LAYER}`, {steps} steps, lambda2 {LAMBDA2}, k = 1; global: alphas {ALPHAS} x betas {BETAS}, neutral "
             f"'{NEUTRAL}'; optimize-id: + {ID_LAMBDA} x (1 - cos) of CLIP image embeddings of edited and original; mapper: {args.mapper_steps} steps x {MAPPER_BATCH} random latents, lr {MAPPER_LR}, L2 "
             f"{MAPPER_L2}, applied to the same latents (unseen in training). success = named factor(s) read as the prompt says; before = same on the originals; "
             "others = fraction of the other factor words that changed / mean |change| of their attributes.", ""]
    for m, s in summary.items():
        lines += [f"## {m} ({timings.get(m.split(' ')[0], float('nan')):.0f} s incl. compile)", "",
                  "| factor | prompts | success | before | others changed | others |change| |",
                  "|---|---:|---:|---:|---:|---:|"]
        for g, r in s.items():
            lines.append(f"| {g} | {r['prompts']} | {r['success']:.2f} | {r['before']:.2f} | "
                         f"{r['others_changed']:.2f} | {r['others_delta']:.3f} |")
        lines.append("")
    lines += ["## Per prompt (success / before / others changed)", "",
              "| prompt | " + " | ".join(results) + " |", "|---|" + "---:|" * len(results)]
    for i, p in enumerate(prompts):
        lines.append(f"| {p} | " + " | ".join(f"{results[m][i]['success']:.2f} / {results[m][i]['before']:.2f} / "
                                             f"{results[m][i]['others_changed']:.2f}" for m in results) + " |")
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    out.with_suffix(".json").write_text(json.dumps(dict(prompts=prompts, targets=targets, results=results,
                                                        summary=summary, timings=timings, n=n, steps=steps), indent=1))
    # grid: a row of originals (first 6 latents), then per shown prompt one row per GRID_METHODS
    cols = min(n, 6)
    rows = [originals[:cols]]
    for p in SHOWN:
        if p in prompts:
            for m in GRID_METHODS:
                if m in shown:
                    rows.append(shown[m][prompts.index(p), :cols])
    if len(rows) > 1 and not args.merge:
        imio.save_grid(np.concatenate(rows), out.with_suffix(".png"), cols=cols)
    print("\n".join(lines[:40]))


if __name__ == "__main__":
    main()
