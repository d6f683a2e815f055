"""The shapes-world CLIP's own BPE merges: learned from captions, read back by the CLIP tokenizer."""

import numpy as np

from jaxedit.data import shapes
from jaxedit.text.tokenizer import Tokenizer
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
