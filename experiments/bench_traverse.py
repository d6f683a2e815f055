#!/usr/bin/env python
"""Benchmark a WarpedGANSpace traversal: every path x every step x a batch of latents, rendered.

The work: K = 6 paths (random support sets, N = 8 dipoles, in Z), S steps of eps = 0.2 each
way, B latents -> K (2S + 1) B frames on the default generator's architecture (32 px, z = w =
64, channels 64/64/32/16; random weights: speed does not depend on them).

- ``jaxedit``: ``warped.traverse`` (vmap over paths and signs, ``lax.scan`` over steps) +
  ``warped.render`` (``lax.map`` over fixed chunks): ONE compiled program;
- ``jax-loop``: the reference's structure with jaxedit's jitted generator: a Python loop over
  paths and steps, one step + one batch-B render per iteration;
- ``reference``: the same loop with NVIDIA's stylegan2-ada-pytorch Generator (same config,
  ``channel_base 512, channel_max 64``) and the WarpedGANSpace step in torch (2 threads,
  ``force_fp32``), when ``--reference`` and ``--torch-python`` are given (never committed).

frames/s and achieved GFLOP/s as a fraction of the XLA 3x3-conv peak measured in the same
run. Writes ``experiments/results/bench_traverse.{md,json}``.

    python experiments/bench_traverse.py [--reference DIR --torch-python PY]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_generator as bg  # noqa: E402 - timing helpers, FLOP count, peaks, worker runner

MODEL = dict(z_dim=64, w_dim=64, img_resolution=32, mapping_layers=2, channel_base=512, channel_max=64)
K, N, EPS = 6, 8, 0.2


def jax_rows(steps, batch, repeats, max_other):
    import jax
    import jax.numpy as jnp

    from jaxedit.edits import warped
    from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config

    G = StyleGAN2(StyleGAN2Config(**MODEL))
    gp = G.init(jax.random.key(0))
    d = MODEL["z_dim"]
    k1, k2 = jax.random.split(jax.random.key(1))
    v = jax.random.normal(k1, (K, N, d))
    params = {"support_sets": jnp.concatenate([v, -v], 1), "alphas": jnp.tile(jnp.asarray([1.0] * N + [-1.0] * N), (K, 1)),
              "log_gamma": jnp.full((K,), jnp.log(1.0 / d))}
    z = jax.random.normal(k2, (batch, d))

    @jax.jit
    def one_program(z):
        return warped.render(G, gp, warped.traverse(params, z, steps, EPS), batch=64)

    step = jax.jit(lambda z, k, e: warped.unit_step(params, z, k, e))
    fwd = jax.jit(lambda z: G(gp, z))

    def loop():
        out = []
        for k in range(K):
            for sign in (-1.0, 1.0):
                zc = z
                for _ in range(steps):
                    zc = step(zc, k, sign * EPS)
                    out.append(fwd(zc))
        out.append(fwd(z))
        return jax.block_until_ready(out)

    rows = []
    for name, fn in (("jaxedit", lambda: one_program(z).block_until_ready()), ("jax-loop", loop)):
        bg.log(f"  {name} ...")
        r = bg.time_runs(fn, repeats, 1, max_other, True)
        rows.append(dict(impl=name, **r))
    return rows


def worker_reference(spec: dict) -> dict:
    sys.path.insert(0, spec["reference"])
    import warnings

    warnings.filterwarnings("ignore")
    import torch

    torch.set_num_threads(spec["threads"])
    import training.networks as networks

    torch.manual_seed(0)
    m = MODEL
    G = networks.Generator(z_dim=m["z_dim"], c_dim=0, w_dim=m["w_dim"], img_resolution=m["img_resolution"],
                           img_channels=3, mapping_kwargs=dict(num_layers=m["mapping_layers"]),
                           synthesis_kwargs=dict(channel_base=m["channel_base"], channel_max=m["channel_max"],
                                                 num_fp16_res=0, conv_clamp=None)).eval().requires_grad_(False)
    d, steps, batch = m["z_dim"], spec["steps"], spec["batch"]
    v = torch.randn(K, N, d)
    support = torch.cat([v, -v], 1)
    alphas = torch.tensor([1.0] * N + [-1.0] * N)
    gamma = 1.0 / d
    z = torch.randn(batch, d)

    def unit_step(zc, k, e):
        diff = zc[:, None, :] - support[k]
        w = alphas * torch.exp(-gamma * (diff ** 2).sum(-1))
        g = -2 * gamma * torch.einsum("bi,bid->bd", w, diff)
        return zc + e * g / g.norm(dim=1, keepdim=True)

    def loop():
        with torch.no_grad():
            for k in range(K):
                for sign in (-1.0, 1.0):
                    zc = z
                    for _ in range(steps):
                        zc = unit_step(zc, k, sign * EPS)
                        G(zc, None, noise_mode="const", force_fp32=True)
            G(z, None, noise_mode="const", force_fp32=True)

    r = bg.time_runs(loop, spec["repeats"], 1, spec["max_other"], True)
    return dict(torch_version=torch.__version__, threads=torch.get_num_threads(), rows=[dict(impl="reference", **r)])


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=8, help="steps per side")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-other-cpu", type=float, default=0.05)
    ap.add_argument("--reference")
    ap.add_argument("--torch-python")
    ap.add_argument("--_worker")
    ap.add_argument("--_spec")
    ap.add_argument("--_out")
    args = ap.parse_args()
    if args._worker:
        with open(args._spec) as f:
            out = worker_reference(json.load(f))
        with open(args._out, "w") as f:
            json.dump(out, f)
        return

    frames = K * (2 * args.steps + 1) * args.batch
    flop = bg.generator_flops(dict(MODEL, channels=[64, 64, 32, 16]))["total"]
    bg.log("peaks ...")
    peaks = bg.xla_peaks(3, args.max_other_cpu, True)
    rows = jax_rows(args.steps, args.batch, args.repeats, args.max_other_cpu)
    ref_info = None
    if args.reference and args.torch_python:
        spec = dict(reference=args.reference, threads=os.cpu_count(), steps=args.steps, batch=args.batch,
                    repeats=args.repeats, max_other=args.max_other_cpu)
        ref_info = _run_reference(spec, args.torch_python)
        rows += ref_info.get("rows", [])
    table = ["| implementation | frames | s | frames/s | GFLOP/s | % of XLA conv peak | others' CPU |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        fps = frames / r["median_s"]
        r.update(frames=frames, frames_per_s=fps, gflops=fps * flop / 1e9)
        table.append(f"| {r['impl']} | {frames} | {r['median_s']:.2f} | {fps:.0f} | {r['gflops']:.1f} | "
                     f"{100 * r['gflops'] / peaks['xla_conv_peak']:.0f} % | {r['other_cpu_frac_during']:.0%} |")
    md = "\n".join([f"# WarpedGANSpace traversal: {K} paths x {2 * args.steps + 1} frames x {args.batch} latents "
                    f"(32 px, {flop / 1e6:.1f} MFLOP/frame)", "",
                    f"XLA 3x3 conv peak in this run: {peaks['xla_conv_peak']:.0f} GFLOP/s", "", *table, ""])
    res = os.path.join(HERE, "results")
    os.makedirs(res, exist_ok=True)
    with open(os.path.join(res, "bench_traverse.json"), "w") as f:
        json.dump(dict(date=time.strftime("%Y-%m-%d %H:%M"), model=MODEL, K=K, N=N, eps=EPS, steps=args.steps,
                       batch=args.batch, flop_per_frame=flop, peaks=peaks, rows=rows, reference=ref_info), f, indent=1)
    with open(os.path.join(res, "bench_traverse.md"), "w") as f:
        f.write(md)
    print(md)


def _run_reference(spec, python):
    import subprocess
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        sp, op = os.path.join(d, "spec.json"), os.path.join(d, "out.json")
        with open(sp, "w") as f:
            json.dump(spec, f)
        env = dict(os.environ, PYTHONPATH=HERE, **bg.TUNED_MALLOC)
        p = subprocess.run([python, os.path.abspath(__file__), "--_worker", "ref", "--_spec", sp, "--_out", op],
                           env=env, stdout=sys.stderr)
        if p.returncode or not os.path.exists(op):
            return dict(error=f"reference worker exited with {p.returncode}")
        with open(op) as f:
            return json.load(f)


if __name__ == "__main__":
    main()
