"""What the throughput benchmarks share: machine description, interleaved timing, JSON, tables.

Timing is interleaved: each round runs every variant for a few steps, in an order that
alternates between rounds, so that load from other users of a shared machine falls on all
variants alike. Per-round rates are summarised by their median, and a variant's speed-up over a
baseline is the median of the per-round ratios.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

RESULTS = Path(__file__).resolve().parent / "results"


def machine(device: torch.device) -> dict[str, Any]:
    """Device name, torch version and thread count, recorded with every result."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    elif device.type == "mps":
        name = "Apple MPS"
    else:
        name = _cpu_model() or platform.processor() or platform.machine()
    return {
        "device": device.type,
        "device_name": name,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_average_1min": round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
    }


def _cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        return None
    return None


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def interleaved_rates(
    runners: dict[str, Callable[[], None]],
    items_per_call: dict[str, int],
    device: torch.device,
    rounds: int,
    calls_per_round: int,
) -> dict[str, list[float]]:
    """Items per second of each runner in each round; runners alternate order between rounds."""
    names = list(runners)
    rates: dict[str, list[float]] = {name: [] for name in names}
    for round_index in range(rounds):
        order = names if round_index % 2 == 0 else names[::-1]
        for name in order:
            synchronize(device)
            start = time.perf_counter()
            for _ in range(calls_per_round):
                runners[name]()
            synchronize(device)
            seconds = time.perf_counter() - start
            rates[name].append(items_per_call[name] * calls_per_round / seconds)
    return rates


def summarise(rates: dict[str, list[float]], baseline: str) -> dict[str, dict[str, float]]:
    """Median rate of each variant and median per-round speed-up over ``baseline``."""
    summary = {}
    for name, values in rates.items():
        ratios = [value / base for value, base in zip(values, rates[baseline], strict=True)]
        summary[name] = {
            "median": round(statistics.median(values), 3),
            "min": round(min(values), 3),
            "max": round(max(values), 3),
            "speedup": round(statistics.median(ratios), 3),
        }
    return summary


def warm_up(runner: Callable[[], None], device: torch.device, calls: int) -> float:
    """Seconds of the first calls (kernel selection, allocation, compilation)."""
    synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        runner()
    synchronize(device)
    return time.perf_counter() - start


def write_results(name: str, payload: dict[str, Any], out: Path | None = None) -> Path:
    path = out or RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    return path


def format_table(rows: list[dict[str, Any]], columns: list[str]) -> str:
    """A plain-text table (also valid Markdown) of ``rows`` restricted to ``columns``."""
    cells = [[_cell(row.get(column, "")) for column in columns] for row in rows]
    widths = [max(len(column), *(len(line[i]) for line in cells)) for i, column in enumerate(columns)]
    lines = [
        "| " + " | ".join(column.ljust(width) for column, width in zip(columns, widths, strict=True)) + " |",
        "|" + "|".join("-" * (width + 2) for width in widths) + "|",
    ]
    lines += ["| " + " | ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)) + " |" for line in cells]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 1000 else f"{value:.0f}"
    return str(value)
