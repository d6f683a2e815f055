"""``jaxedit fit interfacegan`` and ``jaxedit fit ganspace``: fit directions for a generator and write
them as an editor file (:func:`jaxedit.edits.save`) that records where they belong.

interfacegan: the latents of the samples ``--seeds`` (or seeds ``0 .. --num - 1``; z as NVIDIA's
``generate.py``) are scored by the shapes-world probe (``--attribute`` names one of its factor
columns) or by ``--scores FILE`` (any classifier's scores of those samples' images, in seed
order: ``.npy [N]`` for the attribute, or ``.npz`` with one ``[N]`` array per name, which
``--attribute`` and ``--condition`` pick); then InterFaceGAN's top / bottom ``--ratio`` + linear SVM
(:func:`jaxedit.edits.fit.interfacegan`). ganspace: exact PCA of ``--num`` W samples.

Provenance written with the editor: ``generator`` {name, sha256 of its parameters}, ``space``,
``layers`` ([start, end) of W+, or null in Z), ``strength_range`` [lo, hi] (:mod:`jaxedit.edits.fit`:
the mean latent moved by up to 3 standard deviations of the samples' projections; ``jaxedit edit``
defaults to it) and ``method``: how it was made (``name`` interfacegan / ganspace, samples, seeds,
psi, ratio, SVM C, accuracies, ...).
"""

from __future__ import annotations

from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import __version__, edits
from jaxedit.cli.common import DEFAULT_GENERATOR, load_generator, model_path, parse_seeds, seed_latents
from jaxedit.data.shapes import FACTOR_NAMES
from jaxedit.edits import fit, registry
from jaxedit.errors import InputError, UsageError
from jaxedit.io import arrays, checkpoint, files
from jaxedit.models import probe as probe_lib

DEFAULT_PROBE = "shapes32-probe"
DEFAULT_NUM = {"interfacegan": 20_000, "ganspace": 1_000_000}


def _layers(text: str | None, space: str, num_ws: int) -> list[int] | None:
    """``--layers START:END`` -> ``[start, end]`` (W+ rows, end exclusive); W default: every layer; Z: None."""
    if space == "z":
        if text:
            raise UsageError("--layers: layer ranges apply to --space w only")
        return None
    if not text:
        return [0, num_ws]
    try:
        s, e = (int(v) for v in text.split(":"))
    except ValueError:
        raise UsageError(f"--layers {text!r}: expected START:END (W+ layers, end exclusive), e.g. 0:4") from None
    if not 0 <= s < e <= num_ws:
        raise UsageError(f"--layers {text}: need 0 <= START < END <= {num_ws} (this generator's W+ layers)")
    return [s, e]


def _seeds(args) -> tuple[list[int], str]:
    """The fitting samples' seeds and how to write them down (``--seeds`` or ``0 .. --num - 1``)."""
    if args.seeds and args.num is not None:
        raise UsageError("--seeds and --num both choose the samples; give one")
    if args.seeds:
        return parse_seeds(args.seeds), args.seeds
    num = DEFAULT_NUM["interfacegan"] if args.num is None else args.num
    return list(range(num)), f"0-{num - 1}"


def _read_scores(path: str, names: list[str], n: int) -> tuple[np.ndarray, str]:
    """``[N, len(names)]`` float32 scores from ``--scores`` (``.npy [N]``: the attribute only; ``.npz``:
    one ``[N]`` array per name) and the file's sha256."""
    loaded = arrays.load(path, "--scores")
    if "" in loaded:
        if len(names) > 1:
            raise UsageError(f"--condition needs named scores: --scores {path} is one array; use an .npz with one "
                             "[N] array per attribute")
        cols = [loaded[""]]
    else:
        missing = [k for k in names if k not in loaded]
        if missing:
            raise InputError(f"--scores {path}: no array {missing[0]!r} (it holds {', '.join(loaded)})")
        cols = [loaded[k] for k in names]
    for k, a in zip(names, cols):
        if a.shape != (n,) or not np.issubdtype(a.dtype, np.number) or not np.all(np.isfinite(a)):
            raise InputError(f"--scores {path}: {k!r} must be {n} finite numbers (one per sample of --seeds/--num, "
                             f"in order), got shape {list(a.shape)} {a.dtype}")
    return np.stack(cols, 1).astype(np.float32), files.sha256(path)


def run_fit_interfacegan(args) -> None:
    """Flags are typed at parse time (counts, positive, finite); the rest is checked here, before any work."""
    if args.ratio > 0.5:
        raise UsageError(f"--ratio {args.ratio}: must be in (0, 0.5] (InterFaceGAN: 0.02 = top and bottom 2 %)")
    names = [args.attribute, *args.condition]
    if len(set(names)) < len(names):
        raise UsageError(f"--attribute / --condition name {', '.join(names)}: each must differ")
    if not args.scores:
        bad = [k for k in names if k not in FACTOR_NAMES]
        if bad:
            raise UsageError(f"--attribute / --condition {bad[0]!r}: the probe scores {', '.join(FACTOR_NAMES)} "
                             "(or pass --scores FILE)")
    seeds, seeds_text = _seeds(args)
    per_class = min(int(len(seeds) * args.ratio), len(seeds) // 2)
    if per_class - int(per_class * 0.7 + 1e-9) < 1 or int(per_class * 0.7 + 1e-9) < 1:
        raise UsageError(f"--ratio {args.ratio} of {len(seeds)} samples keeps {per_class} per class; the 70/30 split "
                         "needs at least 2 (more samples or a larger --ratio)")
    scores = sha = None
    if args.scores:
        scores, sha = _read_scores(args.scores, names, len(seeds))
    G, gp = load_generator(args.ckpt, unconditional="fit")
    layers = _layers(args.layers, args.space, G.cfg.num_ws)
    out = checkpoint.check_writable(args.out, args.force, registry.KIND)
    editor_layers = tuple(layers) if args.layers else None
    if scores is None:
        probe_path = model_path(args.probe, DEFAULT_PROBE)
        P, pp = probe_lib.load(probe_path)
        if P.cfg.resolution != G.cfg.img_resolution:
            raise UsageError(f"--probe {probe_path.name} reads {P.cfg.resolution} px images but the generator makes "
                             f"{G.cfg.img_resolution} px ones; score them yourself and pass --scores FILE")

    gen = fit.generator_identity(model_path(args.ckpt, DEFAULT_GENERATOR), gp)
    z = seed_latents(seeds, G.cfg.z_dim)
    if scores is None:
        lat, f = fit.sample_and_score(G, gp, z, fit.probe_factors(P), pp, space=args.space, psi=args.psi,
                                      batch=args.batch_size)
        scores = np.asarray(f)[:, [FACTOR_NAMES.index(k) for k in names]]
        scorer = {"source": "probe", "name": probe_path.name, "sha256": fit.params_sha256(pp)}
    else:
        lat = fit.sample_latents(G, gp, z, space=args.space, psi=args.psi, batch=args.batch_size)
        scorer = {"source": "file", "name": Path(args.scores).name, "sha256": sha}
    r = fit.interfacegan(lat, scores[:, 0], key=jax.random.key(args.split_seed),
                         condition_scores=scores[:, 1:] if args.condition else None, ratio=args.ratio, C=args.svm_c)
    absolute = args.space == "z"
    lo, hi = fit.strength_range(r.projections, absolute=absolute)
    proj = np.asarray(r.projections, np.float64)
    how = {"name": "interfacegan", "attribute": args.attribute, "conditions": list(args.condition),
           "scores": scorer, "samples": len(seeds), "seeds": seeds_text, "psi": args.psi, "ratio": args.ratio,
           "per_class": per_class, "val_split": 0.3, "split_seed": args.split_seed, "svm_C": args.svm_c,
           "val_accuracy": float(r.val_accuracy), "train_accuracy": float(r.train_accuracy),
           "condition_val_accuracy": dict(zip(args.condition, np.asarray(r.condition_val_accuracy).tolist())),
           "cos_to_primal": float(r.normal @ r.primal),
           "projection_mean": float(proj.mean()), "projection_std": float(proj.std()),
           "strength_rule": ("absolute distance: mean +- 3 sd of the samples' projections" if absolute
                             else "shift: +- 3 sd of the samples' projections"),
           "jaxedit_version": __version__}
    prov = {"generator": gen, "space": args.space, "layers": layers, "strength_range": [lo, hi], "method": how}
    editor = edits.InterFaceGAN(directions=jnp.asarray(r.normal)[None], space=args.space, layers=editor_layers)
    edits.save(editor, out, provenance=prov, force=args.force)
    cond = f" conditioned off {', '.join(args.condition)}" if args.condition else ""
    print(f"interfacegan {args.attribute}{cond} in {args.space.upper()} of {gen['name']}: {len(seeds)} samples, "
          f"{per_class} per class, SVM validation accuracy {float(r.val_accuracy):.3f}; strengths {lo:.3g}:{hi:.3g} "
          f"-> {out}")


def run_fit_ganspace(args) -> None:
    num = DEFAULT_NUM["ganspace"] if args.num is None else args.num
    G, gp = load_generator(args.ckpt, unconditional="fit")
    if args.components > G.cfg.w_dim:
        raise UsageError(f"--components {args.components}: W has only {G.cfg.w_dim} dimensions")
    if num <= G.cfg.w_dim:
        raise UsageError(f"--num {num}: PCA of {G.cfg.w_dim}-dimensional W needs more samples than dimensions")
    layers = _layers(args.layers, "w", G.cfg.num_ws)
    out = checkpoint.check_writable(args.out, args.force, registry.KIND)
    editor_layers = tuple(layers) if args.layers else None

    gen = fit.generator_identity(model_path(args.ckpt, DEFAULT_GENERATOR), gp)
    batch = min(args.batch_size, num)
    pca = fit.ganspace(G, gp, jax.random.key(args.seed), num=num, components=args.components, psi=args.psi, batch=batch)
    samples = -(-num // batch) * batch
    how = {"name": "ganspace", "samples": samples, "seed": args.seed, "psi": args.psi,
           "components": args.components, "stdev": np.asarray(pca["stdev"]).tolist(),
           "var_ratio": np.asarray(pca["var_ratio"]).tolist(),
           "strength_rule": "strength in standard deviations of the component (lat_stdev): +- 3",
           "jaxedit_version": __version__}
    prov = {"generator": gen, "space": "w", "layers": layers, "strength_range": [-fit.STRENGTH_STD, fit.STRENGTH_STD],
            "method": how}
    editor = edits.GANSpace(comp=pca["comp"], stdev=pca["stdev"], space="w", layers=editor_layers)
    edits.save(editor, out, provenance=prov, force=args.force)
    vr = np.asarray(pca["var_ratio"])
    print(f"ganspace: {args.components} components of {samples} W samples of {gen['name']} (explained variance "
          f"{vr.sum():.3f}; first {np.round(vr[:3], 3).tolist()}) -> {out}")
