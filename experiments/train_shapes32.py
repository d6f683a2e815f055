#!/usr/bin/env python
"""Launcher and speed benchmark of the default model ``shapes32-stylegan2``.

Its config lives in the package (``jaxedit.train.gan.shapes32_config``, the preset
``shapes32-stylegan2``); ``get_config`` here is the same function, so ``--config
experiments/train_shapes32.py`` still works. Run it in the background, resumable (rerunning the
same command continues from the last checkpoint; a SIGKILL loses at most one checkpoint interval,
20 kimg; SIGINT/SIGTERM save first)::

    mkdir -p runs && nohup jaxedit train-gan runs/shapes32-stylegan2 \
        --config shapes32-stylegan2 --export checkpoints/shapes32-stylegan2 --force \
        >> runs/shapes32-stylegan2.log 2>&1 &

Follow it with ``tail -f runs/shapes32-stylegan2.log`` (one progress line every 30 s) or
``runs/shapes32-stylegan2/log.jsonl``; sample grids land in ``runs/shapes32-stylegan2/samples``.
Export the latest G_ema at any time, while it trains::

    jaxedit train-gan runs/shapes32-stylegan2 --export-only \
        --export checkpoints/shapes32-stylegan2 --force

Speed of the candidate configs (steady state, after compile)::

    python experiments/train_shapes32.py --bench [--candidates c64,c128] [--out results.json]

Measured on this machine (2-core Zen 5, jax 0.10.2, shared: other processes used about half
of the CPU during every run), batch 32, min over 10-12 timed calls per phase, kimg/s =
batch / (t_G + t_D + (t_D+R1 - t_D) / 16)::

    candidate  channels 4/8/16/32   G ms   D ms   D+R1 ms   kimg/s   (with a custom up-conv VJP *)
    c64        64/64/32/16           188    113     287      0.102    0.151
    c64w       64/64/64/32           448    268     734      0.043    0.067
    c128       128/128/64/32         635    339    1005      0.031    0.053
    c64 @ batch 64                    -      -       -         -      0.136

The training loop itself (pipelined dispatch, checkpoints and grids included) ran c64 at
0.144 kimg/s on average over a 30 kimg shapes run (0.10-0.18 as the other load varied).
(*) ``ops.up_conv2d``'s autodiff backward (XLA's weight gradient of its small phase convs) is
~5x the forward; a custom VJP (transposed FIR, one stride-2 conv for dx, one matmul for dW)
makes G's fwd+bwd ~5x faster (212 -> 40 ms, c64) -- measured by monkeypatching in a scratch
benchmark, not part of the library yet.

The recipe and why: the docstring of ``jaxedit.train.gan.shapes32_config``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import numpy as np

from jaxedit.train.gan import SHAPES32_CANDIDATES as CANDIDATES
from jaxedit.train.gan import GANTrainer
from jaxedit.train.gan import shapes32_config as get_config


# ----------------------------------------------------------------------------- benchmark
def _busy_jiffies() -> int:
    with open("/proc/stat") as f:
        parts = [int(v) for v in f.readline().split()[1:]]
    return sum(parts) - parts[3] - parts[4]  # all but idle and iowait


def bench(name: str, repeats: int = 12, batch: int | None = None) -> dict:
    """Time each jitted phase of a candidate (min and median of ``repeats`` after a warm-up).

    kimg/s = batch / (t_G + t_D + (t_D+R1 - t_D) / 16) per iteration, from the *minimum*
    times (the machine is shared; the minimum is the least disturbed estimate), with the
    median-based figure alongside. ``other_cpu_frac`` is the share of the machine's CPU time
    used by other processes during the timed runs.
    """
    cfg = get_config(name)
    if batch:
        cfg = cfg.replace(batch=batch)
    tr = GANTrainer(cfg)
    state = tr.init_state()
    out = {"candidate": name, "batch": cfg.batch, "channels": list(cfg.G.channels), "z_dim": cfg.G.z_dim}
    jiffy = os.sysconf("SC_CLK_TCK")
    cores = os.cpu_count()
    busy0, own0, wall0 = _busy_jiffies(), time.process_time(), time.perf_counter()
    for phase, fn in (("G", tr._g_step), ("D", tr._d_step), ("D+R1", tr._d_r1_step)):
        t = time.perf_counter()
        state, m = fn(state, np.uint32(1))
        jax.block_until_ready(m)
        out[f"compile_{phase}_s"] = round(time.perf_counter() - t, 2)
        ts = []
        for i in range(repeats):
            t = time.perf_counter()
            state, m = fn(state, np.uint32(i + 2))
            jax.block_until_ready(m)
            ts.append(time.perf_counter() - t)
        out[f"{phase}_ms_min"] = round(1e3 * min(ts), 2)
        out[f"{phase}_ms_median"] = round(1e3 * float(np.median(ts)), 2)
    wall = time.perf_counter() - wall0
    other = (_busy_jiffies() - busy0) / jiffy - (time.process_time() - own0)
    out["other_cpu_frac"] = round(max(0.0, other) / (wall * cores), 3)
    for stat in ("min", "median"):
        it = out[f"G_ms_{stat}"] + out[f"D_ms_{stat}"] + (out[f"D+R1_ms_{stat}"] - out[f"D_ms_{stat}"]) / 16
        out[f"kimg_per_s_{stat}"] = round(cfg.batch / it, 4)  # images/ms == kimg/s
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--bench", action="store_true", help="measure kimg/s of the candidate configs")
    p.add_argument("--candidates", default=",".join(CANDIDATES), help="comma-separated candidate names")
    p.add_argument("--batch", type=int, help="override the batch size")
    p.add_argument("--repeats", type=int, default=12)
    p.add_argument("--out", help="write the results as JSON here")
    args = p.parse_args(argv)
    if not args.bench:
        print(json.dumps(get_config().to_dict(), indent=2))
        return 0
    results = []
    for name in args.candidates.split(","):
        r = bench(name, args.repeats, args.batch)
        results.append(r)
        print(json.dumps(r), flush=True)
    if args.out:
        meta = {"jax": jax.__version__, "devices": [str(d) for d in jax.devices()], "cpus": os.cpu_count(),
                "time": time.strftime("%Y-%m-%d %H:%M:%S")}
        with open(args.out, "w") as f:
            json.dump({"meta": meta, "results": results}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
