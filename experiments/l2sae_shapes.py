"""Latents2Semantics on the shapes world (the issue's table): reconstruction, region style edits in one forward
pass, style swaps, and speed next to the optimization-based editors. Scored by the probe where the truth is known.

Data: ``--n`` held-out renders ``shapes.sample(key(4242), n)`` (a key training never uses; training draws from
``fold_in(key(seed), 1)`` and evaluates on ``fold_in(key(seed), 2)``). Model: ``--model`` (a kind ``"l2sae"``
checkpoint; default the embedded ``shapes32-l2sae``). Every edit is ``jaxedit.edits.local_style`` with its
default hard masks (pixels outside the region are the input's own, exactly), or with ``--soft`` its soft masks
(alpha compositing with the softmax masks: an edge pixel takes a share of the edit).

Hues: the probe reads each hue as a (cos, sin) column pair in [0, 1]; the angle is
``atan2(2 s - 1, 2 c - 1) / 2 pi`` turns, and a hue error / change is the circular distance in turns
(at most 0.5). Position (x, y) and scale are the probe's normalized [0, 1] columns; shape = fraction of images
whose probe shape (argmax) differs.

1. Reconstruction ``D(E(x))`` (clipped to [-1, 1]) vs the input: mean per-image PSNR ``10 log10(4 / MSE)``;
   the probe reads both: shape agreement, hue errors (circular, per region, and the raw MAE of the six hue
   columns), x / y / scale MAE; the region masks' IoU with the renderer's label maps. Bars: PSNR >= 28 dB,
   shape agreement >= 95 %, hue errors <= 0.05.
2. Region noise (``style_noise``, one draw per image, keys ``split(key(11), n)``) at each ``--sigmas`` (and
   sigma 0, the control: the region re-decoded with its own style): the probe reads input and edit; edited
   hue change (mean and the share of images >= 0.1), the other two hues, shape, x, y, scale. Bars: edited hue
   change >= 0.1 on average, every other <= 0.03. The probe's floor: the same edits made by the renderer,
   geometry untouched: the region's true hue turned by the change the probe read from the edit, and the region
   recoloured with the very colour the edit gave it (which may leave the world's fixed saturation and value).
3. Swap (``swap``; donor = the held-out list rolled by one): the edited region's hue vs the donor's (probe on
   the donor; also vs the donor's true hue), the rest vs the input. Bars: error to the donor <= 0.08, the rest
   <= 0.03. "before" = the same error of the unedited input (how far the donors' hues are to begin with).

The spot is small at 32 px (median 8 pixels on these renders); the probe's spot-hue reading of a spot of a
few pixels is unreliable, so every row is given over all images and over the images whose spot covers
>= ``--spot-pixels`` pixels of the renderer's label map (for swaps: in the image and in the donor).

4. Speed: one-pass edits (``style_noise``, ``swap`` with a donor per image and from one donor for all, as
   ``jaxedit local-style --swap-from``) images/s on ``--batch`` renders, one jitted call, compile
   excluded, best of 3 (bar >= 1000 images/s); seconds per edit on ``--opt-n`` renders next to EditGAN
   (``editgan.optimize``, ``--steps`` steps, encoder-inverted W+, ``shapes32-segmenter``, target
   ``spot-grow``) and StyleCLIP latent optimization (``text.optimize_latents``, ``--steps`` steps, guided by
   ``shapes-clip``, prompt ``--prompt``, same W+ start): one compiled call over all images / images, compile
   excluded (best of ``--opt-repeats``).
5. Picture: a few renders (the first with a spot of >= ``--spot-pixels`` pixels, index order) x input,
   reconstruction, spot noise (two draws), body noise, background noise (sigma ``--picture-sigma``), the
   donor, the swap of each region from it.

Writes ``experiments/results/l2sae_shapes.{md,json,png}``.

    python experiments/l2sae_shapes.py [--model /work/runs/l2sae-ckpt]
    python experiments/l2sae_shapes.py --soft --out experiments/results/l2sae_shapes_soft
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

import jaxedit
from jaxedit.data import shapes
from jaxedit.edits import editgan, local_style, text
from jaxedit.io import checkpoint
from jaxedit.io import images as imio
from jaxedit.models import clip

FN = shapes.FACTOR_NAMES
HUE_COLS = {"background": (FN.index("bg_cos"), FN.index("bg_sin")),
            "body": (FN.index("hue_cos"), FN.index("hue_sin")),
            "spot": (FN.index("spot_hue_cos"), FN.index("spot_hue_sin"))}
RAW_HUE = {"background": "bg_hue", "body": "hue", "spot": "spot_hue"}
PART = {"background": "background", "body": "object", "spot": "spot"}  # the renderer's name of each region
GEOMETRY = ("x", "y", "scale")
BARS = {"psnr": 28.0, "shape": 0.95, "hue": 0.05, "moved": 0.1, "stays": 0.03, "swap": 0.08, "speed": 1000.0}


def region_colour(images, labels: np.ndarray, label: int, fallback: np.ndarray) -> np.ndarray:
    """Median RGB in [0, 1] ``[n, 3]`` of each image's pixels labelled ``label`` that are not on its edge (all of
    its pixels if none are; ``fallback`` if it has none)."""
    m = labels == label
    inner = m.copy()
    inner[:, 1:] &= m[:, :-1]
    inner[:, :-1] &= m[:, 1:]
    inner[:, :, 1:] &= m[:, :, :-1]
    inner[:, :, :-1] &= m[:, :, 1:]
    rgb = (np.clip(np.asarray(images), -1, 1) + 1) / 2
    out = np.array(fallback, dtype=np.float32, copy=True)
    for i in range(len(rgb)):
        px = rgb[i][inner[i]] if inner[i].any() else rgb[i][m[i]]
        if len(px):
            out[i] = np.median(px, axis=0)
    return out


def sat_val(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HSV saturation and value of RGB ``[n, 3]`` in [0, 1]."""
    v = rgb.max(-1)
    return (v - rgb.min(-1)) / np.maximum(v, 1e-6), v


def hue(factors: np.ndarray, region: str) -> np.ndarray:
    c, s = factors[:, HUE_COLS[region][0]], factors[:, HUE_COLS[region][1]]
    return np.mod(np.arctan2(2 * s - 1, 2 * c - 1) / (2 * np.pi), 1.0)


def circ(a, b) -> np.ndarray:
    d = np.mod(np.asarray(a) - np.asarray(b), 1.0)
    return np.minimum(d, 1.0 - d)


def psnr(target, recon) -> np.ndarray:
    mse = np.mean((np.asarray(target) - np.clip(np.asarray(recon), -1, 1)) ** 2, axis=(1, 2, 3))
    return 10 * np.log10(4.0 / np.maximum(mse, 1e-12))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="shapes32-l2sae", help="kind l2sae checkpoint (path or embedded name)")
    ap.add_argument("--n", type=int, default=256, help="held-out renders scored")
    ap.add_argument("--sigmas", default="1,2", help="style-noise sigmas (sigma 0 is always added as the control)")
    ap.add_argument("--spot-pixels", type=int, default=12, help="the 'visible spot' subset: spot label pixels >=")
    ap.add_argument("--batch", type=int, default=256, help="images per call for the one-pass images/s")
    ap.add_argument("--opt-n", type=int, default=64, help="images for the seconds-per-edit comparison")
    ap.add_argument("--steps", type=int, default=30, help="EditGAN and StyleCLIP optimization steps")
    ap.add_argument("--opt-repeats", type=int, default=1, help="timed calls of each optimization (best of)")
    ap.add_argument("--prompt", default="with a red spot", help="StyleCLIP prompt (shapes-clip)")
    ap.add_argument("--picture-rows", type=int, default=5)
    ap.add_argument("--picture-sigma", type=float, default=2.0)
    ap.add_argument("--soft", action="store_true", help="soft-mask compositing for the noise and swap rows")
    ap.add_argument("--out", default="experiments/results/l2sae_shapes")
    args = ap.parse_args()
    t_start = time.perf_counter()
    load0 = os.getloadavg()[0]
    log = lambda *a: print(f"[{time.perf_counter() - t_start:6.0f} s]", *a, flush=True)

    model_path = checkpoint.resolve(args.model)
    M, mp = jaxedit.load(model_path)
    P, pp = jaxedit.load("shapes32-probe")
    editor = local_style.LocalStyle(mp, M)
    regions = M.cfg.regions
    meta = checkpoint.read_meta(model_path)
    trained = meta.get("metrics", {}).get("step")
    n, T = args.n, args.spot_pixels
    data = shapes.sample(jax.random.key(4242), n)
    x = data["image"]
    labels = np.asarray(data["labels"])
    truth = {k: np.asarray(v) for k, v in data["factors"].items()}
    spot_px = (labels == 2).sum((1, 2))  # the renderer's labels: 0 background, 1 body, 2 spot
    big = spot_px >= T
    donors = jnp.roll(x, 1, axis=0)
    big_pair = big & np.roll(big, 1)
    log(f"model {model_path} (step {trained}); {n} renders; spot >= {T} px: {int(big.sum())}; "
        f"pairs with both spots >= {T} px: {int(big_pair.sum())}")

    read = jax.jit(lambda im: P.predict(pp, jnp.clip(im, -1, 1)))

    def reading(im):
        r = read(im)
        f = np.asarray(r["factors"])
        return {"factors": f, "shape": np.asarray(r["shape"]), **{k: hue(f, k) for k in HUE_COLS},
                **{k: f[:, FN.index(k)] for k in GEOMETRY}}

    r0 = reading(x)
    subsets = {"all": np.ones(n, bool), f"spot >= {T} px": big}

    # ------------------------------------------------------------------ 1. reconstruction
    @jax.jit
    def recon_and_masks(im):
        s, g = M.encode(mp, im)
        return M.decode(mp, s, g), jnp.argmax(M.mask_logits(mp, s), axis=-1)

    rec, masks = (np.asarray(v) for v in recon_and_masks(x))
    rr = reading(rec)
    p = psnr(x, rec)
    hue_col_idx = [i for pair in HUE_COLS.values() for i in pair]
    iou = {r: float(np.sum((masks == i) & (labels == i)) / max(1, np.sum((masks == i) | (labels == i))))
           for i, r in enumerate(regions)}
    recon_rows = []
    for sname, sel in subsets.items():
        row = {"images": sname, "n": int(sel.sum()), "PSNR dB": float(p[sel].mean()),
               "shape agree": float(np.mean(r0["shape"][sel] == rr["shape"][sel]))}
        for k in HUE_COLS:
            row[f"{k} hue err"] = float(circ(r0[k], rr[k])[sel].mean())
        row["mean hue err"] = float(np.mean([row[f"{k} hue err"] for k in HUE_COLS]))
        row["hue col MAE"] = float(np.abs(r0["factors"] - rr["factors"])[sel][:, hue_col_idx].mean())
        for k in GEOMETRY:
            row[f"{k} MAE"] = float(np.abs(r0[k] - rr[k])[sel].mean())
        recon_rows.append(row)
        log("recon", json.dumps(row))
    probe_rows = []  # how well the probe reads the inputs themselves (its own noise floor)
    for sname, sel in subsets.items():
        probe_rows.append({"images": sname, "n": int(sel.sum()), "shape acc": float(np.mean(
            r0["shape"][sel] == truth["shape"][sel])), **{f"{k} hue err": float(circ(r0[k], truth[RAW_HUE[k]])[
                sel].mean()) for k in HUE_COLS}})

    # ------------------------------------------------------------------ 2. region noise
    noise_fn = jax.jit(lambda ed, im, r, s, k: local_style.style_noise(ed, im, r, s, k, soft=args.soft))
    keys = jax.random.split(jax.random.key(11), n)
    sigmas = [0.0] + [float(s) for s in args.sigmas.split(",")]

    def changes(r1, region, sel):
        row = {f"{region} hue change": float(circ(r0[region], r1[region])[sel].mean()),
               f">= {BARS['moved']:g}": float(np.mean(circ(r0[region], r1[region])[sel] >= BARS["moved"]))}
        for k in HUE_COLS:
            if k != region:
                row[f"{k} hue"] = float(circ(r0[k], r1[k])[sel].mean())
        row["shape"] = float(np.mean(r0["shape"][sel] != r1["shape"][sel]))
        for k in GEOMETRY:
            row[k] = float(np.abs(r0[k] - r1[k])[sel].mean())
        return row

    noise_rows, edited_px, noise_readings, edit_rgb = [], {}, {}, {}
    true_rgb = {k: np.asarray(v) for k, v in shapes.colors(data["factors"]).items()}
    for sigma in sigmas:
        for region in regions:
            ri = regions.index(region)
            out = np.asarray(noise_fn(editor, x, ri, sigma, keys))
            edited_px[sigma, region] = np.mean(np.any(out != np.asarray(x), axis=-1), axis=(1, 2))  # [n]
            r1 = noise_readings[sigma, region] = reading(out)
            edit_rgb[sigma, region] = region_colour(out, labels, ri, true_rgb[PART[region]])
            for sname, sel in subsets.items():
                ch = changes(r1, region, sel)
                target = ch.pop(f"{region} hue change")
                moved = ch.pop(f">= {BARS['moved']:g}")
                others = {k: v for k, v in ch.items()}
                row = {"sigma": sigma, "region": region, "images": sname, "n": int(sel.sum()),
                       "edited hue change": target, f"share >= {BARS['moved']:g}": moved,
                       **{f"{k} hue": others.get(f"{k} hue", "-") for k in HUE_COLS},
                       "shape": others["shape"], **{k: others[k] for k in GEOMETRY},
                       "worst other": max((v, k) for k, v in others.items())[1],
                       "pixels edited %": float(100 * edited_px[sigma, region][sel].mean())}
                row["worst other"] = f"{row['worst other']} {others[row['worst other']]:.3f}"
                noise_rows.append(row)
                log("noise", json.dumps(row))

    # ------------------------------------------------------------------ 2b. the probe's floor for these rows
    # The same edits made exactly by the renderer, geometry untouched: (a) the edited region's true hue turned by
    # the signed change the probe read from the L2SAE edit (the world's own saturation and value); (b) the region
    # recoloured with the colour the edit gave it (its median RGB away from the edge), which may leave the world's
    # saturation and value. What the probe reads as "other" change here is its own error, the least any editor
    # making those colours can be scored at.
    rerender = jax.jit(lambda f, rgb: shapes.render(f, rgb=rgb)[0])
    in_sv = {region: sat_val(region_colour(x, labels, regions.index(region), true_rgb[PART[region]]))
             for region in regions}
    floor_rows = []
    for sigma in sigmas[1:]:
        for region in regions:
            turn = np.mod(noise_readings[sigma, region][region] - r0[region] + 0.5, 1.0) - 0.5
            turned = dict(data["factors"], **{RAW_HUE[region]: jnp.mod(truth[RAW_HUE[region]] + turn, 1.0)})
            sat, val = sat_val(edit_rgb[sigma, region])
            made = {"hue turn": (rerender(turned, {}), 0.0, 0.0),
                    "edit's colour": (rerender(data["factors"], {PART[region]: edit_rgb[sigma, region]}),
                                      np.abs(sat - in_sv[region][0]), np.abs(val - in_sv[region][1]))}
            for how, (img, dsat, dval) in made.items():
                r1 = reading(img)
                for sname, sel in subsets.items():
                    ch = changes(r1, region, sel)
                    target = ch.pop(f"{region} hue change")
                    ch.pop(f">= {BARS['moved']:g}")
                    worst = max((v, k) for k, v in ch.items())[1]
                    edit = next(r for r in noise_rows if (r["sigma"], r["region"], r["images"]) == (sigma, region, sname))
                    col = edit["worst other"].rsplit(" ", 1)[0]  # the edit's worst column
                    row = {"sigma": sigma, "region": region, "made by": how, "images": sname, "n": int(sel.sum()),
                           "|dS|": float(np.mean(np.broadcast_to(dsat, (n,))[sel])),
                           "|dV|": float(np.mean(np.broadcast_to(dval, (n,))[sel])),
                           "edited hue change": target, **{f"{k} hue": ch.get(f"{k} hue", "-") for k in HUE_COLS},
                           "shape": ch["shape"], **{k: ch[k] for k in GEOMETRY},
                           "worst other": f"{worst} {ch[worst]:.3f}",
                           "edit's worst other above this": f"{col} {edit[col] - ch[col]:+.3f}"}
                    floor_rows.append(row)
                    log("floor", json.dumps(row))

    # ------------------------------------------------------------------ 3. swap
    swap_fn = jax.jit(lambda ed, im, d, r: local_style.swap(ed, im, d, r, soft=args.soft))
    rd = reading(donors)
    donor_truth = {k: np.roll(v, 1) for k, v in truth.items()}
    swap_rows = []
    pair_subsets = {"all": np.ones(n, bool), f"spot >= {T} px (image and donor)": big_pair}
    for region in regions:
        out = np.asarray(swap_fn(editor, x, donors, regions.index(region)))
        r1 = reading(out)
        for sname, sel in pair_subsets.items():
            ch = changes(r1, region, sel)
            ch.pop(f">= {BARS['moved']:g}")
            ch.pop(f"{region} hue change")
            err = circ(r1[region], rd[region])[sel]
            row = {"region": region, "images": sname, "n": int(sel.sum()),
                   "err to donor (probe)": float(err.mean()),
                   f"share <= {BARS['swap']:g}": float(np.mean(err <= BARS["swap"])),
                   "err to donor (truth)": float(circ(r1[region], donor_truth[RAW_HUE[region]])[sel].mean()),
                   "before": float(circ(r0[region], rd[region])[sel].mean()),
                   **{f"{k} hue": ch.get(f"{k} hue", "-") for k in HUE_COLS},
                   "shape": ch["shape"], **{k: ch[k] for k in GEOMETRY}}
            others = {k: v for k, v in ch.items()}
            worst = max((v, k) for k, v in others.items())[1]
            row["worst other"] = f"{worst} {others[worst]:.3f}"
            swap_rows.append(row)
            log("swap", json.dumps(row))

    # ------------------------------------------------------------------ 4. speed
    def compiled_call(fn, *xs):
        t0 = time.perf_counter()
        c = jax.jit(fn).lower(*xs).compile()
        return c, time.perf_counter() - t0

    def best_of(c, xs, repeats):
        ts = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(c(*xs))
            ts.append(time.perf_counter() - t0)
        return min(ts)

    xb = shapes.sample(jax.random.key(4243), args.batch)["image"]
    kb = jax.random.split(jax.random.key(12), args.batch)
    m = args.opt_n
    xo, ko = x[:m], keys[:m]
    one_pass = {
        "L2SAE style noise (spot, sigma 1)": (lambda ed, im, k: local_style.style_noise(ed, im, "spot", 1.0, k),
                                               lambda im, k: (editor, im, k), (xb, kb), (xo, ko)),
        "L2SAE swap (spot)": (lambda ed, im, d: local_style.swap(ed, im, d, "spot"),
                              lambda im, d: (editor, im, d), (xb, jnp.roll(xb, 1, 0)), (xo, jnp.roll(xo, 1, 0))),
        "L2SAE swap from one donor (spot)": (lambda ed, im, d: local_style.swap(ed, im, d, "spot"),
                                             lambda im, d: (editor, im, d), (xb, xb[-1:]), (xo, xo[-1:])),
    }
    speed_rows = []
    for name, (fn, argf, big_args, small_args) in one_pass.items():
        c, ct = compiled_call(fn, *argf(*big_args))
        dt = best_of(c, argf(*big_args), 3)
        c2, _ = compiled_call(fn, *argf(*small_args))
        dt2 = best_of(c2, argf(*small_args), 3)
        speed_rows.append({"method": name, "images": f"{args.batch} / {m}", "images/s": args.batch / dt,
                           "s/edit": dt2 / m, "compile s": ct, "timing": "best of 3"})
        log("speed", json.dumps(speed_rows[-1]))

    G, gp = jaxedit.load("shapes32-stylegan2")
    E, ep = jaxedit.load("shapes32-encoder")
    clf, cp = jaxedit.load("shapes32-segmenter")
    encoder = lambda im: E(ep, im)
    ws = jax.block_until_ready(jax.jit(encoder)(xo))
    grow, _, _ = editgan.SHAPES_EDITS["spot-grow"]
    seg_labels = jax.jit(lambda w: jnp.argmax(editgan.segment(G, gp, clf, cp, w)[1], axis=-1))(ws)
    target = grow(seg_labels)

    def editgan_run(w, t):
        r = editgan.optimize(G, gp, clf, cp, w, t, editgan.SegEditConfig(steps=args.steps), encoder=encoder)
        return G.synthesis(gp, r.ws)

    c, ct = compiled_call(editgan_run, ws, target)
    dt = best_of(c, (ws, target), args.opt_repeats)
    speed_rows.append({"method": f"EditGAN optimize (spot-grow, {args.steps} steps, encoder W+)", "images": f"- / {m}",
                       "images/s": m / dt, "s/edit": dt / m, "compile s": ct,
                       "timing": f"best of {args.opt_repeats}"})
    log("speed", json.dumps(speed_rows[-1]))

    guide, clp, tok = clip.load_guide(checkpoint.default_path("shapes-clip"))
    tokens = jnp.asarray(tok([args.prompt], context_length=guide.model.cfg.context_length, truncate=True))

    def styleclip_run(w, tk):
        res = text.optimize_latents(G, gp, lambda im: guide.embed_images(clp, im), w, guide.embed_texts(clp, tk),
                                    steps=args.steps)
        return G.synthesis(gp, res.ws[0])

    c, ct = compiled_call(styleclip_run, ws, tokens)
    dt = best_of(c, (ws, tokens), args.opt_repeats)
    speed_rows.append({"method": f"StyleCLIP optimize_latents ('{args.prompt}', {args.steps} steps, shapes-clip, "
                                 f"encoder W+)", "images": f"- / {m}", "images/s": m / dt, "s/edit": dt / m,
                       "compile s": ct, "timing": f"best of {args.opt_repeats}"})
    log("speed", json.dumps(speed_rows[-1]))
    l2_edit = min(r["s/edit"] for r in speed_rows[:2])
    for r in speed_rows:
        r["x L2SAE s/edit"] = r["s/edit"] / l2_edit

    # ------------------------------------------------------------------ 5. picture
    rows_idx = [int(i) for i in np.flatnonzero(big)[:args.picture_rows]]
    sel = jnp.asarray(rows_idx)
    xs, ds = x[sel], donors[sel]
    ps = args.picture_sigma
    k2 = jax.random.split(jax.random.key(13), 2 * len(rows_idx)).reshape(2, len(rows_idx))
    ri = {r: regions.index(r) for r in regions}
    cols = [np.asarray(xs), rec[np.asarray(rows_idx)]]
    col_labels = ["input", "recon"]
    if "spot" in ri:
        cols += [np.asarray(noise_fn(editor, xs, ri["spot"], ps, k2[0])),
                 np.asarray(noise_fn(editor, xs, ri["spot"], ps, k2[1]))]
        col_labels += [f"spot noise {ps:g} a", f"spot noise {ps:g} b"]
    for r in ("body", "background"):
        if r in ri:
            cols.append(np.asarray(noise_fn(editor, xs, ri[r], ps, k2[0])))
            col_labels.append(f"{'bg' if r == 'background' else r} noise {ps:g}")
    cols.append(np.asarray(ds))
    col_labels.append("donor")
    for r in ("spot", "body", "background"):
        if r in ri:
            cols.append(np.asarray(swap_fn(editor, xs, ds, ri[r])))
            col_labels.append(f"swap {'bg' if r == 'background' else r}")
    cells = np.stack(cols, axis=1).reshape(-1, *cols[0].shape[1:])
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    imio.save_grid(np.clip(cells, -1, 1), out.with_suffix(".png"), cols=len(cols), min_cell=96,
                   row_labels=[f"#{i}" for i in rows_idx], col_labels=col_labels)

    # ------------------------------------------------------------------ bars
    bars = []  # one row per bar: its value over all images and over the visible-spot subset
    sub = list(subsets)[1]

    def bar(name, rule, ok, values):
        row = {"bar": name, "rule": rule}
        for sname, v in zip(("all", "visible spot"), values):
            row[sname] = v
            row[f"met ({sname})"] = "-" if v is None else ("met" if ok(v) else "MISSED")
        bars.append(row)

    ge = lambda b: (lambda v: v >= b)
    le = lambda b: (lambda v: v <= b)
    ra, rb = recon_rows
    bar("reconstruction PSNR dB", f">= {BARS['psnr']:g}", ge(BARS["psnr"]), (ra["PSNR dB"], rb["PSNR dB"]))
    bar("reconstruction shape agreement", f">= {BARS['shape']:g}", ge(BARS["shape"]),
        (ra["shape agree"], rb["shape agree"]))
    for k in HUE_COLS:
        bar(f"reconstruction {k} hue err", f"<= {BARS['hue']:g}", le(BARS["hue"]),
            (ra[f"{k} hue err"], rb[f"{k} hue err"]))
    other_cols = [f"{k} hue" for k in HUE_COLS] + ["shape", *GEOMETRY]

    def worst(r):
        v, c = max((r[c], c) for c in other_cols if r[c] != "-")
        return v, c

    for sigma in sigmas[1:]:
        for region in regions:
            pair = [r for r in noise_rows if r["sigma"] == sigma and r["region"] == region]
            bar(f"noise sigma {sigma:g} {region}: edited hue change", f">= {BARS['moved']:g}", ge(BARS["moved"]),
                [r["edited hue change"] for r in pair])
            bar(f"noise sigma {sigma:g} {region}: worst other ({' / '.join(worst(r)[1] for r in pair)})",
                f"<= {BARS['stays']:g}", le(BARS["stays"]), [worst(r)[0] for r in pair])
    for region in regions:
        pair = [r for r in swap_rows if r["region"] == region]
        bar(f"swap {region}: err to donor", f"<= {BARS['swap']:g}", le(BARS["swap"]),
            [r["err to donor (probe)"] for r in pair])
        bar(f"swap {region}: worst other ({' / '.join(worst(r)[1] for r in pair)})", f"<= {BARS['stays']:g}",
            le(BARS["stays"]), [worst(r)[0] for r in pair])
    for r in speed_rows[:2]:
        bar(f"{r['method']} images/s", f">= {BARS['speed']:g}", ge(BARS["speed"]), (r["images/s"], None))

    # ------------------------------------------------------------------ tables
    total = time.perf_counter() - t_start

    def table(rs, skip=()):
        cs = [c for c in rs[0] if c not in skip]
        md = ["| " + " | ".join(cs) + " |", "|" + "---|" * len(cs)]
        md += ["| " + " | ".join(_fmt(c, r[c]) for c in cs) + " |" for r in rs]
        return "\n".join(md)

    verdicts = [b[c] for b in bars for c in ("met (all)", "met (visible spot)") if b[c] != "-"]
    n_met = sum(v == "met" for v in verdicts)
    md = (
        f"# l2sae_shapes ({n} held-out renders, model {args.model}"
        f"{f' = {model_path}' if str(model_path) != args.model else ''}, trained {trained} steps"
        f"{', soft masks' if args.soft else ''})\n\n"
        f"{platform.processor() or platform.machine()}, {jax.devices()[0].platform}, jax {jax.__version__}; shared "
        f"2-core CPU (other jobs may be running; 1-min load average {load0:.2f} at the start); whole script {total / 60:.1f} min. Written by "
        f"experiments/l2sae_shapes.py (its docstring has the method).\n\n"
        f"Renders `shapes.sample(key(4242), {n})` (a key training never uses). The probe (`shapes32-probe`) reads "
        f"every image; hue = atan2(2 sin col - 1, 2 cos col - 1) / 2 pi turns, errors and changes are circular "
        f"distances in turns (<= 0.5); x, y, scale: the probe's normalized [0, 1] columns; shape: share of images "
        f"whose probe shape differs. The spot covers a median {int(np.median(spot_px))} label pixels on these "
        f"renders ({int((spot_px < T).sum())} of {n} under {T}); the probe's spot-hue reading of a spot of a "
        f"few pixels is unreliable, so each row is also given over the {int(big.sum())} renders whose spot covers "
        f">= {T} pixels (swaps: {int(big_pair.sum())} pairs where image and donor both do).\n\n"
        f"## Reconstruction\n\nD(E(x)) clipped to [-1, 1] vs x; the probe reads both. Bars: PSNR >= 28 dB, shape "
        f"agreement >= 95 %, hue errors <= 0.05. hue col MAE = raw MAE of the six (cos, sin) columns.\n\n"
        + table(recon_rows)
        + "\n\nRegion masks (hard, argmax of the structure groups) vs the renderer's label maps, IoU: "
        + ", ".join(f"{k} {v:.3f}" for k, v in iou.items()) + f" (mean {np.mean(list(iou.values())):.3f}).\n\n"
        f"The probe on the inputs vs the renderer's truth (its own reading error, for scale):\n\n"
        + table(probe_rows)
        + "\n\n## Region style noise\n\n`local_style.style_noise` (g + sigma L eta, L the model's style spread, "
          "projected to unit RMS; one draw per image, hard mask). "
          f"edited hue change = circular change of the edited region's hue; share >= {BARS['moved']:g} = images "
          f"whose change reaches it; the other columns = the mean change of the rest (other hues, shape flips, "
          f"x, y, scale); pixels edited % = share of pixels that differ from the input. Sigma 0 = the region "
          f"re-decoded with its own style (the control: what the composite alone changes). Bars: edited hue "
          f"change >= {BARS['moved']:g}, every other <= {BARS['stays']:g}.\n\n"
        + table(noise_rows)
        + "\n\nThe probe's floor for these rows: each image re-rendered by the renderer (geometry untouched) with "
          "the edited region (made by) *hue turn*: its true hue turned by the signed change the probe read from the "
          "edit above, at the world's own saturation and value; *edit's colour*: recoloured with the colour the edit "
          "gave it (median RGB of the edited image over the region's label pixels off its edge); |dS|, |dV| = how far "
          "that colour's HSV saturation and value are from the input's (the world fixes both per region). Read by "
          "the same probe: its \"other\" columns are the probe's own error under those colour changes; the last "
          "column = the edit's worst other column (table above) minus the same column here.\n\n"
        + table(floor_rows)
        + f"\n\n## Style swap\n\n`local_style.swap` from the donor (the list rolled by one). err to donor = circular "
          f"distance of the edited region's hue (probe) to the donor's (probe; truth = the donor's rendered hue); "
          f"before = that distance for the unedited input; share <= {BARS['swap']:g} = images within the bar; "
          f"the other columns = the change of the rest vs the input. Bars: err to donor <= {BARS['swap']:g}, "
          f"others <= {BARS['stays']:g}.\n\n"
        + table(swap_rows)
        + f"\n\n## Speed\n\nOne-pass edits: images/s = {args.batch} fresh renders in one jitted call (encode, "
          f"decode, masks, composite), compile excluded, best of 3; s/edit = the same on {m} images / {m}. "
          f"Optimizations on the first {m} held-out renders inverted by `shapes32-encoder` (W+): EditGAN "
          f"`editgan.optimize` ({args.steps} steps, Adam 0.02, encoder term, `shapes32-segmenter`, target "
          f"`spot-grow` of the current segmentation) and StyleCLIP `text.optimize_latents` ({args.steps} steps, "
          f"lr 0.1, L2 0.008, CLIP = the shapes world's `shapes-clip`, prompt '{args.prompt}'; the real CLIP "
          f"objective, not a stand-in); one compiled call over the {m} images incl. the final synthesis, / {m}, "
          f"compile excluded. x L2SAE = s/edit / the faster one-pass s/edit. Bar: >= {BARS['speed']:g} "
          f"images/s.\n\n"
        + table(speed_rows)
        + f"\n\n## Bars ({n_met} of {len(verdicts)} verdicts met)\n\nall = over the {n} renders; visible spot = "
          f"over the {sub} subset (swaps: image and donor). Worst other = the largest of the other columns (hues, "
          f"shape flips, x, y, scale), named per subset.\n\n" + table(bars)
        + f"\n\n![L2SAE edits]({out.name}.png)\n\nRows: the first {len(rows_idx)} renders whose spot covers >= "
          f"{T} pixels (index order, not picked by result). Columns: input, reconstruction, spot style noise "
          f"(sigma {ps:g}, two draws), body and background noise (sigma {ps:g}), the donor (the previous render), "
          f"the swap of each region from it.\n")
    out.with_suffix(".md").write_text(md)
    out.with_suffix(".json").write_text(json.dumps({
        "args": vars(args), "model_path": str(model_path), "trained_steps": trained, "seconds": total,
        "spot_pixels": {"median": float(np.median(spot_px)), "under": int((spot_px < T).sum()),
                        "big": int(big.sum()), "big_pairs": int(big_pair.sum())},
        "reconstruction": recon_rows, "mask_iou": iou, "probe_on_inputs": probe_rows, "noise": noise_rows, "noise_floor_renderer": floor_rows,
        "swap": swap_rows, "speed": speed_rows, "bars": bars, "picture_rows": rows_idx}, indent=1))
    print(md)


def _fmt(col, v):
    if v is None:
        return "-"
    if not isinstance(v, float):
        return str(v)
    if col in ("all", "visible spot"):
        return f"{v:.1f}" if abs(v) >= 100 else f"{v:.2f}" if abs(v) >= 1 else f"{v:.4f}"
    if col.startswith(("share", "shape agree", "shape acc")):
        return f"{v:.0%}"
    if col in ("PSNR dB", "compile s", "pixels edited %", "x L2SAE s/edit") or col == "sigma":
        return f"{v:.4g}" if col == "x L2SAE s/edit" else f"{v:.2f}" if col != "sigma" else f"{v:g}"
    if col == "images/s":
        return f"{v:.1f}" if v < 100 else f"{v:.0f}"
    if col == "s/edit":
        return f"{v:.2e}" if v < 1e-3 else f"{v:.4f}"
    return f"{v:.4f}"


if __name__ == "__main__":
    main()
