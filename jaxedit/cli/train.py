"""``jaxedit train-gan``, ``train-probe``, ``train-clip`` and ``discover``: the trainers' commands.

Every trainer is a run folder (:mod:`jaxedit.train.runs`): the same command resumes. A flag left
out keeps the trainer's default for a new run and the stored value when resuming; a flag that
changes a stored setting other than the run's length or intervals is an error naming the field."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from jaxedit import models
from jaxedit.cli.common import check_positive, model_path
from jaxedit.config import enable_compilation_cache
from jaxedit.errors import UsageError
from jaxedit.train import clip as train_clip
from jaxedit.train import discovery, gan, runs
from jaxedit.train import encoder as train_encoder
from jaxedit.train import l2sae as train_l2sae
from jaxedit.train import probe as train_probe
from jaxedit.train import segmenter as train_segmenter

DEFAULT_GAN_CONFIG = "shapes32-stylegan2"


def _given(**flags) -> dict:
    """The flags the user gave (not None), for ``dataclasses.replace`` on a trainer config."""
    return {k: v for k, v in flags.items() if v is not None}


def run_train_gan(args) -> None:
    enable_compilation_cache()
    for flag, v in (("--batch-size", args.batch_size), ("--kimg", args.kimg), ("--steps", args.steps)):
        check_positive(flag, v)
    run_dir = Path(args.run_dir)
    if args.export_only:
        print(f"exported {gan.export(run_dir, args.export, force=args.force)}")
        return
    if args.config is not None:
        base = gan.load_config(args.config)
    else:
        base = runs.read_config(run_dir, gan.GANConfig.from_dict) or gan.load_config(DEFAULT_GAN_CONFIG)
    cfg = gan.apply_overrides(base.replace(**_given(batch=args.batch_size, seed=args.seed, kimg=args.kimg)),
                              args.set or [])
    gan.train(cfg, run_dir, stop_at=args.steps, export_to=args.export, force_export=args.force)


def run_train_probe(args) -> None:
    enable_compilation_cache()
    for flag, v in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--lr", args.lr),
                    ("--resolution", args.resolution)):
        check_positive(flag, v)
    run_dir = Path(args.run_dir) if args.run_dir else runs.default_run_dir(args.dst)
    base = runs.read_config(run_dir, train_probe.ProbeTrainConfig.from_dict) or train_probe.ProbeTrainConfig()
    given = _given(steps=args.steps, batch=args.batch_size, lr=args.lr, seed=args.seed)
    if args.resolution is not None:
        given.update(probe=dataclasses.replace(base.probe, resolution=args.resolution),
                     data=dataclasses.replace(base.data, resolution=args.resolution))
    _, report = train_probe.train(dataclasses.replace(base, **given), args.dst, run_dir=run_dir, force=args.force)
    print(json.dumps(report, indent=2))


def run_train_encoder(args) -> None:
    enable_compilation_cache()
    for flag, v in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--lr", args.lr)):
        check_positive(flag, v)
    run_dir = Path(args.run_dir) if args.run_dir else runs.default_run_dir(args.dst)
    base = runs.read_config(run_dir, train_encoder.EncoderTrainConfig.from_dict) or train_encoder.EncoderTrainConfig()
    given = _given(steps=args.steps, batch=args.batch_size, lr=args.lr, seed=args.seed, generator=args.generator)
    if args.generator and runs.read_config(run_dir, train_encoder.EncoderTrainConfig.from_dict) is None:
        G, _ = models.load_generator(model_path(args.generator, args.generator))  # size the encoder for its W+
        if G.cfg.img_resolution != base.data.resolution:
            raise UsageError(f"--generator {args.generator}: makes {G.cfg.img_resolution} px images; the encoder "
                             f"trainer reads {base.data.resolution} px shapes renders")
        given["encoder"] = train_encoder.encoder_config(G.cfg.num_ws, G.cfg.w_dim)
    _, report = train_encoder.train(dataclasses.replace(base, **given), args.dst, run_dir=run_dir, force=args.force)
    print(json.dumps(report, indent=2))


def run_train_segmenter(args) -> None:
    enable_compilation_cache()
    run_dir = Path(args.run_dir) if args.run_dir else runs.default_run_dir(args.dst)
    base = (runs.read_config(run_dir, train_segmenter.SegmenterTrainConfig.from_dict)
            or train_segmenter.SegmenterTrainConfig())
    cfg = dataclasses.replace(base, **_given(annotated=args.annotated, steps=args.steps, members=args.members,
                                             seed=args.seed))
    _, report = train_segmenter.train(cfg, args.dst, run_dir=run_dir, force=args.force)
    print(json.dumps(report, indent=2))


def run_train_l2sae(args) -> None:
    enable_compilation_cache()
    run_dir = Path(args.run_dir) if args.run_dir else runs.default_run_dir(args.dst)
    base = runs.read_config(run_dir, train_l2sae.L2SAETrainConfig.from_dict) or train_l2sae.L2SAETrainConfig()
    cfg = dataclasses.replace(base, **_given(steps=args.steps, batch=args.batch_size, seed=args.seed))
    _, report = train_l2sae.train(cfg, args.dst, run_dir=run_dir, force=args.force)
    print(json.dumps(report, indent=2))


def run_train_clip(args) -> None:
    enable_compilation_cache()
    for flag, v in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--lr", args.lr)):
        check_positive(flag, v)
    if args.partial_captions is not None and not 0 <= args.partial_captions <= 1:
        raise UsageError(f"--partial-captions {args.partial_captions}: must be in [0, 1]")
    run_dir = Path(args.run_dir) if args.run_dir else runs.default_run_dir(args.dst)
    base = runs.read_config(run_dir, train_clip.CLIPTrainConfig.from_dict) or train_clip.CLIPTrainConfig()
    cfg = dataclasses.replace(base, **_given(steps=args.steps, batch=args.batch_size, lr=args.lr, seed=args.seed,
                                             partial_captions=args.partial_captions))
    _, report = train_clip.train(cfg, args.dst, run_dir=run_dir, force=args.force)
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


AT_CHANCE = 2.0  # discover warns when the final RCA is below this multiple of chance (1 / directions)


def run_discover(args) -> None:
    enable_compilation_cache()
    for flag, v in (("--steps", args.steps), ("--batch-size", args.batch_size), ("--directions", args.directions)):
        check_positive(flag, v)
    run_dir = Path(args.run_dir)
    eps = _eps_range(args.eps)
    base = runs.read_config(run_dir, discovery.DiscoveryConfig.from_dict)
    if base is None:
        if not args.method:
            raise UsageError(f"{run_dir} holds no discovery run: give --method to start one")
        base = discovery.DiscoveryConfig(method=args.method)
    cfg = dataclasses.replace(base, **_given(method=args.method, generator=args.generator, space=args.space,
                                             num_directions=args.directions, steps=args.steps,
                                             batch=args.batch_size, eps_range=eps, seed=args.seed, lr=args.lr))
    result = discovery.train(cfg, run_dir)
    print(json.dumps(result, indent=1))
    if "rca" in result and result["rca"] < AT_CHANCE * result["chance"]:
        print(f"warning: RCA {result['rca']:.3f} is near chance ({result['chance']:.3f}): the reconstructor cannot "
              f"tell the {cfg.num_directions} directions apart, so they are not yet distinct edits; train longer "
              "(--steps extends this run) or with fewer directions", file=sys.stderr)
