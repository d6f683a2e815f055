"""The house refactor's speed check: the same workloads on an older commit and on this tree.

    python experiments/bench_before_after.py                # old = a84237b (before issue 13)
    python experiments/bench_before_after.py --old REV --rounds 3

The old commit is checked out with ``git worktree`` under ``/tmp/jaxedit-before-<rev>`` (outside
the repository) and imported from that tree alone; each workload runs in a fresh subprocess per
tree, old and new interleaved ``--rounds`` times, and the best warm time per tree is kept (the
machine is shared: see the load column). Workloads (default generator ``shapes32-stylegan2``,
float32, const noise, CPU):

- ``generator``: mapping + synthesis, B = 64, one jitted program;
- ``vmap_generator``: ``jax.vmap`` of per-example synthesis over 32 latents;
- ``edit_linear``: 4 directions x 7 strengths x 8 latents edited in W+ and rendered (one program);
- ``warped_traversal``: WarpedGANSpace paths (K = 4, 2N = 8 supports) x 9 strengths x 8 latents;
- ``text_optimize``: StyleCLIP latent optimization, 4 prompts x 8 latents x 20 steps with shapes-clip;
- ``shapes_render``: the shapes world, 4096 images at 32 px.

Prints a table and writes ``experiments/results/bench_before_after.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "experiments" / "results"
WORKLOADS = ("generator", "vmap_generator", "edit_linear", "warped_traversal", "text_optimize", "shapes_render")

# Runs inside a subprocess with either tree first on sys.path; adapts to both APIs.
WORKER = textwrap.dedent('''
    import json, os, sys, time
    # import jaxedit from the tree under test only (not through this venv's editable install)
    sys.meta_path[:] = [f for f in sys.meta_path if "editable" not in repr(f).lower()]
    sys.path.insert(0, os.environ["BENCH_TREE"])
    import jax, jax.numpy as jnp, numpy as np
    import jaxedit
    name, repeats = sys.argv[1], int(sys.argv[2])
    try:
        from jaxedit.loader import load as _load
        G, gp = _load("shapes32-stylegan2"); NEW = True
    except ImportError:
        from jaxedit import checkpoint
        G, gp = checkpoint.load_stylegan2(checkpoint.default_path("shapes32-stylegan2")); NEW = False
    key = jax.random.key(0)

    def edit_fn(kind, arrays):
        if NEW:
            from jaxedit import edits
            ed = (edits.Linear(directions=arrays["directions"], space="w") if kind == "linear" else
                  edits.Warped(support_sets=arrays["support_sets"], alphas=arrays["alphas"],
                               log_gamma=arrays["log_gamma"], space="w", eps=0.2))
            return lambda lat, k, t: edits.apply(ed, lat, k, t)
        from jaxedit.edits import editors
        ed = editors.Editor(kind, "w", dict(arrays), eps=0.2)
        return ed.edit

    def sweep(move, K, S):
        z = jax.random.normal(key, (8, G.cfg.z_dim))
        ts = jnp.linspace(-2, 2, S)

        @jax.jit
        def run(gp, z):
            lat = G.mapping(gp, z)
            moved = jax.vmap(lambda k: jax.vmap(lambda t: move(lat, k, jnp.full((8,), t)))(ts))(jnp.arange(K))
            return G.synthesis(gp, moved.reshape(-1, *lat.shape[1:]))
        return lambda: run(gp, z), K * S * 8

    if name == "generator":
        z = jax.random.normal(key, (64, G.cfg.z_dim))
        f = jax.jit(lambda gp, z: G.synthesis(gp, G.mapping(gp, z)))
        call, n = (lambda: f(gp, z)), 64
    elif name == "vmap_generator":
        ws = G.mapping(gp, jax.random.normal(key, (32, G.cfg.z_dim)))[:, None]
        f = jax.jit(jax.vmap(lambda w: G.synthesis(gp, w)))
        call, n = (lambda: f(ws)), 32
    elif name == "edit_linear":
        q = np.linalg.qr(np.random.default_rng(0).normal(size=(G.cfg.w_dim, 4)))[0].T.astype(np.float32)
        call, n = sweep(edit_fn("linear", {"directions": jnp.asarray(q)}), 4, 7)
    elif name == "warped_traversal":
        r = np.random.default_rng(1)
        arrays = {"support_sets": jnp.asarray(r.normal(size=(4, 8, G.cfg.w_dim)), jnp.float32),
                  "alphas": jnp.asarray(np.tile([1.0, -1.0], (4, 4)), jnp.float32),
                  "log_gamma": jnp.full((4,), -3.0, jnp.float32)}
        call, n = sweep(edit_fn("warped", arrays), 4, 9)
    elif name == "text_optimize":
        from jaxedit.edits import text
        from jaxedit.models import clip
        try:
            from jaxedit.io import checkpoint
        except ImportError:
            from jaxedit import checkpoint
        guide, cp, tok = clip.load_guide(checkpoint.default_path("shapes-clip"))
        prompts = ["a red circle", "a blue square", "a large shape", "a small green triangle"]
        tokens = jnp.asarray(tok(prompts, context_length=guide.model.cfg.context_length, truncate=True))
        w0 = G.mapping(gp, jax.random.normal(key, (8, G.cfg.z_dim)), psi=0.7)

        @jax.jit
        def run(gp, cp, w0, tokens):
            return text.optimize_latents(G, gp, lambda x: guide.embed_images(cp, x), w0,
                                         guide.embed_texts(cp, tokens), steps=20).ws
        call, n = (lambda: run(gp, cp, w0, tokens)), 4 * 8 * 20
    elif name == "shapes_render":
        from jaxedit.data import shapes
        f = jax.jit(lambda k: shapes.sample(k, 4096, shapes.ShapesConfig(resolution=32))["image"])
        call, n = (lambda: f(key)), 4096
    t0 = time.perf_counter(); jax.block_until_ready(call()); first = time.perf_counter() - t0
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter(); jax.block_until_ready(call()); best = min(best, time.perf_counter() - t0)
    print(json.dumps({"workload": name, "first_s": first, "best_s": best, "items": n, "new_api": NEW}))
''')


def tree_for(rev: str) -> Path:
    path = Path(f"/tmp/jaxedit-before-{rev}")
    if not path.exists():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), rev], cwd=REPO, check=True,
                       capture_output=True)
    return path


def run_one(tree: Path, workload: str, repeats: int) -> dict:
    env = dict(os.environ, BENCH_TREE=str(tree), JAXEDIT_CHECKPOINTS=str(REPO / "checkpoints"),
               JAXEDIT_CACHE="")
    out = subprocess.run([sys.executable, "-c", WORKER, workload, str(repeats)], cwd="/tmp", env=env,
                         capture_output=True, text=True, timeout=1800)
    if out.returncode != 0:
        raise RuntimeError(f"{workload} on {tree}: {out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", default="a84237b")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--workloads", default=",".join(WORKLOADS))
    args = ap.parse_args()
    trees = {"before": tree_for(args.old), "after": REPO}
    rows = []
    for w in args.workloads.split(","):
        best = {}
        for _ in range(args.rounds):
            for side, tree in trees.items():
                r = run_one(tree, w, args.repeats)
                if side not in best or r["best_s"] < best[side]["best_s"]:
                    best[side] = r
        b, a = best["before"], best["after"]
        rows.append({"workload": w, "items": a["items"], "before_ms": 1e3 * b["best_s"], "after_ms": 1e3 * a["best_s"],
                     "before_items_per_s": b["items"] / b["best_s"], "after_items_per_s": a["items"] / a["best_s"],
                     "change": b["best_s"] / a["best_s"] - 1.0, "before_first_s": b["first_s"],
                     "after_first_s": a["first_s"], "load": os.getloadavg()[0]})
        print(f"{w:18s} before {rows[-1]['before_ms']:9.1f} ms  after {rows[-1]['after_ms']:9.1f} ms  "
              f"speed {rows[-1]['change']:+.1%}  (load {rows[-1]['load']:.1f})", flush=True)
    lines = ["# Before / after the house refactor", "",
             f"Old commit `{args.old}` vs this tree; best of {args.rounds} interleaved rounds x {args.repeats} "
             f"warm calls per tree (`experiments/bench_before_after.py`); {platform.processor() or platform.machine()}, "
             f"{os.cpu_count()} cores.", "",
             "| workload | items | before ms | after ms | speed change | first call before / after (s) | load |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['workload']} | {r['items']} | {r['before_ms']:.1f} | {r['after_ms']:.1f} | "
                     f"{r['change']:+.1%} | {r['before_first_s']:.1f} / {r['after_first_s']:.1f} | {r['load']:.1f} |")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "bench_before_after.md").write_text("\n".join(lines) + "\n")
    (RESULTS / "bench_before_after.json").write_text(json.dumps({"old": args.old, "rows": rows}, indent=1) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
