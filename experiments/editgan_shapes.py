"""EditGAN on the shapes world (issue 16): segmentation-driven edits, scored by the probe where the truth is known.

Data: ``--n`` fresh renders (``shapes.sample(key(2026))``, images the generator never made) inverted by the encoder
into W+ (``ws = E(ep, x)``); with ``--samples`` also generator samples ``G.mapping(z, psi=0.7)`` as a second row.
Segmenter: ``--segmenter`` (a pixel-classifier checkpoint over the default generator's features).

1. Optimization. For each named edit of :data:`jaxedit.edits.editgan.SHAPES_EDITS` the target label map is the edit
   applied to the current segmentation (argmax of ``editgan.segment``); an image whose target equals its labels
   (no spot to grow / shrink / remove) is "not applicable": counted, excluded from every rate and mean. W+ is
   optimized by ``editgan.optimize`` (30 steps, Adam 0.02, the encoder-consistency term), all images in one
   compiled program; once with the reference's loss (``keep_weight=0``) and once with ``keep_weight`` (chosen by a
   quick sweep over ``--sweep`` on the first ``--sweep-n`` images unless ``--keep-weight`` is given).
   The probe reads ``G(w)`` and ``G(w_edited)`` (both clipped to [-1, 1]): success = the target factor
   (``spot_ratio`` or ``scale``, [0, 1] normalized units) moves in the intended sign by more than ``--threshold``;
   "others" = mean |change| of the other 11 factor columns; "others excl." leaves out ``rot_*`` and
   ``spot_hue_*`` too (the rotation of a circle (any angle) or a square (90 degree symmetry) and the hue of a
   tiny or absent spot are not determined by the image, so the probe's readings of them move without any visible
   change); outside = mean |pixel change| ([-1, 1] units, over channels) outside the edit's ROI (``res.roi``).
2. Vector transfer (the EditGAN paper's comparison): for each edit, the editing vector ``dw`` of a source image
   where the reference optimization succeeded (the first ``--sources`` such images, in index order: not picked)
   is added to every image's code (``editgan.transfer``, scale 1), without refinement and with
   ``--refine-steps`` steps of the reference loss (encoder term on). Rates over the applicable images other than
   the source; outside = outside the ROI between the before and the after segmentation (``region_of_interest``).
3. Picture ``experiments/results/editgan_shapes.png``.

Seconds per edit: one compiled call over all ``--n`` images (edited codes and their images), divided by ``--n``;
compile excluded. The issue's bars: optimization success >= 90 %, others <= 0.03, outside <= 0.02; transfer
success >= 70 % (vector only), >= 90 % (with 10 refinement steps).

    python experiments/editgan_shapes.py --segmenter checkpoints/shapes32-segmenter
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxedit
from jaxedit.data import shapes
from jaxedit.edits import editgan
from jaxedit.io import images as imio

FN = shapes.FACTOR_NAMES
ILL_DEFINED = tuple(i for i, n in enumerate(FN) if n.startswith(("rot_", "spot_hue_")))
BARS = {"success": 0.90, "others": 0.03, "outside": 0.02, "transfer": 0.70, "transfer refined": 0.90}


def colour(labels) -> np.ndarray:
    """Label maps [B, H, W] -> uint8 [B, H, W, 3] (the CLI's label palette)."""
    return imio.LABEL_PALETTE[np.asarray(labels) % len(imio.LABEL_PALETTE)]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--segmenter", default="checkpoints/shapes32-segmenter")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--threshold", type=float, default=0.02, help="success: target factor moves > this, right sign")
    ap.add_argument("--keep-weight", type=float, default=None, help="skip the sweep; use this keep_weight")
    ap.add_argument("--sweep", default="0,5,20")
    ap.add_argument("--sweep-n", type=int, default=16)
    ap.add_argument("--sources", type=int, default=3, help="source vectors per edit for the transfer")
    ap.add_argument("--refine-steps", type=int, default=10)
    ap.add_argument("--samples", action="store_true", help="also generator samples (psi 0.7) as a second data row")
    ap.add_argument("--out", default="experiments/results/editgan_shapes")
    args = ap.parse_args()
    t_start = time.perf_counter()
    log = lambda *a: print(f"[{time.perf_counter() - t_start:6.0f} s]", *a, flush=True)

    G, gp = jaxedit.load("shapes32-stylegan2")
    E, ep = jaxedit.load("shapes32-encoder")
    P, pp = jaxedit.load("shapes32-probe")
    clf, cp = jaxedit.load(args.segmenter)
    encoder = lambda im: E(ep, im)
    n = args.n
    renders = shapes.sample(jax.random.key(2026), n)["image"]
    data = {"renders (encoder W+)": jax.jit(encoder)(renders)}
    if args.samples:
        data["generator samples (psi 0.7)"] = G.mapping(gp, jax.random.normal(jax.random.key(2027), (n, G.cfg.z_dim)),
                                                        psi=0.7)

    @jax.jit
    def look(ws):
        """-> (images clipped, label maps, probe factors)."""
        img, logits = editgan.segment(G, gp, clf, cp, ws)
        img = jnp.clip(img, -1, 1)
        return img, jnp.argmax(logits, axis=-1), P.predict(pp, img)["factors"]

    compiled = {}

    def timed(key, fn, *xs):
        """One call of ``fn`` compiled once per ``key`` (compile excluded) -> (out, seconds)."""
        if key not in compiled:
            compiled[key] = jax.jit(fn).lower(*xs).compile()
        t0 = time.perf_counter()
        out = jax.block_until_ready(compiled[key](*xs))
        return out, time.perf_counter() - t0

    def optimizer(cfg):
        def run(ws, target):
            r = editgan.optimize(G, gp, clf, cp, ws, target, cfg, encoder=encoder)
            return r.ws, r.vector, r.roi, G.synthesis(gp, r.ws)
        return run

    def score(edit, base, new_ws, roi, applicable):
        """Probe scores of one edit over the applicable images: a dict of the table's columns + per-image arrays."""
        _, target_name, sign = editgan.SHAPES_EDITS[edit]
        k = FN.index(target_name)
        img0, _, f0 = base
        img1, lab1, f1 = look(new_ws)
        d = np.asarray(f1 - f0)
        a = np.asarray(applicable)
        others = [i for i in range(len(FN)) if i != k]
        excl = [i for i in others if i not in ILL_DEFINED]
        per_factor = np.abs(d[a][:, others]).mean(0)
        out_px = np.abs(np.asarray(img1) - np.asarray(img0)).mean(-1)  # [B, H, W]
        keep = ~np.asarray(roi)
        outside = (out_px * keep).sum((1, 2)) / np.maximum(keep.sum((1, 2)), 1)
        ok = sign * d[:, k] > args.threshold
        return {
            "n/a": int((~a).sum()),
            "success": float(ok[a].mean()),
            "target change": float(d[a, k].mean()),
            "others": float(np.abs(d[a][:, others]).mean()),
            "others excl. rot, spot hue": float(np.abs(d[a][:, excl]).mean()),
            "worst other": f"{FN[others[int(np.argmax(per_factor))]]} {per_factor.max():.3f}",
            "outside": float(outside[a].mean()),
            "ROI %": float(100 * np.asarray(roi)[a].mean()),
        }, ok, np.asarray(img1), np.asarray(lab1)

    # ------------------------------------------------------------------ targets
    base, targets, applicable = {}, {}, {}
    for dname, ws in data.items():
        base[dname] = look(ws)
        for edit, (fn, _, _) in editgan.SHAPES_EDITS.items():
            t = fn(base[dname][1])
            targets[dname, edit] = t
            applicable[dname, edit] = ~jnp.all(t == base[dname][1], axis=(1, 2))
    main_data = next(iter(data))
    log("label pixels by class:", np.bincount(np.asarray(base[main_data][1]).ravel()).tolist(),
        "applicable:", {e: int(applicable[main_data, e].sum()) for e in editgan.SHAPES_EDITS})

    # ------------------------------------------------------------------ keep_weight sweep
    sweep_rows = []
    if args.keep_weight is None:
        m = args.sweep_n
        ws = data[main_data][:m]
        bm = tuple(v[:m] for v in base[main_data])
        for kw in (float(v) for v in args.sweep.split(",")):
            cfg = editgan.SegEditConfig(steps=args.steps, keep_weight=kw)
            row = {"keep_weight": kw}
            for edit in editgan.SHAPES_EDITS:
                (new_ws, _, roi, _), _ = timed(("sweep", kw), optimizer(cfg), ws, targets[main_data, edit][:m])
                s, *_ = score(edit, bm, new_ws, roi, applicable[main_data, edit][:m])
                for c in ("success", "others excl. rot, spot hue", "outside"):
                    row[f"{edit} {c}"] = s[c]
            for c in ("success", "others excl. rot, spot hue", "outside"):
                row[f"mean {c}"] = float(np.mean([row[f"{e} {c}"] for e in editgan.SHAPES_EDITS]))
            sweep_rows.append(row)
            log("sweep", json.dumps({k: v for k, v in row.items() if k.startswith(("keep", "mean"))}))
        # the best non-reference weight: highest mean success, ties (within 2 points) by lower others excl.
        cands = [r for r in sweep_rows if r["keep_weight"] != 0] or sweep_rows
        top = max(r["mean success"] for r in cands)
        keep_weight = min((r for r in cands if r["mean success"] >= top - 0.02),
                          key=lambda r: r["mean others excl. rot, spot hue"])["keep_weight"]
    else:
        keep_weight = args.keep_weight
    log("keep_weight", keep_weight)

    # ------------------------------------------------------------------ optimization, 64 images
    configs = {"reference (keep_weight 0)": editgan.SegEditConfig(steps=args.steps),
               f"keep_weight {keep_weight:g}": editgan.SegEditConfig(steps=args.steps, keep_weight=keep_weight)}
    rows, results = [], {}
    for dname, ws in data.items():
        for cname, cfg in configs.items():
            for edit in editgan.SHAPES_EDITS:
                (new_ws, vec, roi, _), dt = timed(("opt", cname), optimizer(cfg), ws, targets[dname, edit])
                s, ok, img1, lab1 = score(edit, base[dname], new_ws, roi, applicable[dname, edit])
                results[dname, cname, edit] = {"vector": np.asarray(vec), "ok": ok, "img": img1, "lab": lab1}
                row = {"data": dname, "config": cname, "edit": edit, **s, "s/edit": dt / n}
                rows.append(row)
                log(json.dumps(row))

    # ------------------------------------------------------------------ vector transfer
    ref = next(iter(configs))
    ws = data[main_data]
    b = base[main_data]
    before = b[1]
    tcfg = configs[ref]

    def move(w, dw, target):
        moved = editgan.transfer(G, gp, clf, cp, w, dw, scale=1.0)
        return moved, G.synthesis(gp, moved)

    def move_refine(w, dw, target):
        moved = editgan.transfer(G, gp, clf, cp, w, dw, scale=1.0, refine_steps=args.refine_steps, cfg=tcfg,
                                 encoder=encoder)
        return moved, G.synthesis(gp, moved)

    opt_seconds = {r["edit"]: r["s/edit"] for r in rows if r["data"] == main_data and r["config"] == ref}
    transfer_rows, per_source, pics = [], [], {}
    for edit in editgan.SHAPES_EDITS:
        res = results[main_data, ref, edit]
        app = np.asarray(applicable[main_data, edit])
        srcs = [int(i) for i in np.flatnonzero(res["ok"] & app)[:args.sources]]
        acc = {}
        for j, src in enumerate(srcs):
            dw = jnp.asarray(res["vector"][src])
            mask = app.copy()
            mask[src] = False
            target = editgan.SHAPES_EDITS[edit][0](before)  # the named edit of each image's own map

            def move_to_target(w, dw, target):
                moved = editgan.transfer(G, gp, clf, cp, w, dw, scale=1.0, refine_steps=args.refine_steps, cfg=tcfg,
                                         encoder=encoder, target=target)
                return moved, G.synthesis(gp, moved)

            for method, fn in (("vector only", move), (f"vector + {args.refine_steps} refinement steps",
                                                         move_refine),
                               (f"vector + {args.refine_steps} steps toward the named edit", move_to_target)):
                (moved, _), dt = timed(method, fn, ws, dw, target)
                lab_after = look(moved)[1]
                roi = editgan.region_of_interest(before, lab_after, clf.cfg.num_classes, tcfg.dilate)
                s, ok, img1, lab1 = score(edit, b, moved, roi, jnp.asarray(mask))
                s = {"edit": edit, "source": src, "method": method, **s, "s/edit": dt / n}
                per_source.append(s)
                acc.setdefault(method, []).append(s)
                log(json.dumps(s))
                if j == 0:
                    pics[edit, method] = (src, img1, mask)
        row0 = {"edit": edit, "method": "optimization (30 steps)" if args.steps == 30 else
                f"optimization ({args.steps} steps)", "sources": "-",
                **{k: v for k, v in rows_of(rows, main_data, ref, edit).items()
                   if k in ("success", "target change", "others", "others excl. rot, spot hue", "outside", "ROI %")},
                "s/edit": opt_seconds[edit]}
        transfer_rows.append(row0)
        for method, ss in acc.items():
            first = ss[0]
            transfer_rows.append({
                "edit": edit, "method": method, "sources": f"{first['source']}",
                **{k: first[k] for k in ("success", "target change", "others", "others excl. rot, spot hue",
                                         "outside", "ROI %")},
                f"success, mean of {len(ss)} sources": float(np.mean([s["success"] for s in ss])),
                "s/edit": float(np.mean([s["s/edit"] for s in ss]))})
    for r in transfer_rows:  # same columns in every row
        r.setdefault(f"success, mean of {args.sources} sources", "-")
        srcs_all = [s["source"] for s in per_source if s["edit"] == r["edit"] and s["method"] == r["method"]]
        if srcs_all:
            r["sources"] = ", ".join(str(v) for v in srcs_all)

    # ------------------------------------------------------------------ picture
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    img0 = imio.to_uint8(np.asarray(b[0]))
    cells, row_labels = [], []
    for edit in editgan.SHAPES_EDITS:
        src = pics[edit, "vector only"][0]
        r = results[main_data, ref, edit]
        cells += [img0[src], colour(before[src]), colour(targets[main_data, edit][src]),
                  imio.to_uint8(np.clip(r["img"][src], -1, 1)), colour(r["lab"][src])]
        row_labels.append(f"{edit} #{src}")
    g1 = _labelled(np.stack(cells), 5, row_labels,
                   ["original", "labels", "target labels", "edited (opt.)", "edited labels"])
    cells, row_labels = [], []
    refined = f"vector + {args.refine_steps} refinement steps"
    for edit in editgan.SHAPES_EDITS:
        src, img_v, mask = pics[edit, "vector only"]
        _, img_r, _ = pics[edit, refined]
        others = [int(i) for i in np.flatnonzero(mask)[:3]]
        for i in others:
            cells += [img0[i], imio.to_uint8(np.clip(img_v[i], -1, 1)), imio.to_uint8(np.clip(img_r[i], -1, 1))]
        row_labels.append(f"{edit} dw of #{src}")
    g2 = _labelled(np.stack(cells), 9, row_labels, ["image", "+ dw", f"+ dw, {args.refine_steps} st."] * 3)
    width = max(g1.shape[1], g2.shape[1])
    pad = lambda g: np.pad(g, ((0, 16), (0, width - g.shape[1]), (0, 0)), constant_values=255)
    imio.save_png(np.concatenate([pad(g1), pad(g2)]), out.with_suffix(".png"))

    # ------------------------------------------------------------------ tables
    total = time.perf_counter() - t_start

    def table(rs, skip=()):
        cs = [c for c in rs[0] if c not in skip]
        md = ["| " + " | ".join(cs) + " |", "|" + "---|" * len(cs)]
        md += ["| " + " | ".join(_fmt(c, r[c]) for c in cs) + " |" for r in rs]
        return "\n".join(md)

    bars = []
    for r in rows:
        miss = [f"success {r['success']:.0%} < 90%"] if r["success"] < BARS["success"] else []
        miss += [f"others {r['others']:.3f} > 0.03"] if r["others"] > BARS["others"] else []
        miss += [f"others excl. {r['others excl. rot, spot hue']:.3f} > 0.03"] \
            if r["others excl. rot, spot hue"] > BARS["others"] else []
        miss += [f"outside {r['outside']:.3f} > 0.02"] if r["outside"] > BARS["outside"] else []
        bars.append(f"- {r['data']}, {r['config']}, {r['edit']}: " + ("all bars met" if not miss else
                                                                       "misses " + "; ".join(miss)))
    for r in transfer_rows:
        if r["method"].startswith("optimization"):
            continue
        bar = BARS["transfer"] if r["method"] == "vector only" else BARS["transfer refined"]
        mean = r[f"success, mean of {args.sources} sources"]
        bars.append(f"- transfer {r['edit']}, {r['method']}: success {r['success']:.0%} (first source), "
                    f"{mean:.0%} (mean of sources) vs bar {bar:.0%}: "
                    f"{'met' if r['success'] >= bar else 'missed'} / {'met' if mean >= bar else 'missed'}")
    header = (
        f"# editgan_shapes ({n} images, segmenter {args.segmenter})\n\n"
        f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}, jax {jax.__version__}; shared "
        f"2-core CPU (other jobs running); whole script {total / 60:.1f} min. Written by "
        f"experiments/editgan_shapes.py (its docstring has the method).\n\n"
        f"Fresh renders (`shapes.sample(key(2026), {n})`) inverted by the encoder into W+; per named edit, target = "
        f"the edit applied to the current segmentation; n/a = images whose target equals their labels (excluded "
        f"from every column). `editgan.optimize`, {args.steps} steps, Adam 0.02, encoder term on, all {n} images in "
        f"one compiled program. The probe reads the image before and after (clipped to [-1, 1]): success = the "
        f"target factor (spot_ratio for the spot edits, scale for body-grow; normalized [0, 1] units) moves in the "
        f"intended sign by more than {args.threshold:g}; target change = its mean signed change; others = mean "
        f"|change| of the other 11 factor columns; others excl. rot, spot hue = the same without rot_cos, rot_sin, "
        f"spot_hue_cos, spot_hue_sin (the rotation of a circle or of a square (90 degree symmetric) and the hue of "
        f"a tiny or removed spot are not determined by the image, so the probe's readings of them move with no "
        f"visible change); worst other = the other factor column with the largest mean |change|; outside = mean "
        f"|pixel change| ([-1, 1] units) outside the edit's ROI (`res.roi`); ROI % = its share of the image; s/edit = one compiled call over the "
        f"{n} images / {n}, compile excluded. Bars (issue 16): success >= 90%, others <= 0.03, outside <= 0.02."
        f"\n\n## Optimization\n\n")
    sweep_md = ""
    if sweep_rows:
        sweep_md = (f"\n\n## keep_weight sweep (first {args.sweep_n} images; chosen: {keep_weight:g} = highest mean "
                    f"success among the non-zero weights, ties within 2 points broken by lower others excl.)\n\n"
                    + table(sweep_rows))
    transfer_md = (
        f"\n\n## Vector transfer\n\nFor each edit, the editing vector dw = w_edited - w of the first "
        f"{args.sources} images where the reference optimization succeeded (index order, not picked) is added to "
        f"all {n} codes (`editgan.transfer`, scale 1), without refinement and with {args.refine_steps} steps of the "
        f"reference loss toward the moved codes' own segmentation (encoder term on). Scored over the applicable "
        f"images other than the source, the columns from the first source; outside = outside the ROI of the "
        f"before and after segmentations (`region_of_interest`, dilated 3 times; once any pixel turns background, "
        f"the background is an edited class and that ROI is nearly the whole image (ROI %), so this outside "
        f"column says little). Bars: >= 70% success with the "
        f"vector only, >= 90% with {args.refine_steps} refinement steps.\n\n")
    md = (header + table(rows) + "\n\nThe reference is the EditGAN tool's loss (keep_weight 0); keep_weight adds "
          "an MSE on the ROI pixels whose label stays (not in the reference)." + sweep_md + transfer_md
          + table(transfer_rows) + "\n\nPer source:\n\n" + table(per_source)
          + "\n\n## Bars\n\n" + "\n".join(bars)
          + f"\n\n![EditGAN edits and vector transfer]({out.name}.png)\n\nTop: per edit, a source image, its "
            f"label map, the target, the optimized edit (reference) and its label map. Bottom: that image's "
            f"vector added to 3 other images (image, + dw, + dw and {args.refine_steps} refinement steps).\n")
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({
        "args": vars(args), "seconds": total, "keep_weight": keep_weight, "threshold": args.threshold,
        "rows": rows, "sweep": sweep_rows, "transfer": transfer_rows, "transfer_per_source": per_source,
        "bars": bars}, indent=1))
    print(md)


def rows_of(rows, data, config, edit):
    return next(r for r in rows if (r["data"], r["config"], r["edit"]) == (data, config, edit))


def _labelled(cells: np.ndarray, cols: int, row_labels, col_labels, min_cell: int = 96) -> np.ndarray:
    h = cells.shape[1]
    up, pad = max(1, min_cell // h), 2
    big = imio.grid(cells, cols, pad=pad).repeat(up, 0).repeat(up, 1)
    return imio.label(big, ((h + pad) * up, (h + pad) * up), pad * up, row_labels, col_labels)


def _fmt(col, v):
    if not isinstance(v, float):
        return str(v)
    if col.startswith("success") or col == "mean success" or col.endswith(" success"):
        return f"{v:.0%}"
    if col == "s/edit":
        return f"{v:.3f}"
    if col == "ROI %":
        return f"{v:.1f}"
    if col == "keep_weight":
        return f"{v:g}"
    return f"{v:+.4f}" if col == "target change" else f"{v:.4f}"


if __name__ == "__main__":
    main()
