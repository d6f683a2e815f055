"""The measurements behind Latents2Semantics version 3's recipe (`shapes32-l2sae`'s model card).

1. Recipe ablation: the trainer's default config for 1,000 steps (warm-up 100, the cosine over the 1,000), one
   field changed per variant: the probe-embedding (perceptual) weight 0 / 0.0005 / 0.002 / 0.02 at version 2's
   widths (32/48/64, 64/48/32), and version 3's small widths at weight 0. Scored by the trainer's
   :func:`jaxedit.train.l2sae.evaluate` (256 held-out renders): reconstruction PSNR, probe hue MAE, mask IoU.
2. Style noise, isotropic vs shaped by the model's ``style_spread``, on ``--model`` (default the embedded
   ``shapes32-l2sae``), 256 held-out renders ``shapes.sample(key(4242))``, sigma 1, one draw per image: the
   edited region's circular hue change and the share of images whose probe shape reading flips.

    python experiments/l2sae_recipe.py [--runs runs/l2sae_recipe] [--steps 1000]

Runs are resumable scratch folders under ``--runs`` (not committed). Writes
``experiments/results/l2sae_recipe.{md,json}``. About 20 minutes on this 2-core CPU.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxedit
from jaxedit.data import shapes
from jaxedit.edits import local_style
from jaxedit.models.l2sae import L2SAEConfig
from jaxedit.train import l2sae as T

V2_WIDTHS = {"encoder_widths": (32, 48, 64), "decoder_widths": (64, 48, 32)}
VARIANTS = {  # name -> (perceptual weight, model widths)
    "v2 widths, perceptual 0.02 (version 2)": (0.02, V2_WIDTHS),
    "v2 widths, perceptual 0.002": (0.002, V2_WIDTHS),
    "v2 widths, perceptual 0.0005": (0.0005, V2_WIDTHS),
    "v2 widths, perceptual 0": (0.0, V2_WIDTHS),
    "v3 widths, perceptual 0 (version 3)": (0.0, {}),
}
RESULTS = Path(__file__).resolve().parent / "results"


def ablation(runs: Path, steps: int) -> list[dict]:
    rows = []
    for i, (name, (weight, widths)) in enumerate(VARIANTS.items()):
        base = T.L2SAETrainConfig()
        cfg = dataclasses.replace(base, steps=steps, warmup=steps // 10, ckpt_every=10**9, perceptual_weight=weight,
                                  model=L2SAEConfig(structure_stride=2, **widths))
        t = time.perf_counter()
        _, rep = T.train(cfg, runs / f"v{i}", force=True, progress=False)
        rows.append({"variant": name, "perceptual_weight": weight, "steps": steps, "parameters": rep["parameters"],
                     "recon_psnr": rep["recon_psnr"], "hue_mae": rep["hue_mae"], "mask_iou": rep["mask_iou"],
                     "steps_per_s": steps / rep["train_seconds"], "seconds": time.perf_counter() - t})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def noise(model: str, n: int = 256) -> list[dict]:
    M, params = jaxedit.load(model)
    P, pp = jaxedit.load("shapes32-probe")
    x = shapes.sample(jax.random.key(4242), n)["image"]
    keys = jax.random.split(jax.random.key(11), n)
    base = P.predict(pp, x)
    names = shapes.FACTOR_NAMES
    cols = {"background": names.index("bg_cos"), "body": names.index("hue_cos"), "spot": names.index("spot_hue_cos")}
    turns = lambda f, c: np.arctan2(2 * f[:, c + 1] - 1, 2 * f[:, c] - 1) / (2 * np.pi)  # noqa: E731
    edit = jax.jit(lambda ed, r: local_style.style_noise(ed, x, r, 1.0, keys), static_argnums=1)
    rows = []
    for label, spread in (("isotropic", jnp.eye(M.cfg.style_dim)), ("style_spread", params["style_spread"])):
        ed = local_style.LocalStyle({**params, "style_spread": spread}, M)
        for region, c in cols.items():
            out = P.predict(pp, edit(ed, region))
            d = np.abs(turns(np.asarray(out["factors"]), c) - turns(np.asarray(base["factors"]), c))
            rows.append({"noise": label, "region": region, "sigma": 1.0, "n": n,
                         "hue_change": float(np.mean(np.minimum(d, 1 - d))),
                         "shape_flips": float(np.mean(np.asarray(out["shape"]) != np.asarray(base["shape"])))})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/l2sae_recipe")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--model", default="shapes32-l2sae")
    args = ap.parse_args()
    noise_rows = noise(args.model)
    rows = ablation(Path(args.runs), args.steps)
    md = ["# Latents2Semantics recipe measurements", "",
          f"## Recipe ablation ({args.steps} steps each, 256 held-out renders)", "",
          "| variant | PSNR dB | probe hue MAE | mask IoU bg / body / spot | steps/s |", "|---|---|---|---|---|"]
    md += [f"| {r['variant']} | {r['recon_psnr']:.1f} | {r['hue_mae']:.3f} | "
           + " / ".join(f"{r['mask_iou'][k]:.2f}" for k in ("background", "body", "spot"))
           + f" | {r['steps_per_s']:.1f} |" for r in rows]
    md += ["", f"## Style noise on {args.model}, sigma 1 (256 renders)", "",
           "| noise | region | hue change | shape flips |", "|---|---|---|---|"]
    md += [f"| {r['noise']} | {r['region']} | {r['hue_change']:.3f} | {100 * r['shape_flips']:.1f} % |"
           for r in noise_rows]
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "l2sae_recipe.md").write_text("\n".join(md) + "\n")
    (RESULTS / "l2sae_recipe.json").write_text(json.dumps({"ablation": rows, "noise": noise_rows}, indent=1))
    print("\n".join(md))


if __name__ == "__main__":
    main()
