"""OpenAI CLIP: image and text towers, preprocessing and the byte-level BPE tokenizer."""

from jaxedit.models.clip.model import (
                                       CLIP,
                                       CLIP_MEAN,
                                       CLIP_STD,
                                       PREPROCESS_MODES,
                                       CLIPConfig,
                                       Guide,
                                       load,
                                       load_guide,
                                       preprocess,
)
from jaxedit.models.clip.tokenizer import Tokenizer

__all__ = ["CLIP", "CLIP_MEAN", "CLIP_STD", "PREPROCESS_MODES", "CLIPConfig", "Guide", "Tokenizer", "load",
           "load_guide", "preprocess"]
