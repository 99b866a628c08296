"""Seconds to synthesise one 240 x 240 x 155 volume with ``mri2mri predict``, per generator and device.

Times the whole command path (read NIfTI, mask, normalise, slice, network, reassemble, write)
and, inside it, the network alone, for the report's ``basic`` and ``unet`` generators at their
default width (base_channels 64) and 256 px slices, on the CPU and on a GPU when one is present
(fp32, plus bf16 on the GPU). Untrained weights: speed does not depend on them. Slices without
brain are skipped by predict, so the brain phantom below fills the volume like a real one
(about 140 of 155 axial slices hold brain).

    python benchmarks/bench_volume.py            # full: 240 x 240 x 155, 256 px, 2 repeats
    python benchmarks/bench_volume.py --quick    # smoke: 120 x 120 x 78, 128 px, base 16, 1 repeat
    python benchmarks/bench_volume.py --onnx     # also the exported ONNX model on onnxruntime (CPU)

Writes benchmarks/results/bench_volume.json.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _common import synchronize, write_results

from mri2mri.checkpoint import save_checkpoint
from mri2mri.config import DataConfig, ModelConfig, RunConfig
from mri2mri.models import build_generator, count_parameters
from mri2mri.predict import load_model, predict_volume, write_synthetic_nifti


def phantom_volume(path: Path, shape: tuple[int, int, int]) -> Path:
    """A skull-stripped-looking volume: an ellipsoidal brain of smooth texture, zero outside, LPS like BraTS."""
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = ((grid / np.array([0.7, 0.85, 0.95])[:, None, None, None]) ** 2).sum(0) < 1
    texture = 600 + 200 * np.sin(9 * grid[0]) * np.cos(7 * grid[1]) + rng.normal(0, 20, shape)
    affine = np.diag([-1.0, -1.0, 1.0, 1.0])
    nib.save(nib.Nifti1Image(np.where(inside, texture, 0).astype(np.float32), affine), path)
    return path


def checkpoint(folder: Path, generator: str, image_size: int, base_channels: int) -> tuple[Path, int]:
    """An untrained checkpoint of ``generator`` (speed does not depend on the weights) and its
    parameter count."""
    config = RunConfig(data=DataConfig(image_size=image_size),
                       model=ModelConfig(generator=generator, base_channels=base_channels))  # fmt: skip
    torch.manual_seed(0)
    G = build_generator(config.model)
    path = folder / f"{generator}.pth"
    save_checkpoint(path, {"G": G.state_dict(), "config": config.to_dict(), "epoch": 0})
    return path, count_parameters(G)


def time_model(model: Path, volume: Path, out_dir: Path, *, device: str, precision: str,
               batch_size: int, repeats: int) -> dict:  # fmt: skip
    """Median over ``repeats`` (after one warm-up) of total and network seconds per volume."""
    run, info = load_model(model, device=device, precision=precision)
    network_seconds = [0.0]
    slices = [0]

    def timed(batch: np.ndarray) -> np.ndarray:
        synchronize(torch.device(device))
        start = time.perf_counter()
        out = run(batch)  # returns a NumPy array: the device work is finished when it returns
        network_seconds[0] += time.perf_counter() - start
        slices[0] += batch.shape[0]
        return out

    totals, networks = [], []
    for index in range(repeats + 1):
        network_seconds[0], slices[0] = 0.0, 0
        start = time.perf_counter()
        data, affine = predict_volume(timed, info, volume, batch_size=batch_size)
        write_synthetic_nifti(out_dir / "out.nii.gz", data, affine, info, source=volume)
        if index:  # the first run warms up (allocator, cuDNN autotuning, thread pools)
            totals.append(time.perf_counter() - start)
            networks.append(network_seconds[0])
    total = float(np.median(totals))
    return {
        "seconds_per_volume": round(total, 3),
        "network_seconds": round(float(np.median(networks)), 3),
        "slices_run": slices[0],
        "slices_per_s": round(slices[0] / max(float(np.median(networks)), 1e-9), 1),
        "repeats": repeats,
    }


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--quick", action="store_true", help="small volume and networks: a smoke test"
    )
    parser.add_argument(
        "--onnx", action="store_true", help="also time the exported ONNX model (CPU)"
    )
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out", type=Path, default=None, help="default benchmarks/results/bench_volume.json")
    args = parser.parse_args(argv)

    shape, image_size, base, repeats = (
        ((120, 120, 78), 128, 16, 1) if args.quick else ((240, 240, 155), 256, 64, 2)
    )
    devices = [("cpu", "fp32")]
    if torch.cuda.is_available():
        devices += [("cuda", "fp32"), ("cuda", "bf16")]
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        volume = phantom_volume(folder / "t1.nii.gz", shape)
        for generator in ("basic", "unet"):
            model, parameters = checkpoint(folder, generator, image_size, base)
            runs = [(model, device, precision) for device, precision in devices]
            if args.onnx:
                from mri2mri.export import export_model

                onnx_file = folder / f"{generator}.onnx"
                export_model(model, onnx_path=onnx_file, overwrite=True)
                runs.append((onnx_file, "cpu", "fp32"))
            for path, device, precision in runs:
                row = {"generator": generator, "parameters": parameters, "device": device, "precision": precision,
                       "runtime": "onnxruntime" if path.suffix == ".onnx" else "pytorch"}  # fmt: skip
                row.update(time_model(path, volume, folder, device=device, precision=precision,
                                      batch_size=args.batch_size, repeats=repeats))  # fmt: skip
                print(json.dumps(row), flush=True)
                results.append(row)
    report = {
        "benchmark": "bench_volume",
        "quick": args.quick,
        "volume_shape": list(shape),
        "image_size": image_size,
        "base_channels": base,
        "batch_size": args.batch_size,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "results": results,
    }
    print(f"wrote {write_results('bench_volume', report, args.out)}")
    return report


if __name__ == "__main__":
    main()
