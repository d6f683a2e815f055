"""Inversion on the shapes world, where the truth is known: fresh renders (images the generator never made, the
"real images" of this world) and generator samples, inverted into the default generator by

- the projector in W and in W+ (NVIDIA's schedule; the image distance = the probe's embedding, which stands in
  for LPIPS on this world), ``--steps`` steps;
- the encoder alone (``--encoder``, e.g. checkpoints/shapes32-encoder) and the hybrid (encoder start, then the
  projector in W+);
- the baseline ``w_avg``.

Scored by the probe between each input and its reconstruction: factor MAE per group, shape accuracy, label-map
agreement; plus pixel MSE and seconds per image (one compiled program per method and batch, compile excluded).
Prints a markdown table and writes ``experiments/results/invert_shapes.{md,json}``.

    python experiments/invert_shapes.py --n 64 --steps 300 --encoder checkpoints/shapes32-encoder
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxedit
from jaxedit import invert
from jaxedit.data import shapes

GROUPS = {"position": (0, 1), "scale": (2,), "rotation": (3, 4), "object hue": (5, 6), "background hue": (7, 8),
          "spot": (9, 10, 11)}


def score(P, pp, target, recon):
    a, b = P.predict(pp, target), P.predict(pp, recon)
    fa, fb = np.asarray(a["factors"]), np.asarray(b["factors"])
    row = {f"MAE {g}": float(np.abs(fa[:, list(ix)] - fb[:, list(ix)]).mean()) for g, ix in GROUPS.items()}
    row["shape acc"] = float(np.mean(np.asarray(a["shape"]) == np.asarray(b["shape"])))
    row["label agree"] = float(np.mean(np.asarray(a["labels"]) == np.asarray(b["labels"])))
    row["pixel MSE"] = float(np.mean((np.asarray(target) - np.asarray(recon)) ** 2))
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--encoder")
    ap.add_argument("--out", default="experiments/results/invert_shapes")
    args = ap.parse_args()

    G, gp = jaxedit.load("shapes32-stylegan2")
    P, pp = jaxedit.load("shapes32-probe")
    E, ep = jaxedit.load(args.encoder) if args.encoder else (None, None)
    dist = invert.probe_distance(P, pp)
    renders = shapes.sample(jax.random.key(2024), args.n)["image"]
    samples = G(gp, jax.random.normal(jax.random.key(2025), (args.n, G.cfg.z_dim)), psi=0.7)
    keys = jax.random.split(jax.random.key(7), args.n)

    def projector(mode, with_encoder=False):
        cfg = invert.ProjectorConfig(steps=args.steps, mode=mode)

        def run(x):
            init = E(ep, x) if with_encoder else None
            return invert.render(G, gp, invert.project(G, gp, dist, x, keys, cfg, init=init))

        return jax.jit(run)

    methods = {"w_avg (baseline)": jax.jit(lambda x: G.synthesis(gp, jnp.broadcast_to(
        gp["mapping"]["w_avg"], (x.shape[0], G.cfg.num_ws, G.cfg.w_dim))))}
    if E is not None:
        methods["encoder only"] = jax.jit(lambda x: G.synthesis(gp, E(ep, x)))
    methods[f"projector W ({args.steps} steps)"] = projector("w")
    methods[f"projector W+ ({args.steps} steps)"] = projector("w+")
    if E is not None:
        methods[f"encoder + projector W+ ({args.steps} steps)"] = projector("w+", with_encoder=True)

    rows = []
    for data_name, x in (("renders", renders), ("generator samples", samples)):
        for name, fn in methods.items():
            t0 = time.perf_counter()
            jax.block_until_ready(fn(x))  # first call: compile + run
            t1 = time.perf_counter()
            recon = jax.block_until_ready(fn(x))
            t2 = time.perf_counter()
            row = {"data": data_name, "method": name, "s/image": (t2 - t1) / args.n, "compile+first s": t1 - t0,
                   **score(P, pp, x, recon)}
            rows.append(row)
            print(json.dumps(row))

    cols = list(rows[0])
    md = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in rows:
        md.append("| " + " | ".join(f"{v:.4f}" if isinstance(v, float) else str(v) for v in r.values()) + " |")
    table = "\n".join(md)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# invert_shapes ({args.n} images, {args.steps} steps, probe-embedding distance)\n\n"
              f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}, jax {jax.__version__}\n\n")
    out.with_suffix(".md").write_text(header + table + "\n")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
