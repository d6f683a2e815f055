#!/usr/bin/env python
"""First-call (cold) and warm time of the model handles' methods called OUTSIDE ``jit``.

Not a test. The handles' ``synthesis`` / ``encode_image`` / ``encode_text`` run as one compiled
program when called eagerly (``jaxedit.nn.handle.compiled``); the "op by op" column calls the
same NNX module directly, which is what they did before: every primitive dispatched (and, on a
new shape, compiled) on its own. Each case runs in a fresh subprocess with no persistent cache,
so "first call" includes compilation. Prints a markdown table and writes
``experiments/results/bench_eager_calls.{md,json}``.

    python experiments/bench_eager_calls.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

CASES = {  # name: (model, batch)
    "stylegan2 synthesis, shapes32 (B=8)": ("g32", 8),
    "stylegan2 synthesis, 16 px test config (B=4)": ("g16", 4),
    "CLIP encode_image, shapes-clip (B=8)": ("clip_image", 8),
    "CLIP encode_text, shapes-clip (B=8)": ("clip_text", 8),
}


def _worker(model: str, batch: int, way: str) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxedit.io import checkpoint

    from jaxedit.models import stylegan2
    from jaxedit.models import clip
    from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config

    if model.startswith("g"):
        if model == "g32":
            G, p = stylegan2.load(checkpoint.default_path("shapes32-stylegan2"))
        else:
            G = StyleGAN2(StyleGAN2Config(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2,
                                          channels=(32, 16, 8), conv_clamp=256))
            p = G.init(jax.random.key(1))
        ws = jax.random.normal(jax.random.key(0), (batch, G.cfg.num_ws, G.cfg.w_dim))
        if way == "compiled":
            call = lambda: G.synthesis(p, ws)  # noqa: E731
        else:
            def call():
                net = G.model(p).synthesis
                return net(net.ws_to_styles(ws), noise_mode="const", key=jax.random.key(0), deltas={},
                           return_features=False)
    else:
        guide, cp, tok = clip.load_guide(checkpoint.default_path("shapes-clip"))
        C = guide.model
        if model == "clip_image":
            r = C.cfg.image_resolution
            x = jax.random.uniform(jax.random.key(0), (batch, r, r, 3), minval=-1, maxval=1)
            call = (lambda: C.encode_image(cp, x)) if way == "compiled" else (lambda: C.model(cp).visual(x))
        else:
            t = jnp.asarray(tok(["a red shape"] * batch, context_length=C.cfg.context_length))
            call = (lambda: C.encode_text(cp, t)) if way == "compiled" else (lambda: C.model(cp).encode_text(t))
    jax.block_until_ready(jax.tree.leaves(p if model.startswith("g") else cp))
    t0 = time.perf_counter()
    jax.block_until_ready(call())
    first = time.perf_counter() - t0
    warm = []
    for _ in range(5):
        t0 = time.perf_counter()
        jax.block_until_ready(call())
        warm.append(time.perf_counter() - t0)
    return {"first_s": first, "warm_ms": 1e3 * sorted(warm)[2]}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out-dir", default=str(Path(__file__).parent / "results"))
    ap.add_argument("--_worker", nargs=3, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args._worker:
        model, batch, way = args._worker
        print(json.dumps(_worker(model, int(batch), way)))
        return
    env = dict(os.environ, JAXEDIT_CACHE="", JAX_PLATFORMS=os.environ.get("JAX_PLATFORMS", "cpu"))
    rows = []
    for name, (model, batch) in CASES.items():
        res = {}
        for way in ("op by op", "compiled"):
            out = subprocess.run([sys.executable, __file__, "--_worker", model, str(batch), way.replace(" ", "_")],
                                 env=env, capture_output=True, text=True, check=True)
            res[way] = json.loads(out.stdout.strip().splitlines()[-1])
        rows.append({"case": name, **{f"{w} {k}": v for w, r in res.items() for k, v in r.items()}})
        print(name, res, flush=True)
    lines = ["# Model handles called outside jit: op by op vs one compiled program", "",
             "Fresh process per cell, no persistent cache (first call includes compilation); warm = median of 5.", "",
             "| case | op by op: first call s | compiled: first call s | op by op: warm ms | compiled: warm ms |",
             "|---|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['case']} | {r['op by op first_s']:.2f} | {r['compiled first_s']:.2f} | "
                     f"{r['op by op warm_ms']:.1f} | {r['compiled warm_ms']:.1f} |")
    text = "\n".join(lines) + "\n"
    print(text)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench_eager_calls.md").write_text(text)
    (out / "bench_eager_calls.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
