"""The one exception hierarchy of jaxedit.

``JaxeditError`` is what a user can fix: a file, flag, key, value or shape that is wrong. The CLI
prints it as one line (exit 2 for :class:`UsageError`, 1 for the others); anything else is a bug
and keeps its traceback. Library code raises the most specific subclass with a message that names
the file, flag, key or shape and what is wrong.
"""

from __future__ import annotations


class JaxeditError(Exception):
    """Something the user can fix; the message says what and where, in one line."""


class UsageError(JaxeditError):
    """A command-line flag or argument that is wrong (exit 2); the message names the flag."""


class InputError(JaxeditError, ValueError):
    """An input the user gave (file, value, array shape) that cannot be used; the message names it.

    Also a ``ValueError``, so Python callers may catch it as the built-in for a bad value."""


class CheckpointError(InputError):
    """A jaxedit checkpoint or run folder that cannot be read or written; the message names the path."""


class FormatError(InputError):
    """A file in a foreign format (PyTorch, NVIDIA pickle, released edit artifact) that cannot be read."""


class ConfigError(InputError):
    """A configuration (JSON, preset, ``--set``) with an unknown, missing or out-of-range field."""
