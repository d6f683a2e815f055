"""``jaxedit info``, ``sample`` and ``demo``: look at a checkpoint and at what a generator makes."""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import parallel
from jaxedit.cli.common import check_outputs, load_generator, load_npy, parse_seeds, seed_latents
from jaxedit.converters import source_info
from jaxedit.data import shapes
from jaxedit.errors import UsageError
from jaxedit.io import checkpoint, files
from jaxedit.io import images as imio
from jaxedit.models.stylegan2 import StyleGAN2Config


def _model_facts(kind: str, model: dict, meta: dict) -> list[str]:
    """The few numbers that say what a model is, one ``name = value`` line each."""
    if kind == "stylegan2":
        cfg = StyleGAN2Config.from_dict(model)
        chans = ", ".join(f"{r}: {c}" for r, c in cfg.block_channels.items())
        return [f"resolution = {cfg.img_resolution} x {cfg.img_resolution} x {cfg.img_channels}",
                f"z_dim = {cfg.z_dim}, w_dim = {cfg.w_dim}, c_dim = {cfg.c_dim}, num_ws = {cfg.num_ws}",
                f"mapping_layers = {cfg.mapping_layers}, architecture = {cfg.architecture}, "
                f"conv_clamp = {cfg.conv_clamp}",
                f"channels = {chans}",
                f"modulated layers (StyleSpace, weight deltas) = {', '.join(cfg.layer_ws())}"]
    if kind == "clip":
        vl = model["vision_layers"]
        tower = (f"ViT, {vl} layers x {model['vision_width']}, patch {model['vision_patch_size']}"
                 if isinstance(vl, int) else f"ResNet {tuple(vl)}, width {model['vision_width']}")
        return [f"image tower = {tower}, {model['image_resolution']} px",
                f"text tower = {model['transformer_layers']} layers x {model['transformer_width']}, "
                f"{model['transformer_heads']} heads, context {model['context_length']}, vocab {model['vocab_size']}",
                f"embed_dim = {model['embed_dim']}"]
    if kind == "probe":
        return [f"resolution = {model['resolution']}",
                f"outputs = {model['num_factors']} factors, {model['num_shapes']} shapes, "
                f"{model['num_labels']}-class label map",
                f"widths = {model['widths']}, decoder_widths = {model['decoder_widths']}"]
    if kind == "styleclip-mapper":
        prompts = meta.get("prompts") or []
        return [f"mappers = {len(prompts)}: {prompts}",
                f"w_dim = {model['w_dim']}, num_ws = {model['num_ws']}, groups (coarse, medium, fine) = "
                f"{model['groups']}, depth = {model['depth']}, norm = {model['norm']}, strength = {model['strength']}"]
    facts = [f"{k} = {v}" for k, v in model.items()]
    if kind == "editor":
        prov = dict(meta.get("provenance") or {})
        gen = prov.pop("generator", None)
        if isinstance(gen, dict):
            facts.append(f"generator = {gen.get('name')} (sha256 {str(gen.get('sha256'))[:12]})")
        facts += [f"provenance.{k} = {v}" for k, v in prov.items()]
    return facts


def _source_line(src: dict) -> str:
    """Where the weights came from: file and sha256 prefix, or how they were trained."""
    scalars = [f"{k} {v}" for k, v in src.items()
               if isinstance(v, (str, int, float)) and k not in ("file", "sha256", "note")]
    head = [src["file"]] if "file" in src else []
    if "sha256" in src:
        head.append(f"sha256 {src['sha256'][:12]}")
    return ", ".join(head + scalars) or "not recorded"


def run_info(args) -> None:
    """The kind, the model's key facts, the parameter count and the source; ``--json``: all of jaxedit.json.

    On a source file (``.pkl`` / ``.pt``): what is inside, read without running or converting anything."""
    if Path(args.ckpt).is_file():
        return _source_info(args)
    meta = checkpoint.read_meta(args.ckpt)
    if args.json:
        print(json.dumps(meta, indent=2, sort_keys=True))
        return
    kind, model = meta["kind"], meta.get("model", {})
    arrays = checkpoint.stored_shapes(args.ckpt)
    print(f"{args.ckpt}: {kind} checkpoint (jaxedit format v{meta['version']})")
    for line in _model_facts(kind, model, meta):
        print(f"  {line}")
    if kind == "editor":
        print("  arrays = " + ", ".join(f"{k} {list(v)}" for k, v in arrays.items()))
    print(f"  parameters = {sum(int(np.prod(s)) for s in arrays.values()):,} in {len(arrays)} arrays")
    print(f"  source = {_source_line(meta.get('source', {}))}")
    print("  (--json: the whole jaxedit.json)")


def _source_info(args) -> None:
    desc = source_info.describe(args.ckpt)
    if args.json:
        nets = [{k: (v.to_dict() if k == "config" else v) for k, v in n.items()} for n in desc["networks"]]
        print(json.dumps({**desc, "networks": nets}, indent=2, sort_keys=True, default=str))
        return
    print(f"{args.ckpt}: {desc['format']} ({desc['container']}; a source file, not a jaxedit checkpoint)")
    for n in desc["networks"]:
        default = " (default)" if n["key"] == desc["default"] else ""
        print(f"  {n['key']}{default}: {n['role']} {n['class']}, {n['elements']:,} elements in {n['arrays']} tensors"
              + (f", resolution {n['resolution']}" if n.get("resolution") and "config" not in n else ""))
        if "config" in n:
            for line in _model_facts("stylegan2", n["config"].to_dict(), {}):
                print(f"    {line}")
            print(f"    as converted: {n['converted_elements']:,} parameter elements in {n['converted_arrays']} arrays"
                  + (f"; latent_avg {n['latent_avg']}" if "latent_avg" in n else ""))
        elif "problem" in n:
            print(f"    would not convert: {n['problem']}")
    if any("config" in n for n in desc["networks"]):
        print(f"  (jaxedit convert stylegan2 {args.ckpt} OUT [--key NAME]; --json: everything above)")


def run_sample(args) -> None:


    if not (args.out or args.save_images or args.save_w):
        raise UsageError("sample: nothing to write; give --out grid.png and/or --save-images / --save-w")
    for flag, path in (("--out", args.out), ("--save-images", args.save_images), ("--save-w", args.save_w)):
        check_outputs(flag, [path], args.force)
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
    args.signals.check()
    if args.out:
        imio.save_grid(imgs, args.out, cols=args.cols)
    if args.save_images:
        files.save_npy(args.save_images, imgs.astype(np.float32))
    if args.save_w:
        files.save_npy(args.save_w, ws.astype(np.float32))
    written = ", ".join(p for p in (args.out, args.save_images, args.save_w) if p)
    print(f"sampled {n} images {cfg.img_resolution}x{cfg.img_resolution} in {dt:.2f} s "
          f"on {mesh.size} {jax.devices()[0].platform} device(s) -> {written}")


DEMO_FILES = ("samples.png", "truncation.png", "style_mixing.png", "renders.png")


def run_demo(args) -> None:
    """A look at the default model: samples, a truncation sweep, style mixing, renders for comparison."""
    out = Path(args.out)
    check_outputs("--out", [out / n for n in DEMO_FILES], args.force, folder=out)
    G, params = load_generator(args.ckpt)
    n = 8
    z = jax.random.normal(jax.random.key(args.seed), (n, G.cfg.z_dim))
    ws = jax.jit(G.mapping)(params, z)
    synth = jax.jit(G.synthesis)
    psis = jnp.linspace(1.0, 0.0, 6)
    sweep = jax.vmap(lambda psi: synth(params, G.truncate(params, ws, psi)))(psis)  # [psi, n, H, W, C]
    # style mixing: rows take coarse layers (4x4-8x8) from row sources, fine layers from column sources
    cut = 4
    mix = [ws[:4, None, :cut].repeat(4, 1), ws[None, 4:, cut:].repeat(4, 0)]
    mixed = jnp.concatenate([mix[0], mix[1]], axis=2).reshape(16, G.cfg.num_ws, G.cfg.w_dim)
    grids = {"samples.png": (synth(params, ws), n),
             "truncation.png": (sweep.transpose(1, 0, 2, 3, 4).reshape(-1, *sweep.shape[2:]), len(psis)),
             "style_mixing.png": (synth(params, mixed), 4)}
    if G.cfg.img_resolution in (32, 64, 128):
        real = shapes.sample(jax.random.key(args.seed), 16, shapes.ShapesConfig(resolution=G.cfg.img_resolution))
        grids["renders.png"] = (real["image"], n)
    written = []
    for name, (images, cols) in grids.items():
        args.signals.check()
        written.append(imio.save_grid(np.asarray(images), out / name, cols=cols))
    print("wrote " + ", ".join(str(p) for p in written))
    print("samples.png: 8 samples; truncation.png: rows = samples, columns = psi 1.0 -> 0.0 (toward w_avg); "
          "style_mixing.png: coarse styles of 4 samples x fine styles of 4 others; renders.png: real data")
