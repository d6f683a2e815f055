"""FID Inception (pytorch-fid's network) + FID / KID: converter and model against the reference fixture,
the Frechet distance and KID against direct computations, streaming statistics, checkpoint round trip,
one-line refusals of wrong files and inputs."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture, max_abs, ref

import jaxedit
from jaxedit.converters import fid_inception as conv
from jaxedit.errors import CheckpointError, InputError
from jaxedit.io import checkpoint, files, torchfile
from jaxedit.metrics.distributions import (
    FeatureStats,
    feature_stats,
    frechet_distance,
    kid,
)
from jaxedit.metrics.fid import (
    fid_of,
    load_stats,
    pool3_features,
    save_stats,
    statistics,
)
from jaxedit.models.inception import (
    KIND,
    FIDInception,
    FIDInceptionConfig,
    avg_pool_exclude_pad,
    resize_bilinear,
)
from jaxedit.models.lpips import upsample_bilinear

WEIGHTS, REF = "fid_inception_random_fp16.pth", "fid_inception_ref.npz"
# Max abs errors vs the reference (float32 here and there), bounded at ~2-3x the measured ones (comments).
# The reference's own float32 rounding is most of it: this network computed in float64 is 6.9e-5 from
# pool3_299 and 7.1e-5 from pool3_64_resized (test_float64_meets_the_fixture_tolerances; the fixture
# states 7e-5 and 1.6e-4); our float32 adds about as much again (8.0e-5 from our float64 at 299).
# Measured at -O0 (the tests' XLA setting; at -O2: 1.06e-4, 0.95e-4, 6.2e-6 7.7e-6 3.9e-4):
TOL_POOL3 = 3e-4  # measured 1.09e-4 (values up to 1.9)
TOL_POOL3_RESIZED = 3e-4  # measured 1.03e-4 (values up to 49)
TOL_BLOCKS = (2e-5, 2.5e-5, 1e-3)  # measured 5.7e-6 7.6e-6 4.4e-4 (values up to 6.7, 6.9, 6.1)


@functools.lru_cache(None)
def _converted():
    return conv.convert(fixture(WEIGHTS))


@functools.lru_cache(None)
def _outputs():
    """The four blocks of the 299 px images and the pool3 features of the 64 px ones (resized)."""
    cfg, params, _ = _converted()
    net, r = FIDInception(cfg), ref(REF)
    return net.blocks(params, 2 * r["images_299"] - 1), net(params, _x64())


def _x64():
    return jnp.asarray(2 * ref(REF)["images_64"] - 1)


# ------------------------------------------------------------------------------ parity
def test_converted_config_and_params():
    cfg, params, info = _converted()
    assert cfg == FIDInceptionConfig() and info["file"] == WEIGHTS and len(info["sha256"]) == 64
    assert info["fp16_tensors"] == 472 and info["dropped"] == ["fc.bias", "fc.weight"] and info["dropped_counters"] == 94
    assert all(np.asarray(x).dtype == np.float32 for x in jax.tree.leaves(params))
    assert len(jax.tree.leaves(params)) == 94 * 5
    sd = torchfile.load(fixture(WEIGHTS))
    np.testing.assert_array_equal(params["Mixed_6b"]["branch7x7_2"]["conv"]["kernel"],
                                  np.asarray(sd["Mixed_6b.branch7x7_2.conv.weight"], np.float32).transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["Mixed_7c"]["branch_pool"]["bn"]["var"],
                                  np.asarray(sd["Mixed_7c.branch_pool.bn.running_var"], np.float32))


def test_matches_reference():
    r = ref(REF)
    blocks, pool3_64 = _outputs()
    assert [b.shape[1:] for b in blocks] == [(73, 73, 64), (35, 35, 192), (17, 17, 768), (2048,)]
    assert max_abs(blocks[3], r["pool3_299"]) < TOL_POOL3
    for i, tol in enumerate(TOL_BLOCKS):
        assert max_abs(blocks[i][:1], r[f"block{i}_img0"]) < tol
    assert pool3_64.shape == (4, 2048) and max_abs(pool3_64, r["pool3_64_resized"]) < TOL_POOL3_RESIZED


@pytest.mark.slow
def test_float64_meets_the_fixture_tolerances():
    """In float64 the network is within the fixture's stated tolerances (the reference's own float32 error)."""
    cfg, params, _ = _converted()
    net, r = FIDInception(cfg), ref(REF)
    with jax.enable_x64(True):
        p64 = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
        fn = jax.jit(lambda p, x: net.model(p).blocks(net.network_input(x)))
        b299 = fn(p64, 2 * r["images_299"].astype(np.float64) - 1)
        b64 = fn(p64, 2 * r["images_64"].astype(np.float64) - 1)
        assert max_abs(b299[3], r["pool3_299"]) < 7e-5  # measured 6.9e-5
        assert max_abs(b64[3], r["pool3_64_resized"]) < 1.6e-4  # measured 7.1e-5 (float32 taps, as torch's)
        assert max_abs(b299[2][:1], r["block2_img0"]) < 4e-4  # measured 3.0e-4


def test_resize_and_pooling_ops():
    """torch's bilinear (align_corners=False): 2 -> 4 gives taps [1, .75/.25, .25/.75, 1]; the identity at the
    same size; the average pool without the padded zeros."""
    m = jnp.arange(2.0).reshape(1, 2, 1, 1) * jnp.ones((1, 2, 2, 1))
    up = np.asarray(resize_bilinear(m, (4, 2)))[0, :, 0, 0]
    np.testing.assert_allclose(up, [0, 0.25, 0.75, 1], atol=1e-7)
    x = jax.random.normal(jax.random.key(0), (1, 5, 5, 2))
    assert resize_bilinear(x, (5, 5)) is x
    # against the LPIPS module's interpolation matrices, 64x48 -> 299x299: those weigh with float64 source
    # coordinates, torch (and this) with float32 ones (ulp 3.8e-6 near 63): measured 2.0e-6
    img = _x64()[:2, :, :48, 0]
    assert max_abs(resize_bilinear(img[..., None], (299, 299))[..., 0], upsample_bilinear(img, (299, 299))) < 5e-6
    p = np.asarray(avg_pool_exclude_pad(x))
    xn = np.asarray(x)
    np.testing.assert_allclose(p[0, 0, 0], xn[0, :2, :2].mean((0, 1)), atol=1e-6)  # corner: 4 pixels
    np.testing.assert_allclose(p[0, 0, 2], xn[0, :2, 1:4].mean((0, 1)), atol=1e-6)  # edge: 6
    np.testing.assert_allclose(p[0, 2, 2], xn[0, 1:4, 1:4].mean((0, 1)), atol=1e-6)  # inside: 9


# ------------------------------------------------------------------------------ Frechet distance, KID
def _gaussian(n, d, seed, shift=0.0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d, d)) / np.sqrt(d)
    return rng.standard_normal((n, d)) @ a + shift


def test_frechet_distance_matches_direct_computation():
    """Against tr sqrtm(C1 C2) from the eigenvalues of the (non-symmetric) product, as pytorch-fid's
    sqrtm, and the closed form for commuting covariances."""
    f1, f2 = _gaussian(400, 32, 0), _gaussian(300, 32, 1, shift=0.3)
    mu1, c1, mu2, c2 = f1.mean(0), np.cov(f1.T), f2.mean(0), np.cov(f2.T)
    ev = np.linalg.eigvals(c1 @ c2)
    direct = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2 * np.sum(np.sqrt(ev)).real
    got = frechet_distance(mu1, c1, mu2, c2)
    assert got > 1 and abs(got - direct) < 1e-10 * direct  # measured 9e-15 relative
    assert abs(frechet_distance(mu2, c2, mu1, c1) - got) < 1e-10 * got  # symmetric
    l1, l2 = np.array([1.0, 2.0, 3.0]), np.array([4.0, 1.0, 0.0])  # a singular covariance too
    assert abs(frechet_distance(np.zeros(3), np.diag(l1), np.ones(3), np.diag(l2))
               - (3 + np.sum((np.sqrt(l1) - np.sqrt(l2)) ** 2))) < 1e-12
    with pytest.raises(InputError, match=r"one D, got \[3\] \[3, 3\] and \[4\]"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_streaming_stats_equal_one_shot():
    f = _gaussian(1000, 16, 2, shift=50.0)  # a large mean: no sum-of-squares cancellation
    stats = FeatureStats()
    for lo, hi in [(0, 1), (1, 300), (300, 301), (301, 777), (777, 777), (777, 1000)]:
        stats.update(f[lo:hi].astype(np.float32) if lo == 301 else f[lo:hi])
    g = np.concatenate([f[:301], f[301:777].astype(np.float32), f[777:]]).astype(np.float64)
    assert stats.n == 1000 and max_abs(stats.mean, g.mean(0)) < 1e-12 and max_abs(stats.cov, np.cov(g.T)) < 1e-12
    a, b = FeatureStats().update(g[:123]), FeatureStats().update(g[123:])
    merged = a.merge(b)
    assert merged.n == 1000 and max_abs(merged.cov, np.cov(g.T)) < 1e-12
    mu, cov = feature_stats(lambda k: jnp.asarray(g[:250]) + jax.random.normal(k, (250, 16)), jax.random.key(0), 500, 250)
    assert mu.shape == (16,) and cov.shape == (16, 16)
    for bad, what in [(np.zeros((3, 5)), r"\[batch, 16\], got \[3, 5\]"), (np.full((2, 16), np.nan), "non-finite")]:
        with pytest.raises(InputError, match=what):
            FeatureStats().update(g[:2]).update(bad)
    with pytest.raises(InputError, match="at least 2 samples, got 1"):
        _ = FeatureStats().update(g[:1]).cov


def _mmd2_direct(x, y):
    d, m = x.shape[1], len(x)
    k = lambda u, v: (u @ v.T / d + 1) ** 3
    kxx, kyy = k(x, x), k(y, y)
    return ((kxx.sum() - np.trace(kxx)) + (kyy.sum() - np.trace(kyy))) / (m * (m - 1)) - 2 * k(x, y).mean()


def test_kid():
    g = np.abs(_gaussian(1800, 64, 3))  # non-negative, as pool3 features
    a, b, c = g[:600], g[600:1200], g[1200:] + 0.3  # a and b: one distribution; c shifted
    key = jax.random.key(0)
    # every row in one subset: the draw only permutes the rows, so this is the direct formula
    full, std = kid(a[:200], c[:200], subsets=1, subset_size=200, key=key)
    assert std == 0 and abs(full - _mmd2_direct(a[:200], c[:200])) < 1e-6 * abs(full)  # measured 3.1e-8 relative
    same_mean, same_std = kid(a, b, subsets=50, subset_size=100, key=key)
    diff_mean, diff_std = kid(a, c, subsets=50, subset_size=100, key=key)
    assert abs(same_mean) < same_std and diff_mean > 10 * diff_std  # subsets overlap: no sqrt(50) in the bound
    assert kid(a, c, subsets=50, subset_size=100, key=key) == (diff_mean, diff_std)  # deterministic per key
    assert kid(a, c, subsets=50, subset_size=100, key=jax.random.key(1))[0] != diff_mean
    for args, what in [((a, c[:, :8]), r"one D, got \[600, 64\] and \[600, 8\]"),
                       ((a, c[:50]), r"subset_size 100 exceeds the number of features \(600 and 50\)")]:
        with pytest.raises(InputError, match=what):
            kid(*args, subsets=2, subset_size=100, key=key)


# ------------------------------------------------------------------------------ FID of image sets
class _StandIn:
    """A cheap stand-in for the network in the plumbing tests (the real one costs ~1 s per image at -O0):
    fixed random features of the 8x8-pooled images, [B, 64] (2048-d Frechet distances cost seconds each)."""

    w = jax.random.normal(jax.random.key(7), (8 * 8 * 3, 64)) / 14

    def __call__(self, params, images):
        b, h, w, c = images.shape
        pooled = jnp.asarray(images).reshape(b, 8, h // 8, 8, w // 8, c).mean((2, 4)).reshape(b, -1)
        return jax.nn.relu(pooled @ self.w + params)


def test_fid_of_image_sets(tmp_path):
    net, x = _StandIn(), _x64()
    batches = [x, x[::-1, :, ::-1], x[:3]]  # 11 images, a short last batch (padded to the first one's size)
    feats = np.concatenate(list(pool3_features(net, 0.1, batches)))
    assert feats.shape == (11, 64)
    np.testing.assert_allclose(feats, net(0.1, jnp.concatenate(batches)), atol=1e-6)
    np.testing.assert_array_equal(np.concatenate(list(pool3_features(net, 0.1, [jnp.concatenate(batches)[:5]] * 2))),
                                  np.concatenate([feats[:5]] * 2))
    shift = [jnp.clip(b + 0.6, -1, 1) for b in batches]
    same = fid_of(net, 0.1, batches, batches, kid_subsets=5, kid_subset_size=8, key=jax.random.key(1))
    shifted = fid_of(net, 0.1, batches, shift)
    assert same["n_a"] == same["n_b"] == shifted["n_b"] == 11
    stats_a, stats_b = statistics(net, 0.1, batches)[0], statistics(net, 0.1, shift)[0]
    scale = np.trace(stats_a.cov)
    # 11 samples in 64 dims: the rank-deficient covariances leave rounding-level eigenvalues whose square
    # roots do not cancel exactly (measured 1.3e-7 of the scale; 3e-6 with the real network's features of 8 images)
    assert abs(same["fid"]) < 1e-5 * scale and shifted["fid"] > 0.1 * scale
    assert shifted["fid"] == frechet_distance(*stats_a.result(), *stats_b.result())
    assert np.isfinite(same["kid_mean"]) and same["kid_std"] > 0  # (overlapping subsets of one set: not unbiased)
    path = save_stats(tmp_path / "ref_stats.npz", stats_b)  # written atomically to exactly that path
    assert path.name == "ref_stats.npz" and sorted(p.name for p in tmp_path.iterdir()) == [files.LEDGER, "ref_stats.npz"]
    assert fid_of(net, 0.1, batches, load_stats(path))["fid"] == shifted["fid"]
    assert fid_of(net, 0.1, batches, stats_b)["fid"] == shifted["fid"]
    with pytest.raises(InputError, match="pass key="):
        fid_of(net, 0.1, batches, stats_b, kid_subsets=3)
    with pytest.raises(InputError, match="KID needs the features of both sets"):
        fid_of(net, 0.1, batches, stats_b, kid_subsets=3, kid_subset_size=4, key=jax.random.key(0))
    with pytest.raises(InputError, match="at least 2 images, got 1"):
        fid_of(net, 0.1, [x[:1]], stats_b)
    np.savez(tmp_path / "nokeys.npz", m=np.zeros(3))
    np.savez(tmp_path / "d3.npz", mu=np.zeros(3), sigma=np.eye(3))
    with pytest.raises(InputError, match=r"means \[D\] and covariances \[D, D\] of one D, got \[64\]"):
        fid_of(net, 0.1, batches, load_stats(tmp_path / "d3.npz"))
    np.savez(tmp_path / "bad.npz", mu=np.zeros(3), sigma=np.eye(4))
    for name, what in [("bad.npz", r"mu \[3\] and sigma \[4, 4\] must be \[D\] and \[D, D\]"), ("nokeys.npz", "missing"),
                       ("absent.npz", "FID statistics .*absent.npz: no such file")]:
        with pytest.raises(InputError, match=what) as e:
            load_stats(tmp_path / name)
        assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------ checkpoint
def test_checkpoint_round_trip(tmp_path):
    cfg, params, info = _converted()
    dst = checkpoint.save(tmp_path / "inception", kind=KIND, model=cfg.to_dict(), params=params, source=info)
    model, loaded = jaxedit.load(dst)
    assert isinstance(model, FIDInception) and model.cfg == cfg
    assert checkpoint.read_meta(dst)["source"]["sha256"] == info["sha256"]
    mine, theirs = jax.tree.leaves_with_path(params), jax.tree.leaves_with_path(loaded)
    assert [k for k, _ in mine] == [k for k, _ in theirs]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(mine, theirs))
    np.testing.assert_array_equal(model(loaded, _x64()), _outputs()[1])
    with pytest.raises(CheckpointError, match="holds a 'fid-inception' model, expected 'lpips'"):
        from jaxedit.models import lpips

        lpips.load(dst)


def test_input_checks():
    cfg, params, _ = _converted()
    net = FIDInception(cfg)
    for bad, what in [(jnp.zeros((2, 16, 16)), r"\[2, 16, 16\]"), (jnp.zeros((2, 16, 16, 4)), r"\[B, H, W, 3\]"),
                      (jnp.zeros((2, 16, 16, 3), jnp.uint8), "uint8")]:
        with pytest.raises(InputError, match=what):
            net(params, bad)
    with pytest.raises(InputError, match="H, W >= 75"):
        net.blocks(params, jnp.zeros((1, 64, 64, 3)), resize=False)
    with pytest.raises(InputError, match="input_size must be an int >= 75"):
        FIDInceptionConfig(input_size=32)
    with pytest.raises(InputError, match=r"image batch 0 must be \[b, H, W, 3\]"):
        list(pool3_features(net, params, [np.zeros((0, 8, 8, 3))]))


# ------------------------------------------------------------------------------ refusals of wrong files
def _raises(exc, match, fn, *args):
    with pytest.raises(exc, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)


def test_converter_refuses_wrong_files(tmp_path):
    _raises(conv.ConversionError, r"lpips_vgg_lin_v0.1.pth: unexpected tensor 'lin0.model.1.weight'", conv.convert,
            fixture("lpips_vgg_lin_v0.1.pth"))
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(fixture(WEIGHTS).read_bytes()[:5000])
    _raises(torchfile.TorchFileError, "truncated.pth", conv.convert, bad)


def test_converter_refuses_wrong_tensors():
    sd = dict(torchfile.load(fixture(WEIGHTS)))
    f = conv.params_from_state_dict
    drop = lambda k: {n: v for n, v in sd.items() if n != k}
    _raises(conv.ConversionError, r"w.pth: missing tensor 'Mixed_7c.branch_pool.bn.running_var' \(not pytorch-fid",
            f, drop("Mixed_7c.branch_pool.bn.running_var"), "w.pth")
    _raises(conv.ConversionError, r"w.pth: missing tensor 'fc.bias'", f, drop("fc.bias"), "w.pth")
    _raises(conv.ConversionError, r"w.pth: tensor 'Mixed_6b.branch7x7_2.conv.weight' has shape \[128, 128, 7, 1\], "
            r"expected \[128, 128, 1, 7\]", f,
            {**sd, "Mixed_6b.branch7x7_2.conv.weight": np.zeros((128, 128, 7, 1), np.float16)}, "w.pth")
    _raises(conv.ConversionError, r"'Conv2d_1a_3x3.bn.weight' has dtype int8", f,
            {**sd, "Conv2d_1a_3x3.bn.weight": np.zeros(32, np.int8)}, "w.pth")
    _raises(conv.ConversionError, r"'Conv2d_1a_3x3.bn.bias' holds non-finite values", f,
            {**sd, "Conv2d_1a_3x3.bn.bias": np.full(32, np.inf, np.float16)}, "w.pth")
    _raises(conv.ConversionError, r"'Mixed_5b.branch1x1.bn.running_var' holds negative variances", f,
            {**sd, "Mixed_5b.branch1x1.bn.running_var": -np.ones(64, np.float16)}, "w.pth")
    _raises(conv.ConversionError, r"unexpected tensor 'AuxLogits.fc.weight' .*torchvision's inception_v3 has "
            "AuxLogits", f, {**sd, "AuxLogits.fc.weight": np.zeros((1000, 768), np.float32)}, "w.pth")
    _raises(conv.ConversionError, r"'Mixed_5b.branch1x1.bn.num_batches_tracked' is .* expected an int counter", f,
            {**sd, "Mixed_5b.branch1x1.bn.num_batches_tracked": np.zeros(2, np.float32)}, "w.pth")
    _raises(conv.ConversionError, r"w.pth: not a state dict of tensors", f, [1, 2], "w.pth")
    _, dropped = f(drop("Conv2d_1a_3x3.bn.num_batches_tracked"), "w.pth")  # counters are optional
    assert len(dropped) == 2 + 93


@pytest.mark.slow
def test_cli_convert_and_eval_fid(tmp_path, capsys):
    from jaxedit.cli.main import main
    from jaxedit.io import images as imio

    net_dir = tmp_path / "fid"
    assert main(["convert", "fid-inception", str(fixture("fid_inception_random_fp16.pth")), str(net_dir)]) == 0
    rng = np.random.default_rng(0)
    for name, scale in (("a", 1.0), ("b", 0.3)):
        (tmp_path / name).mkdir()
        for i in range(4):
            imio.save_png(imio.to_uint8(scale * rng.uniform(-1, 1, (32, 32, 3))), tmp_path / name / f"{i}.png")
    capsys.readouterr()
    args = ["--inception", str(net_dir), "--batch-size", "4"]
    assert main(["eval", "fid", str(tmp_path / "a"), str(tmp_path / "a"), *args, "--save-stats",
                 str(tmp_path / "a.npz"), "--json", str(tmp_path / "same.json")]) == 0
    assert main(["eval", "fid", str(tmp_path / "b"), str(tmp_path / "a.npz"), *args, "--json",
                 str(tmp_path / "shift.json")]) == 0
    same, shift = (json.loads((tmp_path / f).read_text()) for f in ("same.json", "shift.json"))
    assert abs(same["fid"]) < 1e-4 * shift["fid"] and shift["fid"] > 0
    assert main(["eval", "fid", str(tmp_path / "a.npz"), str(tmp_path / "b"), *args]) == 2  # stats only as B
