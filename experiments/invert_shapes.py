"""Inversion on the shapes world, where the truth is known: fresh renders (images the generator never made, the
"real images" of this world) and generator samples, inverted into the default generator by

- the baseline ``w_avg``;
- the encoder alone (``--encoder``, default the embedded shapes32-encoder; its images/s measured on a batch of
  ``--throughput-batch`` renders, one jitted forward: encoder + synthesis);
- the projector in W and in W+ (NVIDIA's schedule), ``--steps`` steps; the image distance = the probe's
  embedding (it stands in for LPIPS on this world) + ``--pixel-weight`` x pixel MSE;
- the encoder start, then NVIDIA's projector in W+ for ``--steps // 5`` steps; and the hybrid
  (``ProjectorConfig.hybrid``, what ``jaxedit invert --method hybrid`` runs) for ``--steps // 5`` and ``--steps``
  steps: no latent jitter and the generator's own noise maps to start from (not re-drawn from N(0, 1)
  and optimized), so the first steps do not undo the encoder's start.

Scored between each input and its reconstruction: mean per-image PSNR (``10 log10(4 / MSE)``, reconstruction
clipped to [-1, 1]), the probe's factor MAE per group, shape agreement, label-map agreement; images/s of the
inversion itself (one compiled program per method, compile excluded).

Edits after inversion: InterFaceGAN boundaries (``--boundaries``, fitted by experiments/directions_shapes.py) and
the first GANSpace component (exact PCA of W samples) applied with the same strengths to the inverted renders'
W+ codes (hybrid) and to the generator samples' W+; the probe measures the change of the target factor and the
mean |change| of the other attributes, for both.

Writes ``experiments/results/invert_shapes.{md,json,png}``.

    python experiments/invert_shapes.py                    # --n 32 --steps 200 --pixel-weight 100
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
from jaxedit import edits, invert
from jaxedit.data import shapes
from jaxedit.edits import linear
from jaxedit.io import images as imio
from jaxedit.metrics import attributes as A

GROUPS = {"position": (0, 1), "scale": (2,), "rotation": (3, 4), "object hue": (5, 6), "background hue": (7, 8),
          "spot": (9, 10, 11)}
BOUNDARIES = "experiments/results/directions_shapes32_interfacegan_boundaries.npy"
EDITS = (("interfacegan", "scale"), ("interfacegan", "hue_cos"), ("ganspace", 0))
PAIR_OF = {"rot_cos": "rotation", "rot_sin": "rotation", "hue_cos": "hue", "hue_sin": "hue", "bg_cos": "bg_hue",
           "bg_sin": "bg_hue", "spot_hue_cos": "spot_hue", "spot_hue_sin": "spot_hue"}  # factor column -> attribute
STRENGTH = 2.0  # InterFaceGAN in W: unit-normal steps; GANSpace: standard deviations


def psnr(target, recon):
    mse = np.mean((np.asarray(target) - np.clip(np.asarray(recon), -1, 1)) ** 2, axis=(1, 2, 3))
    return 10 * np.log10(4.0 / np.maximum(mse, 1e-12))


def score(P, pp, target, recon):
    a, b = P.predict(pp, target), P.predict(pp, recon)
    fa, fb = np.asarray(a["factors"]), np.asarray(b["factors"])
    row = {"PSNR dB": float(np.mean(psnr(target, recon)))}
    row.update({f"MAE {g}": float(np.abs(fa[:, list(ix)] - fb[:, list(ix)]).mean()) for g, ix in GROUPS.items()})
    row["shape acc"] = float(np.mean(np.asarray(a["shape"]) == np.asarray(b["shape"])))
    row["label agree"] = float(np.mean(np.asarray(a["labels"]) == np.asarray(b["labels"])))
    return row


def timed(fn, x):
    """(result, seconds) of one call of the compiled ``fn`` on ``x``, compile excluded; and the compile time."""
    t0 = time.perf_counter()
    compiled = jax.jit(fn).lower(x).compile()
    t1 = time.perf_counter()
    out = jax.block_until_ready(compiled(x))
    return out, time.perf_counter() - t1, t1 - t0, compiled


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=32, help="images per set (64 takes ~2x; see the results header)")
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--pixel-weight", type=float, default=100.0, help="probe distance + this x pixel MSE")
    ap.add_argument("--encoder", default="shapes32-encoder")
    ap.add_argument("--throughput-batch", type=int, default=256)
    ap.add_argument("--no-full-hybrid", action="store_true", help="skip the hybrid at full --steps")
    ap.add_argument("--boundaries", default=BOUNDARIES)
    ap.add_argument("--out", default="experiments/results/invert_shapes")
    args = ap.parse_args()
    t_start = time.perf_counter()

    G, gp = jaxedit.load("shapes32-stylegan2")
    P, pp = jaxedit.load("shapes32-probe")
    E, ep = jaxedit.load(args.encoder)
    probe_dist, pw = invert.probe_distance(P, pp), args.pixel_weight
    dist = lambda a, b: probe_dist(a, b) + pw * invert.pixel_distance(a, b)
    renders = shapes.sample(jax.random.key(2024), args.n)["image"]
    sample_ws = G.mapping(gp, jax.random.normal(jax.random.key(2025), (args.n, G.cfg.z_dim)), psi=0.7)
    samples = G.synthesis(gp, sample_ws)
    keys = jax.random.split(jax.random.key(7), args.n)
    short = max(1, args.steps // 5)

    def projector(mode, steps, with_encoder=False, hybrid=False):
        cfg = (invert.ProjectorConfig.hybrid if hybrid else invert.ProjectorConfig)(steps=steps, mode=mode)

        def run(x):
            init = E(ep, x) if with_encoder else None
            res = invert.project(G, gp, dist, x, keys, cfg, init=init)
            return invert.render(G, gp, res), res.ws

        return run

    def w_avg(x):
        ws = jnp.broadcast_to(gp["mapping"]["w_avg"], (x.shape[0], G.cfg.num_ws, G.cfg.w_dim))
        return G.synthesis(gp, ws), ws

    def encoder(x):
        ws = E(ep, x)
        return G.synthesis(gp, ws), ws

    methods = {"w_avg (baseline)": w_avg, "encoder only": encoder,
               f"projector W ({args.steps} steps)": projector("w", args.steps),
               f"projector W+ ({args.steps} steps)": projector("w+", args.steps),
               f"encoder + NVIDIA projector W+ ({short} steps)": projector("w+", short, True),
               f"hybrid: encoder + projector W+, no jitter, G's noise ({short} steps)": projector(
                   "w+", short, True, hybrid=True)}
    if not args.no_full_hybrid:
        methods[f"hybrid ({args.steps} steps)"] = projector("w+", args.steps, True, hybrid=True)
    hybrid_name = list(methods)[-1]

    # encoder throughput: one jitted forward (codes + synthesis) on a big batch, best of 3
    big = shapes.sample(jax.random.key(2026), args.throughput_batch)["image"]
    _, _, _, enc_c = timed(encoder, big)
    enc_s = min(_timeit(enc_c, big) for _ in range(3))
    enc_rate = args.throughput_batch / enc_s

    rows, ws_of = [], {}
    compiled = {}
    for data_name, x in (("renders", renders), ("generator samples", samples)):
        for name, fn in methods.items():
            if name in compiled:
                t0 = time.perf_counter()
                out = jax.block_until_ready(compiled[name](x))
                dt, ct = time.perf_counter() - t0, 0.0
            else:
                out, dt, ct, compiled[name] = timed(fn, x)
            recon, ws = out
            ws_of[(data_name, name)] = (np.asarray(ws), np.asarray(recon))
            rate = enc_rate if name == "encoder only" else args.n / dt
            row = {"data": data_name, "method": name, "images/s": rate, "s/image": 1 / rate, "compile s": ct,
                   **score(P, pp, x, recon)}
            rows.append(row)
            print(json.dumps(row), flush=True)

    # ------------------------------------------------------------------ edits after inversion
    boundaries = jnp.asarray(np.load(args.boundaries))
    ifg = edits.InterFaceGAN(space="w", directions=boundaries)
    pca = jax.jit(lambda k: linear.pca_directions(
        lambda kk: G.mapping(gp, jax.random.normal(kk, (10_000, G.cfg.z_dim)))[:, 0], 4, key=k,
        n_batches=20))(jax.random.key(3))
    gsp = edits.GANSpace(space="w", comp=pca["comp"], stdev=pca["stdev"])
    editors = {"interfacegan": ifg, "ganspace": gsp}

    @jax.jit
    def measure(ed, ws, k, t):
        """Probe readings of the unedited and edited W+ codes (generator's own noise): (factors, change)."""
        img0 = jnp.clip(ed.render(G, gp, ws), -1, 1)
        img1 = jnp.clip(ed.render(G, gp, edits.apply(ed, ws, k, jnp.full(ws.shape[:1], t))), -1, 1)
        p0, p1 = P(pp, img0), P(pp, img1)
        return p1["factors"] - p0["factors"], A.change(A.read(p0), A.read(p1))

    inv_ws = ws_of[("renders", hybrid_name)][0]
    edit_rows = []
    for family, which in EDITS:
        ed = editors[family]
        k = shapes.FACTOR_NAMES.index(which) if family == "interfacegan" else which
        dname = f"InterFaceGAN {which}" if family == "interfacegan" else f"GANSpace pc{which}"
        # target: the boundary's factor column; GANSpace: the column it moves most on the samples
        if family == "interfacegan":
            col = k
        else:
            dfs, _ = measure(ed, jnp.asarray(sample_ws), k, STRENGTH)
            col = int(np.argmax(np.mean(np.abs(np.asarray(dfs)), axis=0)))
        target = shapes.FACTOR_NAMES[col]
        attr = PAIR_OF.get(target, target)
        others = [i for i, a in enumerate(A.ATTRIBUTES) if a != attr]
        for src, ws in (("generator samples", sample_ws), ("inverted renders (hybrid)", inv_ws)):
            row = {"edit": dname, "target": target, "latents": src}
            for t in (STRENGTH, -STRENGTH):
                df, ch = (np.asarray(v) for v in measure(ed, jnp.asarray(ws), k, t))
                row[f"target change t={t:+g}"] = float(df[:, col].mean())
                row[f"others abs change t={t:+g}"] = float(np.abs(ch[:, others]).mean())
                row[f"shape TV t={t:+g}"] = float(ch[:, -1].mean())
            edit_rows.append(row)
            print(json.dumps(row), flush=True)

    # ------------------------------------------------------------------ picture
    m = min(4, args.n)
    w4 = jnp.asarray(inv_ws[:m])
    cols = [np.asarray(renders[:m]), ws_of[("renders", hybrid_name)][1][:m]]
    labels = ["original", "hybrid recon"]
    for family, which in EDITS:
        ed = editors[family]
        k = shapes.FACTOR_NAMES.index(which) if family == "interfacegan" else which
        cols.append(np.asarray(ed.render(G, gp, edits.apply(ed, w4, k, jnp.full((m,), STRENGTH)))))
        labels.append(f"{'IFG ' + which if family == 'interfacegan' else f'pc{which}'} +{STRENGTH:g}")
    cells = np.stack(cols, axis=1).reshape(-1, *cols[0].shape[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    imio.save_grid(np.clip(cells, -1, 1), out.with_suffix(".png"), cols=len(cols),
                   row_labels=[f"render {i}" for i in range(m)], col_labels=labels)

    # ------------------------------------------------------------------ tables
    def table(rs, skip=()):
        cs = [c for c in rs[0] if c not in skip]
        md = ["| " + " | ".join(cs) + " |", "|" + "---|" * len(cs)]
        for r in rs:
            md.append("| " + " | ".join(_fmt(c, r[c]) for c in cs) + " |")
        return "\n".join(md)

    total = time.perf_counter() - t_start
    header = (f"# invert_shapes ({args.n} images per set, {args.steps} steps, probe-embedding distance + "
              f"{pw:g} x pixel MSE)\n\n"
              f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}, jax {jax.__version__}; "
              f"shared 2-core CPU (other jobs running); whole script {total / 60:.1f} min. PSNR: mean over images "
              f"of 10 log10(4 / MSE). images/s: inversion of the {args.n} images in one compiled program, "
              f"compile excluded; encoder only: one jitted forward (codes + synthesis) on "
              f"{args.throughput_batch} images, best of 3.\n\n")
    edits_md = (f"\n\n## Edits after inversion\n\nThe same edit (strength t = +-{STRENGTH:g}: InterFaceGAN W "
                f"boundaries from {args.boundaries}, unit normal; GANSpace pc0 of 200,000 W samples, in standard "
                f"deviations) applied to all W+ layers of the {args.n} generator samples' codes and of the {args.n} "
                f"renders' hybrid codes ({hybrid_name}); the probe reads the image before and after (both rendered "
                f"with the generator's own noise). target change: mean signed change of the target factor column; "
                f"others: mean |change| of the other 7 attributes (angles in turns); shape TV: mean total-variation "
                f"change of the shape probabilities.\n\n")
    (out.with_suffix(".md")).write_text(header + table(rows, skip=("s/image",)) + edits_md + table(edit_rows)
                                        + f"\n\n![inversion and edits]({out.name}.png)\n")
    out.with_suffix(".json").write_text(json.dumps({"args": vars(args), "seconds": total, "rows": rows,
                                                    "edits": edit_rows}, indent=1))
    print(out.with_suffix(".md").read_text())


def _timeit(fn, x):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(x))
    return time.perf_counter() - t0


def _fmt(col, v):
    if not isinstance(v, float):
        return str(v)
    if col in ("PSNR dB",) or col.endswith(" s"):
        return f"{v:.2f}"
    if col == "images/s":
        return f"{v:.1f}" if v < 100 else f"{v:.0f}"
    return f"{v:+.4f}" if col.startswith("target change") else f"{v:.4f}"


if __name__ == "__main__":
    main()
