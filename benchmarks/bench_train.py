"""Training throughput (images/s) per generator: the lab report's plain loop against mri2mri's GAN step.

``plain`` is the loop as the lab report writes it, kept here on purpose: fp32, the model in its
default memory format, ``nn.BCELoss`` on sigmoid outputs, D left trainable during the G step
(so G's backward also computes D's weight gradients), three D forwards per step (the fake pair
for G, then the real and the detached fake pair for D), ``zero_grad()`` with its default,
``.item()`` on both losses every step.

``optimised`` is the library's own path, ``mri2mri.training.build_networks`` + ``gan_step``
with the settings that ``mri2mri train`` uses by default on the device found (on a GPU: bf16
autocast and channels_last; ``--compile`` adds torch.compile). It does less arithmetic for the
same weights: one D forward on the fake pair serves both updates and G's backward computes no
gradient for D's weights. ``--variants`` adds more settings of the library path to the same
run, e.g. ``fp32,fp32+cl,fp32+compile,bf16+cl``.

The same networks (the report's PatchGAN as D), the same batch and the same optimiser settings
are used by every variant; timing is interleaved (see ``_common.py``). Writes
benchmarks/results/bench_train.json and prints a table.

    python benchmarks/bench_train.py                  # 128 px, batch 8, every generator
    python benchmarks/bench_train.py --quick          # smoke test, about 20 s
    python benchmarks/bench_train.py --device cuda --size 256 --compile
"""

from __future__ import annotations

import argparse
import contextlib
from collections.abc import Callable, Iterator

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
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mri2mri.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from mri2mri.models import build_discriminator, build_generator
from mri2mri.runtime import Runtime, resolve_device, setup_runtime
from mri2mri.training import build_networks, gan_step

Step = Callable[[], None]


# --------------------------------------------------------------------------------------------
# The lab report's loop, written as the report writes it
# --------------------------------------------------------------------------------------------


def plain_report_step(model: ModelConfig, source: torch.Tensor, target: torch.Tensor) -> Step:
    device = source.device
    G = build_generator(model).to(device)
    D = build_discriminator(model).to(device)
    optimizer_G = torch.optim.Adam(G.parameters(), lr=2e-4, betas=(0.5, 0.999))
    optimizer_D = torch.optim.Adam(D.parameters(), lr=2e-4, betas=(0.5, 0.999))
    criterion_GAN = nn.BCELoss()
    criterion_L1 = nn.L1Loss()
    history: list[tuple[float, float]] = []

    def step() -> None:
        # Generator update
        optimizer_G.zero_grad()
        fake = G(source)
        pred_fake = torch.sigmoid(D(source, fake)[0][-1])
        loss_G = criterion_GAN(pred_fake, torch.ones_like(pred_fake)) + 100 * criterion_L1(fake, target)
        loss_G.backward()
        optimizer_G.step()
        # Discriminator update
        optimizer_D.zero_grad()
        pred_real = torch.sigmoid(D(source, target)[0][-1])
        loss_real = criterion_GAN(pred_real, torch.ones_like(pred_real))
        pred_fake = torch.sigmoid(D(source, fake.detach())[0][-1])
        loss_fake = criterion_GAN(pred_fake, torch.zeros_like(pred_fake))
        loss_D = 0.5 * (loss_real + loss_fake)
        loss_D.backward()
        optimizer_D.step()
        history.append((loss_G.item(), loss_D.item()))

    return step


# --------------------------------------------------------------------------------------------
# The library's path
# --------------------------------------------------------------------------------------------


def library_step(
    variant: str, model: ModelConfig, size: int, source: torch.Tensor, target: torch.Tensor, device: torch.device
) -> Step:
    """``gan_step`` under a variant such as ``fp32``, ``fp32+cl``, ``bf16+cl+compile``."""
    parts = variant.split("+")
    train = TrainConfig(device=device.type, precision=parts[0], channels_last="cl" in parts, compile="compile" in parts)
    config = RunConfig(data=DataConfig(image_size=size), model=model, train=train)
    runtime = Runtime(device=device, precision=train.precision, channels_last=train.channels_last)
    torch.manual_seed(0)
    nets = build_networks(config, runtime)
    nets.G.train()
    nets.D.train()
    source, target = runtime.to_device(source), runtime.to_device(target)

    def step() -> None:
        gan_step(nets, source, target, config, runtime)

    return step


@contextlib.contextmanager
def pytorch_defaults(device: torch.device) -> Iterator[None]:
    """The plain loop runs with PyTorch's default backend flags, not the ones setup_runtime sets."""
    if device.type != "cuda":
        yield
        return
    saved = (torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = False, False, True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark, torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def with_defaults(step: Step, device: torch.device) -> Step:
    def run() -> None:
        with pytorch_defaults(device):
            step()

    return run


# --------------------------------------------------------------------------------------------
# Measurement
# --------------------------------------------------------------------------------------------


def batch(size: int, batch_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """A fixed, image-like pair: smooth source, nonlinear target, both in [-1, 1]."""
    generator = torch.Generator().manual_seed(0)
    grid = torch.linspace(-1, 1, size)
    phase = torch.rand(batch_size, 1, 1, 1, generator=generator) * 6.28
    source = torch.sin(5 * grid[None, None, :, None] + phase) * torch.cos(3 * grid[None, None, None, :])
    source = (source + 0.05 * torch.randn(source.shape, generator=generator)).clamp(-1, 1)
    return source.to(device), (1 - 2 * ((source + 1) / 2) ** 2).to(device)


def step_arithmetic(model: ModelConfig, source: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Floating-point operations of one training step, in GFLOP, counted on the forwards.

    A backward costs about twice its forward (input and weight gradients), one that needs input
    gradients only about once. The report's loop: G forward + backward, three D forwards, three
    full D backwards. The library: G forward + backward, two D forwards, one input-only D
    backward (G's adversarial gradient) and two full ones (D's update). Where convolutions
    already run at the processor's peak, ``ratio`` bounds the speed-up of the library's step.
    """
    G, D = build_generator(model).to(source.device), build_discriminator(model).to(source.device)
    with torch.no_grad():
        with FlopCounterMode(display=False) as counter:
            G(source)
        g = counter.get_total_flops() / 1e9
        with FlopCounterMode(display=False) as counter:
            D(source, target)
        d = counter.get_total_flops() / 1e9
    plain, library = 3 * g + 3 * d + 3 * 2 * d, 3 * g + 2 * d + d + 2 * 2 * d
    return {"G_forward": round(g, 3), "D_forward": round(d, 3), "plain_step": round(plain, 3),
            "library_step": round(library, 3), "ratio": round(plain / library, 3)}  # fmt: skip


def measure(name: str, args: argparse.Namespace, device: torch.device, variants: list[str]) -> dict:
    model = ModelConfig(generator=name, base_channels=args.base_channels)
    size = valid_size(model, args.size)
    source, target = batch(size, args.batch_size, device)
    arithmetic = step_arithmetic(model, source, target)
    print(f"{name}: {arithmetic['plain_step']} GFLOP per step in the report's loop, {arithmetic['library_step']} "
          f"in the library's (ratio {arithmetic['ratio']:.2f})", flush=True)  # fmt: skip
    runners: dict[str, Step] = {"plain": with_defaults(plain_report_step(model, source, target), device)}
    for variant in variants:
        runners[variant] = library_step(variant, model, size, source, target, device)
    warmup = {key: round(warm_up(runner, device, args.warmup), 2) for key, runner in runners.items()}
    per_call = {key: max(seconds / args.warmup, 1e-4) for key, seconds in warmup.items()}
    # As many rounds as fit the time budget for this generator, at least 3 (1 with --quick).
    rounds = int(args.seconds_per_generator / (sum(per_call.values()) * args.calls_per_round))
    rounds = max(args.min_rounds, min(args.max_rounds, rounds))
    rates = interleaved_rates(runners, dict.fromkeys(runners, args.batch_size), device, rounds, args.calls_per_round)
    summary = summarise(rates, baseline="plain")
    return {
        "generator": name,
        "image_size": size,
        "batch_size": args.batch_size,
        "rounds": rounds,
        "steps_per_round": args.calls_per_round,
        "warmup_seconds": warmup,
        "images_per_s": summary,
        "gflop": arithmetic,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_common_arguments(parser, seconds_per_generator=None)  # None: 30 s on a GPU, 36 s on a CPU
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    setup_runtime(args.device)  # the backend flags the library sets (TF32, cudnn.benchmark)
    on_gpu = device.type != "cpu"
    args.warmup = 5 if on_gpu else 2
    args.calls_per_round = 10 if on_gpu else 2
    args.min_rounds, args.max_rounds = 3, 7
    if args.seconds_per_generator is None:
        args.seconds_per_generator = 30.0 if on_gpu else 36.0
    if args.quick:
        args.size, args.batch_size, args.base_channels = 32, 2, 8
        args.warmup, args.calls_per_round, args.min_rounds, args.max_rounds = 1, 1, 1, 1
    variants = variants_to_time(args, device)

    return run_and_report(
        "bench_train", lambda name: measure(name, args, device, variants), args.generators.split(","), variants,
        rate_key="images_per_s", unit="img/s", device=device, quick=args.quick, out=args.out,
    )  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
