"""LPIPS v0.1 (VGG16): converter + model exact against the reference fixture, checkpoint round trip,
metric invariants, refusals of wrong files and inputs."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture, max_abs, ref

import jaxedit
from jaxedit.cli.main import main
from jaxedit.converters import lpips as conv
from jaxedit.errors import CheckpointError, InputError
from jaxedit.io import checkpoint, torchfile
from jaxedit.models.lpips import KIND, LPIPS, LPIPSConfig, upsample_bilinear

VGG, LIN, REF = "lpips_vgg_random_backbone_fp16.pth", "lpips_vgg_lin_v0.1.pth", "lpips_vgg_ref.npz"
# Max abs errors vs the reference are bounded at ~3x the measured ones (in the comments).
TOL_DIST, TOL_PER_LAYER = 6e-9, 2e-8  # 1.9e-9 7.5e-9
TOL_LIN_MAPS = (1e-6, 1e-7, 7e-8, 5e-8, 2.5e-8)  # 3.0e-7 3.4e-8 2.2e-8 1.5e-8 7.7e-9
TOL_SPATIAL, TOL_SPATIAL_PER_LAYER = 1e-6, 1e-6  # 3.1e-7 3.0e-7
TOL_RELU3_3, TOL_RELU5_3 = 3e-6, 2.5e-6  # 8.9e-7 7.7e-7 (features up to 1.28 and 0.73)
# grad_x0 (values up to 2.3e-4): 8.7e-10 everywhere but around one max-pool window of image 2 (relu1_2 at
# rows/cols 60-61, channel 3) whose two largest entries agree to 1 ulp in float32 (2e-8 apart in float64):
# the reference's rounding sent the gradient to the other entry; 2.0e-6 in the 6x6 input pixels it reaches.
TOL_GRAD, TOL_GRAD_TIE = 3e-9, 6e-6


@functools.lru_cache(None)
def _converted():
    return conv.convert(fixture(VGG), fixture(LIN))


@functools.lru_cache(None)
def _outputs():
    """Every array of the reference, computed by one compiled program."""
    cfg, params, _ = _converted()
    lp, r = LPIPS(cfg), ref(REF)
    fn = jax.jit(lambda p, a, b: (lp(p, a, b), lp.per_layer(p, a, b), lp.lin_maps(p, a, b), lp(p, a, b, spatial=True),
                                  lp.per_layer(p, a, b, spatial=True), lp.features(p, a)))
    return fn(params, r["x0"], r["x1"])


def _small():
    """Crops [3, 16, 24, 3] of the reference images (every tap >= 1x1): one compiled program for the tests below."""
    r = ref(REF)
    return jnp.asarray(r["x0"][:3, :16, :24]), jnp.asarray(r["x1"][:3, 8:24, 8:32])


# ------------------------------------------------------------------------------ parity
def test_converted_config_and_params():
    cfg, params, info = _converted()
    assert cfg == LPIPSConfig() and cfg.conv_indices()[2] == (10, 12, 14)
    assert info["backbone"] == "vgg16" and info["fp16_tensors"] == 26 and info["version"] == "0.1"
    assert info["file"] == VGG and info["lin_file"] == LIN and len(info["sha256"]) == len(info["lin_sha256"]) == 64
    assert all(np.asarray(x).dtype == np.float32 for x in jax.tree.leaves(params))
    sd = torchfile.load(fixture(VGG))
    np.testing.assert_array_equal(params["features_17"]["kernel"],
                                  np.asarray(sd["features.17.weight"], np.float32).transpose(2, 3, 1, 0))
    lin = torchfile.load(fixture(LIN))
    np.testing.assert_array_equal(params["lin3"]["kernel"], lin["lin3.model.1.weight"].reshape(-1))


def test_matches_reference():
    r = ref(REF)
    dist, per_layer, maps, dist_spatial, spatial_per_layer, feats = _outputs()
    assert dist.shape == (4,) and per_layer.shape == (5, 4) and dist_spatial.shape == (4, 64, 64)
    assert max_abs(dist, r["dist"]) < TOL_DIST
    assert max_abs(per_layer, r["dist_per_layer"]) < TOL_PER_LAYER
    for l, tol in enumerate(TOL_LIN_MAPS):
        assert maps[l].shape == r[f"lin{l}_map"].shape[:-1] and max_abs(maps[l], r[f"lin{l}_map"][..., 0]) < tol
    assert max_abs(dist_spatial, r["dist_spatial"][..., 0]) < TOL_SPATIAL
    assert max_abs(spatial_per_layer, r["dist_spatial_per_layer"][..., 0]) < TOL_SPATIAL_PER_LAYER
    assert max_abs(feats[2], r["feat_relu3_3_x0"]) < TOL_RELU3_3
    assert max_abs(feats[4], r["feat_relu5_3_x0"]) < TOL_RELU5_3
    assert [f.shape[1:] for f in feats] == [(64, 64, 64), (32, 32, 128), (16, 16, 256), (8, 8, 512), (4, 4, 512)]


@jax.jit
def _grad(params, xs, y):
    """d sum(LPIPS(x, y)) / dx for each x in ``xs`` [N, B, H, W, 3] (vmapped)."""
    lp = LPIPS(_converted()[0])
    return jax.vmap(jax.grad(lambda x: lp(params, x, y).sum()))(xs)


def test_gradient_matches_reference():
    params = _converted()[1]
    r = ref(REF)
    g = np.asarray(_grad(params, r["x0"][None], r["x1"]))[0]
    err = np.abs(g.astype(np.float64) - r["grad_x0"])
    tie = np.zeros(err.shape, bool)
    tie[2, 58:64, 58:64] = True
    assert err[~tie].max() < TOL_GRAD
    assert err[tie].max() < TOL_GRAD_TIE


def test_spatial_map_averages_to_the_distance():
    """Bilinear up-sampling by an integer factor (align_corners=False, clamped edges) keeps the mean."""
    dist, _, maps, dist_spatial, spatial_per_layer, _ = _outputs()
    assert max_abs(dist_spatial.mean(axis=(1, 2)), dist) < 5e-8  # measured 1.5e-8
    np.testing.assert_array_equal(spatial_per_layer[0], maps[0])  # layer 0 is at the input size already
    m = np.arange(6.0, dtype=np.float32).reshape(1, 2, 3)
    up = np.asarray(upsample_bilinear(jnp.asarray(m), (4, 6)))  # torch: rows [0, .75, .25, 1] of the two inputs
    np.testing.assert_allclose(up[0, :, 0], [0, 0.75, 2.25, 3], atol=1e-6)
    np.testing.assert_allclose(up[0, 0], [0, 0.25, 0.75, 1.25, 1.75, 2], atol=1e-6)
    assert max_abs(up.mean(), m.mean()) < 1e-6


# ------------------------------------------------------------------------------ checkpoint
def test_checkpoint_round_trip(tmp_path):
    cfg, params, info = _converted()
    dst = checkpoint.save(tmp_path / "lpips", kind=KIND, model=cfg.to_dict(), params=params, source=info)
    model, loaded = jaxedit.load(dst)
    assert isinstance(model, LPIPS) and model.cfg == cfg
    assert checkpoint.read_meta(dst)["source"]["lin_sha256"] == info["lin_sha256"]
    mine, theirs = jax.tree.leaves_with_path(params), jax.tree.leaves_with_path(loaded)
    assert [k for k, _ in mine] == [k for k, _ in theirs]
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for (_, a), (_, b) in zip(mine, theirs))
    x0, x1 = _small()
    np.testing.assert_array_equal(model(loaded, x0, x1), LPIPS(cfg)(params, x0, x1))
    with pytest.raises(CheckpointError, match="holds a 'lpips' model, expected 'clip'"):
        from jaxedit.models import clip

        clip.load(dst)


# ------------------------------------------------------------------------------ invariants
def test_metric_invariants():
    cfg, params, _ = _converted()
    lp = LPIPS(cfg)
    x0, x1 = _small()
    d = np.asarray(lp(params, x0, x1))
    assert d.shape == (3,) and np.all(d > 0)
    np.testing.assert_array_equal(lp(params, x0, x0), 0.0)  # identical features: exactly zero
    assert max_abs(lp(params, x1, x0), d) < 1e-9 * d.max()  # symmetric (measured 0)
    one = lp(params, x0, x1[1:2])  # a batch of one against each row; rows do not mix (a batch of 4, not 6)
    assert max_abs(one[1], d[1]) < 1e-7 * d.max()  # measured 0
    assert max_abs(one, lp(params, x0, jnp.broadcast_to(x1[1:2], x1.shape))) < 1e-7 * d.max()
    g = _grad(params, jnp.stack([x0, x1]), x1)  # finite, and exactly zero at x1 itself
    assert np.all(np.isfinite(g[0])) and np.all(np.abs(g[0]) > 0)
    np.testing.assert_array_equal(g[1], 0.0)


def test_input_checks():
    cfg, params, _ = _converted()
    lp = LPIPS(cfg)
    x = jnp.zeros((2, 16, 16, 3))
    for bad, what in [(jnp.zeros((2, 16, 16)), r"\[2, 16, 16\]"), (jnp.zeros((2, 8, 16, 3)), "H, W >= 16"),
                      (jnp.zeros((2, 16, 16, 4)), r"\[B, H, W, 3\]"), (jnp.zeros((2, 16, 16, 3), jnp.int32), "int32")]:
        with pytest.raises(InputError, match=what):
            lp(params, x, bad)
    with pytest.raises(InputError, match=r"same size and equal batch sizes \(or a batch of 1\)"):
        lp(params, x, jnp.zeros((3, 16, 16, 3)))
    with pytest.raises(InputError, match="same size"):
        lp.per_layer(params, x, jnp.zeros((2, 16, 32, 3)))
    with pytest.raises(InputError, match="images must be"):
        lp.features(params, jnp.zeros((16, 16, 3)))
    with pytest.raises(InputError, match="equally long"):
        LPIPSConfig(blocks=(2, 2), widths=(64,))


# ------------------------------------------------------------------------------ refusals of wrong files
def _raises(exc, match, fn, *args):
    with pytest.raises(exc, match=match) as e:
        fn(*args)
    assert "\n" not in str(e.value)


def test_converter_refuses_wrong_files(tmp_path):
    vgg, lin = fixture(VGG), fixture(LIN)
    _raises(conv.ConversionError, r"lpips_vgg_lin_v0.1.pth: unexpected tensor 'lin0.model.1.weight' .*pass the VGG "
            "backbone first", conv.convert, lin, vgg)
    _raises(conv.ConversionError, "warped_support_sets.pt: unexpected tensor", conv.convert,
            fixture("warped_support_sets.pt"), lin)
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(lin.read_bytes()[:3000])
    _raises(torchfile.TorchFileError, "truncated.pth", conv.convert, vgg, bad)


def test_converter_refuses_wrong_tensors():
    sd = dict(torchfile.load(fixture(VGG)))
    lins = dict(torchfile.load(fixture(LIN)))
    conv.backbone(sd, "v.pth")
    drop = lambda d, k: {n: v for n, v in d.items() if n != k}
    _raises(conv.ConversionError, r"v.pth: missing tensor 'features.28.bias'", conv.backbone,
            drop(sd, "features.28.bias"), "v.pth")
    _raises(conv.ConversionError, r"v.pth: tensor 'features.5.weight' has shape \[128, 64, 1, 1\]", conv.backbone,
            {**sd, "features.5.weight": np.zeros((128, 64, 1, 1), np.float16)}, "v.pth")
    _raises(conv.ConversionError, r"'features.7.weight' has 32 input channels, the layer before it gives 128",
            conv.backbone, {**sd, "features.7.weight": np.zeros((128, 32, 3, 3), np.float16)}, "v.pth")
    _raises(conv.ConversionError, r"'features.2.bias' has shape \[63\]", conv.backbone,
            {**sd, "features.2.bias": np.zeros(63, np.float16)}, "v.pth")
    _raises(conv.ConversionError, r"v.pth: conv 'features.10' does not fit the VGG layout", conv.backbone,
            drop(drop(sd, "features.7.weight"), "features.7.bias"), "v.pth")
    _raises(conv.ConversionError, r"'features.0.weight' has dtype int8", conv.backbone,
            {**sd, "features.0.weight": np.zeros((64, 3, 3, 3), np.int8)}, "v.pth")
    _raises(conv.ConversionError, r"'features.0.bias' holds non-finite values", conv.backbone,
            {**sd, "features.0.bias": np.full(64, np.inf, np.float16)}, "v.pth")
    _raises(conv.ConversionError, r"'features.02.weight' duplicates conv 2", conv.backbone,
            {**sd, "features.02.weight": sd["features.2.weight"]}, "v.pth")
    blocks, dropped = conv.backbone({**sd, "classifier.0.weight": np.zeros((2, 2), np.float16)}, "v.pth")
    assert dropped == ["classifier.0.weight"] and [len(b) for b in blocks] == [2, 2, 3, 3, 3]
    _raises(conv.ConversionError, r"l.pth: missing tensor 'lin2.model.1.weight'", conv.lin_layers,
            drop(lins, "lin2.model.1.weight"), "l.pth")
    _raises(conv.ConversionError, r"l.pth: tensor 'lin1.model.1.weight' has shape \[128\]", conv.lin_layers,
            {**lins, "lin1.model.1.weight": np.zeros(128, np.float32)}, "l.pth")
    _raises(conv.ConversionError, r"l.pth: no lin\{l\}.model.1.weight tensors", conv.lin_layers, {}, "l.pth")


def test_converter_refuses_mismatched_lin(tmp_path):
    """A lin file for another backbone (AlexNet's widths) is refused naming both files."""
    import pickle

    lins = {f"lin{l}.model.1.weight": np.ones((1, c, 1, 1), np.float32) for l, c in enumerate((64, 192, 384, 256, 256))}
    path = tmp_path / "alex.pth"
    path.write_bytes(pickle.dumps(lins, protocol=2))
    _raises(conv.ConversionError, r"alex.pth: lin layers of widths \[64, 192, 384, 256, 256\] do not match the "
            r"backbone lpips_vgg_random_backbone_fp16.pth \(block widths \[64, 128, 256, 512, 512\]\)",
            conv.convert, fixture(VGG), path)


def test_cli_convert_lpips(tmp_path, capsys):
    vgg, lin = fixture("lpips_vgg_random_backbone_fp16.pth"), fixture("lpips_vgg_lin_v0.1.pth")
    out = tmp_path / "lp"
    assert main(["convert", "lpips", str(vgg), str(lin), str(out)]) == 0
    assert "reload check: bit-identical" in capsys.readouterr().out
    lp, params = jaxedit.load(out)
    r = ref("lpips_vgg_ref.npz")
    assert max_abs(lp(params, r["x0"], r["x1"]), r["dist"].reshape(-1)) <= 6e-9
    assert main(["convert", "lpips", str(vgg), str(tmp_path / "x")]) == 2  # the lin file is missing
    assert "VGG LIN DST" in capsys.readouterr().err
    assert main(["convert", "e4e", str(vgg), str(lin), str(tmp_path / "y")]) == 2  # one source only
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
