"""``jaxedit train-gan``, ``train-probe``, ``train-clip`` and ``discover``: the trainers' commands.

A flag left out keeps the trainer's default for a new run (and the stored value when resuming)."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from jaxedit.cli.common import DEFAULT_GENERATOR, check_positive
from jaxedit.config import enable_compilation_cache
from jaxedit.data import shapes
from jaxedit.errors import UsageError
from jaxedit.models.probe import ProbeConfig
from jaxedit.train import clip as train_clip
from jaxedit.train import discovery
from jaxedit.train import gan
from jaxedit.train import probe as train_probe


def _given(**flags) -> dict:
    """The flags the user gave (not None), for ``dataclasses.replace`` on a trainer config."""
    return {k: v for k, v in flags.items() if v is not None}


def run_train_gan(args) -> None:
    enable_compilation_cache()
    check_positive("--batch-size", args.batch_size)
    check_positive("--kimg", args.kimg)
    check_positive("--steps", args.steps)
    run_dir = Path(args.run_dir)
    if args.export_only:
        print(f"exported {gan.export(run_dir, args.export, force=args.force)}")
        return
    resuming = (run_dir / gan.CONFIG_FILE).is_file()
    if args.config is None and not resuming:
        args.config = "shapes32-stylegan2"
    cfg = None if args.config is None else gan.load_config(args.config)
    if cfg is None and (args.set or args.batch_size or args.seed is not None):
        cfg = gan.load_run_config(run_dir)
    if cfg is not None:
        cfg = gan.apply_overrides(cfg.replace(**_given(batch=args.batch_size, seed=args.seed)), args.set or [])
    gan.train(cfg, run_dir, kimg=args.kimg, steps=args.steps, export_to=args.export, force_export=args.force)


def run_train_probe(args) -> None:
    enable_compilation_cache()
    for flag, v in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--lr", args.lr),
                    ("--resolution", args.resolution)):
        check_positive(flag, v)
    cfg = dataclasses.replace(train_probe.ProbeTrainConfig(), **_given(steps=args.steps, batch=args.batch_size,
                                                                       lr=args.lr), seed=args.seed,
                              probe=ProbeConfig(resolution=args.resolution),
                              data=shapes.ShapesConfig(resolution=args.resolution))
    _, report = train_probe.train(cfg, args.dst, args.force)
    print(json.dumps(report, indent=2))


def run_train_clip(args) -> None:
    enable_compilation_cache()
    for flag, v in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--lr", args.lr)):
        check_positive(flag, v)
    if args.partial_captions is not None and not 0 <= args.partial_captions <= 1:
        raise UsageError(f"--partial-captions {args.partial_captions}: must be in [0, 1]")
    cfg = dataclasses.replace(train_clip.CLIPTrainConfig(), seed=args.seed,
                              **_given(steps=args.steps, batch=args.batch_size, lr=args.lr,
                                       partial_captions=args.partial_captions))
    _, report = train_clip.train(cfg, args.dst, args.force, run_dir=args.run)
    print(json.dumps(report, indent=2))


def _eps_range(text: str | None) -> tuple[float, float] | None:
    if text is None:
        return None
    try:
        lo, hi = (float(v) for v in text.split(":"))
    except ValueError:
        raise UsageError(f"--eps {text!r}: expected MIN:MAX, e.g. 0.5:3") from None
    if not 0 <= lo < hi < float("inf"):
        raise UsageError(f"--eps {text!r}: need 0 <= MIN < MAX, both finite")
    return lo, hi


def run_discover(args) -> None:
    enable_compilation_cache()
    for flag, v in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--directions", args.directions)):
        check_positive(flag, v)
    run = Path(args.run)
    eps = _eps_range(args.eps)
    cfg = None
    if args.method:
        cfg = dataclasses.replace(discovery.DiscoveryConfig(), method=args.method,
                                  **_given(generator=args.generator or DEFAULT_GENERATOR, space=args.space,
                                           num_directions=args.directions, steps=args.steps,
                                           batch=args.batch_size, eps_range=eps, seed=args.seed))
    elif (run / discovery.CONFIG_FILE).is_file():
        cfg = dataclasses.replace(discovery.load_run_config(run), **_given(steps=args.steps))
    out = discovery.train(cfg, run)
    print(json.dumps(out, indent=1))
