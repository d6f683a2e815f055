#!/usr/bin/env python
"""Time and peak memory of jaxedit's refusal of each hostile-file class (issue 14, "prove it").

Not a test. The corpus is the one tests/test_hostile_files.py writes (pickle opcodes and zip
files by hand, no torch). Each class is read in its own fresh interpreter (a forked child with
the address space capped at 4 GB and a SIGALRM after ``--alarm`` s): wall time of
``torchfile.load`` and the growth of peak RSS (``ru_maxrss``) during it. ``--baseline REV`` also
runs the reader of git revision REV on the same files, for comparison. Prints a markdown table
and writes ``experiments/results/bench_hostile_files.{md,json}``.

    python experiments/bench_hostile_files.py [--baseline 0f7a5db]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "experiments" / "results"
sys.path.insert(0, str(ROOT / "tests"))

import test_hostile_files as hostile  # the corpus and the forking reader


def outcome(out: dict, alarm_s: int) -> str:
    if "crashed" in out:
        sig = -out["crashed"]
        return {14: f"killed after {alarm_s} s", 11: "segfault", 6: "abort", 9: "killed"}.get(
            sig, f"died (signal {sig})") if out["crashed"] < 0 else f"exit {out['crashed']}"
    if not out["refused"]:
        return "loaded"
    msg = out["message"].split(": ", 1)[-1]
    return f"{out['type']}: {msg[:70]}" + ("..." if len(msg) > 70 else "")


def measure(files: dict, workdir: Path, reader: str, alarm_s: int) -> dict[str, dict]:
    """Each class in a fresh interpreter."""
    return {name: hostile.run_reader([path], workdir, reader, alarm_s)[str(path)]
            for name, (path, _) in files.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", help="git revision whose jaxedit/io/torchfile.py to run as well")
    ap.add_argument("--alarm", type=int, default=60, help="seconds before a read is killed (default 60)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        marker = d / "PWNED"
        files = hostile.build_corpus(d, marker)
        runs = {"current": measure(files, d, "jaxedit.io.torchfile", args.alarm)}
        if args.baseline:
            src = subprocess.run(["git", "show", f"{args.baseline}:jaxedit/io/torchfile.py"], cwd=ROOT, check=True,
                                 capture_output=True, text=True).stdout
            (d / "torchfile_baseline.py").write_text(src)
            runs[args.baseline] = measure(files, d, "torchfile_baseline", args.alarm)
        executed = marker.exists()
        sizes = {name: path.stat().st_size for name, (path, _) in files.items()}
    rows = []
    for name in files:
        cur = runs["current"][name]
        row = {"class": name, "file_bytes": sizes[name], "seconds": cur.get("seconds"),
               "peak_mib": cur.get("peak_mib"), "outcome": outcome(cur, args.alarm)}
        if args.baseline:
            base = runs[args.baseline][name]
            row.update(baseline_seconds=base.get("seconds"), baseline_peak_mib=base.get("peak_mib"),
                       baseline_outcome=outcome(base, args.alarm))
        rows.append(row)

    def num(v, fmt):
        return "-" if v is None else format(v, fmt)

    head = "| class | file bytes | refusal s | peak MiB | outcome |"
    sep = "|---|---:|---:|---:|---|"
    if args.baseline:
        head += f" {args.baseline} s | {args.baseline} peak MiB | {args.baseline} outcome |"
        sep += "---:|---:|---|"
    lines = [head, sep]
    for r in rows:
        line = (f"| {r['class']} | {r['file_bytes']:,} | {num(r['seconds'], '.4f')} | {num(r['peak_mib'], '.1f')} "
                f"| {r['outcome'].replace('|', '/')} |")
        if args.baseline:
            line += (f" {num(r['baseline_seconds'], '.3f')} | {num(r['baseline_peak_mib'], '.1f')} "
                     f"| {r['baseline_outcome'].replace('|', '/')} |")
        lines.append(line)
    worst_s = max(r["seconds"] or 0 for r in rows)
    worst_mib = max(r["peak_mib"] or 0 for r in rows)
    refused = sum(r["outcome"].startswith("TorchFileError") for r in rows)
    summary = (f"{refused}/{len(rows)} classes refused with a TorchFileError; slowest refusal {worst_s:.3f} s, "
               f"largest peak-RSS growth {worst_mib:.1f} MiB (limits in the tests: 10 s, 1024 MiB); "
               f"marker file created: {executed}.")
    table = "\n".join(lines)
    print(table)
    print()
    print(summary)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "python": platform.python_version(),
            "machine": platform.machine(), "cpus": os.cpu_count(), "alarm_s": args.alarm,
            "baseline": args.baseline}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "bench_hostile_files.json").write_text(json.dumps({"meta": meta, "summary": summary, "rows": rows},
                                                                 indent=1) + "\n")
    (RESULTS / "bench_hostile_files.md").write_text(
        f"# Hostile files: time and memory of the refusal\n\n`python experiments/bench_hostile_files.py"
        f"{' --baseline ' + args.baseline if args.baseline else ''}` ({meta['date']}, Python {meta['python']}, "
        f"{meta['cpus']} CPUs, shared machine). Each class read in a fresh interpreter (address space capped at "
        f"4 GB, killed after {args.alarm} s); seconds = `torchfile.load`, peak MiB = growth of `ru_maxrss` "
        f"during it.\n\n{table}\n\n{summary}\n")


if __name__ == "__main__":
    main()
