"""EditGAN's edits: the region of interest, the batched optimization (best iterate, images independent), the
named shapes edits, and `jaxedit segment` / `seg-edit` / `edit --directions VECTORS` end to end."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

import jaxedit
from jaxedit import edits
from jaxedit.cli import main as cli_main
from jaxedit.cli.main import main
from jaxedit.edits import editgan
from jaxedit.io import images as imio
from jaxedit.models.segmenter import PixelClassifier, PixelClassifierConfig
from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config

CFG = StyleGAN2Config(z_dim=16, w_dim=16, img_resolution=16, mapping_layers=2, channels=(32, 16, 8))


def test_region_of_interest_is_the_painted_class_old_and_new_dilated():
    old = np.zeros((1, 9, 9), np.int32)
    old[0, 3:6, 3:6] = 1  # a body
    old[0, 4, 4] = 2  # its spot
    new = old.copy()
    new[0, 4, 5] = 2  # the spot grows by one pixel
    roi = np.asarray(editgan.region_of_interest(jnp.asarray(old), jnp.asarray(new), 3, times=0))
    assert roi.sum() == 2 and roi[0, 4, 4] and roi[0, 4, 5]  # spot old | spot new; body and background stay out
    assert np.asarray(editgan.region_of_interest(jnp.asarray(old), jnp.asarray(new), 3, times=1)).sum() == 12  # 3x4
    assert not np.asarray(editgan.region_of_interest(jnp.asarray(old), jnp.asarray(old), 3)).any()  # no edit, no ROI
    grown = np.asarray(editgan.SHAPES_EDITS["spot-grow"][0](jnp.asarray(old)))
    assert (grown == 2).sum() == 9 and (grown == 0).sum() == (old == 0).sum()  # inside the body only
    removed = np.asarray(editgan.SHAPES_EDITS["spot-remove"][0](jnp.asarray(old)))
    assert (removed == 2).sum() == 0 and (removed == 1).sum() == 9
    assert tuple(editgan.SHAPES_EDITS) == cli_main.SHAPES_EDITS


@pytest.fixture(scope="module")
def tiny():
    G = StyleGAN2(CFG)
    gp = G.init(jax.random.key(0))
    layout = CFG.feature_layout()
    clf = PixelClassifier(PixelClassifierConfig(in_dim=sum(c for _, c in layout), num_classes=3, num_members=2,
                                                layout=layout))
    cp = clf.init(jax.random.key(1))
    cp = jax.tree.map(lambda a: a * 20 if a.ndim == 3 else a, cp)  # sharper logits: a label map with every class
    ws = G.mapping(gp, jax.random.normal(jax.random.key(2), (3, CFG.z_dim)))
    return G, gp, clf, cp, ws


def test_optimize_keeps_the_best_iterate_and_images_do_not_interact(tiny):
    G, gp, clf, cp, ws = tiny
    labels = jnp.argmax(editgan.segment(G, gp, clf, cp, ws)[1], axis=-1)
    target = jnp.where(labels == 0, 1, labels)  # paint class 0 as class 1
    cfg = editgan.SegEditConfig(steps=6, lr=0.005)
    run = jax.jit(lambda w, t: editgan.optimize(G, gp, clf, cp, w, t, cfg, encoder=lambda im: jnp.broadcast_to(ws[0], (im.shape[0], *ws.shape[1:]))))
    res = run(ws, target)
    assert res.loss.shape == (7, 3) and res.ws.shape == ws.shape
    np.testing.assert_array_equal(res.best_step, np.argmin(np.asarray(res.loss), axis=0))
    assert np.all(np.min(np.asarray(res.loss), axis=0) < np.asarray(res.loss)[0])  # the edit lowers the loss
    np.testing.assert_allclose(res.vector, res.ws - ws, atol=1e-6)
    alone = run(ws[1:2], target[1:2])
    # measured 0 (float32 CPU): each image's loss and gradient is its own
    assert float(jnp.max(jnp.abs(alone.ws[0] - res.ws[1]))) < 1e-5
    moved = editgan.transfer(G, gp, clf, cp, ws, res.vector[0], scale=0.5)
    np.testing.assert_allclose(moved, ws + 0.5 * res.vector[0], atol=1e-6)
    refined = editgan.transfer(G, gp, clf, cp, ws, res.vector[0], scale=0.5, refine_steps=2,
                               cfg=editgan.SegEditConfig(lr=0.005), target=target)
    assert refined.shape == ws.shape and float(jnp.max(jnp.abs(refined - moved))) > 1e-4  # refined toward target


def _latents(tmp_path, seeds, name="lat.npz"):
    G, gp = jaxedit.load("shapes32-stylegan2")
    ws = G.mapping(gp, jnp.asarray(np.stack([np.random.RandomState(s).randn(G.cfg.z_dim) for s in seeds]),
                                   jnp.float32), psi=0.7)
    path = tmp_path / name
    np.savez(path, ws=np.asarray(ws), names=np.asarray([f"s{s}" for s in seeds]))
    return path, np.asarray(ws)


def test_segment_seg_edit_and_vector_transfer_end_to_end(tmp_path, capsys):
    lat, ws = _latents(tmp_path, [1, 2])
    assert main(["segment", "--latents", str(lat), "--out", str(tmp_path / "seg")]) == 0
    labels = np.asarray(Image.open(tmp_path / "seg" / "s1.labels.png"))
    assert labels.shape == (32, 32) and set(np.unique(labels)) <= {0, 1, 2} and (labels == 1).any()
    out = tmp_path / "edit"
    assert main(["seg-edit", "--latents", str(lat), "--shapes-edit", "body-grow", "--steps", "8",
                 "--encoder", "shapes32-encoder", "--out", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    grown = [np.sum(np.asarray(Image.open(out / f"s{s}.labels-after.png")) != 0) for s in (1, 2)]
    before = [np.sum(np.asarray(Image.open(out / f"s{s}.labels-before.png")) != 0) for s in (1, 2)]
    assert all(a > b for a, b in zip(grown, before))  # the shape grew in the segmentation of the edited image
    assert all(r["region_pixels"] > 0 and r["outside_mean_abs_change"] < 0.1 for r in report["images"])
    ed = edits.load(out / "vectors")
    assert isinstance(ed, edits.EditingVector) and ed.num_directions == 2
    assert edits.read_provenance(out / "vectors")["edit"] == "shapes edit body-grow"
    edited = np.load(out / "latents.npz")["ws"]
    np.testing.assert_allclose(ws + np.asarray(ed.vectors), edited, atol=1e-5)
    other, _ = _latents(tmp_path, [3, 4, 5], "other.npz")  # transfer image s1's vector to three others
    capsys.readouterr()
    assert main(["edit", "--directions", str(out / "vectors"), "--direction", "0", "--latents", str(other),
                 "--strengths=0,1", "--out", str(tmp_path / "transfer.png")]) == 0, capsys.readouterr().err
    assert (tmp_path / "transfer.png").stat().st_size > 0


def test_seg_edit_refuses_bad_label_maps_in_one_line(tmp_path, capsys):
    lat, _ = _latents(tmp_path, [1])
    folder = tmp_path / "targets"
    folder.mkdir()
    argv = ["seg-edit", "--latents", str(lat), "--target-labels", str(folder), "--out", str(tmp_path / "o")]

    def err(code):
        assert main(argv) == code
        e = capsys.readouterr().err.strip()
        assert len(e.splitlines()) == 1
        return e

    assert "no s1.labels.png" in err(2)
    imio.save_labels(np.zeros((16, 16), np.int32), folder / "s1.labels.png")
    assert "label map is 16x16, the generator makes 32x32" in err(1)
    imio.save_labels(np.full((32, 32), 7, np.int32), folder / "s1.labels.png")
    assert "holds class 7, the segmenter knows 0..2" in err(1)
    Image.new("RGB", (32, 32)).save(folder / "s1.labels.png")
    assert "palette or grayscale PNG" in err(1)
    assert main(["segment", "--latents", str(lat), "--out", str(tmp_path / "seg")]) == 0
    (folder / "s1.labels.png").write_bytes((tmp_path / "seg" / "s1.labels.png").read_bytes())  # unchanged map
    assert "changes no pixel of 1 image(s) (s1): an empty region" in err(1)
    assert not (tmp_path / "o").exists()  # nothing written
