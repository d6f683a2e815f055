"""``jaxedit info``, ``sample`` and ``demo``: look at a checkpoint and at what a generator makes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import parallel
from jaxedit.cli.common import load_generator, load_npy, parse_seeds, seed_latents
from jaxedit.data import shapes
from jaxedit.errors import UsageError
from jaxedit.io import checkpoint
from jaxedit.io import images as imio
from jaxedit.models.stylegan2 import StyleGAN2, StyleGAN2Config


def run_info(args) -> None:

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

        G = StyleGAN2(StyleGAN2Config.from_dict(meta["model"]))
        n = sum(int(np.prod(s.shape)) for s in jax.tree.leaves(G.param_shapes()))
        print(f"  num_ws = {G.cfg.num_ws}; parameter elements = {n:,}")
        print(f"  modulated layers (StyleSpace, weight deltas): {', '.join(G.cfg.layer_ws())}")


def run_sample(args) -> None:


    if not (args.out or args.save_images or args.save_w):
        raise UsageError("sample: nothing to write; give --out grid.png and/or --save-images / --save-w")
    G, params = load_generator(args.ckpt)
    cfg = G.cfg
    if args.z:
        z = load_npy(args.z, "--z", (None, cfg.z_dim))
        seeds = list(range(len(z)))
    else:
        seeds = parse_seeds(args.seeds)
        z = seed_latents(seeds, cfg.z_dim)
    n = len(z)
    if cfg.c_dim:
        if args.c:
            c = load_npy(args.c, "--c", (n, cfg.c_dim))
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


def run_demo(args) -> None:
    """A look at the default model: samples, a truncation sweep, style mixing, renders for comparison."""


    G, params = load_generator(args.ckpt)
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
