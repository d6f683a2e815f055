#!/usr/bin/env python
"""Per-example synthesis under ``jax.vmap`` vs batched synthesis, and the batch-of-one call.

Not a test. Issue 13 item 7: the modulated conv used to fold the style and the demodulation
into the kernel when the batch was one; under ``jax.vmap`` of a per-example function every
example has a batch of one, so the folded (per-example) kernel became a grouped conv
(``feature_group_count = N``), which is pathological on XLA:CPU. The generator now always
uses the shared-conv form. Both forms are timed in the same process, interleaved:

* ``fold``: the previous ``_modulated_conv`` (copied below, swapped in for the run);
* ``shared``: the library's current one.

Cases (const noise, float32, median of ``--repeats`` interleaved runs after a warm-up):

* ``vmap``: ``jit(vmap(lambda w: synthesis(params, w[None])[0]))(ws)`` over ``N`` examples;
* ``batched``: ``jit(synthesis)(params, ws)``;
* ``B=1``: ``jit(synthesis)(params, ws[:1])`` (the eager call compiles the same program).

on the default generator ``shapes32-stylegan2`` at N = 16, 32, 64 and, for the batch-of-one
case the fold was written for, the FFHQ-1024 config-f generator (random weights). Writes
``experiments/results/bench_vmap_generator.{md,json}``.

    python experiments/bench_vmap_generator.py [--repeats 5] [--skip-1024]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np

import jaxedit
from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config, generator
from jaxedit.nn import ops

FFHQ1024 = dict(z_dim=512, w_dim=512, img_resolution=1024, mapping_layers=8, channel_base=32768, channel_max=512)


def _modulated_conv_fold(x, s, w, *, up: bool, demodulate: bool, delta):
    """The previous ``_modulated_conv`` (without WeightShift, unused here): batch of one folded into the kernel."""
    if delta is not None:
        w = w + delta
    conv = ops.up_conv2d if up else ops.conv2d
    d = jax.lax.rsqrt(jnp.square(s) @ jnp.sum(jnp.square(w), axis=(0, 1)) + 1e-8) if demodulate else None
    if w.shape[:2] == (1, 1) and not up:
        wb = s[:, :, None] * w[0, 0]
        return jnp.einsum("bhwi,bio->bhwo", x, wb if d is None else wb * d[:, None, :])
    if x.shape[0] == 1:
        w1 = w * s[0][None, None, :, None]
        return conv(x, w1 if d is None else w1 * d[0])
    y = conv(x * s[:, None, None, :], w)
    return y if d is None else y * d[:, None, None, :]


IMPLS = {"fold": _modulated_conv_fold, "shared": generator._modulated_conv}


def _synthesis(G: StyleGAN2, params, ws):
    """``G.synthesis`` traced afresh (the handle's own jit would reuse a trace made with the other impl)."""
    net = G.model(params).synthesis
    return net(net.ws_to_styles(ws), noise_mode="const", key=None, deltas={}, return_features=False)


def _programs(G: StyleGAN2):
    batched = jax.jit(lambda p, ws: _synthesis(G, p, ws))
    vmapped = jax.jit(lambda p, ws: jax.vmap(lambda w: _synthesis(G, p, w[None])[0])(ws))
    return {"vmap": vmapped, "batched": batched}


def _grouped_convs(fn, *args) -> list[int]:
    """feature_group_count of every grouped conv in the program's jaxpr (nested jaxprs included)."""
    found = []

    def walk(jaxpr):
        for eqn in jaxpr.eqns:
            if eqn.primitive.name == "conv_general_dilated" and eqn.params["feature_group_count"] > 1:
                found.append(eqn.params["feature_group_count"])
            for sub in jax.extend.core.jaxprs_in_params(eqn.params):
                walk(sub)

    walk(jax.make_jaxpr(fn)(*args).jaxpr)
    return found


def _time(call, repeats: int) -> list[float]:
    out = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        out.append(1e3 * (time.perf_counter() - t0))
    return out


def bench(G: StyleGAN2, params, batches, repeats: int, cases) -> list[dict]:
    """Compile every (impl, case, N) program, then time them interleaved, ``repeats`` rounds."""
    calls, outs, groups, compile_s = {}, {}, {}, {}
    for impl, fn in IMPLS.items():
        generator._modulated_conv = fn
        try:
            progs = _programs(G)
            for n in batches:
                ws = G.mapping(params, jax.random.normal(jax.random.key(n), (n, G.cfg.z_dim)))
                for case in cases if n == batches[0] else [c for c in cases if c != "B=1"]:
                    prog = progs["batched" if case == "B=1" else case]
                    args = (params, ws[:1] if case == "B=1" else ws)
                    key = (impl, case, n)
                    t0 = time.perf_counter()
                    outs[key] = jax.block_until_ready(prog(*args))
                    compile_s[key] = time.perf_counter() - t0
                    groups[key] = _grouped_convs(lambda *a, _p=prog: _p(*a), *args)
                    calls[key] = lambda _p=prog, _a=args: _p(*_a)
        finally:
            generator._modulated_conv = IMPLS["shared"]
    times = {k: [] for k in calls}
    for _ in range(repeats):  # interleaved: every program once per round
        for k, call in calls.items():
            times[k] += _time(call, 1)
    rows = []
    for (impl, case, n), t in times.items():
        ref = outs[("shared", "batched" if ("shared", "batched", n) in outs else "B=1", n)]
        got = outs[(impl, case, n)]
        diff = float(jnp.max(jnp.abs(got - (ref[:1] if case == "B=1" else ref))))
        rows.append(dict(impl=impl, case=case, n=n if case != "B=1" else 1, res=G.cfg.img_resolution,
                         ms_median=float(np.median(t)), ms_min=float(np.min(t)), ms_all=t, first_call_s=compile_s[(impl, case, n)],
                         grouped_convs=groups[(impl, case, n)], max_abs_diff_vs_shared_batched=diff))
        print(f"{impl:6s} {case:7s} N={n:3d} {np.median(t):9.2f} ms  grouped={groups[(impl, case, n)]}  "
              f"diff={diff:.2e}", flush=True)
    return rows


def markdown(rows: list[dict], meta: dict) -> str:
    lines = ["# vmapped per-example synthesis vs batched synthesis (issue 13 item 7)", "",
             f"{meta['machine']}; jax {meta['jax']}; {meta['repeats']} interleaved runs, ms per call, min and median "
             f"(the machine is shared: load average {meta['load_before']:.1f} before, {meta['load_after']:.1f} after; "
             "min is the steadier number). "
             "`fold`: the previous modulated conv (batch of one folded into the kernel); `shared`: the current "
             "one (scale activations, one shared conv, scale outputs). `grouped convs`: feature_group_count of "
             "the grouped convs in the program. max abs diff against `shared`/batched on the same ws (1024 px: "
             "against `shared`/B=1).", ""]
    for res in sorted({r["res"] for r in rows}):
        lines += [f"## {res} px", "", "| case | N | fold ms (min / median) | shared ms (min / median) "
                  "| fold / shared (min) | grouped convs (fold) | grouped convs (shared) | max abs diff (fold) "
                  "| max abs diff (shared) |",
                  "|---|---:|---:|---:|---:|---|---|---:|---:|"]
        sel = {(r["impl"], r["case"], r["n"]): r for r in rows if r["res"] == res}
        for case, n in sorted({(c, n) for _, c, n in sel}, key=lambda k: (k[0] != "B=1", k[1], k[0])):
            f, s = sel[("fold", case, n)], sel[("shared", case, n)]
            grp = lambda r: ", ".join(map(str, r["grouped_convs"])) or "none"
            lines.append(f"| {case} | {n} | {f['ms_min']:.1f} / {f['ms_median']:.1f} | {s['ms_min']:.1f} / "
                         f"{s['ms_median']:.1f} | {f['ms_min'] / s['ms_min']:.2f} | {grp(f)} | {grp(s)} | "
                         f"{f['max_abs_diff_vs_shared_batched']:.1e} | {s['max_abs_diff_vs_shared_batched']:.1e} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--batches", default="16,32,64")
    ap.add_argument("--skip-1024", action="store_true")
    ap.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    args = ap.parse_args()
    batches = [int(b) for b in args.batches.split(",")]
    load_before = os.getloadavg()[0]
    G, params = jaxedit.load("shapes32-stylegan2")
    rows = bench(G, params, batches, args.repeats, ("vmap", "batched", "B=1"))
    if not args.skip_1024:
        G = StyleGAN2(StyleGAN2Config(**FFHQ1024))
        rows += bench(G, G.init(jax.random.key(0)), [1], args.repeats, ("B=1",))
    meta = dict(machine=f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPUs",
                jax=jax.__version__, repeats=args.repeats, xla_flags=os.environ.get("XLA_FLAGS", ""),
                load_before=load_before, load_after=os.getloadavg()[0])
    text = markdown(rows, meta)
    print(text)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_vmap_generator.md").write_text(text)
    (out / "bench_vmap_generator.json").write_text(json.dumps(dict(meta=meta, rows=rows), indent=1))


if __name__ == "__main__":
    main()
