"""The embedded default models in checkpoints/ load and do what their model cards say."""

from pathlib import Path

import jax
import numpy as np

from jaxedit.data import shapes

CKPTS = Path(__file__).resolve().parents[1] / "checkpoints"


def test_probe_reads_fresh_renders():
    from jaxedit.models import probe

    P, params = probe.load(CKPTS / "shapes32-probe")
    batch = shapes.sample(jax.random.key(123456), 256, shapes.ShapesConfig())
    pred = jax.jit(P.predict)(params, batch["image"])
    assert float(np.mean(pred["shape"] == batch["factors"]["shape"])) >= 0.99
    mae = np.abs(np.asarray(pred["factors"]) - np.asarray(batch["vector"])).mean(0)
    names = shapes.FACTOR_NAMES
    for name, err in zip(names, mae):
        limit = 0.06 if name.startswith("spot") else 0.03  # held-out 0.027-0.040 and <= 0.012 (model card)
        assert err <= limit, (name, err)
    labels, plabels = np.asarray(batch["labels"]), np.asarray(pred["labels"])
    iou = [np.sum((labels == c) & (plabels == c)) / np.sum((labels == c) | (plabels == c)) for c in range(3)]
    assert np.mean(iou) >= 0.9, iou
    # the embedding separates shapes: same-shape images are closer on average
    f = np.asarray(pred["features"])
    s = np.asarray(batch["factors"]["shape"])
    d = ((f[:, None] - f[None]) ** 2).sum(-1)
    same, diff = d[s[:, None] == s[None]].mean(), d[s[:, None] != s[None]].mean()
    assert same < diff


def test_shapes_clip_matches_colours_and_shapes_above_chance():
    from jaxedit.models import clip
    from jaxedit.models.clip.tokenizer import Tokenizer
    from jaxedit.train import clip as train_clip

    C, params = clip.load(CKPTS / "shapes-clip")
    tok = Tokenizer.from_file(CKPTS / "shapes-clip")
    out = train_clip.zero_shot(C, params, tok, jax.random.key(77), 256, shapes.ShapesConfig(), C.cfg.context_length)
    acc, chance = out["zero_shot_accuracy"], out["chance"]
    for factor in ("shape", "size", "spot_color", "spot_size"):  # the model card's table, with margin
        assert acc[factor] > chance[factor] + 0.1, (factor, acc[factor])
    assert acc["color"] > 0.9 and acc["background"] > chance["background"] + 0.1, acc


def test_probe_words_agree_with_render_captions():
    """attributes.words (the text-edit experiments' scorer) reads the caption words of renders."""
    from jaxedit.metrics import attributes
    from jaxedit.models import probe

    P, params = probe.load(CKPTS / "shapes32-probe")
    batch = shapes.sample(jax.random.key(4242), 256, shapes.ShapesConfig())
    got = attributes.words(jax.jit(P)(params, batch["image"]))
    cols = {k: np.asarray(v) for k, v in batch["factors"].items()}
    truth = [shapes.describe({k: c[i] for k, c in cols.items()}) for i in range(256)]
    for factor in truth[0]:
        agree = np.mean([g[factor] == t[factor] for g, t in zip(got, truth)])
        assert agree >= (0.95 if factor in ("shape", "position", "size") else 0.8), (factor, agree)


def test_segmenter_agrees_with_the_probe_on_generator_samples():
    import jaxedit
    from jaxedit.train.segmenter import scores

    G, gp = jaxedit.load("shapes32-stylegan2")
    P, pp = jaxedit.load("shapes32-probe")
    clf, cp = jaxedit.load(CKPTS / "shapes32-segmenter")
    ws = G.mapping(gp, jax.random.normal(jax.random.key(77), (32, G.cfg.z_dim)), psi=0.7)
    img, feats = G.synthesis(gp, ws, return_features=True)
    seg = np.asarray(np.argmax(clf.segment(cp, feats, 32, ensemble_mean=True), axis=-1))
    s = scores(seg, np.asarray(P.predict(pp, img)["labels"]))
    # the model card's last row (probe version 1) on 64 other samples: mIoU 0.865, spot 0.705; measured here with
    # probe version 2 (spot labels IoU 0.83 vs 0.93 for version 1): mIoU 0.824, spot 0.599
    assert s["miou"] > 0.78 and s["iou"]["background"] > 0.98 and s["iou"]["spot"] > 0.5


def test_l2sae_reconstructs_renders_as_its_model_card_says():
    import jaxedit
    from jaxedit.edits import local_style

    M, params = jaxedit.load(CKPTS / "shapes32-l2sae")
    x = shapes.sample(jax.random.key(99), 64)["image"]
    rec = np.clip(np.asarray(M(params, x)), -1, 1)
    psnr = np.mean(10 * np.log10(4 / np.mean((rec - np.asarray(x)) ** 2, axis=(1, 2, 3))))
    assert psnr > 21.0  # the card: 21.5 dB on 256 renders; measured here 21.7 (version 1: 20.4)
    ed = local_style.LocalStyle(params, M)
    out = local_style.style_noise(ed, x, "body", 1.5, jax.random.split(jax.random.key(0), 64))
    body = np.asarray(local_style.region_masks(ed, x)) == 1
    np.testing.assert_array_equal(np.asarray(out)[~body], np.asarray(x)[~body])
    assert np.abs(np.asarray(out - x))[body].mean() > 0.2  # the body's look changes (measured 0.62)
