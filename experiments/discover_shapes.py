"""Discovery runs on the default shapes generator (config as code; resumable: rerun to continue).

    python experiments/discover_shapes.py linear runs/discover-linear
    python experiments/discover_shapes.py warped runs/discover-warped
    python experiments/discover_shapes.py curvilinear runs/discover-curvilinear
    python experiments/directions_shapes.py --linear runs/discover-linear --warped runs/discover-warped \
        --curvilinear runs/discover-curvilinear

Settings: K = 16 directions in W (w_dim 64), batch 32, Adam 1e-3, 3,000 steps (the references
train 1e5-2e5 steps at 1e-4 on GPUs; this is a CPU budget: at 1e-4, 3,000 steps reached RCA 0.31 / 0.22 /
0.36 (linear / warped / curvilinear), at 1e-3 0.85 / 0.84 / 0.87). Magnitudes: linear U[-6, 6] with |eps| >= 0.5
and curvilinear +-[0.1, 6.0] as the references; warped +-[0.5, 1.5] instead of the reference's
+-[0.1, 0.2] (this generator's W has per-dimension std 0.76; 0.2-steps change the 32 px image
too little for a reconstructor to learn in 3,000 steps). The curvilinear flow is smaller than
the reference's (64 -> 128 -> 128 -> 64 ConcatSquash vs 512 x 5) and uses 2 fixed Dopri5 steps
while training (its edits are solved adaptively).
"""

import argparse
import json

from jaxedit.train import discovery as D

CONFIGS = {
    "linear": D.DiscoveryConfig(method="linear", num_directions=16, steps=3000, lr=1e-3, deformator="proj"),
    "warped": D.DiscoveryConfig(method="warped", num_directions=16, steps=3000, lr=1e-3, eps_range=(0.5, 1.5),
                                dipoles=16),
    "curvilinear": D.DiscoveryConfig(method="curvilinear", num_directions=16, steps=3000, lr=1e-3,
                                     flow_hidden=(128, 128), flow_steps=2),
}

if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("method", choices=sorted(CONFIGS))
    ap.add_argument("run")
    args = ap.parse_args()
    print(json.dumps(D.train(CONFIGS[args.method], args.run), indent=1))
