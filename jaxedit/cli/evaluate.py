"""``jaxedit eval fid A B``: FID (and KID) between two image sets, torch-free, streamed batch by batch;
``jaxedit eval lpips A B`` / ``eval identity A B``: paired LPIPS / ArcFace identity of two sets with the same
file names (or two ``.npz`` image arrays); ``jaxedit eval edits``: the edit report.

For FID a set is a folder of image files, a generator checkpoint (``--num`` samples), or (B only) an ``.npz`` of
precomputed statistics (``mu``, ``sigma``: pytorch-fid's ``--save-stats`` format, or ``--save-stats`` here)."""

from __future__ import annotations

import functools
import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import edits, models, parallel
from jaxedit.cli.common import (
    DEFAULT_GENERATOR,
    check_outputs,
    load_arrays,
    load_generator,
    model_path,
    strength_labels,
)
from jaxedit.config import enable_compilation_cache
from jaxedit.edits import fit
from jaxedit.errors import UsageError
from jaxedit.io import checkpoint, files
from jaxedit.io import images as imio
from jaxedit.metrics import attributes as attr_lib
from jaxedit.metrics import edit_report, fid, paired
from jaxedit.models import inception, irse
from jaxedit.models import lpips as lpips_lib
from jaxedit.models import probe as probe_lib

DEFAULT_PROBE = "shapes32-probe"


def _image_files(folder: Path) -> list[Path]:
    paths = imio.image_files(folder)
    if len(paths) < 2:
        raise UsageError(f"{folder}: an image set needs at least 2 image files ({', '.join(imio.IMAGE_SUFFIXES)})")
    if len(paths) > imio.MAX_IMAGE_FILES:
        raise UsageError(f"{folder}: {len(paths)} images; at most {imio.MAX_IMAGE_FILES} per set")
    return paths


def _folder_batches(paths: list[Path], batch: int, side: int, signals) -> Iterator[np.ndarray]:
    for s in range(0, len(paths), batch):
        signals.check()
        yield imio.load_images(paths[s:s + batch], side)[0]


def _generator_batches(G, gp, num: int, batch: int, psi: float, seed: int, signals) -> Iterator[np.ndarray]:
    run = jax.jit(lambda k: G(gp, jax.random.normal(k, (batch, G.cfg.z_dim)), psi=psi))
    for i, s in enumerate(range(0, num, batch)):
        signals.check()
        yield np.asarray(run(jax.random.fold_in(jax.random.key(seed), i)))[:num - s]


def _source(spec: str, args, second: bool):
    """-> ('images', batches, description) or ('stats', (mu, sigma), description)."""
    path = Path(spec)
    if path.is_file() and path.suffix == ".npz":
        if not second:
            raise UsageError(f"{spec}: precomputed statistics can only be the second set (B)")
        return "stats", fid.load_stats(path), f"statistics {path.name}"
    if not path.is_dir():
        raise UsageError(f"{spec}: not an image folder, a generator checkpoint or an .npz of statistics")
    if (path / checkpoint.META_FILE).is_file():
        G, gp = models.load_generator(path)
        return ("images", _generator_batches(G, gp, args.num, args.batch_size, args.psi, args.seed + second,
                                             args.signals), f"{args.num} samples of {path.name} (psi {args.psi})")
    paths = _image_files(path)
    side = min(imio.image_size(paths[0]))  # the set is read at its first image's side (others cropped/resized)
    return "images", _folder_batches(paths, args.batch_size, side, args.signals), f"{len(paths)} images in {path}"


def run_eval_fid(args) -> None:
    enable_compilation_cache()
    if args.kid and args.kid_subset_size < 2:
        raise UsageError(f"--kid-subset-size {args.kid_subset_size}: must be >= 2")
    check_outputs("--save-stats", [args.save_stats], args.force)
    check_outputs("--json", [args.json], args.force)
    net, params = models.load(model_path(args.inception, args.inception))
    if not isinstance(net, inception.FIDInception):
        raise UsageError(f"--inception {args.inception}: not a fid-inception checkpoint "
                         "(jaxedit convert fid-inception pt_inception-2015-12-05-6726825d.pth CKPT)")
    kind_a, a, desc_a = _source(args.a, args, second=False)
    kind_b, b, desc_b = _source(args.b, args, second=True)
    if args.kid and kind_b == "stats":
        raise UsageError("--kid needs the features of both sets: B must be images or a generator, not statistics")
    t0 = time.perf_counter()
    kw = {"kid_subsets": args.kid_subsets, "kid_subset_size": args.kid_subset_size,
          "key": jax.random.key(args.seed)} if args.kid else {}
    stats_a, feats_a = fid.statistics(net, params, a, keep_features=args.kid)
    if args.save_stats:
        fid.save_stats(args.save_stats, stats_a)
    out = fid.compare(net, params, stats_a, feats_a, b, **kw)
    dt = time.perf_counter() - t0
    args.signals.check()
    line = f"FID {out['fid']:.4f}"
    if args.kid:
        line += f"   KID {out['kid_mean']:.6f} +- {out['kid_std']:.6f}"
    print(f"{line}   (A: {desc_a}; B: {desc_b}; {dt:.1f} s)")
    if args.json:
        files.write_json(args.json, {**{k: (float(v) if isinstance(v, (float, np.floating)) else v)
                                        for k, v in out.items()}, "a": desc_a, "b": desc_b, "seconds": dt})


# ------------------------------------------------------------------------------ paired sets: LPIPS, identity
def _paired_set(spec: str, flag: str):
    """A paired set: ``('folder', [paths])`` (sorted image files) or ``('array', images [N, H, W, 3] in [-1, 1])``
    from an ``.npz`` with one array or an ``images`` array (uint8, or float in [-1, 1])."""
    path = Path(spec)
    if path.is_dir():
        paths = imio.image_files(path)
        if not paths:
            raise UsageError(f"{flag} {spec}: no image files ({', '.join(imio.IMAGE_SUFFIXES)})")
        if len(paths) > imio.MAX_IMAGE_FILES:
            raise UsageError(f"{flag} {spec}: {len(paths)} images; at most {imio.MAX_IMAGE_FILES} per set")
        return "folder", paths
    if not (path.is_file() and path.suffix == ".npz"):
        raise UsageError(f"{flag} {spec}: not an image folder or an .npz of images")
    arrays = load_arrays(spec, flag)
    key = "images" if "images" in arrays else (next(iter(arrays)) if len(arrays) == 1 else None)
    if key is None:
        raise UsageError(f"{flag} {spec}: holds {sorted(arrays)[:8]}; expected one array or an 'images' array")
    x = arrays[key]
    if x.ndim != 4 or x.shape[-1] != 3 or len(x) == 0 or x.dtype.kind not in "fu":
        raise UsageError(f"{flag} {spec}: {key!r} is {x.dtype} {list(x.shape)}; expected images [N, H, W, 3] "
                         "(uint8, or float in [-1, 1])")
    if x.dtype == np.uint8:
        return "array", imio.from_uint8(x)
    x = x.astype(np.float32)
    if not np.all(np.isfinite(x)) or x.min() < -1.001 or x.max() > 1.001:
        raise UsageError(f"{flag} {spec}: float images must be finite and in [-1, 1] (got {x.min():.3g}..{x.max():.3g})")
    return "array", x


def _pair_names(a, b, spec_a: str, spec_b: str) -> list[str]:
    """One name per pair; folders pair by file name (a missing or extra file is one error line)."""
    (ka, va), (kb, vb) = a, b
    if ka == kb == "folder":
        names_a, names_b = [p.name for p in va], [p.name for p in vb]
        if names_a != names_b:
            only_a, only_b = sorted(set(names_a) - set(names_b)), sorted(set(names_b) - set(names_a))
            where, name = (spec_b, only_a[0]) if only_a else (spec_a, only_b[0])
            raise UsageError(f"{where}: has no {name} ({len(names_a)} images in {spec_a}, {len(names_b)} in "
                             f"{spec_b}; paired sets need the same file names)")
        return names_a
    if len(va) != len(vb):
        raise UsageError(f"{spec_a} has {len(va)} images and {spec_b} {len(vb)}: paired sets need equally many")
    return [p.name for p in va] if ka == "folder" else ([p.name for p in vb] if kb == "folder"
                                                         else [f"image {i}" for i in range(len(va))])


def _pair_batches(a, b, batch: int, side: int, signals):
    for s in range(0, len(a[1]), batch):
        signals.check()
        yield tuple(imio.load_images(v[s:s + batch], side)[0] if k == "folder" else v[s:s + batch]
                    for k, v in (a, b))


def _side(a, b) -> int:
    """The side images are compared at: an array's, else the first image file's shorter side."""
    for kind, v in (a, b):
        if kind == "array":
            if v.shape[1] != v.shape[2]:
                raise UsageError(f"image arrays must be square, got {list(v.shape)}")
            return v.shape[1]
    return min(imio.image_size(a[1][0]))


def _run_paired(args, metric: str, make_score, what: str) -> None:
    """Sets and flags are checked first, then ``make_score()`` loads the network."""
    check_outputs("--json", [args.json], args.force)
    a, b = _paired_set(args.a, "A"), _paired_set(args.b, "B")
    names = _pair_names(a, b, args.a, args.b)
    side = _side(a, b)
    for kind, v in (a, b):
        if kind == "array" and v.shape[1:3] != (side, side):
            raise UsageError(f"image arrays of {list(v.shape)} and {side} px images cannot be paired")
    score = make_score()
    t0 = time.perf_counter()
    values = paired.paired_scores(score, _pair_batches(a, b, args.batch_size, side, args.signals), what=metric)
    dt = time.perf_counter() - t0
    args.signals.check()
    s = paired.summary(values)
    print(f"{metric} {s['mean']:.4f} +- {s['std']:.4f} (mean +- std over {s['n']} pairs; {what}; {side} px; {dt:.1f} s)")
    if args.json:
        files.write_json(args.json, {"metric": metric, **s, "a": args.a, "b": args.b, "side": side, "how": what,
                                     "seconds": dt, "per_image": dict(zip(names, values.tolist()))})


def _load_kind(spec: str, flag: str, cls, hint: str):
    """``(model, params)`` of checkpoint ``spec``, which must hold a ``cls`` (``hint``: how to make one)."""
    net, params = models.load(model_path(spec, spec))
    if not isinstance(net, cls):
        raise UsageError(f"{flag} {spec}: holds a {type(net).__name__}, not {hint}")
    return net, params


def run_eval_lpips(args) -> None:
    enable_compilation_cache()

    def make():
        return paired.lpips_score(*_load_kind(args.lpips, "--lpips", lpips_lib.LPIPS,
                                              "an lpips checkpoint (jaxedit convert lpips VGG LIN CKPT)"))

    _run_paired(args, "LPIPS", make, "LPIPS v0.1 VGG, spatial mean")


def run_eval_identity(args) -> None:
    enable_compilation_cache()

    def make():
        arc, ap = _load_kind(args.arcface, "--arcface", irse.ArcFace,
                             "an arcface checkpoint (jaxedit convert arcface model_ir_se50.pth CKPT)")
        return paired.identity_score(arc, ap, args.crop)

    how = ("ArcFace cosine, pSp/e4e face crop [35:223, 32:220] of 256 px" if args.crop == "face"
           else "ArcFace cosine, whole image")
    _run_paired(args, "identity", make, how)


# ------------------------------------------------------------------------------ the edit report
REPORT_FILES = ("report.md", "report.json", "grid.png")
MAX_K = 8  # directions per file when --k is not given


def _parse_k(text: str | None, num: int, path: str) -> list[int]:
    if text is None:
        return list(range(min(num, MAX_K)))
    ks: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        lo, _, hi = part.partition("-")
        if not lo.isdigit() or (hi and not hi.isdigit()) or int(hi or lo) < int(lo):
            raise UsageError(f"--k {text[:40]!r}: expected direction indices like 0-3 or 0,2")
        ks += range(int(lo), int(hi or lo) + 1)
    have = sorted({k for k in ks if k < num})  # one --k for all files: each keeps the indices it has
    if not have:
        raise UsageError(f"--k {text[:40]}: {path} has {num} direction{'s' if num > 1 else ''} (0-{num - 1})")
    return have


def _target(prov: dict, ed) -> str | None:
    """The attribute a fitted direction was made to move (``jaxedit fit interfacegan --attribute``), if recorded."""
    how = prov.get("method")  # a dict from `jaxedit fit`, a string from `jaxedit discover`
    if isinstance(how, dict) and how.get("name") == "interfacegan" and how.get("attribute"):
        return attr_lib.attribute_of(str(how["attribute"]))
    return None


def _load_optional(spec: str | None, flag: str, cls, hint: str):
    return (None, None) if not spec else _load_kind(spec, flag, cls, hint)


def run_eval_edits(args) -> None:
    t_start = time.perf_counter()
    strengths = np.unique(np.asarray(args.t, np.float32))
    if not np.any(strengths != 0):
        raise UsageError("--t: give at least one non-zero strength (the unedited image is always included)")
    if args.num < 2:
        raise UsageError(f"--num {args.num}: the Frechet distance needs at least 2 samples")
    out = Path(args.out)
    check_outputs("--out", [out / n for n in REPORT_FILES], args.force, folder=out)
    for d in args.directions:
        if not Path(d).exists():
            raise UsageError(f"--directions {d}: no such file or directory")
    G, gp = load_generator(args.ckpt, unconditional="eval edits")
    gen = fit.generator_identity(model_path(args.ckpt, DEFAULT_GENERATOR), gp)
    eds = []
    for d in args.directions:
        ed = edits.load(d)
        prov = edits.read_provenance(d) if Path(d).is_dir() else {}
        fit.check_provenance(prov, gen["name"], gen["sha256"], ed.space)
        ed.check(G)
        eds.append((d, ed, _parse_k(args.k, ed.num_directions, d), _target(prov, ed)))

    probe_path = model_path(args.probe, DEFAULT_PROBE)
    P, pp = probe_lib.load(probe_path)
    if P.cfg.resolution != G.cfg.img_resolution:
        if args.probe:
            raise UsageError(f"--probe {args.probe}: reads {P.cfg.resolution} px images, the generator makes "
                             f"{G.cfg.img_resolution} px")
        P = pp = None  # another world: no attributes; the Frechet distance needs --inception
    lp, lpp = _load_optional(args.lpips, "--lpips", lpips_lib.LPIPS, "an lpips checkpoint")
    arc, ap = _load_optional(args.arcface, "--arcface", irse.ArcFace, "an arcface checkpoint")
    net, netp = _load_optional(args.inception, "--inception", inception.FIDInception, "a fid-inception checkpoint")
    fd_key = "inception" if net is not None else ("features" if P is not None else None)
    mparams = {"probe": pp, "lpips": lpp, "arcface": ap, "inception": netp}

    def readout_of(mp):
        parts = []
        if P is not None:
            parts.append(edit_report.probe_readout(P, mp["probe"]))
        if net is not None:
            parts.append(edit_report.inception_readout(net, mp["inception"]))
        if arc is not None:
            parts.append(edit_report.identity_readout(arc, mp["arcface"], args.crop))
        return edit_report.combine(*parts)

    def compare_of(mp):
        return None if lp is None else edit_report.lpips_compare(lp, mp["lpips"])

    psi, batch = args.psi, args.batch_size
    key = jax.random.key(args.seed)
    z = jax.random.normal(key, (args.num, G.cfg.z_dim))
    z_other = jax.random.normal(jax.random.fold_in(key, 1), (args.num, G.cfg.z_dim))

    @jax.jit
    def run(ed, z, ks, ts, gp, mp):
        render = lambda x: ed.render(G, gp, x, psi)
        return edit_report.sweep(render, functools.partial(edits.apply, ed), ed.prepare(G, gp, z, psi), ks, ts,
                                 readout_of(mp), compare_of(mp), batch)

    t0 = time.perf_counter()
    rows, grids, labels = [], [], []
    for path, ed, ks, target in eds:
        args.signals.check()
        t_file = time.perf_counter()
        res = run(ed, z, jnp.asarray(ks, jnp.int32), jnp.asarray(strengths), gp, mparams)
        res = jax.device_get(res)
        summary = edit_report.summarize(res, strengths, [target] * len(ks), fd_key or "")
        name = Path(path).name
        for k, row in zip(ks, summary):
            row.update(name=name if ed.num_directions == 1 else f"{name}[{k}]", file=path, k=k, family=ed.family,
                       space=ed.space)
            labels.append(row["name"])
        rows += summary
        zero = int(np.searchsorted(strengths, 0.0))
        grids.append(np.insert(np.asarray(res["grid"]), zero, np.asarray(res["grid_original"]), axis=1))
        print(f"  {name}: {len(ks)} direction(s) x {len(strengths)} strengths x {args.num} samples in "
              f"{time.perf_counter() - t_file:.1f} s", flush=True)

    extra = {}
    if fd_key or P is not None:
        @jax.jit
        def unedited(z, gp, mp):
            imgs = parallel.chunked_map(lambda zb: G(gp, zb, psi=psi), z, batch)
            return parallel.chunked_map(readout_of(mp), imgs, batch)

        a, b = jax.device_get((unedited(z, gp, mparams), unedited(z_other, gp, mparams)))
        if fd_key:
            extra["frechet_floor"] = edit_report.frechet_floor(a[fd_key], b[fd_key])
        if P is not None:
            extra["probe_distance_between_samples"] = float(np.mean(np.linalg.norm(
                a["features"].astype(np.float64) - b["features"], axis=-1)))

    pairs = _commutativity(args, G, gp, eds, z, readout_of, mparams, float(np.max(np.abs(strengths))))
    dt = time.perf_counter() - t0
    report = {"generator": gen["name"], "generator_sha256": gen["sha256"], "num": args.num, "seed": args.seed,
              "psi": psi, "strengths": strengths.tolist(), "probe": probe_path.name if P is not None else None,
              "lpips": args.lpips, "arcface": args.arcface, "identity_crop": args.crop if arc is not None else None,
              "inception": args.inception,
              "frechet_features": {"inception": "FID Inception pool3", "features": "probe embeddings",
                                   None: "none"}[fd_key],
              "frechet_floor": extra.get("frechet_floor"), **extra,
              "directions": rows, "commutativity": pairs,
              "commutativity_t": float(np.max(np.abs(strengths))), "seconds": dt,
              "seconds_total": time.perf_counter() - t_start}
    args.signals.check()
    out.mkdir(parents=True, exist_ok=True)
    text = edit_report.markdown(report)
    files.write_text(out / "report.md", text)
    files.write_json(out / "report.json", report)
    grid = np.concatenate(grids)  # [rows, S + 1, H, W, 3]
    cols = strength_labels(np.insert(strengths, int(np.searchsorted(strengths, 0.0)), 0.0))
    imio.save_grid(grid.reshape(-1, *grid.shape[2:]), out / "grid.png", cols=grid.shape[1], row_labels=labels,
                   col_labels=cols)
    print(text, end="")
    print(f"edit report: {len(rows)} directions x {len(strengths)} strengths x {args.num} samples in {dt:.1f} s "
          f"({time.perf_counter() - t_start:.1f} s with loading) -> {out}/report.md, report.json, grid.png")


def _commutativity(args, G, gp, eds, z, readout_of, mparams, t: float) -> list[dict]:
    """A-then-B vs B-then-A of the selected directions: up to ``--pairs`` pairs within each file (the
    family's own commutativity) and between each file and the next (in one latent space); one program per
    pair of files."""
    groups: dict[tuple[int, int], list] = {}
    for i, (_, ed, ks, _) in enumerate(eds):
        groups[(i, i)] = list(itertools.combinations(ks, 2))[:args.pairs]
        if i + 1 < len(eds) and eds[i + 1][1].space == ed.space:
            groups[(i, i + 1)] = [(a, b) for a in ks for b in eds[i + 1][2]][:args.pairs]
    groups = {g: v for g, v in groups.items() if v}
    psi, batch = args.psi, args.batch_size

    @jax.jit
    def run(ed_a, ed_b, z, ka, kb, gp, mp):
        return edit_report.commutation_gaps(lambda x: ed_a.render(G, gp, x, psi), readout_of(mp),
                                            functools.partial(edits.apply, ed_a), functools.partial(edits.apply, ed_b),
                                            ed_a.prepare(G, gp, z, psi), ka, kb, t, batch)

    out = []
    for (fa, fb), ks in groups.items():
        args.signals.check()
        (pa, ea, _, _), (pb, eb, _, _) = eds[fa], eds[fb]
        ka, kb = (jnp.asarray([p[i] for p in ks], jnp.int32) for i in (0, 1))
        res = jax.device_get(run(ea, eb, z, ka, kb, gp, mparams))
        for p, (a, b) in enumerate(ks):
            name = lambda path, ed, k: Path(path).name + ("" if ed.num_directions == 1 else f"[{k}]")
            out.append({"a": name(pa, ea, a), "b": name(pb, eb, b), "latent": float(res["latent"][p]),
                        "image": float(res["image"][p]),
                        "attributes": (dict(zip(attr_lib.CHANGE_NAMES, np.asarray(res["attrs"][p]).tolist()))
                                       if "attrs" in res else None)})
    return out
