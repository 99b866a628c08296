"""The range checks of configuration values: each raises a ConfigError naming the option.

Kept apart from :mod:`mri2mri.config`, which validates every field with them and re-exports them
(``from mri2mri.config import check_int`` keeps working).
"""

from __future__ import annotations

import math
from typing import Any

from mri2mri.errors import ConfigError

# At most this many source contrasts stacked as input channels (every known contrast but the target).
MAX_SOURCES = 4


def check_sources(source: Any) -> tuple[str, ...]:
    """The source contrasts of ``source`` (a name or a sequence of names); ConfigError naming
    ``--source`` when it is empty, repeats a name or holds more than MAX_SOURCES."""
    names = (source,) if isinstance(source, str) else source
    if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"--source must be a contrast name or a list of them, got {source!r}")
    if not names or any(not n.strip() for n in names):
        raise ConfigError(f"--source needs contrast names separated by commas, got {source!r}")
    folded = [n.strip().lower() for n in names]
    repeated = sorted({n for n in names if folded.count(n.strip().lower()) > 1})
    if repeated:
        raise ConfigError(f"--source names {', '.join(repeated)} more than once")
    if len(names) > MAX_SOURCES:
        raise ConfigError(f"--source takes at most {MAX_SOURCES} contrasts, got {len(names)}")
    return tuple(names)


def check_int(option: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an integer in [low, high]; ConfigError naming ``option`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{option} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{option} must be {bound}, got {value}")
    return value


def check_number(
    option: str,
    value: Any,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite number in the interval from low to high (each end closed unless
    ``*_open``); ConfigError naming ``option`` otherwise (NaN and infinity included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{option} must be a finite number, got {value!r}")
    below = value <= low if low_open else value < low
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        interval = f"{left}{low:g}, {high:g}{right}" if high is not None else None
        bound = f"in {interval}" if interval else f"{'above' if low_open else 'at least'} {low:g}"
        raise ConfigError(f"{option} must be {bound}, got {value:g}")
    return float(value)


def check_pair(option: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{option} must be two numbers, got {value!r}")
    return (check_number(option, value[0], 0.0, 100.0), check_number(option, value[1], 0.0, 100.0))
