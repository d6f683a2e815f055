"""Shapes-world renderer: determinism, ranges, geometry, label maps, symmetry, jit/vmap, captions."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxedit.data import shapes as S

CFG = S.ShapesConfig()                               # 32 px, supersample 4
CFG128 = S.ShapesConfig(resolution=128)


def _factors(**kw):
    """A batch of hand-set raw factors; scalars broadcast to the longest list."""
    base = dict(shape=1, x=0.5, y=0.5, scale=0.5, rot=0.0, hue=0.0, bg_hue=2 / 3, spot_hue=1 / 6, spot_ratio=0.3)
    base.update(kw)
    n = max(np.size(v) for v in base.values())
    out = {k: np.broadcast_to(np.asarray(v), (n,)).copy() for k, v in base.items()}
    out["shape"] = out["shape"].astype(np.int32)
    return {k: jnp.asarray(v if k == "shape" else v.astype(np.float32)) for k, v in out.items()}


def _analytic_area(shape, scale):
    r = np.asarray(scale, np.float64) / 2
    return np.select([shape == 0, shape == 1], [np.pi * r**2, 2 * r**2], 3 * math.sqrt(3) / 4 * r**2)


@pytest.fixture(scope="module")
def batch32():
    return jax.device_get(S.sample(jax.random.key(0), 512, CFG))


@pytest.fixture(scope="module")
def batch128():
    return jax.device_get(S.sample(jax.random.key(1), 48, CFG128))


def test_determinism(batch32):
    again = jax.device_get(S.sample(jax.random.key(0), 512, CFG))
    np.testing.assert_array_equal(again["image"], batch32["image"])
    np.testing.assert_array_equal(again["labels"], batch32["labels"])
    other = jax.device_get(S.sample(jax.random.key(7), 512, CFG))
    assert np.abs(other["image"] - batch32["image"]).mean() > 0.1
    assert not np.array_equal(other["factors"]["x"], batch32["factors"]["x"])


def test_shapes_dtypes_and_ranges(batch32):
    out = batch32
    f, img, lab, vec = out["factors"], out["image"], out["labels"], out["vector"]
    assert img.shape == (512, 32, 32, 3) and img.dtype == np.float32
    assert lab.shape == (512, 32, 32) and lab.dtype == np.int32
    assert vec.shape == (512, len(S.FACTOR_NAMES)) and vec.dtype == np.float32
    assert img.min() >= -1.0 and img.max() <= 1.0
    assert set(np.unique(lab)) <= {0, 1, 2}
    assert f["shape"].dtype == np.int32 and set(np.unique(f["shape"])) == {0, 1, 2}
    counts = np.bincount(f["shape"], minlength=3)
    assert counts.min() > 512 / 3 * 0.8                                  # roughly uniform
    for name, (lo, hi) in dict(x=CFG.x_range, y=CFG.y_range, scale=CFG.scale_range, spot_ratio=CFG.spot_range).items():
        assert f[name].min() >= lo and f[name].max() <= hi, name
        assert f[name].max() - f[name].min() > 0.95 * (hi - lo), name          # covers the range
    for name in ("rot", "hue", "bg_hue", "spot_hue"):
        assert f[name].min() >= 0 and f[name].max() < 1, name
    assert np.all(f["rot"][f["shape"] == 0] == 0)                          # circles: rotation unused
    assert vec.min() >= 0 and vec.max() <= 1
    assert vec.min(0).max() < 0.05 and vec.max(0).min() > 0.95            # every column spans [0, 1]
    # normalization as documented
    col = {n: vec[:, i] for i, n in enumerate(S.FACTOR_NAMES)}
    np.testing.assert_allclose(col["scale"], (f["scale"] - 0.25) / 0.35, atol=1e-5)
    np.testing.assert_allclose(col["hue_cos"], (np.cos(2 * np.pi * f["hue"]) + 1) / 2, atol=1e-5)
    np.testing.assert_allclose(col["rot_sin"], (np.sin(2 * np.pi * f["rot"]) + 1) / 2, atol=1e-5)


def test_hsv_primaries():
    rgb = np.asarray(S.hsv_to_rgb(jnp.array([0.0, 1 / 3, 2 / 3, 1 / 6, 1.0]), 1.0, 1.0))
    np.testing.assert_allclose(rgb, [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0], [1, 0, 0]], atol=1e-6)
    np.testing.assert_allclose(np.asarray(S.hsv_to_rgb(jnp.array([0.0]), 0.5, 0.4)), [[0.4, 0.2, 0.2]], atol=1e-6)


@pytest.mark.parametrize("which", ["batch32", "batch128"])
def test_labels_consistent_with_colours(which, request):
    """Mean colour per label ~ the part's colour (128 px, where edges are a small fraction); every
    labelled pixel nearest to its own part's colour; interior pixels exactly that colour."""
    batch = request.getfixturevalue(which)
    img, lab = batch["image"], batch["labels"]
    n = lab.shape[-1]
    cfg = S.ShapesConfig(resolution=n)
    col = jax.device_get(S.colors(batch["factors"], cfg))
    ref = {0: col["background"] * 2 - 1, 1: col["object"] * 2 - 1, 2: col["spot"] * 2 - 1}
    tol = {0: 0.01, 1: 0.12, 2: 0.2}
    checked = {0: 0, 1: 0, 2: 0}
    nearest_ok, nearest_n = 0, 0
    for b in range(img.shape[0]):
        refs = np.stack([ref[k][b] for k in (0, 1, 2)])
        for k in (0, 1, 2):
            m = lab[b] == k
            if n >= 128 and m.sum() >= 20:
                mean = img[b][m].mean(0)
                assert np.abs(mean - ref[k][b]).max() < tol[k], (b, k, mean, ref[k][b])
                checked[k] += 1
            # each labelled pixel is nearest to its own part's colour (when the parts' colours differ)
            others = [j for j in (0, 1, 2) if j != k and np.abs(refs[j] - refs[k]).max() > 0.5]
            if m.any() and others:
                d = np.abs(img[b][m][:, None, :] - refs[None, [k] + others]).sum(-1)
                nearest_ok += int((d.argmin(1) == 0).sum())
                nearest_n += int(m.sum())
            # interior pixels (3x3 neighbourhood with the same label) carry exactly that colour
            # (a few body pixels next to a spot get a sliver of spot colour, hence the median)
            pad = np.pad(lab[b], 1, constant_values=-1)
            interior = m.copy()
            for dy in range(3):
                for dx in range(3):
                    interior &= pad[dy:dy + n, dx:dx + n] == k
            if interior.any():
                err = np.abs(img[b][interior] - ref[k][b]).max(-1)
                assert np.median(err) < 1e-5 and np.mean(err < 0.05) > 0.9, (b, k)
    assert nearest_ok / nearest_n > 0.98, nearest_ok / nearest_n
    if n >= 128:
        assert min(checked.values()) > 30, checked


def test_label_areas_match_geometry(batch128):
    f, lab = batch128["factors"], batch128["labels"]
    n = lab.shape[-1]
    obj = (lab > 0).reshape(len(lab), -1).sum(1) / n**2
    area = _analytic_area(f["shape"], f["scale"])
    rel = np.abs(obj - area) / area
    assert rel.max() < 0.02 and rel.mean() < 0.005, rel
    # coverage (before the majority rule) integrates to the exact area
    cb, cs = jax.device_get(S._coverage(batch128["factors"], CFG128))
    np.testing.assert_allclose(cb.reshape(len(cb), -1).mean(1), area, rtol=1e-3)
    r_spot = np.asarray(f["spot_ratio"]) * np.asarray(f["scale"]) / 2 * np.where(f["shape"] == 2, 0.5**0.5, 1.0)
    np.testing.assert_allclose(jax.device_get(S.spot_radius(f)), r_spot, rtol=1e-6)
    np.testing.assert_allclose(jax.device_get(S.object_area(f)), area, rtol=1e-6)
    np.testing.assert_allclose(cs.reshape(len(cs), -1).mean(1), np.pi * r_spot**2, rtol=5e-3)
    # spot label area: pi r^2 within half a pixel ring
    spot_px = (lab == 2).reshape(len(lab), -1).sum(1)
    r_px = r_spot * n
    assert np.all(np.abs(spot_px - np.pi * r_px**2) <= np.pi * r_px + 2), (spot_px, np.pi * r_px**2)
    # the spot is always inside the body: coverage nested, and a ring of body pixels around it
    assert np.all(cs <= cb + 1e-6)
    spot, bg = lab == 2, lab == 0
    for shift in [(0, 1), (0, -1), (1, 0), (-1, 0)]:
        assert not (spot & np.roll(bg, shift, axis=(1, 2))).any()


@pytest.mark.parametrize("shape", [0, 1, 2])
def test_inside_frame_at_extremes(shape):
    xs, ys = np.meshgrid([0.35, 0.5, 0.65], [0.35, 0.5, 0.65])
    rot = np.linspace(0, 1, 9, endpoint=False)
    f = _factors(shape=shape, x=xs.ravel(), y=ys.ravel(), scale=0.6, rot=0.0 if shape == 0 else rot, spot_ratio=0.45)
    img, lab = jax.device_get(S.render(f, CFG))
    border = np.ones((32, 32), bool)
    border[1:-1, 1:-1] = False
    assert np.all(lab[:, border] == 0)
    bg = np.asarray(S.colors(f, CFG)["background"]) * 2 - 1
    np.testing.assert_allclose(img[:, border], np.broadcast_to(bg[:, None], img[:, border].shape), atol=1e-6)
    # and the object reaches close to the frame (scale 0.6 at an extreme position)
    assert (lab[[0, 8]] > 0).any(axis=(1, 2)).all()


@pytest.mark.parametrize("shape", [1, 2])
def test_rotation_symmetry_period(shape):
    rot = np.array([0.0, 0.3, 0.77])
    a = jax.device_get(S.render(_factors(shape=shape, rot=rot, x=0.47, y=0.55, scale=0.55), CFG))
    b = jax.device_get(S.render(_factors(shape=shape, rot=rot + 1.0, x=0.47, y=0.55, scale=0.55), CFG))
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    assert np.mean(a[1] == b[1]) > 0.999
    # a non-trivial rotation changes the image
    assert np.abs(a[0][0] - a[0][1]).max() > 0.5


def test_circle_ignores_rotation_and_triangle_points_up():
    a = jax.device_get(S.render(_factors(shape=0, rot=[0.0, 0.4]), CFG)[0])
    np.testing.assert_allclose(a[0], a[1], atol=1e-6)
    lab = jax.device_get(S.render(_factors(shape=2, rot=[0.0, 0.5], scale=0.6), CFG128)[1])
    rows = [np.flatnonzero((lab[i] > 0).any(1)) for i in range(2)]
    width = lambda i, r: (lab[i, r] > 0).sum()
    assert width(0, rows[0][2]) < width(0, rows[0][-3])       # rot 0: apex up, wide at the bottom
    assert width(1, rows[1][2]) > width(1, rows[1][-3])       # half a period (60 deg): apex down


def test_square_rotation_45_is_a_diamond():
    lab = jax.device_get(S.render(_factors(shape=1, rot=[0.0, 0.5], scale=0.6, spot_ratio=0.15), CFG128)[1])
    obj = lab > 0
    centre_row = obj[:, 64].sum(-1)
    top_row = [obj[i, np.flatnonzero(obj[i].any(1))[1]].sum() for i in range(2)]
    side = 0.6 / math.sqrt(2) * 128
    assert abs(centre_row[0] - side) <= 2 and abs(centre_row[1] - 0.6 * 128) <= 2
    assert top_row[1] < 0.25 * top_row[0]


def test_jit_vmap_match_single_sample():
    f = jax.device_get(S.sample_factors(jax.random.key(5), 6, CFG))
    img, lab = jax.device_get(S.render(f, CFG))
    for i in range(6):                                       # batch of 1, jitted
        im_i, lab_i = jax.device_get(S.render({k: v[i:i + 1] for k, v in f.items()}, CFG))
        np.testing.assert_allclose(im_i[0], img[i], atol=2e-5)
        assert np.mean(lab_i[0] == lab[i]) > 0.998
    one = lambda fi: S.render({k: v[None] for k, v in fi.items()}, CFG)
    vim, vlab = jax.device_get(jax.jit(jax.vmap(one))(f))
    np.testing.assert_allclose(vim[:, 0], img, atol=2e-5)
    assert np.mean(vlab[:, 0] == lab) > 0.998


def test_caption_words_match_factors():
    f = jax.device_get(_factors(shape=[0, 1, 2], hue=0.0, bg_hue=2 / 3, spot_hue=1 / 6, scale=0.58, x=0.37, y=0.37,
                                spot_ratio=0.17))
    caps = [S.captions(f, seed) for seed in range(30)]
    assert caps[0] == S.captions(f, 0)                                       # deterministic
    assert len({c[0] for c in caps}) > 5                                      # templates/synonyms vary
    for seed_caps in caps:
        for i, c in enumerate(seed_caps):
            assert any(w in c for w in S.SHAPE_SYNONYMS[i]), c
            for j in set(range(3)) - {i}:
                assert not any(w in c.split() for w in S.SHAPE_SYNONYMS[j] if " " not in w), c
            assert ("red" in c or "scarlet" in c) and "yellow" in c and "blue" in c, c
            assert any(w in c for w in ("large", "big", "huge")), c
            assert any(w in c for w in ("top left", "upper left")), c
            assert any(f"{w} yellow" in c for w in S.SIZE_SYNONYMS["small"]), c   # small yellow spot
    d = S.describe({k: v[1] for k, v in f.items()})
    assert d == dict(shape="square", size="large", color="red", spot_size="small", spot_color="yellow",
                     position="top left", background="blue")
    assert S.caption(dict(shape=1, x=0.5, y=0.5, scale=0.3, rot=0.0, hue=0.0, bg_hue=0.0, spot_hue=0.0,
                          spot_ratio=0.3), np.random.default_rng(0))
    names = {h: S.hue_name(h / 360) for h in (0, 30, 60, 120, 180, 240, 275, 300, 359)}
    assert names == {0: "red", 30: "orange", 60: "yellow", 120: "green", 180: "cyan", 240: "blue", 275: "purple",
                     300: "pink", 359: "red"}
    assert S.position_name(0.5, 0.5) == "centre" and S.position_name(0.6, 0.62) == "bottom right"


def test_caption_on_sampled_batch(batch32):
    caps = S.captions(batch32["factors"], 1)
    assert len(caps) == 512 and len(set(caps)) > 450
    for c, s, h in zip(caps, batch32["factors"]["shape"], batch32["factors"]["hue"]):
        assert any(w in c for w in S.SHAPE_SYNONYMS[int(s)])
        assert any(w in c for w in S.COLOR_SYNONYMS[S.hue_name(h)])


def test_config_validation():
    with pytest.raises(ValueError):
        S.ShapesConfig(spot_range=(0.15, 0.75))
    with pytest.raises(ValueError):
        S.ShapesConfig(scale_range=(0.25, 0.8))
    hash(S.ShapesConfig(resolution=64))                                       # usable as a static arg


def test_chunking_does_not_change_result():
    f = S.sample_factors(jax.random.key(11), 200, CFG)
    whole = jax.device_get(S.render(f, S.ShapesConfig(chunk_pixels=0)))
    chunked = jax.device_get(S.render(f, S.ShapesConfig(chunk_pixels=64 * 32 * 32)))  # 4 chunks, last padded
    np.testing.assert_allclose(chunked[0], whole[0], atol=2e-5)                     # float32 rounding
    assert np.mean(chunked[1] == whole[1]) > 0.9999


def test_antialiasing_is_pixel_area_coverage():
    """Axis-aligned square edge 0.05 px below a pixel boundary: that pixel is 95 % covered, the
    pixel above 0 %, the one below 100 % (box-filter coverage, no extra blur)."""
    apothem = 0.25 * math.cos(math.pi / 4)
    f = _factors(shape=1, x=0.5, y=10.05 / 32 + apothem, scale=0.5, rot=0.0, spot_ratio=0.15)
    cb, cs = jax.device_get(S._coverage(f, CFG))
    np.testing.assert_allclose(cb[0, 9:12, 16], [0.0, 0.95, 1.0], atol=2e-4)
    # the same edge seen through the image: that pixel is a 95/5 mix of object and background
    img = jax.device_get(S.render(f, CFG)[0])[0]
    col = jax.device_get(S.colors(f, CFG))
    np.testing.assert_allclose((img[10, 16] + 1) / 2, 0.95 * col["object"][0] + 0.05 * col["background"][0], atol=2e-4)
    # a diagonal edge: a 45-degree square's corner region integrates to the exact area
    g = _factors(shape=1, rot=0.5, x=0.5, y=0.5, scale=0.5)
    cov = jax.device_get(S._coverage(g, CFG))[0][0]
    np.testing.assert_allclose(cov.mean(), 2 * 0.25**2, rtol=2e-3)


def test_rgb_override_recolours_one_part_on_the_same_geometry():
    f = S.sample_factors(jax.random.key(12), 200, CFG)
    img, labels = jax.device_get(S.render(f, CFG))
    np.testing.assert_array_equal(jax.device_get(S.render(f, CFG, rgb=S.colors(f, CFG)))[0], img)
    cb, cs = jax.device_get(S._coverage(f, CFG))
    cs = np.minimum(cs, cb)
    share = {"background": 1 - cb, "object": cb - cs, "spot": cs}
    grey = jnp.full((200, 3), 0.5)
    for part, cover in share.items():  # chunked too: the override is cut into the same chunks
        new, new_labels = jax.device_get(S.render(f, S.ShapesConfig(chunk_pixels=64 * 32 * 32), rgb={part: grey}))
        np.testing.assert_array_equal(new_labels, labels)
        np.testing.assert_allclose(new[cover == 1], 0.0, atol=1e-5)  # grey 0.5 -> 0 in [-1, 1]
        np.testing.assert_allclose(new[cover == 0], img[cover == 0], atol=2e-5)
        edge = (cover > 0) & (cover < 1)  # a pixel's colour is the coverage-weighted mix
        want = img + 2 * cover[..., None] * (0.5 - np.asarray(S.colors(f, CFG)[part])[:, None, None, :])
        np.testing.assert_allclose(new[edge], want[edge], atol=1e-4)
    with pytest.raises(S.InputError, match="rgb: parts must be"):
        S.render(f, CFG, rgb={"body": grey})
