"""e4e encoder and the IR-SE / ArcFace backbone: converters + models exact against the reference fixture."""

import functools
import json

import jax
import numpy as np
import pytest
from conftest import fixture, max_abs, ref

import jaxedit
from jaxedit.cli.main import main
from jaxedit.converters import e4e as conv
from jaxedit.converters.export import write_torch_zip
from jaxedit.errors import InputError
from jaxedit.io import checkpoint, torchfile
from jaxedit.models import e4e as e4e_model
from jaxedit.models import irse
from jaxedit.models.e4e import Encoder
from jaxedit.models.irse import ArcFace

# Max abs errors vs the reference are bounded at ~3x the measured ones (in the comments; XLA -O0 as in conftest).
TOL = {"c1": 1.5e-5,  # 4.9e-6 (|c1| up to 8.6)
       "c2": 3e-5,  # 9.1e-6 (|c2| up to 10.8)
       "c3": 2e-5,  # 6.7e-6 (|c3| up to 6.9); the same for ArcFace's body on the same weights
       "codes": 2.5e-5,  # 8.1e-6 (|codes| up to 6.1), also codes_without_latent_avg
       "codes_x64": 2.5e-6}  # 7.7e-7
ARCFACE_TOL = 3e-7  # unit-norm features vs a float64 numpy output layer on the same body output: 9.6e-8


@functools.lru_cache(None)
def _converted():
    return conv.convert_e4e(fixture("e4e_tiny_shrunk.pt"))


@functools.lru_cache(None)
def _run(cfg):
    """(c1, c2, c3, codes, codes without latent_avg) as one compiled program per input shape."""
    E = Encoder(cfg)
    return jax.jit(lambda p, x: (*E.features(p, x), E(p, x), E.raw_codes(p, x)))


@functools.lru_cache(None)
def _state_dict():  # read-only arrays; callers copy the containers they change
    return torchfile.load(fixture("e4e_tiny_shrunk.pt"))


# ------------------------------------------------------------------------------ e4e parity
def test_e4e_matches_reference():
    r = ref("e4e_tiny_ref.npz")
    cfg, params, _ = _converted()
    c1, c2, c3, codes, raw = _run(cfg)(params, r["x"])
    for name, got in (("c1", c1), ("c2", c2), ("c3", c3)):
        assert got.shape == r[name].shape and max_abs(got, r[name]) < TOL[name], name
    assert max_abs(codes, r["codes"]) < TOL["codes"]
    assert max_abs(raw, r["codes_without_latent_avg"]) < TOL["codes"]
    np.testing.assert_array_equal(params["latent_avg"], r["latent_avg"])
    *_, codes64, _ = _run(cfg)(params, r["x64"])
    assert codes64.shape == (2, 10, 64) and max_abs(codes64, r["codes_x64"]) < TOL["codes_x64"]


def test_inferred_config_and_info():
    cfg, params, info = _converted()
    # every IR-SE50 width / 8, SE reduction 4, 10 styles of 64 (manifest: "e4e_tiny")
    assert (cfg.input_channels, cfg.stage_units, cfg.stage_channels, cfg.stage_strides, cfg.se_reduction) == (
        8, (3, 4, 14, 3), (8, 16, 32, 64), (2, 2, 2, 2), 4)
    assert (cfg.n_styles, cfg.w_dim, cfg.style_width, cfg.style_pools) == (10, 64, 64, (4, 4, 4, 5, 5, 5, 5, 6, 6, 6))
    assert cfg.feature_units == (6, 20, 23) and cfg.add_latent_avg
    assert info["decoder"]["present"] is False and info["encoder_type"] == "Encoder4Editing"
    assert info["stylegan_size"] == 64 and len(info["sha256"]) == 64
    manifest = json.loads(fixture("manifest.json").read_text())["e4e_tiny"]
    assert "10 styles (w 64" in manifest["config"]
    assert e4e_model.E4EConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert all(np.asarray(a).dtype == np.float32 for a in jax.tree.leaves(params))


def test_name_rules_round_trip_and_layouts():
    sd = _state_dict()["state_dict"]
    for k in sd:
        if not k.endswith("num_batches_tracked"):
            name = k[len("encoder."):]
            assert conv.torch_name(conv.jax_name(name, conv.E4E_RULES)[0]) == name
    _, params, _ = _converted()
    w = np.asarray(sd["encoder.body.3.res_layer.3.weight"], np.float32)  # OIHW
    np.testing.assert_array_equal(params["backbone"]["body_3"]["conv2"]["kernel"], w.transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(params["styles_9"]["convs_5"]["bias"], sd["encoder.styles.9.convs.10.bias"])
    np.testing.assert_array_equal(params["styles_2"]["linear"]["weight"], np.asarray(sd["encoder.styles.2.linear.weight"]).T)
    assert "shortcut_conv" not in params["backbone"]["body_0"] and "shortcut_conv" in params["backbone"]["body_21"]


def test_upsample_add_is_bilinear_align_corners():
    x = np.random.default_rng(0).normal(size=(1, 3, 5, 2)).astype(np.float32)
    y = np.zeros((1, 7, 9, 2), np.float32)
    got = np.asarray(e4e_model.upsample_add(x, y))
    # corners align: input (i, j) sits at output (3 i, 2 j); midpoints are averages
    np.testing.assert_allclose(got[:, ::3, ::2], x, atol=1e-6)
    np.testing.assert_allclose(got[:, 1, 0], (2 * x[:, 0, 0] + x[:, 1, 0]) / 3, atol=1e-6)
    np.testing.assert_allclose(got[:, 0, 1], (x[:, 0, 0] + x[:, 0, 1]) / 2, atol=1e-6)


def test_input_checks():
    cfg, params, _ = _converted()
    E = Encoder(cfg)
    with pytest.raises(InputError, match=r"e4e expects images \[B, H, W, 3\]"):
        E(params, np.zeros((1, 64, 64), np.float32))
    with pytest.raises(InputError, match=r"a 512x512 input leaves style block 0 with a 2x2 map"):
        E(params, np.zeros((1, 512, 512, 3), np.float32))


# ------------------------------------------------------------------------------ ArcFace on the same body
def _arcface_state_dict(affine: bool = True) -> dict:
    """``model_ir_se50.pth``'s layout: the e4e fixture's body + random output-layer tensors (7x7 map)."""
    sd = {k[len("encoder."):]: np.array(v, np.float32) for k, v in _state_dict()["state_dict"].items()
          if k.startswith(("encoder.input_layer.", "encoder.body.")) and not k.endswith("num_batches_tracked")}
    g, c, e = np.random.default_rng(1), 64, 512
    bn = lambda p, n: {f"{p}.weight": g.uniform(0.5, 1.5, n), f"{p}.bias": g.normal(0, 0.1, n),
                       f"{p}.running_mean": g.normal(0, 0.2, n), f"{p}.running_var": g.uniform(0.5, 2.0, n)}
    sd.update(bn("output_layer.0", c))
    sd["output_layer.3.weight"] = g.normal(0, 1 / np.sqrt(c * 49), (e, c * 49))
    sd["output_layer.3.bias"] = g.normal(0, 0.1, e)
    sd.update(bn("output_layer.4", e))
    if not affine:
        del sd["output_layer.4.weight"], sd["output_layer.4.bias"]
    return {k: np.asarray(v, np.float32) for k, v in sd.items()}


def _output_layer_ref(sd: dict, body_nhwc: np.ndarray) -> np.ndarray:
    """The reference output layer in float64, torch layout: BN2d, flatten NCHW, Linear, BN1d, l2 norm."""
    f = np.asarray(body_nhwc, np.float64).transpose(0, 3, 1, 2)
    bn = lambda x, p, shape: ((x - sd[f"{p}.running_mean"].reshape(shape)) / np.sqrt(sd[f"{p}.running_var"].reshape(shape) + 1e-5)
                              * sd.get(f"{p}.weight", np.ones(1)).reshape(shape) + sd.get(f"{p}.bias", np.zeros(1)).reshape(shape))
    y = bn(f, "output_layer.0", (1, -1, 1, 1)).reshape(f.shape[0], -1)
    y = bn(y @ sd["output_layer.3.weight"].T.astype(np.float64) + sd["output_layer.3.bias"], "output_layer.4", (1, -1))
    return y / np.linalg.norm(y, axis=-1, keepdims=True)


def test_arcface_from_file_matches_e4e_body(tmp_path):
    sd = _arcface_state_dict()
    path = tmp_path / "model_ir_se50.pth"
    write_torch_zip(path, sd)  # torch.save's zip format, read back through torchfile.load
    cfg, params, info = conv.convert_arcface(path)
    assert (cfg.input_size, cfg.output_size, cfg.embed_dim, cfg.se_reduction) == (112, 7, 512, 4)
    assert info["output_bn_affine"] and info["file"] == "model_ir_se50.pth"
    e4e_cfg, e4e_params, _ = _converted()
    assert cfg.units == e4e_cfg.units
    for a, b in zip(jax.tree.leaves(params["backbone"]), jax.tree.leaves(e4e_params["backbone"])):
        np.testing.assert_array_equal(a, b)
    r = ref("e4e_tiny_ref.npz")
    A = ArcFace(cfg)
    crop = irse.face_crop(r["x"])
    body256, body112, feats = jax.jit(lambda p, x, c: (A.body(p, x), A.body(p, c), A(p, c)))(params, r["x"], crop)
    assert max_abs(body256, r["c3"]) < TOL["c3"]  # the body's last unit is e4e's c3
    assert feats.shape == (2, 512) and body112.shape == (2, 7, 7, 64)
    np.testing.assert_allclose(np.linalg.norm(np.asarray(feats, np.float64), axis=-1), 1.0, atol=3e-7)  # 9.8e-8
    assert max_abs(feats, _output_layer_ref(sd, body112)) < ARCFACE_TOL
    with pytest.raises(InputError, match=r"ArcFace expects images \[B, 112, 112, 3\]"):
        A(params, r["x"])


def test_arcface_non_affine_bn1d():
    sd = _arcface_state_dict(affine=False)
    _, params, info = conv.from_arcface(sd, "ir_se50_noaffine.pth")
    assert not info["output_bn_affine"]
    np.testing.assert_array_equal(params["output_bn1d"]["scale"], np.ones(512, np.float32))
    np.testing.assert_array_equal(params["output_bn1d"]["bias"], np.zeros(512, np.float32))


def test_face_crop_is_torch_adaptive_pool():
    x = np.random.default_rng(2).normal(size=(1, 256, 256, 1)).astype(np.float32)
    got = np.asarray(irse.adaptive_avg_pool(x[:, 35:223, 32:220], 112))
    want = np.empty((112, 112))
    for i in range(112):  # torch: window [floor(i n / o), ceil((i + 1) n / o))
        for j in range(112):
            h0, h1 = i * 188 // 112, -(-(i + 1) * 188 // 112)
            w0, w1 = j * 188 // 112, -(-(j + 1) * 188 // 112)
            want[i, j] = x[0, 35 + h0:35 + h1, 32 + w0:32 + w1, 0].mean()
    assert max_abs(got[0, :, :, 0], want) < 1e-6
    assert irse.face_crop(np.zeros((3, 256, 256, 3), np.float32)).shape == (3, 112, 112, 3)


# ------------------------------------------------------------------------------ checkpoints
def test_checkpoint_round_trips(tmp_path):
    cfg, params, info = _converted()
    dst = checkpoint.save(tmp_path / "e4e", kind=e4e_model.KIND, model=cfg.to_dict(), params=params, source=info)
    model, reloaded = jaxedit.load(dst)
    assert isinstance(model, Encoder) and model.cfg == cfg
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(reloaded)):
        np.testing.assert_array_equal(a, b)
    assert checkpoint.read_meta(dst)["source"]["sha256"] == info["sha256"]

    acfg, aparams, ainfo = conv.from_arcface(_arcface_state_dict(), "model_ir_se50.pth")
    dst = checkpoint.save(tmp_path / "arcface", kind=irse.KIND, model=acfg.to_dict(), params=aparams, source=ainfo)
    model, reloaded = jaxedit.load(dst)
    assert isinstance(model, ArcFace) and model.cfg == acfg and model.cfg.input_size == 112
    for a, b in zip(jax.tree.leaves(aparams), jax.tree.leaves(reloaded)):
        np.testing.assert_array_equal(a, b)


# ------------------------------------------------------------------------------ refusals
def test_file_refusals(tmp_path):
    src = fixture("e4e_tiny_shrunk.pt")
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(src.read_bytes()[:5000])
    with pytest.raises(torchfile.TorchFileError, match="truncated.pt"):
        conv.convert_e4e(bad)
    with pytest.raises(conv.ConversionError, match=r"warped_support_sets.pt: not an e4e checkpoint \(no 'state_dict'"):
        conv.convert_e4e(fixture("warped_support_sets.pt"))
    with pytest.raises(conv.ConversionError, match="warped_support_sets.pt: missing tensor 'output_layer.3.weight'"):
        conv.convert_arcface(fixture("warped_support_sets.pt"))
    with pytest.raises(conv.ConversionError, match="e4e_tiny_shrunk.pt: a checkpoint with a 'state_dict'"):
        conv.convert_arcface(src)
    arc = tmp_path / "arc.pth"
    write_torch_zip(arc, _arcface_state_dict())
    with pytest.raises(conv.ConversionError, match=r"arc.pth: not an e4e checkpoint"):
        conv.convert_e4e(arc)


def _e4e_obj(**changes):
    obj = dict(_state_dict())
    obj["state_dict"] = dict(obj["state_dict"])
    obj["opts"] = dict(obj["opts"])
    for k, v in changes.items():
        if k.startswith("sd:"):
            if v is None:
                del obj["state_dict"][k[3:]]
            else:
                obj["state_dict"][k[3:]] = v
        elif k.startswith("opts:"):
            obj["opts"][k[5:]] = v
        elif v is None:
            del obj[k]
        else:
            obj[k] = v
    return obj


@pytest.mark.parametrize("changes, message", [
    ({"sd:encoder.styles.4.linear.weight": None}, r"x.pt: missing tensors \['encoder.styles.4.linear.weight'\]"),
    ({"sd:encoder.extra.weight": np.zeros(3, np.float32)}, r"x.pt: unexpected tensor 'encoder.extra.weight'"),
    ({"sd:generator.w": np.zeros(3, np.float32)}, r"x.pt: unexpected tensors 'generator.w' \(an e4e state dict holds"),
    ({"sd:encoder.styles.4.linear.weight": np.zeros((64, 63), np.float32)},
     r"x.pt: tensor 'encoder.styles.4.linear.weight' has shape \[64, 63\], which does not fit"),
    ({"sd:encoder.latlayer1.bias": np.zeros(64, np.int64)}, r"x.pt: tensor 'encoder.latlayer1.bias' is <array <i8 \[64\]>, not a floating"),
    ({"sd:encoder.body.9.res_layer.0.weight": np.zeros(17, np.float32)},
     r"x.pt: tensor 'encoder.body.9.res_layer.0.weight' has 17 channels, but the previous layer gives 32"),
    ({"opts:encoder_type": "GradualStyleEncoder"}, r"x.pt: encoder_type 'GradualStyleEncoder' in 'opts'; only Encoder4Editing"),
    ({"opts:stylegan_size": 128}, r"x.pt: 10 style blocks, but opts stylegan_size 128 needs 12"),
    ({"latent_avg": None}, r"x.pt: opts start_from_latent_avg is set but the checkpoint has no 'latent_avg'"),
    ({"latent_avg": np.zeros((3, 64), np.float32)}, r"x.pt: 'latent_avg' has shape \[3, 64\]"),
    ({"state_dict": [1, 2]}, r"x.pt: 'state_dict' is \[1, 2\], not a dict"),
])
def test_e4e_refusals(changes, message):
    with pytest.raises(conv.ConversionError, match=message):
        conv.from_e4e(_e4e_obj(**changes), "x.pt")


def test_decoder_reported_and_latent_avg_optional():
    cfg, params, info = conv.from_e4e(_e4e_obj(**{"sd:decoder.style.1.weight": np.zeros((4, 4), np.float32)}), "x.pt")
    assert info["decoder"] == {**info["decoder"], "present": True, "tensors": 1}
    cfg, params, info = conv.from_e4e(_e4e_obj(**{"opts:start_from_latent_avg": False, "latent_avg": None}), "x.pt")
    assert not cfg.add_latent_avg and "latent_avg" not in params and not info["latent_avg"]
    assert "latent_avg" not in Encoder(cfg).param_shapes()
    with pytest.raises(conv.ConversionError, match=r"y.pth: missing tensors \['body.2.res_layer.3.weight'\]"):
        conv.from_arcface({k: v for k, v in _arcface_state_dict().items() if k != "body.2.res_layer.3.weight"},
                          "y.pth")
    with pytest.raises(conv.ConversionError, match=r"y.pth: tensor 'output_layer.3.weight' has 3000 inputs"):
        conv.from_arcface({**_arcface_state_dict(), "output_layer.3.weight": np.zeros((512, 3000), np.float32)},
                          "y.pth")


@pytest.mark.slow
def test_cli_convert_e4e(tmp_path, capsys):
    out = tmp_path / "e4e"
    assert main(["convert", "e4e", str(fixture("e4e_tiny_shrunk.pt")), str(out)]) == 0
    assert "reload check: bit-identical" in capsys.readouterr().out
    E, params = jaxedit.load(out)
    cfg, direct, _ = conv.convert_e4e(fixture("e4e_tiny_shrunk.pt"))
    assert E.cfg == cfg
    assert jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), direct, params))
    assert main(["convert", "arcface", str(fixture("e4e_tiny_shrunk.pt")), str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "e4e_tiny_shrunk.pt" in err
