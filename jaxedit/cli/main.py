"""The ``jaxedit`` command line: the parser of every command, dispatch, and the error policy.

This module imports nothing heavy, so ``jaxedit --help`` answers at once; a command's module
(:mod:`jaxedit.cli.convert`, ``generate``, ``edit``, ``text_edit``, ``train``) is imported only
when that command runs. The same flag means the same thing in every command (``--out``,
``--seeds``, ``--psi``, ``--batch-size``, ``--force``).

Errors: a :class:`~jaxedit.errors.UsageError` (a flag) is one line and exit 2; any other
:class:`~jaxedit.errors.JaxeditError` (a file, key, value or shape) is one line and exit 1;
Ctrl-C (SIGINT) exits 130 and SIGTERM 143, at the command's next safe point (never in the middle
of a write; a compiled program that is running finishes first). Anything else is a bug: its traceback is shown, with a line asking to report it.
Compiled programs are cached in ``$JAXEDIT_CACHE`` (default ``~/.cache/jaxedit/xla``).
"""

from __future__ import annotations

import argparse
import importlib
import math
import sys
import traceback

from jaxedit import __version__
from jaxedit.errors import JaxeditError, UsageError
from jaxedit.io.signals import DeferredSignals

DEFAULT_GENERATOR = "shapes32-stylegan2"
DEFAULT_CLIP = "shapes-clip"
EDIT_METHODS = ("linear", "interfacegan", "ganspace", "warped", "curvilinear")
TEXT_METHODS = ("optimize", "global", "shift", "mapper")
DISCOVERY_METHODS = ("linear", "warped", "curvilinear")
SHAPES_EDITS = ("spot-grow", "spot-shrink", "body-grow", "spot-remove")  # == jaxedit.edits.editgan.SHAPES_EDITS (a test)
PREPROCESS_MODES = ("clip", "styleclip", "none")  # == jaxedit.models.clip.PREPROCESS_MODES (a test checks)
CONVERT_KINDS = ("stylegan2", "stylegan3", "clip", "mapper", "lpips", "e4e", "arcface", "fid-inception",
                 "pixel-classifier")
FORWARD_CHECK_MAX_RESOLUTION = 256
HELP_STRENGTHS = ("strengths (write --strengths=-3:3:7 when it starts with a minus): START:STOP:NUM (inclusive "
                  "linspace) or a comma list; per method: linear = step along the unit direction, interfacegan (z) = "
                  "signed distance to the boundary, ganspace = standard deviations, warped = path length (steps of "
                  "--eps), curvilinear = shift along the flow axis")


# ------------------------------------------------------------------ flag types (checked at parse time)
def _number(text: str, kind: type, lo: float | None, what: str):
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}") from None
    if not math.isfinite(v) or (lo is not None and v < lo):
        raise argparse.ArgumentTypeError(f"{text!r} is not {what}")
    return v


def finite(text: str) -> float:
    return _number(text, float, None, "a finite number")


def nonnegative(text: str) -> float:
    return _number(text, float, 0.0, "a finite number >= 0")


def positive(text: str) -> float:
    v = _number(text, float, 0.0, "a finite number > 0")
    if v == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number > 0")
    return v


def count(text: str) -> int:
    """A positive integer (sizes, steps)."""
    return _number(text, int, 1, "an integer >= 1")


def index(text: str) -> int:
    """A non-negative integer (seeds, indices)."""
    return _number(text, int, 0, "an integer >= 0")


def _command(p: argparse.ArgumentParser, target: str) -> None:
    """Run ``module:function`` of :mod:`jaxedit.cli` for this subcommand (imported only then)."""
    p.set_defaults(run=target)


def _generator_arg(p) -> None:
    p.add_argument("ckpt", nargs="?", help=f"jaxedit generator checkpoint, StyleGAN2 or StyleGAN3 (default: the embedded {DEFAULT_GENERATOR})")


def _seeds_arg(p, default: str) -> None:
    p.add_argument("--seeds", default=default, help="seeds, e.g. 0-15 or 1,5,9-12 (z as NVIDIA's generate.py)")


def _run_args(p) -> None:
    """What every resumable trainer takes: --seed, --run (the run folder), --force."""
    p.add_argument("--seed", type=index, help="random seed (default 0)")
    p.add_argument("--run", dest="run_dir", help="run folder (config, checkpoints, log; default DST.run); rerun to "
                                                "resume")
    _force_arg(p, "an existing jaxedit checkpoint at DST")


def _force_arg(p, what: str) -> None:
    p.add_argument("--force", action="store_true", help=f"replace {what} if jaxedit wrote it")


# ----------------------------------------------------------------------------------- commands
def _add_convert(sub) -> None:
    c = sub.add_parser("convert", help="convert a PyTorch checkpoint to a jaxedit checkpoint (no torch needed)")
    c.add_argument("kind", choices=CONVERT_KINDS,
                   help="what the file holds: stylegan2 (NVIDIA .pkl, TF .pkl or rosinality .pt), stylegan3 (NVIDIA "
                        ".pkl, configs T and R), clip (OpenAI TorchScript or state-dict .pt), mapper (a StyleCLIP "
                        "latent mapper .pt), lpips (torchvision VGG16 .pth, then the LPIPS v0.1 lin .pth: "
                        "convert lpips VGG LIN DST), e4e (encoder4editing .pt), arcface (IR-SE model_ir_se50.pth), "
                        "fid-inception (pytorch-fid's pt_inception-2015-12-05-6726825d.pth), pixel-classifier "
                        "(EditGAN / DatasetGAN ensemble members model_{i}.pth)")
    c.add_argument("paths", nargs="+", metavar="SRC [SRC ...] DST",
                   help="source file(s) then the destination checkpoint directory (lpips: VGG LIN DST; "
                        "pixel-classifier: one file per ensemble member, then DST)")
    c.add_argument("--key", default=None, help="network inside the file (NVIDIA: G_ema (default), G, D; rosinality: "
                                               "g_ema, g, d; NVIDIA TF: Gs (default), G, D)")
    c.add_argument("--vocab", help="clip: the BPE merges file (default: bpe_simple_vocab_16e6.txt.gz next to SRC)")
    c.add_argument("--prompt", help="mapper: the text it was trained for (default: the file's opts['description'])")
    _force_arg(c, "an existing jaxedit checkpoint at DST")
    c.add_argument("--replace-kind", action="store_true",
                   help="with --force: replace a checkpoint of another kind at DST (its jaxedit files only)")
    c.add_argument("--check-forward", action="store_true",
                   help=f"also compare a forward pass after reloading above {FORWARD_CHECK_MAX_RESOLUTION} px "
                        "(always done at or below; costs about 4x the source file in memory at 1024 px)")
    _command(c, "convert:run_convert")


def _add_generate(sub) -> None:
    i = sub.add_parser("info", help="describe a jaxedit checkpoint, or a source .pkl/.pt file (nothing run or converted)")
    i.add_argument("ckpt")
    i.add_argument("--json", action="store_true", help="print the whole jaxedit.json")
    _command(i, "generate:run_info")

    s = sub.add_parser("sample", help="sample images from a generator into a PNG grid")
    _generator_arg(s)
    _seeds_arg(s, "0-15")
    s.add_argument("--z", help="z vectors from a .npy file [N, z_dim] instead of seeds")
    s.add_argument("--c", help="labels from a .npy file [N, c_dim] (conditional generators)")
    s.add_argument("--class", dest="class_idx", type=index, help="class index for every sample (conditional)")
    s.add_argument("--psi", type=finite, default=1.0, help="truncation psi (default 1: none)")
    s.add_argument("--cutoff", type=count, help="truncate only the first N ws")
    s.add_argument("--noise", choices=("const", "random", "none"), default="const")
    s.add_argument("--noise-seed", type=index, default=0, help="seed of random noise (per image: seed ^ image seed)")
    s.add_argument("--batch-size", type=count, default=32, help="images per device batch chunk")
    s.add_argument("--cols", type=count, help="grid columns")
    s.add_argument("--out", help="PNG grid to write")
    s.add_argument("--save-images", help="write raw float32 NHWC images (unclipped) to this .npy")
    s.add_argument("--save-w", help="write ws [N, num_ws, w_dim] to this .npy")
    _force_arg(s, "--out / --save-images / --save-w")
    _command(s, "generate:run_sample")

    d = sub.add_parser("demo", help="write a look at the default model (samples, truncation, style mixing) as PNGs")
    _generator_arg(d)
    d.add_argument("--out", default="jaxedit-demo", help="output folder")
    d.add_argument("--seed", type=index, default=0)
    _force_arg(d, "the PNGs in --out")
    _command(d, "generate:run_demo")


def _edit_args(p) -> None:
    _generator_arg(p)
    p.add_argument("--method", choices=EDIT_METHODS,
                   help="direction family (default: detected from the file; needed for a .npy that could be either "
                        "interfacegan (one boundary) or linear)")
    p.add_argument("--directions", required=True,
                   help="direction file (.npy linear/InterFaceGAN, GANSpace .npz, WarpedGANSpace support_sets.pt, "
                        "DeCurvEd flow .pt) or a checkpoint written by `jaxedit discover`")
    p.add_argument("--strengths", help=HELP_STRENGTHS + "; default: the editor file's recorded strength_range in "
                                                       "7 steps, else -3:3:7")
    _seeds_arg(p, "0-7")
    p.add_argument("--latents", help="edit these W+ latents instead of --seeds: jaxedit invert's latents.npz (its "
                                     "ws) or a .npy [N, num_ws, w_dim]; directions must live in W")
    p.add_argument("--space", choices=("z", "w"), help="latent space the directions live in (default per method)")
    p.add_argument("--layers", help="W+ layer range START:END to edit (space w), e.g. 0:4")
    p.add_argument("--eps", type=positive, help="warped: unit step length (default: the file's, else 0.2)")
    p.add_argument("--psi", type=finite, default=1.0, help="truncation psi")
    p.add_argument("--batch-size", type=count, default=64, help="frames rendered per chunk")
    p.add_argument("--out", required=True, help="edit: the PNG grid; traverse: a folder (one PNG per seed)")
    _force_arg(p, "the PNGs at --out")


def _add_edit(sub) -> None:
    e = sub.add_parser("edit", help="edit seeds along one direction: PNG grid, rows = seeds, columns = strengths")
    _edit_args(e)
    e.add_argument("--direction", type=index, default=0, help="direction / path / axis index k")
    _command(e, "edit:run_edit")
    t = sub.add_parser("traverse", help="traverse every direction: one PNG per seed, rows = directions")
    _edit_args(t)
    t.add_argument("--limit", type=count, help="only the first N directions")
    _command(t, "edit:run_traverse")


def _add_invert(sub) -> None:
    p = sub.add_parser("invert", help="invert image files into the generator's latent space (NVIDIA projector in W "
                                      "or W+, an e4e encoder, or the encoder then the projector)")
    p.add_argument("images", nargs="+", help="image files or folders of them (PNG, JPEG, ...; any size and mode): "
                                             "EXIF-rotated, centre-cropped and resized to the generator's resolution "
                                             "(no face alignment)")
    p.add_argument("--generator", help=f"jaxedit generator checkpoint (default: the embedded {DEFAULT_GENERATOR})")
    p.add_argument("--out", required=True, help="output folder: latents.npz (names, ws, noise), recon/*.png, "
                                                "report.json (PSNR, distance per image)")
    p.add_argument("--method", choices=("project", "encoder", "hybrid"), default="project",
                   help="projector from w_avg (NVIDIA), the encoder's codes alone, or the projector from them")
    p.add_argument("--space", choices=("w", "w+"), default="w", help="optimize one W latent (NVIDIA) or one per layer")
    p.add_argument("--steps", type=count, help="projector steps (default 1000)")
    p.add_argument("--loss", choices=("lpips", "probe", "pixel"),
                   help="image distance: LPIPS (needs --lpips; the projector's default), the shapes-world probe's "
                        "embedding, or pixel MSE (--method encoder's default, for the report)")
    p.add_argument("--pixel-weight", type=nonnegative, default=0.0,
                   help="add this weight x pixel MSE to the --loss distance (pSp/e4e's L2 term; default 0: NVIDIA)")
    p.add_argument("--lpips", help="jaxedit LPIPS checkpoint (jaxedit convert lpips VGG LIN CKPT)")
    p.add_argument("--probe", help="probe checkpoint for --loss probe (default: the embedded shapes32-probe)")
    p.add_argument("--encoder", help="e4e encoder checkpoint or default model name (shapes32-encoder) for "
                                     "--method encoder / hybrid")
    p.add_argument("--seed", type=index, default=0, help="seed of the noise maps and latent jitter (per image)")
    p.add_argument("--batch-size", type=count, default=8, help="images per compiled program (and per resumable "
                                                                "unit: an interrupted run resumes at its batch)")
    _force_arg(p, "latents.npz, report.json and recon/ in --out (and an unfinished run's .invert-partial/)")
    _command(p, "invert:run_invert")


def _add_segment(sub) -> None:
    p = sub.add_parser("segment", help="label maps of seeds or inverted latents by EditGAN's segmentation branch "
                                       "(NAME.png + NAME.labels.png, a palette PNG of class indices)")
    _generator_arg(p)
    p.add_argument("--segmenter", help="pixel-classifier checkpoint (default: the embedded shapes32-segmenter)")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--seeds", help="seeds, e.g. 0-7 (default 0-7)")
    start.add_argument("--latents", help="W+ latents instead of --seeds: jaxedit invert's latents.npz or a .npy")
    p.add_argument("--psi", type=finite, help="truncation psi of the seeds (default 0.7)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--batch-size", type=count, default=16, help="images per compiled program")
    _force_arg(p, "the NAME.png / NAME.labels.png files in --out")
    _command(p, "segment:run_segment")

    e = sub.add_parser("seg-edit", help="EditGAN: edit W+ latents toward edited label maps (or a named shapes-world "
                                        "edit); writes before/after images and label maps, latents.npz, the editing "
                                        "vectors")
    _generator_arg(e)
    e.add_argument("--latents", required=True, help="W+ latents: jaxedit invert's latents.npz (or seg-edit's), or "
                                                    "a .npy [N, num_ws, w_dim]")
    target = e.add_mutually_exclusive_group(required=True)
    target.add_argument("--target-labels", help="folder with NAME.labels.png per latent (jaxedit segment's files, "
                                                "repainted: pixel value = class)")
    target.add_argument("--shapes-edit", choices=SHAPES_EDITS,
                        help="a named edit of the shapes world's label maps")
    e.add_argument("--segmenter", help="pixel-classifier checkpoint (default: the embedded shapes32-segmenter)")
    e.add_argument("--encoder", help="e4e encoder for EditGAN's consistency term MSE(w, E(G(w))) (e.g. "
                                     "shapes32-encoder)")
    e.add_argument("--lpips", help="LPIPS checkpoint for the perceptual term outside the region (default: MSE only)")
    e.add_argument("--steps", type=count, default=30, help="Adam steps (default 30, the released tool's)")
    e.add_argument("--lr", type=positive, default=0.02, help="Adam learning rate (default 0.02)")
    e.add_argument("--keep-weight", type=nonnegative, default=0.0,
                   help="MSE weight on region pixels whose label stays (not in EditGAN; keeps their colour)")
    e.add_argument("--out", required=True, help="output folder")
    e.add_argument("--batch-size", type=count, default=16, help="images per compiled program")
    _force_arg(e, "the files seg-edit writes in --out")
    _command(e, "segment:run_seg_edit")


def _add_local_style(sub) -> None:
    p = sub.add_parser("local-style", help="Latents2Semantics: change one region's style of images in one forward "
                                           "pass (style noise or a donor's style); grid + edited images")
    p.add_argument("images", nargs="*", help="image files or folders (centre-cropped and resized to the model's "
                                             "resolution)")
    p.add_argument("--renders", type=count, help="instead of files: this many fresh shapes renders (--seed)")
    p.add_argument("--model", help="l2sae checkpoint (default: the embedded shapes32-l2sae)")
    p.add_argument("--region", required=True, help="the region to edit (shapes32-l2sae: background, body, spot)")
    p.add_argument("--noise", type=positive, help="style noise sigma, in units of the spread of real images' styles "
                                              "(1: about as far as two images' styles differ)")
    p.add_argument("--samples", type=count, help="noise draws per image (default 4)")
    p.add_argument("--swap-from", help="a donor image: the region takes its style")
    p.add_argument("--soft", action="store_true", help="alpha-blend with the soft mask (default: hard mask, pixels "
                                                       "outside the region unchanged exactly)")
    p.add_argument("--seed", type=index, default=0, help="seed of the renders and the noise draws")
    p.add_argument("--out", required=True, help="output folder")
    _force_arg(p, "grid.png and NAME-K.png in --out")
    _command(p, "local_style:run_local_style")


def _add_batch(sub) -> None:
    p = sub.add_parser("batch", help="the batch editing engine: a job file's chain of edits over many seeds, "
                                     "latents or images, sharded, exactly-once after a crash (rerun the same "
                                     "command)")
    p.add_argument("job", help="job JSON file (see jaxedit.batch)")
    p.add_argument("--out", required=True, help="output folder: images/, shards/, records/, manifest/, job.json")
    p.add_argument("--process-count", type=count, default=1, help="processes sharing the job (shard s -> process "
                                                                  "s %% count)")
    p.add_argument("--process-index", type=index, default=0, help="this process's index")
    p.add_argument("--num-processes", type=count, help="start this many local processes (joined through "
                                                       "jax.distributed on a free loopback port) and wait for them")
    p.add_argument("--coordinator", help="HOST:PORT of process 0's jax.distributed coordinator, the same on every "
                                         "process (default: $JAX_COORDINATOR_ADDRESS; none: processes share only "
                                         "--out)")
    p.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32",
                   help="synthesis compute dtype (mapping and edits stay float32); part of the job: a rerun must "
                        "use the same (default float32)")
    _command(p, "batch:run_batch")


def _add_eval(sub) -> None:
    ev = sub.add_parser("eval", help="evaluation metrics")
    esub = ev.add_subparsers(dest="metric", required=True)
    f = esub.add_parser("fid", help="FID (and KID) between two image sets, streamed; torch-free")
    f.add_argument("a", help="set A: an image folder or a generator checkpoint (--num samples)")
    f.add_argument("b", help="set B: an image folder, a generator checkpoint, or an .npz of statistics (mu, sigma)")
    f.add_argument("--inception", required=True, help="fid-inception checkpoint (jaxedit convert fid-inception ...)")
    f.add_argument("--num", type=count, default=10_000, help="samples drawn from a generator set (default 10000)")
    f.add_argument("--psi", type=finite, default=1.0, help="truncation of generator samples")
    f.add_argument("--seed", type=index, default=0, help="seed of generator samples and KID subsets")
    f.add_argument("--batch-size", type=count, default=32, help="images per compiled batch")
    f.add_argument("--kid", action="store_true", help="also KID (unbiased MMD^2, cubic kernel) with its std")
    f.add_argument("--kid-subsets", type=count, default=100)
    f.add_argument("--kid-subset-size", type=count, default=1000)
    f.add_argument("--save-stats", help="write set A's statistics (mu, sigma) to this .npz")
    _force_arg(f, "--save-stats / --json")
    f.add_argument("--json", help="write the result as JSON")
    _command(f, "evaluate:run_eval_fid")
    for name, flag, helptext in (("lpips", "--lpips", "lpips checkpoint (jaxedit convert lpips VGG LIN CKPT)"),
                                 ("identity", "--arcface", "arcface checkpoint (jaxedit convert arcface "
                                                           "model_ir_se50.pth CKPT)")):
        m = esub.add_parser(name, help=f"paired {'LPIPS distance' if name == 'lpips' else 'ArcFace identity'} of "
                                       "image i of A and image i of B, streamed; mean, std (per image in --json)")
        m.add_argument("a", help="set A: an image folder or an .npz of images [N, H, W, 3]")
        m.add_argument("b", help="set B: a folder with the same file names, or an .npz of as many images")
        m.add_argument(flag, required=True, help=helptext)
        if name == "identity":
            m.add_argument("--crop", choices=("face", "none"), default="face",
                           help="face: pSp/e4e's crop [35:223, 32:220] of the 256 px aligned face (default); none: "
                                "the whole image")
        m.add_argument("--batch-size", type=count, default=16, help="pairs per compiled batch")
        m.add_argument("--json", help="write mean, std and every pair's value as JSON")
        _force_arg(m, "--json")
        _command(m, f"evaluate:run_eval_{name}")
    e = esub.add_parser("edits", help="the edit report: per direction and strength, the change of every attribute, "
                                      "preservation, Frechet distance to unedited samples, commutativity; "
                                      "REPORT/report.md, report.json, grid.png")
    e.add_argument("ckpt", nargs="?", help="generator checkpoint (default: shapes32-stylegan2)")
    e.add_argument("--directions", nargs="+", required=True, help="direction files (any family jaxedit edit reads)")
    e.add_argument("--out", required=True, help="report folder")
    e.add_argument("--t", type=finite, nargs="+", default=[-2.0, -1.0, 1.0, 2.0],
                   help="strengths (default -2 -1 1 2; write --t=-2 or --t -2 -1 1 2)")
    e.add_argument("--k", help="directions of each file, e.g. 0-3 or 0,2 (indices a file lacks are skipped; "
                                "default: the first 8)")
    e.add_argument("--num", type=count, default=256, help="generator samples (default 256)")
    e.add_argument("--seed", type=index, default=0, help="seed of the samples")
    e.add_argument("--psi", type=finite, default=1.0, help="truncation of the samples")
    e.add_argument("--probe", help="shapes-world probe (default: shapes32-probe) for attributes and features")
    e.add_argument("--lpips", help="lpips checkpoint: LPIPS of edited vs unedited")
    e.add_argument("--arcface", help="arcface checkpoint: identity of edited vs unedited")
    e.add_argument("--crop", choices=("face", "none"), default="face", help="identity input crop (as eval identity)")
    e.add_argument("--inception", help="fid-inception checkpoint: Frechet distance in pool3 features (default: "
                                       "the probe's features)")
    e.add_argument("--pairs", type=index, default=3, help="commutativity: at most this many direction pairs within "
                                                         "each file and between consecutive files (default 3; 0: none)")
    e.add_argument("--batch-size", type=count, default=256, help="frames per compiled chunk")
    e.add_argument("--force", action="store_true", help="replace an earlier report's files in --out")
    _command(e, "evaluate:run_eval_edits")


def _add_text_edit(sub) -> None:
    p = sub.add_parser("text-edit", help="text-guided edits (StyleCLIP optimization / global directions / mapper, "
                                         "CLIP-guided layer shift) of seeds or inverted latents: PNG grid, several "
                                         "prompts in one program")
    _generator_arg(p)
    p.add_argument("--prompt", action="append", default=[],
                   help="target text; repeat for several prompts (all run in one program)")
    p.add_argument("--method", choices=TEXT_METHODS, default="optimize")
    p.add_argument("--clip", help=f"jaxedit CLIP checkpoint (default: {DEFAULT_CLIP}; `jaxedit convert clip` for "
                                  "OpenAI's)")
    p.add_argument("--preprocess", choices=PREPROCESS_MODES, help="CLIP input preprocessing (default: the "
                                                                   "checkpoint's; StyleCLIP used 'styleclip')")
    p.add_argument("--seeds", help="start from these seeds' z, e.g. 0-15 or 1,5,9-12 (as NVIDIA's generate.py; "
                                   "default 0-7)")
    p.add_argument("--latents", help="start from these W+ latents instead of --seeds: jaxedit invert's latents.npz "
                                     "(its ws; rows named by its names) or a .npy [N, num_ws, w_dim], used as given")
    p.add_argument("--psi", type=finite, default=None, help="truncation psi of the seeds' start latents (default "
                                                            "0.7; not with --latents, except for mapper training)")
    p.add_argument("--steps", type=count, default=None, help="optimizer steps (optimize, shift: 100; mapper: 500)")
    p.add_argument("--lr", type=positive, default=None, help="optimize: peak lr (0.1); shift: Adam lr (0.01); mapper: "
                                                          "Adam lr (0.5)")
    p.add_argument("--l2", type=nonnegative, default=None,
                   help="optimize: weight of |w - w0|^2 (0.008); shift: lambda2 of |x|_2 (0.05); mapper: weight of "
                        "mean (w' - w)^2 (0.8)")
    p.add_argument("--id-lambda", type=nonnegative, default=0.0,
                   help="optimize, mapper: weight of the identity term 1 - cos(F(edited), F(original)) with F the CLIP "
                        "image tower (StyleCLIP: ArcFace for faces, which Python callers pass as `identity`); 0.2 "
                        "nearly halves the collateral change of optimization on the shapes world")
    p.add_argument("--layer", default="b16.conv1", help="shift: the conv layer whose weight is shifted")
    p.add_argument("--strengths", help="global: alphas (default 0:4:5); shift: k (default -3:3:7); "
                                       "START:STOP:NUM or a comma list (write --strengths=-3:3:7)")
    p.add_argument("--neutral", default="a shape", help="global: the neutral text the direction starts from")
    p.add_argument("--template", action="append", help="global: prompt template(s) with {} (default '{}')")
    p.add_argument("--beta", type=nonnegative, default=0.1, help="global: channel-relevance threshold")
    p.add_argument("--fs3", help="global: a released fs3.npy (default: computed for this generator and CLIP)")
    p.add_argument("--fs3-images", type=count, default=16, help="global: images per channel for fs3")
    p.add_argument("--stats-samples", type=count, default=20000, help="global: samples for the StyleSpace stats")
    p.add_argument("--stats-seed", type=index, default=5)
    p.add_argument("--batch-size", type=count, default=8, help="mapper: random latents per training step")
    p.add_argument("--train-seed", type=index, default=0, help="mapper: seed of the training latents and init")
    p.add_argument("--mapper", help="mapper: apply the mappers of this checkpoint (--save-mapper or `jaxedit convert "
                                    "mapper`) instead of training; its prompts replace --prompt")
    p.add_argument("--save-mapper", help="mapper: write the trained mappers as a checkpoint directory")
    p.add_argument("--save", help=".npz with the result (optimize, mapper: ws; global: fs3, dt; shift: the shifts x)")
    p.add_argument("--out", required=True, help="PNG grid")
    _force_arg(p, "--out / --save / --save-mapper")
    _command(p, "text_edit:run_text_edit")


def _add_train(sub) -> None:
    g = sub.add_parser(
        "train-gan", help="train a StyleGAN2 (resumable; rerun the same command to resume)",
        description="Train a StyleGAN2 on data rendered on the fly. Rerunning with the same RUN_DIR resumes "
                    "from its last checkpoint (the stored config.json is used; --kimg may extend the run).")
    g.add_argument("run_dir", help="run directory (config.json, checkpoints/, samples/, log.jsonl, G_ema/)")
    g.add_argument("--config", help="preset (tiny, shapes32-stylegan2), path/to/config.py[:arg] or config.json; "
                                    "default: the stored config when resuming, else shapes32-stylegan2")
    g.add_argument("--kimg", type=positive, help="total length of the run in thousands of real images")
    g.add_argument("--steps", type=count, help="end this call at this iteration (not stored; default: at --kimg)")
    g.add_argument("--batch-size", type=count, help="batch size (new runs only)")
    g.add_argument("--seed", type=index, help="random seed (new runs only)")
    g.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="override a config field, e.g. --set r1_gamma=0.2 --set G.z_dim=64 (repeatable)")
    g.add_argument("--export", metavar="DST", help="also write G_ema as a jaxedit checkpoint to DST at the end")
    g.add_argument("--export-only", action="store_true",
                   help="do not train: export G_ema of the latest checkpoint (to --export DST or RUN_DIR/G_ema)")
    _force_arg(g, "an existing jaxedit checkpoint at --export DST")
    _command(g, "train:run_train_gan")

    p = sub.add_parser("train-probe", help="train the shapes-world probe (factors + label map) on fresh renders; "
                                           "resumable")
    p.add_argument("dst", help="checkpoint directory to write")
    p.add_argument("--steps", type=count, help="total training steps (default 4000; a larger value extends a run)")
    p.add_argument("--batch-size", type=count, help="images per step (default 64)")
    p.add_argument("--lr", type=positive, help="Adam peak learning rate (default 2e-3)")
    p.add_argument("--resolution", type=count, help="render and probe resolution (default 32)")
    _run_args(p)
    _command(p, "train:run_train_probe")

    p = sub.add_parser("train-encoder", help="train an e4e-style encoder (W+ codes) for a generator on its samples and "
                                             "fresh shapes renders; resumable")
    p.add_argument("dst", help="encoder checkpoint directory to write")
    p.add_argument("--generator", help="generator checkpoint or default model name (default shapes32-stylegan2)")
    p.add_argument("--steps", type=count, help="total training steps (default 5000; a larger value extends a run)")
    p.add_argument("--batch-size", type=count, help="images per step (default 32)")
    p.add_argument("--lr", type=positive, help="Adam peak learning rate (default 1e-3)")
    _run_args(p)
    _command(p, "train:run_train_encoder")

    p = sub.add_parser("train-segmenter", help="train EditGAN's segmentation branch (pixel-classifier ensemble over "
                                               "generator features) from annotated shapes renders; resumable")
    p.add_argument("dst", help="pixel-classifier checkpoint directory to write")
    p.add_argument("--annotated", type=count, help="annotated renders, inverted into W+ (default 32)")
    p.add_argument("--steps", type=count, help="total training steps (default 2000; a larger value extends a run)")
    p.add_argument("--members", type=count, help="ensemble members (default 10, as EditGAN)")
    _run_args(p)
    _command(p, "train:run_train_segmenter")

    p = sub.add_parser("train-l2sae", help="train a Latents2Semantics structure/style autoencoder on shapes renders; "
                                           "resumable")
    p.add_argument("dst", help="l2sae checkpoint directory to write")
    p.add_argument("--steps", type=count, help="total training steps (default 16000; a larger value extends a run)")
    p.add_argument("--batch-size", type=count, help="render pairs per step (default 16)")
    _run_args(p)
    _command(p, "train:run_train_l2sae")

    c = sub.add_parser("train-clip", help="train the small shapes-world CLIP (BPE merges + ViT/text transformer)")
    c.add_argument("dst", help="checkpoint directory to write")
    c.add_argument("--steps", type=count, help="total training steps (default 3000; a larger value extends a run)")
    c.add_argument("--batch-size", type=count, help="image-caption pairs per step (default 128)")
    c.add_argument("--lr", type=positive, help="AdamW peak learning rate (default 1e-3)")
    c.add_argument("--seed", type=index, help="random seed (default 0)")
    c.add_argument("--partial-captions", type=nonnegative,
                   help="fraction of captions that name a random subset of the factors (short prompts)")
    c.add_argument("--run", dest="run_dir", help="run folder (config, checkpoints, log; default DST.run); rerun to "
                                                "resume")
    _force_arg(c, "an existing jaxedit checkpoint at DST")
    _command(c, "train:run_train_clip")

    d = sub.add_parser("discover", help="discover latent directions (linear / warped / curvilinear) with a "
                                        "reconstructor; resumable")
    d.add_argument("run_dir", metavar="run", help="run folder (config, checkpoints, log); rerun the same command to "
                                                  "resume")
    d.add_argument("--method", choices=DISCOVERY_METHODS, help="needed for a new run")
    d.add_argument("--generator", help=f"generator checkpoint or default model name (default {DEFAULT_GENERATOR})")
    d.add_argument("--space", choices=("z", "w"), help="latent space (default w)")
    d.add_argument("--directions", type=count, help="number of directions K (default 16)")
    d.add_argument("--steps", type=count, help="total training steps (a larger value extends a run)")
    d.add_argument("--batch-size", type=count, help="latents per step")
    d.add_argument("--lr", type=positive, help="Adam learning rate (default 1e-4, the references'; 1e-3 reaches "
                                               "their accuracy in a CPU budget of steps: README)")
    d.add_argument("--eps", help="magnitude range MIN:MAX (default: the method's reference range)")
    d.add_argument("--seed", type=index)
    _command(d, "train:run_discover")


def _add_fit(sub) -> None:
    f = sub.add_parser("fit", help="fit directions for a generator (InterFaceGAN boundary, GANSpace components) and "
                                   "write an editor file that records the generator, space, layers and strength range")
    methods = f.add_subparsers(dest="fit_method", required=True, metavar="METHOD")
    i = methods.add_parser("interfacegan", help="InterFaceGAN: linear SVM between the top / bottom --ratio of the "
                                                "samples' attribute scores")
    _generator_arg(i)
    i.add_argument("--attribute", required=True,
                   help="attribute to edit: a shapes32-probe factor column (x, y, scale, rot_cos, rot_sin, hue_cos, "
                        "hue_sin, bg_cos, bg_sin, spot_hue_cos, spot_hue_sin, spot_ratio), or a name in --scores")
    i.add_argument("--condition", action="append", default=[], metavar="NAME",
                   help="conditional boundary: project off this attribute's boundary (repeatable)")
    i.add_argument("--scores", help="scores of the samples' images by any classifier instead of the probe, in --seeds "
                                    "order: .npy [N] (the attribute) or .npz with one [N] array per attribute name")
    i.add_argument("--probe", help="probe checkpoint scoring the images (default: the embedded shapes32-probe)")
    i.add_argument("--space", choices=("w", "z"), default="w", help="latent space of the boundary (default w)")
    i.add_argument("--layers", help="W+ layers START:END the edit moves (default: all)")
    i.add_argument("--num", type=count, help="samples: seeds 0 .. NUM-1 (default 20000)")
    i.add_argument("--seeds", help="the samples' seeds instead of --num, e.g. 0-9999 (z as NVIDIA's generate.py)")
    i.add_argument("--ratio", type=positive, default=0.02, help="top and bottom fraction kept (InterFaceGAN: 0.02)")
    i.add_argument("--svm-c", type=positive, default=1.0, help="SVM C (sklearn SVC default: 1)")
    i.add_argument("--split-seed", type=index, default=0, help="seed of the 70/30 train / validation split")
    i.add_argument("--psi", type=finite, default=1.0, help="truncation psi of the samples")
    i.add_argument("--batch-size", type=count, default=256, help="images per chunk")
    i.add_argument("--out", required=True, help="editor file (directory) to write")
    _force_arg(i, "an existing editor at --out")
    _command(i, "fit:run_fit_interfacegan")
    g = methods.add_parser("ganspace", help="GANSpace: exact PCA of W samples, with lat_stdev")
    _generator_arg(g)
    g.add_argument("--components", type=count, default=10, help="principal components kept (default 10)")
    g.add_argument("--num", type=count, help="W samples (default 1000000, rounded up to whole batches)")
    g.add_argument("--seed", type=index, default=0, help="seed of the samples' z")
    g.add_argument("--layers", help="W+ layers START:END the edit moves (default: all)")
    g.add_argument("--psi", type=finite, default=1.0, help="truncation psi of the samples")
    g.add_argument("--batch-size", type=count, default=10_000, help="samples per chunk")
    g.add_argument("--out", required=True, help="editor file (directory) to write")
    _force_arg(g, "an existing editor at --out")
    _command(g, "fit:run_fit_ganspace")


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="write a StyleGAN2 generator or discriminator checkpoint as a rosinality .pt "
                                      "(torch.load-able, written without torch) or NVIDIA-named safetensors")
    e.add_argument("ckpt", help=f"jaxedit StyleGAN2 generator or discriminator checkpoint (or {DEFAULT_GENERATOR})")
    e.add_argument("out", help="file to write")
    e.add_argument("--format", choices=("rosinality", "safetensors"), required=True,
                   help="rosinality: {'g_ema', 'latent_avg'} or {'d'} as rosinality/stylegan2-pytorch names them; "
                        "safetensors: the stylegan2-ada-pytorch state dict (buffers included), config in the metadata")
    e.add_argument("--drop-clamp", action="store_true",
                   help="rosinality: write a model with conv_clamp anyway (rosinality has no clamp)")
    _force_arg(e, "OUT")
    _command(e, "export:run_export")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxedit", description="Speed-first semantic image editing in the latent spaces "
                                                            "of pretrained generators (JAX).")
    p.add_argument("--version", action="version", version=f"jaxedit {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_convert, _add_generate, _add_edit, _add_invert, _add_segment, _add_local_style, _add_batch, _add_eval,
                _add_text_edit,
                _add_train, _add_fit, _add_export):
        add(sub)
    return p


def _report_bug(exc_type, exc, tb) -> None:
    traceback.print_exception(exc_type, exc, tb)
    print("jaxedit: this is a bug in jaxedit, not in your input: please report it with the traceback above",
          file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run one command; returns the exit code (0, 1 input error, 2 usage error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    module, _, function = args.run.partition(":")
    try:
        with DeferredSignals() as args.signals:  # commands call args.signals.check() between writes
            getattr(importlib.import_module(f"jaxedit.cli.{module}"), function)(args)
            args.signals.check()
    except UsageError as e:
        print(f"jaxedit {args.command}: error: {e}", file=sys.stderr)
        return 2
    except JaxeditError as e:
        print(f"jaxedit {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("jaxedit: interrupted", file=sys.stderr)
        return 130
    return 0


def entry_point() -> None:
    """The ``jaxedit`` console script: bugs keep their traceback plus a line asking to report them."""
    sys.excepthook = _report_bug
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
