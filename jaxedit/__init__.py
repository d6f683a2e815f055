"""jaxedit: semantic image editing in the latent spaces of pretrained generators, in JAX."""

__version__ = "0.1.0"
