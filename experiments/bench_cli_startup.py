#!/usr/bin/env python
"""Wall time of ``jaxedit --help``, ``jaxedit --version`` and ``python -c "import jaxedit"``.

Not a test. Each command runs as a fresh subprocess (the console script of this interpreter's
environment), ``--repeat`` times after one untimed warm-up run (the OS file cache, .pyc files);
the median is reported against the target of 1 s. ``python -c pass`` is the interpreter's own
floor. Prints a markdown table and writes ``experiments/results/bench_cli_startup.{md,json}``.

    python experiments/bench_cli_startup.py
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import jaxedit

RESULTS = Path(__file__).resolve().parent / "results"
TARGET_S = 1.0


def commands() -> dict[str, list[str]]:
    script = shutil.which("jaxedit", path=str(Path(sys.executable).parent)) or "jaxedit"
    return {
        "jaxedit --help": [script, "--help"],
        "jaxedit --version": [script, "--version"],
        'python -c "import jaxedit"': [sys.executable, "-c", "import jaxedit"],
        'python -c "pass" (interpreter floor)': [sys.executable, "-c", "pass"],
    }


def wall_times(cmd: list[str], repeat: int) -> list[float]:
    """Seconds per run, after one untimed warm-up; a failing command is an error."""
    subprocess.run(cmd, check=True, capture_output=True)
    out = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        subprocess.run(cmd, check=True, capture_output=True)
        out.append(time.perf_counter() - t0)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    rows = []
    for name, cmd in commands().items():
        times = wall_times(cmd, args.repeat)
        rows.append({"command": name, "median_s": statistics.median(times), "min_s": min(times),
                     "max_s": max(times), "runs_s": times})
    load = os.getloadavg()[0]
    lines = [f"jaxedit {jaxedit.__version__}, Python {platform.python_version()}, {platform.machine()}, {os.cpu_count()} "
             f"cores, 1-min load average {load:.1f} at the end; median of {args.repeat} subprocess runs after one "
             f"warm-up; target < {TARGET_S:.0f} s", "",
             "| command | median (s) | min - max (s) | under target |", "|---|---:|---:|---|"]
    lines += [f"| `{r['command']}` | {r['median_s']:.3f} | {r['min_s']:.3f} - {r['max_s']:.3f} | "
              f"{'yes' if r['median_s'] < TARGET_S else '**no**'} |" for r in rows]
    table = "\n".join(lines)
    print(table)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_cli_startup.md").write_text("# CLI startup (experiments/bench_cli_startup.py)\n\n" + table + "\n")
    (RESULTS / "bench_cli_startup.json").write_text(json.dumps(
        {"target_s": TARGET_S, "repeat": args.repeat, "python": platform.python_version(), "load_avg_1min": load,
         "rows": rows}, indent=2)
        + "\n")


if __name__ == "__main__":
    main()
