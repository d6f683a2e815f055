"""``jaxedit convert``: PyTorch checkpoints (NVIDIA / rosinality StyleGAN2, OpenAI CLIP, StyleCLIP mappers) and
NVIDIA's TensorFlow StyleGAN2 pickles to jaxedit checkpoints, read without torch or TF and verified by reloading."""

from __future__ import annotations

import ctypes
import ctypes.util
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import models
from jaxedit.cli.export import run_convert_discriminator
from jaxedit.cli.main import FORWARD_CHECK_MAX_RESOLUTION
from jaxedit.converters import clip as clip_converter
from jaxedit.converters import e4e as e4e_converter
from jaxedit.converters import fid_inception as fid_converter
from jaxedit.converters import lpips as lpips_converter
from jaxedit.converters import pixel_classifier, styleclip, stylegan2_tf
from jaxedit.converters import stylegan2 as sg2_converter
from jaxedit.converters import stylegan3 as sg3_converter
from jaxedit.errors import CheckpointError, UsageError
from jaxedit.io import checkpoint, files
from jaxedit.models import e4e, inception, irse, lpips, segmenter, stylegan2, stylegan3
from jaxedit.models import mapper as mapper_lib
from jaxedit.models.stylegan2 import StyleGAN2


def run_convert(args) -> None:

    *sources, args.dst = args.paths
    want = {"lpips": "VGG LIN DST (torchvision VGG16 .pth, LPIPS v0.1 lin .pth, output)",
            "pixel-classifier": "F0 [F1 ...] DST (one .pth per ensemble member, output)"}.get(args.kind, "SRC DST")
    if not sources or (args.kind == "lpips") != (len(sources) == 2) or (
            args.kind not in ("lpips", "pixel-classifier") and len(sources) != 1):
        raise UsageError(f"convert {args.kind}: give {want}")
    for extra in sources:
        if not Path(extra).is_file():
            raise UsageError(f"convert: {extra} does not exist or is not a file")
    args.src, args.sources = sources[0], sources
    src = Path(args.src)
    if not src.is_file():
        raise UsageError(f"convert: {src} does not exist or is not a file")
    if args.kind in ("stylegan2", "stylegan3") and (args.key or "").lower() == "d":  # a discriminator (TF D,
        # NVIDIA StyleGAN2 / StyleGAN3 D, rosinality d: the StyleGAN3 release trains the StyleGAN2 D)
        return run_convert_discriminator(args)
    kind = {"stylegan2": stylegan2.KIND, "stylegan3": stylegan3.KIND, "clip": "clip", "mapper": mapper_lib.MAPPER_KIND,
            "lpips": lpips.KIND, "e4e": e4e.KIND, "arcface": irse.KIND, "fid-inception": inception.KIND,
            "pixel-classifier": segmenter.KIND}[args.kind]
    checkpoint.check_writable(args.dst, args.force, kind, replace_kind=args.replace_kind)
    if args.kind in ("lpips", "e4e", "arcface", "fid-inception", "pixel-classifier"):
        return _convert_network(src, kind, args)
    if args.kind == "clip":
        return _convert_clip(src, args)
    if args.kind == "mapper":
        return _convert_mapper(src, args)
    if args.kind == "stylegan3":
        return _convert_stylegan3(src, args)
    t0 = time.perf_counter()

    tf = stylegan2_tf.looks_like_tf_pickle(src)  # legacy TensorFlow (G, D, Gs) pickle
    cfg, params, info = (stylegan2_tf if tf else sg2_converter).convert(src, key=args.key)
    source = {"file": src.name, "sha256": files.sha256(src), "converter": sg2_converter.CONVERTER_VERSION, **info}
    dst = checkpoint.save(args.dst, kind="stylegan2", model=cfg.to_dict(), params=params, source=source,
                          force=args.force, replace_kind=args.replace_kind)
    _release_free_memory()
    G = StyleGAN2(cfg)
    forward = args.check_forward or cfg.img_resolution <= FORWARD_CHECK_MAX_RESOLUTION
    check = _verify_roundtrip(G, params, dst, forward)
    n_params = sum(int(np.size(a)) for a in jax.tree.leaves(params))
    print(f"converted {src.name} ({info['format']}, network {info.get('network')}) -> {dst}")
    print(f"  resolution {cfg.img_resolution}, num_ws {cfg.num_ws}, z {cfg.z_dim}, w {cfg.w_dim}, c {cfg.c_dim}, "
          f"{cfg.architecture}, channels {list(cfg.block_channels.values())}, conv_clamp {cfg.conv_clamp}")
    print(f"  {n_params:,} parameter elements; reload check: {check}; "
          f"{time.perf_counter() - t0:.1f} s")


def _convert_stylegan3(src: Path, args) -> None:
    t0 = time.perf_counter()
    cfg, params, info = sg3_converter.convert(src, key=args.key or "G_ema")
    source = {"file": src.name, "sha256": files.sha256(src), "converter": sg3_converter.CONVERTER_VERSION,
              **info}
    dst = checkpoint.save(args.dst, kind=stylegan3.KIND, model=cfg.to_dict(), params=params, source=source,
                          force=args.force, replace_kind=args.replace_kind)
    _release_free_memory()
    forward = args.check_forward or cfg.img_resolution <= FORWARD_CHECK_MAX_RESOLUTION
    check = _verify_roundtrip(stylegan3.StyleGAN3(cfg), params, dst, forward)
    n_params = sum(int(np.size(a)) for a in jax.tree.leaves(params))
    print(f"converted {src.name} (StyleGAN3, network {args.key or 'G_ema'}) -> {dst}")
    print(f"  resolution {cfg.img_resolution}, z {cfg.z_dim}, w {cfg.w_dim}, c {cfg.c_dim}; {n_params:,} parameter "
          f"elements; reload check: {check}; {time.perf_counter() - t0:.1f} s")


def _convert_network(src: Path, kind: str, args) -> None:
    """LPIPS, e4e, ArcFace and FID Inception: convert, save, reload bit-identically, one finite forward pass."""
    t0 = time.perf_counter()
    if kind == lpips.KIND:
        cfg, params, info = lpips_converter.convert(*args.sources)
    elif kind == segmenter.KIND:
        cfg, params, info = pixel_classifier.convert(args.sources)
    elif kind == e4e.KIND:
        cfg, params, info = e4e_converter.convert_e4e(src)
    elif kind == inception.KIND:
        cfg, params, info = fid_converter.convert(src)
    else:
        cfg, params, info = e4e_converter.convert_arcface(src)
    dst = checkpoint.save(args.dst, kind=kind, model=cfg.to_dict(), params=params, source=info, force=args.force,
                          replace_kind=args.replace_kind)
    model, reloaded = models.load(dst)
    same = jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), params, reloaded))
    if model.cfg != cfg or not same:
        raise CheckpointError(f"{dst}: the reloaded {kind} checkpoint differs from the converted one")
    if kind == segmenter.KIND:
        size, x = cfg.in_dim, jax.random.normal(jax.random.key(0), (16, cfg.in_dim))  # 16 pixels' features
    else:
        size = {lpips.KIND: 32, e4e.KIND: 256, irse.KIND: 112, inception.KIND: 75}[kind]
        x = jnp.tanh(jax.random.normal(jax.random.key(0), (1, size, size, 3)))
    out = jax.jit(lambda p: model(p, x, -x) if kind == lpips.KIND else model(p, x))(reloaded)
    if not np.all(np.isfinite(np.asarray(out))):
        raise CheckpointError(f"{dst}: the reloaded {kind} model gives non-finite outputs")
    n_params = sum(int(np.size(a)) for a in jax.tree.leaves(params))
    extra = f" (+ {len(args.sources) - 1} more)" if len(args.sources) > 1 else ""
    print(f"converted {src.name}{extra} ({kind}) -> {dst}")
    print(f"  {n_params:,} parameter elements; output {list(np.shape(out))} for "
          f"{'16 pixels of ' + str(size) + ' features' if kind == segmenter.KIND else str(size) + ' px'}; reload check: "
          f"bit-identical, forward finite; {time.perf_counter() - t0:.1f} s")
    if isinstance(info.get("decoder"), dict) and info["decoder"].get("present"):
        print(f"  the file also holds a generator ({info['decoder'].get('tensors')} decoder tensors): "
              f"convert it with jaxedit convert stylegan2 {src} OUT")


def _convert_clip(src: Path, args) -> None:

    t0 = time.perf_counter()
    cfg, params, info = clip_converter.convert(src)
    vocab = args.vocab or clip_converter.default_vocab(src)
    dst, check = clip_converter.save(args.dst, cfg, params, info, vocab=vocab, force=args.force,
                                       replace_kind=args.replace_kind)
    n_params = sum(int(np.size(a)) for a in jax.tree.leaves(params))
    tower = f"ViT/{cfg.vision_patch_size} x{cfg.vision_layers}" if cfg.is_vit else f"ResNet {list(cfg.vision_layers)}"
    print(f"converted {src.name} ({info.get('format')}) -> {dst}")
    print(f"  image tower {tower} width {cfg.vision_width} at {cfg.image_resolution} px; text {cfg.transformer_layers} "
          f"layers width {cfg.transformer_width}, context {cfg.context_length}, vocab {cfg.vocab_size}; "
          f"embed {cfg.embed_dim}")
    print(f"  {n_params:,} parameter elements ({info.get('fp16_tensors', 0)} fp16 tensors cast to float32); "
          f"vocab: {'copied' if vocab else 'none found (pass --vocab FILE to enable text encoding)'}; "
          f"reload check: {check}; {time.perf_counter() - t0:.1f} s")


def _convert_mapper(src: Path, args) -> None:

    M, params, description = styleclip.load_mapper(src)
    prompt = args.prompt or description
    stacked = jax.tree.map(lambda a: np.asarray(a)[None], params)
    dst = mapper_lib.save_mappers(args.dst, M, stacked, [prompt], force=args.force, replace_kind=args.replace_kind,
                            source={"file": src.name, "sha256": files.sha256(src), "format": "styleclip-mapper-pt"})
    M2, reloaded, prompts = mapper_lib.load_mappers(dst)
    same = jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(a, np.asarray(b)), stacked, reloaded))
    if M2.cfg != M.cfg or prompts != [prompt] or not same:
        raise CheckpointError(f"{dst}: the reloaded mapper differs from the converted one")
    groups = [g for g, on in zip(mapper_lib.MAPPER_GROUPS, M.cfg.groups) if on]
    print(f"converted {src.name} (StyleCLIP LevelsMapper, prompt {prompt!r}) -> {dst}")
    print(f"  W+ {M.cfg.num_ws} x {M.cfg.w_dim}, groups {groups}, depth {M.cfg.depth}; reload check: bit-identical")


def _verify_roundtrip(G, params, dst: Path, forward: bool) -> str:
    """Reload the written checkpoint: its config must equal the converted one and every parameter
    must be bit-identical; then (small models, or on request) compare a forward pass on a fixed seed.

    Identical config and parameters imply identical outputs, so the forward pass is a smoke
    test; at 1024 px it alone costs about 4x the source file in RSS, hence opt-in there.
    """

    G2, reloaded = models.load(dst)
    if G2.cfg != G.cfg:
        raise CheckpointError(f"{dst}: reloaded config differs from the converted one")
    mine = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(params)}
    theirs = {jax.tree_util.keystr(k): v for k, v in jax.tree_util.tree_leaves_with_path(reloaded)}
    bad = [k for k in mine if k not in theirs or np.asarray(mine[k]).dtype != np.asarray(theirs[k]).dtype
           or not np.array_equal(np.asarray(mine[k]), np.asarray(theirs[k]))]
    if bad or set(theirs) != set(mine):
        raise CheckpointError(f"{dst}: reloaded parameters differ from the converted ones: {bad[:5]}")
    if not forward:
        return "config and parameters bit-identical"
    z = jax.random.normal(jax.random.key(0), (2, G.cfg.z_dim))
    c = jax.nn.one_hot(jnp.arange(2) % max(G.cfg.c_dim, 1), G.cfg.c_dim) if G.cfg.c_dim else None
    a = np.asarray(jax.jit(lambda p: G(p, z, c))(params))
    b = np.asarray(jax.jit(lambda p: G2(p, z, c))(reloaded))
    diff = float(np.max(np.abs(a - b)))
    if not diff <= 1e-6 or not np.all(np.isfinite(a)):
        raise CheckpointError(f"{dst}: reloaded model's forward pass differs (max |diff| {diff})")
    return f"config and parameters bit-identical, forward pass max |diff| {diff:.1e}"


def _release_free_memory() -> None:
    """Hand freed heap back to the OS (glibc); orbax's writer otherwise leaves it in RSS."""

    try:
        ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
