#!/usr/bin/env python
"""The projector (:func:`jaxedit.invert.project`): batched vs one-at-a-time throughput, and the peak memory of
projecting at 1024 px.

1. Throughput on the shapes world: the default generator (``shapes32-stylegan2``), the probe's embedding
   distance (``shapes32-probe``), ``--n`` (64) shapes renders (``shapes.sample(key(2024), n)``) as targets,
   ``--steps`` (100) steps of NVIDIA's schedule in W, one PRNG key per image. Three ways:

   - ``batched``: one jitted program for all ``n`` images (``project`` vmaps the loss over images, the
     steps run in one ``lax.scan``);
   - ``one at a time``: the same program jitted for a batch of 1 and called once per image from a Python
     loop (``--k-single`` images timed, the rest extrapolated when fewer than ``n``);
   - ``reference style``: NVIDIA's ``projector.py`` loop: one jitted step for one image, the steps looped in
     Python with the distance read back to the host after every step (as the reference logs it); the start
     (``w_avg``/``w_std`` of ``num_w_stats`` mapped samples, noise maps) computed per image by a second jitted
     function, as the reference does per call; ``--k-stepwise`` images timed and extrapolated. The step is a
     copy of ``project``'s, written in this script with ``invert``'s public pieces.

   Compile excluded everywhere: each program is compiled ahead of time and called once before timing;
   wall time with ``block_until_ready``. ``max |ws - ws_batched|``: each timed image's result against the
   same image (same key) inside the batch.

2. Peak memory at 1024 px: a random-weight FFHQ-config StyleGAN2 (z = w = 512, 8 mapping layers,
   channel_base 32768, channel_max 512) and a random-weight LPIPS VGG16 (``LPIPS().init``; there is no
   LPIPS weight file here, and the cost does not depend on the weights), images area-downsampled to 256 px
   before LPIPS as in NVIDIA's projector; ``--mem-n`` (4) random targets, ``--mem-steps`` (2, 4) steps, each
   case in a fresh subprocess: RSS after the parameters and targets exist (the baseline), compile seconds,
   XLA's buffer plan, then one call: its seconds, VmHWM over the call (reset after compiling) and
   ``ru_maxrss`` at the end (compile included). A case whose XLA plan plus the baseline exceeds
   ``--mem-limit-gib`` (20) or 80 % of MemAvailable is compiled but not run, and the next smaller batch is
   tried (4 -> 2 -> 1).

    JAX_PLATFORMS=cpu python experiments/bench_invert.py [--n 64] [--steps 100] [--k-single 64] \
        [--k-stepwise 8] [--mem-n 4] [--mem-steps 2,4]

Writes ``experiments/results/bench_invert.{md,json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import bench_generator as bg  # stdlib only at module level

FFHQ1024 = {"z_dim": 512, "w_dim": 512, "img_resolution": 1024, "mapping_layers": 8, "channel_base": 32768,
            "channel_max": 512}


def _mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        d = dict(line.split(":", 1) for line in f)
    return int(d["MemAvailable"].split()[0]) / 1024


# ============================================================== 1. throughput


def stepwise_projector(G, gp, distance, cfg):
    """NVIDIA's loop for one image: ``start(target [1, H, W, C], key [1]) -> carry`` and ``step(carry, target,
    key, step) -> (carry, loss [1], dist [1])``, both jitted; the same math as :func:`invert.project` for B = 1."""
    import jax
    import jax.numpy as jnp
    import optax

    from jaxedit import invert

    num_ws, w_dim = G.cfg.num_ws, G.cfg.w_dim
    shapes = G.param_shapes()["synthesis"]
    names = invert.noise_names(G) if cfg.optimize_noise else ()
    opt = optax.adam(lambda count: invert.learning_rate(cfg, count), b1=0.9, b2=0.999, eps=1e-8)

    @jax.jit
    def start(keys):
        w_avg, w_std = invert.w_stats(G, gp, jax.random.key(123), cfg.num_w_stats)
        w0 = jnp.broadcast_to(w_avg, (keys.shape[0], w_dim))[:, None]

        def init_noise(key):
            ks = jax.random.split(key, max(len(names), 1))
            return {n: jax.random.normal(k, shapes[n.split(".")[0]][n.split(".")[1]]["noise_const"].shape)
                    for n, k in zip(names, ks)}

        noise0 = jax.vmap(init_noise)(jax.vmap(lambda k: jax.random.fold_in(k, 0))(keys))
        v = {"w": w0, "noise": noise0}
        return v, opt.init(v), w_std

    @jax.jit
    def step(carry, targets, keys, i):
        v, state, w_std = carry

        def image_loss(v, target, key, step):
            w = v["w"] + jax.random.normal(key, v["w"].shape) * invert.latent_noise_scale(cfg, step, w_std)
            ws = jnp.broadcast_to(w, (num_ws, w_dim))[None]
            img = G.synthesis(invert.with_noise(gp, v["noise"]), ws, noise_mode="const")
            dist = distance(target[None], img)[0]
            return dist + cfg.noise_weight * invert.noise_regularizer(v["noise"]), dist

        grad_fn = jax.vmap(jax.value_and_grad(image_loss, has_aux=True), in_axes=(0, 0, 0, None))
        step_keys = jax.vmap(lambda k: jax.random.fold_in(k, i + 1))(keys)
        (loss, dist), grads = grad_fn(v, targets, step_keys, i)
        updates, state = opt.update(grads, state, v)
        v = optax.apply_updates(v, updates)
        v = {"w": v["w"], "noise": jax.vmap(invert.normalize_noise)(v["noise"])}
        return (v, state, w_std), loss, dist

    def run(target, key):
        carry = start(key)
        for i in range(cfg.steps):
            carry, _loss, dist = step(carry, target, key, jnp.asarray(i, jnp.int32))
            float(dist[0])  # the reference logs the distance every step: one host sync per step
        v = carry[0]
        return jnp.broadcast_to(v["w"], (1, num_ws, w_dim))

    return start, step, run


def worker_throughput(spec: dict) -> dict:
    import jax
    import numpy as np

    import jaxedit
    from jaxedit import invert
    from jaxedit.data import shapes

    G, gp = jaxedit.load("shapes32-stylegan2")
    distance = invert.probe_distance(*jaxedit.load("shapes32-probe"))
    n, steps = spec["n"], spec["steps"]
    targets = jax.block_until_ready(shapes.sample(jax.random.key(2024), n)["image"])
    keys = jax.random.split(jax.random.key(7), n)
    cfg = invert.ProjectorConfig(steps=steps)
    fn = jax.jit(lambda x, k: invert.project(G, gp, distance, x, k, cfg).ws)
    out = {"n": n, "steps": steps, "generator": "shapes32-stylegan2", "distance": "shapes32-probe embedding",
           "resolution": G.cfg.img_resolution, "mode": cfg.mode, "num_w_stats": cfg.num_w_stats}

    # (a) batched
    t = time.perf_counter()
    batched = fn.lower(targets, keys).compile()
    compile_a = time.perf_counter() - t
    t = time.perf_counter()
    jax.block_until_ready(batched(targets, keys))
    first_a = time.perf_counter() - t
    with bg.CpuMonitor() as mon:
        t = time.perf_counter()
        ws_b = jax.block_until_ready(batched(targets, keys))
        dt = time.perf_counter() - t
    ws_b = np.asarray(ws_b)
    out["batched"] = {"compile_s": compile_a, "first_call_s": first_a, "seconds": dt, "images_timed": n,
                      "seconds_per_image": dt / n, "images_per_s": n / dt,
                      "other_cpu_frac": mon.result["other_cpu_frac_during"]}
    bg.log(f"  batched: {dt:.1f} s for {n} images ({n / dt:.3f} img/s), compile {compile_a:.1f} s, "
           f"others {mon.result['other_cpu_frac_during']:.0%}")

    # (b) one at a time: the same program for a batch of 1, called per image
    k = min(spec["k_single"], n)
    t = time.perf_counter()
    single = fn.lower(targets[:1], keys[:1]).compile()
    compile_b = time.perf_counter() - t
    jax.block_until_ready(single(targets[:1], keys[:1]))
    diffs, times = [], []
    with bg.CpuMonitor() as mon:
        t0 = time.perf_counter()
        for i in range(k):
            t = time.perf_counter()
            ws = jax.block_until_ready(single(targets[i:i + 1], keys[i:i + 1]))
            times.append(time.perf_counter() - t)
            diffs.append(float(np.max(np.abs(np.asarray(ws)[0] - ws_b[i]))))
        dt = time.perf_counter() - t0
    out["one_at_a_time"] = _timed(compile_b, dt, k, n, times, diffs, mon)
    bg.log(f"  one at a time: {dt:.1f} s for {k} images ({k / dt:.3f} img/s), compile {compile_b:.1f} s, "
           f"max |ws - batched| {max(diffs):.2e}, others {mon.result['other_cpu_frac_during']:.0%}")

    # (c) reference style: Python loop over steps and images
    k = min(spec["k_stepwise"], n)
    start, step, run = stepwise_projector(G, gp, distance, cfg)
    t = time.perf_counter()
    carry = jax.block_until_ready(start(keys[:1]))
    jax.block_until_ready(step(carry, targets[:1], keys[:1], jax.numpy.asarray(0, jax.numpy.int32)))
    compile_c = time.perf_counter() - t
    jax.block_until_ready(run(targets[:1], keys[:1]))
    diffs, times = [], []
    with bg.CpuMonitor() as mon:
        t0 = time.perf_counter()
        for i in range(k):
            t = time.perf_counter()
            ws = jax.block_until_ready(run(targets[i:i + 1], keys[i:i + 1]))
            times.append(time.perf_counter() - t)
            diffs.append(float(np.max(np.abs(np.asarray(ws)[0] - ws_b[i]))))
        dt = time.perf_counter() - t0
    out["reference_style"] = _timed(compile_c, dt, k, n, times, diffs, mon)
    bg.log(f"  reference style: {dt:.1f} s for {k} images ({k / dt:.3f} img/s), compile+first step "
           f"{compile_c:.1f} s, max |ws - batched| {max(diffs):.2e}, others {mon.result['other_cpu_frac_during']:.0%}")
    return out


def _timed(compile_s, dt, k, n, times, diffs, mon) -> dict:
    return {"compile_s": compile_s, "seconds": dt, "images_timed": k, "seconds_per_image": dt / k,
            "images_per_s": k / dt, "extrapolated_seconds": dt / k * n, "extrapolated": k < n, "per_image_s": times,
            "max_abs_diff_ws": max(diffs), "abs_diff_ws_per_image": diffs,
            "other_cpu_frac": mon.result["other_cpu_frac_during"]}


# ============================================================== 2. memory at 1024 px


def worker_memory(spec: dict) -> dict:
    import jax

    from jaxedit import invert
    from jaxedit.models.lpips import LPIPS
    from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config

    n, steps = spec["n"], spec["steps"]
    G = StyleGAN2(StyleGAN2Config(**FFHQ1024))
    gp = G.init(jax.random.key(0))
    lp = LPIPS()
    lpp = lp.init(jax.random.key(1))
    targets = jax.random.uniform(jax.random.key(2), (n, 1024, 1024, 3), minval=-1.0, maxval=1.0)
    keys = jax.random.split(jax.random.key(7), n)
    jax.block_until_ready((gp, lpp, targets, keys))
    rss_base = bg._rss_mb()["rss"]
    cfg = invert.ProjectorConfig(steps=steps)
    distance = invert.lpips_distance(lp, lpp)
    fn = jax.jit(lambda x, k: invert.project(G, gp, distance, x, k, cfg)[::2])  # ws, loss

    t = time.perf_counter()
    compiled = fn.lower(targets, keys).compile()
    compile_s = time.perf_counter() - t
    hwm_compile = bg._rss_mb()["hwm"]
    m = compiled.memory_analysis()
    plan = {"temp_mb": m.temp_size_in_bytes / 2 ** 20, "output_mb": m.output_size_in_bytes / 2 ** 20,
            "argument_mb": m.argument_size_in_bytes / 2 ** 20}
    out = {"n": n, "steps": steps, "model": FFHQ1024, "distance": "LPIPS VGG16 (random weights) at 256 px",
           "rss_base_mb": rss_base, "compile_s": compile_s, "compile_peak_mb": hwm_compile, "xla_plan_mb": plan,
           "mem_available_mb": _mem_available_mb()}
    need_mb = rss_base + plan["temp_mb"] + plan["output_mb"]
    if need_mb > spec["limit_gib"] * 1024 or plan["temp_mb"] > 0.8 * out["mem_available_mb"]:
        out["skipped"] = (f"XLA plans {plan['temp_mb'] / 1024:.1f} GiB temporaries on a {rss_base / 1024:.1f} GiB "
                          f"baseline (limit {spec['limit_gib']} GiB, {out['mem_available_mb'] / 1024:.1f} GiB "
                          "available)")
        bg.log(f"  {n} x 1024 px, {steps} steps: not run: {out['skipped']}")
        return out
    reset = bg._reset_hwm()
    with bg.CpuMonitor() as mon:
        t = time.perf_counter()
        ws, loss = compiled(targets, keys)
        jax.block_until_ready((ws, loss))
        run_s = time.perf_counter() - t
    hwm_run = bg._rss_mb()["hwm"]
    out.update(run_s=run_s, seconds_per_step=run_s / steps, run_peak_mb=hwm_run, hwm_reset_ok=reset,
               ru_maxrss_mb=bg._maxrss_mb(), other_cpu_frac=mon.result["other_cpu_frac_during"],
               loss_finite=bool(jax.numpy.all(jax.numpy.isfinite(loss))))
    bg.log(f"  {n} x 1024 px, {steps} steps: base {rss_base / 1024:.2f} GiB, run peak {hwm_run / 1024:.2f} GiB, "
           f"ru_maxrss {out['ru_maxrss_mb'] / 1024:.2f} GiB, compile {compile_s:.0f} s, run {run_s:.1f} s, "
           f"others {mon.result['other_cpu_frac_during']:.0%}")
    return out


# ============================================================== driver


def run_case(kind: str, spec: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_invert_") as d:
        sp, op = os.path.join(d, "spec.json"), os.path.join(d, "out.json")
        with open(sp, "w") as f:
            json.dump(spec, f)
        env = {**os.environ, "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
        cmd = [sys.executable, os.path.abspath(__file__), "--_worker", kind, sp, op]
        t = time.perf_counter()
        p = subprocess.run(cmd, stdout=sys.stderr, check=False, env=env)
        wall = time.perf_counter() - t
        if p.returncode != 0 or not os.path.exists(op):
            return {**spec, "error": f"worker exited with {p.returncode}", "worker_wall_s": wall}
        with open(op) as f:
            return {**json.load(f), "worker_wall_s": wall}


def _f(x, spec=".2f"):
    return "—" if x is None else format(x, spec)


def markdown(data: dict) -> str:
    m = data["machine"]
    lines = ["# bench_invert: the projector, batched vs one at a time; peak memory at 1024 px", "",
             (f"{data['date']} · {m.get('cpu_model')}, {m.get('cores_available')} cores, {m.get('mem_total_gib')} GiB "
              f"· jax {m.get('jax')} ({m.get('jax_backend')}) · jaxedit {m.get('jaxedit_commit')} · load average "
              f"before {', '.join(f'{x:.1f}' for x in data['loadavg_before'])}, after "
              f"{', '.join(f'{x:.1f}' for x in data['loadavg_after'])}"), ""]
    tp = data.get("throughput")
    if tp and "error" not in tp:
        a = tp["batched"]
        lines += [(f"## 1. Throughput: {tp['n']} shapes renders, {tp['steps']} steps (W), {tp['generator']} "
                   f"({tp['resolution']} px), {tp['distance']}"), "",
                  ("Compile excluded (each program compiled ahead of time and called once before timing). "
                   "`others` = CPU used by other processes during the timed part (fraction of the machine)."), "",
                  ("| way | images timed | s timed | s/image | images/s | s for all "
                   f"{tp['n']} | batched speed-up over it | max abs diff ws vs batched | compile s | others |"),
                  "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        rows = [("(a) batched: one program for all images (vmap + lax.scan)", a, None),
                ("(b) one at a time: batch-1 program, Python loop over images", tp["one_at_a_time"], a),
                ("(c) reference style: jitted step, Python loop over steps and images", tp["reference_style"], a)]
        for name, r, ref in rows:
            total = r.get("extrapolated_seconds", r["seconds"])
            note = " (extrapolated)" if r.get("extrapolated") else ""
            speed = f"{total / ref['seconds']:.2f}x" if ref else "—"
            lines.append(
                f"| {name} | {r['images_timed']} | {r['seconds']:.1f} | {r['seconds_per_image']:.3f} | "
                f"{r['images_per_s']:.2f} | {total:.1f}{note} | {speed} | "
                f"{_f(r.get('max_abs_diff_ws'), '.1e')} | {r['compile_s']:.1f} | {100 * r['other_cpu_frac']:.0f}% |")
        lines += ["", ("Batched speed-up = the row's seconds for all images / the batched seconds (= batched images/s "
                       "over the row's). (c)'s compile column: compiling the start and step functions and running "
                       "one step; its max abs diff checks this script's copy of the step against `project`.")]
    elif tp:
        lines += ["## 1. Throughput", "", f"error: {tp['error']}"]
    mem = data.get("memory", [])
    if mem:
        lines += ["", ("## 2. Peak memory: projecting at 1024 px (random FFHQ-config StyleGAN2, z = w = 512, 8 mapping "
                       "layers, channel_base 32768, channel_max 512; random-weight LPIPS VGG16 at 256 px)"), "",
                  ("| images | steps | baseline RSS (GiB) | run peak RSS (GiB) | ru_maxrss (GiB) | XLA temp (GiB) | "
                   "compile s | run s | s/step | others |"),
                  "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
        for r in mem:
            if "error" in r:
                lines.append(f"| {r['n']} | {r['steps']} | error: {r['error']} ||||||||")
                continue
            temp = r["xla_plan_mb"]["temp_mb"] / 1024
            if "skipped" in r:
                lines.append(f"| {r['n']} | {r['steps']} | {r['rss_base_mb'] / 1024:.2f} | not run: {r['skipped']} | "
                             f"— | {temp:.2f} | {r['compile_s']:.0f} | — | — | — |")
                continue
            lines.append(
                f"| {r['n']} | {r['steps']} | {r['rss_base_mb'] / 1024:.2f} | {r['run_peak_mb'] / 1024:.2f} | "
                f"{r['ru_maxrss_mb'] / 1024:.2f} | {temp:.2f} | {r['compile_s']:.0f} | {r['run_s']:.1f} | "
                f"{r['seconds_per_step']:.1f} | {100 * r['other_cpu_frac']:.0f}% |")
        lines += ["", ("Baseline: VmRSS after the generator, LPIPS parameters and targets exist, before compiling. "
                       "Run peak: VmHWM over the one call (reset after compiling), a total (baseline included). "
                       "ru_maxrss: the process's peak over its life (compile included). s/step = run s / steps "
                       "(includes the start: w_stats of 10 000 mapped samples and the noise maps).")]
        ok = [r for r in mem if "run_s" in r]
        by_n = {}
        for r in ok:
            by_n.setdefault(r["n"], []).append(r)
        for n, rs in by_n.items():
            if len(rs) >= 2:
                rs = sorted(rs, key=lambda r: r["steps"])
                lo, hi = rs[0], rs[-1]
                per = (hi["run_s"] - lo["run_s"]) / (hi["steps"] - lo["steps"])
                lines.append("")
                lines.append(f"{n} images: marginal s/step ({lo['steps']} -> {hi['steps']} steps) {per:.1f}; run peak "
                             f"{lo['run_peak_mb'] / 1024:.2f} vs {hi['run_peak_mb'] / 1024:.2f} GiB.")
    if data.get("notes"):
        lines += ["", data["notes"]]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n", type=int, default=64, help="images for the throughput part")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--k-single", type=int, default=64, help="images timed one at a time (rest extrapolated)")
    ap.add_argument("--k-stepwise", type=int, default=8, help="images timed reference style (rest extrapolated)")
    ap.add_argument("--mem-n", type=int, default=4, help="images at 1024 px (halved until it fits)")
    ap.add_argument("--mem-steps", default="2,4")
    ap.add_argument("--mem-limit-gib", type=float, default=20.0)
    ap.add_argument("--skip-throughput", action="store_true")
    ap.add_argument("--skip-memory", action="store_true")
    ap.add_argument("--notes", default="", help="a paragraph appended to the markdown")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="bench_invert")
    ap.add_argument("--_worker", nargs=3, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._worker:
        kind, sp, op = a._worker
        with open(sp) as f:
            spec = json.load(f)
        res = {"throughput": worker_throughput, "memory": worker_memory}[kind](spec)
        with open(op, "w") as f:
            json.dump(res, f)
        return 0
    import datetime

    t0 = time.perf_counter()
    data = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "machine": bg.machine_info(), "loadavg_before": os.getloadavg(), "args": vars(a)}
    if not a.skip_throughput:
        bg.log(f"throughput: {a.n} images, {a.steps} steps")
        data["throughput"] = run_case("throughput", {"n": a.n, "steps": a.steps, "k_single": a.k_single,
                                                     "k_stepwise": a.k_stepwise})
    if not a.skip_memory:
        data["memory"] = []
        steps = [int(s) for s in a.mem_steps.split(",")]
        n = a.mem_n
        while n >= 1:
            bg.log(f"memory: {n} x 1024 px, {steps[0]} steps")
            r = run_case("memory", {"n": n, "steps": steps[0], "limit_gib": a.mem_limit_gib})
            data["memory"].append(r)
            if "run_s" in r:
                for s in steps[1:]:
                    bg.log(f"memory: {n} x 1024 px, {s} steps")
                    data["memory"].append(run_case("memory", {"n": n, "steps": s, "limit_gib": a.mem_limit_gib}))
                break
            n //= 2
    data["loadavg_after"] = os.getloadavg()
    data["notes"] = a.notes
    data["total_wall_s"] = time.perf_counter() - t0
    os.makedirs(a.out_dir, exist_ok=True)
    with open(os.path.join(a.out_dir, a.name + ".json"), "w") as f:
        json.dump(data, f, indent=2)
    md = markdown(data)
    with open(os.path.join(a.out_dir, a.name + ".md"), "w") as f:
        f.write(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
