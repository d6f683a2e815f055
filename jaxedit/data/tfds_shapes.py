"""TFDS builder for the procedural shapes world (:mod:`jaxedit.data.shapes`), in array_record.

Importing this module imports ``tensorflow_datasets`` (install with ``pip install 'jaxedit[data]'``);
``import jaxedit`` never does. Preparing and reading need no TensorFlow: images and label maps
are PNG-encoded with PIL before they reach TFDS, examples are serialized with TFDS's own protos,
the files are written as array_record, and reading goes through ``as_data_source`` /
``tfds.data_source`` (random access, numpy, PIL decoding)::

    from jaxedit.data import tfds_shapes   # registers the builder "jaxedit_shapes32"
    builder = tfds_shapes.JaxeditShapes32(config="r32", data_dir="~/tensorflow_datasets")
    builder.download_and_prepare()         # renders; no network, no TensorFlow
    train = builder.as_data_source("train")          # or tfds.data_source("jaxedit_shapes32/r32", ...)
    train[0]["image"]                                 # uint8 [32, 32, 3]

or from a shell: ``python -m jaxedit.data.tfds_shapes --data_dir DIR --config r32``.

Determinism: example ``i`` of a split with seed ``s`` (``train_seed``, ``test_seed`` of the
config) is row ``i % block`` of ``shapes.sample(block_key(s, i // block), block, cfg)`` with
``cfg = config.shapes_config()``; its caption is entry ``i % block`` of
``shapes.captions(factors, caption_seed(s, i // block))`` for that block. Every block is rendered
at its full size (so a smaller split is a prefix of a larger one with the same seed and block),
and records are written in index order (``disable_shuffling``): record ``i`` is example ``i``.
The renderer is fixed to 65536-pixel chunks on every backend, so a backend only changes pixels
through its own float32 math (possible one-step uint8 differences between CPU and GPU).

Features (``R`` = resolution)::

    image    Image uint8 [R, R, 3] (PNG)      jaxedit.io.images.to_uint8(sample["image"])
    labels   Image uint8 [R, R, 1] (PNG)      label map {0 background, 1 body, 2 spot}
    shape    ClassLabel (circle, square, triangle)
    vector   Tensor float32 [12]              shapes.factor_vector, columns shapes.FACTOR_NAMES
    factors  dict of float32 scalars          raw factors x, y, scale, rot, hue, bg_hue, spot_hue, spot_ratio
    caption  Text
    index    int64                            example index within the split
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import math

import jax
import numpy as np
from PIL import Image

from jaxedit.data import shapes
from jaxedit.io import images

try:
    import tensorflow_datasets as tfds
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "jaxedit.data.tfds_shapes needs tensorflow-datasets and array-record: pip install 'jaxedit[data]'"
    ) from e

NAME = "jaxedit_shapes32"
#: Raw continuous factors stored under ``factors`` (``shape`` is stored as a ClassLabel).
FLOAT_FACTORS: tuple[str, ...] = ("x", "y", "scale", "rot", "hue", "bg_hue", "spot_hue", "spot_ratio")
#: Fixed render chunk (pixels) so the rendered program does not depend on the backend default.
CHUNK_PIXELS = 1 << 16


def block_key(seed: int, block_index: int):
    """PRNG key of block ``block_index`` of the split with seed ``seed``."""
    return jax.random.fold_in(jax.random.key(seed), block_index)


def caption_seed(seed: int, block_index: int) -> int:
    """Seed of ``shapes.captions`` for block ``block_index`` of the split with seed ``seed``."""
    return seed * (1 << 32) + block_index


@dataclasses.dataclass(eq=False)
class ShapesBuilderConfig(tfds.core.BuilderConfig):
    """Resolution, split sizes and seeds of one prepared variant of the shapes world."""
    resolution: int = 32
    supersample: int = 4
    train_size: int = 50_000
    test_size: int = 10_000
    train_seed: int = 0
    test_seed: int = 1
    block: int = 256

    def shapes_config(self):
        return shapes.ShapesConfig(resolution=self.resolution, supersample=self.supersample,
                                   chunk_pixels=CHUNK_PIXELS)

    def split_spec(self) -> dict[str, tuple[int, int]]:
        """``{split: (size, seed)}``."""
        return {"train": (self.train_size, self.train_seed), "test": (self.test_size, self.test_seed)}


def _config(name, resolution, train, test, description):
    return ShapesBuilderConfig(name=name, resolution=resolution, train_size=train, test_size=test,
                               description=description)


class JaxeditShapes32(tfds.core.GeneratorBasedBuilder):
    """The jaxedit procedural shapes world: one anti-aliased object with a spot on a plain background."""
    name = NAME
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}
    BUILDER_CONFIG_CLASS = ShapesBuilderConfig
    BUILDER_CONFIGS = [
        _config("r32", 32, 50_000, 10_000, "32x32, 50k train / 10k test."),
        _config("r64", 64, 50_000, 10_000, "64x64, 50k train / 10k test."),
        _config("r128", 128, 50_000, 10_000, "128x128, 50k train / 10k test."),
        _config("tiny", 32, 64, 16, "32x32, 64 train / 16 test (smoke tests)."),
    ]
    DEFAULT_CONFIG_NAME = "r32"

    def __init__(self, *, file_format=None, **kwargs):
        super().__init__(file_format=file_format or "array_record", **kwargs)

    def _info(self) -> tfds.core.DatasetInfo:
        r = self.builder_config.resolution
        f = tfds.features
        return tfds.core.DatasetInfo(
            builder=self,
            description=("The jaxedit procedural shapes world (jaxedit.data.shapes): one anti-aliased circle, "
                         "square or triangle with a central spot on a plain background, with its label map, "
                         "generative factors and a caption. Rendered locally, nothing is downloaded."),
            features=f.FeaturesDict({
                "image": f.Image(shape=(r, r, 3), encoding_format="png"),
                "labels": f.Image(shape=(r, r, 1), encoding_format="png"),
                "shape": f.ClassLabel(names=list(shapes.SHAPE_NAMES)),
                "vector": f.Tensor(shape=(len(shapes.FACTOR_NAMES),), dtype=np.float32),
                "factors": f.FeaturesDict({k: f.Scalar(dtype=np.float32) for k in FLOAT_FACTORS}),
                "caption": f.Text(),
                "index": f.Scalar(dtype=np.int64),
            }),
            supervised_keys=("image", "shape"),
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download
        return {split: self._generate_examples(size, seed)
                for split, (size, seed) in self.builder_config.split_spec().items()}

    def _generate_examples(self, size: int, seed: int):
        for block_index in range(math.ceil(size / self.builder_config.block)):
            yield from render_block(self.builder_config, seed, block_index, size)


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def render_block(config: ShapesBuilderConfig, seed: int, block_index: int, size: int | None = None):
    """Yield ``(index, example)`` for block ``block_index`` of a split (at most ``size`` in total)."""
    block = config.block
    out = jax.device_get(shapes.sample(block_key(seed, block_index), block, config.shapes_config()))
    image = images.to_uint8(out["image"])
    labels = np.asarray(out["labels"], np.uint8)
    factors = {k: np.asarray(v) for k, v in out["factors"].items()}
    texts = shapes.captions(factors, caption_seed(seed, block_index), config.shapes_config())
    start = block_index * block
    stop = start + block if size is None else min(start + block, size)
    for i in range(start, stop):
        j = i - start
        yield i, {
            "image": _png(image[j]),
            "labels": _png(labels[j]),
            "shape": int(factors["shape"][j]),
            "vector": np.asarray(out["vector"][j], np.float32),
            "factors": {k: np.float32(factors[k][j]) for k in FLOAT_FACTORS},
            "caption": texts[j],
            "index": i,
        }


def main(argv=None):
    p = argparse.ArgumentParser(description=f"Prepare the {NAME} TFDS dataset (array_record, no TensorFlow).")
    p.add_argument("--data_dir", required=True)
    p.add_argument("--config", default=JaxeditShapes32.DEFAULT_CONFIG_NAME,
                   choices=[c.name for c in JaxeditShapes32.BUILDER_CONFIGS])
    args = p.parse_args(argv)
    builder = JaxeditShapes32(config=args.config, data_dir=args.data_dir)
    builder.download_and_prepare()
    print(builder.data_dir)


if __name__ == "__main__":
    main()
