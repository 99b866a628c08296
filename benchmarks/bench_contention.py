"""Speed on a busy machine: training and prediction alone and beside 1 and 2 busy processes.

Measures images/s of the default training step (``mri2mri train``'s networks and settings,
256 px, batch 2) and slices/s of volume prediction (``predict_volume`` of an untrained default
generator on a brain-filled phantom volume), alone and beside 1 and 2 competing CPU-bound
processes (``python -c 'while True: pass'``) that this script starts and always stops. Each
measurement runs in a fresh process that applies mri2mri's thread policy the way the
``mri2mri`` command does (before torch loads), so what is timed is what a user gets.

Rounds are interleaved: each round measures every (workload, policy, competitors) once, in an
order that reverses between rounds, and a ratio is the median of the per-round ratios to the
same policy alone. ``--policies`` compares other thread policies in the same run:

    mri2mri          what mri2mri does (src/mri2mri/threads.py)
    openmp-default   OpenMP's own defaults (libgomp: spin 300,000 iterations, then sleep)
    passive          OMP_WAIT_POLICY=PASSIVE (sleep at once)
    spin=N           GOMP_SPINCOUNT=N
    threads=N        OMP_NUM_THREADS=N (with mri2mri's wait policy)

The first policy is the baseline of the ``/ baseline alone`` column. Writes
benchmarks/results/bench_contention.json and prints a table.

    python benchmarks/bench_contention.py                # about 2 minutes on 2 quiet cores
    python benchmarks/bench_contention.py --quick        # smoke test
    python benchmarks/bench_contention.py --policies openmp-default,mri2mri,passive,spin=30000
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve()
COMPETITOR = "while True: pass"
WORKLOADS = ("train", "predict")
UNITS = {"train": "img/s", "predict": "slices/s"}
# Variables a policy may set; the child's environment starts without them so that each policy
# is measured as it alone defines it.
POLICY_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "KMP_BLOCKTIME")


# --------------------------------------------------------------------------------------------
# Policies and competitors
# --------------------------------------------------------------------------------------------


def policy_environment(policy: str) -> tuple[dict[str, str], bool]:
    """The variables a policy sets, and whether the child applies mri2mri's thread policy."""
    if policy == "mri2mri":
        return {}, True
    if policy == "openmp-default":
        return {}, False
    if policy == "passive":
        return {"OMP_WAIT_POLICY": "PASSIVE"}, False
    name, _, value = policy.partition("=")
    if name == "spin" and value.isdigit():
        return {"GOMP_SPINCOUNT": value}, False
    if name == "threads" and value.isdigit() and int(value) > 0:
        return {"OMP_NUM_THREADS": value}, True
    raise SystemExit(f"unknown policy {policy!r}; choose mri2mri, openmp-default, passive, spin=N or threads=N")


def start_competitors(count: int) -> list[subprocess.Popen]:
    """``count`` busy processes; the last argument (ignored by Python) names this benchmark's
    process, so that a leftover competitor can be told from anyone else's."""
    command = [sys.executable, "-c", COMPETITOR, f"competitor-of-{os.getpid()}"]
    return [subprocess.Popen(command) for _ in range(count)]


def stop_competitors(processes: list[subprocess.Popen]) -> None:
    for process in processes:
        process.kill()
    for process in processes:
        process.wait()


# --------------------------------------------------------------------------------------------
# One measurement (run in a fresh process)
# --------------------------------------------------------------------------------------------


def child(args: argparse.Namespace) -> None:
    """Apply the thread policy (before torch loads), time the workload, print one JSON line."""
    from mri2mri.threads import apply_thread_policy, thread_policy

    if args.apply_policy:
        apply_thread_policy()
    import torch

    runner, items = (train_runner if args.child == "train" else predict_runner)(args)
    # Training's first steps select kernels and create the optimiser state; predict has run a
    # whole volume already (to count its slices).
    for _ in range(args.warmup if args.child == "train" else 0):
        runner()
    calls, start = 0, time.perf_counter()
    while calls < 1 or time.perf_counter() - start < args.seconds:
        runner()
        calls += 1
    seconds = time.perf_counter() - start
    print(json.dumps({"rate": items * calls / seconds, "calls": calls, "seconds": round(seconds, 2),
                      "threads": torch.get_num_threads(), "policy_line": thread_policy().describe()}))  # fmt: skip


def train_runner(args: argparse.Namespace):
    """One ``gan_step`` of the default configuration, as ``mri2mri train`` runs it on this CPU."""
    import torch

    from mri2mri.config import DataConfig, ModelConfig, RunConfig, TrainConfig
    from mri2mri.runtime import setup_runtime
    from mri2mri.training import build_networks, gan_step

    defaults = TrainConfig()
    train = TrainConfig(device="cpu", batch_size=args.batch_size)
    config = RunConfig(data=DataConfig(image_size=args.size), model=ModelConfig(base_channels=args.base_channels),
                       train=train)  # fmt: skip
    runtime = setup_runtime("cpu", defaults.precision, defaults.channels_last)
    torch.manual_seed(0)
    nets = build_networks(config, runtime)
    grid = torch.linspace(-1, 1, args.size)
    source = torch.sin(5 * grid)[:, None] * torch.cos(3 * grid)[None, :]  # (H, W)
    source = source.expand(args.batch_size, 1, -1, -1).contiguous()  # (B, 1, H, W)
    source, target = runtime.to_device(source), runtime.to_device(1 - 2 * ((source + 1) / 2) ** 2)

    def step() -> None:
        gan_step(nets, source, target, config, runtime)

    return step, args.batch_size


def predict_runner(args: argparse.Namespace):
    """``predict_volume`` on the phantom volume, as ``mri2mri predict`` runs it (precision auto)."""
    from mri2mri.predict import load_model, predict_volume

    run, info = load_model(args.checkpoint, device="cpu", precision="auto")
    slices = [0]

    def counted(batch):
        slices[0] += batch.shape[0]
        return run(batch)

    predict_volume(counted, info, args.volume, batch_size=16)
    per_volume = slices[0]

    def synthesise() -> None:
        predict_volume(run, info, args.volume, batch_size=16)

    return synthesise, per_volume


def measure(workload: str, policy: str, competitors: int, args: argparse.Namespace, files: dict[str, Path]) -> dict:
    """Run one measurement in a fresh process beside ``competitors`` busy processes."""
    variables, apply_policy = policy_environment(policy)
    environment = {k: v for k, v in os.environ.items() if k not in POLICY_VARIABLES} | variables
    command = [sys.executable, str(HERE), "--child", workload, "--size", str(args.size),
               "--batch-size", str(args.batch_size), "--base-channels", str(args.base_channels),
               "--seconds", str(args.seconds), "--warmup", str(args.warmup),
               "--checkpoint", str(files["checkpoint"]), "--volume", str(files["volume"])]  # fmt: skip
    if apply_policy:
        command.append("--apply-policy")
    busy = start_competitors(competitors)
    try:
        done = subprocess.run(command, env=environment, capture_output=True, text=True, timeout=args.child_timeout)
    finally:
        stop_competitors(busy)
    if done.returncode != 0:
        raise RuntimeError(f"{workload} under {policy} failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------
# The interleaved run
# --------------------------------------------------------------------------------------------


def make_files(folder: Path, args: argparse.Namespace) -> dict[str, Path]:
    """An untrained default checkpoint and a brain-filled phantom volume for predict."""
    sys.path.insert(0, str(HERE.parent))
    from bench_volume import checkpoint, phantom_volume

    from mri2mri.config import ModelConfig

    model = ModelConfig(base_channels=args.base_channels)
    path, _ = checkpoint(folder, model.generator, args.size, args.base_channels)
    return {"checkpoint": path, "volume": phantom_volume(folder / "t1.nii.gz", tuple(args.volume_shape))}


def interleaved(args: argparse.Namespace, files: dict[str, Path]) -> list[dict]:
    """Every (workload, policy, competitors) once per round, the order reversed every other round."""
    cells = [(w, p, c) for w in args.workloads for p in args.policies for c in args.competitors]
    measurements = []
    for round_index in range(args.rounds):
        order = cells if round_index % 2 == 0 else cells[::-1]
        for workload, policy, competitors in order:
            result = measure(workload, policy, competitors, args, files)
            result.update(round=round_index, workload=workload, policy=policy, competitors=competitors)
            measurements.append(result)
            print(f"round {round_index + 1}/{args.rounds}: {workload:7s} {policy:14s} beside {competitors}: "
                  f"{result['rate']:6.2f} {UNITS[workload]} ({result['threads']} threads; {result['policy_line']})",
                  flush=True)  # fmt: skip
    return measurements


def summarise(measurements: list[dict], args: argparse.Namespace) -> list[dict]:
    """Per (workload, policy, competitors): median rate, median per-round ratio to the same
    policy alone and to the first policy alone."""
    rate = {(m["workload"], m["policy"], m["competitors"], m["round"]): m["rate"] for m in measurements}
    baseline = args.policies[0]
    rows = []
    for workload in args.workloads:
        for policy in args.policies:
            for competitors in args.competitors:
                rounds = range(args.rounds)
                rates = [rate[workload, policy, competitors, r] for r in rounds]
                to_alone = [rates[r] / rate[workload, policy, 0, r] for r in rounds]
                to_base = [rates[r] / rate[workload, baseline, 0, r] for r in rounds]
                rows.append({"workload": workload, "policy": policy, "competitors": competitors,
                             "unit": UNITS[workload], "median": round(statistics.median(rates), 3),
                             "min": round(min(rates), 3), "max": round(max(rates), 3),
                             "ratio_to_alone": round(statistics.median(to_alone), 3),
                             "ratio_to_baseline_alone": round(statistics.median(to_base), 3)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--policies", default="mri2mri", help="comma-separated; see the module docstring")
    parser.add_argument("--workloads", default=",".join(WORKLOADS), help="train, predict or both")
    parser.add_argument("--competitors", default="0,1,2", help="numbers of busy processes beside the run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=3.0, help="timed seconds per measurement")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2, help="training batch (the default of train)")
    parser.add_argument("--base-channels", type=int, default=None, help="default: the library's")
    parser.add_argument("--volume-shape", default="240,240,16", help="phantom volume for predict")
    parser.add_argument("--quick", action="store_true", help="tiny sizes, one round, 0 and 1 competitor")
    parser.add_argument("--out", type=Path, default=None)
    # A measurement's own process (internal).
    parser.add_argument("--child", choices=WORKLOADS, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--apply-policy", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--warmup", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--checkpoint", type=Path, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--volume", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(args)
        return 0

    from mri2mri.config import ModelConfig

    args.base_channels = args.base_channels or ModelConfig().base_channels
    args.policies = args.policies.split(",")
    for policy in args.policies:
        policy_environment(policy)  # an unknown name stops here, before anything runs
    args.workloads = args.workloads.split(",")
    args.competitors = sorted({0, *(int(c) for c in args.competitors.split(","))})
    args.volume_shape = [int(s) for s in args.volume_shape.split(",")]
    if args.quick:
        args.size, args.base_channels, args.volume_shape = 32, 8, [40, 40, 6]
        args.rounds, args.seconds, args.warmup, args.competitors = 1, 0.2, 1, [0, 1]
    args.child_timeout = 600
    # A SIGTERM (a timeout, Ctrl-C from a parent) still stops the competitors.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    return report(args)


def report(args: argparse.Namespace) -> int:
    import torch
    from _common import format_table, machine, write_results

    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="mri2mri-contention-") as tmp:
        files = make_files(Path(tmp), args)
        measurements = interleaved(args, files)
    rows = summarise(measurements, args)
    table = [{"workload": r["workload"], "policy": r["policy"], "beside": r["competitors"],
              "rate": f"{r['median']:.2f} {r['unit']}", "/ alone": r["ratio_to_alone"],
              "/ baseline alone": r["ratio_to_baseline_alone"]} for r in rows]  # fmt: skip
    payload: dict[str, Any] = {
        "benchmark": "bench_contention",
        "machine": machine(torch.device("cpu")),
        "quick": args.quick,
        "image_size": args.size,
        "batch_size": args.batch_size,
        "base_channels": args.base_channels,
        "volume_shape": args.volume_shape,
        "policies": args.policies,
        "baseline": args.policies[0],
        "rounds": args.rounds,
        "competitor": f"python -c '{COMPETITOR}'",
        "note": "each measurement in a fresh process; ratios are medians of per-round ratios; other "
        "users of a shared machine add noise: re-run when it is quiet before quoting",
        "seconds": round(time.perf_counter() - started, 1),
        "measurements": measurements,
        "rows": rows,
        "table": table,
    }
    path = write_results("bench_contention", payload, args.out)
    print(format_table(table, list(table[0])))
    print(f"{payload['machine']['device_name']}, torch {payload['machine']['torch']}, "
          f"{payload['machine']['cpu_count']} CPUs; {payload['seconds']} s; wrote {path}")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
