"""How the program tells its user things: one module, so every message looks and travels alike.

* :func:`say` — a line of normal output (stdout), written so it does not tear a progress bar;
* :func:`warn` — something the user should know, the run goes on (``warning: ...`` on stderr
  from the command line; a ``UserWarning`` subclass to Python callers, who may filter it);
* :func:`skipped` — one input could not be used and the others go on (``error: ...; skipped``);
* :func:`progress` — a progress bar for long work, on stderr, off when not wanted.

Errors that stop a command are raised as :class:`~mri2mri.errors.UserError` and printed by the
command line; nothing here exits.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Iterable, Iterator
from typing import TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def say(message: str) -> None:
    """One line of normal output."""
    tqdm.write(message, file=sys.stdout)
    sys.stdout.flush()


def warn(message: str, category: type[Warning] = UserWarning, *, stacklevel: int = 2) -> None:
    """A warning about the caller's input or environment; the work goes on."""
    warnings.warn(message, category, stacklevel=stacklevel + 1)


def skipped(error: BaseException | str) -> None:
    """One input was unusable and is left out; the message names it."""
    tqdm.write(f"error: {error}; skipped", file=sys.stderr)
    sys.stderr.flush()


def note(message: str) -> None:
    """A line about the work itself (not its result), on stderr: ``warning: ...`` style notes
    that must not mix with output a script may parse."""
    tqdm.write(message, file=sys.stderr)
    sys.stderr.flush()


def progress(iterable: Iterable[T] | None = None, *, total: int | None = None, desc: str = "",
             unit: str = "it", enabled: bool = True, **options) -> Iterator[T]:  # fmt: skip
    """A progress bar over ``iterable`` (or a manual one with ``total``), disabled when not
    ``enabled`` (``--quiet``, or output that is not a terminal's)."""
    return tqdm(iterable, total=total, desc=desc, unit=unit, disable=not enabled, **options)
