"""jaxedit's embedded default models (installed as ``jaxedit.checkpoints``; a model card in each folder)."""
