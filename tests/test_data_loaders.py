"""Host data loaders: image folders (PNG/JPEG trees) and prepared TFDS datasets (array_record, no TF)."""

import itertools
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image

from jaxedit.data import folders, shapes
from jaxedit.errors import InputError
from jaxedit.io.images import from_uint8, to_uint8

N_PNG = 11


def _uint8(x):
    return to_uint8(np.asarray(x))


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    """A nested folder of 11 shapes PNGs (one RGBA), one JPEG and files that must be ignored.

    Returns (root, {relative posix path: uint8 RGB [32, 32, 3]} of the PNGs in sorted order, jpeg array).
    """
    root = tmp_path_factory.mktemp("images")
    imgs = _uint8(jax.device_get(shapes.sample(jax.random.key(7), N_PNG + 1, shapes.ShapesConfig()))["image"])
    rels = ["a/0.png", "a/1.png", "a/b/2.png", "a/b/3.png", "a/b/c/4.png", "c/5.png", "c/6.PNG",
            "d/7.png", "d/8.png", "e/9.png", "top.png"]
    expected = {}
    for rel, img in zip(rels, imgs):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel == "d/8.png":   # RGBA, fully opaque: decoded as its RGB
            Image.fromarray(np.concatenate([img, np.full_like(img[..., :1], 255)], -1), "RGBA").save(root / rel)
        else:
            Image.fromarray(img).save(root / rel)
        expected[rel] = img
    jpeg = imgs[N_PNG]
    Image.fromarray(jpeg).save(root / "c" / "photo.jpg", quality=95)
    (root / "a" / "notes.txt").write_text("not an image")
    (root / "e" / "data.npy").write_bytes(b"\x93NUMPY")
    (root / ".cache").mkdir()
    (root / ".cache" / "junk.png").write_bytes(b"not a png")     # hidden folder: skipped
    (root / "e" / "._9.png").write_bytes(b"AppleDouble")          # hidden file: skipped
    order = sorted([*expected, "c/photo.jpg"])
    return root, expected, jpeg, order


def _all(it):
    return np.concatenate(list(it))


def test_list_images_ignores_other_files(tree):
    root, expected, _, order = tree
    files = folders.list_images(root)
    assert [f.relative_to(root).as_posix() for f in files] == order
    assert len(files) == N_PNG + 1


def test_image_folder_exact_pixels_in_sorted_order(tree):
    root, expected, jpeg, order = tree
    batches = list(folders.image_folder(root, 32, batch=5, shuffle=False, drop_remainder=False))
    assert [b.shape for b in batches] == [(5, 32, 32, 3), (5, 32, 32, 3), (2, 32, 32, 3)]
    assert all(b.dtype == np.float32 for b in batches)
    got = np.concatenate(batches)
    assert got.min() >= -1.0 and got.max() <= 1.0
    for i, rel in enumerate(order):
        if rel.endswith(".jpg"):
            assert np.abs(_uint8(got[i]).astype(int) - jpeg).mean() < 4.0      # lossy, but the same image
        else:
            np.testing.assert_array_equal(got[i], from_uint8(expected[rel]))  # PNG round trip is exact
            np.testing.assert_array_equal(_uint8(got[i]), expected[rel])


def test_image_folder_deterministic_by_seed(tree):
    root, *_ = tree
    run = lambda seed, **kw: list(folders.image_folder(root, 32, batch=4, seed=seed, **kw))
    a, b, c = run(3), run(3), run(4)
    assert len(a) == 3                                                       # 12 images, drop_remainder
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))
    # one epoch is a permutation of the folder
    ref = _all(folders.image_folder(root, 32, batch=12, shuffle=False))
    key = lambda x: sorted(map(bytes, _uint8(x).reshape(len(x), -1)))
    assert key(np.concatenate(a)) == key(ref)
    assert not np.array_equal(np.concatenate(a), ref)
    # threads do not change the result
    for x, y in zip(a, run(3, num_threads=1)):
        np.testing.assert_array_equal(x, y)


def test_image_folder_drop_remainder_and_epochs(tree):
    root, *_ = tree
    assert [len(b) for b in folders.image_folder(root, 8, batch=5)] == [5, 5]
    assert [len(b) for b in folders.image_folder(root, 8, batch=5, drop_remainder=False)] == [5, 5, 2]
    two = list(folders.image_folder(root, 8, batch=6, seed=1, epochs=2))
    assert len(two) == 4
    assert not np.array_equal(np.concatenate(two[:2]), np.concatenate(two[2:]))   # reshuffled per epoch
    forever = folders.image_folder(root, 8, batch=6, seed=1, epochs=None)
    got = list(itertools.islice(forever, 7))
    for x, y in zip(got, two):
        np.testing.assert_array_equal(x, y)
    assert len(got) == 7


def test_image_folder_resizes(tree):
    root, expected, _, order = tree
    got = _all(folders.image_folder(root, 16, batch=4, shuffle=False))
    assert got.shape == (12, 16, 16, 3)
    for i, rel in enumerate(order):
        if rel.endswith(".jpg"):
            continue
        pil = np.asarray(Image.fromarray(expected[rel]).resize((16, 16), Image.Resampling.LANCZOS))
        np.testing.assert_array_equal(_uint8(got[i]), pil)
        pooled = expected[rel].reshape(16, 2, 16, 2, 3).mean((1, 3))
        assert np.abs(_uint8(got[i]) - pooled).mean() < 6.0
    up = next(folders.image_folder(root, 48, batch=2, shuffle=False, resample="bicubic"))
    assert up.shape == (2, 48, 48, 3)


def test_image_folder_center_crops(tmp_path):
    rng = np.random.default_rng(0)
    centre = rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)
    wide = np.zeros((24, 40, 3), np.uint8)
    wide[:, 8:32] = centre
    tall = np.full((41, 24, 3), 255, np.uint8)       # odd leftover: 8 rows above, 9 below
    tall[8:32] = centre
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray(tall).save(tmp_path / "tall.png")
    got = _all(folders.image_folder(tmp_path, 24, batch=2, shuffle=False))
    np.testing.assert_array_equal(_uint8(got[0]), centre)       # tall.png sorts first
    np.testing.assert_array_equal(_uint8(got[1]), centre)
    gray = rng.integers(0, 256, (24, 24), dtype=np.uint8)
    Image.fromarray(gray, "L").save(tmp_path / "zz_gray.png")
    got = _all(folders.image_folder(tmp_path, 24, batch=3, shuffle=False))
    np.testing.assert_array_equal(_uint8(got[2]), np.repeat(gray[..., None], 3, -1))


def test_image_folder_errors(tmp_path, tree):
    missing = tmp_path / "does_not_exist"
    with pytest.raises(InputError, match="does_not_exist"):
        folders.image_folder(missing, 32, batch=2)
    empty = tmp_path / "empty_folder"
    (empty / "sub").mkdir(parents=True)
    (empty / "sub" / "readme.txt").write_text("no images here")
    with pytest.raises(InputError, match="empty_folder.*no image files"):
        folders.image_folder(empty, 32, batch=2)
    root, *_ = tree
    with pytest.raises(ValueError, match="12 images, fewer than one batch of 13"):
        folders.image_folder(root, 32, batch=13)
    with pytest.raises(ValueError, match="resample"):
        folders.image_folder(root, 32, batch=2, resample="cubic")

    bad = tmp_path / "bad_folder"
    bad.mkdir()
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(bad / "good.png")
    (bad / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    it = folders.image_folder(bad, 8, batch=1, shuffle=False)     # listing succeeds; decoding fails
    with pytest.raises(ValueError, match=r"cannot decode image file .*broken\.png.* in image folder .*bad_folder"):
        list(it)
    truncated = tmp_path / "trunc_folder"
    truncated.mkdir()
    Image.fromarray(np.zeros((64, 64, 3), np.uint8) + 9).save(truncated / "t.jpg")
    data = (truncated / "t.jpg").read_bytes()
    (truncated / "t.jpg").write_bytes(data[: len(data) // 3])
    with pytest.raises(ValueError, match=r"t\.jpg.*trunc_folder"):
        next(folders.image_folder(truncated, 8, batch=1, num_threads=1))


def test_import_jaxedit_does_not_need_tfds():
    code = ("import sys, jaxedit, jaxedit.data.folders, jaxedit.data.shapes; "
            "assert 'tensorflow_datasets' not in sys.modules and 'tensorflow' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)


# --------------------------------------------------------------------------------------------
# TFDS (needs the data extra; never TensorFlow)

TFDS_REASON = "tensorflow-datasets / array-record not installed (pip install 'jaxedit[data]')"


class _HideTensorFlow:
    """Wraps a meta-path finder so that ``tensorflow`` looks not installed (``find_spec`` -> None)."""

    def __init__(self, finder):
        self._finder = finder

    def find_spec(self, name, path=None, target=None):
        if name == "tensorflow" or name.startswith("tensorflow."):
            return None
        find = getattr(self._finder, "find_spec", None)
        return find(name, path, target) if find else None

    def __getattr__(self, attr):
        return getattr(self._finder, attr)


def _block_tensorflow(mp):
    if "tensorflow" in sys.modules:
        pytest.skip("TensorFlow was already imported in this process; cannot check the TF-free path")
    mp.setattr(sys, "meta_path", [_HideTensorFlow(f) for f in sys.meta_path])


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    """The shapes builder prepared at 64 train / 16 test examples (2 blocks of 32) with TensorFlow blocked."""
    pytest.importorskip("tensorflow_datasets", reason=TFDS_REASON)
    pytest.importorskip("array_record", reason=TFDS_REASON)
    data_dir = tmp_path_factory.mktemp("tfds")
    with pytest.MonkeyPatch.context() as mp:
        _block_tensorflow(mp)                                # any `import tensorflow` now fails
        from jaxedit.data import tfds_shapes

        cfg = tfds_shapes.ShapesBuilderConfig(name="unittest", train_size=64, test_size=16, block=32)
        builder = tfds_shapes.JaxeditShapes32(config=cfg, data_dir=data_dir)
        builder.download_and_prepare()
        assert "tensorflow" not in sys.modules
    return tfds_shapes, data_dir, cfg


def _expected(seed, n, block):
    """What shapes.sample gives for the documented per-block keys (independent of the builder code)."""
    out = []
    for b in range(-(-n // block)):
        s = jax.device_get(shapes.sample(jax.random.fold_in(jax.random.key(seed), b), block,
                                         shapes.ShapesConfig(resolution=32, chunk_pixels=1 << 16)))
        s["caption"] = shapes.captions(s["factors"], seed * 2**32 + b)
        out.append(s)
    cat = lambda get: np.concatenate([get(s) for s in out])[:n]
    return dict(image=cat(lambda s: _uint8(s["image"])), labels=cat(lambda s: s["labels"]),
                vector=cat(lambda s: s["vector"]), caption=cat(lambda s: np.asarray(s["caption"])),
                factors={k: cat(lambda s: s["factors"][k]) for k in shapes.RAW_FACTOR_NAMES})


@pytest.mark.parametrize("split,seed,n", [("train", 0, 64), ("test", 1, 16)])
def test_tfds_shapes_round_trip(prepared, split, seed, n, monkeypatch):
    tfds_shapes, data_dir, cfg = prepared
    _block_tensorflow(monkeypatch)
    keys = ("labels", "vector", "factors", "shape", "caption", "index")
    batches = list(folders.tfds_directory("jaxedit_shapes32/unittest", data_dir, split, 32, batch=8, seed=0,
                                          shuffle=False, keys=keys))
    assert len(batches) == n // 8
    got = {k: (np.concatenate([b[k] for b in batches]) if k != "factors" else
               {f: np.concatenate([b[k][f] for b in batches]) for f in tfds_shapes.FLOAT_FACTORS})
           for k in ("image", *keys)}
    want = _expected(seed, n, cfg.block)
    assert got["image"].shape == (n, 32, 32, 3) and got["image"].dtype == np.float32
    np.testing.assert_array_equal(got["index"], np.arange(n))
    np.testing.assert_array_equal(_uint8(got["image"]), want["image"])
    np.testing.assert_array_equal(got["labels"][..., 0], want["labels"])
    np.testing.assert_array_equal(got["vector"], want["vector"])
    np.testing.assert_array_equal(got["shape"], want["factors"]["shape"])
    for f in tfds_shapes.FLOAT_FACTORS:
        np.testing.assert_array_equal(got["factors"][f], want["factors"][f])
    assert list(got["caption"]) == list(want["caption"])
    assert tfds_shapes.caption_seed(seed, 1) == seed * 2**32 + 1


def test_tfds_directory_shuffle_resize_and_data_source(prepared, monkeypatch):
    tfds_shapes, data_dir, cfg = prepared
    _block_tensorflow(monkeypatch)
    import tensorflow_datasets as tfds

    run = lambda seed, **kw: list(folders.tfds_directory("jaxedit_shapes32/unittest", data_dir, "train", 16,
                                                         batch=16, seed=seed, **kw))
    a, b, c = run(5), run(5), run(6)
    assert [x.shape for x in a] == [(16, 16, 16, 3)] * 4
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert any(not np.array_equal(x, y) for x, y in zip(a, c))
    # the images are the stored ones resized like image_folder does
    src = tfds.data_source("jaxedit_shapes32/unittest", data_dir=str(data_dir), split="train", download=False)
    assert len(src) == 64
    order = np.random.default_rng([5, 0]).permutation(64)
    for i in (0, 7, 15):
        np.testing.assert_array_equal(_uint8(a[0][i]), folders.crop_resize(src[int(order[i])]["image"], 16))
    # a slice, and the prepared directory read by path without the builder's name
    version_dir = data_dir / "jaxedit_shapes32" / "unittest" / "1.0.0"
    sliced = list(folders.tfds_directory(str(version_dir), None, "test[:10]", 32, batch=4, shuffle=False,
                                         drop_remainder=False))
    assert [len(x) for x in sliced] == [4, 4, 2]
    np.testing.assert_array_equal(_uint8(np.concatenate(sliced)), _expected(1, 10, cfg.block)["image"])


def test_tfds_directory_errors(prepared, tmp_path):
    tfds_shapes, data_dir, cfg = prepared
    with pytest.raises(InputError, match="no_such_dataset"):
        folders.tfds_directory("no_such_dataset", data_dir, "train", 32, batch=4)
    with pytest.raises(InputError, match="not prepared.*empty_dir"):
        folders.tfds_directory("jaxedit_shapes32/tiny", tmp_path / "empty_dir", "train", 32, batch=4)
    with pytest.raises(InputError, match="nope"):
        folders.tfds_directory("jaxedit_shapes32/unittest", data_dir, "train", 32, batch=4, keys=("nope",))
    with pytest.raises(ValueError, match="not an Image"):
        folders.tfds_directory("jaxedit_shapes32/unittest", data_dir, "train", 32, batch=4, image_key="vector")
    with pytest.raises(ValueError, match="16 images, fewer than one batch of 32"):
        folders.tfds_directory("jaxedit_shapes32/unittest", data_dir, "test", 32, batch=32)
