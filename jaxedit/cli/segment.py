"""``jaxedit segment`` and ``jaxedit seg-edit``: EditGAN's segmentation branch and its edits.

``segment`` writes each image and its label map (``NAME.png``, ``NAME.labels.png``: a palette PNG whose pixel
values are classes, to edit in any paint program and give back as ``--target-labels``). ``seg-edit``
optimizes W+ toward edited label maps (:mod:`jaxedit.edits.editgan`) and writes, per image,
``NAME.before.png``, ``NAME.after.png``, ``NAME.labels-before.png``, ``NAME.labels-after.png``; plus
``latents.npz`` (the edited codes), ``vectors/`` (the editing vectors ``dw = w_edited - w``, one direction
per image, an editor ``jaxedit edit --directions`` applies to any latents) and ``report.json``.
"""

from __future__ import annotations

import re
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import edits, models, parallel
from jaxedit.cli.common import (
    DEFAULT_GENERATOR,
    check_outputs,
    inverted_latents,
    load_generator,
    model_path,
    parse_seeds,
    require_stylegan2,
    seed_latents,
)
from jaxedit.edits import editgan, registry
from jaxedit.edits.fit import generator_identity
from jaxedit.errors import InputError, UsageError
from jaxedit.io import checkpoint, files
from jaxedit.io import images as imio
from jaxedit.models import e4e, lpips
from jaxedit.models.segmenter import PixelClassifier

DEFAULT_SEGMENTER = "shapes32-segmenter"
UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


def _file_name(name: str) -> str:
    return UNSAFE.sub("_", name).strip("._") or "image"


def _segmenter(path: str | None, G) -> tuple[PixelClassifier, dict]:
    clf, cparams = models.load(model_path(path, DEFAULT_SEGMENTER))
    if not isinstance(clf, PixelClassifier):
        raise UsageError(f"--segmenter {path}: not a pixel-classifier checkpoint")
    have = dict(G.cfg.feature_layout())
    wrong = [(n, c) for n, c in clf.cfg.layout if have.get(n) != c]
    if wrong:
        raise UsageError(f"--segmenter {path or DEFAULT_SEGMENTER}: reads features {wrong[:3]} that this generator "
                         f"does not make (its layers: {list(have.items())[:3]} ...)")
    return clf, cparams


def _start(args, G, gp) -> tuple[np.ndarray, list[str]]:
    """W+ codes and names from --latents, or mapped --seeds (truncation --psi)."""
    if args.latents:
        return inverted_latents(args.latents, G)
    seeds = parse_seeds(args.seeds or "0-7")
    ws = G.mapping(gp, jnp.asarray(seed_latents(seeds, G.cfg.z_dim)), psi=0.7 if args.psi is None else args.psi)
    return np.asarray(ws), [f"seed{s}" for s in seeds]


def run_segment(args) -> None:
    out = Path(args.out)
    G, gp = load_generator(args.ckpt, unconditional="segment")
    require_stylegan2(G, "segment")
    clf, cp = _segmenter(args.segmenter, G)
    ws, names = _start(args, G, gp)
    stems = [_file_name(n) for n in names]
    check_outputs("--out", [out / f"{s}{x}" for s in stems for x in (".png", ".labels.png")], args.force, folder=out)
    res = G.cfg.img_resolution

    @jax.jit
    def run(w):
        img, logits = editgan.segment(G, gp, clf, cp, w)
        return {"img": img, "labels": jnp.argmax(logits, axis=-1)}

    out.mkdir(parents=True, exist_ok=True)
    counts = np.zeros(clf.cfg.num_classes, np.int64)
    done = 0
    for o in parallel.map_batches(run, ws, args.batch_size):
        written = []
        for img, lab in zip(imio.to_uint8(o["img"]), o["labels"]):
            written += [imio.save_png(img, out / f"{stems[done]}.png", note=False),
                        imio.save_labels(lab, out / f"{stems[done]}.labels.png", note=False)]
            counts += np.bincount(lab.reshape(-1), minlength=clf.cfg.num_classes)
            done += 1
        files.note_written(*written)
        args.signals.check()
    share = ", ".join(f"class {c}: {v / counts.sum():.1%}" for c, v in enumerate(counts))
    print(f"segmented {done} images ({res}x{res}) -> {out}/NAME.png and NAME.labels.png (palette PNG, pixel value = "
          f"class); pixels by class: {share}")


def _targets(args, clf, names: list[str], stems: list[str], res: int):
    """-> (a function of the current labels giving the targets, what the edit is)."""
    if args.shapes_edit:
        if clf.cfg.num_classes != 3:
            raise UsageError(f"--shapes-edit: needs a shapes-world segmenter (3 classes), this one has "
                             f"{clf.cfg.num_classes}")
        fn = editgan.SHAPES_EDITS[args.shapes_edit][0]
        return fn, f"shapes edit {args.shapes_edit}"
    folder = Path(args.target_labels)
    if not folder.is_dir():
        raise UsageError(f"--target-labels {folder}: not a folder (expected NAME.labels.png per latent)")
    maps = []
    for name, stem in zip(names, stems):
        path = folder / f"{stem}.labels.png"
        if not path.exists():
            raise UsageError(f"--target-labels {folder}: no {path.name} for latent {name!r}")
        maps.append(imio.load_labels(path, res, clf.cfg.num_classes))
    given = jnp.asarray(np.stack(maps))
    return (lambda _labels: given), f"label maps from {folder}"


def run_seg_edit(args) -> None:
    out = Path(args.out)
    G, gp = load_generator(args.ckpt, unconditional="seg-edit")
    require_stylegan2(G, "seg-edit")
    clf, cp = _segmenter(args.segmenter, G)
    ws, names = inverted_latents(args.latents, G)
    stems = [_file_name(n) for n in names]
    if len(set(stems)) != len(stems):
        raise UsageError(f"--latents {args.latents}: names collide as file names ({len(stems) - len(set(stems))})")
    owned = [f"{s}{x}" for s in stems for x in (".before.png", ".after.png", ".labels-before.png",
                                                  ".labels-after.png")]
    check_outputs("--out", [out / n for n in owned + ["latents.npz", "report.json"]], args.force, folder=out)
    checkpoint.check_writable(out / "vectors", args.force, registry.KIND)
    res = G.cfg.img_resolution
    target_fn, what = _targets(args, clf, names, stems, res)
    cfg = editgan.SegEditConfig(steps=args.steps, lr=args.lr, keep_weight=args.keep_weight)
    encoder = perceptual = None
    if args.encoder:
        E, ep = models.load(model_path(args.encoder, args.encoder))
        if not isinstance(E, e4e.Encoder) or (E.cfg.n_styles, E.cfg.w_dim) != (G.cfg.num_ws, G.cfg.w_dim):
            raise UsageError(f"--encoder {args.encoder}: not an e4e encoder for this generator's W+")
        enc_res = min(res, 256)
        encoder = lambda im: E(ep, jax.image.resize(im, (im.shape[0], enc_res, enc_res, 3), "linear")
                               if im.shape[1] != enc_res else im)
    if args.lpips:
        lp, lpp = models.load(model_path(args.lpips, args.lpips))
        if not isinstance(lp, lpips.LPIPS):
            raise UsageError(f"--lpips {args.lpips}: not an LPIPS checkpoint")
        perceptual = lambda a, b: lp(lpp, a, b)

    # targets and regions first: an edit that changes nothing is refused before any optimization
    labels_fn = jax.jit(lambda w: jnp.argmax(editgan.segment(G, gp, clf, cp, w)[1], axis=-1))
    before = np.concatenate([o for o in parallel.map_batches(labels_fn, ws, args.batch_size)])
    targets = np.asarray(target_fn(jnp.asarray(before)))
    roi = np.asarray(editgan.region_of_interest(jnp.asarray(before), jnp.asarray(targets), clf.cfg.num_classes,
                                                cfg.dilate))
    keep = np.asarray([r.any() for r in roi])
    empty = [n for n, k in zip(names, keep) if not k]
    problem = (f"seg-edit: the {what} changes no pixel of {len(empty)} image(s) "
               f"({', '.join(empty[:4])}{' ...' if len(empty) > 4 else ''}): an empty region to edit")
    if not keep.any():
        raise InputError(problem)
    if empty:  # the others are edited; the exit status says some were skipped
        print(f"skipped: {problem}")
        ws, before, targets, roi = ws[keep], before[keep], targets[keep], roi[keep]
        names = [n for n, k in zip(names, keep) if k]
        stems = [s for s, k in zip(stems, keep) if k]

    @jax.jit
    def run(batch):
        r = editgan.optimize(G, gp, clf, cp, batch["w"], batch["target"], cfg, roi=batch["roi"], encoder=encoder,
                             perceptual=perceptual)
        img, logits = editgan.segment(G, gp, clf, cp, r.ws)
        return {"ws": r.ws, "img": img, "labels": jnp.argmax(logits, axis=-1), "best": r.best_step,
                "loss": r.loss[r.best_step, jnp.arange(r.ws.shape[0])], "img0": G.synthesis(gp, batch["w"])}

    t0 = time.perf_counter()
    outs = []
    for o in parallel.map_batches(run, {"w": ws, "target": targets, "roi": roi}, args.batch_size):
        outs.append(o)
        print(f"  {sum(len(x['ws']) for x in outs)}/{len(ws)} images edited ({time.perf_counter() - t0:.1f} s)",
              flush=True)
        args.signals.check()
    seconds = time.perf_counter() - t0
    cat = lambda k: np.concatenate([o[k] for o in outs])
    new_ws, imgs, after, img0 = cat("ws"), cat("img"), cat("labels"), cat("img0")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for i, s in enumerate(stems):
        written += [imio.save_png(imio.to_uint8(img0[i]), out / f"{s}.before.png", note=False),
                    imio.save_png(imio.to_uint8(imgs[i]), out / f"{s}.after.png", note=False),
                    imio.save_labels(before[i], out / f"{s}.labels-before.png", note=False),
                    imio.save_labels(after[i], out / f"{s}.labels-after.png", note=False)]
    files.note_written(*written)
    files.save_npz(out / "latents.npz", names=np.asarray(names), ws=new_ws.astype(np.float32))
    gen = generator_identity(model_path(args.ckpt, DEFAULT_GENERATOR), gp)
    edits.save(edits.EditingVector(vectors=jnp.asarray(new_ws - ws)), out / "vectors", force=args.force, provenance={
        "generator": gen, "space": "w", "method": "editgan seg-edit", "edit": what, "names": names,
        "region_pixels": [int(r.sum()) for r in roi], "config": cfg.to_dict()})
    hit = [float(np.mean(a[r] == t[r])) for a, t, r in zip(after, targets, roi)]
    outside = [float(np.mean(np.abs(x - y)[~r])) if (~r).any() else 0.0 for x, y, r in zip(imgs, img0, roi)]
    files.write_json(out / "report.json", {
        "edit": what, "generator": gen, "segmenter": str(model_path(args.segmenter, DEFAULT_SEGMENTER)),
        "encoder": args.encoder, "lpips": args.lpips, "config": cfg.to_dict(), "seconds": seconds,
        "images": [{"name": n, "region_pixels": int(r.sum()), "target_pixels_changed": int(np.sum(b != t)),
                    "region_labels_hit": h, "outside_mean_abs_change": o, "best_step": int(bs), "loss": float(lo)}
                   for n, r, b, t, h, o, bs, lo in zip(names, roi, before, targets, hit, outside, cat("best"),
                                                       cat("loss"))]})
    print(f"seg-edit ({what}, {cfg.steps} steps) of {len(ws)} images in {seconds:.1f} s -> {out}: NAME.before/after"
          f".png, labels-before/after, latents.npz, vectors/ (jaxedit edit --directions {out}/vectors --direction K), "
          f"report.json")
    print(f"  region labels reached {np.mean(hit):.1%} on average; mean |change| outside the region "
          f"{np.mean(outside):.4f}")
    if empty:
        raise InputError(f"seg-edit: {len(empty)} of {len(keep)} images skipped (listed above); the others are in "
                         f"{out}")
