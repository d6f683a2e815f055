"""Text utilities: CLIP's byte-level BPE tokenizer (:mod:`jaxedit.text.tokenizer`)."""
