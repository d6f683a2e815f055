#!/usr/bin/env python
"""Benchmark curvilinear (DeCurvEd) edits: latents/s and inversion error per solver mode.

The reference-size flow (d = 512, ConcatSquash 512 x 5, tanh, T = 0.1, PyTorch default init)
edits a batch of B latents along one axis each: one forward solve + one inverse solve
(``curvilinear.edit_axes``). Modes: adaptive Dopri5 (per-latent step sizes) at rtol = atol =
1e-5 (the reference's setting) and 1e-6 (jaxedit's default), and 1/2/4/8 fixed Dopri5 steps.
Inversion error = max |f^-1(f(z)) - z| in the same mode. GFLOP/s counts 2 x MACs of the
ODE net per evaluation (6 evaluations per Dopri5 step, fixed-step modes only) against the
XLA 2048^3 matmul peak measured in the same run. Also the trained shapes-world flow
(``--run``), if given. Writes ``experiments/results/bench_flow.{md,json}``.

    python experiments/bench_flow.py [--run runs/discover-curvilinear]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_generator as bg  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jaxedit.edits import curvilinear as C  # noqa: E402
from jaxedit.models.flows import CNF, CNFConfig  # noqa: E402

MODES = [("adaptive 1e-5", dict(rtol=1e-5, atol=1e-5)), ("adaptive 1e-6", dict(rtol=1e-6, atol=1e-6)),
         ("fixed 1", dict(steps=1)), ("fixed 2", dict(steps=2)), ("fixed 4", dict(steps=4)), ("fixed 8", dict(steps=8))]


def net_flop(cfg: CNFConfig) -> int:
    dims = (cfg.dim, *cfg.hidden, cfg.dim)
    return sum(2 * a * b for a, b in zip(dims, dims[1:]))


def bench(F, params, B, repeats, label):
    z = jax.random.normal(jax.random.key(1), (B, F.cfg.dim))
    k = jnp.arange(B) % min(200, F.cfg.dim)
    t = jnp.linspace(-3, 3, B)
    rows = []
    for name, opts in MODES:
        edit = jax.jit(lambda z: C.edit_axes(F, params, z, k, t, **opts))
        rt = jax.jit(lambda z: F.inverse(params, F.forward(params, z, **opts), **opts))
        r = bg.time_runs(lambda: edit(z).block_until_ready(), repeats, 1, 0.05, True)
        err = float(jnp.max(jnp.abs(rt(z) - z)))
        row = dict(flow=label, mode=name, batch=B, median_s=r["median_s"], latents_per_s=B / r["median_s"],
                   inversion_error=err, other_cpu_frac_during=r["other_cpu_frac_during"])
        if "steps" in opts:
            row["gflops"] = 2 * opts["steps"] * 6 * B * net_flop(F.cfg) / r["median_s"] / 1e9
        bg.log(f"  {label} {name}: {row['latents_per_s']:.0f} latents/s, inversion error {err:.1e}")
        rows.append(row)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--run", help="a jaxedit discover run of method curvilinear")
    args = ap.parse_args()
    peaks = bg.xla_peaks(3, 0.05, True)
    cfg = CNFConfig(dim=512, hidden=(512,) * 5, T=0.1)
    F = CNF(cfg)
    rows = bench(F, F.init(jax.random.key(0)), args.batch, args.repeats, "reference-size d512 512x5")
    if args.run:
        from jaxedit.train import discovery

        ed = discovery.load_editor(args.run)
        rows += bench(ed.flow, ed.params["flow"], args.batch, args.repeats, f"shapes-world d{ed.flow.cfg.dim}")
    peak = peaks["xla_matmul_peak"]
    lines = [f"# Curvilinear edits (one forward + one inverse solve per latent), batch {args.batch}", "",
             f"XLA matmul peak in this run: {peak:.0f} GFLOP/s", "",
             "| flow | mode | latents/s | GFLOP/s (% of peak) | inversion error max abs | others' CPU |",
             "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        g = f"{r['gflops']:.1f} ({100 * r['gflops'] / peak:.0f} %)" if "gflops" in r else "-"
        lines.append(f"| {r['flow']} | {r['mode']} | {r['latents_per_s']:.0f} | {g} | {r['inversion_error']:.1e} | "
                     f"{r['other_cpu_frac_during']:.0%} |")
    md = "\n".join(lines) + "\n"
    os.makedirs(os.path.join(HERE, "results"), exist_ok=True)
    with open(os.path.join(HERE, "results", "bench_flow.json"), "w") as f:
        json.dump(dict(date=time.strftime("%Y-%m-%d %H:%M"), peaks=peaks, rows=rows), f, indent=1)
    with open(os.path.join(HERE, "results", "bench_flow.md"), "w") as f:
        f.write(md)
    print(md)


if __name__ == "__main__":
    np.set_printoptions(precision=3)
    main()
