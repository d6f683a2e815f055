"""The projector (jaxedit.invert): NVIDIA's schedules and noise regularizer by formula, recovery of images a
tiny random StyleGAN2 made (W and W+), batch independence, noise renormalization, the hybrid start, and
the `jaxedit invert` command on the default shapes-world models."""

import dataclasses
import functools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import jaxedit
from jaxedit import invert
from jaxedit.cli.main import main
from jaxedit.data import shapes
from jaxedit.errors import InputError
from jaxedit.io import files
from jaxedit.io import images as imio
from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config

CFG = StyleGAN2Config(z_dim=8, w_dim=8, img_resolution=16, mapping_layers=2, channels=(16, 16, 16))


@functools.cache
def gen():
    G = StyleGAN2(CFG)
    p = G.init(jax.random.key(0))
    # noise strength 0: the targets are functions of the latent alone, so the optimum is exact
    p = jax.tree_util.tree_map_with_path(
        lambda path, a: jnp.zeros_like(a) if jax.tree_util.keystr(path).endswith("['noise_strength']") else a, p)
    return G, p


def test_schedules_are_nvidias_formulas():
    cfg = invert.ProjectorConfig(steps=1000)
    for i in (0, 10, 50, 400, 750, 800, 999):
        t = i / 1000
        ramp = 0.5 - 0.5 * math.cos(math.pi * min(1.0, (1 - t) / 0.25))
        assert float(invert.learning_rate(cfg, jnp.asarray(i))) == pytest.approx(0.1 * ramp * min(1.0, t / 0.05),
                                                                                    rel=1e-5, abs=3e-9)
        assert float(invert.latent_noise_scale(cfg, jnp.asarray(i), 2.0)) == pytest.approx(
            2.0 * 0.05 * max(0.0, 1 - t / 0.75) ** 2, rel=1e-5, abs=1e-9)


def test_noise_regularizer_matches_numpy():
    rng = np.random.default_rng(0)
    maps = {"b16.conv0": rng.standard_normal((16, 16)).astype(np.float32),
            "b4.conv1": rng.standard_normal((4, 4)).astype(np.float32)}
    want = 0.0
    for v in maps.values():
        v = v.astype(np.float64)
        while True:
            want += np.mean(v * np.roll(v, 1, 1)) ** 2 + np.mean(v * np.roll(v, 1, 0)) ** 2
            if v.shape[0] <= 8:
                break
            v = v.reshape(v.shape[0] // 2, 2, v.shape[1] // 2, 2).mean(axis=(1, 3))
    assert float(invert.noise_regularizer({k: jnp.asarray(v) for k, v in maps.items()})) == pytest.approx(want,
                                                                                                      rel=1e-4)
    smooth = jnp.ones((16, 16))  # a constant map is maximally autocorrelated: 2 per pyramid level
    assert float(invert.noise_regularizer({"x": smooth})) == pytest.approx(4.0)


@functools.cache
def projected(mode: str, steps: int = 150):
    G, p = gen()
    z = jax.random.normal(jax.random.key(1), (3, CFG.z_dim))
    targets = G(p, z, psi=0.7)
    keys = jax.random.split(jax.random.key(2), 3)
    cfg = invert.ProjectorConfig(steps=steps, mode=mode, num_w_stats=2000)
    run = jax.jit(lambda t, k: invert.project(G, p, invert.pixel_distance, t, k, cfg))
    return targets, keys, cfg, run(targets, keys)


@pytest.mark.parametrize("mode", ["w", "w+"])
def test_projection_recovers_generated_images(mode):
    G, p = gen()
    targets, _, cfg, res = projected(mode)
    assert res.ws.shape == (3, CFG.num_ws, CFG.w_dim) and res.loss.shape == (cfg.steps, 3)
    d = np.asarray(res.distance)
    final = np.asarray(invert.pixel_distance(targets, invert.render(G, p, res)))
    # measured final / initial pixel MSE after 150 steps: w <= 3.1e-6, w+ <= 6e-3 (more freedom, slower)
    assert np.all(final < {"w": 1e-5, "w+": 2e-2}[mode] * d[0]), (d[0], final)
    assert np.allclose(final, d[-1], rtol=0.02)  # the last step's distance (its jitter is 0 by then)
    if mode == "w":
        assert np.allclose(res.ws, res.ws[:, :1])  # one latent on every layer
    for v in res.noise.values():  # renormalized after every step
        assert np.allclose(v.mean(axis=(1, 2)), 0, atol=1e-5) and np.allclose(v.std(axis=(1, 2)), 1, atol=1e-4)


@pytest.mark.slow  # a long duplicate (default-run budget)
def test_one_image_alone_equals_inside_the_batch():
    G, p = gen()
    targets, keys, cfg, res = projected("w")
    alone = jax.jit(lambda t, k: invert.project(G, p, invert.pixel_distance, t, k, cfg))(targets[1:2], keys[1:2])
    assert np.abs(np.asarray(alone.ws[0]) - np.asarray(res.ws[1])).max() < 1e-5
    assert np.abs(np.asarray(alone.loss[:, 0]) - np.asarray(res.loss[:, 1])).max() < 1e-5


def test_hybrid_start_and_checks():
    G, p = gen()
    targets, keys, _, _ = projected("w")
    true_ws = G.mapping(p, jax.random.normal(jax.random.key(1), (3, CFG.z_dim)), psi=0.7)
    cfg = invert.ProjectorConfig(steps=2, mode="w+", num_w_stats=500)
    res = invert.project(G, p, invert.pixel_distance, targets, keys, cfg, init=true_ws)
    cold = invert.project(G, p, invert.pixel_distance, targets, keys, cfg)
    assert np.all(np.asarray(res.distance[0]) < 0.2 * np.asarray(cold.distance[0]))  # a good start is kept
    with pytest.raises(InputError, match="targets must have shape"):
        invert.project(G, p, invert.pixel_distance, targets[:, :8], keys, cfg)
    with pytest.raises(InputError, match="one PRNG key per target"):
        invert.project(G, p, invert.pixel_distance, targets, keys[:2], cfg)
    with pytest.raises(InputError, match="mode"):
        invert.ProjectorConfig(mode="z")


@pytest.mark.parametrize("method", ["encoder", pytest.param("hybrid", marks=pytest.mark.slow)])
def test_cli_invert_then_edit_the_inverted_latents(method, tmp_path, capsys):
    from PIL import Image

    G, _ = jaxedit.load("shapes32-stylegan2")
    imgs = np.asarray(shapes.sample(jax.random.key(3), 2)["image"])  # renders: images no generator made
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, im in enumerate(imio.to_uint8(imgs)):
        imio.save_png(im, folder / f"img{i}.png")
    # odd but valid: 16-bit grayscale, palette, RGBA, 1x1, a wide JPEG; and two bad files that are skipped
    Image.fromarray(np.full((20, 20), 40000, np.uint16)).save(folder / "gray16.png")
    Image.new("P", (9, 9), 5).save(folder / "palette.png")
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(folder / "alpha.png")
    Image.new("RGB", (1, 1), (0, 128, 255)).save(folder / "dot.png")
    Image.new("RGB", (3000, 40), (0, 200, 0)).save(folder / "wide.jpg")
    (folder / "empty.png").write_bytes(b"")
    (folder / "junk.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "inv"
    steps = ["--space", "w+", "--steps", "30", "--loss", "probe"] if method == "hybrid" else []
    rc = main(["invert", str(folder), "--out", str(out), "--method", method, "--encoder", "shapes32-encoder", *steps])
    captured = capsys.readouterr()
    assert rc == 1  # two inputs skipped: one line each, the other seven inverted and written
    assert "2 of 9 inputs skipped" in captured.err and captured.out.count("skipped: ") == 2
    assert "empty.png" in captured.out and "junk.jpg" in captured.out
    z = np.load(out / "latents.npz")
    assert z["ws"].shape == (7, G.cfg.num_ws, G.cfg.w_dim) and "img0" in list(z["names"])
    report = json.loads((out / "report.json").read_text())
    assert len(report["images"]) == 7 and len(report["skipped"]) == 2
    psnr = {r["name"]: r["psnr"] for r in report["images"]}
    # renders: measured 25.2 / 20.9 dB (encoder), 25.4 / 20.8 dB (30 hybrid steps)
    assert psnr["img0"] > 17 and psnr["img1"] > 17
    assert sorted(p.name for p in (out / "recon").iterdir())[:3] == [files.LEDGER, "alpha.png", "dot.png"]
    assert main(["fit", "ganspace", "--num", "4096", "--batch-size", "4096", "--components", "2",
                 "--out", str(tmp_path / "pcs")]) == 0
    assert main(["edit", "--directions", str(tmp_path / "pcs"), "--latents", str(out / "latents.npz"),
                 "--strengths=-2,0,2", "--out", str(tmp_path / "edit.png")]) == 0
    assert (tmp_path / "edit.png").stat().st_size > 0


def test_image_reader_refuses_hostile_files_in_one_line(tmp_path):
    import zlib

    from PIL import Image

    good = tmp_path / "ok.png"
    Image.fromarray(np.zeros((40, 20, 3), np.uint8)).save(good)
    img, adjusted = imio.load_images([good], 16)
    assert img.shape == (1, 16, 16, 3) and adjusted == 1 and float(img.min()) == -1.0
    # a PNG header claiming 100000 x 100000 pixels (a decompression bomb): refused before decoding
    ihdr = b"IHDR" + (100_000).to_bytes(4, "big") * 2 + bytes([8, 2, 0, 0, 0])
    bomb = tmp_path / "bomb.png"
    iend = (0).to_bytes(4, "big") + b"IEND" + zlib.crc32(b"IEND").to_bytes(4, "big")
    bomb.write_bytes(b"\x89PNG\r\n\x1a\n" + (13).to_bytes(4, "big") + ihdr + zlib.crc32(ihdr).to_bytes(4, "big") + iend)
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(good.read_bytes()[:60])
    junk = tmp_path / "junk.png"
    junk.write_bytes(b"not an image at all")
    for path, needle in ((bomb, "at most|DecompressionBomb"), (truncated, "cannot decode"), (junk, "not a readable image"),
                         (tmp_path / "missing.png", "no such image")):
        with pytest.raises(InputError, match=needle) as e:
            imio.load_image(path, 16)
        assert "\n" not in str(e.value) and path.name in str(e.value)


def test_cli_invert_resumes_per_batch_and_refuses_another_job(tmp_path, capsys, monkeypatch):
    folder = tmp_path / "photos"
    folder.mkdir()
    for i, im in enumerate(imio.to_uint8(np.asarray(shapes.sample(jax.random.key(5), 5)["image"]))):
        imio.save_png(im, folder / f"img{i}.png")
    argv = ["invert", str(folder), "--method", "encoder", "--encoder", "shapes32-encoder", "--batch-size", "2"]
    assert main([*argv, "--out", str(tmp_path / "whole")]) == 0
    whole = np.load(tmp_path / "whole" / "latents.npz")["ws"]
    assert not (tmp_path / "whole" / ".invert-partial").exists()

    out = tmp_path / "cut"
    real_save = files.save_npz

    def crash_on_second_batch(path, **arrays):
        if Path(path).name == "batch-00001.npz":
            raise KeyboardInterrupt
        return real_save(path, **arrays)

    monkeypatch.setattr(files, "save_npz", crash_on_second_batch)
    assert main([*argv, "--out", str(out)]) == 130
    monkeypatch.setattr(files, "save_npz", real_save)
    assert sorted(p.name for p in (out / ".invert-partial").iterdir()) == ["batch-00000.npz", "job.json"]
    assert not (out / "latents.npz").exists()
    capsys.readouterr()
    assert main([*argv[:-1], "4", "--out", str(out)]) == 2  # another batch size: another job
    assert "unfinished invert of other inputs or flags" in capsys.readouterr().err
    (out / ".invert-partial" / "notes.txt").write_text("mine")  # a user's file in jaxedit's folder survives
    assert main([*argv, "--out", str(out)]) == 0
    assert "resuming: 1 of 3 batches" in capsys.readouterr().out
    np.testing.assert_array_equal(np.load(out / "latents.npz")["ws"], whole)
    assert [f.name for f in (out / ".invert-partial").iterdir()] == ["notes.txt"]


def test_hybrid_keeps_the_best_iterate_so_a_few_steps_cannot_undo_a_good_start():
    G, p = gen()
    targets, keys, _, _ = projected("w")
    true_ws = G.mapping(p, jax.random.normal(jax.random.key(1), (3, CFG.z_dim)), psi=0.7)  # the exact answer
    true_ws = true_ws + 0.01 * jax.random.normal(jax.random.key(5), true_ws.shape)  # a good start, near it
    cfg = invert.ProjectorConfig.hybrid(steps=3, mode="w+", num_w_stats=500)  # two steps at Adam's lr 0.1
    kept = invert.project(G, p, invert.pixel_distance, targets, keys, cfg, init=true_ws)
    last = invert.project(G, p, invert.pixel_distance, targets, keys, dataclasses.replace(cfg, keep_best=False),
                          init=true_ws)
    np.testing.assert_array_equal(np.asarray(kept.distance), np.asarray(last.distance))  # the same optimization
    kept_d = np.asarray(invert.pixel_distance(targets, invert.render(G, p, kept)))
    last_d = np.asarray(invert.pixel_distance(targets, invert.render(G, p, last)))
    start = np.asarray(kept.distance[0])
    np.testing.assert_allclose(kept_d, start, rtol=1e-5)  # measured: the start (2.7e-4 - 3.5e-4) is kept
    assert np.all(last_d > 30 * start), (last_d, start)  # the last iterate overshot: measured 76x - 156x
