#!/usr/bin/env python
"""Benchmark StyleGAN3 synthesis (configs T and R, 256 px, float32) on CPU: jaxedit's ops before and
after the fast filtered nonlinearity, and NVIDIA's PyTorch reference, in one run.

Not a test. Prints a markdown table and writes ``<out-dir>/<name>.md`` and ``<out-dir>/<name>.json``
(default ``experiments/results/bench_stylegan3.{md,json}``).

Models (random weights, the reference's own ``train.py`` settings for ``--cfg=stylegan3-t`` /
``stylegan3-r`` at 256 px with its default ``--cbase=32768 --cmax=512``; R doubles both and uses
1x1 convs and radial down-sampling filters; z/w 512, 2 mapping layers, 14 layers, conv_clamp 256):

* ``t256``: channel_base 32768, channel_max 512, conv_kernel 3
* ``r256``: channel_base 65536, channel_max 1024, conv_kernel 1, use_radial_filters

(NVIDIA's released ``stylegan3-{t,r}-ffhqu-256x256.pkl`` were trained with ``--cbase=16384``:
``--cbase 16384`` gives those, i.e. half the channels of every layer.)

Implementations, each timed on ``synthesis(ws)`` for the same ws shape (mapping excluded):

* ``jaxedit``: ``jax.jit(StyleGAN3(cfg).synthesis)`` of this checkout.
* ``jaxedit-before``: the same handle from ``jaxedit/models/stylegan3.py`` at ``--before-rev``
  (default ``e568102``, the commit before the fast ops), loaded as a separate module.
* ``ref``: NVlabs/stylegan3 ``training.networks_stylegan3.SynthesisNetwork`` (eval, ``no_grad``,
  ``torch.set_num_threads(--threads)``, default 2): on CPU its ``filtered_lrelu`` and
  ``upfirdn2d`` take their pure-PyTorch ``_ref`` paths, the reference CPU path. Runs in a
  subprocess under ``--torch-python``; the reference code is never committed, only its path passed.

Median of ``--repeats`` timed calls after the first call (timed separately: compile for jaxedit)
and ``--warmup`` more; ``compile_s`` = ``jit(...).lower(...).compile()`` for jaxedit. ``others`` =
CPU used by other processes during the timed calls (fraction of the machine, /proc/stat minus our
own CPU time); a case is retried once when it exceeds ``--max-other-cpu``.

glibc malloc: by default both sides run with ``MALLOC_MMAP_THRESHOLD_=MALLOC_TRIM_THRESHOLD_=16 GiB``
(``--malloc tuned``, as in shared/notes/stylegan2-reference.md section 5): without it every buffer
over 32 MB is a fresh mmap and its page faults dominate (a 47 MB XLA elementwise op: 30 ms vs 5 ms).
``--malloc default`` runs both sides without.

Usage::

    python experiments/bench_stylegan3.py --reference /work/ref/stylegan3 \
        --torch-python /work/ref/torchvenv/bin/python

Only the standard library is imported at module level: the same file runs as the torch worker.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)
from bench_generator import TUNED_MALLOC, CpuMonitor, _fmt, log, machine_info, malloc_mode, time_runs  # noqa: E402

BEFORE_REV = "e568102"
COMMON = dict(z_dim=512, w_dim=512, img_resolution=256, img_channels=3, mapping_layers=2, num_layers=14,
              conv_clamp=256.0)
CASES = {
    "t256": dict(channel_base=32768, channel_max=512, conv_kernel=3, use_radial_filters=False),
    "r256": dict(channel_base=65536, channel_max=1024, conv_kernel=1, use_radial_filters=True),
}


def model_cfg(name: str, cbase: int | None) -> dict:
    m = dict(COMMON, **CASES[name])
    if cbase:  # R doubles the base, as train.py does
        m["channel_base"] = cbase * (2 if m["use_radial_filters"] else 1)
    return m


# ============================================================== jax side


def _load_before(rev: str):
    """``jaxedit/models/stylegan3.py`` at ``rev`` as a module of its own (same package imports)."""
    src = subprocess.run(["git", "-C", REPO, "show", f"{rev}:jaxedit/models/stylegan3.py"], capture_output=True,
                         text=True, check=True).stdout
    d = tempfile.mkdtemp(prefix="sg3_before_")
    path = os.path.join(d, "stylegan3_before.py")
    with open(path, "w") as f:
        f.write(src)
    spec = importlib.util.spec_from_file_location("stylegan3_before", path)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


def bench_jax(cases, impls, args) -> list[dict]:
    sys.path.insert(0, REPO)
    import jax
    import jax.numpy as jnp
    import jaxedit.models.stylegan3 as after
    mods = {"jaxedit": after}
    if "jaxedit-before" in impls:
        mods["jaxedit-before"] = _load_before(args.before_rev)
    rows = []
    for name, batches in cases:
        m = model_cfg(name, args.cbase)
        cfg = after.StyleGAN3Config(**m)
        params = jax.block_until_ready(after.StyleGAN3(cfg).init(jax.random.key(0)))
        for B in batches:
            ws = jax.random.normal(jax.random.key(1), (B, cfg.num_ws, cfg.w_dim), jnp.float32)
            for impl in impls:
                if impl not in mods or (impl == "jaxedit-before" and B not in args.before_batches):
                    continue
                mod = mods[impl]
                G = mod.StyleGAN3(mod.StyleGAN3Config(**m))
                fn = jax.jit(lambda p, w, G=G: G.synthesis(p, w))
                log(f"  {impl} {name} B={B}: compiling ...")
                t = time.perf_counter()
                compiled = fn.lower(params, ws).compile()
                compile_s = time.perf_counter() - t
                reps = args.before_repeats if impl == "jaxedit-before" else args.repeats
                r = time_runs(lambda: compiled(params, ws).block_until_ready(), reps,
                              0 if impl == "jaxedit-before" else args.warmup, args.max_other_cpu, not args.no_retry)
                rows.append(dict(case=name, batch=B, impl=impl, compile_s=compile_s, **r))
                log(f"    compile {compile_s:.1f} s, {r['median_s'] * 1e3:.0f} ms/batch "
                    f"(others {r['other_cpu_frac_during']:.0%})")
        del params
    return rows


# ============================================================== torch reference side (runs under --torch-python)


def worker_torch(spec: dict) -> dict:
    import warnings
    warnings.filterwarnings("ignore")
    sys.path.insert(0, spec["reference"])
    import torch
    torch.set_num_threads(spec["threads"])
    from training.networks_stylegan3 import SynthesisNetwork  # noqa: E402 - from the reference checkout
    out = dict(torch_version=torch.__version__, threads=torch.get_num_threads(), malloc=malloc_mode(), rows=[])
    torch.manual_seed(0)
    with torch.no_grad():
        for name, batches in spec["cases"]:
            m = spec["models"][name]
            S = SynthesisNetwork(w_dim=m["w_dim"], img_resolution=m["img_resolution"], img_channels=m["img_channels"],
                                 channel_base=m["channel_base"], channel_max=m["channel_max"],
                                 num_layers=m["num_layers"], num_fp16_res=0, conv_kernel=m["conv_kernel"],
                                 use_radial_filters=m["use_radial_filters"],
                                 conv_clamp=m["conv_clamp"]).eval().requires_grad_(False)
            for B in batches:
                ws = torch.randn(B, S.num_ws, m["w_dim"])
                log(f"  ref {name} B={B} ...")
                r = time_runs(lambda: S(ws), spec["repeats"], spec["warmup"], spec["max_other"], spec["retry"])
                out["rows"].append(dict(case=name, batch=B, impl="ref", compile_s=None, **r))
                with open(spec["partial"], "w") as f:  # kept if a later case dies (e.g. OOM-killed)
                    json.dump(out, f)
                log(f"    {r['median_s'] * 1e3:.0f} ms/batch (others {r['other_cpu_frac_during']:.0%})")
            del S
    return out


WORKERS = {"torch": worker_torch}


def run_worker(kind, spec, python=None, env=None, timeout=7200):
    with tempfile.TemporaryDirectory(prefix="bench_sg3_") as d:
        spec_path, out_path = os.path.join(d, "spec.json"), os.path.join(d, "out.json")
        partial = spec["partial"] = os.path.join(d, "partial.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        cmd = [python or sys.executable, os.path.abspath(__file__), "--_worker", kind, "--_spec", spec_path,
               "--_out", out_path]
        with CpuMonitor() as mon:
            p = subprocess.run(cmd, env=env, stdout=sys.stderr, timeout=timeout)
        info = dict(subprocess_wall_s=mon.result["wall_s"], other_cpu_frac_during=mon.result["other_cpu_frac_during"])
        if p.returncode != 0 or not os.path.exists(out_path):
            res = dict(rows=[])
            if os.path.exists(partial):
                with open(partial) as f:
                    res = json.load(f)
            done = [f"{r['case']}:{r['batch']}" for r in res.get("rows", [])]
            res["error"] = (f"worker {kind} exited with {p.returncode} (-9: killed, e.g. out of memory) after "
                            f"{', '.join(done) or 'no case'}")
            return dict(res, **info)
        with open(out_path) as f:
            res = json.load(f)
        res.update(info)
        return res


# ============================================================== report


def finish_rows(rows, cores):
    for r in rows:
        ms = r["median_s"] * 1e3
        r.update(ms_per_batch=ms, ms_per_image=ms / r["batch"], images_per_s=r["batch"] / r["median_s"])
        # CPU time this implementation used per image (own process, both cores): less sensitive to
        # other processes' load than wall time, which it can exceed by at most the cores it got
        r["cpu_s_per_image"] = r["median_s"] * r["own_cpu_frac"] * cores / r["batch"]
    by = {(r["case"], r["batch"], r["impl"]): r for r in rows}
    for r in rows:
        j = by.get((r["case"], r["batch"], "jaxedit"))
        ref = by.get((r["case"], r["batch"], "ref"))
        r["jaxedit_speedup"] = r["median_s"] / j["median_s"] if j and r["impl"] != "jaxedit" else None
        r["vs_ref"] = ref["median_s"] / r["median_s"] if ref and r["impl"] != "ref" else None
        r["vs_ref_cpu"] = ref["cpu_s_per_image"] / r["cpu_s_per_image"] if ref and r["impl"] != "ref" else None


def markdown(data) -> str:
    m, s = data["machine"], data["settings"]
    ref = data.get("reference") or {}
    L = ["# bench_stylegan3", "",
         f"{m.get('date')} · {m.get('cpu_model')}, {m.get('cores')} cores · jax {m.get('jax')} · jaxedit "
         f"{m.get('jaxedit_commit')} (before = {s['before_rev']}) · malloc {s['malloc']}"
         + (f" · reference: torch {ref.get('torch_version')}, {ref.get('threads')} threads, NVlabs/stylegan3 "
            f"{ref.get('commit')}, pure-PyTorch `_ref` ops, malloc {ref.get('malloc')}" if ref.get("torch_version") else ""), "",
         "Synthesis forward (ws -> image), float32, random weights, 256 px. Models: "
         + "; ".join(f"`{n}` = channel_base {c['channel_base']}, channel_max {c['channel_max']}, conv_kernel "
                     f"{c['conv_kernel']}{', radial down filters' if c['use_radial_filters'] else ''}"
                     for n, c in s["models"].items())
         + f" (14 layers, w 512, conv_clamp 256). Median of {s['repeats']} timed calls "
           f"({s['before_repeats']} for jaxedit-before) after the first call and {s['warmup']} warm-up(s). "
           "`compile s` = jit lower+compile. `others` = CPU used by other processes during the timed calls. "
           "`vs ref` = reference time / this row's time (>1: faster than the reference). `CPU s/img` = CPU time "
           "the implementation itself used per image (all cores; less sensitive to the other processes' load than "
           "wall time) and `vs ref (CPU)` its ratio.", ""]
    noisy = [r for r in data["results"] if r["other_cpu_frac_during"] > s["max_other_cpu"]]
    if noisy:
        L += [f"**{len(noisy)} of {len(data['results'])} rows were timed while other processes used more than "
              f"{s['max_other_cpu']:.0%} of the CPU (marked NOISY).**", ""]
    L += ["| case | batch | impl | ms/batch | ms/img | img/s | compile s | others | vs ref | CPU s/img | "
          "vs ref (CPU) | jaxedit speed-up |", "|---|---|---|" + "---:|" * 9]
    for r in data["results"]:
        L.append(f"| {r['case']} | {r['batch']} | {r['impl']} | {r['ms_per_batch']:.0f} | {r['ms_per_image']:.0f} | "
                 f"{r['images_per_s']:.3f} | {_fmt(r.get('compile_s'), '.1f')} | "
                 f"{100 * r['other_cpu_frac_during']:.0f}%{' (retried)' if r['retried'] else ''}"
                 f"{' NOISY' if r['other_cpu_frac_during'] > s['max_other_cpu'] else ''} | "
                 f"{_fmt(r['vs_ref'], '.2f')}{'x' if r['vs_ref'] else ''} | {r['cpu_s_per_image']:.2f} | "
                 f"{_fmt(r['vs_ref_cpu'], '.2f')}{'x' if r['vs_ref_cpu'] else ''} | "
                 f"{_fmt(r['jaxedit_speedup'], '.2f')}{'x' if r['jaxedit_speedup'] else ''} |")
    for mg in data.get("merged", []):
        first = mg.get("first_reference") or {}
        L += ["", f"Reference rows from a second invocation ({mg['file']}, {mg['date']}, same settings otherwise)"
              + (f"; the first one's reference worker failed: {first['error']}" if first.get("error") else "") + "."]
    if ref.get("error"):
        L += ["", f"Reference failed: {ref['error']}"]
    return "\n".join(L) + "\n"


# ============================================================== main


def parse_cases(text):
    out = []
    for item in filter(None, (t.strip() for t in text.split(","))):
        name, _, b = item.partition(":")
        if name not in CASES:
            raise SystemExit(f"unknown case {name!r}; known: {', '.join(CASES)}")
        out.append((name, tuple(int(x) for x in b.split("/")) if b else (1, 4)))
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", default="t256,r256", help="NAME or NAME:B1/B2 (default batches 1/4)")
    ap.add_argument("--impls", default="jaxedit,jaxedit-before,ref")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--before-rev", default=BEFORE_REV)
    ap.add_argument("--before-batches", default="1", help="batches timed for jaxedit-before (slow), e.g. 1/4")
    ap.add_argument("--before-repeats", type=int, default=2)
    ap.add_argument("--cbase", type=int, help="channel_base of T (R gets twice it), default train.py's 32768")
    ap.add_argument("--malloc", choices=("tuned", "default"), default="tuned", help="glibc malloc, both sides")
    ap.add_argument("--max-other-cpu", type=float, default=0.05)
    ap.add_argument("--no-retry", action="store_true")
    ap.add_argument("--reference", help="local checkout of NVlabs/stylegan3")
    ap.add_argument("--reference-commit", help="its commit, when --reference is an export without .git")
    ap.add_argument("--torch-python", help="python with torch (and scipy) for the reference")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for the reference")
    ap.add_argument("--out-dir", default=os.path.join(HERE, "results"))
    ap.add_argument("--name", default="bench_stylegan3")
    ap.add_argument("--render", metavar="JSON", help="only re-render the markdown of an earlier run's JSON")
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

    if args.render:  # A.json[,B.json]: B's rows (and reference info, if A has no reference rows) added to A's
        paths = args.render.split(",")
        with open(paths[0]) as f:
            data = json.load(f)
        for extra in paths[1:]:
            with open(extra) as f:
                more = json.load(f)
            data["results"] += more["results"]
            if more.get("reference", {}).get("torch_version"):
                data.setdefault("merged", []).append(dict(file=os.path.basename(extra), date=more["machine"]["date"],
                                                          first_reference=data.get("reference"),
                                                          settings=more["settings"]))
                data["reference"] = more["reference"]
        rank = {"jaxedit": 0, "jaxedit-before": 1, "ref": 2}
        order = {c["case"]: i for i, c in enumerate(data["settings"]["cases"])}
        data["results"].sort(key=lambda r: (order.get(r["case"], 9), r["batch"], rank.get(r["impl"], 9)))
        finish_rows(data["results"], data["machine"].get("cores") or 1)
        md = markdown(data)
        out = os.path.join(args.out_dir, args.name)
        with open(out + ".md", "w") as f:
            f.write(md)
        with open(out + ".json", "w") as f:
            json.dump(data, f, indent=1)
        print(md)
        return 0

    want = "tuned" if args.malloc == "tuned" else "default"
    if malloc_mode() != want:
        env = dict(os.environ)
        for k in TUNED_MALLOC:
            env.pop(k, None)
        if want == "tuned":
            env.update(TUNED_MALLOC)
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__)] + sys.argv[1:], env)
    impls = [i for i in args.impls.split(",") if i]
    if "ref" in impls and not (args.reference and args.torch_python):
        log("no --reference/--torch-python: skipping the reference")
        impls.remove("ref")
    args.before_batches = tuple(int(x) for x in args.before_batches.split("/"))
    cases = parse_cases(args.cases)
    models = {n: model_cfg(n, args.cbase) for n, _ in cases}
    data = dict(machine=machine_info(), settings=dict(
        argv=sys.argv[1:], cases=[dict(case=n, batches=list(b)) for n, b in cases], impls=impls,
        repeats=args.repeats, warmup=args.warmup, before_rev=args.before_rev,
        before_batches=list(args.before_batches), before_repeats=args.before_repeats,
        max_other_cpu=args.max_other_cpu, malloc=malloc_mode(), models=models, threads=args.threads), results=[])
    log(f"machine: {data['machine'].get('cpu_model')} x{data['machine'].get('cores')}, malloc {malloc_mode()}")

    rows = bench_jax(cases, [i for i in impls if i != "ref"], args)
    if "ref" in impls:
        spec = dict(reference=os.path.abspath(args.reference), threads=args.threads,
                    cases=[[n, list(b)] for n, b in cases], models=models, repeats=args.repeats,
                    warmup=args.warmup, max_other=args.max_other_cpu, retry=not args.no_retry)
        env = dict(os.environ)
        env.pop("PYTHONPATH", None)
        log(f"reference ({args.torch_python}) ...")
        ref = run_worker("torch", spec, python=args.torch_python, env=env)
        rows += ref.pop("rows", [])
        if True:
            ref["commit"] = args.reference_commit or subprocess.run(
                ["git", "-C", args.reference, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip() or None
            ref["path"] = os.path.abspath(args.reference)
        if "error" in ref:
            log(f"  reference failed: {ref['error']}")
        data["reference"] = ref
    order = {n: i for i, (n, _) in enumerate(cases)}
    rank = {"jaxedit": 0, "jaxedit-before": 1, "ref": 2}
    rows.sort(key=lambda r: (order[r["case"]], r["batch"], rank.get(r["impl"], 9)))
    finish_rows(rows, os.cpu_count() or 1)
    data["results"] = rows
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
