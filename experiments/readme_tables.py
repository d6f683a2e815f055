"""Writes the README's measured tables from the experiments' JSON results.

A table that results own sits between two markers in README.md; the marker names the JSON files
(in the order the formatter takes them) and, last, the formatter in ``TABLES`` below:

    <!-- table: experiments/results/invert_shapes.json invert_reconstruction -->
    | data | method | PSNR dB | ...
    <!-- /table -->

Each formatter is one function of the loaded JSON: its rows, labels and number formats are the
table's whole definition. Rerun an experiment, then

    python experiments/readme_tables.py --write   # rewrite the marked tables in place
    python experiments/readme_tables.py --check   # exit 1 with a diff when one is stale

``tests/test_readme_numbers.py`` runs the check.
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
MARKED = re.compile(
    r"^<!-- table: (?P<spec>[^\n]*?) -->\n(?P<body>.*?)^<!-- /table -->$",
    re.MULTILINE | re.DOTALL,
)


def md_table(header, rows, right_from=None):
    """Markdown table lines; columns from index ``right_from`` on are right-aligned."""
    right_from = len(header) if right_from is None else right_from
    align = ["---" if i < right_from else "---:" for i in range(len(header))]
    return [md_row(header), f"|{'|'.join(align)}|"] + [md_row(row) for row in rows]


def md_row(cells):
    return "|" + "|".join(f" {cell} " if cell else " " for cell in cells) + "|"


def sci(x):
    """One significant digit, short exponent: 7e-8."""
    return f"{x:.0e}".replace("e-0", "e-").replace("e+0", "e")


def three_digits(x):
    """Three significant digits for rates between 1 and 999: 312, 6.49."""
    return f"{x:.0f}" if x >= 100 else f"{x:.1f}" if x >= 10 else f"{x:.2f}"


# --- Editing: directions, fields, flows ----------------------------------------------------------

DIRECTION_FAMILIES = [  # key in directions_shapes32.json, column
    ("interfacegan", "InterFaceGAN (W)"),
    ("ganspace", "GANSpace"),
    ("linear", "linear (Voynov)"),
    ("warped", "warped"),
    ("curvilinear", "curvilinear"),
]
FLOAT_ROUNDING = 1e-5  # commutativity gaps below this are float rounding: one mean is shown


def directions(results):
    rca = results["rca"]
    chance = next(iter(rca.values()))["chance"]
    rca_row = [f"reconstructor accuracy (RCA, chance {chance:.2f})"]
    gap_row = ["commutativity, mean attribute gap of A-then-B vs B-then-A"]
    for family, _ in DIRECTION_FAMILIES:
        rca_row.append(f"{rca[family]['rca']:.2f}" if family in rca else "-")
        gaps = [pair["mean_abs"] for pair in results["families"][family]["commutativity"]]
        if max(gaps) < FLOAT_ROUNDING:
            gap_row.append(sci(sum(gaps) / len(gaps)))
        else:
            gap_row.append(f"**{sci(min(gaps))} - {sci(max(gaps))}**")
    return md_table(
        [""] + [name for _, name in DIRECTION_FAMILIES],
        [rca_row, gap_row],
        right_from=1,
    )


FIT_ROWS = [  # README label, factor key in fit_shapes32{,_extra}.json, the same fit conditioned off another
    ("scale", "scale", None),
    ("y", "y", None),
    ("x", "x", "x|scale"),
    ("spot ratio", "spot_ratio", None),
    ("object hue (cos)", "hue_cos", None),
    ("background hue (cos)", "bg_cos", None),
]
ATTRIBUTE_NAMES = {
    "hue": "object hue",
    "bg_hue": "bg hue",
    "spot_hue": "spot hue",
    "spot_ratio": "spot ratio",
}


def fit_interfacegan(fits, extra_fits):
    factors = fits["factors"] | extra_fits["factors"]

    def named(name_value):
        name, value = name_value
        return f"{value:.2f} ({ATTRIBUTE_NAMES.get(name, name)})"

    rows = []
    for label, key, conditioned in FIT_ROWS:
        fit = factors[key]
        core = named(fit["max_other_core"])
        if conditioned:
            off = factors[conditioned]
            core += f"; {off['max_other_core'][1]:.2f} conditioned off {', '.join(off['conditions'])}"
        moves = f"{fit['success_up']:.2f} / {fit['success_down']:.2f}"
        rows.append([label, moves, core, named(fit["max_other"]), f"{fit['val_accuracy']:.2f}"])
    header = [
        "attribute",
        "moves the right way (+ / -)",
        "largest other change / target: well-measured (x, y, scale, hues)",
        "all others",
        "SVM validation accuracy",
    ]
    return md_table(header, rows)


# --- Real images in: inversion ------------------------------------------------------------------

INVERT_ROWS = [  # data, method in invert_shapes.json, README label
    ("renders", "w_avg (baseline)", "`w_avg` (baseline)"),
    ("renders", "encoder only", "encoder only"),
    ("renders", "projector W (200 steps)", "projector W"),
    ("renders", "projector W+ (200 steps)", "projector W+"),
    (
        "renders",
        "encoder + NVIDIA projector W+ (40 steps)",
        "encoder + NVIDIA's projector W+, 40 steps",
    ),
    (
        "renders",
        "hybrid: encoder + projector W+, no jitter, G's noise (40 steps)",
        "hybrid, 40 steps",
    ),
    ("renders", "hybrid (200 steps)", "hybrid, 200 steps"),
    ("generator samples", "encoder only", "encoder only"),
    ("generator samples", "projector W (200 steps)", "projector W"),
    ("generator samples", "projector W+ (200 steps)", "projector W+"),
    ("generator samples", "hybrid (200 steps)", "hybrid, 200 steps"),
]
DATA_NAMES = {"renders": "renders", "generator samples": "samples"}
INVERT_COLUMNS = [  # JSON column, README column, format, better ("max" / "min": the data's best is bold)
    ("PSNR dB", "PSNR dB", "{:.1f}", "max"),
    ("shape acc", "shape agree", "{:.2f}", None),
    ("MAE object hue", "object hue MAE", "{:.3f}", "min"),
    ("MAE position", "position MAE", "{:.3f}", "min"),
]


def invert_reconstruction(inversion):
    measured = {(r["data"], r["method"]): r for r in inversion["rows"]}
    best = {}
    for data in DATA_NAMES:
        shown = [measured[d, m] for d, m, _ in INVERT_ROWS if d == data]
        for column, _, _, better in INVERT_COLUMNS:
            if better:
                best[data, column] = (max if better == "max" else min)(r[column] for r in shown)
    rows = []
    for data, method, label in INVERT_ROWS:
        r = measured[data, method]
        row = [DATA_NAMES[data], label]
        for column, _, fmt, better in INVERT_COLUMNS:
            cell = fmt.format(r[column])
            row.append(f"**{cell}**" if better and r[column] == best[data, column] else cell)
        rate = r["images/s"]
        row.append("-" if method.startswith("w_avg") else f"{rate:.0f}" if rate >= 100 else f"{rate:.1f}")
        rows.append(row)
    header = ["data", "method"] + [name for _, name, _, _ in INVERT_COLUMNS] + ["images/s"]
    return md_table(header, rows, right_from=2)


EDIT_NAMES = {"InterFaceGAN hue_cos": "InterFaceGAN object hue"}
LATENT_NAMES = {
    "generator samples": "samples",
    "inverted renders (hybrid)": "inverted renders",
}


def invert_edits(inversion):
    rows = [
        [
            EDIT_NAMES.get(e["edit"], e["edit"]),
            e["target"],
            LATENT_NAMES[e["latents"]],
            f"{e['target change t=+2']:+.3f}",
            f"{e['others abs change t=+2']:.3f}",
            f"{e['target change t=-2']:+.3f}",
            f"{e['others abs change t=-2']:.3f}",
        ]
        for e in inversion["edits"]
    ]
    header = [
        "edit",
        "target",
        "on",
        "change at t = +2",
        "others",
        "change at t = -2",
        "others",
    ]
    return md_table(header, rows, right_from=3)


# --- Local style edits: Latents2Semantics --------------------------------------------------------

L2SAE_REGIONS = ("background", "body", "spot")
L2SAE_SIGMA = 1.0  # the style-noise rows' sigma


def seconds(s):
    """Seconds per edit: 1.05, 0.18, 0.002."""
    return f"{s:.2f}" if s >= 0.01 else f"{s:.3f}"


def l2sae(results):
    def per_region(rows, column, fmt):
        by_region = {r["region"]: r[column] for r in rows if r["images"] == "all"}
        return " / ".join(fmt(by_region[region]) for region in L2SAE_REGIONS)

    reconstruction = next(r for r in results["reconstruction"] if r["images"] == "all")
    noise = [r for r in results["noise"] if r["sigma"] == L2SAE_SIGMA]
    colour_floor = [r for r in results["noise_floor_renderer"]
                    if r["sigma"] == L2SAE_SIGMA and r["made by"] == "edit's colour"]
    speed = {r["method"].split(" (")[0]: r for r in results["speed"]}
    regions = " / ".join(L2SAE_REGIONS)
    sigma = f"style noise (sigma {L2SAE_SIGMA:g})"
    rows = [
        ["reconstruction PSNR", f"{reconstruction['PSNR dB']:.1f} dB", ">= 28"],
        [
            f"mask IoU {regions}",
            " / ".join(f"{results['mask_iou'][region]:.2f}" for region in L2SAE_REGIONS),
            "-",
        ],
        [f"{sigma}: own hue change, {regions}", per_region(noise, "edited hue change", "{:.2f}".format), ">= 0.1"],
        [
            f"{sigma}: shape reading flips, {regions}",
            per_region(noise, "shape", lambda x: f"{100 * x:.1f} %"),
            "<= 3 %",
        ],
        [f"{sigma}: worst other change, {regions}", per_region(noise, "worst other", str), "<= 0.03"],
        [
            f"the same colours on the same geometry, made by the renderer: worst other, {regions}",
            per_region(colour_floor, "worst other", str),
            "(the probe's floor)",
        ],
        [
            f"swap: distance to the donor's hue, {regions}",
            per_region(results["swap"], "err to donor (probe)", lambda x: f"{x:.3f}" if x < 0.1 else f"{x:.2f}"),
            "<= 0.08",
        ],
        [
            "one-pass edits, images/s (style noise / swap / swap from one donor)",
            " / ".join(f"{speed[m]['images/s']:.0f}"
                       for m in ("L2SAE style noise", "L2SAE swap", "L2SAE swap from one donor")),
            ">= 1,000",
        ],
        [
            "seconds per edit: L2SAE / EditGAN's optimization / StyleCLIP's",
            " / ".join(
                seconds(speed[method]["s/edit"])
                for method in ("L2SAE style noise", "EditGAN optimize", "StyleCLIP optimize_latents")
            ),
            "-",
        ],
    ]
    return md_table(["", "value", "bar"], rows)


# --- Batch jobs ----------------------------------------------------------------------------------

BATCH_ROWS = [  # run in bench_batch.json, README label, compared with the raw generator
    ("b", "the job, 1 process", True),
    ("b_latents", "the job, latents only (no PNGs)", False),  # no images: start-up is the whole run
    ("d", "the job, 8-device simulated mesh", True),
    ("bf16", "the job, `--dtype bfloat16`", True),
    ("resume", "rerun after SIGKILL ({items} remaining items)", True),
]


def batch(bench):
    raw = bench["raw"]["raw_float32"]["images_per_s"]
    rows = [["raw generator, jit(mapping + synthesis), float32", f"{raw:.0f}", "100 %"]]
    for run, label, compared in BATCH_ROWS:
        r = bench["runs"][run]
        rate = r["steady_items_per_s"]
        rows.append(
            [
                label.format(items=r["items"]),
                f"{rate:.0f}" if compared else f"{rate:.0f} (startup-bound)",
                f"{100 * rate / raw:.0f} %" if compared else "-",
            ]
        )
    return md_table(["run", "items/s (steady)", "of the raw generator"], rows, right_from=1)


BATCH_PROCESS_ROWS = [  # run in bench_batch_processes.json, README label, show its first commit
    ("b", "1 process (warm cache)", True),
    ("c0", "2 processes, no coordinator", True),
    ("c", "2 processes through `jax.distributed` (`--num-processes 2`)", True),
    # another program (encoder + generator), compiled cold: its first commit is no start-up to compare
    ("images", "{items} images of a folder: encoder inversion + the edit, 1 process", False),
]


def batch_processes(bench):
    rows = []
    for run, label, first_commit in BATCH_PROCESS_ROWS:
        r = bench["runs"][run]
        rows.append(
            [
                label.format(items=r["items"]),
                f"{r['wall_s']:.1f}",
                f"{r['commits_s'][0]:.1f}" if first_commit else "-",
                f"{r['steady_items_per_s']:.0f}",
            ]
        )
    header = [f"run ({bench['settings']['seeds']} seeds unless noted)", "wall s", "first commit s", "items/s (steady)"]
    return md_table(header, rows, right_from=1)


# --- Evaluation: the edit report -----------------------------------------------------------------

EDIT_REPORT_ROWS = [("scale", -2), ("scale", 2), ("x", 2), ("hue_cos", 2), ("pca[1]", 2)]  # direction, t
EDIT_REPORT_PAIRS = [("scale", "x"), ("pca[0]", "pca[1]"), ("pca[0]", "warped[2]"), ("warped[0]", "warped[1]")]


def report_number(x, signed=False):
    """As the report's own table (jaxedit.metrics.edit_report): 3 decimals, tiny values as 1.0e-06."""
    if x != 0 and abs(x) < 1e-3:
        return f"{x:+.1e}" if signed else f"{x:.1e}"
    return f"{x:+.3f}" if signed else f"{x:.3f}"


def edit_report(report):
    directions = {d["name"]: d for d in report["directions"]}
    rows = []
    for name, t in EDIT_REPORT_ROWS:
        d = directions[name]
        cell = next(c for c in d["per_strength"] if c["t"] == t)
        change, other = cell["target_change"], cell["largest_other"]
        rows.append(
            [
                name,
                f"{t:+g}",
                d["target"] if d["target_given"] else f"{d['target']} (largest)",
                f"{report_number(change['mean'], signed=True)} +- {report_number(change['std'])}",
                f"{report_number(other['mean_abs'])} ({other['name']})",
                report_number(cell["probe_distance"]["mean"]),
                report_number(cell["frechet"]),
            ]
        )
    header = [
        "direction",
        "t",
        "target",
        "target change",
        "largest other \\|change\\|",
        "probe embedding dist",
        "Frechet",
    ]
    return md_table(header, rows, right_from=3)


def edit_report_commutativity(report):
    pairs = {(c["a"], c["b"]): c for c in report["commutativity"]}
    rows = []
    for a, b in EDIT_REPORT_PAIRS:
        c = pairs[a, b]
        attributes = sum(c["attributes"].values()) / len(c["attributes"])
        rows.append([a, b, report_number(c["latent"]), report_number(c["image"]), report_number(attributes)])
    return md_table(["A", "B", "latent", "image", "attributes"], rows, right_from=2)


# --- Text-guided editing -------------------------------------------------------------------------

TEXT_GROUPS = [  # README label, group in text_edits_shapes.json's summary
    ("object colour", "color"),
    ("spot colour", "spot_color"),
    ("size", "size"),
    ("spot size", "spot_size"),
    ("shape", "shape"),
    ("background colour", "background"),
    ("position", "position"),
    ("compound", "compound"),
]
TEXT_METHODS = [  # method in the summary, README column
    ("optimize", "optimize (W+, 100 steps)"),
    ("shift (held-out latents)", "layer shift, k = 1, held-out latents"),
    ("global alpha 2 beta 0.3", "global, alpha 2, beta 0.3"),
    ("mapper", "mapper (500 steps x 8 random latents)"),
]


def text_edits(text):
    summary = text["summary"]
    rows = []
    for label, group in TEXT_GROUPS:
        row = [f"{label} ({summary[TEXT_METHODS[0][0]][group]['prompts']})"]
        for method, _ in TEXT_METHODS:
            s = summary[method][group]
            row += [
                f"{s['success']:.2f} ({s['before']:.2f})",
                f"{s['others_changed']:.2f}",
            ]
        rows.append(row)
    header = ["prompts naming"]
    for _, name in TEXT_METHODS:
        header += [f"{name}: success (before)", "others"]
    return md_table(header, rows, right_from=1)


def text_speed(bench):
    n, m = bench["N"], len(bench["prompts"])
    fs3 = bench["quality"]["fs3"]
    cases = [  # case in bench_text_edits.json, README label
        ("latent-opt", f"latent optimization, {n * m} pairs"),
        ("layer-shift", f"layer shift, {m} prompts x {n} latents"),
        ("fs3", f"fs3, {fs3['channels']} channels x 2 signs x {fs3['images']} images"),
        ("global-edit", "global edits, render"),
        ("mapper", f"mapper training, {m} mappers x {n} latents per step"),
    ]
    measured = {(r["case"], r["impl"].split(" ")[0]): r for r in bench["rows"]}
    rows = []
    for case, label in cases:
        batched, loop = measured[case, "batched"], measured[case, "loop"]
        rows.append(
            [
                label,
                f"{batched['images_per_s']:.0f} ({batched['pct_peak']:.0f} %)",
                f"{loop['images_per_s']:.0f}",
                f"{batched['images_per_s'] / loop['images_per_s']:.1f}x",
            ]
        )
    header = [
        "case",
        "batched, images/s (% of peak)",
        "one pair / prompt / channel per call",
        "speed-up",
    ]
    return md_table(header, rows, right_from=1)


# --- Speed ---------------------------------------------------------------------------------------

GENERATOR_ROWS = [  # case and batch in bench_generator.json, README label, show seconds per image
    ("small32", 64, "32 px (base 4096, max 128)", False),
    ("paper256", 1, "256 px (base 16384)", False),
    ("paper256", 8, "256 px", False),
    ("ffhq1024", 1, "FFHQ-1024 config-f", True),
    ("ffhq1024", 4, "FFHQ-1024 config-f", False),
]


def generator_speed(bench):
    measured = {(r["case"], r["batch"], r["impl"]): r for r in bench["results"]}
    rows = []
    for case, batch, label, per_image in GENERATOR_ROWS:
        ours = measured[case, batch, "jaxedit"]
        speed = three_digits(ours["images_per_s"])
        if per_image:
            speed += f" ({ours['ms_per_image'] / 1000:.2f} s/img)"
        refs = [measured[case, batch, impl]["images_per_s"] for impl in ("ref-fused", "ref-nonfused")]
        ups = [ours["speedup_vs_ref"][impl] for impl in ("ref-fused", "ref-nonfused")]
        rows.append(
            [
                label,
                str(batch),
                speed,
                f"{100 * ours['frac_xla_conv_peak']:.0f} %",
                " / ".join(three_digits(x) for x in refs),
                " / ".join(f"{x:.2f}x" for x in ups),
            ]
        )
    peak = bench["peaks"]["xla_conv_peak"]
    header = [
        "model",
        "batch",
        "jaxedit img/s",
        f"% of XLA conv peak ({peak:.0f} GFLOP/s)",
        "reference img/s (fused / non-fused)",
        "speed-up",
    ]
    return md_table(header, rows, right_from=1)


TABLES = {
    "directions": directions,
    "fit_interfacegan": fit_interfacegan,
    "invert_reconstruction": invert_reconstruction,
    "invert_edits": invert_edits,
    "l2sae": l2sae,
    "batch": batch,
    "batch_processes": batch_processes,
    "edit_report": edit_report,
    "edit_report_commutativity": edit_report_commutativity,
    "text_edits": text_edits,
    "text_speed": text_speed,
    "generator_speed": generator_speed,
}


def render(spec):
    """The table a marker's spec (``JSON... FORMATTER``) stands for, as text ending in a newline."""
    *paths, name = spec.split()
    results = [json.loads((ROOT / path).read_text()) for path in paths]
    return "\n".join(TABLES[name](*results)) + "\n"


def rendered_readme(text):
    """README text with every marked table replaced by its rendering."""
    return MARKED.sub(
        lambda m: f"<!-- table: {m['spec']} -->\n{render(m['spec'])}<!-- /table -->",
        text,
    )


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    mode = parser.add_mutually_exclusive_group(required=True)
    mode.add_argument("--write", action="store_true", help="rewrite the marked tables of README.md")
    mode.add_argument(
        "--check",
        action="store_true",
        help="exit 1 with a diff when a marked table is stale",
    )
    args = parser.parse_args(argv)
    text = README.read_text()
    new = rendered_readme(text)
    if args.write:
        if new != text:
            README.write_text(new)
        print(f"{len(MARKED.findall(text))} tables written")
        return 0
    diff = list(difflib.unified_diff(text.splitlines(True), new.splitlines(True), "README.md", "rendered"))
    sys.stdout.writelines(diff)
    return 1 if diff else 0


if __name__ == "__main__":
    sys.exit(main())
