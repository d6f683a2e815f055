"""``jaxedit eval fid A B``: FID (and KID) between two image sets, torch-free, streamed batch by batch.

A set is a folder of image files, a generator checkpoint (``--num`` samples), or (B only) an ``.npz`` of
precomputed statistics (``mu``, ``sigma``: pytorch-fid's ``--save-stats`` format, or ``--save-stats`` here)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import jax
import numpy as np

from jaxedit import models
from jaxedit.cli.common import model_path
from jaxedit.config import enable_compilation_cache
from jaxedit.errors import UsageError
from jaxedit.io import checkpoint, files
from jaxedit.io import images as imio
from jaxedit.metrics import fid
from jaxedit.models import inception

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def _image_files(folder: Path) -> list[Path]:
    paths = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    if len(paths) < 2:
        raise UsageError(f"{folder}: an image set needs at least 2 image files ({', '.join(IMAGE_SUFFIXES)})")
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
