"""The shapes-world CLIP's own BPE merges: learned from captions, read back by the CLIP tokenizer."""

import json

import numpy as np
import pytest

from jaxedit.data import shapes
from jaxedit.models.clip.tokenizer import Tokenizer
from jaxedit.train import clip as C


def test_learned_merges_tokenize_captions_word_per_token(tmp_path):
    corpus = C.caption_corpus(2000, 0, shapes.ShapesConfig())
    merges = C.learn_merges(corpus)
    tok = Tokenizer.from_file(C.write_merges(merges, tmp_path / C.VOCAB_FILE))
    assert tok.vocab_size == 512 + len(merges) + 2
    held_out = C.caption_corpus(50, 1, shapes.ShapesConfig())
    for text in held_out:
        ids = tok.encode(text)
        assert len(ids) == len(C._words(text))  # every word (and punctuation run) is one token
        assert tok.decode(ids).strip() == " ".join(C._words(text)) or tok.decode(ids).replace(" ", "") == \
            "".join(C._words(text))
    batch = tok(held_out[:4], context_length=32, truncate=True)
    assert batch.shape == (4, 32) and np.all(batch[:, 0] == tok.sot_token)


def test_zero_shot_prompts_cover_every_caption_word():
    prompts = C.factor_prompts()
    f = shapes.sample_factors(__import__("jax").random.key(0), 64, shapes.ShapesConfig())
    cols = {k: np.asarray(v) for k, v in f.items()}
    for i in range(64):
        words = shapes.describe({k: c[i] for k, c in cols.items()})
        for factor, word in words.items():
            assert word in prompts[factor], (factor, word)


def test_partial_captions_name_only_true_factors():
    f = shapes.sample_factors(__import__("jax").random.key(1), 200, shapes.ShapesConfig())
    caps = shapes.captions(f, 5, partial=1.0)
    assert caps == shapes.captions(f, 5, partial=1.0)  # deterministic
    assert len(set(caps)) > 150 and min(len(c.split()) for c in caps) <= 3  # e.g. "a red object"
    cols = {k: np.asarray(v) for k, v in f.items()}
    for i, text in enumerate(caps):
        truth = shapes.describe({k: c[i] for k, c in cols.items()})
        colours = [w for w in shapes.COLOR_SYNONYMS for syn in shapes.COLOR_SYNONYMS[w] if f" {syn} " in f" {text} "]
        allowed = {truth["color"], truth["spot_color"], truth["background"]}
        assert set(colours) <= allowed, (text, truth)
    assert shapes.captions(f, 5) == shapes.captions(f, 5, partial=0.0)  # full captions unchanged


@pytest.mark.slow  # a long duplicate (default-run budget)
def test_run_folder_resumes_extends_and_refuses_changes(tmp_path):
    import dataclasses

    import jax
    import pytest

    from jaxedit.errors import ConfigError

    cfg = C.CLIPTrainConfig(steps=4, batch=8, ckpt_every=2, log_every=1, corpus=300, eval_images=8, embed_dim=16,
                            vision_width=16, vision_layers=1, text_width=16, text_layers=1, heads=2,
                            resolution=16, context_length=24, partial_captions=0.5)
    full, report = C.train(cfg, tmp_path / "a", progress=False)  # run folder a.run beside DST
    assert report["step"] == 4
    assert (tmp_path / "a" / C.VOCAB_FILE).is_file() and (tmp_path / "a.run" / C.VOCAB_FILE).is_file()
    assert C.CLIPTrainConfig.from_dict(json.loads((tmp_path / "a.run" / "config.json").read_text())).decay_steps == 4

    _, report = C.train(cfg, tmp_path / "b", progress=False, stop_at=2)  # as if killed after step 2's save
    assert report == {"step": 2} and not (tmp_path / "b").exists()
    resumed, report = C.train(None, tmp_path / "b", progress=False)  # the stored config
    assert report["resumed_at"] == 2
    for a, b in zip(jax.tree.leaves(full), jax.tree.leaves(resumed)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

    _, report = C.train(dataclasses.replace(cfg, steps=5), tmp_path / "b", force=True, progress=False)  # extends
    assert (report["resumed_at"], report["step"]) == (4, 5)
    with pytest.raises(ConfigError, match="lr 0.001 -> 0.5"):
        C.train(dataclasses.replace(cfg, steps=5, lr=0.5), tmp_path / "c", run_dir=tmp_path / "b.run")
