"""StyleGAN2 (NVIDIA config-e/f and rosinality layouts): the generator and the discriminator."""

from jaxedit.io import checkpoint
from jaxedit.models.stylegan2.discriminator import Discriminator, DiscriminatorConfig
from jaxedit.models.stylegan2.generator import NOISE_MODES, StyleGAN2, StyleGAN2Config, WeightShift, feature_layout

KIND = "stylegan2"


def load(path) -> tuple[StyleGAN2, dict]:
    """A ``kind="stylegan2"`` checkpoint (``jaxedit convert stylegan2``, ``train-gan``) -> ``(StyleGAN2, params)``."""
    return checkpoint.load_handle(path, KIND, lambda cfg: StyleGAN2(StyleGAN2Config.from_dict(cfg)))


__all__ = ["KIND", "Discriminator", "DiscriminatorConfig", "NOISE_MODES", "StyleGAN2", "StyleGAN2Config",
           "WeightShift", "feature_layout", "load"]
