"""Host-side image loaders: a folder tree of PNG/JPEG files, or a prepared TFDS dataset (array_record).

Both return plain Python iterators of numpy batches ``[B, R, R, 3]`` float32 in [-1, 1] (uint8 ->
float only at the edge, :func:`jaxedit.io.images.from_uint8`); put them on devices with
``jaxedit.parallel.shard_batch``. Each image is converted to RGB, centre-cropped to a square
(the largest centred square; odd leftovers go to the right/bottom) and resized with PIL to
``R x R`` (Lanczos by default; an image already ``R x R`` is passed through untouched). The order is
a permutation drawn from ``numpy.random.default_rng([seed, epoch])`` (the sorted order when
``shuffle=False``), so a seed fixes every batch. Decoding runs on ``num_threads`` threads with
one batch in flight ahead of the consumer.

Only :func:`tfds_directory` needs the ``data`` extra (``tensorflow-datasets``, ``array-record``);
it imports ``tensorflow_datasets`` on call and never TensorFlow.
"""

from __future__ import annotations

import collections
import io
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from jaxedit.errors import InputError
from jaxedit.io.images import from_uint8

#: File suffixes (lower case) that :func:`image_folder` reads; everything else is ignored.
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

_RESAMPLE = ("nearest", "bilinear", "bicubic", "lanczos", "box", "hamming")


def _default_threads() -> int:
    return max(1, min(8, os.cpu_count() or 1))


# --------------------------------------------------------------------------------------------
# per-image processing


def _resample(name: str):
    if name not in _RESAMPLE:
        raise InputError(f"resample must be one of {_RESAMPLE}, got {name!r}")
    return getattr(Image.Resampling, name.upper())


def crop_resize(image, resolution: int, resample: str = "lanczos") -> np.ndarray:
    """PIL image or uint8 array ``[H, W]`` / ``[H, W, C]`` -> uint8 ``[R, R, 3]``: RGB, centre
    square crop, PIL resize (skipped when already ``R x R``)."""
    im = image if isinstance(image, Image.Image) else Image.fromarray(_as_hwc(np.asarray(image)))
    if im.mode != "RGB":
        im = im.convert("RGB")
    w, h = im.size
    if w != h:
        side = min(w, h)
        left, top = (w - side) // 2, (h - side) // 2
        im = im.crop((left, top, left + side, top + side))
    if im.size != (resolution, resolution):
        im = im.resize((resolution, resolution), _resample(resample))
    return np.asarray(im, dtype=np.uint8)


def _as_hwc(a: np.ndarray) -> np.ndarray:
    if a.dtype != np.uint8:
        raise InputError(f"expected uint8 images, got {a.dtype}")
    if a.ndim == 3 and a.shape[-1] == 1:
        a = a[..., 0]
    if a.ndim == 3 and a.shape[-1] not in (3, 4):
        raise InputError(f"expected 1, 3 or 4 channels, got image of shape {a.shape}")
    return a


def _decode(data_or_path, resolution: int, resample: str, what: str) -> np.ndarray:
    """Decode a file path or encoded bytes with PIL and crop/resize; errors name ``what``."""
    src = io.BytesIO(data_or_path) if isinstance(data_or_path, bytes) else data_or_path
    try:
        with Image.open(src) as im:
            im.load()
            return crop_resize(im, resolution, resample)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"cannot decode {what}: {type(e).__name__}: {e}") from e


# --------------------------------------------------------------------------------------------
# batching


def _index_batches(n: int, batch: int, seed: int, shuffle: bool, drop_remainder: bool,
                   epochs: int | None) -> Iterator[np.ndarray]:
    epoch = 0
    while epochs is None or epoch < epochs:
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        stop = n - n % batch if drop_remainder else n
        for start in range(0, stop, batch):
            yield order[start:start + batch]
        epoch += 1


def _check_batching(n: int, resolution: int, batch: int, drop_remainder: bool, epochs: int | None,
                    what: str) -> None:
    if resolution < 1:
        raise InputError(f"resolution must be >= 1, got {resolution}")
    if batch < 1:
        raise InputError(f"batch must be >= 1, got {batch}")
    if epochs is not None and epochs < 1:
        raise InputError(f"epochs must be >= 1 or None (forever), got {epochs}")
    if drop_remainder and n < batch:
        raise InputError(f"{what} has {n} images, fewer than one batch of {batch} (drop_remainder=True)")


def _pipelined(index_batches: Iterator[np.ndarray], load_batch: Callable[[np.ndarray, Callable], Any],
               num_threads: int) -> Iterator[Any]:
    """Run ``load_batch(indices, map_fn)`` for each index batch, one batch ahead of the consumer."""
    if num_threads <= 1:
        for idx in index_batches:
            yield load_batch(idx, lambda f, xs: [_Done(f(x)) for x in xs]).result()
        return
    with ThreadPoolExecutor(num_threads, thread_name_prefix="jaxedit-data") as pool:
        pmap = lambda f, xs: [pool.submit(f, x) for x in xs]
        pending = collections.deque()
        for idx in index_batches:
            pending.append(load_batch(idx, pmap))
            if len(pending) > 1:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()


class _Done:
    """An already computed value with the ``Future.result`` interface."""

    def __init__(self, value):
        self.value = value

    def result(self):
        return self.value


class _Batch:
    """A batch being assembled: per-image futures plus a finishing step."""

    def __init__(self, parts: list, finish: Callable[[list], Any]):
        self.parts, self.finish = parts, finish

    def result(self):
        return self.finish([p.result() for p in self.parts])


# --------------------------------------------------------------------------------------------
# folder of images


def list_images(path: str | os.PathLike) -> list[Path]:
    """All ``IMAGE_SUFFIXES`` files under ``path`` (recursive, following symlinks, hidden files and
    folders skipped), sorted by their relative POSIX path. Raises ``InputError`` naming the
    folder when it is missing or holds no image."""
    root = Path(path).expanduser()
    if not root.is_dir():
        raise InputError(f"image folder {str(root)!r} does not exist or is not a directory")
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_SUFFIXES:
                found.append(Path(dirpath, name))
    if not found:
        raise InputError(
            f"image folder {str(root)!r} contains no image files ({', '.join(IMAGE_SUFFIXES)}, searched recursively)")
    return sorted(found, key=lambda p: p.relative_to(root).as_posix())


def image_folder(path: str | os.PathLike, resolution: int, batch: int, seed: int = 0, shuffle: bool = True,
                 drop_remainder: bool = True, *, epochs: int | None = 1, resample: str = "lanczos",
                 num_threads: int | None = None) -> Iterator[np.ndarray]:
    """Iterate ``[batch, resolution, resolution, 3]`` float32 batches in [-1, 1] from the PNG/JPEG
    files under ``path`` (see :func:`list_images`; other files are ignored).

    ``epochs``: passes over the folder (``None`` = forever), each in a fresh ``seed``-determined
    order. ``drop_remainder=False`` yields a final smaller batch per epoch. The folder is listed and
    checked when this is called (``InputError`` when missing or empty, or when it
    holds fewer than ``batch`` images with ``drop_remainder``); a file that fails to decode raises a
    ``ValueError`` naming the file and the folder when its batch is loaded.
    """
    files = list_images(path)
    root = Path(path).expanduser()
    _check_batching(len(files), resolution, batch, drop_remainder, epochs, f"image folder {str(root)!r}")
    _resample(resample)
    load = lambda f: _decode(f, resolution, resample, f"image file {str(f)!r} in image folder {str(root)!r}")

    def load_batch(idx, pmap):
        return _Batch(pmap(load, [files[i] for i in idx]), lambda imgs: from_uint8(np.stack(imgs)))

    return _pipelined(_index_batches(len(files), batch, seed, shuffle, drop_remainder, epochs), load_batch,
                      _default_threads() if num_threads is None else num_threads)


# --------------------------------------------------------------------------------------------
# prepared TFDS dataset (array_record, no TensorFlow)


def _import_tfds():
    try:
        import tensorflow_datasets as tfds
    except ImportError as e:
        raise InputError("tfds_directory needs tensorflow-datasets and array-record: pip install 'jaxedit[data]'") from e
    return tfds


def _collate(values: list) -> Any:
    first = values[0]
    if isinstance(first, dict):
        return {k: _collate([v[k] for v in values]) for k in first}
    if isinstance(first, (bytes, str)):
        return [v.decode() if isinstance(v, bytes) else v for v in values]
    return np.stack([np.asarray(v) for v in values])


def _tfds_builder(tfds, name: str, data_dir):
    if data_dir is None and Path(name).expanduser().is_dir():
        return tfds.builder_from_directory(Path(name).expanduser())
    where = f"data_dir {str(data_dir)!r}" if data_dir is not None else "the default TFDS data_dir"
    try:
        builder = tfds.builder(name, data_dir=None if data_dir is None else os.fspath(Path(data_dir).expanduser()))
    except tfds.core.registered.DatasetNotFoundError as e:  # its message lists the whole catalog
        raise InputError(f"no TFDS dataset {name!r} in {where}: {str(e).splitlines()[0]}") from None
    if not builder.is_prepared():
        raise InputError(
            f"TFDS dataset {name!r} is not prepared in {where} (expected {str(builder.data_path)!r}); prepare it "
            "offline with builder.download_and_prepare(file_format='array_record', download_config="
            "tfds.download.DownloadConfig(manual_dir=...)) or `tfds build --file_format=array_record`")
    return builder


def tfds_directory(name: str, data_dir: str | os.PathLike | None, split: str, resolution: int, batch: int,
                   seed: int = 0, shuffle: bool = True, drop_remainder: bool = True, *,
                   epochs: int | None = 1, image_key: str = "image", keys: Sequence[str] = (),
                   resample: str = "lanczos", num_threads: int | None = None) -> Iterator[Any]:
    """Iterate batches from a TFDS dataset prepared in the array_record format, without TensorFlow.

    ``name``: ``'dataset[/config][:version]'`` as for ``tfds.data_source`` (e.g.
    ``'celeb_a_hq/256'``, ``'jaxedit_shapes32/r32'``); read from ``data_dir`` (``None`` = TFDS
    default) through ``builder.as_data_source`` (random access; the builder's code is not needed).
    With ``data_dir=None`` and ``name`` an existing directory ``<data_dir>/<name>/<config>/<version>``,
    that prepared directory is read. ``split`` accepts TFDS slicing (``'train[:90%]'``).

    Yields ``[batch, R, R, 3]`` float32 in [-1, 1] from feature ``image_key`` (encoded bytes decoded
    with PIL, cropped and resized as :func:`image_folder` does), or, when ``keys`` names further
    features, a dict with that ``'image'`` batch plus those features as TFDS decodes them, stacked
    (numpy arrays; text as lists of ``str``; nested dicts kept; not resized).
    """
    tfds = _import_tfds()
    builder = _tfds_builder(tfds, name, data_dir)
    features = builder.info.features
    keys = [k for k in keys if k != image_key]
    for k in (image_key, *keys):
        if k not in features:
            raise InputError(f"TFDS dataset {name!r} has no feature {k!r}; features: {sorted(features)}")
    if not isinstance(features[image_key], tfds.features.Image):
        raise InputError(f"feature {image_key!r} of TFDS dataset {name!r} is {type(features[image_key]).__name__}, "
                         "not an Image; pass image_key=")
    _resample(resample)
    try:
        source = builder.as_data_source(split=split, decoders={image_key: tfds.decode.SkipDecoding()})
    except NotImplementedError as e:
        raise InputError(
            f"TFDS dataset {name!r} at {str(builder.data_path)!r} is not stored as array_record "
            f"({builder.info.file_format}); re-prepare it with file_format='array_record' or convert it with "
            "`tfds convert_format --out_file_format=array_record` (reading other formats needs TensorFlow)") from e
    what = f"split {split!r} of TFDS dataset {name!r} at {str(builder.data_path)!r}"
    n = len(source)
    _check_batching(n, resolution, batch, drop_remainder, epochs, what)
    load = lambda data: _decode(data, resolution, resample, f"feature {image_key!r} of an example in {what}")

    def load_batch(idx, pmap):
        examples = source.__getitems__([int(i) for i in idx])
        parts = pmap(load, [ex[image_key] for ex in examples])

        def finish(imgs):
            image = from_uint8(np.stack(imgs))
            if not keys:
                return image
            return {"image": image, **{k: _collate([ex[k] for ex in examples]) for k in keys}}

        return _Batch(parts, finish)

    return _pipelined(_index_batches(n, batch, seed, shuffle, drop_remainder, epochs), load_batch,
                      _default_threads() if num_threads is None else num_threads)
