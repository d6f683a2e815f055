"""Training side of EditGAN's segmentation branch: ``gather_features`` equal to the naive resize-and-concatenate
order at chosen pixels, training-mode BatchNorm (``train_logits``) against a direct numpy implementation, torch's
running statistics (``update_running_stats``) and their eval-mode agreement, the scores on hand-made label maps,
a step that learns pixel-aligned labels, and (slow) an interrupted ``train`` run resumed to the end equal to an
uninterrupted one, its checkpoint loading as a PixelClassifier."""

from __future__ import annotations

import dataclasses
import json
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from conftest import max_abs

import jaxedit
from jaxedit.errors import ConfigError
from jaxedit.io import checkpoint
from jaxedit.models.segmenter import (
    BN_EPS,
    PixelClassifier,
    PixelClassifierConfig,
    gather_features,
    resize,
    train_logits,
    update_running_stats,
)
from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config
from jaxedit.train import runs
from jaxedit.train import segmenter as T

CFG = StyleGAN2Config(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channels=(32, 16, 8))
TOL_BILINEAR = 1.5e-6  # gather vs resize (another summation order): measured 4.8e-7 (features up to 4.2)
TOL_TRAIN = 3e-6  # train_logits vs float64 numpy: measured 9.9e-7 (logits up to 4.7)
TOL_STATS = 1.5e-6  # batch statistics vs float64 numpy: measured 4.5e-7
TOL_EVAL_BIASED = 6e-6  # eval (running var = biased batch var) vs train logits, n = 4096: measured 1.9e-6
TOL_EVAL = 6e-3  # eval (running var = unbiased, torch's) vs train logits, n = 4096: measured 2.1e-3 (logits up to 8.3)


# ------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def tiny_g():
    G = StyleGAN2(CFG)
    p = G.init(jax.random.key(0))
    ws = G.mapping(p, jax.random.normal(jax.random.key(1), (3, CFG.z_dim)))
    img, feats = G.synthesis(p, ws, return_features=True)
    return G, p, ws, img, feats


def _random_params(key, m=3, d=24, hidden=(16, 8), c=3):
    """An ensemble whose every parameter is non-trivial (kernels ~ 1/sqrt(fan_in), BN affine random, running
    stats random): the default init (std 0.02, BN identity) would hide a wrong scale or a swapped term."""
    clf = PixelClassifier(PixelClassifierConfig(in_dim=d, num_classes=c, num_members=m, hidden=hidden))
    shapes = clf.init(jax.random.key(0))
    leaves, tree = jax.tree.flatten_with_path(shapes)
    keys = jax.random.split(key, len(leaves))
    out = []
    for (path, leaf), k in zip(leaves, keys):
        name = path[-1].key
        if name == "kernel":
            out.append(jax.random.normal(k, leaf.shape) / math.sqrt(leaf.shape[1]))
        elif name in ("scale", "var"):
            out.append(jax.random.uniform(k, leaf.shape, minval=0.5, maxval=1.5))
        else:  # bias, mean
            out.append(0.3 * jax.random.normal(k, leaf.shape))
    return clf, jax.tree.unflatten(tree, out)


def _np_bn_train(p, h):
    mean, var = h.mean(0), h.var(0)  # the biased variance normalizes
    y = (h - mean) / np.sqrt(var + BN_EPS) * p["scale"] + p["bias"]
    return y, {"mean": mean, "var": h.var(0, ddof=1)}  # the unbiased one is what the running stats average


def _np_train_logits(params, x):
    """Training-mode BatchNorm ensemble in float64 numpy, member by member on its own rows."""
    P = jax.tree.map(lambda a: np.asarray(a, np.float64), params)
    logits, stats = [], []
    for i in range(x.shape[0]):
        p = jax.tree.map(lambda a, i=i: a[i], P)
        h, s2 = _np_bn_train(p["layers_2"], np.maximum(x[i] @ p["layers_0"]["kernel"] + p["layers_0"]["bias"], 0))
        h, s5 = _np_bn_train(p["layers_5"], np.maximum(h @ p["layers_3"]["kernel"] + p["layers_3"]["bias"], 0))
        logits.append(h @ p["layers_6"]["kernel"] + p["layers_6"]["bias"])
        stats.append({"layers_2": s2, "layers_5": s5})
    return np.stack(logits), jax.tree.map(lambda *a: np.stack(a), *stats)


# ------------------------------------------------------------------------------ gather_features
@pytest.mark.parametrize("mode", ["nearest", "bilinear"])
@pytest.mark.parametrize("out_hw", [(16, 16), (24, 20), (40, 40)])
def test_gather_features_equals_the_naive_order(tiny_g, mode, out_hw):
    G, _, _, _, feats = tiny_g
    layout = G.cfg.feature_layout()
    H, W = out_hw
    naive = jnp.concatenate([resize(feats[n], (H, W), mode) for n, _ in layout], -1)  # [B, H, W, D]
    k1, k2, k3 = jax.random.split(jax.random.key(H * W + len(mode)), 3)
    shape = (2, 150)  # any index shape S -> [*S, D]
    b = jax.random.randint(k1, shape, 0, 3)
    y = jax.random.randint(k2, shape, 0, H)
    x = jax.random.randint(k3, shape, 0, W)
    got = gather_features(feats, layout, (H, W), b, y, x, mode)
    want = naive[b, y, x]
    assert got.shape == (*shape, sum(c for _, c in layout)) == want.shape
    if mode == "nearest":
        np.testing.assert_array_equal(got, want)  # lam = 0: a copy of the same element
    else:
        assert max_abs(got, want) < TOL_BILINEAR  # measured 4.8e-7
    # and every pixel: the corners and edges (clamped taps) included
    bb, yy, xx = jnp.meshgrid(jnp.arange(3), jnp.arange(H), jnp.arange(W), indexing="ij")
    assert max_abs(gather_features(feats, layout, (H, W), bb, yy, xx, mode), naive) < TOL_BILINEAR


def test_gather_features_read_by_the_classifier_is_segment_naive(tiny_g):
    """The training input read by the eval-mode ensemble is the segmentation EditGAN edits with, pixel by pixel
    (both orders of the layout's maps: a layout permutation moves the rows of W1 with it)."""
    G, _, _, _, feats = tiny_g
    layout = G.cfg.feature_layout()
    clf = T.classifier_for(G, 2)
    _, params = _random_params(jax.random.key(5), m=2, d=clf.cfg.in_dim, hidden=clf.cfg.hidden)
    seg = clf.segment_naive(params, feats, (24, 20), "bilinear")  # [M, B, H, W, C]
    b, y, x = jnp.asarray([0, 2, 1, 2]), jnp.asarray([0, 23, 7, 11]), jnp.asarray([19, 0, 13, 4])
    logits = clf(params, gather_features(feats, layout, (24, 20), b, y, x, "bilinear"))
    assert max_abs(logits, seg[:, b, y, x]) < 7e-7  # measured 2.4e-7 (logits up to 1.5)
    swapped = gather_features(feats, layout, (24, 20), b, x % 20, y % 20, "bilinear")  # y/x confused
    assert max_abs(clf(params, swapped), seg[:, b, y, x]) > 0.2  # measured 0.60


# ------------------------------------------------------------------------------ training-mode BatchNorm
def test_train_logits_is_batch_norm_on_each_members_own_rows():
    m, n, d = 3, 64, 24
    clf, params = _random_params(jax.random.key(2), m=m, d=d)
    x = 1.5 * jax.random.normal(jax.random.key(3), (m, n, d)) + 0.5
    logits, stats = train_logits(params, x)
    want, want_stats = _np_train_logits(params, np.asarray(x, np.float64))
    assert logits.shape == (m, n, 3) and max_abs(logits, want) < TOL_TRAIN  # measured 9.9e-7
    assert set(stats) == {"layers_2", "layers_5"}
    for name, c in (("layers_2", 16), ("layers_5", 8)):
        assert set(stats[name]) == {"mean", "var"} and stats[name]["var"].shape == (m, c)
        for k in ("mean", "var"):
            assert max_abs(stats[name][k], want_stats[name][k]) < TOL_STATS, (name, k)  # measured 4.5e-7
    # the var is the unbiased one: n / (n - 1) = 1.016 x the biased one (a gap far above the tolerance)
    h = np.maximum(np.asarray(x[0], np.float64) @ np.asarray(params["layers_0"]["kernel"][0], np.float64)
                   + np.asarray(params["layers_0"]["bias"][0]), 0)
    np.testing.assert_allclose(stats["layers_2"]["var"][0], h.var(0) * n / (n - 1), rtol=1e-4, atol=1e-6)
    assert max_abs(stats["layers_2"]["var"][0], h.var(0)) > 1e-3
    # eval mode (running stats) is a different function: the batch statistics are really used
    assert max_abs(clf(params, x[0])[0], logits[0]) > 0.5  # measured 1.9

    # members are independent: member 1's rows changed -> member 0's and 2's logits and stats unchanged
    x2 = x.at[1].set(3.0 * x[1] - 1.0)
    logits2, stats2 = train_logits(params, x2)
    np.testing.assert_array_equal(logits2[0], logits[0])  # measured: bit-identical
    np.testing.assert_array_equal(logits2[2], logits[2])
    np.testing.assert_array_equal(stats2["layers_5"]["var"][0], stats["layers_5"]["var"][0])
    assert max_abs(logits2[1], logits[1]) > 0.2  # measured 0.60
    # each member normalizes over its own n rows: one of them changed moves all of that member's logits
    x3 = x.at[0, 5].add(4.0)
    logits3, _ = train_logits(params, x3)
    assert np.all(np.abs(np.asarray(logits3[0]) - np.asarray(logits[0]))[np.arange(n) != 5].max(-1) > 0)
    np.testing.assert_array_equal(logits3[1:], logits[1:])


def test_update_running_stats_is_torchs_momentum_formula():
    _, params = _random_params(jax.random.key(4))
    _, stats = train_logits(params, jax.random.normal(jax.random.key(5), (3, 32, 24)))
    snapshot = jax.tree.map(np.array, params)
    for mom in (0.1, 0.37, 1.0):
        out = update_running_stats(params, stats, mom)
        for name in ("layers_2", "layers_5"):
            for k in ("mean", "var"):
                old, new = np.asarray(params[name][k]), np.asarray(stats[name][k])
                want = np.float32(1 - mom) * old + np.float32(mom) * new
                np.testing.assert_array_equal(out[name][k], want, err_msg=f"{mom} {name}.{k}")
            for k in ("scale", "bias"):
                assert out[name][k] is params[name][k]
        for name in ("layers_0", "layers_3", "layers_6"):
            assert out[name] is params[name]
        assert jax.tree.structure(out) == jax.tree.structure(params)
    np.testing.assert_array_equal(update_running_stats(params, stats, 1.0)["layers_5"]["var"], stats["layers_5"]["var"])
    # the input tree is not modified
    for a, b in zip(jax.tree.leaves(snapshot), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)


def test_converged_running_stats_make_eval_mode_match_training_mode():
    """Running stats = one large batch's statistics (momentum 1): eval-mode ``__call__`` on that batch equals the
    training-mode output, up to torch's unbiased variance (n / (n - 1)); with the biased variance put back, up
    to float rounding."""
    m, n, d = 3, 4096, 24
    clf, params = _random_params(jax.random.key(6), m=m, d=d)
    x = 1.5 * jax.random.normal(jax.random.key(7), (n, d)) + 0.5
    train, stats = train_logits(params, jnp.broadcast_to(x, (m, n, d)))
    conv = update_running_stats(params, stats, 1.0)
    err = max_abs(clf(conv, x), train)
    biased = jax.tree.map(lambda v: v, conv)
    for name in ("layers_2", "layers_5"):
        biased[name] = {**conv[name], "var": conv[name]["var"] * ((n - 1) / n)}
    err_biased = max_abs(clf(biased, x), train)
    assert err_biased < TOL_EVAL_BIASED  # measured 1.9e-6
    assert err < TOL_EVAL  # measured 2.1e-3
    assert err > 100 * err_biased  # the n / (n - 1) factor is visible (measured 1000x): the running var is unbiased
    # not converged (the init's running stats, mean 0 var 1 -> random here): eval mode is far off
    assert max_abs(clf(params, x), train) > 2  # measured 7.0


# ------------------------------------------------------------------------------ scores
def test_scores_on_hand_made_label_maps():
    truth = np.array([[[0, 0, 1], [1, 2, 2]]])
    pred = np.array([[[0, 1, 1], [1, 2, 0]]])
    s = T.scores(pred, truth)
    # background: 1 shared of {(0,0), (0,1), (1,2)}; body: 2 of 3; spot: 1 of 2; 4 of 6 pixels right
    assert s["iou"] == {"background": 1 / 3, "body": 2 / 3, "spot": 1 / 2}
    assert s["miou"] == pytest.approx(0.5, abs=1e-15) and s["pixel_accuracy"] == 4 / 6
    assert T.scores(truth, truth) == {"miou": 1.0, "iou": dict.fromkeys(T.CLASSES, 1.0), "pixel_accuracy": 1.0}

    # two images, spot in neither map: NaN, left out of the mean
    truth = np.array([[[0, 1], [1, 1]], [[0, 0], [0, 0]]])
    pred = np.array([[[0, 0], [1, 1]], [[0, 0], [0, 1]]])
    s = T.scores(pred, truth)
    # background: 4 shared, 5 + 5 - 4 in the union; body: 2 shared, 3 + 3 - 2; 2 of 8 pixels wrong
    assert s["iou"]["background"] == 4 / 6 and s["iou"]["body"] == 2 / 4 and math.isnan(s["iou"]["spot"])
    assert s["miou"] == pytest.approx(7 / 12, abs=1e-15) and s["pixel_accuracy"] == 6 / 8
    # spot predicted but absent from the truth: IoU 0, counted in the mean
    s = T.scores(np.where(truth == 0, 2, truth), truth)
    assert s["iou"] == {"background": 0.0, "body": 1.0, "spot": 0.0} and s["miou"] == pytest.approx(1 / 3)


# ------------------------------------------------------------------------------ config, classifier, step
def test_config_and_classifier(tiny_g):
    cfg = T.SegmenterTrainConfig()
    assert T.SegmenterTrainConfig.from_dict(cfg.to_dict()) == cfg
    assert (cfg.members, cfg.lr, cfg.bn_momentum) == (10, 1e-3, 0.1)
    for bad in ({"members": 0}, {"pixels_per_member": 0}, {"bn_momentum": 0.0}, {"bn_momentum": 1.5},
                {"invert_steps": -1}, {"lr": 0.0}):
        with pytest.raises(ConfigError):
            T.SegmenterTrainConfig(**bad)
    G = tiny_g[0]
    clf = T.classifier_for(G, 4)
    assert clf.cfg.layout == G.cfg.feature_layout() and clf.cfg.in_dim == 32 + 32 + 16 + 16 + 8 + 8
    assert (clf.cfg.num_classes, clf.cfg.num_members, clf.cfg.hidden) == (3, 4, (128, 32))


def test_step_learns_pixel_aligned_labels(tiny_g):
    """On the tiny generator (fixed codes, labels thresholded from its own image: a function of the features at
    the same pixel): the loss on a fixed batch falls; trained on fresh pixels every step, the eval-mode
    segmentation of held-out codes is right far more often than when trained on labels shifted by 3 pixels
    (what a feature read at the wrong pixel would learn)."""
    G, gp = tiny_g[:2]
    ws = G.mapping(gp, jax.random.normal(jax.random.key(1), (12, CFG.z_dim)))
    img, feats = G.synthesis(gp, ws, return_features=True)
    labels = (img[..., 0] > jnp.median(img[..., 0])).astype(jnp.int32)  # [12, 16, 16], half the pixels each
    cfg = T.SegmenterTrainConfig(annotated=8, members=2, images_per_step=2, pixels_per_member=128, lr=3e-3)
    clf = T.classifier_for(G, cfg.members)
    opt, step = T.make_step(cfg, clf, G, gp)
    params = clf.init(jax.random.key(0))
    state = {"params": params, "opt": opt.init(params), "codes": ws[:8], "labels": labels[:8]}

    s, key, losses = state, jax.random.key(1), []
    for _ in range(20):
        s, metrics = step(s, key)
        losses.append(float(metrics["loss"]))
    assert set(metrics) == {"loss", "worst member"} and float(metrics["worst member"]) >= losses[-1]
    assert np.all(np.isfinite(losses)) and losses[-1] < 0.5 * losses[0], losses  # measured 1.10 -> 0.22
    first, _ = step(state, key)
    again, _ = step(state, key)  # deterministic
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(again), jax.tree.leaves(first)))
    # running stats moved (momentum 0.1) from torch's init (mean 0, var 1); kernels trained; data kept
    p0, p1 = state["params"], first["params"]
    assert np.all(np.asarray(p0["layers_2"]["mean"]) == 0) and np.any(np.asarray(p1["layers_2"]["mean"]) != 0)
    assert not np.array_equal(p1["layers_0"]["kernel"], p0["layers_0"]["kernel"])
    np.testing.assert_array_equal(first["codes"], state["codes"])

    held_out = {k: v[8:] for k, v in feats.items()}
    acc = {}
    for name, train_labels in (("aligned", labels[:8]), ("shifted", jnp.roll(labels[:8], 3, axis=2))):
        s = {**state, "labels": train_labels}
        for i in range(120):
            s, _ = step(s, jax.random.fold_in(jax.random.key(2), i))
        seg = jnp.argmax(clf.segment(s["params"], held_out, 16, ensemble_mean=True), -1)
        acc[name] = float(jnp.mean(seg == labels[8:]))
    assert acc["aligned"] > 0.77 and acc["shifted"] < 0.74, acc  # measured 0.82 and 0.68 (chance 0.5)


# ------------------------------------------------------------------------------ end to end
TINY = T.SegmenterTrainConfig(annotated=4, invert_steps=2, members=2, steps=6, images_per_step=2,
                              pixels_per_member=32, eval_images=4, ckpt_every=3, log_every=3)


@pytest.mark.slow
def test_train_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    """66 s here (annotation = encoder + 2 projector steps, 3 runs, evaluation x2)."""
    full_dst, dst, run = tmp_path / "full", tmp_path / "seg", tmp_path / "seg.run"
    full, full_report = T.train(TINY, full_dst, progress=False)
    assert full_report["step"] == 6 and full_report["resumed_at"] == 0

    _, partial = T.train(TINY, dst, stop_at=3, progress=False)  # as if killed after step 3's save
    assert partial == {"step": 3} and not dst.exists() and run.is_dir()
    with pytest.raises(ConfigError, match="members"):  # a resumed run refuses a changed recipe
        T.train(dataclasses.replace(TINY, members=3), dst, progress=False)
    params, report = T.train(None, dst, progress=False)  # resumes with the stored config
    assert report["resumed_at"] == 3 and report["step"] == 6 and report["run_dir"] == str(run)
    rows = [r["step"] for r in map(json.loads, (run / runs.LOG_FILE).read_text().splitlines())]
    assert rows == [3, 6]
    # bit-identical to the uninterrupted run (measured max |diff| 0.0): codes, labels, keys and Adam state
    # restored; the running statistics too
    for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(full)):
        np.testing.assert_array_equal(a, b)
    for part in ("renders_vs_render_labels", "samples_vs_probe_labels"):
        assert report[part] == full_report[part]
        assert 0 <= report[part]["pixel_accuracy"] <= 1 and set(report[part]["iou"]) == set(T.CLASSES)

    clf, p = jaxedit.load(dst)
    assert isinstance(clf, PixelClassifier) and clf.cfg.num_classes == 3 and clf.cfg.num_members == 2
    G = T.load_frozen(TINY)[0]
    assert clf.cfg.layout == G.cfg.feature_layout()
    for a, b in zip(jax.tree.leaves(p), jax.tree.leaves(params)):
        np.testing.assert_array_equal(a, b)
    meta = checkpoint.read_meta(dst)
    assert meta["kind"] == "pixel-classifier" and meta["classes"] == list(T.CLASSES)
    assert meta["metrics"]["step"] == 6 and meta["metrics"]["images"] == 4
    assert "miou" in meta["metrics"]["renders_vs_render_labels"]
    assert meta["source"]["train_config"] == TINY.to_dict()
    assert meta["source"]["generator"]["name"] == "shapes32-stylegan2"
