"""The ``jaxedit`` command line: convert, info, sample, demo, train-gan, train-probe.

Every error the user can cause is one line on stderr (``jaxedit: error: ...``, exit 2);
set ``JAXEDIT_DEBUG=1`` for the full traceback. Compiled programs are cached in
``$JAXEDIT_CACHE`` (default ``~/.cache/jaxedit/xla``) so repeated runs skip compilation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np


DEFAULT_GENERATOR = "shapes32-stylegan2"


class UsageError(ValueError):
    """A bad argument or input file; printed as one line."""


def parse_seeds(text: str) -> list[int]:
    """'0-3,7,10-11' -> [0, 1, 2, 3, 7, 10, 11]."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1) if not part.startswith("-") else (part, "")
                seeds.extend(range(int(lo), int(hi) + 1))
            elif part:
                seeds.append(int(part))
    except ValueError:
        raise UsageError(f"--seeds: cannot parse {text!r} (expected e.g. 0-15 or 1,5,9-12)") from None
    if not seeds or any(s < 0 or s >= 2 ** 32 for s in seeds):
        raise UsageError(f"--seeds: {text!r} gives no seeds in [0, 2**32)")
    return seeds


def _load_npy(path: str, what: str, shape: tuple[int | None, ...]) -> np.ndarray:
    try:
        a = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise UsageError(f"{what} {path}: cannot read as .npy ({e})") from None
    if a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape)):
        want = "[" + ", ".join("N" if s is None else str(s) for s in shape) + "]"
        raise UsageError(f"{what} {path}: shape {list(a.shape)}, expected {want}")
    return a.astype(np.float32)


# ------------------------------------------------------------------------- commands


CONVERT_KINDS = ("stylegan2", "clip", "mapper")


def cmd_convert(args) -> None:
    from jaxedit import checkpoint

    if args.kind not in CONVERT_KINDS:
        raise UsageError(f"convert: unknown kind {args.kind!r} (supported: {', '.join(CONVERT_KINDS)})")
    src = Path(args.src)
    if not src.is_file():
        raise UsageError(f"convert: {src} does not exist or is not a file")
    checkpoint.check_writable(args.dst, args.force)
    if args.kind == "clip":
        return _convert_clip(src, args)
    if args.kind == "mapper":
        return _convert_mapper(src, args)
    t0 = time.perf_counter()
    from converters import stylegan2 as conv
    from jaxedit.models.stylegan2 import StyleGAN2

    cfg, params, info = conv.convert(src, key=args.key)
    source = {"file": src.name, "sha256": conv.sha256(src), "converter": conv.CONVERTER_VERSION, **info}
    dst = checkpoint.save(args.dst, kind="stylegan2", model=cfg.to_dict(), params=params, source=source,
                          force=args.force)
    _release_free_memory()
    G = StyleGAN2(cfg)
    forward = args.check_forward or cfg.img_resolution <= FORWARD_CHECK_MAX_RESOLUTION
    check = _verify_roundtrip(G, params, dst, forward)
    n_params = sum(int(np.size(a)) for a in __import__("jax").tree.leaves(params))
    print(f"converted {src.name} ({info['format']}, network {info.get('network')}) -> {dst}")
    print(f"  resolution {cfg.img_resolution}, num_ws {cfg.num_ws}, z {cfg.z_dim}, w {cfg.w_dim}, c {cfg.c_dim}, "
          f"{cfg.architecture}, channels {list(cfg.block_channels.values())}, conv_clamp {cfg.conv_clamp}")
    print(f"  {n_params:,} parameter elements; reload check: {check}; "
          f"{time.perf_counter() - t0:.1f} s")


FORWARD_CHECK_MAX_RESOLUTION = 256


def _convert_clip(src: Path, args) -> None:
    from converters import clip as conv

    t0 = time.perf_counter()
    cfg, params, info = conv.convert(src)
    vocab = args.vocab or conv.default_vocab(src)
    dst, check = conv.save(args.dst, cfg, params, info, vocab=vocab, force=args.force)
    n_params = sum(int(np.size(a)) for a in __import__("jax").tree.leaves(params))
    tower = f"ViT/{cfg.vision_patch_size} x{cfg.vision_layers}" if cfg.is_vit else f"ResNet {list(cfg.vision_layers)}"
    print(f"converted {src.name} ({info.get('format')}) -> {dst}")
    print(f"  image tower {tower} width {cfg.vision_width} at {cfg.image_resolution} px; text {cfg.transformer_layers} "
          f"layers width {cfg.transformer_width}, context {cfg.context_length}, vocab {cfg.vocab_size}; "
          f"embed {cfg.embed_dim}")
    print(f"  {n_params:,} parameter elements ({info.get('fp16_tensors', 0)} fp16 tensors cast to float32); "
          f"vocab: {'copied' if vocab else 'none found (pass --vocab FILE to enable text encoding)'}; "
          f"reload check: {check}; {time.perf_counter() - t0:.1f} s")


def _convert_mapper(src: Path, args) -> None:
    import jax

    from converters import styleclip
    from converters.stylegan2 import sha256
    from jaxedit.checkpoint import CheckpointError
    from jaxedit.edits import text

    M, params, description = styleclip.load_mapper(src)
    prompt = args.prompt or description
    stacked = jax.tree.map(lambda a: np.asarray(a)[None], params)
    dst = text.save_mappers(args.dst, M, stacked, [prompt], force=args.force,
                            source={"file": src.name, "sha256": sha256(src), "format": "styleclip-mapper-pt"})
    M2, reloaded, prompts = text.load_mappers(dst)
    same = jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), stacked, reloaded))
    if M2.cfg != M.cfg or prompts != [prompt] or not same:
        raise CheckpointError(f"{dst}: the reloaded mapper differs from the converted one")
    groups = [g for g, on in zip(text.MAPPER_GROUPS, M.cfg.groups) if on]
    print(f"converted {src.name} (StyleCLIP LevelsMapper, prompt {prompt!r}) -> {dst}")
    print(f"  W+ {M.cfg.num_ws} x {M.cfg.w_dim}, groups {groups}, depth {M.cfg.depth}; reload check: bit-identical")


def _verify_roundtrip(G, params, dst: Path, forward: bool) -> str:
    """Reload the written checkpoint: its config must equal the converted one and every parameter
    must be bit-identical; then (small models, or on request) compare a forward pass on a fixed seed.

    Identical config and parameters imply identical outputs, so the forward pass is a smoke
    test; at 1024 px it alone costs about 4x the source file in RSS, hence opt-in there.
    """
    import jax
    import jax.numpy as jnp

    from jaxedit import checkpoint

    G2, reloaded = checkpoint.load_stylegan2(dst)
    if G2.cfg != G.cfg:
        raise checkpoint.CheckpointError(f"{dst}: reloaded config differs from the converted one")
    mine = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    theirs = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(reloaded)}
    bad = [k for k in mine if k not in theirs or np.asarray(mine[k]).dtype != np.asarray(theirs[k]).dtype
           or not np.array_equal(np.asarray(mine[k]), np.asarray(theirs[k]))]
    if bad or set(theirs) != set(mine):
        raise checkpoint.CheckpointError(f"{dst}: reloaded parameters differ from the converted ones: {bad[:5]}")
    if not forward:
        return "config and parameters bit-identical"
    z = jax.random.normal(jax.random.key(0), (2, G.cfg.z_dim))
    c = jax.nn.one_hot(jnp.arange(2) % max(G.cfg.c_dim, 1), G.cfg.c_dim) if G.cfg.c_dim else None
    a = np.asarray(jax.jit(lambda p: G(p, z, c))(params))
    b = np.asarray(jax.jit(lambda p: G2(p, z, c))(reloaded))
    diff = float(np.max(np.abs(a - b)))
    if not diff <= 1e-6 or not np.all(np.isfinite(a)):
        raise checkpoint.CheckpointError(f"{dst}: reloaded model's forward pass differs (max |diff| {diff})")
    return f"config and parameters bit-identical, forward pass max |diff| {diff:.1e}"


def _release_free_memory() -> None:
    """Hand freed heap back to the OS (glibc); orbax's writer otherwise leaves it in RSS."""
    import ctypes
    import ctypes.util

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def cmd_info(args) -> None:
    from jaxedit import checkpoint

    meta = checkpoint.read_meta(args.ckpt)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return
    print(f"{args.ckpt}: {meta['kind']} checkpoint (jaxedit format v{meta['version']})")
    for k, v in meta.get("model", {}).items():
        print(f"  model.{k} = {v}")
    for k, v in meta.get("source", {}).items():
        print(f"  source.{k} = {v}")
    if meta.get("prompts"):
        print(f"  prompts = {meta['prompts']}")
    if meta["kind"] == "stylegan2":
        from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config

        import jax

        G = StyleGAN2(StyleGAN2Config.from_dict(meta["model"]))
        n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(G.param_shapes()))
        print(f"  num_ws = {G.cfg.num_ws}; parameter elements = {n:,}")
        print(f"  modulated layers (StyleSpace, weight deltas): {', '.join(G.cfg.layer_ws())}")


def cmd_sample(args) -> None:
    from jaxedit.config import enable_compilation_cache

    enable_compilation_cache()
    import jax

    from jaxedit import checkpoint, parallel
    from jaxedit.data import images as imio

    if not (args.out or args.save_images or args.save_w):
        raise UsageError("sample: nothing to write; give --out grid.png and/or --save-images / --save-w")
    G, params = checkpoint.load_stylegan2(args.ckpt or checkpoint.default_path(DEFAULT_GENERATOR))
    cfg = G.cfg
    if args.z:
        z = _load_npy(args.z, "--z", (None, cfg.z_dim))
        seeds = list(range(len(z)))
    else:
        seeds = parse_seeds(args.seeds)
        # the reference's generate.py convention, so seeds give the same z as NVIDIA's tools
        z = np.stack([np.random.RandomState(s).randn(cfg.z_dim) for s in seeds]).astype(np.float32)
    n = len(z)
    if cfg.c_dim:
        if args.c:
            c = _load_npy(args.c, "--c", (n, cfg.c_dim))
        elif args.class_idx is not None:
            if not 0 <= args.class_idx < cfg.c_dim:
                raise UsageError(f"--class {args.class_idx} out of range [0, {cfg.c_dim})")
            c = np.eye(cfg.c_dim, dtype=np.float32)[np.full(n, args.class_idx)]
        else:
            raise UsageError(f"this generator is conditional (c_dim {cfg.c_dim}): give --class K or --c c.npy")
    else:
        if args.c or args.class_idx is not None:
            raise UsageError("--c/--class given but the generator is unconditional")
        c = np.zeros((n, 0), np.float32)
    if args.cutoff is not None and not 0 < args.cutoff <= cfg.num_ws:
        raise UsageError(f"--cutoff must be in [1, {cfg.num_ws}]")
    noise_keys = np.asarray(jax.random.key_data(jax.vmap(
        lambda s: jax.random.fold_in(jax.random.key(args.noise_seed), s))(np.asarray(seeds, np.uint32))))

    mesh = parallel.data_mesh()
    params = parallel.replicate(params, mesh)
    cutoff, noise_mode = args.cutoff, args.noise

    @jax.jit
    def run(batch):
        ws = G.mapping(params, batch["z"], batch["c"] if cfg.c_dim else None, args.psi, cutoff)
        return {"ws": ws, "img": G.synthesis(params, ws, noise_mode, key=batch["key"])}

    t0 = time.perf_counter()
    outs = list(parallel.map_batches(run, {"z": z, "c": c, "key": noise_keys}, args.batch_size, mesh))
    imgs = np.concatenate([o["img"] for o in outs])
    ws = np.concatenate([o["ws"] for o in outs])
    dt = time.perf_counter() - t0
    if args.out:
        imio.save_grid(imgs, args.out, cols=args.cols)
    if args.save_images:
        np.save(args.save_images, imgs.astype(np.float32))
    if args.save_w:
        np.save(args.save_w, ws.astype(np.float32))
    written = ", ".join(p for p in (args.out, args.save_images, args.save_w) if p)
    print(f"sampled {n} images {cfg.img_resolution}x{cfg.img_resolution} in {dt:.2f} s "
          f"on {mesh.size} {jax.devices()[0].platform} device(s) -> {written}")


def cmd_demo(args) -> None:
    """A look at the default model: samples, a truncation sweep, style mixing, renders for comparison."""
    from jaxedit.config import enable_compilation_cache

    enable_compilation_cache()
    import jax
    import jax.numpy as jnp

    from jaxedit import checkpoint
    from jaxedit.data import images as imio
    from jaxedit.data import shapes

    G, params = checkpoint.load_stylegan2(args.ckpt or checkpoint.default_path(DEFAULT_GENERATOR))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    n = 8
    z = jax.random.normal(jax.random.key(args.seed), (n, G.cfg.z_dim))
    ws = jax.jit(G.mapping)(params, z)
    synth = jax.jit(G.synthesis)
    written = [imio.save_grid(np.asarray(synth(params, ws)), out / "samples.png", cols=n)]
    psis = jnp.linspace(1.0, 0.0, 6)
    sweep = jax.vmap(lambda psi: synth(params, G.truncate(params, ws, psi)))(psis)  # [psi, n, H, W, C]
    written.append(imio.save_grid(np.asarray(sweep.transpose(1, 0, 2, 3, 4).reshape(-1, *sweep.shape[2:])),
                                  out / "truncation.png", cols=len(psis)))
    # style mixing: rows take coarse layers (4x4-8x8) from row sources, fine layers from column sources
    cut = 4
    mix = [ws[:4, None, :cut].repeat(4, 1), ws[None, 4:, cut:].repeat(4, 0)]
    mixed = jnp.concatenate([mix[0], mix[1]], axis=2).reshape(16, G.cfg.num_ws, G.cfg.w_dim)
    written.append(imio.save_grid(np.asarray(synth(params, mixed)), out / "style_mixing.png", cols=4))
    if G.cfg.img_resolution in (32, 64, 128):
        real = shapes.sample(jax.random.key(args.seed), 16, shapes.ShapesConfig(resolution=G.cfg.img_resolution))
        written.append(imio.save_grid(np.asarray(real["image"]), out / "renders.png", cols=n))
    print("wrote " + ", ".join(str(p) for p in written))
    print("samples.png: 8 samples; truncation.png: rows = samples, columns = psi 1.0 -> 0.0 (toward w_avg); "
          "style_mixing.png: coarse styles of 4 samples x fine styles of 4 others; renders.png: real data")


# ------------------------------------------------------------------------------ main


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="jaxedit", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("convert", help="convert a PyTorch checkpoint to a jaxedit checkpoint (no torch needed)")
    c.add_argument("kind", help="what the file holds: stylegan2 (NVIDIA .pkl or rosinality .pt), clip (OpenAI "
                                "TorchScript or state-dict .pt), mapper (a StyleCLIP latent mapper .pt)")
    c.add_argument("src", help="source file")
    c.add_argument("dst", help="destination checkpoint directory")
    c.add_argument("--key", default=None, help="network inside the file (NVIDIA: G_ema (default), G; rosinality: g_ema, g)")
    c.add_argument("--vocab", help="clip: the BPE merges file (default: bpe_simple_vocab_16e6.txt.gz next to SRC)")
    c.add_argument("--prompt", help="mapper: the text it was trained for (default: the file's opts['description'])")
    c.add_argument("--force", action="store_true", help="overwrite an existing jaxedit checkpoint at DST")
    c.add_argument("--check-forward", action="store_true",
                   help=f"also compare a forward pass after reloading above {FORWARD_CHECK_MAX_RESOLUTION} px "
                        "(always done at or below; costs about 4x the source file in memory at 1024 px)")
    c.set_defaults(fn=cmd_convert)

    i = sub.add_parser("info", help="describe a jaxedit checkpoint")
    i.add_argument("ckpt")
    i.add_argument("--json", action="store_true", help="print jaxedit.json as is")
    i.set_defaults(fn=cmd_info)

    s = sub.add_parser("sample", help="sample images from a generator into a PNG grid")
    s.add_argument("ckpt", nargs="?", help=f"jaxedit StyleGAN2 checkpoint directory (default: {DEFAULT_GENERATOR})")
    s.add_argument("--seeds", default="0-15", help="seeds, e.g. 0-15 or 1,5,9-12 (z as NVIDIA's generate.py)")
    s.add_argument("--z", help="z vectors from a .npy file [N, z_dim] instead of seeds")
    s.add_argument("--c", help="labels from a .npy file [N, c_dim] (conditional generators)")
    s.add_argument("--class", dest="class_idx", type=int, help="class index for every sample (conditional)")
    s.add_argument("--psi", type=float, default=1.0, help="truncation psi (default 1: none)")
    s.add_argument("--cutoff", type=int, help="truncate only the first N ws")
    s.add_argument("--noise", choices=("const", "random", "none"), default="const")
    s.add_argument("--noise-seed", type=int, default=0, help="seed of random noise (per image: seed ^ image seed)")
    s.add_argument("--batch-size", type=int, default=32, help="images per device batch chunk")
    s.add_argument("--cols", type=int, help="grid columns")
    s.add_argument("--out", help="PNG grid to write")
    s.add_argument("--save-images", help="write raw float32 NHWC images (unclipped) to this .npy")
    s.add_argument("--save-w", help="write ws [N, num_ws, w_dim] to this .npy")
    s.set_defaults(fn=cmd_sample)

    d = sub.add_parser("demo", help="write a look at the default model (samples, truncation, style mixing) as PNGs")
    d.add_argument("ckpt", nargs="?", help=f"jaxedit StyleGAN2 checkpoint (default: {DEFAULT_GENERATOR})")
    d.add_argument("--out", default="jaxedit-demo", help="output folder")
    d.add_argument("--seed", type=int, default=0)
    d.set_defaults(fn=cmd_demo)

    from jaxedit.edits import cli as edit_cli
    from jaxedit.edits import text_cli
    from jaxedit.train import clip as train_clip
    from jaxedit.train import discovery as train_discovery
    from jaxedit.train import gan as train_gan
    from jaxedit.train import probe as train_probe

    edit_cli.register_cli(sub)
    text_cli.register_cli(sub)
    train_gan.register_cli(sub)
    train_probe.register_cli(sub)
    train_clip.register_cli(sub)
    train_discovery.register_cli(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.fn(args)
    except KeyboardInterrupt:
        print("jaxedit: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # noqa: BLE001 - one clear line for anything the user can cause
        if os.environ.get("JAXEDIT_DEBUG"):
            raise
        if not isinstance(e, (ValueError, OSError, KeyError)):
            msg = f"internal error: {type(e).__name__}: {e} (set JAXEDIT_DEBUG=1 for the traceback)"
        else:
            msg = str(e)
        print(f"jaxedit: error: {msg}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
