"""A small CLIP for the shapes world, trained contrastively on renders and their captions.

``jaxedit train-clip DST`` learns (1) a byte-level BPE merges file from the caption templates
(same format as OpenAI's ``bpe_simple_vocab_16e6.txt.gz``, so the same tokenizer reads it; kept
in the run folder, copied next to the weights) and (2) a small ViT + text transformer
(``jaxedit.models.clip``) with the symmetric InfoNCE loss, on fresh renders every step
(``jaxedit.data.shapes``; images go in as [-1, 1] pixels at the render size, preprocess mode
``"none"``). It then reports zero-shot retrieval accuracy per factor word on held-out renders
(:func:`zero_shot`): for each factor (shape, colour, size, spot colour, spot size, position,
background) every render is classified by the most similar of that factor's prompts.

Training is a resumable run folder (:mod:`jaxedit.train.runs`; default ``DST.run``): rerunning the
same command resumes, a larger ``steps`` extends the run (the cosine schedule keeps the horizon
``decay_steps`` it started with, then stays at its final rate), the finished model goes to DST.
"""

from __future__ import annotations

import collections
import dataclasses
import gzip
import math
import re
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxedit.config import JSONConfig
from jaxedit.data import shapes
from jaxedit.errors import InputError
from jaxedit.io import checkpoint
from jaxedit.models.clip import CLIP, CLIPConfig
from jaxedit.models.clip.tokenizer import Tokenizer
from jaxedit.train import runs

EVAL_SALT = 0x5EED
VOCAB_FILE = "bpe_vocab.txt.gz"


# ------------------------------------------------------------------------------ BPE merges
def _words(text: str) -> list[str]:
    """CLIP's pre-tokenization restricted to ASCII captions: lower-case letter runs, digits,
    other non-space runs."""
    return re.findall(r"[a-z]+|[0-9]|[^\sa-z0-9]+", text.lower())


def learn_merges(texts: list[str], max_merges: int = 2000) -> list[tuple[str, str]]:
    """Byte-level BPE merges (CLIP convention: the last symbol of a word carries ``</w>``),
    greedily merging the most frequent adjacent pair until every word is one symbol or
    ``max_merges`` is reached. ASCII captions only (printable ASCII bytes map to themselves in
    CLIP's byte-to-unicode table)."""
    counts = collections.Counter(w for t in texts for w in _words(t))
    if any(ord(c) < 33 or ord(c) > 126 for w in counts for c in w):
        raise InputError("learn_merges: captions must be printable ASCII")
    words = {w: (*w[:-1], w[-1] + "</w>") for w in counts}
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: collections.Counter = collections.Counter()
        for w, sym in words.items():
            for a, b in zip(sym, sym[1:]):
                pairs[a, b] += counts[w]
        if not pairs:
            break
        (a, b), _ = max(pairs.items(), key=lambda kv: (kv[1], kv[0]))
        merges.append((a, b))
        for w, sym in words.items():
            out, i = [], 0
            while i < len(sym):
                if i + 1 < len(sym) and sym[i] == a and sym[i + 1] == b:
                    out.append(a + b)
                    i += 2
                else:
                    out.append(sym[i])
                    i += 1
            words[w] = tuple(out)
    return merges


def write_merges(merges: list[tuple[str, str]], path: str | Path) -> Path:
    """Write merges in the OpenAI file format (gzip, a version line, then ``a b`` per line)."""
    path = Path(path)
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2 (jaxedit shapes-world captions)\n")
        f.writelines(f"{a} {b}\n" for a, b in merges)
    return path


def caption_corpus(n: int, seed: int, data: shapes.ShapesConfig, partial: float = 0.0) -> list[str]:
    f = shapes.sample_factors(jax.random.key(seed), n, data)
    return shapes.captions(f, seed, data, partial=partial)


# ------------------------------------------------------------------------------ training
@dataclasses.dataclass(frozen=True)
class CLIPTrainConfig(JSONConfig):
    steps: int = 3000
    decay_steps: int | None = None  # cosine schedule horizon; None: the run's first ``steps``
    batch: int = 128
    lr: float = 1e-3
    warmup: int = 200
    weight_decay: float = 0.1
    seed: int = 0
    resolution: int = 32
    context_length: int = 32
    embed_dim: int = 128
    vision_width: int = 128
    vision_layers: int = 4
    vision_patch_size: int = 4
    text_width: int = 128
    text_layers: int = 4
    heads: int = 4
    corpus: int = 20000  # captions the BPE merges are learned from
    eval_images: int = 2048
    partial_captions: float = 0.0  # fraction of captions naming a random subset of the factors
    ckpt_every: int = 250  # steps between checkpoints of the run folder
    log_every: int = 50  # steps between log.jsonl rows


# Fields that may change when a run resumes (a larger ``steps`` extends it).
MUTABLE = frozenset({"steps", "ckpt_every", "log_every"})


def model_config(cfg: CLIPTrainConfig, vocab_size: int) -> CLIPConfig:
    return CLIPConfig(embed_dim=cfg.embed_dim, image_resolution=cfg.resolution, vision_layers=cfg.vision_layers,
                      vision_width=cfg.vision_width, vision_patch_size=cfg.vision_patch_size,
                      context_length=cfg.context_length, vocab_size=vocab_size, transformer_width=cfg.text_width,
                      transformer_heads=cfg.heads, transformer_layers=cfg.text_layers, vision_heads=cfg.heads)


def clip_loss(model, params, images: jax.Array, tokens: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Symmetric InfoNCE over the batch -> (loss, image-to-text top-1 accuracy)."""
    logits, _ = model(params, images, tokens)
    labels = jnp.arange(logits.shape[0])
    loss = 0.5 * (optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
                  + optax.softmax_cross_entropy_with_integer_labels(logits.T, labels).mean())
    return loss, jnp.mean(jnp.argmax(logits, -1) == labels)


def train(cfg: CLIPTrainConfig | None, dst: str | Path, *, run_dir: str | Path | None = None, force: bool = False,
          stop_at: int | None = None, progress: bool = True) -> tuple[Any, dict[str, Any]]:
    """Learn the merges, train (or resume) in ``run_dir``, evaluate zero-shot, save to ``dst``; -> (params, report).

    ``run_dir`` defaults to ``DST.run``; ``cfg`` None resumes with its stored config, otherwise
    only :data:`MUTABLE` may differ. Every step's batch is a function of the seed and the step
    index, so a resumed run equals an uninterrupted one. ``stop_at``: end this call at that step
    (nothing is evaluated or saved to ``dst``; the report has only ``step``).
    """
    dst = checkpoint.check_writable(dst, force, "clip", new_files=(VOCAB_FILE,))
    run_dir = Path(run_dir) if run_dir is not None else runs.default_run_dir(dst)
    cfg = runs.resolve_with_horizon(run_dir, cfg, CLIPTrainConfig.from_dict, MUTABLE)
    data = shapes.ShapesConfig(resolution=cfg.resolution)
    merges = learn_merges(caption_corpus(cfg.corpus, cfg.seed + 7, data, cfg.partial_captions))
    tok = Tokenizer(merges)
    model = CLIP(model_config(cfg, tok.vocab_size))
    key = jax.random.key(cfg.seed)
    horizon = cfg.decay_steps or cfg.steps
    sched = optax.warmup_cosine_decay_schedule(0.0, cfg.lr, min(cfg.warmup, horizon // 4), horizon, cfg.lr * 0.02)
    opt = optax.adamw(sched, weight_decay=cfg.weight_decay)

    def init():
        params = model.init(jax.random.fold_in(key, 1))
        return {"params": params, "opt": opt.init(params)}

    @jax.jit
    def render(k):
        b = shapes.sample(k, cfg.batch, data)
        return b["image"], b["factors"]

    @jax.jit
    def update(state, images, tokens):
        (loss, acc), grads = jax.value_and_grad(lambda p: clip_loss(model, p, images, tokens),
                                                has_aux=True)(state["params"])
        updates, opt_state = opt.update(grads, state["opt"], state["params"])
        params = optax.apply_updates(state["params"], updates)
        params["logit_scale"] = jnp.clip(params["logit_scale"], 0.0, math.log(100.0))  # the reference's clamp
        return {"params": params, "opt": opt_state}, {"loss": loss, "batch_acc": acc}

    def step(state, i):  # captions are made on the host from the rendered factors
        images, factors = render(jax.random.fold_in(key, 1000 + i))
        texts = shapes.captions(factors, 1000 + i, data, partial=cfg.partial_captions)
        return update(state, images, tok(texts, context_length=cfg.context_length, truncate=True))

    total = cfg.steps if stop_at is None else min(stop_at, cfg.steps)
    with runs.Run(run_dir, cfg, desc="train-clip", progress=progress) as run:
        vocab = write_merges(merges, run_dir / VOCAB_FILE)  # DST gets a copy at the end
        state, start = run.resume(init)
        state, summary = run.loop(state, step, start=start, total=total, ckpt_every=cfg.ckpt_every,
                                  log_every=cfg.log_every)
    params = state["params"]
    if summary["step"] < cfg.steps:
        return params, {"step": summary["step"]}
    report = zero_shot(model, params, tok, jax.random.fold_in(key, EVAL_SALT), cfg.eval_images, data,
                       cfg.context_length)
    report.update(step=summary["step"], train_seconds=summary["seconds"], batch=cfg.batch, merges=len(merges),
                  vocab_size=tok.vocab_size, resumed_at=start, run_dir=str(run_dir))
    checkpoint.save(dst, kind="clip", model=model.cfg.to_dict(), params=params,
                    source={"trained_by": "jaxedit train-clip", "train_config": cfg.to_dict(),
                            "vocab": VOCAB_FILE, "preprocess": "none"},
                    extra={"metrics": report}, files={VOCAB_FILE: vocab}, force=force)
    return params, report


# ------------------------------------------------------------------------------ zero-shot
def factor_prompts() -> dict[str, dict[str, str]]:
    """For each factor, ``{canonical word: prompt}`` (the words of ``shapes.describe``)."""
    colors = sorted(shapes.COLOR_SYNONYMS)
    sizes = ("small", "medium", "large")
    positions = ("centre", "left", "right", "top", "bottom", "top left", "top right", "bottom left", "bottom right")
    return {
        "shape": {s: f"a {s}" for s in shapes.SHAPE_NAMES},
        "color": {c: f"a {c} shape" for c in colors},
        "size": {s: f"a {s} shape" for s in sizes},
        "spot_color": {c: f"with a {c} spot" for c in colors},
        "spot_size": {s: f"with a {s} spot" for s in sizes},
        "position": {p: f"a shape {shapes._position_phrases(p)[0]}" for p in positions},
        "background": {c: f"on a {c} background" for c in colors},
    }


def zero_shot(model, params, tok, key: jax.Array, n: int, data: shapes.ShapesConfig, context_length: int,
              batch: int = 256) -> dict[str, Any]:
    """Zero-shot accuracy per factor on ``n`` held-out renders (and the chance level)."""
    prompts = factor_prompts()
    text = {f: model.encode_text(params, jnp.asarray(tok(list(p.values()), context_length=context_length)))
            for f, p in prompts.items()}
    text = {f: t / jnp.linalg.norm(t, axis=-1, keepdims=True) for f, t in text.items()}
    enc = jax.jit(lambda im: model.encode_image(params, im))
    hits = collections.Counter()
    count = 0
    for i in range(max(1, n // batch)):
        b = shapes.sample(jax.random.fold_in(key, i), batch, data)
        e = enc(b["image"])
        e = np.asarray(e / jnp.linalg.norm(e, axis=-1, keepdims=True))
        cols = {k: np.asarray(v) for k, v in b["factors"].items()}
        truth = [shapes.describe({k: c[j] for k, c in cols.items()}, data) for j in range(batch)]
        for f, t in text.items():
            words = list(prompts[f])
            pred = np.argmax(e @ np.asarray(t).T, -1)
            hits[f] += sum(words[p] == truth[j][f] for j, p in enumerate(pred))
        count += batch
    return {"images": count, "zero_shot_accuracy": {f: hits[f] / count for f in prompts},
            "chance": {f: 1 / len(p) for f, p in prompts.items()}}
