"""Inference throughput (slices/s) per generator: per-slice plain inference against batched inference.

``plain`` is inference as the lab report writes it: the model in eval mode and its default
memory format, ``torch.no_grad()``, one slice at a time, each result copied back to NumPy.

``optimised`` is the library's way: ``torch.inference_mode()``, batches of ``--batch-size``
slices (8 on a CPU, 64 on a GPU), the model and input in channels_last, and bf16 autocast on a GPU (``--compile`` adds
torch.compile). ``--variants`` adds more settings to the same run, e.g. ``fp32,fp32+cl,bf16+cl``.
Untrained weights: speed does not depend on them. Timing is interleaved (see ``_common.py``).
Writes benchmarks/results/bench_predict.json and prints a table.

    python benchmarks/bench_predict.py                # 128 px, every generator
    python benchmarks/bench_predict.py --quick        # smoke test, seconds
    python benchmarks/bench_predict.py --device cuda --size 256
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

import numpy as np
import torch
from _common import (
    add_common_arguments,
    interleaved_rates,
    run_and_report,
    summarise,
    valid_size,
    variants_to_time,
    warm_up,
)

from mri2mri.config import ModelConfig
from mri2mri.models import build_generator
from mri2mri.runtime import Runtime, maybe_compile, resolve_device, setup_runtime

Run = Callable[[], None]


def plain_report_inference(G: torch.nn.Module, slices: torch.Tensor, device: torch.device) -> Run:
    """One slice at a time under no_grad, as the report's test loop does."""
    G = G.to(device).eval()

    def run() -> None:
        outputs = []
        with torch.no_grad():
            for index in range(slices.shape[0]):
                fake = G(slices[index].unsqueeze(0).to(device))
                outputs.append(fake.squeeze(0).cpu().numpy())

    return run


def library_inference(
    variant: str, G: torch.nn.Module, slices: torch.Tensor, device: torch.device, batch_size: int
) -> Run:
    """Batched inference under a variant such as ``fp32``, ``fp32+cl``, ``bf16+cl+compile``."""
    parts = variant.split("+")
    runtime = Runtime(device=device, precision=parts[0], channels_last="cl" in parts)
    G = maybe_compile(runtime.prepare_module(G).eval(), "compile" in parts)
    out = np.empty((slices.shape[0], 1, *slices.shape[2:]), dtype=np.float32)

    def run() -> None:
        with torch.inference_mode(), runtime.autocast():
            for start in range(0, slices.shape[0], batch_size):
                fake = G(runtime.to_device(slices[start : start + batch_size]))
                out[start : start + batch_size] = fake.float().cpu().numpy()

    return run


def measure(name: str, args: argparse.Namespace, device: torch.device, variants: list[str]) -> dict:
    model = ModelConfig(generator=name, base_channels=args.base_channels)
    size = valid_size(model, args.size)
    generator = torch.Generator().manual_seed(0)
    slices = torch.rand(args.slices, 1, size, size, generator=generator) * 2 - 1
    torch.manual_seed(0)
    weights = build_generator(model).state_dict()

    def fresh() -> torch.nn.Module:  # each variant its own copy: memory formats differ
        G = build_generator(model)
        G.load_state_dict(weights)
        return G

    runners: dict[str, Run] = {"plain": plain_report_inference(fresh(), slices, device)}
    for variant in variants:
        runners[variant] = library_inference(variant, fresh(), slices, device, args.batch_size)
    warmup = {key: round(warm_up(runner, device, 1), 2) for key, runner in runners.items()}
    rounds = int(args.seconds_per_generator / max(sum(warmup.values()), 1e-3))
    rounds = max(args.min_rounds, min(args.max_rounds, rounds))
    rates = interleaved_rates(runners, dict.fromkeys(runners, args.slices), device, rounds, 1)
    return {
        "generator": name,
        "image_size": size,
        "slices_per_round": args.slices,
        "batch_size": args.batch_size,
        "rounds": rounds,
        "warmup_seconds": warmup,
        "slices_per_s": summarise(rates, baseline="plain"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, seconds_per_generator=30.0)
    parser.add_argument("--batch-size", type=int, default=None,
                        help="slices per batch of the optimised path (8 on a CPU, 64 on a GPU)")  # fmt: skip
    parser.add_argument("--slices", type=int, default=None, help="slices per timed round")
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    setup_runtime(args.device)
    args.min_rounds, args.max_rounds = 3, 7
    on_gpu = device.type != "cpu"
    if args.batch_size is None:  # on a CPU, batches beyond 8 spill the caches (resnet9 slows down)
        args.batch_size = 64 if on_gpu else 8
    if args.slices is None:
        args.slices = 256 if on_gpu else 32
    if args.quick:
        args.size, args.base_channels, args.slices, args.batch_size = 32, 8, 8, 4
        args.min_rounds = args.max_rounds = 1
    variants = variants_to_time(args, device)

    return run_and_report(
        "bench_predict", lambda name: measure(name, args, device, variants), args.generators.split(","), variants,
        rate_key="slices_per_s", unit="slices/s", device=device, quick=args.quick, out=args.out,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
