"""``jaxedit batch JOB.json --out DIR``: the batch editing engine (:mod:`jaxedit.batch`)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from jaxedit import batch
from jaxedit.config import enable_compilation_cache
from jaxedit.errors import InputError, UsageError
from jaxedit.io import files
from jaxedit.io.progress import Progress


def run_batch(args) -> None:
    out = Path(args.out)
    job = batch.read_job(args.job)  # every field checked before anything is loaded or written
    if args.num_processes:
        return _spawn(args)
    if not 0 <= args.process_index < args.process_count:
        raise UsageError(f"--process-index {args.process_index}: must be in 0..{args.process_count - 1}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    record = batch.job_record(job, args.dtype)
    stored = out / "job.json"
    if stored.exists():
        try:
            old = json.loads(stored.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):  # not ours to read: another job
            old = None
        if not batch.record_matches(old, job, args.dtype):
            was = next((d for d in batch.DTYPES if batch.record_matches(old, job, d)), None)
            if was is not None:
                raise UsageError(f"--out {out}: holds this job computed with --dtype {was}, not {args.dtype} (the "
                                 f"dtype changes the images); rerun with --dtype {was} or use a new folder")
            raise UsageError(f"--out {out}: holds another job ({stored}); use a new folder")
    enable_compilation_cache()
    p = batch.plan(job, args.dtype)
    if not stored.exists():
        files.write_json(stored, record)
    V = len(job.variants)
    bar = Progress(total=p.num_items, unit="item", desc=f"batch (process {args.process_index}/{args.process_count})")
    counts = batch.run_job(p, out, process_index=args.process_index, process_count=args.process_count,
                           signals=args.signals, progress=lambda n, s: bar.update(n, shard=s))
    bar.close()
    print(f"batch: {counts['computed']} of this process's {counts['shards']} shards computed now "
          f"({counts['items']} items x {V} variants); {p.num_items} items in {p.num_shards} shards -> {out}")


def _spawn(args) -> None:
    """Start ``--num-processes`` local processes of this command (one per process index) and wait for them."""
    n = args.num_processes
    base = [sys.executable, "-m", "jaxedit.cli.main", "batch", str(args.job), "--out", str(args.out),
            "--process-count", str(n), "--dtype", args.dtype]
    procs = [subprocess.Popen([*base, "--process-index", str(i)]) for i in range(n)]
    codes = [q.wait() for q in procs]
    if any(codes):
        raise InputError(f"batch: processes exited with {codes}; rerun the same command to finish the job")
    print(f"batch: {n} processes finished -> {args.out}")
