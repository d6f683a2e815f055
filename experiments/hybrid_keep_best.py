"""The hybrid projector's best iterate (``ProjectorConfig.hybrid``: ``keep_best``): a few steps from the encoder's
codes at the schedule's peak rate overshoot; keeping each image's iterate of lowest image distance means they
cannot end worse than the encoder alone.

Six samples of ``shapes32-stylegan2`` (psi 0.7, key 0), W+ codes from ``shapes32-encoder``, pixel-MSE distance,
noise maps fixed (as the batch engine inverts image inputs); PSNR of ``G(w)`` against the sample, mean over images.

    python experiments/hybrid_keep_best.py      # -> experiments/results/hybrid_keep_best.{json,md}
"""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxedit
from jaxedit import invert

OUT = Path(__file__).parent / "results" / "hybrid_keep_best"


def main() -> None:
    G, gp = jaxedit.load("shapes32-stylegan2")
    E, ep = jaxedit.load("shapes32-encoder")
    x = jnp.clip(G(gp, jax.random.normal(jax.random.key(0), (6, G.cfg.z_dim)), psi=0.7), -1, 1)
    w = E(ep, x)
    keys = jax.random.split(jax.random.key(1), 6)

    def psnr(ws):
        y = np.clip(np.asarray(G.synthesis(gp, ws, noise_mode="const")), -1, 1)
        return float(np.mean(10 * np.log10(4 / np.mean((y - np.asarray(x)) ** 2, axis=(1, 2, 3)))))

    rows = [{"steps": 0, "last iterate dB": psnr(w), "best iterate dB": psnr(w)}]
    for steps in (3, 10, 100):
        row = {"steps": steps}
        for keep_best, col in ((False, "last iterate dB"), (True, "best iterate dB")):
            cfg = invert.ProjectorConfig.hybrid(steps=steps, mode="w+", optimize_noise=False, keep_best=keep_best)
            res = jax.jit(lambda t, k, i, c=cfg: invert.project(G, gp, invert.pixel_distance, t, k, c, init=i))(x, keys, w)
            row[col] = psnr(res.ws)
        rows.append(row)
    OUT.parent.mkdir(exist_ok=True)
    OUT.with_suffix(".json").write_text(json.dumps({"images": 6, "rows": rows}, indent=1) + "\n")
    lines = ["| hybrid steps | last iterate dB | best iterate dB |", "|---:|---:|---:|"]
    lines += [f"| {r['steps']} | {r['last iterate dB']:.1f} | {r['best iterate dB']:.1f} |" for r in rows]
    OUT.with_suffix(".md").write_text("# hybrid_keep_best (6 samples, encoder start = 0 steps)\n\n" + "\n".join(lines)
                                      + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
