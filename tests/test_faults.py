"""Faults a long run meets: SIGKILL at any moment, SIGTERM and SIGINT, a full disk, and
resuming after each. Every fault is real: signals sent to a training process, and a file size
limit (RLIMIT_FSIZE) that makes the real checkpoint write fail."""

from __future__ import annotations

import os
import random
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import write_tiny_cache

from mri2mri.checkpoint import has_checkpoint, load_checkpoint

pytestmark = pytest.mark.slow

RUN = "gan_t1_to_t2"

TRAIN_ARGS = ["--epochs", "60", "--batch-size", "4", "--base-channels", "8", "--dropout", "0",
              "--device", "cpu", "--seed", "5", "--quiet", "--checkpoint-every", "1"]  # fmt: skip


def _command(cache: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mri2mri", "train", str(cache), "--out", str(run), *TRAIN_ARGS, *extra]


def _env() -> dict[str, str]:
    # One thread per process keeps the two processes of this test from fighting for cores.
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def _final_weights(run: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(run / "checkpoints" / f"{RUN}_last.pth")["G"]


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
    last = run / "checkpoints" / f"{RUN}_last.pth"
    rng = random.Random(1234)
    kills = resumes = 0
    for _attempt in range(12):
        resuming = has_checkpoint(last)
        resumes += resuming
        command = _command(cache, run, *(["--resume"] if resuming else []))
        written = last.stat().st_mtime_ns if last.exists() else None
        process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if kills < 4:
            # Once this process has written a checkpoint of its own (it is training), kill it
            # at a random moment: during a step or in the middle of a checkpoint write.
            deadline = time.time() + 120
            while process.poll() is None and time.time() < deadline and (
                not last.exists() or last.stat().st_mtime_ns == written
            ):
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 0.5))
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
    assert resumes >= kills  # every killed run was continued from its checkpoint
    resumed = _final_weights(run)
    for key, value in uninterrupted.items():
        assert torch.equal(value, resumed[key]), key
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.endswith(".tmp")]


# One long epoch (300 steps of batch 1) and no periodic checkpoint: a checkpoint written before
# the epoch ends can only come from the signal handler.
SIGNAL_ARGS = ["--epochs", "1", "--batch-size", "1", "--base-channels", "8", "--dropout", "0",
               "--device", "cpu", "--seed", "5", "--quiet"]  # fmt: skip
STEPS = 300


def _signal_command(cache: Path, run: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "mri2mri", "train", str(cache), "--out", str(run), *SIGNAL_ARGS, *extra]


@pytest.fixture(scope="module")
def long_cache(tmp_path_factory) -> Path:
    return write_tiny_cache(tmp_path_factory.mktemp("signals") / "cache", slices=STEPS // 3)


@pytest.fixture(scope="module")
def uninterrupted_epoch(long_cache, tmp_path_factory) -> dict[str, torch.Tensor]:
    run = tmp_path_factory.mktemp("epoch") / "run"
    subprocess.run(_signal_command(long_cache, run), check=True, env=_env(), timeout=600)
    assert load_checkpoint(run / "checkpoints" / f"{RUN}_last.pth")["progress"]["global_step"] == STEPS
    return _final_weights(run)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_writes_a_checkpoint_and_resuming_from_it_is_exact(long_cache, uninterrupted_epoch, tmp_path,
                                                                     signum):  # fmt: skip
    run = tmp_path / "run"
    last = run / "checkpoints" / f"{RUN}_last.pth"
    process = subprocess.Popen(_signal_command(long_cache, run), env=_env(), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT)  # fmt: skip
    deadline = time.time() + 120
    while process.poll() is None and not (run / "history.csv").exists() and time.time() < deadline:
        time.sleep(0.02)
    time.sleep(0.5)  # into the loop, well before the end of the epoch
    assert process.poll() is None, process.communicate()[0].decode()
    assert not has_checkpoint(last)  # nothing written yet: what follows is the signal's doing
    process.send_signal(signum)
    output, _ = process.communicate(timeout=120)
    text = output.decode()
    assert process.returncode == 130, text
    assert "--resume" in text and signal.Signals(signum).name in text and "Traceback" not in text
    progress = load_checkpoint(last)["progress"]
    assert progress["epoch"] == 0 and 0 < progress["global_step"] < STEPS
    assert not (run / ".lock").exists()
    assert (run / "split.json").read_bytes() == (long_cache / "split.json").read_bytes()

    subprocess.run(_signal_command(long_cache, run, "--resume"), check=True, env=_env(), timeout=600)
    resumed = _final_weights(run)
    for key, value in uninterrupted_epoch.items():
        assert torch.equal(value, resumed[key]), key


def _limit_file_size(limit: int):
    def apply() -> None:  # in the child, before it starts: writes past ``limit`` fail with EFBIG
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_while_checkpointing_keeps_the_last_good_checkpoint(cache, tmp_path):
    run = tmp_path / "run"
    quick = ["--epochs", "1", "--checkpoint-every", "0"]
    subprocess.run(_command(cache, run, *quick), check=True, env=_env(), timeout=300)
    last = run / "checkpoints" / f"{RUN}_last.pth"
    good = last.read_bytes()
    # The next checkpoint cannot be written whole: the real write path meets the limit.
    result = subprocess.run(_command(cache, run, "--resume", "--epochs", "3", "--checkpoint-every", "0"),
                            env=_env(), capture_output=True, text=True, timeout=300,
                            preexec_fn=_limit_file_size(len(good) // 2))  # fmt: skip
    lines = result.stderr.strip().splitlines()
    assert result.returncode not in (0, -signal.SIGXFSZ), result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr, result.stderr
    assert "could not write the checkpoint" in lines[0] and "File too large" in lines[0]
    assert last.read_bytes() == good
    assert load_checkpoint(last)["progress"]["epoch"] == 1
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no partial file
    assert not (run / ".lock").exists()


def test_the_run_configuration_is_replaced_whole_or_not_at_all(tmp_path):
    from mri2mri.config import RunConfig

    path = tmp_path / "config.json"
    RunConfig().save(path)
    before = path.read_bytes()
    script = ("import sys; from pathlib import Path; from mri2mri.config import RunConfig, TrainConfig; "
              "RunConfig(train=TrainConfig(epochs=7)).save(Path(sys.argv[1]))")  # fmt: skip
    result = subprocess.run([sys.executable, "-c", script, str(path)], env=_env(), capture_output=True, text=True,
                            timeout=120, preexec_fn=_limit_file_size(len(before) // 2))  # fmt: skip
    assert result.returncode != 0 and "File too large" in result.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
