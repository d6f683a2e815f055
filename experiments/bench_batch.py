#!/usr/bin/env python
"""Benchmark the batch engine (``jaxedit batch``) on the default model (shapes32-stylegan2) on CPU.

Not a test. Prints a markdown table and writes ``<out-dir>/<name>.md`` and ``<out-dir>/<name>.json``
(default ``experiments/results/bench_batch.{md,json}``).

The job: ``--seeds`` seeds (psi 0.7), one linear W edit (a random unit direction, layers 0-4, t = 2), shards of
``--shard-size``, compiled batches of ``--batch-size``, images and latents written. Every CLI run is a fresh
subprocess (``python -m jaxedit.cli.main batch ...``) sharing one fresh ``JAXEDIT_CACHE`` (the first run of a
program compiles cold, later ones hit the persistent cache: noted per row).

* (a) raw generator: ``jit(G.mapping + G.synthesis)`` on batches of ``--batch-size`` (a worker subprocess),
  images/s over all the seeds, median of ``--repeats`` passes, compile excluded; the same for the engine's own
  jitted program (mapping, edit, synthesis, uint8) to separate compute from the engine's host side; f32 and bf16.
* (b) the job end to end, 1 process: wall time, and the steady rate from the manifests' commit times
  (``(commits - 1) x shard_size / (last commit - first commit)``), as a fraction of (a); the fixed cost
  (startup, loading, compile, pipeline fill) = wall - items / steady rate. (b') latents only (no PNGs).
* (c) ``--num-processes 2`` (two processes joined by ``jax.distributed`` on loopback); (c0) two processes without a
  coordinator (``--process-count 2 --process-index i``, started together); (d) an 8-device simulated mesh
  (``XLA_FLAGS=--xla_force_host_platform_device_count=8``).
* (e) ``--dtype bfloat16``: speed and the PSNR of its PNGs against the float32 run's.
* (f) resume: SIGKILL right after the first shard's manifest appears, then the rerun until done (vs an
  uninterrupted warm run; files compared bitwise); and a rerun of a complete job (nothing to do).
* (g) image-folder inputs: the first ``--images`` PNGs of (b) as a folder, inverted by the encoder inside the job
  (shards of a quarter of ``--shard-size``), the same edit, PNGs + latents.

``others`` = CPU used by other processes during a run (fraction of the machine, from /proc/stat).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_generator import CpuMonitor, machine_info


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ============================================================== the raw generator (worker subprocess)


def _raw_generator(G, cdt, psi):
    """jit(G.mapping + G.synthesis), the synthesis in ``cdt`` (cast as the engine does)."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def raw(gp, z):
        ws = G.mapping(gp, z, psi=psi)
        sp = gp if cdt == jnp.float32 else jax.tree.map(
            lambda a: a.astype(cdt) if jnp.issubdtype(a.dtype, jnp.floating) else a, gp)
        return G.synthesis(sp, ws.astype(cdt), noise_mode="const")

    return raw


def worker_raw(spec: dict) -> dict:
    import jax
    import jax.numpy as jnp

    from jaxedit import batch

    job = batch.read_job(spec["job"])
    res = {}
    for dtype in spec["dtypes"]:
        p = batch.plan(job, dtype)
        G, gp, B = p.G, p.gparams, job.batch_size
        cdt = jnp.dtype(dtype)

        raw = _raw_generator(G, cdt, job.psi)
        prog = batch.make_program(p)
        zs = batch._z_of(p.seeds, G.cfg.z_dim)
        batches = [zs[i:i + B] for i in range(0, len(zs) - B + 1, B)]
        n = len(batches) * B
        fns = {"raw": lambda z, gp=gp, raw=raw: raw(gp, z), "program": lambda z, prog=prog: prog({"x": z})["img"]}
        for name, fn in fns.items():
            t = time.perf_counter()
            jax.block_until_ready(fn(batches[0]))
            first = time.perf_counter() - t
            times = []
            with CpuMonitor() as mon:
                for _ in range(spec["repeats"]):
                    t = time.perf_counter()
                    for z in batches:
                        out = fn(z)
                    jax.block_until_ready(out)
                    times.append(time.perf_counter() - t)
            med = statistics.median(times)
            res[f"{name}_{dtype}"] = dict(images=n, batch=B, first_call_s=first, times_s=times, median_s=med,
                                          images_per_s=n / med, others=mon.result["other_cpu_frac_during"])
            log(f"  {name} {dtype}: {n / med:.0f} img/s (first call {first:.2f} s, others "
                f"{mon.result['other_cpu_frac_during']:.0%})")
    return res


def run_raw(spec: dict, env: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_batch_") as d:
        sp, op = os.path.join(d, "spec.json"), os.path.join(d, "out.json")
        with open(sp, "w") as f:
            json.dump(spec, f)
        subprocess.run([sys.executable, os.path.abspath(__file__), "--_worker", "raw", "--_spec", sp, "--_out", op],
                       env=env, stdout=sys.stderr, check=True)
        with open(op) as f:
            return json.load(f)


# ============================================================== CLI runs


def commit_times(out: str, t0: float) -> list[float]:
    d = os.path.join(out, "manifest")
    if not os.path.isdir(d):
        return []
    return sorted(os.stat(os.path.join(d, f)).st_mtime - t0 for f in os.listdir(d) if f.endswith(".json"))


def cli(job: str, out: str, *extra: str, env: dict, items: int, shard: int, procs: int = 1) -> dict:
    cmd = [sys.executable, "-m", "jaxedit.cli.main", "batch", job, "--out", out, *extra]
    t0 = time.time()
    with CpuMonitor() as mon:
        p = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} exited with {p.returncode}:\n{p.stderr[-3000:]}")
    wall = mon.result["wall_s"]
    c = commit_times(out, t0)
    c = [x for x in c if x >= 0]  # this run's commits (a resumed folder holds older ones)
    # steady: from each process's first commit on (that one includes the process's compile)
    steady = (len(c) - procs) * shard / (c[-1] - c[procs - 1]) if len(c) > procs else None
    r = dict(cmd=cmd[3:], wall_s=wall, items=items, e2e_items_per_s=items / wall, commits_s=c,
             steady_items_per_s=steady, fixed_s=(wall - items / steady) if steady else None,
             others=mon.result["other_cpu_frac_during"], stdout=p.stdout.strip().splitlines()[-1:])
    log(f"  {' '.join(extra) or '(1 process)'}: wall {wall:.1f} s, {items / wall:.0f} items/s end to end"
        + (f", steady {steady:.0f} items/s, fixed {r['fixed_s']:.1f} s" if steady else "")
        + f" (others {r['others']:.0%})")
    return r


def tree_bytes(out: str) -> dict:
    res = {}
    for sub in ("images", "shards"):
        d = os.path.join(out, sub)
        if os.path.isdir(d):
            for f in os.listdir(d):
                with open(os.path.join(d, f), "rb") as fh:
                    res[f"{sub}/{f}"] = fh.read()
    return res


def psnr_dirs(a: str, b: str) -> dict:
    from PIL import Image

    names = sorted(os.listdir(os.path.join(a, "images")))
    per, sq, mx = [], 0.0, 0
    for n in names:
        x = np.asarray(Image.open(os.path.join(a, "images", n)), np.float64)
        y = np.asarray(Image.open(os.path.join(b, "images", n)), np.float64)
        m = np.mean((x - y) ** 2)
        sq += m
        mx = max(mx, int(np.abs(x - y).max()))
        per.append(np.inf if m == 0 else 10 * np.log10(255 ** 2 / m))
    mse = sq / len(names)
    return dict(images=len(names), psnr_db=float(10 * np.log10(255 ** 2 / mse)) if mse else float("inf"),
                psnr_min_image_db=float(min(per)), psnr_median_image_db=float(np.median(per)),
                max_abs_diff=mx, identical_images=int(sum(p == np.inf for p in per)))


def cli_pair(job: str, out: str, env: dict, items: int, shard: int) -> dict:
    """Two processes without a coordinator (``--process-count 2 --process-index i``), started together."""
    base = [sys.executable, "-m", "jaxedit.cli.main", "batch", job, "--out", out, "--process-count", "2"]
    t0 = time.time()
    with CpuMonitor() as mon:
        procs = [subprocess.Popen([*base, "--process-index", str(i)], env=env, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.PIPE, text=True) for i in range(2)]
        errs = [q.communicate()[1] for q in procs]
    if any(q.returncode for q in procs):
        raise SystemExit(f"{' '.join(base)} exited with {[q.returncode for q in procs]}:\n{errs[0][-2000:]}")
    wall = mon.result["wall_s"]
    c = [x for x in commit_times(out, t0) if x >= 0]
    steady = (len(c) - 2) * shard / (c[-1] - c[1]) if len(c) > 2 else None
    log(f"  2 processes, no coordinator: wall {wall:.1f} s, {items / wall:.0f} items/s end to end"
        + (f", steady {steady:.0f} items/s" if steady else ""))
    return dict(cmd=base[3:], wall_s=wall, items=items, e2e_items_per_s=items / wall, commits_s=c,
                steady_items_per_s=steady, fixed_s=(wall - items / steady) if steady else None,
                others=mon.result["other_cpu_frac_during"])


def resume(job: str, out: str, env: dict, items: int, shard: int) -> dict:
    cmd = [sys.executable, "-m", "jaxedit.cli.main", "batch", job, "--out", out]
    t0 = time.time()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = os.path.join(out, "manifest", "shard-000000.json")
    while proc.poll() is None and not os.path.exists(first):
        time.sleep(0.01)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed_at = time.time() - t0
    done = len(commit_times(out, t0))
    log(f"  killed at {killed_at:.1f} s with {done} shard(s) committed")
    r = cli(job, out, env=env, items=items - done * shard, shard=shard)
    return dict(killed_at_s=killed_at, committed_at_kill=done, rerun=r)


# ============================================================== report


def _f(x, spec=".1f"):
    return "—" if x is None else format(x, spec)


def markdown(d: dict) -> str:
    m, s, raw, runs = d["machine"], d["settings"], d["raw"], d["runs"]
    f32 = raw["raw_float32"]["images_per_s"]
    L = ["# bench_batch\n",
         (f"{m['date']} · {m.get('cpu_model')}, {m['cores']} cores · jax {m.get('jax')} · jaxedit "
          f"{m.get('jaxedit_commit')} · XLA_FLAGS={m.get('XLA_FLAGS')}\n"),
         (f"Job: {s['seeds']} seeds of `{s['generator']}` (psi 0.7), one linear W edit (t = 2, layers 0-4), "
         f"shard_size {s['shard_size']}, batch_size {s['batch_size']}, images (PNG) + latents unless noted. Every "
         f"run is a fresh `jaxedit batch` process. `steady` = items/s between the first and the last shard commit "
         f"(per process: its first commit includes its compile); `fixed` = wall - items / steady (import, model "
         f"load, compile, pipeline fill); `% raw` = steady / (a) float32. `others` = CPU used by other processes "
         f"during the run. Compile: cold = empty persistent cache, warm = the same program compiled by an earlier "
         f"run.\n"),
         "| run | items | wall s | items/s end to end | items/s steady | % raw | fixed s | compile | others |",
         "|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for k, prog_name in (("raw_float32", f"(a) raw generator f32: jit(mapping + synthesis), B = {s['batch_size']}"),
                         ("program_float32", "(a2) the engine's program f32 (+ edit, uint8)"),
                         ("raw_bfloat16", "(a) raw generator bf16 (synthesis in bf16)"),
                         ("program_bfloat16", "(a2) the engine's program bf16")):
        if k in raw:
            r = raw[k]
            L.append(f"| {prog_name} | {r['images']} | — | — | {r['images_per_s']:.0f} | "
                     f"{100 * r['images_per_s'] / f32:.0f} | first call {r['first_call_s']:.2f} | — | "
                     f"{r['others']:.0%} |")
    for key, label, comp in RUN_ROWS:
        if key not in runs:
            continue
        r = runs[key]
        st = r["steady_items_per_s"]
        L.append(f"| {label} | {r['items']} | {r['wall_s']:.1f} | {r['e2e_items_per_s']:.0f} | "
                 f"{_f(st, '.0f')} | {_f(None if st is None else 100 * st / f32, '.0f')} | "
                 f"{_f(r['fixed_s'])} | {comp} | {r['others']:.0%} |")
    L.append("")
    if runs.get("b_cold", {}).get("fixed_s") and runs.get("b", {}).get("fixed_s"):
        L.append(f"Compile of the job's program (cold - warm fixed cost of (b)): "
                 f"{runs['b_cold']['fixed_s'] - runs['b']['fixed_s']:.1f} s; the raw generator's first call (compile "
                 f"+ one batch) {raw['raw_float32']['first_call_s']:.1f} s. The warm fixed cost is process start, "
                 f"`import jax`, model load, cache lookup and the pipeline's fill (the first shard's writes overlap "
                 f"the second's compute).\n")
    if "psnr" in d:
        p = d["psnr"]
        b = raw.get("raw_bfloat16", {}).get("images_per_s")
        L.append(f"bf16 vs float32 ({p['images']} PNGs of the same job): PSNR {p['psnr_db']:.1f} dB over all pixels "
                 f"(per image: median {p['psnr_median_image_db']:.1f}, worst {p['psnr_min_image_db']:.1f} dB), "
                 f"largest pixel difference {p['max_abs_diff']}/255, {p['identical_images']} images identical; "
                 f"raw generator bf16 {b:.0f} vs f32 {f32:.0f} img/s ({b / f32:.2f}x); the job "
                 f"{runs['bf16']['steady_items_per_s']:.0f} vs {runs['b']['steady_items_per_s']:.0f} items/s "
                 f"steady. Latents are float32 in both (mapping and edits are not cast).\n")
    if "resume" in d:
        r, u, n = d["resume"], runs["b"], runs.get("noop")
        L.append(f"Resume: SIGKILL at {r['killed_at_s']:.1f} s (right after the first commit; "
                 f"{r['committed_at_kill']} shard(s) committed), the rerun took {r['rerun']['wall_s']:.1f} s for the "
                 f"remaining {r['rerun']['items']} items vs {u['wall_s']:.1f} s for an uninterrupted warm run "
                 f"(killed + rerun = {r['killed_at_s'] + r['rerun']['wall_s']:.1f} s); final files bitwise equal to "
                 f"the uninterrupted run's: {'yes' if r['identical'] else 'NO'}."
                 + (f" A rerun of a complete job (nothing to do) took {n['wall_s']:.1f} s (process start, job check, "
                    f"model load)." if n else "") + "\n")
    return "\n".join(L) + "\n"


RUN_ROWS = [
    ("b_cold", "(b) job, 1 process, first run", "cold"),
    ("b", "(b) job, 1 process", "warm"),
    ("b_latents", "(b') job, latents only (no PNGs)", "cold"),
    ("c", "(c) job, --num-processes 2 (jax.distributed, loopback)", "warm"),
    ("c0", "(c0) job, 2 processes, no coordinator", "warm"),
    ("d", "(d) job, 8-device simulated mesh, 1 process", "cold"),
    ("bf16", "(e) job, --dtype bfloat16", "cold"),
    ("resume", "(f) rerun after SIGKILL (remaining shards)", "warm"),
    ("noop", "(f) rerun of a complete job", "—"),
    ("images", "(g) image folder, encoder inversion + the edit", "cold"),
]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, default=8192)
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3, help="timed passes of the raw generator")
    ap.add_argument("--images", type=int, default=2048, help="(g): input images (from (b)'s PNGs)")
    ap.add_argument("--quick", action="store_true", help="a tiny job (512 seeds, shards of 128, batches of 64)")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="bench_batch", help="output file stem")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_spec", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args._worker:
        with open(args._spec) as f:
            res = {"raw": worker_raw}[args._worker](json.load(f))
        with open(args._out, "w") as f:
            json.dump(res, f)
        return 0
    if args.quick:
        args.seeds, args.shard_size, args.batch_size, args.repeats, args.images = 512, 128, 64, 2, 256

    t_start = time.time()
    work = tempfile.mkdtemp(prefix="bench_batch_")
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "JAXEDIT_CACHE": os.path.join(work, "xla-cache")}
    env.pop("XLA_FLAGS", None)
    d = np.random.RandomState(0).randn(1, 64).astype(np.float32)
    np.save(os.path.join(work, "dir.npy"), d / np.linalg.norm(d))
    job = {"generator": None, "inputs": {"seeds": f"0-{args.seeds - 1}", "psi": 0.7},
           "edits": [{"method": "linear", "directions": "dir.npy", "k": 0, "t": 2.0, "space": "w", "layers": [0, 4]}],
           "outputs": {"images": True, "latents": True}, "shard_size": args.shard_size, "batch_size": args.batch_size}
    jobs = {}
    for name, outputs in (("job", {"images": True, "latents": True}), ("latents", {"images": False, "latents": True})):
        jobs[name] = os.path.join(work, f"{name}.json")
        with open(jobs[name], "w") as f:
            json.dump({**job, "outputs": outputs}, f)
    data = dict(machine=machine_info(), settings=dict(argv=sys.argv[1:], seeds=args.seeds, shard_size=args.shard_size,
                                                      batch_size=args.batch_size, repeats=args.repeats,
                                                      generator="shapes32-stylegan2", job=job), runs={})
    log(f"machine: {data['machine'].get('cpu_model')} x{data['machine'].get('cores')}; work dir {work}")
    kw = dict(env=env, items=args.seeds, shard=args.shard_size)
    out = lambda n: os.path.join(work, n)

    log("(a) raw generator ...")
    data["raw"] = run_raw(dict(job=jobs["job"], dtypes=["float32", "bfloat16"], repeats=args.repeats), env)
    log("(b) job, 1 process ...")
    runs = data["runs"]
    runs["b_cold"] = cli(jobs["job"], out("b_cold"), **kw)
    runs["b"] = cli(jobs["job"], out("b"), **kw)
    runs["b_latents"] = cli(jobs["latents"], out("b_latents"), **kw)
    log("(c) 2 processes ...")
    runs["c"] = cli(jobs["job"], out("c"), "--num-processes", "2", **kw, procs=2)
    runs["c0"] = cli_pair(jobs["job"], out("c0"), **kw)
    log("(d) 8-device mesh ...")
    runs["d"] = cli(jobs["job"], out("d"), **{**kw, "env": {**env, "XLA_FLAGS":
                                                              "--xla_force_host_platform_device_count=8"}})
    log("(e) bf16 ...")
    runs["bf16"] = cli(jobs["job"], out("bf16"), "--dtype", "bfloat16", **kw)
    data["psnr"] = psnr_dirs(out("bf16"), out("b"))
    log(f"  PSNR {data['psnr']['psnr_db']:.1f} dB")
    ref = tree_bytes(out("b"))
    data["identical"] = {k: tree_bytes(out(k)) == ref for k in ("b_cold", "c", "c0")}
    data["mesh_vs_b"] = psnr_dirs(out("d"), out("b"))  # XLA may round differently per device batch shape
    log(f"  identical to (b): {data['identical']}")
    log("(f) resume ...")
    data["resume"] = resume(jobs["job"], out("f"), **kw)
    data["resume"]["identical"] = tree_bytes(out("f")) == ref
    runs["resume"] = data["resume"]["rerun"]
    runs["noop"] = cli(jobs["job"], out("b"), **{**kw, "items": 0})
    log("(g) image folder ...")
    n_img = min(args.images, args.seeds)
    os.makedirs(out("photos"))
    for i in range(n_img):
        shutil.copyfile(os.path.join(out("b"), "images", f"{i:08d}.png"), os.path.join(out("photos"), f"{i:08d}.png"))
    jobs["images"] = os.path.join(work, "images.json")
    with open(jobs["images"], "w") as f:
        json.dump({**job, "inputs": {"images": "photos"}, "shard_size": args.shard_size // 4}, f)
    runs["images"] = cli(jobs["images"], out("g"), env=env, items=n_img, shard=args.shard_size // 4)
    data["bench_wall_s"] = time.time() - t_start

    md = markdown(data)
    mv = data["mesh_vs_b"]
    md += (f"Files (PNGs and latents) bitwise equal to (b)'s: first run {data['identical']['b_cold']}, 2 processes "
           f"through jax.distributed {data['identical']['c']}, 2 processes without a coordinator "
           f"{data['identical']['c0']}. 8-device mesh: {mv['identical_images']} of {mv['images']} PNGs identical, "
           f"largest pixel difference {mv['max_abs_diff']}/255 (its per-device batch is 1/8 of the batch: XLA's CPU "
           f"kernels may round differently per shape). Benchmark wall {data['bench_wall_s']:.0f} s.\n")
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, args.name + ".md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out_dir, args.name + ".json"), "w") as f:
        json.dump(data, f, indent=1)
    print(md)
    log(f"wrote {os.path.join(args.out_dir, args.name)}.{{md,json}}")
    subprocess.run(["rm", "-rf", work], check=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
