"""Directions fitted with `jaxedit fit interfacegan` on the default shapes generator, applied from the
written editor files and scored with the probe (issue 13, item 4).

For every factor F (a probe factor column): ``jaxedit fit interfacegan --attribute F --out DIR``
with the command's defaults (20,000 samples in W, probe scores, top / bottom 2 %, linear SVM C = 1,
70/30 split), then ``jaxedit edit`` with DIR (a PNG in the work folder) and, for the numbers, the
same editor (``jaxedit.edits.load`` + ``apply``) moving 64 held-out seeds (never used for fitting)
to both ends of the recorded ``strength_range`` (what ``jaxedit edit`` defaults to). The probe reads
the original and the edited images:

- success: fraction of seeds whose probe column F rises at the upper end (``+``) / falls at the
  lower end (``-``); "both": the seed does both;
- other / target: mean |change| of every other attribute of :mod:`jaxedit.metrics.attributes`
  (fractions of the factor's range; angles in turns) over the target attribute's, pooled over both
  ends; the max over all 7 others and over the well-measured ones (x, y, scale, hue, bg_hue; the probe
  reads rotation and the spot factors poorly, see ``directions_shapes.py``); shape: total-variation
  change of the probe's shape probabilities over the target's change (reported, not in the max).

    python experiments/fit_shapes.py [--factors scale,spot_ratio,hue_cos,bg_cos,x] [--num 20000]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import edits
from jaxedit.cli.common import parse_seeds, seed_latents
from jaxedit.cli.main import main as cli
from jaxedit.data.shapes import FACTOR_NAMES
from jaxedit.io import checkpoint
from jaxedit.metrics import attributes as A
from jaxedit.models import probe as probe_lib
from jaxedit.models import stylegan2

RESULTS = Path(__file__).resolve().parent / "results"
SUCCESS, CLEAN = 0.9, 1 / 3
CORE = ("x", "y", "scale", "hue", "bg_hue")
ATTRIBUTE_OF = {"x": "x", "y": "y", "scale": "scale", "spot_ratio": "spot_ratio", "rot_cos": "rotation",
                "rot_sin": "rotation", "hue_cos": "hue", "hue_sin": "hue", "bg_cos": "bg_hue", "bg_sin": "bg_hue",
                "spot_hue_cos": "spot_hue", "spot_hue_sin": "spot_hue"}
EVAL_SEEDS = "1000000-1000063"


def read_edits(G, gp, P, pp, ed, z, strengths):
    """Probe factors ``[1 + S, B, 12]`` and attributes (``[1 + S, B, 8]``, shape probs ``[1 + S, B, 3]``)
    of the original latents and their edits to each of ``strengths`` (S floats; one program)."""
    @jax.jit
    def run(ed, gp, pp, z):
        lat = ed.prepare(G, gp, z)
        t = jnp.ones(z.shape[0])
        lats = jnp.stack([lat, *(edits.apply(ed, lat, 0, s * t) for s in strengths)])
        img = jnp.clip(ed.render(G, gp, lats.reshape(-1, *lat.shape[1:])), -1, 1)
        out = P(pp, img)
        attrs, probs = A.read(out)
        return jax.tree.map(lambda a: a.reshape(len(lats), z.shape[0], *a.shape[1:]), (out["factors"], attrs, probs))

    return run(ed, gp, pp, jnp.asarray(z))


def score(factor, f, attrs, probs, lo=1, hi=2):
    """Success fractions and other / target ratios of one factor's edits to rows ``lo`` and ``hi`` of the
    :func:`read_edits` arrays (row 0: the originals; host side, see the docstring)."""
    col = FACTOR_NAMES.index(factor)
    up = f[hi, :, col] > f[0, :, col]
    down = f[lo, :, col] < f[0, :, col]
    ch = np.concatenate([np.asarray(A.change((attrs[0], probs[0]), (attrs[i], probs[i]))) for i in (lo, hi)])
    mag = np.abs(ch).mean(0)  # [9] mean |change| per CHANGE_NAMES column, both ends pooled
    target = ATTRIBUTE_OF[factor]
    t = mag[A.CHANGE_NAMES.index(target)]
    ratios = {a: float(mag[j] / t) for j, a in enumerate(A.ATTRIBUTES) if a != target}
    core = {a: r for a, r in ratios.items() if a in CORE}
    worst, worst_core = max(ratios, key=ratios.get), max(core, key=core.get)
    return {"success_up": float(up.mean()), "success_down": float(down.mean()),
            "success_both": float((up & down).mean()), "target_attribute": target, "target_change": float(t),
            "other_over_target": {a: round(r, 4) for a, r in ratios.items()},
            "max_other": [worst, ratios[worst]], "max_other_core": [worst_core, core[worst_core]],
            "shape_tv_over_target": float(mag[-1] / t),
            "column_change_lo_hi": [float(np.mean(f[lo, :, col] - f[0, :, col])),
                                    float(np.mean(f[hi, :, col] - f[0, :, col]))]}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--factors", default="scale,spot_ratio,hue_cos,bg_cos,x")
    ap.add_argument("--num", type=int, default=20_000, help="fitting samples (the command's default)")
    ap.add_argument("--work", default="/tmp/fit_shapes32", help="folder for the editor files and edit PNGs")
    ap.add_argument("--name", default="fit_shapes32")
    args = ap.parse_args()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    G, gp = stylegan2.load(checkpoint.default_path("shapes32-stylegan2"))
    P, pp = probe_lib.load(checkpoint.default_path("shapes32-probe"))
    z = seed_latents(parse_seeds(EVAL_SEEDS), G.cfg.z_dim)
    report = {"generator": "shapes32-stylegan2", "probe": "shapes32-probe", "fit_samples": args.num,
              "eval_seeds": EVAL_SEEDS, "factors": {}}
    for spec in args.factors.split(","):
        factor, *conditions = spec.split("|")
        out = work / spec.replace("|", "_c_")
        t0 = time.perf_counter()
        assert cli(["fit", "interfacegan", "--attribute", factor, *(a for c in conditions for a in ("--condition", c)),
                    "--num", str(args.num), "--out", str(out), "--force"]) == 0
        t_fit = time.perf_counter() - t0
        prov = edits.read_provenance(out)
        lo, hi = prov["strength_range"]
        assert cli(["edit", "--method", "interfacegan", "--directions", str(out), f"--strengths={lo}:{hi}:7",
                    "--seeds", "0-7", "--out", str(out) + ".png"]) == 0
        f, attrs, probs = (np.asarray(a) for a in read_edits(G, gp, P, pp, edits.load(out), z,
                                                              (lo, hi, lo / 3, hi / 3)))
        r = score(factor, f, attrs, probs)
        r.update(val_accuracy=prov["method"]["val_accuracy"], strength_range=[lo, hi], fit_seconds=round(t_fit, 1),
                 conditions=conditions, third=score(factor, f, attrs, probs, 3, 4), provenance=prov)
        report["factors"][spec] = r
        print(f"{spec}: success +{r['success_up']:.2f} -{r['success_down']:.2f}, max other/target "
              f"{r['max_other'][0]} {r['max_other'][1]:.2f} (core {r['max_other_core'][1]:.2f}), "
              f"val acc {r['val_accuracy']:.3f}, {t_fit:.0f} s")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(report, indent=1))
    (RESULTS / f"{args.name}.md").write_text(markdown(report))
    print(markdown(report))


def _cell(spec: str) -> str:
    """A factor spec ``F|C`` as a markdown table cell."""
    return spec.replace("|", " \\| ")


def ok(v: float, good: bool) -> str:
    return f"{v:.2f}" + (" ok" if good else " **miss**")


def markdown(r) -> str:
    lines = [f"# `jaxedit fit interfacegan` on {r['generator']} (probe {r['probe']})", "",
             f"Each direction: `jaxedit fit interfacegan --attribute F` ({r['fit_samples']} samples in W, probe "
             "scores, top / bottom 2 %, linear SVM C = 1, 70/30 split; `F | C`: `--condition C`, the normal "
             "projected off C's), "
             f"applied from the written editor file to 64 held-out seeds ({r['eval_seeds']}) at both ends of its "
             "recorded strength range (+-3 sd of the samples' projections onto the normal; `jaxedit edit`'s default). "
             "Success: the probe's column F rises at the upper end (+) / falls at the lower end (-); target >= "
             f"{SUCCESS:.2f} (\"both\": the same seed does both). Other / target: mean |change| of another attribute "
             f"over the target attribute's, both ends pooled; target < {CLEAN:.2f}; over all 7 others, and over the "
             "well-measured ones (x, y, scale, hue, bg_hue). Shape: TV change of the probe's shape probabilities / "
             "target. Column F, mean change at the lower / upper end. Last column, a diagnostic only: the same at "
             "1/3 of the range (+-1 sd).",
             "", "| factor | strength range | success + / - (both) | max other / target (all) | "
             "max other / target (well-measured) | shape TV / target | SVM val. acc. | column F, mean change - / + | "
             "at +-1 sd: success + / -, max other (well-measured) |", "|---|---|---|---|---|---|---|---|---|"]
    for name, m in r["factors"].items():
        lo, hi = m["strength_range"]
        th = m["third"]
        lines.append(f"| {_cell(name)} | {lo:.2f} : {hi:.2f} | "
                     f"{ok(m['success_up'], m['success_up'] >= SUCCESS)} / "
                     f"{ok(m['success_down'], m['success_down'] >= SUCCESS)} ({m['success_both']:.2f}) | "
                     f"{m['max_other'][0]} {ok(m['max_other'][1], m['max_other'][1] < CLEAN)} | "
                     f"{m['max_other_core'][0]} {ok(m['max_other_core'][1], m['max_other_core'][1] < CLEAN)} | "
                     f"{m['shape_tv_over_target']:.2f} | {m['val_accuracy']:.3f} | "
                     f"{m['column_change_lo_hi'][0]:+.3f} / {m['column_change_lo_hi'][1]:+.3f} | "
                     f"{th['success_up']:.2f} / {th['success_down']:.2f}, "
                     f"{th['max_other_core'][0]} {th['max_other_core'][1]:.2f} |")
    lines += ["", "Other / target per attribute (full range):", "", "| factor | " + " | ".join(A.ATTRIBUTES) + " |",
              "|---|" + "---|" * len(A.ATTRIBUTES)]
    for name, m in r["factors"].items():
        cells = [("-" if a == m["target_attribute"] else f"{m['other_over_target'][a]:.2f}") for a in A.ATTRIBUTES]
        lines.append(f"| {_cell(name)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
