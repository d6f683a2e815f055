"""OpenAI CLIP: converter + model parity with the reference, tokenizer golden ids, preprocessing."""

import functools
import gzip

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import fixture, max_abs, ref

from jaxedit.converters import clip as conv
from jaxedit.io import torchfile
from jaxedit.models.clip import CLIP, CLIP_MEAN, CLIP_STD, CLIPConfig, load, preprocess
from jaxedit.models.clip import tokenizer
from jaxedit.models.clip.tokenizer import Tokenizer, TokenizerError

FILE_KINDS = ("state_dict", "torchscript")
# Relative errors vs the reference (fp16-rounded weights) are bounded at ~3x the measured ones, in the
# comments (the same for both file kinds): image features, text features, logits.
REL_TOL = {"vit": (1e-6, 5e-6, 3e-6),  # 3.1e-7 1.1e-6 9.8e-7
           "rn": (3e-6, 2e-6, 5e-6)}  # 9.4e-7 5.7e-7 1.0e-6


def _rel(a, b) -> float:
    return max_abs(a, b) / float(np.max(np.abs(b)))


def _unit(v):
    return v / np.linalg.norm(v, axis=-1, keepdims=True)


@functools.lru_cache(None)
def _converted(arch: str, kind: str):
    return conv.convert(fixture(f"clip_tiny_{arch}_{kind}.pt"))


@functools.lru_cache(None)
def _forward(cfg: CLIPConfig):
    """One compiled program per architecture: (image features, text features, logits_per_image, per_text)."""
    model = CLIP(cfg)
    return jax.jit(lambda p, im, tok: (model.encode_image(p, im), model.encode_text(p, tok), *model(p, im, tok)))


# ------------------------------------------------------------------------------ model + converter parity
@pytest.mark.parametrize("kind", FILE_KINDS)
@pytest.mark.parametrize("arch", ["vit", "rn"])
def test_matches_reference(arch, kind):
    r = ref(f"clip_tiny_{arch}_ref.npz")
    cfg, params, info = _converted(arch, kind)
    assert info["format"] == kind and cfg.is_vit == (arch == "vit")
    img, txt, per_image, per_text = _forward(cfg)(params, r["image"], r["tokens"].astype(np.int32))
    tol_img, tol_txt, tol_logits = REL_TOL[arch]
    assert _rel(img, r["image_features_fp16weights"]) < tol_img
    assert _rel(txt, r["text_features_fp16weights"]) < tol_txt
    scale = np.exp(np.float64(params["logit_scale"]))
    expected = scale * _unit(r["image_features_fp16weights"].astype(np.float64)) @ _unit(
        r["text_features_fp16weights"].astype(np.float64)).T
    assert _rel(per_image, expected) < tol_logits
    np.testing.assert_array_equal(np.asarray(per_text), np.asarray(per_image).T)
    # the reference's float32-weight logits differ only by the fp16 rounding of the released weights (7.5e-4)
    assert _rel(per_image, r["logits_per_image"]) < 3e-3


def test_inferred_config_matches_manifest():
    import json

    manifest = json.loads(fixture("manifest.json").read_text())
    for arch in ("vit", "rn"):
        want = {k: tuple(v) if isinstance(v, list) else v for k, v in manifest[f"clip_tiny_{arch}"]["config"].items()}
        for kind in FILE_KINDS:
            cfg = _converted(arch, kind)[0]
            assert {k: getattr(cfg, k) for k in want} == want


def test_short_token_rows_equal_padded_rows():
    cfg, params, _ = _converted("vit", "state_dict")
    tokens = ref("clip_tiny_vit_ref.npz")["tokens"].astype(np.int32)
    n = int(np.max(np.argmax(tokens, axis=1))) + 1
    model = CLIP(cfg)
    encode = jax.jit(model.encode_text)
    full, short = encode(params, jnp.asarray(tokens)), encode(params, jnp.asarray(tokens[:, :n]))
    assert max_abs(full, short) < 5e-6  # measured 1.4e-6
    with pytest.raises(ValueError, match="context_length|L <="):
        model.encode_text(params, jnp.zeros((1, cfg.context_length + 1), jnp.int32))
    with pytest.raises(ValueError, match=r"\[B, 32, 32, 3\]"):
        model.encode_image(params, jnp.zeros((1, 31, 31, 3)))


def test_name_rules_round_trip_and_layouts():
    sd, _ = conv.state_dict(fixture("clip_tiny_rn_state_dict.pt"))
    for k in sd:
        assert conv.torch_name(conv.jax_name(k)[0]) == k
    assert conv.jax_name("visual.layer2.0.downsample.1.running_var")[0] == "visual.layer2_0.downsample_1.var"
    in_proj = conv.jax_name("transformer.resblocks.1.attn.in_proj_weight")[0]
    assert in_proj == "transformer.resblocks_1.attn.in_proj.kernel"
    _, params, _ = _converted("rn", "state_dict")
    w = np.asarray(sd["visual.layer1.0.conv2.weight"], np.float32)  # OIHW
    np.testing.assert_array_equal(params["visual"]["layer1_0"]["conv2"]["kernel"], w.transpose(2, 3, 1, 0))
    assert all(np.asarray(x).dtype == np.float32 for x in jax.tree.leaves(params))


# ------------------------------------------------------------------------------ converter errors and saving
def test_converter_errors(tmp_path):
    src = fixture("clip_tiny_vit_state_dict.pt")
    bad = tmp_path / "truncated.pt"
    bad.write_bytes(src.read_bytes()[:5000])
    with pytest.raises(torchfile.TorchFileError, match="truncated.pt"):
        conv.convert(bad)
    with pytest.raises(conv.ConversionError, match="warped_support_sets.pt: missing tensor"):
        conv.convert(fixture("warped_support_sets.pt"))
    sd, _ = conv.state_dict(src)
    cfg = conv.infer_config(sd, "x.pt")
    with pytest.raises(conv.ConversionError, match=r"x.pt: missing tensor 'ln_final.weight'"):
        conv.infer_config({k: v for k, v in sd.items() if k != "ln_final.weight"}, "x.pt")
    with pytest.raises(conv.ConversionError, match=r"x.pt: missing tensors \['visual.ln_post.weight'\]"):
        conv.to_params({k: v for k, v in sd.items() if k != "visual.ln_post.weight"}, cfg, "x.pt")
    with pytest.raises(conv.ConversionError, match=r"x.pt: unexpected tensors \['visual.extra.weight'\]"):
        conv.to_params({**sd, "visual.extra.weight": np.zeros((2, 2), np.float16)}, cfg, "x.pt")
    with pytest.raises(conv.ConversionError, match=r"x.pt: tensor 'visual.proj' has shape \[128, 31\]"):
        conv.to_params({**sd, "visual.proj": np.zeros((128, 31), np.float16)}, cfg, "x.pt")


def test_save_copies_vocab_and_reloads(tmp_path):
    cfg, params, info = _converted("vit", "torchscript")
    full = fixture("bpe_simple_vocab_16e6.txt.gz")
    with pytest.raises(conv.ConversionError, match="49408 tokens but the model has vocab_size 1000"):
        conv.save(tmp_path / "a", cfg, params, info, vocab=full)
    assert not (tmp_path / "a").exists()
    lines = gzip.decompress(full.read_bytes()).decode().split("\n")
    small = tmp_path / "src" / "bpe_small.txt.gz"  # the first 486 merges: 512 + 486 + 2 = 1000 tokens
    small.parent.mkdir()
    small.write_bytes(gzip.compress("\n".join(lines[:487]).encode()))
    dst, report = conv.save(tmp_path / "ck", cfg, params, info, vocab=small.parent)
    assert "bit-identical" in report and (dst / "bpe_small.txt.gz").is_file()
    model, reloaded = load(dst)
    assert model.cfg == cfg and Tokenizer.from_file(dst).vocab_size == cfg.vocab_size
    tokens = Tokenizer.from_file(dst)(["a cat"], context_length=cfg.context_length)
    assert tokens[0, 0] == 998 and 999 in tokens[0]
    with pytest.raises(ValueError, match="already exists"):
        conv.save(dst, cfg, params, info)


# ------------------------------------------------------------------------------ tokenizer
@pytest.fixture(scope="module")
def tok():
    return Tokenizer.from_file(fixture("bpe_simple_vocab_16e6.txt.gz").parent)


def test_tokenizer_golden_ids(tok):
    r = ref("clip_tokenizer_ref.npz")
    out = tok([str(t) for t in r["texts"]])
    assert out.dtype == np.int32 and tok.vocab_size == 49408 and (tok.sot_token, tok.eot_token) == (49406, 49407)
    np.testing.assert_array_equal(out, r["tokens"])
    # produced by the reference (ftfy 6.3.1 + regex): entities, ligatures, quotes, widths, escapes, lines
    assert tok.encode("&amp;amp;amp; \ufb01ne \u201cquoted\u201d \uff26\uff35\uff2c\uff2c\u3000\uff57\uff49\uff44\uff54"
                      "\uff48") == [261, 3797, 257, 27706, 257, 1476, 23571]
    assert tok.encode("don't STOP\x1b[31m red\x1b[0m \u2003 \u00bd \u0661\u0662 \u65e5\u672c\u8a9e \U0001F600") == [
        847, 713, 1691, 736, 33613, 149, 350, 149, 351, 39121, 44353, 34002, 508, 7334]
    assert tok.encode("&EACUTE;t&eacute;\n<b>&amp;amp;amp;</b>") == [
        3459, 39694, 283, 321, 29, 261, 6259, 26, 34308, 321, 285]
    assert tok.decode(out[0][out[0] > 0]) == "<|startoftext|>a photo of a cat <|endoftext|>"


def test_tokenizer_context_and_small_merges(tok, tmp_path):
    text = "a large red square with a small yellow spot on a blue background"
    with pytest.raises(TokenizerError, match="context length 8"):
        tok([text], context_length=8)
    cut = tok([text], context_length=8, truncate=True)[0]
    full = tok([text])[0]
    np.testing.assert_array_equal(cut[:7], full[:7])
    assert cut[7] == tok.eot_token
    path = tmp_path / "merges.txt.gz"
    path.write_bytes(gzip.compress(b"#version: 0.2 (test)\nr e\nre d</w>\nc a\nca t</w>\n\n"))
    small = Tokenizer.from_file(tmp_path)
    assert small.vocab_size == 512 + 4 + 2 and small.eot_token == 517
    ids = small.encode("Red cat, red!")
    assert [small.decoder[i] for i in ids] == ["red</w>", "cat</w>", ",</w>", "red</w>", "!</w>"]
    path.write_bytes(gzip.compress(b"#version\na b c\n"))
    with pytest.raises(TokenizerError, match="merges.txt.gz: line 2"):
        Tokenizer.from_file(path)
    path.write_bytes(gzip.compress(bytes(tokenizer.MERGES_MAX_BYTES + 1)))  # a gzip bomb: 64 MiB in 64 KiB
    with pytest.raises(TokenizerError, match="more than 64 MiB"):
        Tokenizer.from_file(path)


# ------------------------------------------------------------------------------ preprocessing
def _pil_clip_transform(x: np.ndarray, r: int) -> np.ndarray:
    """openai/CLIP's transform with PIL in float mode (no uint8 rounding) on one [H, W, 3] image in [-1, 1]."""
    from PIL import Image

    h, w, _ = x.shape
    nh, nw = (r, int(r * w / h)) if h <= w else (int(r * h / w), r)
    up = np.stack([np.asarray(Image.fromarray((x[..., c] + 1) / 2, mode="F").resize((nw, nh), Image.BICUBIC))
                   for c in range(3)], -1)
    t, left = int(round((nh - r) / 2)), int(round((nw - r) / 2))
    return (np.clip(up[t:t + r, left:left + r], 0, 1) - np.array(CLIP_MEAN)) / np.array(CLIP_STD)


@pytest.mark.parametrize("shape", [(40, 56), (20, 17)])  # down- and up-sampling, both orientations
def test_preprocess_clip_matches_pil(shape):
    x = np.random.default_rng(0).uniform(-1, 1, (2, *shape, 3)).astype(np.float32)
    got = np.asarray(preprocess(jnp.asarray(x), 32, "clip"))
    assert got.shape == (2, 32, 32, 3)
    assert max_abs(got[1], _pil_clip_transform(x[1], 32)) < 2e-5  # measured 6.4e-6


def test_preprocess_constants_and_styleclip():
    const = jnp.full((1, 48, 48, 3), 0.2)
    np.testing.assert_allclose(preprocess(const, 32, "clip")[0, 5, 7], (0.6 - np.array(CLIP_MEAN)) / np.array(CLIP_STD),
                               rtol=2e-6)  # measured 4.3e-7
    np.testing.assert_allclose(preprocess(const, 14, "styleclip"), 0.2, rtol=5e-8)
    # StyleCLIP's factors at 1024 -> 224 are x7 nearest then 32x32 average: the same pair as 64 -> 14
    x = np.random.default_rng(1).normal(size=(1, 64, 64, 3)).astype(np.float32)
    up = np.repeat(np.repeat(x, 7, axis=1), 7, axis=2)
    want = up.reshape(1, 14, 32, 14, 32, 3).mean(axis=(2, 4))
    assert max_abs(preprocess(jnp.asarray(x), 14, "styleclip"), want) < 1e-5  # measured 2.6e-6
    assert max_abs(preprocess(jnp.asarray(x), 64, "none"), x) == 0
    with pytest.raises(ValueError, match="mode 'none' needs 32x32"):
        preprocess(jnp.asarray(x), 32, "none")
    with pytest.raises(ValueError, match="preprocess mode"):
        preprocess(jnp.asarray(x), 32, "bilinear")
