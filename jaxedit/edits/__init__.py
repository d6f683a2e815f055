"""Latent edits: one editor pytree per direction family and the functions over them.

``editor = jaxedit.edits.load(path)`` (released direction files, editor checkpoints, discover runs;
the family is detected), ``jaxedit.edits.apply(editor, latents, k, t)``,
``jaxedit.edits.apply_many(editor, latents, ks, ts)``, ``jaxedit.edits.save(editor, path)``. See
:mod:`jaxedit.edits.registry`; the family math lives in :mod:`~jaxedit.edits.linear`,
:mod:`~jaxedit.edits.warped`, :mod:`~jaxedit.edits.curvilinear`; released file readers in
:mod:`~jaxedit.edits.formats`.
"""

from jaxedit.edits.registry import (
                                    FAMILIES,
                                    KIND,
                                    RUN_EDITOR,
                                    Curvilinear,
                                    Editor,
                                    EditingVector,
                                    EditorError,
                                    GANSpace,
                                    InterFaceGAN,
                                    Linear,
                                    Warped,
                                    apply,
                                    apply_many,
                                    load,
                                    read_provenance,
                                    save,
)

__all__ = ["FAMILIES", "KIND", "RUN_EDITOR", "Curvilinear", "Editor", "EditingVector", "EditorError", "GANSpace", "InterFaceGAN", "Linear",
           "Warped", "apply", "apply_many", "load", "read_provenance", "save"]
