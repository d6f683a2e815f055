"""What several commands share: seeds, strengths, small array files, the default models."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from jaxedit.config import enable_compilation_cache
from jaxedit.errors import UsageError
from jaxedit.io import checkpoint
from jaxedit.models import stylegan2

DEFAULT_GENERATOR = "shapes32-stylegan2"
DEFAULT_CLIP = "shapes-clip"


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                seeds.extend(range(int(lo), int(hi) + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise UsageError(f"--seeds: cannot parse {text!r} (expected e.g. 0-15 or 1,5,9-12)") from None
    if not seeds or any(s < 0 or s >= 2 ** 32 for s in seeds):
        raise UsageError(f"--seeds: {text!r} gives no seeds in [0, 2**32)")
    return seeds


def seed_latents(seeds: list[int], z_dim: int) -> np.ndarray:
    """``z [N, z_dim]`` as NVIDIA's ``generate.py`` draws them (``np.random.RandomState(seed).randn``)."""
    return np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds]).astype(np.float32)


def parse_strengths(text: str) -> np.ndarray:
    """'-3:3:7' (inclusive linspace) or '-2,0,2' -> float32 ``[S]``, every value finite."""
    try:
        if ":" in text:
            a, b, n = text.split(":")
            out = np.linspace(float(a), float(b), int(n))
        else:
            out = np.asarray([float(v) for v in text.split(",") if v.strip()])
    except ValueError:
        out = np.zeros(0)
    if out.size == 0 or not np.all(np.isfinite(out)):
        raise UsageError(f"--strengths {text!r}: expected finite START:STOP:NUM (e.g. -3:3:7) or a list (e.g. -2,0,2)")
    return out.astype(np.float32)


def check_positive(flag: str, value: float | int | None) -> None:
    """A count or size flag must be a finite number > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} {value}: must be positive")


def check_finite(flag: str, value: float | None) -> None:
    if value is not None and not math.isfinite(value):
        raise UsageError(f"{flag} {value}: must be a finite number")


def load_npy(path: str, what: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """A ``.npy`` array of the given shape (``None``: any size) as float32; errors name ``what`` and the file."""
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"{what} {path}: cannot read as .npy ({e})") from None
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise UsageError(f"{what} {path}: shape {list(a.shape)}, expected {want}")
    return a.astype(np.float32)


def model_path(path: str | None, default: str) -> Path:
    """The checkpoint a command uses: ``path`` if given, else the embedded default model ``default``."""
    return Path(path) if path else checkpoint.default_path(default)


def load_generator(path: str | None, *, unconditional: str | None = None):
    """``(G, params)`` of ``path`` or the default generator; with ``unconditional`` (the command's name),
    a conditional generator is refused."""
    enable_compilation_cache()
    G, params = stylegan2.load(model_path(path, DEFAULT_GENERATOR))
    if unconditional and G.cfg.c_dim:
        raise UsageError(f"{unconditional}: conditional generators are not supported yet")
    return G, params


def strength_labels(strengths) -> list[str]:
    """Column labels of a strength sweep: ``['-3', '-1.5', '0', '+1.5', '+3']``."""
    return ["0" if float(t) == 0 else f"{float(t):+.3g}" for t in strengths]


def text_label(text: str, width: int = 22) -> str:
    """A prompt shortened to fit a grid label."""
    return text if len(text) <= width else text[:width - 3] + "..."
