"""Quality of a shapes-world generator, measured with the probe (numbers for the model card).

- Frechet distance in probe feature space between N generated and N rendered images, and
  between two independent render sets of N (the floor);
- probe-predicted factor distributions of generated vs rendered images: 1-D Wasserstein per
  factor column (factors normalized to [0, 1]) and the shape proportions;
- the share of images whose shape the probe reads with probability < ``CONFIDENT`` (renders: 0): a
  sample that is no clear circle, square or triangle;
- a PNG with generated samples next to renders, and one with samples grouped by the probe's shape reading
  (rows: confident circles, squares, triangles, then unsure samples).

    python experiments/eval_shapes_generator.py --generator checkpoints/shapes32-stylegan2 \
        --probe checkpoints/shapes32-probe --n 10000
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit.data import shapes
from jaxedit.io import images as imio
from jaxedit.metrics.distributions import feature_stats, frechet_distance, wasserstein_1d
from jaxedit.models import probe as probe_lib
from jaxedit.models import stylegan2

RESULTS = Path(__file__).resolve().parent / "results"
CONFIDENT = 0.9  # the probe's shape probability above which a reading counts as sure


def shape_probabilities(P, pp, images: jax.Array) -> jax.Array:
    """The probe's shape probabilities ``[B, 3]`` (circle, square, triangle) of images ``[B, H, W, 3]``."""
    return jax.nn.softmax(P(pp, images)["shape_logits"], -1)


def quality(G, gp, P, pp, *, n: int, batch: int = 500, psi: float = 1.0, key=None) -> dict:
    """Frechet distance in probe features (and the render-vs-render floor), shape shares, per-factor W1."""
    data = shapes.ShapesConfig(resolution=G.cfg.img_resolution)
    key = jax.random.key(2024) if key is None else key
    t0 = time.perf_counter()

    def generated(k):
        z = jax.random.normal(k, (batch, G.cfg.z_dim))
        return jnp.clip(G(gp, z, psi=psi), -1, 1)

    def rendered(k):
        return shapes.sample(k, batch, data)["image"]

    feats = lambda images_of: (lambda k: P(pp, images_of(k))["features"])
    kg, kr1, kr2 = jax.random.split(key, 3)
    mu_g, cov_g = feature_stats(feats(generated), kg, n, batch)
    mu_r, cov_r = feature_stats(feats(rendered), kr1, n, batch)
    mu_r2, cov_r2 = feature_stats(feats(rendered), kr2, n, batch)
    fd, floor = frechet_distance(mu_g, cov_g, mu_r, cov_r), frechet_distance(mu_r2, cov_r2, mu_r, cov_r)

    @jax.jit
    def predict(images):
        return shape_probabilities(P, pp, images), P.predict(pp, images)["factors"]

    def predictions(images_of, k):
        shp, fac = [], []
        for i in range(-(-n // batch)):
            s, f = predict(images_of(jax.random.fold_in(k, i)))
            shp.append(np.asarray(s))
            fac.append(np.asarray(f))
        return np.concatenate(shp), np.concatenate(fac)

    pg, fg = predictions(generated, kg)
    pr, fr = predictions(rendered, kr1)
    sg, sr = pg.argmax(-1), pr.argmax(-1)
    w1 = {name: wasserstein_1d(fg[:, i], fr[:, i]) for i, name in enumerate(shapes.FACTOR_NAMES)}
    return {"n": n, "psi": psi, "frechet_probe": fd, "frechet_floor_render_vs_render": floor,
            "frechet_ratio_to_floor": fd / floor,
            "shape_proportions_generated": [float(np.mean(sg == c)) for c in range(3)],
            "shape_proportions_rendered": [float(np.mean(sr == c)) for c in range(3)],
            "shape_unsure_generated": float(np.mean(pg.max(-1) < CONFIDENT)),
            "shape_unsure_rendered": float(np.mean(pr.max(-1) < CONFIDENT)),
            "wasserstein_per_factor": w1, "wasserstein_max": max(w1.values()),
            "seconds": round(time.perf_counter() - t0, 1)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generator", default="checkpoints/shapes32-stylegan2")
    ap.add_argument("--probe", default="checkpoints/shapes32-probe")
    ap.add_argument("--n", type=int, default=10000)
    ap.add_argument("--batch", type=int, default=500)
    ap.add_argument("--psi", type=float, default=1.0)
    ap.add_argument("--name", default="eval_shapes32_generator")
    args = ap.parse_args()

    G, gp = stylegan2.load(args.generator)
    P, pp = probe_lib.load(args.probe)
    report = {"generator": str(args.generator), "probe": str(args.probe),
              **quality(G, gp, P, pp, n=args.n, batch=args.batch, psi=args.psi)}
    w1 = report["wasserstein_per_factor"]
    fd, floor = report["frechet_probe"], report["frechet_floor_render_vs_render"]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# {args.name}", "", f"N = {args.n} generated (psi {args.psi}) vs rendered images, probe `{args.probe}`", "",
             "| metric | value |", "|---|---:|",
             f"| Frechet distance (probe features), generated vs rendered | {fd:.4f} |",
             f"| floor: rendered vs rendered | {floor:.4f} |",
             f"| ratio to floor | {fd / floor:.2f} |",
             "| shape proportions generated (circle, square, triangle) | "
             + ", ".join(f"{v:.3f}" for v in report["shape_proportions_generated"]) + " |",
             "| shape proportions rendered | " + ", ".join(f"{v:.3f}" for v in report["shape_proportions_rendered"]) + " |",
             f"| shape read with probability < {CONFIDENT}: generated / rendered | "
             f"{report['shape_unsure_generated']:.3f} / {report['shape_unsure_rendered']:.3f} |",
             f"| max per-factor Wasserstein-1 | {report['wasserstein_max']:.4f} |", "",
             "| factor | W1 |", "|---|---:|", *[f"| {k} | {v:.4f} |" for k, v in w1.items()]]
    (RESULTS / f"{args.name}.md").write_text("\n".join(lines) + "\n")
    z = jax.random.normal(jax.random.key(7), (args.batch, G.cfg.z_dim))[:32]
    gen = np.asarray(jnp.clip(G(gp, z, psi=args.psi), -1, 1))
    data = shapes.ShapesConfig(resolution=G.cfg.img_resolution)
    ren = np.asarray(shapes.sample(jax.random.key(7), args.batch, data)["image"])[:32]
    imio.save_grid(np.concatenate([gen, ren]), RESULTS / f"{args.name}.png", cols=8)
    z = jax.random.normal(jax.random.key(8), (4 * args.batch, G.cfg.z_dim))
    many = np.concatenate([np.asarray(jnp.clip(G(gp, z[i:i + args.batch], psi=args.psi), -1, 1))
                           for i in range(0, len(z), args.batch)])
    prob = np.asarray(shape_probabilities(P, pp, many))
    sure = prob.max(-1) >= CONFIDENT
    groups = [np.flatnonzero(sure & (prob.argmax(-1) == c))[:12] for c in range(3)] + [np.flatnonzero(~sure)[:12]]
    labels = ["circle", "square", "triangle", f"unsure (p < {CONFIDENT})"]
    imio.save_grid(np.concatenate([np.concatenate([many[g], np.zeros((12 - len(g), *many.shape[1:]))]) for g in groups]),
                   RESULTS / f"{args.name}_by_shape.png", cols=12, row_labels=labels)
    print("\n".join(lines))
    print(f"grid: {RESULTS / (args.name + '.png')} (top 4 rows generated, bottom 4 rendered); "
          f"{RESULTS / (args.name + '_by_shape.png')} (generated samples by the probe's shape reading)")


if __name__ == "__main__":
    main()
