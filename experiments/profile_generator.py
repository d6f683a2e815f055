"""Where the generator's time goes: XLA op-level profile of one jitted forward.

Traces a few runs with ``jax.profiler`` (perfetto trace), sums the time of every compiled
op (fusions, convs, copies) and names the layer each belongs to from the HLO text.

    python experiments/profile_generator.py --case ffhq1024 --batch 1
"""

from __future__ import annotations

import argparse
import collections
import glob
import gzip
import json
import re
import tempfile
from pathlib import Path

import jax

from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config

CASES = {
    "small32": StyleGAN2Config(img_resolution=32, channel_base=4096, channel_max=128, mapping_layers=8),
    "paper256": StyleGAN2Config(img_resolution=256, channel_base=16384),
    "ffhq1024": StyleGAN2Config(img_resolution=1024, channel_base=32768),
}
RESULTS = Path(__file__).resolve().parent / "results"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--case", default="ffhq1024", choices=sorted(CASES))
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--top", type=int, default=25)
    args = ap.parse_args()

    G = StyleGAN2(CASES[args.case])
    params = G.init(jax.random.key(0))
    z = jax.random.normal(jax.random.key(1), (args.batch, G.cfg.z_dim))
    f = jax.jit(lambda p, z: G(p, z))
    hlo = f.lower(params, z).compile().as_text()
    f(params, z).block_until_ready()
    # op name -> layers named in its operands (parameter names carry the layer path)
    where = {}
    for m in re.finditer(r"^\s*%?([\w.\-]+) = [^\n]*", hlo, re.M):
        layers = sorted(set(re.findall(r"synthesis_+(b\d+)_+(\w+?)_+(?:weight|affine|bias|noise)", m.group(0))))
        if layers:
            where[m.group(1)] = ",".join(f"{b}.{l}" for b, l in layers)
    with tempfile.TemporaryDirectory() as tmp:
        jax.profiler.start_trace(tmp, create_perfetto_trace=True)
        for _ in range(args.runs):
            f(params, z).block_until_ready()
        jax.profiler.stop_trace()
        trace = json.load(gzip.open(sorted(glob.glob(f"{tmp}/**/*.trace.json.gz", recursive=True))[-1]))
    total = collections.Counter()
    for e in trace["traceEvents"]:
        if e.get("ph") == "X" and not e["name"].startswith(("ThunkExecutor", "$", "Pjit", "Slinky")):
            total[e["name"]] += e["dur"] / args.runs / 1000
    wall = sum(total.values())
    kinds = collections.Counter()
    for name, ms in total.items():
        kinds[re.sub(r"\.\d+$", "", name)] += ms
    lines = [f"# profile_generator: {args.case}, batch {args.batch}", "",
             f"Sum of op times per forward: {wall:.1f} ms (mean of {args.runs} traced runs).", "",
             "| op | ms | share | layer(s) |", "|---|---:|---:|---|"]
    for name, ms in total.most_common(args.top):
        lines.append(f"| {name} | {ms:.2f} | {ms / wall:.1%} | {where.get(name, '')} |")
    lines += ["", "| op kind | ms | share |", "|---|---:|---:|"]
    lines += [f"| {k} | {ms:.2f} | {ms / wall:.1%} |" for k, ms in kinds.most_common(12)]
    RESULTS.mkdir(exist_ok=True)
    stem = RESULTS / f"profile_generator_{args.case}_b{args.batch}"
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
