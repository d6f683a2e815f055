"""The edit report: per direction and strength, what an edit changes and what it keeps.

This is the table that InterFaceGAN, StyleCLIP and DeCurvEd print, computed from functions the
caller passes in (this module knows no editor family; :mod:`jaxedit.cli.evaluate` builds them):

- ``render(latents [b, ...]) -> images [b, H, W, 3]`` in [-1, 1];
- ``edit(latents [B, ...], k, t [B]) -> latents`` (:data:`jaxedit.metrics.directions.Edit`);
- ``readout(images [b, ...]) -> {name: [b, ...]}``: per-image readings; ``"attrs"``/``"probs"``
  (:func:`jaxedit.metrics.attributes.read` of the probe) give attribute changes, ``"features"`` the
  Frechet distance and the probe-embedding distance, ``"identity"`` (unit ArcFace embeddings) the
  identity similarity (:func:`probe_readout`, :func:`inception_readout`, :func:`identity_readout`);
- ``compare(edited [b, ...], original [b, ...]) -> {name: [b]}``: per-image distances to the
  unedited image (:func:`lpips_compare`).

:func:`sweep` is ONE traced program over directions x strengths x samples (rendered and read in
chunks of ``batch`` frames); :func:`summarize` turns its arrays into table rows on the host;
:func:`commutation_gaps` measures A-then-B vs B-then-A for pairs of directions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import parallel
from jaxedit.metrics import attributes as attr_lib
from jaxedit.metrics import directions as dir_lib
from jaxedit.metrics.distributions import FeatureStats, frechet_distance
from jaxedit.metrics.paired import identity_embedding

Array = jax.Array
Render = Callable[[Array], Array]
Readout = Callable[[Array], dict[str, Array]]
Compare = Callable[[Array, Array], dict[str, Array]]


# ------------------------------------------------------------------------------ readouts
def probe_readout(P, pp) -> Readout:
    """The shapes-world probe: ``attrs [b, 8]``, ``probs [b, 3]`` (:func:`attributes.read`) and its
    embedding ``features [b, 256]``."""
    def readout(images):
        out = P(pp, jnp.clip(images, -1, 1))
        a, p = attr_lib.read(out)
        return {"attrs": a, "probs": p, "features": out["features"]}
    return readout


def inception_readout(net, params) -> Readout:
    """FID Inception pool3 features ``[b, 2048]`` (as ``"inception"``; pytorch-fid's resize)."""
    return lambda images: {"inception": net(params, jnp.clip(images, -1, 1))}


def identity_readout(arc, params, crop: str = "face") -> Readout:
    """Unit ArcFace embeddings ``[b, 512]`` of :func:`jaxedit.metrics.paired.identity_input` (as ``"identity"``)."""
    embed = identity_embedding(arc, params, crop)
    return lambda images: {"identity": embed(jnp.clip(images, -1, 1))}


def lpips_compare(lp, params) -> Compare:
    """``{"lpips": [b]}``: LPIPS of each edited image against its unedited one."""
    return lambda edited, original: {"lpips": lp(params, jnp.clip(edited, -1, 1), jnp.clip(original, -1, 1))}


def combine(*readouts: Readout) -> Readout:
    """One readout returning the union of several readouts' dicts."""
    def readout(images):
        out = {}
        for r in readouts:
            out.update(r(images))
        return out
    return readout


# ------------------------------------------------------------------------------ the sweep
def sweep(render: Render, edit, latents: Array, ks: Array, strengths: Array, readout: Readout,
          compare: Compare | None = None, batch: int = 256) -> dict[str, Any]:
    """Every direction ``ks [K]`` at every strength ``strengths [S]`` on every latent ``[B, ...]``.

    -> ``{"original": readout of the unedited images (leaves [B, ...]), "edited": readout (leaves
    [K, S, B, ...]), "compare": compare(edited, unedited) (leaves [K, S, B]), "grid": images
    [K, S, H, W, 3] of latent 0, "grid_original": [H, W, 3]}``. Traceable (call it inside ``jit``);
    frames are rendered and read ``batch`` at a time; with ``compare`` the B unedited images are kept
    (B x H x W x 3 float32: 3 GB for 256 samples at 1024 px).
    """
    K, S, B = ks.shape[0], strengths.shape[0], latents.shape[0]
    moved = jax.vmap(lambda k: jax.vmap(lambda t: edit(latents, k, jnp.full((B,), t)))(strengths))(ks)

    def read_original(x):
        img = render(x)
        return (img if compare is not None else None), readout(img)

    orig_images, original = parallel.chunked_map(read_original, latents, batch)  # images only for compare

    def frame(args):
        x, i = args
        img = render(x)
        out = {"edited": readout(img)}
        if compare is not None:
            out["compare"] = compare(img, orig_images[i])
        return out

    flat = moved.reshape(K * S * B, *latents.shape[1:])
    idx = jnp.tile(jnp.arange(B), K * S)
    res = parallel.chunked_map(frame, (flat, idx), batch)
    res = jax.tree.map(lambda a: a.reshape(K, S, B, *a.shape[1:]), res)
    grid = parallel.chunked_map(render, moved[:, :, 0].reshape(K * S, *latents.shape[1:]), batch)
    return {"original": original, "edited": res["edited"], "compare": res.get("compare", {}),
            "grid": grid.reshape(K, S, *grid.shape[1:]), "grid_original": render(latents[:1])[0]}


def _frechet(a: np.ndarray, b: np.ndarray) -> float:
    sa, sb = FeatureStats().update(a), FeatureStats().update(b)
    return frechet_distance(*sa.result(), *sb.result())


def frechet_floor(features: np.ndarray, other: np.ndarray) -> float:
    """Frechet distance between two independent unedited sample sets ``[B, D]``: the value an edit that
    changes nothing would get at this sample size (the estimator's bias)."""
    return _frechet(np.asarray(features), np.asarray(other))


def summarize(out: dict[str, Any], strengths: np.ndarray, targets: list[str | None] | None = None,
              fd_key: str = "features") -> list[dict[str, Any]]:
    """Host-side table rows of one :func:`sweep` (``strengths [S]`` ascending) -> per direction a dict:
    ``target`` (the given attribute, else the continuous one with the largest |mean slope|), ``slope [A + 1]`` per unit
    strength (:func:`directions.direction_factor_matrix`), and per strength ``t``: ``change`` (signed mean
    and std of every :data:`attributes.CHANGE_NAMES` column; angles unwrapped from the unedited image),
    ``abs_change`` (mean |change|), ``target_change``, ``largest_other`` (name, mean |change|, among the
    continuous attributes),
    ``probe_distance`` (L2 of the probe embeddings to the unedited image), ``identity`` (cosine),
    ``lpips`` (and any other compare key) and ``frechet`` (edited vs unedited samples in ``fd_key``
    features)."""
    strengths = np.asarray(strengths, np.float64)
    orig = jax.tree.map(np.asarray, out["original"])
    edited = jax.tree.map(np.asarray, out["edited"])
    compared = jax.tree.map(np.asarray, out["compare"])
    K, S = np.shape(out["grid"])[:2]
    has_attrs = "attrs" in edited
    if has_attrs:
        zero = int(np.searchsorted(strengths, 0.0))  # the unedited column sits before the first t >= 0
        ins = lambda e, o: np.concatenate([e[:, :zero], np.broadcast_to(o[None, None], (K, 1, *o.shape)),
                                           e[:, zero:]], 1)
        a, p = ins(edited["attrs"], orig["attrs"]), ins(edited["probs"], orig["probs"])
        grid_t = np.insert(strengths, zero, 0.0)
        changes_full = np.asarray(dir_lib.changes_along(a, p, zero))  # [K, S + 1, B, A + 1]
        slopes = dir_lib.direction_factor_matrix(changes_full, grid_t)
        changes = np.delete(changes_full, zero, axis=1)  # [K, S, B, A + 1]
    rows = []
    names = attr_lib.CHANGE_NAMES
    for k in range(K):
        row: dict[str, Any] = {"strengths": strengths.tolist(), "per_strength": []}
        if has_attrs:
            given = (targets or [None] * K)[k]
            # not given: the continuous attribute with the largest mean signed slope (a consistent move; the
            # spot readings' noise gives large mean |slope| with no direction)
            target = given if given is not None else names[int(np.argmax(np.abs(slopes["slope"][k, :-1])))]
            row.update(target=target, target_given=given is not None, slope=slopes["slope"][k].tolist())
            ti = names.index(target)
        for s in range(S):
            cell: dict[str, Any] = {"t": float(strengths[s])}
            if has_attrs:
                c = changes[k, s]  # [B, A + 1]
                mean_abs = np.abs(c).mean(0)
                others = [j for j in range(len(names) - 1) if j != ti]  # continuous ones; shape has its column
                j = max(others, key=lambda j: mean_abs[j])
                cell.update(change=dict(zip(names, np.stack([c.mean(0), c.std(0)], 1).tolist())),
                            abs_change=dict(zip(names, mean_abs.tolist())),
                            target_change={"mean": float(c[:, ti].mean()), "std": float(c[:, ti].std())},
                            largest_other={"name": names[j], "mean_abs": float(mean_abs[j])})
            if "features" in edited:
                d = np.linalg.norm(edited["features"][k, s].astype(np.float64) - orig["features"], axis=-1)
                cell["probe_distance"] = {"mean": float(d.mean()), "std": float(d.std())}
            if "identity" in edited:
                cos = np.sum(edited["identity"][k, s].astype(np.float64) * orig["identity"], -1)
                cell["identity"] = {"mean": float(cos.mean()), "std": float(cos.std())}
            for name, v in compared.items():
                cell[name] = {"mean": float(v[k, s].mean()), "std": float(v[k, s].std())}
            if fd_key in edited:
                cell["frechet"] = _frechet(edited[fd_key][k, s], orig[fd_key])
            row["per_strength"].append(cell)
        rows.append(row)
    return rows


# ------------------------------------------------------------------------------ commutativity
def commutation_gaps(render: Render, readout: Readout | None, edit_a, edit_b, latents: Array, ka: Array,
                     kb: Array, t: float, batch: int = 256) -> dict[str, Array]:
    """A then B vs B then A for pairs ``(ka[p], kb[p])`` (``[P]`` each), both at strength ``t``.

    -> ``latent [P]`` (mean over latents of the L2 norm of the latent difference), ``image [P]`` (mean
    |pixel difference| in [-1, 1] units), and with an attribute readout ``attrs [P, A + 1]`` (mean
    |attribute gap|, :func:`attributes.change`). Traceable; the 2 P B frames are rendered in chunks.
    """
    B, P = latents.shape[0], ka.shape[0]
    tt = jnp.full((B,), t, jnp.float32)
    ab = jax.vmap(lambda a, b: edit_b(edit_a(latents, a, tt), b, tt))(ka, kb)
    ba = jax.vmap(lambda a, b: edit_a(edit_b(latents, b, tt), a, tt))(ka, kb)
    lat_gap = jnp.mean(jnp.sqrt(jnp.sum(jnp.square(ab - ba).reshape(P, B, -1), -1)), 1)
    both = jnp.concatenate([ab, ba]).reshape(2 * P * B, *latents.shape[1:])

    def frame(x):
        img = render(x)
        out = {"image": img}
        if readout is not None:
            r = readout(img)
            if "attrs" in r:
                out.update(attrs=r["attrs"], probs=r["probs"])
        return out

    res = parallel.chunked_map(frame, both, batch)
    res = jax.tree.map(lambda a: a.reshape(2, P, B, *a.shape[1:]), res)
    img_gap = jnp.mean(jnp.abs(res["image"][0] - res["image"][1]), axis=(1, 2, 3, 4))
    out = {"latent": lat_gap, "image": img_gap}
    if "attrs" in res:
        gap = attr_lib.change((res["attrs"][0], res["probs"][0]), (res["attrs"][1], res["probs"][1]))
        out["attrs"] = jnp.mean(jnp.abs(gap), 1)
    return out


# ------------------------------------------------------------------------------ the table
def _fmt(v: float, signed: bool = False) -> str:
    if v != 0 and abs(v) < 1e-3:
        return f"{v:+.1e}" if signed else f"{v:.1e}"
    return f"{v:+.3f}" if signed else f"{v:.3f}"


def markdown(report: dict[str, Any]) -> str:
    """The report (as :func:`jaxedit.cli.evaluate.run_eval_edits` writes ``report.json``) as a markdown table."""
    intro = f"{report['num']} samples (seed {report['seed']}, psi {report['psi']}); "
    if report.get("probe"):
        intro += ("changes are the probe's readings of the edited image minus the unedited one (angles in turns, "
                  "position/scale/spot ratio as fractions of their range, shape: total-variation distance of the "
                  "shape probabilities).")
    else:
        intro += ("no attribute reader for this generator (the shapes-world probe reads its own resolution only); "
                  "--lpips, --arcface and --inception add preservation and Frechet columns.")
    if report.get("frechet_floor") is not None:
        intro += (f" Frechet distance in {report['frechet_features']} of the edited vs the unedited samples (two "
                  f"independent unedited sets of this size: {_fmt(report['frechet_floor'])}, what an edit that just "
                  "drew other samples would score).")
    if "probe_distance_between_samples" in report:
        intro += (" Probe embedding dist: L2 distance of the probe's embeddings of the edited and unedited "
                  f"image (two different samples: {_fmt(report['probe_distance_between_samples'])}).")
    lines = [f"# Edit report: {report['generator']}", "", intro, ""]
    cols = ["direction", "t", "target", "target change", "largest other |change|"]
    has = lambda key: any(key in c for d in report["directions"] for c in d["per_strength"])
    extra = [(key, label) for key, label in (("probe_distance", "probe embedding dist"), ("lpips", "LPIPS"),
                                             ("identity", "identity"), ("frechet", "Frechet")) if has(key)]
    names = list(attr_lib.CHANGE_NAMES)
    show_attrs = has("abs_change")
    header = cols + [label for _, label in extra] + ([f"\\|d {n}\\|" for n in names] if show_attrs else [])
    lines += ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * 3 + ["---:"] * (len(header) - 3)) + "|"]
    for d in report["directions"]:
        for c in d["per_strength"]:
            cells = [d["name"], f"{c['t']:+g}"]
            if "target_change" in c:
                tc, lo = c["target_change"], c["largest_other"]
                cells += [d["target"] + ("" if d["target_given"] else " (largest)"),
                          f"{_fmt(tc['mean'], True)} +- {_fmt(tc['std'])}", f"{_fmt(lo['mean_abs'])} ({lo['name']})"]
            else:
                cells += ["-", "-", "-"]
            for key, _ in extra:
                v = c.get(key)
                cells.append("-" if v is None else _fmt(v if isinstance(v, float) else v["mean"]))
            if show_attrs:
                cells += [_fmt(c["abs_change"][n]) for n in names]
            lines.append("| " + " | ".join(cells) + " |")
    if report.get("commutativity"):
        how = (f"Both edits at t = {report['commutativity_t']:g}; latent: mean L2 norm of the difference of the "
               "two latents; image: mean |pixel difference| ([-1, 1] units); attributes: mean |gap| over the "
               "probe's attributes. Linear directions in W commute exactly (w + a + b), and so do one flow's "
               "axes (f^-1(f(w) + a + b)): their gaps are float rounding. Vector fields (warped) do not, nor do "
               "edits of two different families: there the gap measures how much the order matters.")
        lines += ["", "## Commutativity (A then B vs B then A)", "", how, "",
                  "| A | B | latent | image | attributes |", "|---|---|---:|---:|---:|"]
        for c in report["commutativity"]:
            attrs = "-" if c.get("attributes") is None else _fmt(float(np.mean(list(c["attributes"].values()))))
            lines.append(f"| {c['a']} | {c['b']} | {_fmt(c['latent'])} | {_fmt(c['image'])} | {attrs} |")
    lines += ["", f"Computed in {report['seconds']:.1f} s."]
    return "\n".join(lines) + "\n"
