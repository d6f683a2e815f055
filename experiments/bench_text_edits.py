#!/usr/bin/env python
"""Benchmark the text-guided edits (``jaxedit.edits.text``): everything batched in one compiled
program vs the reference's structure (one pair / prompt / channel per call, in a Python loop,
each call jitted).

Generator: the default ``checkpoints/shapes32-stylegan2``. CLIP: the default ``checkpoints/shapes-clip``.
Prompts are shapes-world captions.

Cases (N latents at psi 0.7, M prompts):

- ``latent-opt``: StyleCLIP latent optimization, ``STEPS`` steps, all M x N pairs in one program
  vs one (prompt, image) pair per call;
- ``layer-shift``: the seed-002 one-layer weight shift on ``b16.conv1``, ``STEPS`` steps, all M
  prompts (each over the N latents) in one program vs one prompt per call;
- ``fs3``: StyleCLIP channel relevance over every non-ToRGB channel, ``FS3_IMAGES`` images,
  one program vs one channel per call (the loop timed on the first ``FS3_LOOP`` channels);
- ``global-edit``: M prompts x ``ALPHAS`` strengths x ``N_GLOBAL`` images edited and rendered in one
  program vs one (prompt, strength) per call;
- ``mapper``: StyleCLIP mapper training, ``STEPS`` steps on fresh batches of N latents, M mappers
  (one per prompt) in one program vs one mapper per call.

Items/s count rendered images (with their backward pass where the method has one). GFLOP/s
use a per-image estimate: forward FLOPs of generator + CLIP image tower from XLA's cost
analysis of the jitted forward, x3 for forward + backward; the fraction is of the XLA 3x3
conv / matmul peaks measured in the same run. Writes ``experiments/results/bench_text_edits.{md,json}``.

    python experiments/bench_text_edits.py
"""

from __future__ import annotations

import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import bench_generator as bg  # noqa: E402 - timing helpers, peaks, machine info

N, STEPS, ALPHAS, FS3_IMAGES, FS3_LOOP, N_GLOBAL = 8, 50, 5, 4, 32, 32
PROMPTS = ["a red circle", "a large blue square", "a small green triangle", "a yellow shape on a purple background"]
LAYER = "b16.conv1"
MAX_OTHER = 0.25


def load_clip():
    """-> (description, image_embed, text_emb [M, D]) of the default ``shapes-clip``."""
    import jax.numpy as jnp

    import jaxedit
    from jaxedit.io import checkpoint
    from jaxedit.models import clip
    from jaxedit.models.clip.tokenizer import Tokenizer

    path = checkpoint.default_path("shapes-clip")
    model, params = jaxedit.load(path)
    mode = checkpoint.read_meta(path).get("source", {}).get("preprocess", "clip")
    tokens = Tokenizer.from_file(path)(PROMPTS, context_length=model.cfg.context_length)
    text = model.encode_text(params, jnp.asarray(tokens))
    res = model.cfg.image_resolution
    embed = lambda x: model.encode_image(params, clip.preprocess(x, res, mode))  # noqa: E731
    return f"shapes-clip (jaxedit.models.clip, preprocess {mode!r})", embed, text


def per_image_gflop(G, gp, embed=None) -> float:
    """Forward GFLOP per image (generator, + CLIP image tower if ``embed``) from XLA's cost analysis, batch 8."""
    import jax

    ws = G.mapping(gp, jax.random.normal(jax.random.key(0), (8, G.cfg.z_dim)), psi=0.7)
    fn = (lambda w: embed(G.synthesis(gp, w))) if embed else (lambda w: G.synthesis(gp, w))
    cost = jax.jit(fn).lower(ws).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost["flops"]) / 8 / 1e9


def main():
    import jax
    import jax.numpy as jnp
    import numpy as np

    import jaxedit
    from jaxedit.edits import text as T
    from jaxedit.models import mapper as mapper_lib

    t_start = time.perf_counter()
    G, gp = jaxedit.load("shapes32-stylegan2")
    clip_desc, embed, text = load_clip()
    bg.log(f"CLIP: {clip_desc}")
    M = text.shape[0]
    ws = G.mapping(gp, jax.random.normal(jax.random.key(1), (N, G.cfg.z_dim)), psi=0.7)
    fwd_gflop = per_image_gflop(G, gp, embed)
    g_gflop = per_image_gflop(G, gp)  # global edits render without CLIP
    bg.log(f"forward GFLOP/image (G + CLIP image tower): {fwd_gflop:.4f}")
    peaks = bg.xla_peaks(2, MAX_OTHER, False)
    rows, quality = [], {}

    peak = max(peaks["xla_conv_peak"], peaks["xla_matmul_peak"])

    def timed(case, impl, fn, images, gflop_per_image, repeats=1):
        r = bg.time_runs(fn, repeats, 0, MAX_OTHER, False)
        s = r["median_s"]
        row = dict(case=case, impl=impl, images=images, first_call_s=r["first_call_s"], s=s, images_per_s=images / s,
                   gflops=images * gflop_per_image / s, other_cpu_frac_during=r["other_cpu_frac_during"])
        row["pct_peak"] = 100 * row["gflops"] / peak
        bg.log(f"  {case} / {impl}: {images} images in {s:.2f} s = {row['images_per_s']:.0f}/s "
               f"(first call {r['first_call_s']:.1f} s)")
        rows.append(row)
        return row

    block = jax.block_until_ready

    # -- latent optimization: all M x N pairs vs one pair per call
    opt = jax.jit(lambda w0, t: T.optimize_latents(G, gp, embed, w0, t, steps=STEPS))
    out = {}
    timed("latent-opt", "batched", lambda: out.update(r=block(opt(ws, text))), M * N * STEPS, 3 * fwd_gflop)
    timed("latent-opt", "loop", lambda: block([opt(ws[n:n + 1], text[m:m + 1]) for m in range(M) for n in range(N)]),
          M * N * STEPS, 3 * fwd_gflop)
    cos = np.asarray(out["r"].cosine)
    quality["latent-opt"] = dict(cos_start=float(cos[0].mean()), cos_end=float(cos[-1].mean()),
                                 per_prompt_end=cos[-1].mean(1).round(3).tolist())

    # -- layer shift: all M prompts (each over N latents) vs one prompt per call
    shift = jax.jit(lambda w, t: T.optimize_layer_shift(G, gp, embed, w, t, LAYER, steps=STEPS, lr=0.01))
    timed("layer-shift", "batched", lambda: out.update(s=block(shift(ws, text))), M * N * STEPS, 3 * fwd_gflop)
    timed("layer-shift", "loop", lambda: block([shift(ws, text[m:m + 1]) for m in range(M)]), M * N * STEPS,
          3 * fwd_gflop)
    d = np.asarray(out["s"].clip_distance)
    quality["layer-shift"] = dict(clip_distance_start=d[0].round(3).tolist(), clip_distance_end=d[-1].round(3).tolist(),
                                  shift_norms=[float(jnp.linalg.norm(x)) for x in out["s"].shifts])

    # -- fs3: every channel in one program vs one channel per call
    stats = jax.jit(lambda k: T.style_channel_stats(G, gp, k, n=20_000, batch=1000))(jax.random.key(5))
    wf = ws[:FS3_IMAGES]
    layers = T.relevance_layers(G)
    total = sum(T.style_dims(G)[n] for n in layers)
    rel = jax.jit(lambda w: T.channel_relevance(G, gp, embed, w, stats, batch=256))
    timed("fs3", "batched", lambda: out.update(f=block(rel(wf))), 2 * FS3_IMAGES * total, fwd_gflop)
    styles = G.ws_to_styles(gp, wf)

    @jax.jit
    def one_channel(layer_onehot, value):  # the reference's unit of work: one channel, 2 x M renders
        imgs = []
        for sgn in (-1.0, 1.0):
            s = {k: jnp.where(layer_onehot[k][None] > 0, value[k] + sgn * 5.0 * stats["std"][k], v)
                 for k, v in styles.items()}
            imgs.append(T._unit(embed(G.synthesis_from_styles(gp, s))))
        return T._unit(jnp.mean(T._unit(imgs[1] - imgs[0]), 0))

    chans = [(layer, c) for layer in layers for c in range(T.style_dims(G)[layer])][:FS3_LOOP]
    onehots = [({k: (jnp.arange(v.shape[1]) == c) * (k == layer) for k, v in styles.items()}, stats["mean"])
               for layer, c in chans]
    timed("fs3", f"loop ({FS3_LOOP} channels)", lambda: block([one_channel(o, m) for o, m in onehots]),
          2 * FS3_IMAGES * len(chans), fwd_gflop, repeats=3)
    f = np.asarray(out["f"])
    quality["fs3"] = dict(channels=total, images=FS3_IMAGES, loop_matches_batched=float(np.max(np.abs(
        np.stack([np.asarray(one_channel(o, m)) for o, m in onehots[:4]]) - f[:4]))))

    # -- global directions: M prompts x ALPHAS strengths x N images vs one (prompt, strength) per call
    neutral = jnp.mean(text, axis=0, keepdims=True)  # neutral "prompt": the mean of the M caption embeddings
    dt = T.text_direction(text[:, None], neutral)
    alphas = jnp.linspace(-4.0, 4.0, ALPHAS)
    styles_n = G.ws_to_styles(gp, G.mapping(gp, jax.random.normal(jax.random.key(3), (N_GLOBAL, G.cfg.z_dim)), psi=0.7))

    def render(dt, alphas):
        e = T.global_edit(styles_n, out["f"], stats, dt, alphas, 0.1)
        return G.synthesis_from_styles(gp, {k: v.reshape(-1, v.shape[-1]) for k, v in e.items()})

    ge = jax.jit(render)
    timed("global-edit", "batched", lambda: block(ge(dt, alphas)), M * ALPHAS * N_GLOBAL, g_gflop, repeats=3)
    timed("global-edit", "loop", lambda: block([ge(dt[m:m + 1], alphas[a:a + 1]) for m in range(M)
                                                 for a in range(ALPHAS)]), M * ALPHAS * N_GLOBAL, g_gflop, repeats=3)

    # -- mapper: M mappers trained in one program (scan over steps, vmap over mappers) vs one per call
    Mp = mapper_lib.Mapper(mapper_lib.MapperConfig.for_generator(G.cfg.num_ws, G.cfg.w_dim))
    train = jax.jit(lambda gp, t: T.train_mappers(Mp, G, gp, embed, t, jax.random.key(2), steps=STEPS,
                                                  batch=N).params)
    timed("mapper", "batched", lambda: block(train(gp, text)), M * N * STEPS, 3 * fwd_gflop)
    timed("mapper", "loop", lambda: block([train(gp, text[m:m + 1]) for m in range(M)]), M * N * STEPS,
          3 * fwd_gflop)

    data = dict(machine=bg.machine_info(), clip=clip_desc, generator="checkpoints/shapes32-stylegan2",
                prompts=PROMPTS[:M], N=N, steps=STEPS, layer=LAYER, fwd_gflop_per_image=fwd_gflop, g_gflop_per_image=g_gflop,
                peaks={k: peaks[k] for k in ("xla_conv_peak", "xla_conv_peak_shape", "xla_matmul_peak")},
                rows=rows, quality=quality, wall_s=time.perf_counter() - t_start)
    md = markdown(data)
    print(md)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "bench_text_edits.md"), "w") as f:
        f.write(md)
    with open(os.path.join(HERE, "results", "bench_text_edits.json"), "w") as f:
        json.dump(data, f, indent=1)


def markdown(data) -> str:
    lines = [f"# Text-guided edits: batched vs one unit per call ({data['generator']})", "",
             f"CLIP: {data['clip']}", "",
             f"N = {data['N']} latents, M = {len(data['prompts'])} prompts ({', '.join(data['prompts'])}); "
             f"{data['steps']} optimization steps; layer shift on `{data['layer']}`. Forward GFLOP/image "
             f"(G + CLIP image tower, XLA cost analysis): {data['fwd_gflop_per_image']:.4f} (x3 with backward; "
             f"generator alone, for global-edit: {data['g_gflop_per_image']:.4f}). "
             f"XLA peaks in this run: 3x3 conv {data['peaks']['xla_conv_peak']:.0f}, matmul "
             f"{data['peaks']['xla_matmul_peak']:.0f} GFLOP/s (% peak is of the larger).", "",
             "| case | implementation | images | s | images/s | speed-up | GFLOP/s | % peak | first call s "
             "| others' CPU |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    base = {}
    for r in data["rows"]:
        base.setdefault(r["case"], {})[r["impl"]] = r
    for r in data["rows"]:
        loop = next((v for k, v in base[r["case"]].items() if k.startswith("loop")), None)
        loop = loop if r["impl"].startswith(("batched", "loop")) else None
        sp = r["images_per_s"] / loop["images_per_s"] if loop else None
        lines.append(f"| {r['case']} | {r['impl']} | {r['images']} | {r['s']:.2f} | {r['images_per_s']:.0f} | "
                     f"{bg._fmt(sp, '.1f')}x | {r['gflops']:.1f} | {r['pct_peak']:.0f} % | "
                     f"{r['first_call_s']:.1f} | {r['other_cpu_frac_during']:.0%} |")
    q = data["quality"]
    lines += ["", "Sanity of the batched results:",
              f"- latent-opt: mean CLIP cosine {q['latent-opt']['cos_start']:.3f} -> {q['latent-opt']['cos_end']:.3f} "
              f"(per prompt at the end {q['latent-opt']['per_prompt_end']})",
              f"- layer-shift: mean D_clip per prompt {q['layer-shift']['clip_distance_start']} -> "
              f"{q['layer-shift']['clip_distance_end']}, |x| {[round(v, 2) for v in q['layer-shift']['shift_norms']]}",
              f"- fs3: {q['fs3']['channels']} channels x {q['fs3']['images']} images; per-channel loop vs batched rows: "
              f"max |diff| {q['fs3']['loop_matches_batched']:.1e}",
              "", f"Wall time of the whole benchmark: {data['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
