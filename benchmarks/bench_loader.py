"""Does the input pipeline keep up? Images/s of the training loader alone against the training step.

The loader is the one ``mri2mri train`` builds (``make_train_loader``: the slice cache through
``EpochIndexed`` and ``EpochBatchSampler``, persistent workers when there are any), timed over
whole epochs of a synthetic cache with nothing else running. Its configurations:

- ``cache``: no augmentation, read in the main process (the default);
- ``cache+torchio``: per-sample TorchIO augmentation (``--augment`` on a CPU), main process;
- ``cache+torchio, N workers``: the same in N persistent worker processes;
- ``cache+device``: no per-sample work; the batched on-device augmentation (``--augment`` on a
  GPU, ``data/gpu_augment.py``) applied to each batch on the device.

The step is ``gan_step`` with the library's default settings for the device (U-Net, batch 8).
The loader should deliver at least 3x what the step consumes, so that it never starves it.
Writes benchmarks/results/bench_loader.json and prints a table.

    python benchmarks/bench_loader.py            # 128 px, batch 8
    python benchmarks/bench_loader.py --quick    # smoke test, seconds
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import default_variant, format_table, machine, synchronize, warm_up, write_results
from bench_train import batch, library_step

from mri2mri.config import ModelConfig
from mri2mri.data.cache import CacheWriter, SliceCache, SubjectRecord, SubjectSlices
from mri2mri.data.dataset import SliceDataset
from mri2mri.data.gpu_augment import BatchAugmentation
from mri2mri.runtime import Runtime, setup_runtime
from mri2mri.training import EpochBatchSampler, EpochIndexed, make_train_loader

TARGET_RATIO = 3.0


def synthetic_cache(path: Path, size: int, subjects: int, slices: int) -> Path:
    """Brain-like slices: a textured ellipse on a zero background, a nonlinear target."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    brain = ((xx / 0.4) ** 2 + (yy / 0.45) ** 2 < 1).astype(np.float32)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    with CacheWriter(path, fingerprint="bench", data_config={}) as writer:
        for index in range(subjects):
            subject = f"sub-{index:02d}"
            phase = rng.uniform(0, 6.28, size=(slices, 1, 1, 1))
            texture = 0.5 + 0.3 * np.sin(20 * xx + phase) * np.cos(14 * yy)
            source = (brain * np.clip(texture + rng.normal(0, 0.02, texture.shape), 0, 1)).astype(np.float32)
            record = SubjectRecord(subject, "train", f"{subject}/T1.nii.gz", f"{subject}/T2.nii.gz",
                                   slice_indices=list(range(slices)), kind="volume")  # fmt: skip
            mask = np.broadcast_to(brain, source.shape).astype(np.uint8)
            writer.add(SubjectSlices(record, source, (brain * (1 - source) ** 2).astype(np.float32), mask))
            split["train"].append(subject)
        writer.commit(split, split_seed=0)
    return path


def loader_rate(cache: SliceCache, runtime: Runtime, batch_size: int, workers: int, transform,
                device_augmentation: BatchAugmentation | None, epochs: int) -> float:  # fmt: skip
    """Images/s over ``epochs`` epochs, after one untimed epoch (worker start-up, page cache)."""
    dataset = SliceDataset(cache, "train", transform=transform)
    steps = len(dataset) // batch_size
    sampler = EpochBatchSampler(len(dataset), batch_size, seed=0, steps_per_epoch=steps)
    loader = make_train_loader(EpochIndexed(dataset, seed=0), sampler, workers, runtime)
    rates = []
    for epoch in range(epochs + 1):
        sampler.set_epoch(epoch)
        synchronize(runtime.device)
        start = time.perf_counter()
        for step, item in enumerate(loader):
            source, target = runtime.to_device(item.source), runtime.to_device(item.target)
            if device_augmentation is not None:
                source, target, _ = device_augmentation(source, target, seed=epoch * steps + step)
        synchronize(runtime.device)
        if epoch > 0:
            rates.append(steps * batch_size / (time.perf_counter() - start))
    return statistics.median(rates)


def step_rate(device: torch.device, size: int, batch_size: int, base_channels: int, steps: int) -> tuple[float, str]:
    variant = default_variant(device, compile_model=False)
    model = ModelConfig(generator="unet", base_channels=base_channels)
    source, target = batch(size, batch_size, device)
    step = library_step(variant, model, size, source, target, device)
    warm_up(step, device, 2)
    times = []
    for _ in range(steps):
        times.append(warm_up(step, device, 1))
    return batch_size / statistics.median(times), variant


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or mps")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2, help="worker processes of the worker configuration")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)

    runtime = setup_runtime(args.device)
    device = runtime.device
    subjects, slices, epochs, steps, base_channels = 4, 40, 2, 5, 64
    if args.quick:
        args.size, subjects, slices, epochs, steps, base_channels = 32, 2, 8, 1, 2, 8

    from mri2mri.config import DataConfig
    from mri2mri.data.augment import build_augmentation

    torchio = build_augmentation(DataConfig(augment=True))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        cache = SliceCache(synthetic_cache(Path(folder) / "cache", args.size, subjects, slices))
        configurations = {
            "cache": (0, None, None),
            "cache+torchio": (0, torchio, None),
            f"cache+torchio, {args.workers} workers": (args.workers, torchio, None),
            "cache+device": (0, None, BatchAugmentation()),
        }
        loader = {
            name: loader_rate(cache, runtime, args.batch_size, workers, transform, on_device, epochs)
            for name, (workers, transform, on_device) in configurations.items()
        }
    step, variant = step_rate(device, args.size, args.batch_size, base_channels, steps)
    table = [
        {"pipeline": name, "loader img/s": rate, "step img/s": step, "loader / step": rate / step,
         "keeps up (>= 3x)": "yes" if rate >= TARGET_RATIO * step else "no"}
        for name, rate in loader.items()
    ]  # fmt: skip
    payload = {
        "benchmark": "bench_loader",
        "machine": machine(device),
        "quick": args.quick,
        "image_size": args.size,
        "batch_size": args.batch_size,
        "slices": subjects * slices,
        "step": {"generator": "unet", "variant": variant, "images_per_s": round(step, 2)},
        "loader_images_per_s": {name: round(rate, 1) for name, rate in loader.items()},
        "target_ratio": TARGET_RATIO,
        "note": "loader timed alone (median of whole epochs after a warm-up epoch); step median of "
        "single steps; re-run on a quiet machine before quoting",
        "seconds": round(time.perf_counter() - started, 1),
        "table": table,
    }
    path = write_results("bench_loader", payload, args.out)
    print(format_table(table, list(table[0])))
    print(f"{payload['machine']['device_name']}, torch {payload['machine']['torch']}, "
          f"{payload['machine']['threads']} threads; step: unet {variant}; {payload['seconds']} s; wrote {path}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
