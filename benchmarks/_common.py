"""What the benchmarks share: machine description, interleaved timing, JSON, tables, and the
finished runs of an ``ablation.py`` output that the re-scoring scripts read.

Timing is interleaved: each round runs every variant for a few steps, in an order that
alternates between rounds, so that load from other users of a shared machine falls on all
variants alike. Per-round rates are summarised by their median, and a variant's speed-up over a
baseline is the median of the per-round ratios.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mri2mri.config import ModelConfig, TrainConfig
from mri2mri.models import GENERATORS, minimum_image_size
from mri2mri.runfolder import RunFolder
from mri2mri.runtime import resolve_precision

RESULTS = Path(__file__).resolve().parent / "results"


def finished_runs(root: Path, configs: list[str]) -> list[tuple[str, Path, Path]]:
    """``(fold, run, fold cache)`` of every finished run of ``configs`` under an ``ablation.py``
    output's ``real/`` (or ``real/source-...``) folder, fold by fold."""
    found = []
    for cache in sorted(root.glob("fold-*")):
        fold = cache.name.removeprefix("fold-")
        for config in configs:
            # "-s<seed>": the glob "-s*" would also take "t1-t1c-flair-ssim-s1" for "t1-t1c-flair".
            for run in sorted((root / f"runs-{fold}").glob(f"{config}-s[0-9]*")):
                if RunFolder(run).metrics.is_file():
                    found.append((fold, run, cache))
    return found


def add_common_arguments(parser: argparse.ArgumentParser, seconds_per_generator: float | None) -> None:
    """The options the training and inference benchmarks share."""
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--size", type=int, default=128, help="image size (unet256 uses 256)")
    parser.add_argument("--base-channels", type=int, default=64)
    parser.add_argument("--generators", default=",".join(GENERATORS), help="comma-separated names")
    parser.add_argument("--variants", default=None, help="library settings to time, e.g. fp32,fp32+cl,bf16+cl")
    parser.add_argument("--compile", action="store_true", help="torch.compile in the default optimised variant")
    parser.add_argument("--seconds-per-generator", type=float, default=seconds_per_generator)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round: a smoke test")
    parser.add_argument("--out", type=Path, default=None)


def variants_to_time(args: argparse.Namespace, device: torch.device) -> list[str]:
    """``--variants``, or the library's default settings on ``device`` (plus --compile)."""
    return args.variants.split(",") if args.variants else [default_variant(device, args.compile)]


def default_variant(device: torch.device, compile_model: bool) -> str:
    """What ``mri2mri`` does by default on this device: bf16 + channels_last on a GPU, the
    training defaults elsewhere, with ``--precision auto`` resolved (plus --compile when asked)."""
    defaults = TrainConfig()
    precision, _ = resolve_precision(defaults.precision, device)
    parts = ["bf16", "cl"] if device.type == "cuda" else [precision] + (["cl"] if defaults.channels_last else [])
    if compile_model or defaults.compile:
        parts.append("compile")
    return "+".join(parts)


def valid_size(model: ModelConfig, size: int) -> int:
    """``size``, or the smallest size the generator accepts above it (unet256 needs 256)."""
    stride = GENERATORS[model.generator].total_stride
    return max(minimum_image_size(model), -(-size // stride) * stride)


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


def run_and_report(
    benchmark: str,
    measure_one: Callable[[str], dict[str, Any]],
    generators: list[str],
    variants: list[str],
    *,
    rate_key: str,
    unit: str,
    device: torch.device,
    quick: bool,
    out: Path | None,
) -> int:
    """Measure every generator, print a line each and a table, write the JSON; shared by the
    training and inference benchmarks, whose rows differ only in what they count."""
    started = time.perf_counter()
    rows = []
    for name in generators:
        row = measure_one(name)
        rows.append(row)
        rates = row[rate_key]
        print(f"{name}: plain {rates['plain']['median']:.1f} {unit}, "
              + ", ".join(f"{v} {rates[v]['median']:.1f} {unit} (x{rates[v]['speedup']:.2f})" for v in variants),
              flush=True)  # fmt: skip
    table = [
        {"generator": row["generator"], "size": row["image_size"], "batch": row["batch_size"],
         f"plain {unit}": row[rate_key]["plain"]["median"],
         **{f"{v} {unit}": row[rate_key][v]["median"] for v in variants},
         **{f"{v} / plain": row[rate_key][v]["speedup"] for v in variants}}
        for row in rows
    ]  # fmt: skip
    payload = {
        "benchmark": benchmark,
        "machine": machine(device),
        "quick": quick,
        "optimised": variants[0],
        "variants": variants,
        "note": "median of interleaved rounds; speed-up = median of per-round ratios; on a shared "
        "machine re-run when it is quiet before quoting",
        "seconds": round(time.perf_counter() - started, 1),
        "rows": rows,
        "table": table,
    }
    path = write_results(benchmark, payload, out)
    print(format_table(table, list(table[0])))
    print(f"{payload['machine']['device_name']}, torch {payload['machine']['torch']}, "
          f"{payload['machine']['threads']} threads; {payload['seconds']} s; wrote {path}")  # fmt: skip
    return 0
