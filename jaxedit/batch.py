"""The batch editing engine (``jaxedit batch JOB.json --out DIR``): a chain of latent edits applied to many inputs,
sharded over devices and processes, exactly-once after a crash.

A job (JSON; :func:`read_job` checks every field, :func:`plan` the models and image headers, before anything is
written)::

    {"generator": null,                                   # a checkpoint or default name (null: the default)
     "inputs": {"seeds": "0-511", "psi": 0.7},            # or {"latents": "inv/latents.npz"} (W+ codes)
     "edits": [{"method": "linear", "directions": "age.npy", "k": 0, "t": 2.0,
                "space": "w", "layers": [0, 4]}],         # t: a number or a list (variants)
     "outputs": {"images": true, "latents": true},        # "records": true adds array_record shards
     "shard_size": 256, "batch_size": 32}

Image-folder inputs, ``{"images": "photos/", "encoder": "shapes32-encoder", "invert_steps": 0, "invert_loss":
"probe", "loss_model": null, "pixel_weight": 0, "invert_seed": 0}`` (all but ``images`` optional): the folder's
image files sorted by name (item ``i`` is the ``i``-th; ``DIR/job.json`` lists them with size and mtime, so a
changed folder is another job), each of the generator's resolution (checked from the headers first), inverted
inside the job's program by the e4e encoder, then ``invert_steps`` of the hybrid projector in W+
(:func:`jaxedit.invert.project`, distance ``invert_loss`` from ``loss_model`` plus ``pixel_weight`` x pixel MSE)
with the generator's own noise fixed, as the codes are then rendered.

Every editor family of :func:`jaxedit.edits.load` may appear (its own ``method`` / ``space`` / ``layers`` /
``eps``), and ``"method": "mapper"``: a StyleCLIP latent mapper checkpoint (``jaxedit text-edit --save-mapper`` or
``jaxedit convert mapper``) as the W+ edit ``w + t * strength * M_k(w)``, ``k`` its prompt (:class:`MapperEdit`),
and last, after every latent edit, ``{"method": "local-style", "region": "body", "t": sigma, "model":
"shapes32-l2sae", "seed": 0, "soft": false}``: a Latents2Semantics style-noise edit of the synthesized images
(:class:`LocalStyleEdit`; the latents are not changed). Z-space edits must come before W-space ones and need seed
inputs. Not in a job: StyleCLIP global directions (StyleSpace, not W+ codes: the ``latent`` output could not hold
them) and layer weight shifts (a generator per variant). Each edit's ``t`` list multiplies the
variants (their cartesian product, in order): item ``i`` of variant ``v`` is ``DIR/images/{i:08d}.png`` when there
is one variant, else ``DIR/images/{i:08d}-{v:03d}.png``; its edited W+ code is in exactly one
``DIR/shards/shard-{s:06d}.npz`` (keys ``index [n]``, ``variant [n]``, ``latent [n, num_ws, w_dim]``, and ``name
[n]``, the input file, for image inputs). ``outputs.records`` (the optional ``array-record`` package,
``jaxedit[records]``) also writes ``DIR/records/shard-{s:06d}.array_record``: one record per item and variant in
the same order, each the bytes of an ``.npz`` (``index``, ``variant``, ``latent``, ``image [H, W, 3]`` uint8 when
images are on, ``name``), random access per record.

Exactly once: the items are cut into shards of ``shard_size``; a shard's images, ``.npz`` and records are written
atomically (temp + rename; by writer threads while the next shard computes), the filesystem is synced once, then its
manifest ``DIR/manifest/shard-{s:06d}.json`` is written, the commit. A rerun of the same
job skips every committed shard and redoes the others (their files are rewritten with the same bytes), so a run
killed at any point (SIGKILL included) and rerun ends with exactly the items of an uninterrupted run. ``DIR/job.json``
holds the job and the dtype; another job in the same folder is refused. Processes: shard ``s`` belongs to process ``s %
process_count``; each computes on its local devices and writes its own shards, so results do not depend on the
number of devices or processes (every item is computed from its own seed, code or image). The CLI joins processes
and hosts through ``jax.distributed`` (:mod:`jaxedit.cli.batch`); the shard split itself needs no coordinator.

Host pipeline: threads, not grain. One thread reads the next shard's inputs while the current one computes (one
shard ahead: backpressure), and two writer threads encode and write the previous shard's PNGs (zlib and file I/O
release the GIL). Measured per item on this 2-core CPU (under load): a seed's z 6.7 us, a 32 px input image decoded
300 us and its header checked 38 us, a PNG encoded 60-105 us, against 470 us of generator compute per item
(2323 items/s, ``experiments/results/bench_batch.md``) and ~4 ms for an encoder inversion: host input work is at most
~7 % of compute and overlapped, and the job runs at 92 % of the raw generator. grain's worker processes would add a
dependency and process start-up to move work that is not the bottleneck; it pays when decoding outweighs compute
(large JPEGs with a cheap encoder on an accelerator).

Compute dtype (``--dtype``, :data:`DTYPES`): ``float32`` (the default) or ``bfloat16``. With ``bfloat16`` only the
generator's synthesis runs in bf16: its params' float leaves and the W+ codes are cast inside the jitted program
and the images cast back to float32 before the uint8 conversion. The mapping, the edits and therefore the saved
latents stay float32 (a float32 run's, within float rounding); only the images change (PSNR against float32 in
``experiments/results/bench_batch.md``). The dtype is part of ``DIR/job.json``: a rerun with another dtype is
refused like another job.
"""

from __future__ import annotations

import ctypes
import dataclasses
import io
import itertools
import json
import os
import re
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxedit import edits, invert, models, parallel
from jaxedit.edits import local_style
from jaxedit.errors import InputError
from jaxedit.io import checkpoint, files
from jaxedit.io import images as imio
from jaxedit.models import e4e, lpips, probe
from jaxedit.models import mapper as mapper_lib
from jaxedit.models.l2sae import L2SAE

try:  # the optional array_record output (pip install 'jaxedit[records]')
    from array_record.python.array_record_module import ArrayRecordWriter
except ImportError:
    ArrayRecordWriter = None

DEFAULT_GENERATOR = "shapes32-stylegan2"
DEFAULT_ENCODER = "shapes32-encoder"
DEFAULT_PROBE = "shapes32-probe"
INVERT_KEYS = ("encoder", "invert_steps", "invert_loss", "loss_model", "pixel_weight", "invert_seed")
INVERT_LOSSES = ("probe", "pixel", "lpips")  # the hybrid projector's image distance (see parse_job)
SEEDS = re.compile(r"(\d+)(?:-(\d+))?")
MAX_ITEMS = 100_000_000
EDIT_KEYS = {"method", "directions", "k", "t", "space", "layers", "eps"}
DTYPES = ("float32", "bfloat16")  # the synthesis compute dtype (see the module docstring)
MAPPER = "mapper"  # the text (StyleCLIP) latent mapper edit: a method beside jaxedit.edits' families
LOCAL_STYLE = "local-style"  # a Latents2Semantics style-noise edit of the synthesized images (after every latent edit)
LOCAL_STYLE_KEYS = {"method", "model", "region", "t", "seed", "soft"}
DEFAULT_L2SAE = "shapes32-l2sae"


class JobError(InputError):
    """A bad job file: the message names the field."""


@dataclasses.dataclass(frozen=True)
class Edit:
    directions: str
    k: int
    t: tuple[float, ...]
    method: str | None = None
    space: str | None = None
    layers: tuple[int, int] | None = None
    eps: float | None = None
    region: str | None = None  # local-style: the region, the noise draw's seed, soft masks
    seed: int = 0
    soft: bool = False


@dataclasses.dataclass(frozen=True)
class Job:
    generator: str | None
    seeds: tuple[tuple[int, int], ...] | None  # inclusive ranges
    latents: str | None
    psi: float
    edits: tuple[Edit, ...]
    images: bool
    latents_out: bool
    shard_size: int
    batch_size: int
    image_dir: str | None = None  # image-folder inputs: item i is image_files[i] (sorted by name)
    image_files: tuple[tuple[str, int, int], ...] = ()  # (name, bytes, mtime_ns): a changed folder is another job
    encoder: str = DEFAULT_ENCODER  # e4e checkpoint (or default model name) inverting the images
    invert_steps: int = 0  # hybrid projector steps after the encoder (0: the encoder's codes)
    invert_loss: str = "probe"
    loss_model: str | None = None  # the probe (default shapes32-probe) or LPIPS checkpoint of invert_loss
    pixel_weight: float = 0.0  # + this x pixel MSE in the projector's distance
    invert_seed: int = 0
    records: bool = False  # outputs.records: DIR/records/shard-{s:06d}.array_record

    @property
    def variants(self) -> list[tuple[float, ...]]:
        """The strength of every edit, per variant (the cartesian product of the ``t`` lists)."""
        return list(itertools.product(*(e.t for e in self.edits)))


def _field(cond: bool, where: str, msg: str) -> None:
    if not cond:
        raise JobError(f"job field {where}: {msg}")


def _number(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and np.isfinite(v)


def _int(v, lo: int, hi: int) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi


def _model_ref(base: Path, ref: str) -> str:
    """A checkpoint named in a job: a path beside the job file when one exists there, else as given (a path or an
    embedded default model's name, resolved by :func:`jaxedit.io.checkpoint.resolve`)."""
    return str(base / ref) if not Path(ref).is_absolute() and (base / ref).exists() else ref


def _parse_images(inputs: dict, base: Path) -> dict[str, Any]:
    """``inputs.images`` and the inversion fields -> :class:`Job` keyword arguments (the folder is listed here;
    image headers are checked against the generator by :func:`plan`)."""
    d = inputs["images"]
    _field(isinstance(d, str), "inputs.images", "a folder of image files")
    d = str(base / d) if not Path(d).is_absolute() else d
    _field(Path(d).is_dir(), "inputs.images", f"no such folder {d}")
    found = imio.image_files(d)
    _field(bool(found), "inputs.images", f"{d} holds no image files ({', '.join(imio.IMAGE_SUFFIXES)})")
    _field(len(found) <= MAX_ITEMS, "inputs.images", f"{len(found):,} images: at most {MAX_ITEMS:,}")
    enc = inputs.get("encoder", DEFAULT_ENCODER)
    _field(isinstance(enc, str), "inputs.encoder", "an e4e checkpoint path or default model name")
    steps = inputs.get("invert_steps", 0)
    _field(_int(steps, 0, 100_000), "inputs.invert_steps", "hybrid projector steps, an int in 0..100000")
    loss = inputs.get("invert_loss", "probe")
    _field(loss in INVERT_LOSSES, "inputs.invert_loss", f"one of {', '.join(INVERT_LOSSES)}")
    model = inputs.get("loss_model")
    _field(model is None or isinstance(model, str), "inputs.loss_model", "a probe or LPIPS checkpoint")
    _field(loss != "lpips" or model is not None, "inputs.loss_model", "invert_loss lpips needs an LPIPS checkpoint")
    pw = inputs.get("pixel_weight", 0.0)
    _field(_number(pw) and pw >= 0, "inputs.pixel_weight", "a finite number >= 0")
    seed = inputs.get("invert_seed", 0)
    _field(_int(seed, 0, 2 ** 32 - 1), "inputs.invert_seed", "an int in [0, 2**32)")
    stats = [q.stat() for q in found]
    return {"image_dir": d, "image_files": tuple((q.name, st.st_size, st.st_mtime_ns) for q, st in zip(found, stats)),
            "encoder": _model_ref(base, enc), "invert_steps": steps, "invert_loss": loss,
            "loss_model": None if model is None else _model_ref(base, model), "pixel_weight": float(pw),
            "invert_seed": seed}


def _strengths(e: dict, where: str) -> tuple[float, ...]:
    t = e.get("t", 1.0)
    t = t if isinstance(t, list) else [t]
    _field(bool(t) and len(t) <= 1000 and all(_number(v) for v in t), f"{where}.t",
           "a finite number or a list of 1..1000 of them")
    return tuple(float(v) for v in t)


def _parse_local_style(e: dict, where: str, base: Path) -> Edit:
    """``{"method": "local-style", "region": "spot", "t": sigma(s), "model": ..., "seed": 0, "soft": false}``."""
    _field(set(e) <= LOCAL_STYLE_KEYS, where, f"a local-style edit takes {sorted(LOCAL_STYLE_KEYS)}, not "
                                              f"{sorted(set(e) - LOCAL_STYLE_KEYS)}")
    _field(isinstance(e.get("region"), str) and bool(e["region"]), f"{where}.region", "a region name of the model")
    model = e.get("model", DEFAULT_L2SAE)
    _field(isinstance(model, str), f"{where}.model", "an l2sae checkpoint path or default model name")
    seed = e.get("seed", 0)
    _field(_int(seed, 0, 2 ** 32 - 1), f"{where}.seed", "an int in [0, 2**32)")
    _field(isinstance(e.get("soft", False), bool), f"{where}.soft", "true or false")
    return Edit(_model_ref(base, model), 0, _strengths(e, where), LOCAL_STYLE, region=e["region"], seed=seed,
                soft=e.get("soft", False))


def parse_job(obj: Any, base: Path) -> Job:
    """A job dict -> :class:`Job`; relative paths are read from ``base`` (the job file's folder)."""
    _field(isinstance(obj, dict), "(top)", "a job is a JSON object")
    unknown = set(obj) - {"generator", "inputs", "edits", "outputs", "shard_size", "batch_size"}
    _field(not unknown, min(unknown) if unknown else "", "unknown field")
    gen = obj.get("generator")
    _field(gen is None or isinstance(gen, str), "generator", "a checkpoint path, a default model name or null")
    inputs = obj.get("inputs")
    sources = [k for k in ("seeds", "latents", "images") if isinstance(inputs, dict) and k in inputs]
    _field(len(sources) == 1, "inputs", 'give one of {"seeds": "0-511"}, {"latents": "file.npz"} or '
                                        '{"images": "folder"}')
    known = {"seeds", "latents", "images", "psi", *INVERT_KEYS}
    _field(set(inputs) <= known, "inputs", f"unknown keys {sorted(set(inputs) - known)}")
    extra = sorted(set(inputs) & set(INVERT_KEYS))
    _field("images" in inputs or not extra, "inputs", f"{extra} only with image-folder inputs")
    seeds = None
    if "seeds" in inputs:
        text = inputs["seeds"]
        parts = [p.strip() for p in str(text).split(",") if p.strip()] if isinstance(text, str) else []
        matches = [SEEDS.fullmatch(p) for p in parts]
        _field(bool(parts) and all(matches), "inputs.seeds", f"expected ranges like '0-511' or '1,5,9-12', got {text!r}")
        seeds = tuple((int(m[1]), int(m[2] or m[1])) for m in matches)
        _field(all(lo <= hi < 2 ** 32 for lo, hi in seeds), "inputs.seeds", "ranges low-high within [0, 2**32)")
        _field(sum(hi - lo + 1 for lo, hi in seeds) <= MAX_ITEMS, "inputs.seeds", f"at most {MAX_ITEMS:,} seeds")
    latents = inputs.get("latents")
    if latents is not None:
        _field(isinstance(latents, str), "inputs.latents", "a .npz / .npy path")
        latents = str((base / latents) if not Path(latents).is_absolute() else Path(latents))
        _field(Path(latents).is_file(), "inputs.latents", f"no such file {latents}")
    psi = inputs.get("psi", 0.7)
    _field(_number(psi), "inputs.psi", "a finite number")
    raw = obj.get("edits", [])
    _field(isinstance(raw, list) and raw, "edits", "a non-empty list of edits")
    chain = []
    for i, e in enumerate(raw):
        where = f"edits[{i}]"
        if isinstance(e, dict) and e.get("method") == LOCAL_STYLE:
            chain.append(_parse_local_style(e, where, base))
            continue
        _field(not chain or chain[-1].method != LOCAL_STYLE, where,
               "latent edits come before local-style edits (those edit the synthesized images)")
        _field(isinstance(e, dict) and "directions" in e, where, "an object with 'directions'")
        _field(set(e) <= EDIT_KEYS, where, f"unknown keys {sorted(set(e) - EDIT_KEYS)}")
        d = e["directions"]
        _field(isinstance(d, str), f"{where}.directions", "a path")
        d = str(base / d) if not Path(d).is_absolute() else d
        _field(Path(d).exists(), f"{where}.directions", f"no such file or folder {d}")
        k = e.get("k", 0)
        _field(isinstance(k, int) and not isinstance(k, bool) and k >= 0, f"{where}.k", "a direction index >= 0")
        t = _strengths(e, where)
        lay = e.get("layers")
        _field(lay is None or (isinstance(lay, list) and len(lay) == 2 and all(isinstance(v, int) for v in lay)),
               f"{where}.layers", "[start, end] (W+ layers, end exclusive)")
        _field(e.get("space") in (None, "z", "w"), f"{where}.space", "'z' or 'w'")
        _field(e.get("method") is None or e.get("method") in (*edits.FAMILIES, MAPPER), f"{where}.method",
               f"one of {', '.join((*edits.FAMILIES, MAPPER, LOCAL_STYLE))}")
        _field(e.get("method") != MAPPER or not set(e) & {"space", "layers", "eps"}, where,
               "a mapper edit takes directions (the mapper checkpoint), k (its prompt) and t only")
        _field(e.get("eps") is None or (_number(e["eps"]) and e["eps"] > 0), f"{where}.eps", "a positive number")
        chain.append(Edit(d, k, t, e.get("method"), e.get("space"),
                          tuple(lay) if lay else None, e.get("eps")))
    out = obj.get("outputs", {"images": True, "latents": True})
    _field(isinstance(out, dict) and set(out) <= {"images", "latents", "records"}
           and all(isinstance(v, bool) for v in out.values()),
           "outputs", '{"images": true|false, "latents": true|false, "records": false|true}')
    _field(out.get("images", True) or out.get("latents", True) or out.get("records", False), "outputs",
           "nothing to write")
    _field(not out.get("records") or ArrayRecordWriter is not None, "outputs.records",
           "needs the array-record package: pip install 'jaxedit[records]'")
    _field(out.get("images", True) or all(e.method != LOCAL_STYLE for e in chain), "outputs.images",
           "local-style edits change the images: they need images on")
    shard, batch = obj.get("shard_size", 256), obj.get("batch_size", 32)
    for name, v in (("shard_size", shard), ("batch_size", batch)):
        _field(isinstance(v, int) and not isinstance(v, bool) and 1 <= v <= 1_000_000, name, "an int in 1..1e6")
    nvar = int(np.prod([len(e.t) for e in chain]))
    _field(nvar <= 10_000, "edits[].t", f"{nvar} variants (the product of the t lists): at most 10,000")
    return Job(gen, seeds, latents, float(psi), tuple(chain), out.get("images", True), out.get("latents", True),
               shard, batch, **(_parse_images(inputs, base) if "images" in inputs else {}),
               records=out.get("records", False))


def read_job(path: str | Path) -> Job:
    """A job file -> :class:`Job` (every field checked; one-line :class:`JobError` naming the field)."""
    path = Path(path)
    if not path.is_file():
        raise JobError(f"{path}: no such job file")
    return parse_job(files.read_json(path, JobError, max_bytes=1 << 20), path.parent)


# ----------------------------------------------------------------------------- the work
@dataclasses.dataclass
class Plan:
    G: Any
    gparams: Any
    editors: list
    z_edits: int  # the first z_edits editors act on z (seed inputs only)
    seeds: np.ndarray | None  # [N] uint32
    codes: np.ndarray | None  # [N, num_ws, w_dim]
    job: Job
    dtype: str = "float32"  # the synthesis compute dtype, one of DTYPES
    E: Any = None  # image inputs: the e4e encoder, its params and the projector's distance (invert_steps > 0)
    eparams: Any = None
    distance: Any = None

    @property
    def num_items(self) -> int:
        if self.seeds is not None:
            return len(self.seeds)
        return len(self.codes) if self.codes is not None else len(self.job.image_files)

    @property
    def num_shards(self) -> int:
        return -(-self.num_items // self.job.shard_size)


def plan(job: Job, dtype: str = "float32") -> Plan:
    """Load the generator and the editors and check the chain against them (still nothing written).

    ``dtype``: the synthesis compute dtype (one of :data:`DTYPES`; the mapping and the edits stay float32)."""
    if dtype not in DTYPES:
        raise JobError(f"dtype {dtype!r}: one of {', '.join(DTYPES)}")
    G, gp = models.load_generator(checkpoint.resolve(job.generator or DEFAULT_GENERATOR))
    eds = []
    for i, e in enumerate(job.edits):
        if e.method in (MAPPER, LOCAL_STYLE):
            ed = _mapper(i, e, G) if e.method == MAPPER else _local_style(i, e, G)
        else:
            ed = edits.load(e.directions, e.method, space=e.space, layers=e.layers, eps=e.eps)
            ed.check(G)
        if not e.k < ed.num_directions:
            raise JobError(f"job field edits[{i}].k: {e.k} out of range ({e.directions} has {ed.num_directions})")
        eds.append(ed)
    spaces = [ed.space for ed in eds]
    z_edits = next((i for i, s in enumerate(spaces) if s != "z"), len(spaces))
    if "z" in spaces[z_edits:]:
        raise JobError("job field edits: Z-space edits must come before W-space edits (they act on z)")
    seeds = codes = None
    if job.seeds is not None:
        seeds = np.concatenate([np.arange(lo, hi + 1, dtype=np.uint64) for lo, hi in job.seeds]).astype(np.uint32)
    elif job.image_dir is not None:
        if z_edits:
            raise JobError("job field edits: Z-space edits need seed inputs (image inputs are inverted to W+)")
        E, ep, distance = _inversion(job, G)
        return Plan(G, gp, eds, z_edits, None, None, job, dtype, E, ep, distance)
    else:
        with np.load(job.latents, allow_pickle=False) if job.latents.endswith(".npz") else _npy(job.latents) as z:
            codes = np.asarray(z["ws"] if "ws" in z else z[""], np.float32)
        if codes.ndim != 3 or codes.shape[1:] != (G.cfg.num_ws, G.cfg.w_dim) or not np.all(np.isfinite(codes)):
            raise JobError(f"job field inputs.latents: ws {list(codes.shape)}, expected finite "
                           f"[N, {G.cfg.num_ws}, {G.cfg.w_dim}]")
        if z_edits:
            raise JobError("job field edits: Z-space edits need seed inputs (latent inputs are W+)")
    return Plan(G, gp, eds, z_edits, seeds, codes, job, dtype)


@dataclasses.dataclass(frozen=True)
class MapperEdit:
    """A StyleCLIP latent mapper checkpoint as a W+ edit: ``w + t * strength * M_k(w)`` (``t = 1``: the mapper's
    own edit; ``k``: its prompt)."""

    M: mapper_lib.Mapper
    params: Any  # stacked [P, ...], one mapper per prompt
    prompts: tuple[str, ...]
    space: str = "w"

    @property
    def num_directions(self) -> int:
        return len(self.prompts)

    def apply(self, ws: jax.Array, k: int, t: jax.Array) -> jax.Array:
        """ws ``[B, num_ws, w_dim]``, ``t [B]`` -> the edited ws."""
        pk = jax.tree.map(lambda a: a[k], self.params)
        return ws + (t * self.M.cfg.strength)[:, None, None] * self.M.delta(pk, ws)


def _mapper(i: int, e: Edit, G) -> MapperEdit:
    M, params, prompts = mapper_lib.load_mappers(e.directions)
    if (M.cfg.num_ws, M.cfg.w_dim) != (G.cfg.num_ws, G.cfg.w_dim):
        raise JobError(f"job field edits[{i}].directions: the mapper maps W+ {M.cfg.num_ws} x {M.cfg.w_dim}, the "
                       f"generator's is {G.cfg.num_ws} x {G.cfg.w_dim}")
    return MapperEdit(M, params, tuple(prompts))


@dataclasses.dataclass(frozen=True)
class LocalStyleEdit:
    """A Latents2Semantics model as an image edit after the synthesis: region ``region``'s style moved by ``t`` x
    one Gaussian draw per item (key ``fold_in(key(seed), i)``: every variant of item ``i`` scales the same draw)
    (:func:`jaxedit.edits.local_style.style_noise`). It changes the images, not the latents."""

    editor: local_style.LocalStyle
    region: int
    seed: int
    soft: bool
    space: str = "image"
    num_directions: int = 1


def _local_style(i: int, e: Edit, G) -> LocalStyleEdit:
    M, params = models.load(checkpoint.resolve(e.directions))
    where = f"job field edits[{i}]"
    if not isinstance(M, L2SAE):
        raise JobError(f"{where}.model: {e.directions} is not a Latents2Semantics (l2sae) checkpoint")
    if M.cfg.resolution != G.cfg.img_resolution:
        raise JobError(f"{where}.model: reads {M.cfg.resolution} px images, the generator makes "
                       f"{G.cfg.img_resolution} px")
    if e.region not in M.cfg.regions:
        raise JobError(f"{where}.region: {e.region!r} is not one of the model's regions ({', '.join(M.cfg.regions)})")
    return LocalStyleEdit(local_style.LocalStyle(params, M), M.region_index(e.region), e.seed, e.soft)


def _inversion(job: Job, G) -> tuple[Any, Any, Any]:
    """Image inputs: check every file's header against the generator (no pixels decoded), load the encoder and
    the projector's distance (``invert_steps > 0``) -> ``(E, eparams, distance or None)``."""
    res = G.cfg.img_resolution
    for name, _, _ in job.image_files:
        size = imio.image_size(Path(job.image_dir) / name)
        if size != (res, res):
            raise JobError(f"job field inputs.images: {Path(job.image_dir) / name} is {size[0]}x{size[1]}, the "
                           f"generator makes {res}x{res} images (resize them first)")
    E, ep = models.load(checkpoint.resolve(job.encoder))
    if not isinstance(E, e4e.Encoder):
        raise JobError(f"job field inputs.encoder: {job.encoder} is not an e4e encoder checkpoint")
    if (E.cfg.n_styles, E.cfg.w_dim) != (G.cfg.num_ws, G.cfg.w_dim):
        raise JobError(f"job field inputs.encoder: codes {E.cfg.n_styles} x {E.cfg.w_dim}, but the generator's W+ "
                       f"is {G.cfg.num_ws} x {G.cfg.w_dim}")
    if not job.invert_steps:
        return E, ep, None
    if job.invert_loss == "pixel":
        distance = invert.pixel_distance
    elif job.invert_loss == "probe":
        P, pp = probe.load(checkpoint.resolve(job.loss_model or DEFAULT_PROBE))
        if P.cfg.resolution != res:
            raise JobError(f"job field inputs.loss_model: the probe reads {P.cfg.resolution} px images, the "
                           f"generator makes {res} px")
        distance = invert.probe_distance(P, pp)
    else:
        lp, lpp = models.load(checkpoint.resolve(job.loss_model))
        if not isinstance(lp, lpips.LPIPS):
            raise JobError(f"job field inputs.loss_model: {job.loss_model} is not an LPIPS checkpoint")
        distance = invert.lpips_distance(lp, lpp)
    if not job.pixel_weight:
        return E, ep, distance

    def with_pixels(a, b):
        return distance(a, b) + job.pixel_weight * invert.pixel_distance(a, b)

    return E, ep, with_pixels


def _invert(p: Plan, img: jax.Array, index: jax.Array) -> jax.Array:
    """Images ``[B, H, W, 3]`` uint8 of items ``index [B]`` -> W+ codes ``[B, num_ws, w_dim]``: the encoder, then
    ``invert_steps`` of the hybrid projector in W+ (:meth:`jaxedit.invert.ProjectorConfig.hybrid`) with the
    generator's own noise kept fixed, as the codes are rendered (item i's key: ``fold_in(key(invert_seed), i)``)."""
    G, job = p.G, p.job
    x = img.astype(jnp.float32) / 127.5 - 1.0  # as jaxedit.io.images.from_uint8
    ws = invert.encode(p.E, p.eparams, x, min(G.cfg.img_resolution, 256))
    if not job.invert_steps:
        return ws
    keys = jax.vmap(lambda i: jax.random.fold_in(jax.random.key(job.invert_seed), i))(index)
    cfg = invert.ProjectorConfig.hybrid(steps=job.invert_steps, mode="w+", optimize_noise=False)
    return invert.project(G, p.gparams, p.distance, x, keys, cfg, init=ws).ws


class _npy:
    """``np.load`` of a ``.npy`` as a one-array mapping under the key ``""`` (a context manager like NpzFile)."""

    def __init__(self, path):
        self.a = np.load(path, allow_pickle=False)

    def __enter__(self):
        return {"": self.a}

    def __exit__(self, *exc):
        return False


def _z_of(seeds: np.ndarray, z_dim: int) -> np.ndarray:
    """NVIDIA's ``generate.py`` z of each seed (``RandomState(seed).randn(z_dim)``; one generator reseeded: the
    same numbers, 20x faster than a new ``RandomState`` per seed)."""
    rs, z = np.random.RandomState(), np.empty((len(seeds), z_dim), np.float32)
    for i, s in enumerate(seeds):
        rs.seed(int(s))
        z[i] = rs.randn(z_dim)
    return z


def make_program(p: Plan):
    """One jitted program: a batch of items (``x``: z ``[B, z_dim]``, W+ codes ``[B, L, d]`` or uint8 images
    ``[B, H, W, 3]`` with their ``index [B]``, inverted first) -> W+ codes ``[B, V, L, d]`` (and images
    ``[B, V, H, W, 3]``).

    The mapping and the edits run in float32; the synthesis in ``p.dtype`` (params' float leaves and codes cast
    inside the program, the images back to float32 before the uint8 conversion)."""
    G, gp, eds, nz = p.G, p.gparams, p.editors, p.z_edits
    cdt = jnp.dtype(p.dtype)
    ks = [e.k for e in p.job.edits]
    ts = jnp.asarray(p.job.variants, jnp.float32)  # [V, n_edits]

    def one_variant(x, is_z, t):
        B = x.shape[0]
        for i, ed in enumerate(eds):
            if isinstance(ed, LocalStyleEdit):  # the images' edits, after the synthesis
                break
            if i == nz and is_z:
                x, is_z = G.mapping(gp, x, psi=p.job.psi), False
            tb = jnp.full((B,), t[i])
            x = ed.apply(x, ks[i], tb) if isinstance(ed, MapperEdit) else edits.apply(ed, x, ks[i], tb)
        if is_z:
            x = G.mapping(gp, x, psi=p.job.psi)
        return x

    @jax.jit
    def run(batch):
        x = batch["x"] if p.E is None else _invert(p, batch["x"], batch["index"])
        ws = jax.vmap(lambda t: one_variant(x, p.seeds is not None, t), out_axes=1)(ts)  # [B, V, L, d]
        out = {"ws": ws}
        if p.job.images:
            flat = ws.reshape(-1, *ws.shape[2:])
            sp = gp
            if cdt != jnp.float32:
                sp = jax.tree.map(lambda a: a.astype(cdt) if jnp.issubdtype(a.dtype, jnp.floating) else a, gp)
            img = G.synthesis(sp, flat.astype(cdt), noise_mode="const").astype(jnp.float32)
            for j, ed in enumerate(eds):
                if isinstance(ed, LocalStyleEdit):  # rows item-major: item b's variant v is row b * V + v
                    keys = jax.vmap(lambda i, s=ed.seed: jax.random.fold_in(jax.random.key(s), i))(batch["index"])
                    img = local_style.style_noise(ed.editor, img, ed.region, jnp.tile(ts[:, j], ws.shape[0]),
                                                  jnp.repeat(keys, ws.shape[1]), soft=ed.soft)
            out["img"] = jnp.clip(jnp.rint((img + 1) * 127.5), 0, 255).astype(jnp.uint8).reshape(
                *ws.shape[:2], *img.shape[1:])
        return out

    return run


def image_name(i: int, v: int, num_variants: int) -> str:
    return f"{i:08d}.png" if num_variants == 1 else f"{i:08d}-{v:03d}.png"


def _write(path: Path, blobs: list[bytes], names: list[str]) -> None:
    """Write files atomically (a fixed temp name beside each, then rename) without fsync: :func:`_sync` makes a
    whole shard durable at once before its manifest. A temp file left by a kill is overwritten by the rerun
    (its shard is uncommitted)."""
    for blob, name in zip(blobs, names):
        tmp = path / f".{name}.tmp"
        with open(tmp, "wb") as f:
            f.write(blob)
        os.replace(tmp, path / name)


try:
    _LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform.startswith("linux") else None
    _LIBC.syncfs  # noqa: B018 - present in glibc and musl
except (OSError, AttributeError):
    _LIBC = None


def _sync(path: Path) -> None:
    """Flush the filesystem holding ``path`` (Linux ``syncfs``: one call per shard instead of an fsync per file,
    measured 1.7 ms per 32 px PNG here); elsewhere ``os.sync``."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if _LIBC is None or _LIBC.syncfs(fd) != 0:
            os.sync()
    finally:
        os.close(fd)


def _inputs(p: Plan, lo: int, hi: int) -> dict[str, np.ndarray]:
    """Items ``lo:hi`` on the host: seeds' z, W+ codes, or the images (decoded here, uint8 to the program)."""
    index = np.arange(lo, hi, dtype=np.uint32)  # the projector's and local style's per-item keys
    if p.seeds is not None:
        return {"x": _z_of(p.seeds[lo:hi], p.G.cfg.z_dim), "index": index}
    if p.codes is not None:
        return {"x": p.codes[lo:hi], "index": index}
    paths = [Path(p.job.image_dir) / name for name, _, _ in p.job.image_files[lo:hi]]
    img, _ = imio.load_images(paths, p.G.cfg.img_resolution)
    return {"x": imio.to_uint8(img), "index": index}


def run_job(p: Plan, out: Path, *, process_index: int = 0, process_count: int = 1, signals=None,
            progress=None) -> dict[str, Any]:
    """Compute and commit this process's uncommitted shards; -> counts. ``signals.check()`` between shards.

    Pipelined: shard ``s + 1``'s inputs are read (a thread) and ``s``'s PNG encoding and writes (threads)
    overlap shard ``s + 1``'s compute; then the filesystem is synced once and ``s``'s manifest written (the
    commit), so every committed shard's files are durable and a kill at any point leaves uncommitted shards only.
    Each process computes on its own (local) devices."""
    job, V = p.job, len(p.job.variants)
    (out / "manifest").mkdir(parents=True, exist_ok=True)
    if job.images:
        (out / "images").mkdir(exist_ok=True)
    if job.latents_out:
        (out / "shards").mkdir(exist_ok=True)
    if job.records:
        (out / "records").mkdir(exist_ok=True)
    run = make_program(p)
    mesh = parallel.data_mesh(jax.local_devices())
    mine = [s for s in range(p.num_shards) if s % process_count == process_index]
    todo = [s for s in mine if not (out / "manifest" / f"shard-{s:06d}.json").exists()]
    done_items = 0
    workers = 2

    def write_images(img, lo, part):  # one writer thread's share of a shard
        idx = range(part, len(img), workers)
        names = [image_name(lo + j // V, j % V, V) for j in idx]
        _write(out / "images", imio.encode_pngs(img[part::workers]), names)

    def write_latents(file, **arrays):
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        _write(out / "shards", [buf.getvalue()], [file])

    def write_records(file, index, ws, img):  # one record per (item, variant), in the .npz shard's order
        tmp = out / "records" / f".{file}.tmp"
        w = ArrayRecordWriter(str(tmp), "group_size:1")  # random access per record
        for r in range(len(ws)):
            buf = io.BytesIO()
            np.savez(buf, index=index[r], variant=np.int64(r % V), latent=ws[r],
                     **({"image": img[r]} if img is not None else {}),
                     **({"name": np.str_(job.image_files[index[r]][0])} if job.image_files else {}))
            w.write(buf.getvalue())
        w.close()
        os.replace(tmp, out / "records" / file)

    def commit(s, lo, hi, futures):
        nonlocal done_items
        for f in futures:
            f.result()
        _sync(out)
        files.write_json(out / "manifest" / f"shard-{s:06d}.json",
                         {"shard": s, "items": [lo, hi], "variants": V, "process": process_index}, note=False)
        done_items += hi - lo
        if progress is not None:
            progress(done_items, s)

    def span(s):  # shard s's items lo:hi
        return s * job.shard_size, min((s + 1) * job.shard_size, p.num_items)

    with ThreadPoolExecutor(max_workers=workers) as pool, ThreadPoolExecutor(max_workers=1) as reader:
        pending = None
        ahead = reader.submit(_inputs, p, *span(todo[0])) if todo else None  # one shard read ahead: backpressure
        for j, s in enumerate(todo):
            lo, hi = span(s)
            x = ahead.result()
            if j + 1 < len(todo):
                ahead = reader.submit(_inputs, p, *span(todo[j + 1]))
            outs = list(parallel.map_batches(run, x, job.batch_size, mesh))
            if pending is not None:
                commit(*pending)
                pending = None
                if signals is not None:
                    signals.check()
            ws = np.concatenate([o["ws"] for o in outs])
            futures, img = [], None
            if job.images:
                img = np.concatenate([o["img"] for o in outs])
                img = img.reshape(-1, *img.shape[2:])  # item-major, then variant
                futures += [pool.submit(write_images, img, lo, k) for k in range(workers)]
            if job.records:
                futures.append(pool.submit(write_records, f"shard-{s:06d}.array_record",
                                           np.repeat(np.arange(lo, hi, dtype=np.int64), V),
                                           ws.reshape(-1, *ws.shape[2:]).astype(np.float32), img))
            if job.latents_out:
                idx = np.repeat(np.arange(lo, hi, dtype=np.int64), V)
                names = {"name": np.repeat([f[0] for f in job.image_files[lo:hi]], V)} if job.image_files else {}
                futures.append(pool.submit(write_latents, f"shard-{s:06d}.npz", index=idx,
                                           variant=np.tile(np.arange(V, dtype=np.int64), hi - lo),
                                           latent=ws.reshape(-1, *ws.shape[2:]).astype(np.float32), **names))
            pending = (s, lo, hi, futures)
        if pending is not None:
            commit(*pending)
            if signals is not None:
                signals.check()
    return {"shards": len(mine), "computed": len(todo), "items": done_items}


LATER_FIELDS = ("image_dir", "image_files", *INVERT_KEYS, "records")  # recorded only when not at their default


def job_record(job: Job, dtype: str = "float32") -> dict[str, Any]:
    """What ``DIR/job.json`` keeps: the job and the compute dtype (both change the results; a rerun must match).
    Fields added after the first jobs were written (image inputs: ``image_files`` names item ``i``; records) are
    kept only when not at their default, so an older job's folder still matches its job."""
    defaults = {f.name: f.default for f in dataclasses.fields(Job)}
    rec = {k: v for k, v in dataclasses.asdict(job).items() if k not in LATER_FIELDS or v != defaults[k]}
    later = {f.name: f.default for f in dataclasses.fields(Edit) if f.name in ("region", "seed", "soft")}
    rec["edits"] = [{k: v for k, v in e.items() if k not in later or v != later[k]} for e in rec["edits"]]
    return {"job": json.loads(json.dumps(rec)), "dtype": dtype}


def record_matches(stored: Any, job: Job, dtype: str = "float32") -> bool:
    """Whether a stored ``DIR/job.json`` is this job at this dtype (a record without a dtype, written before
    ``--dtype`` existed, is the bare job: float32)."""
    record = job_record(job, dtype)
    return stored == record or (dtype == "float32" and stored == record["job"])


def load_items(out: Path) -> dict[str, np.ndarray]:
    """Every committed shard's latents, sorted by (index, variant): ``index``, ``variant``, ``latent`` (and
    ``name``, the input file, for image-folder inputs)."""
    parts = []
    for f in sorted((out / "shards").glob("shard-*.npz")):
        with np.load(f, allow_pickle=False) as z:
            parts.append({k: z[k] for k in ("index", "variant", "latent", "name") if k in z.files})
    cat = {k: np.concatenate([q[k] for q in parts]) for k in parts[0]}
    order = np.lexsort((cat["variant"], cat["index"]))
    return {k: v[order] for k, v in cat.items()}


__all__ = ["DTYPES", "Job", "JobError", "job_record", "load_items", "parse_job", "plan", "read_job",
           "record_matches", "run_job"]
