"""What several commands share: seeds, strengths, small array files (inverted W+ latents), the default models."""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np

from jaxedit import models
from jaxedit.config import enable_compilation_cache
from jaxedit.errors import UsageError
from jaxedit.io import arrays, checkpoint, files
from jaxedit.models import stylegan2

DEFAULT_GENERATOR = "shapes32-stylegan2"
DEFAULT_CLIP = "shapes-clip"


SEED_RANGE = re.compile(r"(\d+)(?:-(\d+))?")
NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?")
MAX_SEEDS = 1_000_000  # one command's seeds (a bigger job is a batch job)


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11] (at most MAX_SEEDS, each in [0, 2**32))."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    matches = [SEED_RANGE.fullmatch(p) for p in parts]
    if not parts or not all(matches):
        raise UsageError(f"--seeds: cannot parse {text[:80]!r} (expected e.g. 0-15 or 1,5,9-12)")
    ranges = [(int(m[1]), int(m[2] or m[1])) for m in matches]
    if any(hi < lo or hi >= 2 ** 32 for lo, hi in ranges) or sum(hi - lo + 1 for lo, hi in ranges) > MAX_SEEDS:
        raise UsageError(f"--seeds: {text[:80]!r} must give at most {MAX_SEEDS:,} seeds in [0, 2**32), ranges low-high")
    return [s for lo, hi in ranges for s in range(lo, hi + 1)]


def seed_latents(seeds: list[int], z_dim: int) -> np.ndarray:
    """``z [N, z_dim]`` as NVIDIA's ``generate.py`` draws them (``np.random.RandomState(seed).randn``)."""
    return np.stack([np.random.RandomState(s).randn(z_dim) for s in seeds]).astype(np.float32)


def parse_strengths(text: str) -> np.ndarray:
    """'-3:3:7' (inclusive linspace, at most 1,000 values) or '-2,0,2' -> float32 ``[S]``, every value finite."""
    fields = text.split(":") if ":" in text else [v.strip() for v in text.split(",") if v.strip()]
    linspace = ":" in text and len(fields) == 3 and fields[2].isdigit() and 0 < int(fields[2]) <= 1000
    numbers = fields[:2] if linspace else fields
    if not numbers or (":" in text and not linspace) or not all(NUMBER.fullmatch(v.strip()) for v in numbers):
        raise UsageError(f"--strengths {text[:80]!r}: expected finite START:STOP:NUM (e.g. -3:3:7, NUM <= 1000) or "
                         "a list (e.g. -2,0,2)")
    values = [float(v) for v in numbers]
    out = np.linspace(values[0], values[1], int(fields[2])) if linspace else np.asarray(values)
    if not np.all(np.isfinite(out)):
        raise UsageError(f"--strengths {text[:80]!r}: values must be finite")
    return out.astype(np.float32)


def check_positive(flag: str, value: float | int | None) -> None:
    """A count or size flag must be a finite number > 0."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise UsageError(f"{flag} {value}: must be positive")


def check_outputs(flag: str, paths, force: bool, folder: str | Path | None = None, folders=()) -> None:
    """Before any work: ``folder`` (``flag``'s value, when it names one) is a folder or absent, and each existing
    file of ``paths`` (and in ``folders``) may be replaced: ``--force`` and jaxedit wrote it
    (:func:`jaxedit.io.files.check_replaceable`)."""
    if folder is not None and Path(folder).exists() and not Path(folder).is_dir():
        raise UsageError(f"{flag} {folder}: exists and is not a directory")
    files.check_replaceable([p for p in paths if p], force, flag, folders)


def load_arrays(path: str, what: str) -> dict[str, np.ndarray]:
    """A ``.npy`` (as ``{'': array}``) or ``.npz`` file from a flag, headers checked first (:mod:`jaxedit.io.arrays`)."""
    if not Path(path).is_file():
        raise UsageError(f"{what} {path}: no such file")
    return arrays.load(path, what, UsageError)


def load_npy(path: str, what: str, shape: tuple[int | None, ...]) -> np.ndarray:
    """A ``.npy`` array of the given shape (``None``: any size) as float32; errors name ``what`` and the file."""
    a = load_arrays(path, what).get("")
    if a is None:
        raise UsageError(f"{what} {path}: an .npz archive, expected one .npy array")
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise UsageError(f"{what} {path}: shape {list(a.shape)}, expected {want}")
    return a.astype(np.float32)


def inverted_latents(path: str, G, what: str = "--latents") -> tuple[np.ndarray, list[str]]:
    """W+ latents ``ws [N, num_ws, w_dim]`` (float32, 1 <= N <= MAX_SEEDS, all finite) and one name per row, from
    ``jaxedit invert``'s ``latents.npz`` (arrays ``ws`` and optional ``names``) or a ``.npy`` ``[N, num_ws, w_dim]``
    (rows named ``image i``); every problem is one UsageError naming ``what`` and the file."""
    want = (G.cfg.num_ws, G.cfg.w_dim)
    z = load_arrays(path, what)
    if "" not in z and "ws" not in z:
        raise UsageError(f"{what} {path}: no 'ws' array (has {sorted(z)[:8]})")
    ws, names = (z[""], None) if "" in z else (z["ws"], z.get("names"))
    ok_names = names is None or (names.ndim == 1 and ws.ndim >= 1 and len(names) == len(ws))
    if ws.ndim != 3 or ws.shape[1:] != want or ws.dtype.kind not in "fiu" or not ok_names:
        each = f" with one name each (names {list(names.shape)})" if names is not None else ""
        raise UsageError(f"{what} {path}: ws {list(ws.shape)} ({ws.dtype}), expected numbers [N, {want[0]}, {want[1]}]"
                         + each)
    ws = ws.astype(np.float32)
    if not 0 < len(ws) <= MAX_SEEDS or not np.all(np.isfinite(ws)):
        raise UsageError(f"{what} {path}: {len(ws)} latents, need 1..{MAX_SEEDS:,}, all finite")
    names = [f"image {i}" for i in range(len(ws))] if names is None else [str(n) for n in names]
    return ws, names


def model_path(path: str | None, default: str) -> Path:
    """The checkpoint a command uses: ``path`` if given (a folder, or a default model's name), else the embedded
    default model ``default``."""
    return checkpoint.resolve(path) if path else checkpoint.default_path(default)


def load_generator(path: str | None, *, unconditional: str | None = None):
    """``(G, params)`` of ``path`` or the default generator; with ``unconditional`` (the command's name),
    a conditional generator is refused."""
    enable_compilation_cache()
    G, params = models.load_generator(model_path(path, DEFAULT_GENERATOR))
    if unconditional and G.cfg.c_dim:
        raise UsageError(f"{unconditional}: conditional generators are not supported yet")
    return G, params


def require_stylegan2(G, what: str) -> None:
    """StyleSpace channel edits and layer weight shifts are defined on StyleGAN2's modulated convs only."""
    if not isinstance(G, stylegan2.StyleGAN2):
        raise UsageError(f"{what}: needs a StyleGAN2 generator (StyleSpace channels and layer weights of StyleGAN2's "
                         f"modulated convs); this one is {type(G).__name__}")


def strength_labels(strengths) -> list[str]:
    """Column labels of a strength sweep: ``['-3', '-1.5', '0', '+1.5', '+3']``."""
    return ["0" if float(t) == 0 else f"{float(t):+.3g}" for t in strengths]


def text_label(text: str, width: int = 22) -> str:
    """A prompt shortened to fit a grid label."""
    return text if len(text) <= width else text[:width - 3] + "..."
