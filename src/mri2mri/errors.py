"""The project's own errors: each carries one line that names the file and the problem.

The command line prints ``error: <message>`` for these and exits non-zero without a traceback;
anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input or a bad request: a one-line message a user can act on."""


class DataError(UserError):
    """An input file or folder cannot be used (unreadable, wrong shape, missing partner...)."""


class ConfigError(UserError, ValueError):
    """An unknown choice or an incompatible combination of options."""


def first_line(error: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty), for
    quoting a library's error inside one of ours."""
    text = str(error).strip().splitlines()
    return text[0] if text else type(error).__name__
