"""The ``jaxedit`` command line: :mod:`jaxedit.cli.main` (parser, dispatch, error policy) and one module per command group."""
