"""``jaxedit batch JOB.json --out DIR``: the batch editing engine (:mod:`jaxedit.batch`).

Processes and hosts: ``--process-count N --process-index I`` on each (shard ``s`` belongs to process ``s % N``);
with ``--coordinator HOST:PORT`` (or ``JAX_COORDINATOR_ADDRESS``, which ``jax.distributed.initialize`` reads too)
they join one ``jax.distributed`` system, each computing on its local devices; at the end every process meets the
others in ``jax.distributed.shutdown`` (a process stopped early by an error or SIGINT reaches it on exit), then
process 0 prints how many shards are committed. ``--num-processes N`` starts N local processes joined through a
free loopback port. A process that dies (SIGKILL) leaves the others to JAX's heartbeat timeout (100 s; an
unreachable coordinator aborts a process after 300 s): committed shards stay, and rerunning the same command on
every host finishes the job. Ctrl-C on ``--num-processes`` reaches every process (one process group).
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import jax

from jaxedit import batch
from jaxedit.config import enable_compilation_cache
from jaxedit.errors import InputError, UsageError
from jaxedit.io import files
from jaxedit.io.progress import Progress

ADDRESS = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+):(\d{1,5})")  # HOST:PORT or [IPv6]:PORT


def _coordinator(args) -> str | None:
    """``--coordinator``, else ``$JAX_COORDINATOR_ADDRESS`` (as jax.distributed reads it), checked as HOST:PORT."""
    addr = args.coordinator or os.environ.get("JAX_COORDINATOR_ADDRESS") or None
    m = ADDRESS.fullmatch(addr) if addr else None
    if addr and not (m and 0 < int(m[2]) < 65536):
        raise UsageError(f"--coordinator {addr!r}: expected HOST:PORT (e.g. 10.0.0.1:1234)")
    return addr


def run_batch(args) -> None:
    out = Path(args.out)
    job = batch.read_job(args.job)  # every field checked before anything is loaded or written
    coordinator = _coordinator(args)
    if args.num_processes:
        return _spawn(args, coordinator)
    if not 0 <= args.process_index < args.process_count:
        raise UsageError(f"--process-index {args.process_index}: must be in 0..{args.process_count - 1}")
    if out.exists() and not out.is_dir():
        raise UsageError(f"--out {out}: exists and is not a directory")
    record = batch.job_record(job, args.dtype)
    stored = out / "job.json"
    if stored.exists():
        try:
            old = files.read_json(stored)
        except InputError:  # not ours to read: another job
            old = None
        if not batch.record_matches(old, job, args.dtype):
            was = next((d for d in batch.DTYPES if batch.record_matches(old, job, d)), None)
            if was is not None:
                raise UsageError(f"--out {out}: holds this job computed with --dtype {was}, not {args.dtype} (the "
                                 f"dtype changes the images); rerun with --dtype {was} or use a new folder")
            raise UsageError(f"--out {out}: holds another job ({stored}); use a new folder")
    if coordinator:  # before any JAX computation; an unreachable coordinator aborts the process (JAX's timeout)
        jax.distributed.initialize(coordinator, args.process_count, args.process_index)
    enable_compilation_cache()
    p = batch.plan(job, args.dtype)
    if not stored.exists():
        files.write_json(stored, record, note=False)  # the folder's owner record: job.json identifies the job
    V = len(job.variants)
    bar = Progress(total=p.num_items, unit="item", desc=f"batch (process {args.process_index}/{args.process_count})")
    counts = batch.run_job(p, out, process_index=args.process_index, process_count=args.process_count,
                           signals=args.signals, progress=lambda n, s: bar.update(n, shard=s))
    bar.close()
    print(f"batch: {counts['computed']} of this process's {counts['shards']} shards computed now "
          f"({counts['items']} items x {V} variants); {p.num_items} items in {p.num_shards} shards -> {out}")
    if coordinator:
        # every process meets here (one that stopped early meets it on exit, through JAX's atexit shutdown): no
        # collective that a stopped process would leave waiting
        jax.distributed.shutdown()
        if args.process_index == 0:
            committed = len(list((out / "manifest").glob("shard-*.json")))
            print(f"batch: {args.process_count} processes done; {committed} of {p.num_shards} shards committed "
                  f"in {out}" + ("" if committed == p.num_shards else " (rerun the same command to finish the job)"))


def _free_port() -> int:
    """A TCP port free on loopback now (the OS's choice; the coordinator binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(args, coordinator: str | None) -> None:
    """Start ``--num-processes`` local processes of this command (one per process index), joined through
    ``jax.distributed`` on ``coordinator`` (default: a free loopback port), and wait for them."""
    n = args.num_processes
    coordinator = coordinator or f"127.0.0.1:{_free_port()}"
    base = [sys.executable, "-m", "jaxedit.cli.main", "batch", str(args.job), "--out", str(args.out),
            "--process-count", str(n), "--dtype", args.dtype, "--coordinator", coordinator]
    procs = [subprocess.Popen([*base, "--process-index", str(i)]) for i in range(n)]
    codes = [q.wait() for q in procs]
    args.signals.check()  # Ctrl-C reached the children too: they stopped after their shard; exit 130
    if any(codes):
        raise InputError(f"batch: processes exited with {codes}; rerun the same command to finish the job")
    print(f"batch: {n} processes finished -> {args.out}")
