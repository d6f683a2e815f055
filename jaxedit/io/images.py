"""Image I/O at the library's edges: float32 NHWC in [-1, 1] inside, uint8 PNG outside."""

from __future__ import annotations

import math
import struct
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
from einops import rearrange
from PIL import Image, ImageDraw, ImageFont, ImageOps

from jaxedit.errors import InputError
from jaxedit.io.files import atomic_path


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[..., C] float in [-1, 1] -> uint8 in [0, 255] (clipped, rounded)."""
    x = (np.asarray(images, np.float32) + 1.0) * 127.5
    return np.clip(np.rint(x), 0, 255).astype(np.uint8)


def from_uint8(images: np.ndarray) -> np.ndarray:
    """uint8 [..., C] -> float32 in [-1, 1]."""
    return np.asarray(images, np.float32) / 127.5 - 1.0


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif")  # read as images by suffix
MAX_IMAGE_SIDE = 16384  # larger sides are refused before any pixel is decoded (decompression bombs)
MAX_IMAGE_FILES = 100_000  # one command's input images (a bigger job is a batch job)


def image_files(folder: str | Path) -> list[Path]:
    """A folder's image files (by :data:`IMAGE_SUFFIXES`, any case), sorted by name; subfolders are not read and
    nothing is decoded."""
    return sorted(q for q in Path(folder).iterdir() if q.is_file() and q.suffix.lower() in IMAGE_SUFFIXES)


def image_size(path: str | Path) -> tuple[int, int]:
    """``(width, height)`` from an image file's header (no pixels decoded); one-line errors as :func:`load_image`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            return im.size
    except (Image.UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: not a readable image ({type(e).__name__})") from None


def load_image(path: str | Path, size: int) -> tuple[np.ndarray, bool]:
    """An image file (PNG, JPEG, ... as Pillow reads them) -> ``([size, size, 3] float32 in [-1, 1], resized)``.

    The header is checked before decoding (at most :data:`MAX_IMAGE_SIDE` a side); EXIF rotation is applied;
    grayscale, palette, 16-bit, CMYK and alpha images become RGB (alpha over white); a non-square image is
    centre-cropped to a square, and any other size is resized (Lanczos) to ``size``. Unreadable or truncated
    files are one-line :class:`~jaxedit.errors.InputError` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such image file")
    try:
        with Image.open(path) as im:
            w, h = im.size
            if not (0 < w <= MAX_IMAGE_SIDE and 0 < h <= MAX_IMAGE_SIDE):
                raise InputError(f"{path}: image is {w}x{h}; at most {MAX_IMAGE_SIDE} a side is read")
            im.load()  # decodes; truncated or corrupt data raises OSError here
            im = ImageOps.exif_transpose(im)  # camera rotation, as viewers show the photo
            w, h = im.size
            rgb = _to_rgb(im)
    except (Image.UnidentifiedImageError, Image.DecompressionBombError) as e:
        raise InputError(f"{path}: not a readable image ({type(e).__name__})") from None
    except OSError as e:  # Pillow's documented error for truncated / corrupt image data
        raise InputError(f"{path}: cannot decode the image ({e})") from None
    side = min(w, h)
    if w != h:
        left, top = (w - side) // 2, (h - side) // 2
        rgb = rgb.crop((left, top, left + side, top + side))
    resized = side != size
    if resized:
        rgb = rgb.resize((size, size), Image.Resampling.LANCZOS)
    return from_uint8(np.asarray(rgb, np.uint8)), resized or w != h


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: 16/32-bit integer images rescaled from their range (not clipped), alpha
    composited on white, palette / grayscale / CMYK converted."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        a = np.asarray(im, np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return Image.fromarray(np.clip(np.rint(a / top * 255), 0, 255).astype(np.uint8)).convert("RGB")
    if im.mode in ("RGBA", "LA", "PA") or (im.mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im.convert("RGB")


def load_images(paths: Sequence[str | Path], size: int) -> tuple[np.ndarray, int]:
    """Image files -> ``([N, size, size, 3] float32 in [-1, 1], how many were cropped or resized)``."""
    if len(paths) > MAX_IMAGE_FILES:
        raise InputError(f"{len(paths)} images: at most {MAX_IMAGE_FILES} per command")
    loaded = [load_image(p, size) for p in paths]
    return np.stack([a for a, _ in loaded]), sum(r for _, r in loaded)


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


def save_png(array: np.ndarray, path: str | Path, upscale: int = 1, *, note: bool = True) -> Path:
    """Write a uint8 ``[H, W, C]`` array (C = 1 or 3) as PNG (atomically), optionally nearest-upscaled; ``note``:
    :func:`jaxedit.io.files.atomic_path`'s (``False`` when a loop notes its files at once)."""
    a = np.asarray(array)
    if upscale > 1:
        a = a.repeat(upscale, axis=0).repeat(upscale, axis=1)
    if a.shape[-1] == 1:
        a = a[..., 0]
    with atomic_path(path, note=note) as tmp:
        Image.fromarray(a).save(tmp, format="PNG")
    return Path(path)


# ------------------------------------------------------------------------------ fast PNG bytes
PNG_COLOR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}  # channels -> PNG colour type (grey, grey+alpha, RGB, RGBA)


def _png_chunk(tag: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))


def encode_pngs(img: np.ndarray) -> list[bytes]:
    """uint8 images ``[N, H, W, C]`` -> PNG files (8-bit, the "Up" row filter, zlib level 1).

    The batch engine's encoder (:mod:`jaxedit.batch`): 2-3x faster than PIL's default here (60 vs 200 us per
    32 px image; zlib releases the GIL, so writer threads run beside the next shard's compute) for ~20 % larger
    files; lossless. Bytes only: the caller writes them (atomically)."""
    n, h, w, c = img.shape
    rows = img.reshape(n, h, w * c)
    up = rows.copy()
    up[:, 1:] -= rows[:, :-1]  # uint8 wrap-around, as PNG's filter arithmetic
    data = np.concatenate([np.full((n, h, 1), 2, np.uint8), up], axis=2)
    head = b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, PNG_COLOR_TYPES[c], 0, 0, 0))
    tail = _png_chunk(b"IEND", b"")
    return [head + _png_chunk(b"IDAT", zlib.compress(data[i].tobytes(), 1)) + tail for i in range(n)]


def label(grid_image: np.ndarray, cell: tuple[int, int], origin: int, row_labels=(), col_labels=(),
          pad_value: int = 255) -> np.ndarray:
    """Add a left margin with ``row_labels`` and a top margin with ``col_labels`` to a grid image
    ``[H, W, C]`` uint8 whose cells are ``cell = (height, width)`` px apart from ``origin``."""
    font = ImageFont.load_default()
    measure = ImageDraw.Draw(Image.new("L", (1, 1)))
    text_w = max((measure.textbbox((0, 0), t, font=font)[2] for t in row_labels), default=0)
    text_h = max((measure.textbbox((0, 0), t, font=font)[3] for t in [*row_labels, *col_labels]), default=0)
    left = text_w + 8 if row_labels else 0
    top = text_h + 6 if col_labels else 0
    h, w, c = grid_image.shape
    canvas = Image.new("RGB", (w + left, h + top), (pad_value,) * 3)
    canvas.paste(Image.fromarray(grid_image if c == 3 else np.repeat(grid_image, 3, axis=-1)), (left, top))
    draw = ImageDraw.Draw(canvas)
    for i, t in enumerate(row_labels):
        draw.text((4, top + origin + i * cell[0] + cell[0] // 2), t, fill=(0, 0, 0), font=font, anchor="lm")
    for j, t in enumerate(col_labels):
        draw.text((left + origin + j * cell[1] + cell[1] // 2, 3), t, fill=(0, 0, 0), font=font, anchor="mt")
    return np.asarray(canvas)


def save_grid(images: np.ndarray, path: str | Path, cols: int | None = None, min_cell: int = 128,
              row_labels: Sequence[str] = (), col_labels: Sequence[str] = ()) -> Path:
    """Save ``[N, H, W, C]`` images as a PNG grid, optionally labelled (rows: e.g. seeds; columns:
    e.g. strengths or prompts); small images are upscaled to about ``min_cell`` px."""
    n, h, w = images.shape[:3]
    upscale = max(1, min_cell // h)
    pad = 2
    tiled = grid(images, cols, pad=pad)
    if not row_labels and not col_labels:
        return save_png(tiled, path, upscale)
    big = tiled.repeat(upscale, axis=0).repeat(upscale, axis=1)
    return save_png(label(big, ((h + pad) * upscale, (w + pad) * upscale), pad * upscale, row_labels, col_labels),
                    path)


# ------------------------------------------------------------------------------ label maps
LABEL_PALETTE = np.array([[0, 0, 0], [128, 128, 128], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200],
                          [245, 130, 48], [145, 30, 180], [70, 240, 240], [240, 50, 230]], np.uint8)


def save_labels(labels: np.ndarray, path: str | Path, *, note: bool = True) -> Path:
    """A label map ``[H, W]`` of class indices 0..255 as a palette PNG (pixel value = class; colours for looking)."""
    a = np.asarray(labels)
    if a.ndim != 2 or a.min(initial=0) < 0 or a.max(initial=0) > 255:
        raise InputError(f"{path}: a label map must be [H, W] of classes 0..255, got {list(a.shape)}")
    im = Image.fromarray(a.astype(np.uint8), mode="P")
    pal = np.resize(LABEL_PALETTE, (256, 3))
    im.putpalette(pal.reshape(-1).tolist())
    with atomic_path(path, note=note) as tmp:
        im.save(tmp, format="PNG")
    return Path(path)


def load_labels(path: str | Path, size: int, num_classes: int) -> np.ndarray:
    """A label map PNG (palette or grayscale: pixel value = class, as :func:`save_labels` writes) -> int32
    ``[size, size]``; wrong size, colour images and classes >= ``num_classes`` are one-line errors."""
    path = Path(path)
    w, h = image_size(path)
    if (w, h) != (size, size):
        raise InputError(f"{path}: label map is {w}x{h}, the generator makes {size}x{size}")
    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise InputError(f"{path}: a label map must be a palette or grayscale PNG of class indices, "
                                 f"not mode {im.mode}")
            a = np.asarray(im, dtype=np.int32)
    except OSError as e:
        raise InputError(f"{path}: cannot decode ({e})") from None
    if a.max(initial=0) >= num_classes:
        raise InputError(f"{path}: holds class {int(a.max())}, the segmenter knows 0..{num_classes - 1}")
    return a
