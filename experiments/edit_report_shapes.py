"""The README's edit report ("The edit report"): ``jaxedit eval edits`` on the default shapes generator
with the direction files the README's commands make, its report copied to ``experiments/results``.

The directions go to a scratch folder (``--work``, default ``runs/edit_report_shapes/``, not committed):

    jaxedit fit interfacegan --attribute scale --out WORK/dirs/scale      # also x, hue_cos
    jaxedit fit ganspace --components 8 --out WORK/dirs/pca
    jaxedit discover WORK/runs/warped --method warped --steps 300
    jaxedit eval edits --directions WORK/dirs/scale WORK/dirs/x WORK/dirs/hue_cos WORK/dirs/pca \\
        WORK/runs/warped --out WORK/report

all with the commands' defaults, in this process (``jaxedit.cli.main.main``). Steps whose output
exists are skipped (rerun after a failure; ``--fresh`` to redo all). The report's ``report.json`` and
``report.md`` become ``experiments/results/edit_report_shapes.{json,md}``, the JSON with the
commands and each step's wall time under ``"run"``. ``experiments/readme_tables.py`` renders the
README's two tables from it.

    python experiments/edit_report_shapes.py [--work runs/edit_report_shapes] [--fresh]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import time
from pathlib import Path

from jaxedit.cli.main import main as cli

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
ATTRIBUTES = ("scale", "x", "hue_cos")


def steps(work):
    """(name, output that marks the step done, jaxedit arguments) in order."""
    dirs, warped, report = work / "dirs", work / "runs" / "warped", work / "report"
    out = [
        (f"fit interfacegan {a}", dirs / a, ["fit", "interfacegan", "--attribute", a, "--out", str(dirs / a)])
        for a in ATTRIBUTES
    ]
    out.append(("fit ganspace", dirs / "pca", ["fit", "ganspace", "--components", "8", "--out", str(dirs / "pca")]))
    # a killed discover run is resumed by the same command; eval.json is written when it ends
    discover = ["discover", str(warped), "--method", "warped", "--steps", "300"]
    out.append(("discover warped", warped / "eval.json", discover))
    directions = [str(dirs / a) for a in ATTRIBUTES] + [str(dirs / "pca"), str(warped)]
    evaluate = ["eval", "edits", "--directions", *directions, "--out", str(report)]
    out.append(("eval edits", report / "report.json", evaluate))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--work", type=Path, default=ROOT / "runs" / "edit_report_shapes")
    parser.add_argument("--fresh", action="store_true", help="delete --work first")
    args = parser.parse_args(argv)
    if args.fresh and args.work.exists():
        shutil.rmtree(args.work)
    args.work.mkdir(parents=True, exist_ok=True)

    run = {"commands": [], "seconds": {}, "load_average_start": os.getloadavg()}
    for name, done, command in steps(args.work):
        shown = "jaxedit " + " ".join(c.replace(str(args.work), "WORK") for c in command)
        run["commands"].append(shown)
        if done.exists():
            print(f"skip (done): {shown}", flush=True)
            continue
        print(f"run: {shown}", flush=True)
        start = time.perf_counter()
        code = cli(command)
        if code != 0:
            raise SystemExit(f"{shown} exited with {code}")
        run["seconds"][name] = round(time.perf_counter() - start, 1)
        print(f"  {run['seconds'][name]} s", flush=True)
    run["load_average_end"] = os.getloadavg()
    run["machine"] = {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()}

    report_dir = args.work / "report"
    report = json.loads((report_dir / "report.json").read_text())
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "edit_report_shapes.json").write_text(json.dumps({**report, "run": run}, indent=1) + "\n")
    shutil.copyfile(report_dir / "report.md", RESULTS / "edit_report_shapes.md")
    print(f"-> {RESULTS / 'edit_report_shapes.json'}, .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
