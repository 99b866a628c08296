"""Faults a long run meets: SIGKILL at any moment, SIGTERM, and resuming after each."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_cache

from mri2mri.checkpoint import load_checkpoint

pytestmark = pytest.mark.slow

TRAIN_ARGS = ["--epochs", "150", "--batch-size", "4", "--base-channels", "8", "--dropout", "0",
              "--device", "cpu", "--seed", "5", "--quiet", "--checkpoint-every", "1"]  # fmt: skip


def _command(cache: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mri2mri", "train", str(cache), "--out", str(run), *TRAIN_ARGS, *extra]


def _env() -> dict[str, str]:
    # One thread per process keeps the two processes of this test from fighting for cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / "gan_t1_to_t2_last.pth")["G"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return write_tiny_cache(tmp_path_factory.mktemp("faults") / "cache", slices=4)


@pytest.fixture(scope="module")
def uninterrupted(cache, tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("straight") / "run"
    subprocess.run(_command(cache, run), check=True, env=_env(), timeout=300)
    return _final_weights(run)


def test_sigkill_at_random_moments_then_resume_ends_with_the_same_weights(cache, uninterrupted, tmp_path):
    run = tmp_path / "run"
    rng = random.Random(1234)
    kills = 0
    for _attempt in range(12):
        started = (run / "config.json").exists()
        command = _command(cache, run, *(["--resume"] if started else []))
        process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if kills < 4:
            # Python and torch take a couple of seconds to import; kill during training or saving.
            time.sleep(rng.uniform(2.5, 6.0))
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
                kills += 1
        output, _ = process.communicate(timeout=300)
        if process.returncode == 0:
            break
        assert process.returncode == -signal.SIGKILL, output.decode()
    else:
        pytest.fail("training never completed")
    assert kills >= 1
    resumed = _final_weights(run)
    for key, value in uninterrupted.items():
        assert torch.equal(value, resumed[key]), key
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


def test_sigterm_stops_cleanly_with_a_checkpoint_and_says_how_to_resume(cache, tmp_path):
    run = tmp_path / "run"
    command = _command(cache, run)
    command[command.index("150")] = "5000"  # long enough to be stopped
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.time() + 120
    while not (run / "checkpoints" / "gan_t1_to_t2_last.pth").exists() and time.time() < deadline:
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    text = output.decode()
    assert process.returncode == 130, text
    assert "--resume" in text and "Traceback" not in text
    payload = load_checkpoint(run / "checkpoints" / "gan_t1_to_t2_last.pth")
    assert payload["progress"]["global_step"] >= 1
    assert not (run / ".lock").exists()
