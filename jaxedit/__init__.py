"""jaxedit: semantic image editing in the latent spaces of pretrained generators, in JAX.

``model, params = jaxedit.load(path)`` reads any jaxedit checkpoint (or an embedded default model
by name); editors: :mod:`jaxedit.edits` (``jaxedit.edits.load``, ``jaxedit.edits.apply``).
"""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `jaxedit.load` imports JAX and the models on first use, so `import jaxedit` (and the CLI's
    # --help) stays instant.
    if name == "load":
        from jaxedit.loader import load

        return load
    raise AttributeError(f"module 'jaxedit' has no attribute {name!r}")
