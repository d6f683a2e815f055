#!/usr/bin/env python
"""EditGAN's segmentation branch: memory and time of the reference's order against jaxedit's projection.

The released EditGAN car classifier reads 16 synthesis-layer maps of a config-f StyleGAN2 at 512 px
(the 4x4 const, ``b4.conv1``, ``conv0``/``conv1`` of every block 8..512: 6016 channels), 10 members,
32 classes (hidden widths 256, 128). Per case, one image:

- ``naive``: every map upsampled (nearest) to the output size and concatenated (``[1, R, R, 6016]``),
  then the 10 MLPs under one vmap (:meth:`PixelClassifier.segment_naive`; the reference runs the same
  concatenation, then its members one after another);
- ``projected, one tile``: each map projected to 256 channels at its own resolution, upsampled, summed,
  then the MLP tails, over the whole image at once (``segment(..., tile_pixels=None)``);
- ``projected, tiled``: the same in tiles of 4096 output pixels (``segment``'s default), so the
  full-size hidden activation never exists either;
- ``projected, tiled, mean``: the tiled branch returning the ensemble-mean logits only (what EditGAN's
  editing loss reads), 512 px.

Random weights and random N(0, 1) features of the reference's shapes (the branch's cost does not
depend on the values), at 256 px (config-f 256: 14 maps, 5888 channels) and 512 px. Each case runs in
its own subprocess: compiled ahead of time, then ``VmHWM`` reset (``/proc/self/clear_refs``) so the
peak of the run itself is measured; reported as the peak RSS above the process's RSS before the run
(features, weights and the runtime are there already), with XLA's own buffer plan (temporaries +
output) beside it. The output logits ``[10, 1, R, R, 32]`` (335 MB at 512 px) are in every number but
the ``mean`` row's. A case whose XLA plan exceeds 80 % of ``MemAvailable`` is compiled but not run.
Time: median of ``--repeats`` calls after the first and one warm-up at 256 px; at 512 px the second call;
the naive cases one call (the shared machine makes these seconds, not the memory, the noisy numbers).
GFLOP counts 2 x multiply-adds of the matmuls (projection windows included).

    python experiments/bench_segmenter.py [--sizes 256,512] [--repeats 3]

Writes ``experiments/results/bench_segmenter.{md,json}``.
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
import bench_generator as bg

MEMBERS, CLASSES = 10, 32
VARIANTS = {"naive": {"naive": True}, "projected, one tile": {"tile_pixels": None},
            "projected, tiled": {"tile_pixels": 4096}, "projected, tiled, mean": {"tile_pixels": 4096, "mean": True}}


def _mem_available_mb() -> float:
    with open("/proc/meminfo") as f:
        d = dict(line.split(":", 1) for line in f)
    return int(d["MemAvailable"].split()[0]) / 1024


def flops(clf, shapes: dict, out: int, naive: bool, tile_pixels) -> float:
    from jaxedit.models.segmenter import _row_windows, tile_rows

    cfg = clf.cfg
    h1, h2 = cfg.hidden
    tail = out * out * (h1 * h2 + h2 * cfg.num_classes)
    if naive:
        return 2.0 * cfg.num_members * (out * out * cfg.in_dim * h1 + tail)
    rows = tile_rows(out, out, tile_pixels)
    proj = 0
    for name, ch in cfg.layout:
        r = shapes[name]
        _, k, _ = _row_windows(r, out, rows, "nearest")
        proj += (out // rows) * k * r * ch * h1
    return 2.0 * cfg.num_members * (proj + tail)


def worker(spec: dict) -> dict:
    import jax
    import numpy as np

    from jaxedit.models.segmenter import PixelClassifier, PixelClassifierConfig, config_f_channels
    from jaxedit.models.stylegan2 import feature_layout

    res, v = spec["res"], VARIANTS[spec["variant"]]
    layout = feature_layout(config_f_channels(res))
    cfg = PixelClassifierConfig(in_dim=sum(c for _, c in layout), num_classes=CLASSES, num_members=MEMBERS,
                                layout=layout)
    clf = PixelClassifier(cfg)
    params = jax.block_until_ready(clf.init(jax.random.key(0)))
    rng = np.random.default_rng(0)
    shapes = {n: int(n[1:].split(".")[0]) for n, _ in layout}
    feats = {n: jax.device_put(rng.standard_normal((1, shapes[n], shapes[n], c), np.float32)) for n, c in layout}
    jax.block_until_ready(feats)
    if v.get("naive"):
        fn = lambda p, f: clf.segment_naive(p, f, res)
    else:
        fn = lambda p, f: clf.segment(p, f, res, ensemble_mean=v.get("mean", False),
                                      tile_pixels=v["tile_pixels"])
    t = time.perf_counter()
    compiled = jax.jit(fn).lower(params, feats).compile()
    compile_s = time.perf_counter() - t
    m = compiled.memory_analysis()
    plan = {"temp_mb": m.temp_size_in_bytes / 2 ** 20, "output_mb": m.output_size_in_bytes / 2 ** 20,
            "argument_mb": m.argument_size_in_bytes / 2 ** 20}
    out = {"res": res, "variant": spec["variant"], "maps": len(layout), "channels": cfg.in_dim, "members": MEMBERS,
           "classes": CLASSES, "hidden": list(cfg.hidden), "compile_s": compile_s, "xla_plan_mb": plan,
           "gflop": flops(clf, shapes, res, bool(v.get("naive")), v.get("tile_pixels")) / 1e9,
           "mem_available_mb": _mem_available_mb()}
    need = plan["temp_mb"] + plan["output_mb"]
    if need > 0.8 * out["mem_available_mb"]:
        bg.log(f"  {res} px {spec['variant']}: XLA plans {need:.0f} MB, {out['mem_available_mb']:.0f} MB "
               "available: not run")
        out["skipped"] = "not enough free memory"
        return out
    rss_before = bg._rss_mb()["rss"]
    reset = bg._reset_hwm()
    result = {}

    def run():
        result["y"] = compiled(params, feats)
        jax.block_until_ready(result["y"])
        del result["y"]

    if v.get("naive"):  # 2 (256 px) to 8 (512 px) TFLOP: one call
        with bg.CpuMonitor() as mon:
            t = time.perf_counter()
            run()
            dt = time.perf_counter() - t
        r = {"median_s": dt, "times_s": [dt], "first_call_s": dt,
             "other_cpu_frac_during": mon.result["other_cpu_frac_during"]}
    elif res >= 512:  # the first call, then one timed call
        r = bg.time_runs(run, 1, 0, 1.0, False)
    else:
        r = bg.time_runs(run, spec["repeats"], 1, spec["max_other"], True)
    run_peak = bg._rss_mb()["hwm"]
    out.update(rss_before_run_mb=rss_before, peak_rss_mb=run_peak, run_peak_above_before_mb=run_peak - rss_before,
               hwm_reset_ok=reset, ru_maxrss_mb=bg._maxrss_mb(), median_s=r["median_s"], times_s=r["times_s"],
               first_call_s=r["first_call_s"], other_cpu_frac_during=r["other_cpu_frac_during"],
               gflops=out["gflop"] / r["median_s"])
    bg.log(f"  {res} px {spec['variant']}: {r['median_s']:.2f} s, run peak +{run_peak - rss_before:.0f} MB "
           f"(XLA temp {plan['temp_mb']:.0f} + out {plan['output_mb']:.0f} MB), "
           f"others {r['other_cpu_frac_during']:.0%}")
    return out


def run_case(spec: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="bench_seg_") as d:
        sp, op = os.path.join(d, "spec.json"), os.path.join(d, "out.json")
        with open(sp, "w") as f:
            json.dump(spec, f)
        cmd = [sys.executable, os.path.abspath(__file__), "--_worker", sp, op]
        p = subprocess.run(cmd, stdout=sys.stderr, check=False)
        if p.returncode != 0 or not os.path.exists(op):
            return {"res": spec["res"], "variant": spec["variant"], "error": f"worker exited with {p.returncode}"}
        with open(op) as f:
            return json.load(f)


def _f(x, spec=".0f"):
    return "—" if x is None else format(x, spec)


def markdown(data: dict) -> str:
    lines = [(f"# EditGAN segmentation branch: naive (concatenate, then MLP) vs projected, one image, "
             f"{MEMBERS} members, {CLASSES} classes"), "",
             (f"{data['machine'].get('cpu_model')}, {data['machine'].get('cores_available')} cores; "
             f"load average before: {data['loadavg_before']}; {data['date']}"), "",
             ("| px | branch | maps / channels | run peak RSS above start (MB) | XLA temp + output (MB) | "
             "memory vs naive | time (s) | GFLOP | GFLOP/s | others' CPU |"),
             "|---:|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for row in data["rows"]:
        if "error" in row:
            lines.append(f"| {row['res']} | {row['variant']} | error: {row['error']} |||||||")
            continue
        naive = next((r for r in data["rows"] if r["res"] == row["res"] and r["variant"] == "naive"
                      and "run_peak_above_before_mb" in r), None)
        ratio = None
        if naive and "run_peak_above_before_mb" in row:
            ratio = naive["run_peak_above_before_mb"] / row["run_peak_above_before_mb"]
        plan = row["xla_plan_mb"]["temp_mb"] + row["xla_plan_mb"]["output_mb"]
        note = f" (not run: {row['skipped']})" if "skipped" in row else ""
        lines.append(
            f"| {row['res']} | {row['variant']}{note} | {row['maps']} / {row['channels']} | "
            f"{_f(row.get('run_peak_above_before_mb'))} | {plan:.0f} | {_f(ratio, '.1f') + 'x' if ratio else '—'} | "
            f"{_f(row.get('median_s'), '.2f')} | {row['gflop']:.0f} | {_f(row.get('gflops'), '.0f')} | "
            f"{_f(row.get('other_cpu_frac_during') and 100 * row['other_cpu_frac_during'])}% |")
    lines += ["", ("Run peak: VmHWM after the runs minus VmRSS before them (VmHWM reset after compiling; the "
              "features, weights and runtime are in the baseline). Memory vs naive: the naive row's run peak "
              "over this row's.")]
    return "\n".join(lines) + "\n"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="256,512")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--max-other-cpu", type=float, default=0.1)
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="bench_segmenter")
    ap.add_argument("--_worker", nargs=2, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a._worker:
        with open(a._worker[0]) as f:
            spec = json.load(f)
        res = worker(spec)
        with open(a._worker[1], "w") as f:
            json.dump(res, f)
        return 0
    import datetime

    data = {"date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
                "machine": bg.machine_info(), "loadavg_before": os.getloadavg(), "rows": []}
    for res in (int(s) for s in a.sizes.split(",")):
        for variant in VARIANTS:
            if variant.endswith("mean") and res < 512:
                continue
            spec = {"res": res, "variant": variant, "repeats": a.repeats, "max_other": a.max_other_cpu}
            data["rows"].append(run_case(spec))
    data["loadavg_after"] = os.getloadavg()
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
