#!/usr/bin/env python
"""Time the *reference structure* of two text-guided edits in PyTorch on CPU, for comparison with
jaxedit's batched versions (``experiments/bench_text_edits.py``, same N, M, STEPS and losses).

- ``latent-opt``: StyleCLIP latent optimization (``optimization/run_optimization.py``, edit mode),
  one (prompt, latent) pair per optimization as the original: W+ latent from w0 (psi 0.7), Adam
  lr 0.1 with StyleCLIP's cosine ramp (rampdown 0.25, rampup 0.05, set per step), loss
  ``1 - cos(CLIP_image(G.synthesis(w, 'const')), t) + 0.008 |w - w0|^2``. An extra row
  ("as the script") adds what the original script also pays per step: the text tower is run on
  the tokens every step and G / CLIP parameters are not frozen, so backward computes their grads.
- ``layer-shift``: the seed-002 CLIP-guided shift of ``b16.conv1``'s raw weight (NaviGAN-style),
  one prompt per optimization, Adam lr 0.01, loss ``10 mean_n(1 - cos) + 0.05 |x|_2`` over N latents.

Generator: NVIDIA stylegan2-ada-pytorch ``training.networks.Generator`` (custom CUDA ops fall back
to their reference implementations on CPU), configured from jaxedit's default
``checkpoints/shapes32-stylegan2`` (fp32, random weights; w_avg = mean of 4096 mapped z as
StyleCLIP's ``mean_latent``). CLIP image tower: openai/CLIP's ``VisionTransformer`` configured
from ``checkpoints/shapes-clip`` (random weights), 32x32 images fed as they are (preprocess
"none"); text embeddings are random unit vectors (text encoding is outside the timed loop).

Reference code is imported at run time from outside the repository (``--reference``,
``--clip-model``) and is never committed here. Writes ``experiments/results/bench_text_reference.{md,json}``.

    /work/ref/torchvenv/bin/python experiments/bench_text_reference.py \
        --reference /work/ref/stylegan2-ada-pytorch --clip-model /work/ref/openai_clip_model.py
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import platform
import sys
import time

import torch
import torch.nn.functional as F

HERE = os.path.dirname(os.path.abspath(__file__))
CKPT = os.path.join(os.path.dirname(HERE), "checkpoints")
M, N, STEPS, LAYER, THREADS = 4, 8, 50, "b16.conv1", 2


def cpu_sample():
    """(wall time, busy CPU seconds of the whole machine, CPU seconds of this process)."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    busy = (sum(v[:8]) - v[3] - v[4]) / os.sysconf("SC_CLK_TCK")  # all but idle and iowait
    t = os.times()
    return time.perf_counter(), busy, t.user + t.system


def build_models(reference: str, clip_model: str):
    sys.path.insert(0, reference)
    from training.networks import Generator  # noqa: E402 - NVIDIA's reference, outside the repo

    spec = importlib.util.spec_from_file_location("openai_clip_model", clip_model)
    oc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(oc)

    g = json.load(open(os.path.join(CKPT, "shapes32-stylegan2", "jaxedit.json")))["model"]
    res = g["img_resolution"]
    if g.get("channels"):  # explicit table [4, 8, ..., res] -> NVIDIA's min(base // r, max)
        base, cmax = g["channels"][-1] * res, max(g["channels"])
    else:
        base, cmax = g["channel_base"], g["channel_max"]
    G = Generator(z_dim=g["z_dim"], c_dim=g["c_dim"], w_dim=g["w_dim"], img_resolution=res,
                  img_channels=g["img_channels"],
                  mapping_kwargs=dict(num_layers=g["mapping_layers"], lr_multiplier=g["mapping_lr_mul"]),
                  synthesis_kwargs=dict(channel_base=base, channel_max=cmax, num_fp16_res=0,
                                        conv_clamp=g["conv_clamp"], architecture=g["architecture"])).eval()
    if g.get("channels"):
        got = [getattr(G.synthesis, f"b{r}").conv1.weight.shape[0] for r in G.synthesis.block_resolutions]
        assert got == g["channels"], (got, g["channels"])

    c = json.load(open(os.path.join(CKPT, "shapes-clip", "jaxedit.json")))["model"]
    assert c["activation"] == "quick_gelu" and c["ln_eps"] == 1e-5, c  # openai/CLIP's choices
    clip = oc.CLIP(c["embed_dim"], c["image_resolution"], c["vision_layers"], c["vision_width"],
                   c["vision_patch_size"], c["context_length"], c["vocab_size"], c["transformer_width"],
                   c["transformer_heads"], c["transformer_layers"])
    # CLIP() derives vision heads as width // 64; shapes-clip sets them explicitly
    clip.visual = oc.VisionTransformer(c["image_resolution"], c["vision_patch_size"], c["vision_width"],
                                       c["vision_layers"], c["vision_heads"], c["embed_dim"])
    clip = clip.float().eval()
    with torch.no_grad():  # StyleCLIP's mean_latent(4096); random weights otherwise leave w_avg = 0
        G.mapping.w_avg.copy_(G.mapping(torch.randn(4096, G.z_dim), None, truncation_psi=1)[:, 0].mean(0))
    return G, clip, dict(generator=g, clip=c, channel_base=base, channel_max=cmax)


def styleclip_lr(t, lr, rampdown=0.25, rampup=0.05):
    """StyleCLIP's schedule: lr * cosine ramp-down over the last ``rampdown`` * min(1, t / rampup)."""
    return lr * (0.5 - 0.5 * math.cos(math.pi * min(1.0, (1 - t) / rampdown))) * min(1.0, t / rampup)


def latent_opt(G, clip, w0, text, steps, tokens=None):
    """One pair: w0 [1, num_ws, w_dim], text [1, D]; ``tokens``: run the text tower per step instead."""
    w = w0.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w], lr=0.1)
    for i in range(steps):
        opt.param_groups[0]["lr"] = styleclip_lr(i / steps, 0.1)
        img = G.synthesis(w, noise_mode="const")
        t = text if tokens is None else clip.encode_text(tokens)
        loss = (1 - F.cosine_similarity(clip.encode_image(img), t)).sum() + 0.008 * ((w0 - w) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()


def layer_shift(G, clip, ws, text, steps):
    """One prompt: text [1, D], all N latents ws [N, num_ws, w_dim] in one batch."""
    name = LAYER + ".weight"
    W = G.synthesis.get_parameter(name)
    x = torch.zeros_like(W, requires_grad=True)
    opt = torch.optim.Adam([x], lr=0.01)
    for _ in range(steps):
        img = torch.func.functional_call(G.synthesis, {name: W + x}, (ws,), dict(noise_mode="const"))
        d = (1 - F.cosine_similarity(clip.encode_image(img), text)).mean()
        loss = 10.0 * d + 0.05 * torch.linalg.vector_norm(x)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return x.detach()


def timed(rows, case, impl, fn, n_opt, steps, batch):
    fn(warmup=True)  # one warm-up optimization
    t0, b0, o0 = cpu_sample()
    load0 = os.getloadavg()[0]
    fn(warmup=False)
    t1, b1, o1 = cpu_sample()
    s, images = t1 - t0, n_opt * steps * batch
    row = dict(case=case, impl=impl, optimizations=n_opt, steps=steps, images=images, s=s, images_per_s=images / s,
               s_per_optimization=s / n_opt, s_per_step=s / (n_opt * steps),
               other_cpu_frac=max(0.0, (b1 - b0) - (o1 - o0)) / (s * os.cpu_count()),
               loadavg_1min=[load0, os.getloadavg()[0]])
    print(f"  {case} / {impl}: {images} images in {s:.1f} s = {row['images_per_s']:.1f}/s, "
          f"{row['s_per_optimization']:.2f} s/optimization, others' CPU {row['other_cpu_frac']:.0%}", flush=True)
    rows.append(row)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reference", required=True, help="stylegan2-ada-pytorch checkout (outside the repo)")
    ap.add_argument("--clip-model", required=True, help="openai/CLIP clip/model.py (outside the repo)")
    ap.add_argument("--steps", type=int, default=STEPS, help="optimization steps (rates are per step)")
    args = ap.parse_args()
    torch.set_num_threads(THREADS)
    torch.manual_seed(0)
    G, clip, cfg = build_models(args.reference, args.clip_model)
    for p in [*G.parameters(), *clip.parameters()]:
        p.requires_grad_(False)  # only w / x get gradients (jaxedit's setting)
    D, steps = cfg["clip"]["embed_dim"], args.steps
    with torch.no_grad():
        ws = G.mapping(torch.randn(N, G.z_dim), None, truncation_psi=0.7)
    text = F.normalize(torch.randn(M, D), dim=-1)
    tokens = torch.randint(1, cfg["clip"]["vocab_size"], (M, cfg["clip"]["context_length"]))
    rows, t_start = [], time.perf_counter()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; loadavg {os.getloadavg()}", flush=True)

    pairs = [(m, n) for m in range(M) for n in range(N)]
    timed(rows, "latent-opt", "one pair per optimization", lambda warmup: [
        latent_opt(G, clip, ws[n:n + 1], text[m:m + 1], steps) for m, n in (pairs[:1] if warmup else pairs)],
        M * N, steps, 1)
    timed(rows, "layer-shift", "one prompt per optimization", lambda warmup: [
        layer_shift(G, clip, ws, text[m:m + 1], steps) for m in (range(1) if warmup else range(M))], M, steps, N)
    for p in [*G.parameters(), *clip.parameters()]:
        p.requires_grad_(True)  # as StyleCLIP's script: nothing frozen, backward also computes weight grads
    timed(rows, "latent-opt", "as the script (+ text tower per step, weights not frozen)", lambda warmup: [
        latent_opt(G, clip, ws[n:n + 1], None, steps, tokens[m:m + 1]) for m, n in (pairs[:1] if warmup else pairs)],
        M * N, steps, 1)

    data = dict(machine=dict(torch=torch.__version__, threads=torch.get_num_threads(), cpus=os.cpu_count(),
                             processor=platform.processor() or platform.machine(), python=platform.python_version()),
                M=M, N=N, steps=steps, layer=LAYER, config=cfg, rows=rows, wall_s=time.perf_counter() - t_start,
                weights="random (G: NVIDIA init, w_avg from 4096 z; CLIP: openai init)")
    md = markdown(data)
    print(md)
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "bench_text_reference.md"), "w") as f:
        f.write(md)
    with open(os.path.join(HERE, "results", "bench_text_reference.json"), "w") as f:
        json.dump(data, f, indent=1)


def markdown(data) -> str:
    m = data["machine"]
    lines = ["# Text-guided edits, reference structure in PyTorch (one pair / prompt per optimization)", "",
             f"torch {m['torch']} (CPU), {m['threads']} threads, {m['cpus']} CPUs; NVIDIA stylegan2-ada-pytorch "
             f"Generator (shapes32-stylegan2 config, fp32, reference ops) + openai/CLIP ViT (shapes-clip config), "
             f"{data['weights']}. M = {data['M']} prompts, N = {data['N']} latents, {data['steps']} steps; "
             f"layer shift on `{data['layer']}`. Images = optimizations x steps x batch (each with backward).", "",
             "| case | implementation | optimizations | images | s | images/s | s / optimization | ms / step "
             "| others' CPU | load 1 min (before, after) |", "|---|---|---:|---:|---:|---:|---:|---:|---:|---|"]
    for r in data["rows"]:
        lines.append(f"| {r['case']} | {r['impl']} | {r['optimizations']} | {r['images']} | {r['s']:.1f} | "
                     f"{r['images_per_s']:.1f} | {r['s_per_optimization']:.2f} | {1e3 * r['s_per_step']:.1f} | "
                     f"{r['other_cpu_frac']:.0%} | {r['loadavg_1min'][0]:.2f}, {r['loadavg_1min'][1]:.2f} |")
    lines += ["", f"Wall time: {data['wall_s']:.0f} s.", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
