"""The CPU thread policy: chosen before torch loads, reported, and never over the user's own.

What the OpenMP runtime actually uses is read from the runtime itself: libgomp prints its
settings when it loads (``OMP_DISPLAY_ENV=VERBOSE``), so these tests see what a user's process
gets, not what mri2mri thinks it set. They skip where torch uses another OpenMP runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mri2mri.threads import (
    SPIN_COUNT,
    ThreadPolicy,
    apply_thread_policy,
    choose_thread_policy,
    cpu_count,
    probe_busy_cores,
    threads_for,
)

THREAD_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS", "KMP_BLOCKTIME", "OMP_DISPLAY_ENV")


def _environment(**variables: str) -> dict[str, str]:
    """This process's environment without any thread setting, plus ``variables``."""
    clean = {k: v for k, v in os.environ.items() if k not in THREAD_VARIABLES}
    return {**clean, "PYTHONUNBUFFERED": "1", **variables}


def _openmp_settings(command: list[str], environment: dict[str, str], cwd: Path) -> dict[str, str]:
    """The settings libgomp reports when torch loads it in ``command``'s process."""
    done = subprocess.run(command, env={**environment, "OMP_DISPLAY_ENV": "VERBOSE"}, cwd=cwd,
                          capture_output=True, text=True, timeout=120)  # fmt: skip
    shown = re.search(r"OPENMP DISPLAY ENVIRONMENT BEGIN(.*?)OPENMP DISPLAY ENVIRONMENT END", done.stderr, re.S)
    if shown is None:
        pytest.skip("this torch's OpenMP runtime does not display its settings (not libgomp)")
    return dict(re.findall(r"^\s*(\w+) = '([^']*)'", shown.group(1), re.M))


# A `train` that fails at once (no such data) after importing the training code, and so torch.
CLI_TRAIN = [sys.executable, "-m", "mri2mri", "train", "no-such-data", "--out", "run", "--quiet"]


def test_without_the_policy_libgomp_spins_its_default_300000(tmp_path):
    """The measurement can tell: a plain `import torch` gets OpenMP's own long spin."""
    settings = _openmp_settings([sys.executable, "-c", "import torch"], _environment(), tmp_path)
    assert settings["GOMP_SPINCOUNT"] == "300000"


@contextlib.contextmanager
def busy_processes(count: int):
    """``count`` CPU-bound processes for the duration (always stopped)."""
    processes = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(count)]
    try:
        time.sleep(0.5)  # running, not starting
        yield
    finally:
        for process in processes:
            process.kill()
        for process in processes:
            process.wait()


@pytest.mark.alone  # another test process running beside it would count as busy
def test_the_probe_counts_other_processes_busy_cores():
    with busy_processes(1):
        busy = probe_busy_cores(0.5)
    assert busy is not None and 0.6 <= busy <= 1.4


@pytest.mark.alone  # another test process running beside it would count as busy
def test_on_free_cores_the_command_keeps_openmps_defaults(tmp_path):
    """Alone on the machine, OpenMP's long spin is the fastest: nothing is set."""
    settings = _openmp_settings(CLI_TRAIN, _environment(), tmp_path)
    assert settings["GOMP_SPINCOUNT"] == "300000"
    assert settings["OMP_NUM_THREADS"] != "1" or cpu_count() == 1


@pytest.mark.parametrize(
    ("user", "expected"),
    [
        ({}, {"OMP_NUM_THREADS": "1", "GOMP_SPINCOUNT": str(SPIN_COUNT)}),
        ({"OMP_WAIT_POLICY": "PASSIVE"}, {"OMP_WAIT_POLICY": "PASSIVE", "GOMP_SPINCOUNT": "0", "OMP_NUM_THREADS": "1"}),
        ({"GOMP_SPINCOUNT": "12345"}, {"GOMP_SPINCOUNT": "12345", "OMP_NUM_THREADS": "1"}),
        ({"OMP_NUM_THREADS": "2"}, {"OMP_NUM_THREADS": "2", "GOMP_SPINCOUNT": str(SPIN_COUNT)}),
    ],
)
def test_beside_busy_processes_the_command_uses_the_free_cores_and_respects_the_user(user, expected, tmp_path):
    """With every core busy, the command runs one thread that gives its core up quickly, as
    libgomp itself reports when torch loads it; the user's own settings win."""
    with busy_processes(cpu_count()):
        settings = _openmp_settings(CLI_TRAIN, _environment(**user), tmp_path)
    for name, value in expected.items():
        assert settings[name] == value, f"{name}: {settings[name]!r} with {user}"


def test_the_choice_leaves_the_users_variables_alone():
    assert choose_thread_policy({}).chosen == {}  # not measured: as on free cores
    assert choose_thread_policy({}, busy_cores=0.2).chosen == {}
    busy = choose_thread_policy({}, busy_cores=1.0)
    assert busy.chosen == {"OMP_NUM_THREADS": str(threads_for(1.0)), "GOMP_SPINCOUNT": str(SPIN_COUNT)}
    for name in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME"):
        policy = choose_thread_policy({name: "7"}, busy_cores=1.0)
        assert "GOMP_SPINCOUNT" not in policy.chosen and policy.user == {name: "7"}
    policy = choose_thread_policy({"OMP_NUM_THREADS": "1"}, busy_cores=1.0)
    assert policy.chosen == {"GOMP_SPINCOUNT": str(SPIN_COUNT)} and policy.user == {"OMP_NUM_THREADS": "1"}
    assert "your environment" in policy.describe() and "mri2mri's choice" in policy.describe()


def test_one_thread_per_free_core():
    assert threads_for(0.0, cores=2) == 2
    assert threads_for(1.0, cores=2) == 1
    assert threads_for(3.0, cores=2) == 1
    assert threads_for(1.0, cores=8) == 7


def test_applied_after_torch_has_loaded_it_changes_nothing_and_says_so():
    import torch  # noqa: F401  (loaded, as in any process that imported mri2mri's training code)

    environment: dict[str, str] = {}
    policy = apply_thread_policy(environment)
    assert environment == {}
    assert policy.too_late and "torch was loaded before" in policy.describe()
    assert ThreadPolicy().describe() == "OpenMP defaults"


def test_train_says_which_thread_policy_and_precision_it_uses(tiny_cache, tmp_path):
    """The first line of a real `train` names the policy in force and what --precision auto chose;
    run_summary.json records the resolved precision."""
    from mri2mri.runtime import cpu_has_fast_bf16

    run = tmp_path / "run"
    command = [sys.executable, "-m", "mri2mri", "train", str(tiny_cache), "--out", str(run), "--epochs", "1",
               "--max-steps-per-epoch", "1", "--device", "cpu", "--base-channels", "8"]  # fmt: skip
    done = subprocess.run(command, env=_environment(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    first = next(line for line in done.stdout.splitlines() if line.startswith("training "))
    assert "threads (OpenMP defaults (mri2mri's choice: " in first or f"GOMP_SPINCOUNT={SPIN_COUNT} (mri2mri's choice" in first
    resolved = "bf16" if cpu_has_fast_bf16() else "fp32"
    why = "this CPU has native bf16" if resolved == "bf16" else "this CPU emulates bf16"
    assert f"precision auto -> {resolved} ({why})" in first
    summary = json.loads(next(run.rglob("run_summary.json")).read_text())
    assert summary["precision"] == resolved
