"""Slices per second: reading the slice cache through a DataLoader vs decoding NIfTI every step.

Uses ../shared/data/real-mri when present (three 240 x 240 x 155 patients), else a tiny
synthetic set written to a temporary folder. Writes benchmarks/results/bench_cache.json and
prints the same JSON. Runs in well under a minute.

    .venv/bin/python benchmarks/bench_cache.py [--image-size 256] [--seconds 4]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _common import write_results
from torch.utils.data import DataLoader

from mri2mri.config import DataConfig
from mri2mri.data.cache import SliceCache
from mri2mri.data.dataset import SliceDataset
from mri2mri.data.discovery import discover_pairs
from mri2mri.data.io import read_volume
from mri2mri.data.preprocess import (
    brain_mask,
    normalise,
    plan_geometry,
    prepare,
    select_slices,
    volume_to_slices,
)

ROOT = Path(__file__).resolve().parents[1]
REAL_MRI = ROOT.parent / "shared" / "data" / "real-mri"


def synthetic_data(root: Path, count: int = 3, shape=(96, 96, 64)) -> Path:
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    brain = (grid**2).sum(0) < 0.8
    for index in range(count):
        folder = root / f"sub-{index + 1:02d}"
        folder.mkdir(parents=True)
        for name in ("T1", "T2"):
            data = np.where(brain, rng.uniform(100, 1000, shape), 0).astype(np.float32)
            nib.save(nib.Nifti1Image(data, np.eye(4)), str(folder / f"{name}.nii.gz"))
    return root


def cache_rate(cache: SliceCache, batch_size: int, seconds: float) -> tuple[float, int]:
    """Slices per second from the cache through SliceDataset and a shuffling DataLoader."""
    loader = DataLoader(
        SliceDataset(cache, "train"), batch_size=batch_size, shuffle=True, num_workers=0
    )
    slices, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        for batch in loader:
            slices += batch.source.shape[0]
            if time.perf_counter() - start >= seconds:
                break
    return slices / (time.perf_counter() - start), slices


def memmap_rate(cache: SliceCache, batch_size: int, seconds: float) -> tuple[float, int]:
    """Slices per second reading random rows of the memory-mapped arrays directly."""
    rng = np.random.default_rng(0)
    slices, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        rows = np.sort(rng.choice(len(cache.source), size=batch_size, replace=False))
        _ = (
            np.asarray(cache.source[rows]),
            np.asarray(cache.target[rows]),
            np.asarray(cache.mask[rows]),
        )
        slices += batch_size
    return slices / (time.perf_counter() - start), slices


def decode_rate(
    pairs, data_config: DataConfig, batch_size: int, seconds: float
) -> tuple[float, int]:
    """Slices per second when every step decodes one subject's NIfTI pair and slices it."""
    rng = np.random.default_rng(0)
    slices, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        pair = pairs[int(rng.integers(len(pairs)))]
        source, target = read_volume(pair.source), read_volume(pair.target)
        mask = brain_mask(source.data, target.data)
        source01, _, _ = normalise(source.data, mask, data_config.percentiles)
        target01, _, _ = normalise(target.data, mask, data_config.percentiles)
        kept = select_slices(mask, data_config.min_brain_fraction)
        chosen = rng.choice(kept, size=min(batch_size, len(kept)), replace=False)
        geometry = plan_geometry(mask, data_config.image_size, reference=target)
        batch = torch.from_numpy(volume_to_slices(source01, geometry, chosen))
        _ = torch.from_numpy(volume_to_slices(target01, geometry, chosen)), batch
        slices += len(chosen)
    return slices / (time.perf_counter() - start), slices


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=4.0, help="time per measurement")
    args = parser.parse_args()
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

    with tempfile.TemporaryDirectory(prefix="bench_cache_") as tmp:
        tmp = Path(tmp)
        data_path = REAL_MRI if REAL_MRI.is_dir() else synthetic_data(tmp / "data")
        data_config = DataConfig(image_size=args.image_size, val_fraction=0.0, test_fraction=0.0)
        start = time.perf_counter()
        cache = SliceCache(prepare(data_path, data_config, tmp / "cache", progress=False))
        prepare_seconds = time.perf_counter() - start
        pairs = discover_pairs(data_path, data_config.source, data_config.target).pairs
        cached, cached_slices = cache_rate(cache, args.batch_size, args.seconds)
        raw, _ = memmap_rate(cache, args.batch_size, args.seconds / 2)
        decoded, decoded_slices = decode_rate(pairs, data_config, args.batch_size, args.seconds)

    result = {
        "benchmark": "bench_cache",
        "data": "real-mri" if data_path == REAL_MRI else "synthetic",
        "subjects": len(cache.subjects),
        "cached_slices": int(len(cache.source)),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "prepare_seconds": round(prepare_seconds, 3),
        "cache_slices_per_s": round(cached, 1),
        "memmap_slices_per_s": round(raw, 1),
        "decode_slices_per_s": round(decoded, 1),
        "decode_note": "each step decodes one subject's NIfTI pair and keeps batch_size slices",
        "speedup": round(cached / decoded, 1) if decoded else None,
        "measured_slices": {"cache": cached_slices, "decode": decoded_slices},
        "torch_threads": torch.get_num_threads(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
    }
    write_results("bench_cache", result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
