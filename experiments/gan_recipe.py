"""Why ``shapes32-stylegan2`` stops short of its quality bar: the recipe's knobs measured at equal kimg.

Each variant is the shipped config (:func:`jaxedit.train.gan.shapes32_config`) with one change, trained from
scratch for ``--kimg`` in its own resumable scratch run (``--runs``, not committed), then scored by
``eval_shapes_generator.quality`` (Frechet distance in ``shapes32-probe`` features and its ratio to the
render-vs-render floor, shape shares, the share of samples whose shape the probe is unsure of, the largest
per-factor W1; ``--n`` samples, psi 1) on G_ema. Wall time
and kimg/s are recorded (the machine is shared: read them with the load column).

    python experiments/gan_recipe.py [--kimg 200] [--variants "NAME;..."] [--runs runs/gan_recipe]

A finished variant's row is kept in ``experiments/results/gan_recipe.json`` and skipped next time (two
processes may run different ``--variants``). Writes ``experiments/results/gan_recipe.{md,json}``.

**From the plateau** (``--continue-from RUN``): each variant continues a finished run's training state (the
shipped model's: ``checkpoints/shapes32-stylegan2-train``, 2,000 kimg) for ``--kimg`` more with its one change,
instead of starting from scratch: which knob moves a trained model, not an early one. Only the variants that
leave the state's shapes and the step-to-kimg count alone can continue (:data:`CONTINUABLE`: learning rate, R1
weight, style mixing, G_ema's half-life, and the control); the copy's stored config is replaced by the variant's (a scratch copy in
``--runs``; Adam's moments carry no learning rate, R1 and mixing no state).

    python experiments/gan_recipe.py --continue-from checkpoints/shapes32-stylegan2-train --kimg 200 \
        --variants "shipped (c64);lr 0.001;R1 gamma 0.5;no style mixing" --out experiments/results/gan_plateau
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import time
from pathlib import Path

import jax

import jaxedit
from eval_shapes_generator import quality
from jaxedit.train import gan

BASE = gan.shapes32_config()
VARIANTS = {  # name -> the shipped config with one change
    "shipped (c64)": BASE,
    "wider 16/32 px layers (c64w)": gan.shapes32_config("c64w"),
    "R1 gamma 0.5": BASE.replace(r1_gamma=0.5),
    "R1 gamma 0.02": BASE.replace(r1_gamma=0.02),
    "lr 0.001": BASE.replace(lr_G=0.001, lr_D=0.001),
    "mapping 4 layers": BASE.replace(G=dataclasses.replace(BASE.G, mapping_layers=4)),
    "no style mixing": BASE.replace(style_mixing_prob=0.0),
    "batch 64": BASE.replace(batch=64),
    "EMA 40 kimg": BASE.replace(ema_kimg=40.0),
    "shipped (c64), seed 1": BASE.replace(seed=1),  # the seed's own spread, for the rows above
    "wider 16/32 px layers (c64w), seed 1": gan.shapes32_config("c64w").replace(seed=1),
    "batch 64, seed 1": BASE.replace(batch=64, seed=1),
    "mbstd group 32": BASE.replace(D=dataclasses.replace(BASE.D, mbstd_group_size=32)),  # stylegan2-ada's `cifar`
}
CONTINUABLE = ("shipped (c64)", "R1 gamma 0.5", "R1 gamma 0.02", "lr 0.001", "no style mixing", "EMA 40 kimg")
RESULTS = Path(__file__).resolve().parent / "results"


def run(name: str, runs: Path, kimg: float, n: int, start: Path | None = None) -> dict:
    """Train variant ``name`` for ``kimg`` (from scratch, or continuing the run folder ``start``) and score it."""
    slug = "".join(c if c.isalnum() else "_" for c in name)
    cfg = VARIANTS[name].replace(kimg=kimg, sample_kimg=None, ckpt_kimg=10.0)
    start_kimg = 0.0
    if start is not None:
        if name not in CONTINUABLE:
            raise SystemExit(f"--continue-from: {name!r} changes the state or the kimg per step; "
                             f"continuable: {', '.join(CONTINUABLE)}")
        stored = gan.GANConfig.from_dict(json.loads((start / "config.json").read_text()))
        if dataclasses.replace(stored, kimg=cfg.kimg, name=cfg.name, sample_kimg=None, ckpt_kimg=10.0) != \
                BASE.replace(kimg=cfg.kimg, sample_kimg=None, ckpt_kimg=10.0):
            raise SystemExit(f"--continue-from {start}: its config is not the shipped one")
        start_kimg = stored.kimg
        cfg = cfg.replace(kimg=start_kimg + kimg)
        if not (runs / slug).exists():
            shutil.copytree(start, runs / slug)
            (runs / slug / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2) + "\n")
    load0 = os.getloadavg()[0]
    t = time.perf_counter()
    summary = gan.train(cfg, runs / slug, progress=False)
    seconds = time.perf_counter() - t
    G, gp = jaxedit.load(runs / slug / gan.EXPORT_DIR)
    P, pp = jaxedit.load("shapes32-probe")
    q = quality(G, gp, P, pp, n=n)
    return {"variant": name, "kimg": kimg, "start_kimg": start_kimg,
            "frechet_ratio_to_floor": q["frechet_ratio_to_floor"],
            "frechet_probe": q["frechet_probe"], "shape_proportions": q["shape_proportions_generated"],
            "shape_unsure": q["shape_unsure_generated"],
            "wasserstein_max": q["wasserstein_max"], "wasserstein_per_factor": q["wasserstein_per_factor"],
            "kimg_per_s": summary.get("kimg_per_s"), "seconds": seconds, "load_at_start": load0, "n": n}


def table(rows: list[dict]) -> str:
    out = ["| variant | kimg | Frechet (x floor) | shapes circle / square / triangle | shape unsure | worst factor W1 "
           "| kimg/s |", "|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        worst = max(r["wasserstein_per_factor"], key=r["wasserstein_per_factor"].get)
        kimg = f"{r['start_kimg']:g} + {r['kimg']:g}" if r.get("start_kimg") else f"{r['kimg']:g}"
        unsure = f"{r['shape_unsure']:.2f}" if "shape_unsure" in r else "-"  # rows from before the column
        out.append(f"| {r['variant']} | {kimg} | {r['frechet_probe']:.2f} ({r['frechet_ratio_to_floor']:.0f}x) | "
                   + " / ".join(f"{v:.2f}" for v in r["shape_proportions"])
                   + f" | {unsure} | {r['wasserstein_max']:.3f} ({worst}) | {r['kimg_per_s'] or 0:.3f} |")
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=Path, default=Path("runs/gan_recipe"))
    ap.add_argument("--kimg", type=float, default=200.0)
    ap.add_argument("--n", type=int, default=5000, help="samples for the metrics")
    ap.add_argument("--variants", default=";".join(VARIANTS), help="names separated by ;")
    ap.add_argument("--out", type=Path, default=RESULTS / "gan_recipe", help="results stem (.json, .md)")
    ap.add_argument("--continue-from", type=Path, help="a finished shipped-config run folder to continue (doc)")
    args = ap.parse_args()
    path = args.out.with_suffix(".json")
    for name in args.variants.split(";"):
        done = json.loads(path.read_text())["rows"] if path.exists() else []
        if any(r["variant"] == name and r["kimg"] == args.kimg for r in done):
            continue
        row = run(name, args.runs, args.kimg, args.n, args.continue_from)
        print(json.dumps(row), flush=True)
        done = json.loads(path.read_text())["rows"] if path.exists() else []  # another process may have written
        rows = [r for r in done if not (r["variant"] == name and r["kimg"] == args.kimg)] + [row]
        rows.sort(key=lambda r: (r["kimg"], list(VARIANTS).index(r["variant"])))
        path.write_text(json.dumps({"devices": str(jax.devices()), "rows": rows}, indent=1))
        how = (f"continuing `{args.continue_from}` (its kimg + the variant's)" if args.continue_from
               else "trained from scratch for the same kimg")
        args.out.with_suffix(".md").write_text(
            f"# {args.out.name}\n\nEach variant: the shipped `shapes32-stylegan2` config with one change (a `seed 1` row: "
            f"the same config from another seed, for the spread between seeds), {how}, "
            f"scored on G_ema by the shipped probe (`eval_shapes_generator.quality`, {args.n} samples).\n\n"
            + table(rows) + "\n")
    print(table(json.loads(path.read_text())["rows"]))


if __name__ == "__main__":
    main()
