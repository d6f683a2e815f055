#!/usr/bin/env python
"""Benchmark the jaxedit StyleGAN2 generator (mapping + synthesis, float32, const noise) on CPU.

Not a test. Prints a markdown table and writes ``<out-dir>/<name>.md`` and ``<out-dir>/<name>.json``
(default ``experiments/results/bench_generator.{md,json}``).

Cases (random weights, skip architecture, no conv clamp, ``jax.jit(G)`` on ``(params, z)``):

* ``small32``  : 32 px, channel_base 4096, channel_max 128, batch 64
* ``paper256`` : 256 px, channel_base 16384, channel_max 512, batch 1, 4, 8
* ``ffhq1024`` : config-f 1024 px, channel_base 32768, channel_max 512, batch 1, 4

For each: median of N timed runs after warm-up, ms/batch, ms/image, images/s, analytic GFLOP
per image (2 x conv MACs of every conv incl. ToRGB and a resnet skip, the up-sampling 3x3 conv
counted at its input resolution as the reference's transposed conv does, plus the affine and
mapping matmuls), achieved GFLOP/s and the fraction of peaks measured in the same run (XLA 3x3
conv and 2048^3 matmul; with the reference also oneDNN 3x3 conv and sgemm through torch).
``other_cpu_frac_during`` = (machine busy CPU time from /proc/stat - own CPU time) / (wall x
cores) across each timed case; a case is retried once when others used more than
``--max-other-cpu`` (default 5 %). Compile time is measured cold (fresh, empty
``jax_compilation_cache_dir``) and warm (same dir) in two subprocesses per model config; peak
memory of the 1024 batch-4 forward in a subprocess.

Reference side by side (never committed; only its path is passed)::

    python experiments/bench_generator.py --reference /path/to/stylegan2-ada-pytorch \
        --torch-python /path/to/venv-with-torch/bin/python

times NVIDIA's ``training.networks.Generator`` with the same configs (random init, eval,
``no_grad``, 2 threads, ``force_fp32=True``, ``noise_mode='const'``, fused and non-fused
modconv) in a subprocess, with glibc told to keep freed memory (``--ref-malloc tuned``, as in
shared/notes/stylegan2-reference.md section 5).

Only the standard library is imported at module level: the same file runs as the torch
worker under the reference's python (``--_worker torch``).
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
TUNED_MALLOC = {"MALLOC_MMAP_THRESHOLD_": "17179869184", "MALLOC_TRIM_THRESHOLD_": "17179869184"}

# Model configs shared by both implementations (jaxedit StyleGAN2Config field names).
CASES = {
    "small32": dict(model=dict(z_dim=512, w_dim=512, img_resolution=32, mapping_layers=8,
                               channel_base=4096, channel_max=128), batches=(64,), repeats=5),
    "paper256": dict(model=dict(z_dim=512, w_dim=512, img_resolution=256, mapping_layers=8,
                                channel_base=16384, channel_max=512), batches=(1, 4, 8), repeats=5),
    "ffhq1024": dict(model=dict(z_dim=512, w_dim=512, img_resolution=1024, mapping_layers=8,
                                channel_base=32768, channel_max=512), batches=(1, 4), repeats=3),
}
QUICK_REPEATS = {"small32": 2, "paper256": 2, "ffhq1024": 1}
# Peak shapes: (B, H, W, Cin, Cout) of a stride-1 'same' 3x3 conv.
XLA_CONV_SHAPES = [(1, 64, 64, 512, 512), (8, 128, 128, 128, 128), (4, 128, 128, 256, 256), (1, 64, 64, 256, 256)]
TORCH_CONV_SHAPES = [(1, 64, 64, 256, 256), (1, 64, 64, 512, 512)]  # first = the notes' oneDNN peak shape
MATMUL_N = 2048


def log(*a):
    print(*a, file=sys.stderr, flush=True)


# ============================================================== FLOPs (analytic)


def generator_flops(model: dict, architecture: str = "skip", img_channels: int = 3) -> dict:
    """Analytic FLOPs per image (2 x MACs), reference op counts. Returns a breakdown in FLOP."""
    R = model["img_resolution"]
    w_dim, z_dim, L = model["w_dim"], model["z_dim"], model["mapping_layers"]
    res = [2 ** i for i in range(2, int(math.log2(R)) + 1)]
    if model.get("channels"):  # an explicit table (4 px first), as in StyleGAN2Config.channels
        ch = dict(zip(res, model["channels"]))
    else:
        ch = {r: min(model["channel_base"] // r, model["channel_max"]) for r in res}
    conv3 = up_conv3 = torgb = skip = affine = 0
    for r in res:
        c = ch[r]
        if r > 4:
            ci = ch[r // 2]
            up_conv3 += 2 * (r // 2) ** 2 * ci * c * 9  # transposed conv at its input resolution
            affine += 2 * w_dim * ci
            if architecture == "resnet":
                skip += 2 * (r // 2) ** 2 * ci * c  # 1x1 conv before the FIR up-sampling
        conv3 += 2 * r * r * c * c * 9
        affine += 2 * w_dim * c
        if architecture == "skip" or r == R:
            torgb += 2 * r * r * c * img_channels
            affine += 2 * w_dim * c
    mapping = 2 * (z_dim * w_dim + (L - 1) * w_dim * w_dim)
    total = conv3 + up_conv3 + torgb + skip + affine + mapping
    return dict(conv3x3=conv3, up_conv3x3=up_conv3, torgb=torgb, skip=skip, affine=affine,
                mapping=mapping, total=total)


# ============================================================== timing helpers (stdlib only)


def _proc_stat():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    v += [0] * (10 - len(v))
    user, nice, system, idle, iowait, irq, softirq, steal = v[:8]
    return dict(busy=user + nice + system + irq + softirq, steal=steal)


def _own_cpu():
    """CPU time of this process and of its reaped children (the workers are waited for)."""
    return sum(ru.ru_utime + ru.ru_stime for ru in (resource.getrusage(resource.RUSAGE_SELF),
                                                      resource.getrusage(resource.RUSAGE_CHILDREN)))


class CpuMonitor:
    """Machine busy CPU time minus own CPU time across a block, as a fraction of wall x cores."""

    def __enter__(self):
        self.tick = os.sysconf("SC_CLK_TCK")
        self.s0, self.c0, self.t0 = _proc_stat(), _own_cpu(), time.perf_counter()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t0
        s1, c1 = _proc_stat(), _own_cpu()
        ncpu = os.cpu_count() or 1
        busy = (s1["busy"] - self.s0["busy"]) / self.tick
        own = c1 - self.c0
        self.result = dict(
            wall_s=wall, own_cpu_s=own, machine_busy_s=busy,
            own_cpu_frac=own / (wall * ncpu),
            other_cpu_frac_during=max(0.0, busy - own) / (wall * ncpu),
            steal_frac_during=(s1["steal"] - self.s0["steal"]) / self.tick / (wall * ncpu),
        )
        return False


def time_runs(fn, repeats: int, warmup: int, max_other: float, retry: bool) -> dict:
    """``fn()`` must block until its result is ready. First call timed separately, then warm-up,
    then ``repeats`` timed calls under a CpuMonitor; retried once if others were busy."""
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    for _ in range(warmup):
        fn()
    attempts = []
    for attempt in range(2 if retry else 1):
        times = []
        with CpuMonitor() as mon:
            for _ in range(repeats):
                t = time.perf_counter()
                fn()
                times.append(time.perf_counter() - t)
        attempts.append(dict(times_s=times, median_s=statistics.median(times), **mon.result))
        if mon.result["other_cpu_frac_during"] <= max_other:
            break
        log(f"    others used {mon.result['other_cpu_frac_during']:.0%} CPU"
            + (" - retrying once" if attempt == 0 and retry else ""))
    best = min(attempts, key=lambda a: a["other_cpu_frac_during"])
    return dict(first_call_s=first, warmup=warmup, repeats=repeats, retried=len(attempts) > 1,
                attempts=attempts, **{k: best[k] for k in
                                      ("times_s", "median_s", "other_cpu_frac_during", "steal_frac_during",
                                       "own_cpu_frac")})


def _rss_mb():
    with open("/proc/self/status") as f:
        d = dict(line.split(":", 1) for line in f)
    return dict(rss=int(d["VmRSS"].split()[0]) / 1024, hwm=int(d["VmHWM"].split()[0]) / 1024)


def _maxrss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def malloc_mode(env=None) -> str:
    env = os.environ if env is None else env
    vals = [env.get(k) for k in TUNED_MALLOC]
    if all(v is None for v in vals):
        return "default"
    if vals == list(TUNED_MALLOC.values()):
        return "tuned"
    return "custom(" + ",".join(f"{k}={env.get(k)}" for k in TUNED_MALLOC) + ")"


# ============================================================== jax side


def _jax_setup():
    import jax
    import jax.numpy as jnp
    from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config
    return jax, jnp, StyleGAN2, StyleGAN2Config


def xla_peaks(repeats: int, max_other: float, retry: bool) -> dict:
    jax, jnp, *_ = _jax_setup()
    out = dict(xla_conv=[], xla_matmul=None)
    key = jax.random.key(0)
    conv = jax.jit(lambda x, w: jax.lax.conv_general_dilated(
        x, w, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))
    for (B, H, W, ci, co) in XLA_CONV_SHAPES:
        x = jax.random.normal(key, (B, H, W, ci), jnp.float32)
        w = jax.random.normal(key, (3, 3, ci, co), jnp.float32) * 0.05
        flop = 2 * B * H * W * ci * co * 9
        r = time_runs(lambda: conv(x, w).block_until_ready(), repeats, 1, max_other, retry)
        g = flop / r["median_s"] / 1e9
        log(f"  XLA conv B={B} {H}x{W} {ci}->{co}: {g:.0f} GFLOP/s")
        out["xla_conv"].append(dict(shape=[B, H, W, ci, co], gflop=flop / 1e9, gflops=g,
                                    other_cpu_frac_during=r["other_cpu_frac_during"], median_s=r["median_s"]))
        del x, w
    a = jax.random.normal(key, (MATMUL_N, MATMUL_N), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (MATMUL_N, MATMUL_N), jnp.float32)
    mm = jax.jit(jnp.matmul)
    r = time_runs(lambda: mm(a, b).block_until_ready(), repeats, 1, max_other, retry)
    g = 2 * MATMUL_N ** 3 / r["median_s"] / 1e9
    log(f"  XLA matmul {MATMUL_N}^3: {g:.0f} GFLOP/s")
    out["xla_matmul"] = dict(n=MATMUL_N, gflops=g, other_cpu_frac_during=r["other_cpu_frac_during"],
                             median_s=r["median_s"])
    out["xla_conv_peak"] = max(c["gflops"] for c in out["xla_conv"])
    out["xla_conv_peak_shape"] = max(out["xla_conv"], key=lambda c: c["gflops"])["shape"]
    out["xla_matmul_peak"] = g
    return out


def bench_jax(cases, max_other, retry, warmup) -> list[dict]:
    jax, jnp, StyleGAN2, StyleGAN2Config = _jax_setup()
    rows = []
    for name, batches, repeats in cases:
        model = CASES[name]["model"]
        G = StyleGAN2(StyleGAN2Config(**model))
        params = jax.block_until_ready(G.init(jax.random.key(0)))
        fwd = jax.jit(G)
        for B in batches:
            z = jax.random.normal(jax.random.key(1), (B, model["z_dim"]), jnp.float32)
            log(f"  jaxedit {name} B={B} ...")
            r = time_runs(lambda: fwd(params, z).block_until_ready(), repeats, warmup, max_other, retry)
            rows.append(dict(case=name, batch=B, impl="jaxedit", **r))
            log(f"    {r['median_s'] * 1e3:.1f} ms/batch (others {r['other_cpu_frac_during']:.0%})")
        del params, fwd, G
    return rows


def worker_jax_compile(spec: dict) -> dict:
    t_start = time.perf_counter()
    jax, jnp, StyleGAN2, StyleGAN2Config = _jax_setup()
    jax.config.update("jax_compilation_cache_dir", spec["cache_dir"])
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
    t_import = time.perf_counter()
    G = StyleGAN2(StyleGAN2Config(**spec["model"]))
    params = jax.block_until_ready(G.init(jax.random.key(0)))
    z = jnp.zeros((spec["batch"], spec["model"]["z_dim"]), jnp.float32)
    t_init = time.perf_counter()
    lowered = jax.jit(G).lower(params, z)
    t_lower = time.perf_counter()
    compiled = lowered.compile()
    t_compile = time.perf_counter()
    compiled(params, z).block_until_ready()
    t_run = time.perf_counter()
    return dict(import_s=t_import - t_start, init_params_s=t_init - t_import, trace_lower_s=t_lower - t_init,
                compile_s=t_compile - t_lower, lower_plus_compile_s=t_compile - t_init,
                first_run_s=t_run - t_compile, in_process_total_s=t_run - t_start)


def worker_jax_memory(spec: dict) -> dict:
    jax, jnp, StyleGAN2, StyleGAN2Config = _jax_setup()
    G = StyleGAN2(StyleGAN2Config(**spec["model"]))
    params = jax.block_until_ready(G.init(jax.random.key(0)))
    z = jax.random.normal(jax.random.key(1), (spec["batch"], spec["model"]["z_dim"]), jnp.float32)
    jax.block_until_ready(z)
    rss_init = _rss_mb()["rss"]
    compiled = jax.jit(G).lower(params, z).compile()
    hwm_compile = _rss_mb()["hwm"]
    ma = {}
    try:
        m = compiled.memory_analysis()
        ma = {k: getattr(m, k) / 2 ** 20 for k in ("temp_size_in_bytes", "argument_size_in_bytes",
                                                   "output_size_in_bytes", "generated_code_size_in_bytes")
              if hasattr(m, k)}
    except Exception as e:  # noqa: BLE001 - informational only
        ma = {"error": repr(e)}
    reset = _reset_hwm()  # VmHWM := current RSS, so the forward's own peak is visible
    for _ in range(spec.get("runs", 2)):
        compiled(params, z).block_until_ready()
    hwm_fwd = _rss_mb()["hwm"]
    return _memory_result(rss_init, hwm_compile if reset else None, hwm_fwd, reset,
                          xla_memory_analysis_mb=ma)


def _memory_result(rss_init, hwm_before_reset, hwm_end, reset, **extra) -> dict:
    """Peak RSS of this process. VmHWM is per address space (fresh after exec); ``ru_maxrss`` also
    counts the parent's RSS at spawn time (the kernel carries the pre-exec peak over), so it is
    only meaningful when the parent was smaller; both are reported."""
    peak = max(hwm_end, hwm_before_reset or 0.0)
    maxrss = _maxrss_mb()
    return dict(rss_after_init_mb=rss_init, peak_rss_total_mb=peak, peak_minus_init_mb=peak - rss_init,
                compile_peak_minus_init_mb=None if hwm_before_reset is None else hwm_before_reset - rss_init,
                forward_peak_minus_init_mb=(hwm_end - rss_init) if reset else None,
                ru_maxrss_mb=maxrss, ru_maxrss_minus_init_mb=maxrss - rss_init, hwm_reset_ok=reset,
                malloc=malloc_mode(), **extra)


# ============================================================== torch reference side (runs under --torch-python)


def worker_torch(spec: dict) -> dict:
    import warnings
    warnings.filterwarnings("ignore")
    sys.path.insert(0, spec["reference"])
    import torch
    torch.set_num_threads(spec["threads"])
    import training.networks as networks  # noqa: E402 - from the reference checkout
    max_other, retry, warmup = spec["max_other"], spec["retry"], spec["warmup"]
    out = dict(torch_version=torch.__version__, threads=torch.get_num_threads(), malloc=malloc_mode(),
               onednn=bool(torch.backends.mkldnn.is_available()), peaks={}, rows=[])
    torch.manual_seed(0)
    with torch.no_grad():
        if spec["peaks"]:
            convs = []
            for (B, H, W, ci, co) in TORCH_CONV_SHAPES:
                x = torch.randn(B, ci, H, W)
                w = torch.randn(co, ci, 3, 3) * 0.05
                flop = 2 * B * H * W * ci * co * 9
                r = time_runs(lambda: torch.nn.functional.conv2d(x, w, padding=1), spec["peak_repeats"], 1,
                              max_other, retry)
                g = flop / r["median_s"] / 1e9
                log(f"  oneDNN conv B={B} {H}x{W} {ci}->{co}: {g:.0f} GFLOP/s")
                convs.append(dict(shape=[B, H, W, ci, co], gflop=flop / 1e9, gflops=g, median_s=r["median_s"],
                                  other_cpu_frac_during=r["other_cpu_frac_during"]))
            a, b = torch.randn(MATMUL_N, MATMUL_N), torch.randn(MATMUL_N, MATMUL_N)
            r = time_runs(lambda: torch.mm(a, b), spec["peak_repeats"], 1, max_other, retry)
            g = 2 * MATMUL_N ** 3 / r["median_s"] / 1e9
            log(f"  torch sgemm {MATMUL_N}^3: {g:.0f} GFLOP/s")
            out["peaks"] = dict(onednn_conv=convs, onednn_conv_peak=max(c["gflops"] for c in convs),
                                onednn_conv_peak_shape=max(convs, key=lambda c: c["gflops"])["shape"],
                                onednn_conv_notes_shape=convs[0]["gflops"],
                                torch_sgemm=dict(n=MATMUL_N, gflops=g, median_s=r["median_s"],
                                                 other_cpu_frac_during=r["other_cpu_frac_during"]),
                                torch_sgemm_peak=g)
        for name, batches, repeats in spec["cases"]:
            m = CASES[name]["model"]
            G = networks.Generator(
                z_dim=m["z_dim"], c_dim=0, w_dim=m["w_dim"], img_resolution=m["img_resolution"], img_channels=3,
                mapping_kwargs=dict(num_layers=m["mapping_layers"]),
                synthesis_kwargs=dict(channel_base=m["channel_base"], channel_max=m["channel_max"],
                                      num_fp16_res=0, conv_clamp=None)).eval().requires_grad_(False)
            for B in batches:
                z = torch.randn(B, m["z_dim"])
                for mode in spec["modes"]:
                    kw = dict(noise_mode="const", force_fp32=True)
                    if mode == "nonfused":
                        kw["fused_modconv"] = False
                    log(f"  reference {name} B={B} {mode} ...")
                    r = time_runs(lambda: G(z, None, **kw), repeats, warmup, max_other, retry)
                    out["rows"].append(dict(case=name, batch=B, impl=f"ref-{mode}", **r))
                    log(f"    {r['median_s'] * 1e3:.1f} ms/batch (others {r['other_cpu_frac_during']:.0%})")
            del G
    return out


def worker_torch_memory(spec: dict) -> dict:
    import warnings
    warnings.filterwarnings("ignore")
    sys.path.insert(0, spec["reference"])
    import torch
    torch.set_num_threads(spec["threads"])
    import training.networks as networks
    m = spec["model"]
    torch.manual_seed(0)
    with torch.no_grad():
        G = networks.Generator(
            z_dim=m["z_dim"], c_dim=0, w_dim=m["w_dim"], img_resolution=m["img_resolution"], img_channels=3,
            mapping_kwargs=dict(num_layers=m["mapping_layers"]),
            synthesis_kwargs=dict(channel_base=m["channel_base"], channel_max=m["channel_max"],
                                  num_fp16_res=0, conv_clamp=None)).eval().requires_grad_(False)
        z = torch.randn(spec["batch"], m["z_dim"])
        rss_init = _rss_mb()["rss"]
        for _ in range(spec.get("runs", 2)):
            G(z, None, noise_mode="const", force_fp32=True)
    return _memory_result(rss_init, None, _rss_mb()["hwm"], False, mode="fused", torch_threads=torch.get_num_threads())


WORKERS = {"jax_compile": worker_jax_compile, "jax_memory": worker_jax_memory,
           "torch": worker_torch, "torch_memory": worker_torch_memory}


def run_worker(kind: str, spec: dict, python: str | None = None, env: dict | None = None,
               timeout: float = 7200) -> dict:
    """Run this file as a worker subprocess; its progress goes to our stderr, its result via a file."""
    with tempfile.TemporaryDirectory(prefix="bench_gen_") as d:
        spec_path, out_path = os.path.join(d, "spec.json"), os.path.join(d, "out.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        cmd = [python or sys.executable, os.path.abspath(__file__), "--_worker", kind,
               "--_spec", spec_path, "--_out", out_path]
        with CpuMonitor() as mon:
            p = subprocess.run(cmd, env=env, stdout=sys.stderr, timeout=timeout)
        info = dict(subprocess_wall_s=mon.result["wall_s"],
                    other_cpu_frac_during=mon.result["other_cpu_frac_during"])
        if p.returncode != 0 or not os.path.exists(out_path):
            return dict(error=f"worker {kind} exited with {p.returncode}", **info)
        with open(out_path) as f:
            res = json.load(f)
        res.update(info)
        return res


# ============================================================== machine info


def machine_info() -> dict:
    info = dict(date=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                python=platform.python_version(), platform=platform.platform(),
                cores=os.cpu_count(), cores_available=len(os.sched_getaffinity(0)),
                XLA_FLAGS=os.environ.get("XLA_FLAGS"), malloc=malloc_mode(),
                malloc_env={k: os.environ.get(k) for k in TUNED_MALLOC})
    try:
        with open("/proc/cpuinfo") as f:
            cpu = {}
            for line in f:
                if ":" in line:
                    k, v = (s.strip() for s in line.split(":", 1))
                    cpu.setdefault(k, v)
        flags = cpu.get("flags", "").split()
        info.update(cpu_model=cpu.get("model name"), cpu_vendor=cpu.get("vendor_id"),
                    cpu_family_model=f"{cpu.get('cpu family')}/{cpu.get('model')}",
                    cpu_flags_simd=[x for x in flags if x.startswith(("avx", "amx", "fma"))],
                    hypervisor="hypervisor" in flags)
    except OSError:
        pass
    try:
        with open("/proc/meminfo") as f:
            info["mem_total_gib"] = round(int(f.readline().split()[1]) / 2 ** 20, 1)
    except OSError:
        pass
    try:
        import jax
        import jaxlib
        import flax
        import numpy
        info.update(jax=jax.__version__, jaxlib=jaxlib.__version__, flax=flax.__version__, numpy=numpy.__version__,
                    jax_backend=jax.default_backend(), jax_devices=[str(d) for d in jax.devices()])
    except Exception as e:  # noqa: BLE001
        info["jax_error"] = repr(e)
    try:
        rev = subprocess.run(["git", "-C", REPO, "rev-parse", "--short", "HEAD"], capture_output=True, text=True)
        dirty = subprocess.run(["git", "-C", REPO, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True)
        info["jaxedit_commit"] = rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except OSError:
        pass
    return info


# ============================================================== report


def _fmt(x, spec=".1f", none="—"):
    return none if x is None else format(x, spec)


def finish_rows(rows, flops, peaks):
    xla_peak, dnn_peak = peaks.get("xla_conv_peak"), peaks.get("onednn_conv_peak")
    for r in rows:
        gf = flops[r["case"]]["total"] / 1e9
        ms = r["median_s"] * 1e3
        r.update(ms_per_batch=ms, ms_per_image=ms / r["batch"], images_per_s=r["batch"] / r["median_s"],
                 gflop_per_image=gf, gflops=gf * r["batch"] / r["median_s"])
        r["frac_xla_conv_peak"] = r["gflops"] / xla_peak if xla_peak else None
        r["frac_onednn_conv_peak"] = r["gflops"] / dnn_peak if dnn_peak else None
    jx = {(r["case"], r["batch"]): r for r in rows if r["impl"] == "jaxedit"}
    for r in rows:
        j = jx.get((r["case"], r["batch"]))
        r["jaxedit_speedup"] = (r["median_s"] / j["median_s"]) if j and r["impl"] != "jaxedit" else None
    for key, j in jx.items():
        refs = [r for r in rows if (r["case"], r["batch"]) == key and r["impl"].startswith("ref-")]
        if refs:
            j["speedup_vs_ref"] = {r["impl"]: r["median_s"] / j["median_s"] for r in refs}
            j["speedup_vs_best_ref"] = min(r["median_s"] for r in refs) / j["median_s"]


def markdown(data) -> str:
    m, p = data["machine"], data["peaks"]
    s = data["settings"]
    L = ["# bench_generator", "",
         f"{m.get('date')} · {m.get('cpu_model')} ({m.get('cpu_vendor')}), {m.get('cores')} cores, "
         f"{m.get('mem_total_gib')} GiB · jax {m.get('jax')} / jaxlib {m.get('jaxlib')} · jaxedit {m.get('jaxedit_commit')} · "
         f"XLA_FLAGS={m.get('XLA_FLAGS')!r} · malloc (jaxedit) {m.get('malloc')}"
         + (f" · reference: torch {data['reference'].get('torch_version')}, {data['reference'].get('threads')} threads, "
            f"malloc {data['reference'].get('malloc')}" if data.get("reference") else ""),
         "",
         f"float32, noise const, random weights; median of {s['repeats_desc']} timed runs after "
         f"{s['warmup']} warm-up call(s) (+ the first call); GFLOP analytic (reference op counts). "
         f"`others` = CPU used by other processes during the timed runs (fraction of the machine). "
         f"`jaxedit speed-up` on a reference row = that row's time / jaxedit's time for the same case and batch. "
         f"Peaks: XLA conv {_fmt(p.get('xla_conv_peak'), '.0f')}, oneDNN conv "
         f"{_fmt(p.get('onednn_conv_peak'), '.0f')} GFLOP/s (see below).", ""]
    noisy = [r for r in data["results"] if r["other_cpu_frac_during"] > s["max_other_cpu"]]
    if noisy:
        L += [f"**{len(noisy)} of {len(data['results'])} rows were timed while other processes used more than "
              f"{s['max_other_cpu']:.0%} of the CPU (marked NOISY): rerun those at a quiet moment.**", ""]
    L += ["| case | batch | impl | ms/batch | ms/img | img/s | GFLOP/img | GFLOP/s | % XLA conv peak | "
          "% oneDNN conv peak | others | jaxedit speed-up |", "|" + "---|" * 3 + "---:|" * 9]
    for r in data["results"]:
        L.append(f"| {r['case']} | {r['batch']} | {r['impl']} | {r['ms_per_batch']:.1f} | {r['ms_per_image']:.1f} | "
                 f"{r['images_per_s']:.2f} | {r['gflop_per_image']:.2f} | {r['gflops']:.0f} | "
                 f"{_fmt(r['frac_xla_conv_peak'] and 100 * r['frac_xla_conv_peak'], '.0f')} | "
                 f"{_fmt(r['frac_onednn_conv_peak'] and 100 * r['frac_onednn_conv_peak'], '.0f')} | "
                 f"{100 * r['other_cpu_frac_during']:.0f}%{' (retried)' if r['retried'] else ''}"
                 f"{' NOISY' if r['other_cpu_frac_during'] > s['max_other_cpu'] else ''} | "
                 f"{_fmt(r['jaxedit_speedup'], '.2f')}{'x' if r['jaxedit_speedup'] else ''} |")
    if p:
        L += ["", "Peaks (GFLOP/s, measured in this run): "
              + ", ".join(f"{k} {p[k]:.0f}" for k in ("xla_conv_peak", "xla_matmul_peak", "onednn_conv_peak",
                                                       "torch_sgemm_peak") if p.get(k))
              + (f"; each conv peak is the best of the shapes below (B,H,W,Cin,Cout), XLA at "
                 f"{p['xla_conv_peak_shape']}" if p.get("xla_conv_peak_shape") else "")
              + (f", oneDNN at {p['onednn_conv_peak_shape']} (the notes used 1,64,64,256,256)"
                 if p.get("onednn_conv_peak_shape") else ""), ""]
        L += ["| peak shape (B, H, W, Cin, Cout) | XLA GFLOP/s | oneDNN GFLOP/s |", "|---|---:|---:|"]
        dnn = {tuple(c["shape"]): c["gflops"] for c in p.get("onednn_conv", [])}
        xla = {tuple(c["shape"]): c["gflops"] for c in p.get("xla_conv", [])}
        for shp in list(xla) + [k for k in dnn if k not in xla]:
            L.append(f"| {shp} | {_fmt(xla.get(shp), '.0f')} | {_fmt(dnn.get(shp), '.0f')} |")
    L += ["", "| model | GFLOP/img total | 3x3 convs | up 3x3 convs (at input res) | toRGB | affine | mapping |",
          "|---|---:|---:|---:|---:|---:|---:|"]
    for name, f in data["flops"].items():
        L.append(f"| {name} | {f['total'] / 1e9:.3f} | {f['conv3x3'] / 1e9:.3f} | {f['up_conv3x3'] / 1e9:.3f} | "
                 f"{f['torgb'] / 1e9:.4f} | {f['affine'] / 1e9:.4f} | {f['mapping'] / 1e9:.4f} |")
    if data.get("compile"):
        L += ["", "Compile of the jitted forward (one subprocess each; cold = fresh empty jax_compilation_cache_dir, "
              "warm = same dir again). `init` = G.init (eager ops, also compiled/cached), `process` = whole "
              "subprocess incl. import jax and the first run:", "",
              "| model | batch | cold: lower+compile s | cold: init s | cold: process s | warm: lower+compile s | "
              "warm: init s | warm: process s | cache entries | others (cold / warm) |", "|---|" + "---:|" * 9]
        for name, c in data["compile"].items():
            cold, warm = c.get("cold", {}), c.get("warm", {})
            L.append(f"| {name} | {c['batch']} | {_fmt(cold.get('lower_plus_compile_s'), '.2f')} | "
                     f"{_fmt(cold.get('init_params_s'), '.2f')} | {_fmt(cold.get('subprocess_wall_s'), '.1f')} | "
                     f"{_fmt(warm.get('lower_plus_compile_s'), '.2f')} | {_fmt(warm.get('init_params_s'), '.2f')} | "
                     f"{_fmt(warm.get('subprocess_wall_s'), '.1f')} | {c.get('cache_entries')} | "
                     f"{_fmt(cold.get('other_cpu_frac_during') and 100 * cold['other_cpu_frac_during'], '.0f')}% / "
                     f"{_fmt(warm.get('other_cpu_frac_during') and 100 * warm['other_cpu_frac_during'], '.0f')}% |")
    mem = data.get("memory") or {}
    for label, mm in (("jaxedit", mem.get("jaxedit")), ("reference (fused)", mem.get("reference"))):
        if not mm:
            continue
        if "error" in mm:
            L += ["", f"Memory {label}: {mm['error']}"]
            continue
        extra = ""
        if mm.get("forward_peak_minus_init_mb") is not None:
            extra += f"; forward alone (peak reset after compile) {mm['forward_peak_minus_init_mb']:+.0f} MiB"
        if mm.get("compile_peak_minus_init_mb") is not None:
            extra += f", compile {mm['compile_peak_minus_init_mb']:+.0f} MiB"
        if mm.get("xla_memory_analysis_mb", {}).get("temp_size_in_bytes") is not None:
            extra += f"; XLA temp buffers {mm['xla_memory_analysis_mb']['temp_size_in_bytes']:.0f} MiB"
        L += ["", f"Memory {label}, {mem['case']} batch {mem['batch']} (malloc {mm.get('malloc')}): peak RSS "
              f"{mm['peak_rss_total_mb']:.0f} MiB total (ru_maxrss {mm['ru_maxrss_mb']:.0f} MiB), "
              f"{mm['peak_minus_init_mb']:+.0f} MiB over the RSS after import + params "
              f"({mm['rss_after_init_mb']:.0f} MiB){extra}; others used "
              f"{100 * mm.get('other_cpu_frac_during', 0):.0f}% CPU meanwhile."]
    return "\n".join(L) + "\n"


# ============================================================== main


def parse_cases(text: str):
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, b = item.partition(":")
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; known: {', '.join(CASES)}")
        batches = tuple(int(x) for x in b.split("/")) if b else CASES[name]["batches"]
        out.append((name, batches))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="small32,paper256,ffhq1024",
                    help="comma-separated; NAME or NAME:B1/B2 to pick batch sizes (e.g. ffhq1024:1)")
    ap.add_argument("--repeats", type=int, help="timed runs per case (default 5, 3 for ffhq1024)")
    ap.add_argument("--warmup", type=int, default=1, help="warm-up calls after the first (compiling) call")
    ap.add_argument("--peak-repeats", type=int, help="timed runs per peak micro-benchmark (default 5)")
    ap.add_argument("--quick", action="store_true", help="tiny repeat counts (2 / 1 for 1024, peaks 2)")
    ap.add_argument("--skip-compile", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--skip-peaks", action="store_true")
    ap.add_argument("--memory-case", help="NAME:B for the memory run (default ffhq1024:4, run when that model "
                                          "is among --cases)")
    ap.add_argument("--max-other-cpu", type=float, default=0.05,
                    help="retry a case once if other processes used more than this fraction of the CPU")
    ap.add_argument("--no-retry", action="store_true")
    ap.add_argument("--tuned-malloc", action="store_true",
                    help="re-exec with MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=16 GiB (jaxedit side)")
    ap.add_argument("--reference", help="local checkout of NVlabs/stylegan2-ada-pytorch")
    ap.add_argument("--torch-python", help="python with torch for the reference")
    ap.add_argument("--ref-modes", default="fused,nonfused", help="fused,nonfused")
    ap.add_argument("--ref-malloc", choices=("tuned", "default"), default="tuned")
    ap.add_argument("--threads", type=int, default=2, help="torch threads for the reference")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="bench_generator", help="output file stem")
    ap.add_argument("--_worker", help=argparse.SUPPRESS)
    ap.add_argument("--_spec", help=argparse.SUPPRESS)
    ap.add_argument("--_out", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args._worker:
        with open(args._spec) as f:
            spec = json.load(f)
        res = WORKERS[args._worker](spec)
        with open(args._out, "w") as f:
            json.dump(res, f)
        return 0

    if args.tuned_malloc and malloc_mode() != "tuned":
        env = dict(os.environ, **TUNED_MALLOC)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)
    if bool(args.reference) != bool(args.torch_python):
        raise SystemExit("--reference and --torch-python go together")

    max_other, retry = args.max_other_cpu, not args.no_retry
    peak_repeats = args.peak_repeats or (2 if args.quick else 5)
    cases = []
    for name, batches in parse_cases(args.cases):
        rep = args.repeats or (QUICK_REPEATS[name] if args.quick else CASES[name]["repeats"])
        cases.append((name, batches, rep))
    reps = sorted({c[2] for c in cases})
    order = {n: i for i, (n, _, _) in enumerate(cases)}
    data = dict(machine=machine_info(), settings=dict(
        argv=sys.argv[1:], cases=[dict(case=n, batches=list(b), repeats=r) for n, b, r in cases],
        warmup=args.warmup, peak_repeats=peak_repeats, max_other_cpu=max_other, retry=retry,
        repeats_desc="/".join(map(str, reps)), models={n: CASES[n]["model"] for n, _, _ in cases},
        common=dict(architecture="skip", conv_clamp=None, c_dim=0, img_channels=3, noise_mode="const",
                    dtype="float32", params="random (seed 0)")),
        flops={n: generator_flops(CASES[n]["model"]) for n, _, _ in cases}, peaks={}, results=[])
    log(f"machine: {data['machine'].get('cpu_model')} x{data['machine'].get('cores')}, "
        f"jax {data['machine'].get('jax')}, malloc {data['machine']['malloc']}")
    for n, f in data["flops"].items():
        log(f"  {n}: {f['total'] / 1e9:.3f} GFLOP/image (analytic)")

    ref_env = dict(os.environ)
    for k in TUNED_MALLOC:
        ref_env.pop(k, None)
    if args.ref_malloc == "tuned":
        ref_env.update(TUNED_MALLOC)
    ref_env.pop("PYTHONPATH", None)

    # Memory first, while this process is still small (ru_maxrss of a child includes the parent's RSS).
    mem_name, _, mem_batch = (args.memory_case or "ffhq1024:4").partition(":")
    if mem_name not in CASES or not mem_batch.isdigit():
        raise SystemExit(f"--memory-case must be NAME:BATCH with NAME in {', '.join(CASES)}")
    if not args.skip_memory and (args.memory_case or mem_name in order):
        mem_spec = dict(model=CASES[mem_name]["model"], batch=int(mem_batch), runs=2)
        data["memory"] = dict(case=mem_name, batch=int(mem_batch), parent_rss_at_spawn_mb=_rss_mb()["rss"])
        log(f"memory {mem_name} B={mem_batch} (jaxedit) ...")
        data["memory"]["jaxedit"] = run_worker("jax_memory", mem_spec)
        if args.reference:
            log(f"memory {mem_name} B={mem_batch} (reference) ...")
            data["memory"]["reference"] = run_worker(
                "torch_memory", dict(mem_spec, reference=os.path.abspath(args.reference), threads=args.threads),
                python=args.torch_python, env=ref_env)

    if not args.skip_peaks:
        log("XLA peaks ...")
        data["peaks"].update(xla_peaks(peak_repeats, max_other, retry))

    log("jaxedit forward ...")
    rows = bench_jax(cases, max_other, retry, args.warmup)

    if args.reference:
        spec = dict(reference=os.path.abspath(args.reference), threads=args.threads,
                    cases=[[n, list(b), r] for n, b, r in cases], modes=args.ref_modes.split(","),
                    warmup=args.warmup, max_other=max_other, retry=retry, peaks=not args.skip_peaks,
                    peak_repeats=peak_repeats)
        log(f"reference ({args.torch_python}, malloc {args.ref_malloc}) ...")
        ref = run_worker("torch", spec, python=args.torch_python, env=ref_env)
        if "error" in ref:
            log(f"  reference failed: {ref['error']}")
        else:
            rows += ref.pop("rows")
            data["peaks"].update(ref.pop("peaks", {}))
            try:
                ref["commit"] = subprocess.run(["git", "-C", args.reference, "rev-parse", "--short", "HEAD"],
                                               capture_output=True, text=True).stdout.strip() or None
            except OSError:
                pass
            ref["path"] = os.path.abspath(args.reference)
        data["reference"] = ref

    # keep the table ordered: case, batch, jaxedit first
    rows.sort(key=lambda r: (order[r["case"]], r["batch"], r["impl"] != "jaxedit", r["impl"]))
    finish_rows(rows, data["flops"], data["peaks"])
    data["results"] = rows

    if not args.skip_compile:
        data["compile"] = {}
        for name, batches, _ in cases:
            with tempfile.TemporaryDirectory(prefix="jax_cache_") as cache:
                spec = dict(model=CASES[name]["model"], batch=batches[0], cache_dir=cache)
                entry = dict(batch=batches[0])
                for phase in ("cold", "warm"):
                    log(f"compile {name} B={batches[0]} ({phase}) ...")
                    entry[phase] = run_worker("jax_compile", spec)
                    log(f"  lower+compile {_fmt(entry[phase].get('lower_plus_compile_s'), '.2f')} s, "
                        f"process {entry[phase]['subprocess_wall_s']:.1f} s")
                    if phase == "cold":
                        entry["cache_entries"] = sum(len(fs) for _, _, fs in os.walk(cache))
                data["compile"][name] = entry

    md = markdown(data)
    os.makedirs(args.out_dir, exist_ok=True)
    with open(os.path.join(args.out_dir, args.name + ".md"), "w") as f:
        f.write(md)
    with open(os.path.join(args.out_dir, args.name + ".json"), "w") as f:
        json.dump(data, f, indent=1)
    print(md)
    log(f"wrote {os.path.join(args.out_dir, args.name)}.{{md,json}}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
