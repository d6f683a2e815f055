"""Image I/O at the library's edges: float32 NHWC in [-1, 1] inside, uint8 PNG outside."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from einops import rearrange
from PIL import Image

from jaxedit.io.files import atomic_path


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[..., C] float in [-1, 1] -> uint8 in [0, 255] (clipped, rounded)."""
    x = (np.asarray(images, np.float32) + 1.0) * 127.5
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def from_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 [..., C] -> float32 in [-1, 1]."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


def grid(images: np.ndarray, cols: int | None = None, pad: int = 2, pad_value: int = 255) -> np.ndarray:
    """Tile ``[N, H, W, C]`` images (float in [-1, 1] or uint8) into one uint8 ``[rows*H, cols*W, C]``."""
    imgs = images if images.dtype == np.uint8 else to_uint8(images)
    n, h, w, c = imgs.shape
    cols = cols or math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    cells = np.full((rows * cols, h + pad, w + pad, c), pad_value, np.uint8)  # image + its bottom/right margin
    cells[:n, :h, :w] = imgs
    tiled = rearrange(cells, "(r q) h w c -> (r h) (q w) c", r=rows)
    return np.pad(tiled, ((pad, 0), (pad, 0), (0, 0)), constant_values=pad_value)


def save_png(array: np.ndarray, path: str | Path, upscale: int = 1) -> Path:
    """Write a uint8 ``[H, W, C]`` array (C = 1 or 3) as PNG (atomically), optionally nearest-upscaled."""
    a = np.asarray(array)
    if upscale > 1:
        a = a.repeat(upscale, axis=0).repeat(upscale, axis=1)
    if a.shape[-1] == 1:
        a = a[..., 0]
    with atomic_path(path) as tmp:
        Image.fromarray(a).save(tmp, format="PNG")
    return Path(path)


def save_grid(images: np.ndarray, path: str | Path, cols: int | None = None, min_cell: int = 128) -> Path:
    """Save ``[N, H, W, C]`` images as a PNG grid; small images are upscaled to about ``min_cell`` px."""
    upscale = max(1, min_cell // images.shape[1])
    return save_png(grid(images, cols), path, upscale)
