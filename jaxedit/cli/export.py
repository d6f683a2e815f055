"""``jaxedit export``: a jaxedit StyleGAN2 generator or discriminator -> rosinality ``.pt`` or NVIDIA-named
safetensors; and ``jaxedit convert stylegan2 FILE OUT --key D``: a source discriminator -> a jaxedit checkpoint."""

from __future__ import annotations

import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import loader
from jaxedit.converters import export as exporter
from jaxedit.converters import stylegan2 as sg2_converter
from jaxedit.converters import stylegan2_tf
from jaxedit.errors import CheckpointError, UsageError
from jaxedit.io import checkpoint, files
from jaxedit.models.stylegan2 import Discriminator, StyleGAN2
from jaxedit.models.stylegan2 import discriminator as d_lib


def run_export(args) -> None:
    """Load CKPT (a folder or an embedded model name), write OUT in ``--format``; prints what was written."""
    t0 = time.perf_counter()
    model, params = loader.load(args.ckpt)
    if not isinstance(model, (StyleGAN2, Discriminator)):
        raise UsageError(f"export: {args.ckpt} holds a {type(model).__name__}; only StyleGAN2 generators and "
                         "discriminators export")
    out = exporter.export(model, params, args.out, args.format, force=args.force, drop_clamp=args.drop_clamp)
    what = "generator" if isinstance(model, StyleGAN2) else "discriminator"
    size = Path(out).stat().st_size
    print(f"exported the {what} {args.ckpt} -> {out} ({args.format}, {size / 2 ** 20:.1f} MiB, "
          f"{time.perf_counter() - t0:.1f} s)")


def run_convert_discriminator(args) -> None:
    """``convert stylegan2 SRC DST --key D|d``: the discriminator of an NVIDIA ``.pkl`` or rosinality ``.pt``."""
    t0 = time.perf_counter()
    src = Path(args.src)
    checkpoint.check_writable(args.dst, args.force, d_lib.KIND, replace_kind=args.replace_kind)
    tf = stylegan2_tf.looks_like_tf_pickle(src)  # --key D / d: the format's own (TF D, NVIDIA D, rosinality d)
    cfg, params, info = (stylegan2_tf if tf else sg2_converter).convert_discriminator(src)
    source = {"file": src.name, "sha256": files.sha256(src), "converter": sg2_converter.CONVERTER_VERSION,
              **info}
    dst = checkpoint.save(args.dst, kind=d_lib.KIND, model=cfg.to_dict(), params=params, source=source,
                          force=args.force, replace_kind=args.replace_kind)
    D, reloaded = d_lib.load(dst)
    same = jax.tree.all(jax.tree.map(lambda a, b: np.array_equal(np.asarray(a), np.asarray(b)), params, reloaded))
    if D.cfg != cfg or not same:
        raise CheckpointError(f"{dst}: the reloaded discriminator differs from the converted one")
    n = max(cfg.mbstd_group_size or 1, 2)
    img = jax.random.normal(jax.random.key(0), (n, cfg.img_resolution, cfg.img_resolution, cfg.img_channels))
    c = jax.nn.one_hot(jnp.arange(n) % cfg.c_dim, cfg.c_dim) if cfg.c_dim else None
    logits = np.asarray(jax.jit(lambda p: D(p, img, c))(reloaded))
    if not np.all(np.isfinite(logits)):
        raise CheckpointError(f"{dst}: the reloaded discriminator gives non-finite logits")
    n_params = sum(int(np.size(a)) for a in jax.tree.leaves(params))
    print(f"converted {src.name} ({info['format']}, network {info.get('network')}) -> {dst}")
    print(f"  discriminator {cfg.img_resolution} px, {cfg.architecture}, channels {list(cfg.block_channels.values())}, "
          f"c {cfg.c_dim}, conv_clamp {cfg.conv_clamp}, minibatch-stddev {cfg.mbstd_group_size} x "
          f"{cfg.mbstd_num_channels}")
    print(f"  {n_params:,} parameter elements; reload check: bit-identical, forward finite; "
          f"{time.perf_counter() - t0:.1f} s")
