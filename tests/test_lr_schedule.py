"""Learning-rate schedules as a run uses them: history.csv's lr column is the rate of each
epoch's last step, constant by default, pix2pix's decay over the last epochs, or a linear decay
to zero over the whole run (by steps, or by training time when a budget ends it first)."""

from __future__ import annotations

import csv

import pytest
from conftest import tiny_config

from mri2mri.config import TrainConfig, replace
from mri2mri.training import train
from mri2mri.training.schedule import whole_run_factor

LR = 2e-4
EPOCHS = 3
STEPS = 3  # steps per epoch of the tiny cache at batch 4


def _close(values):  # history.csv keeps 6 significant digits
    return pytest.approx(values, rel=1e-5)


def _history_lr(run) -> list[float]:
    with open(run / "history.csv", newline="", encoding="utf-8") as handle:
        return [float(row["lr"]) for row in csv.DictReader(handle)]


def _trained(tiny_cache, tmp_path, **changes):
    config = tiny_config(epochs=EPOCHS, lr=LR, **changes)
    result = train(config, tiny_cache, tmp_path / "run", progress=False)
    assert result.global_step == EPOCHS * STEPS
    return _history_lr(tmp_path / "run")


def test_the_default_rate_is_constant(tiny_cache, tmp_path):
    assert _trained(tiny_cache, tmp_path) == _close([LR] * EPOCHS)


def test_pix2pix_decay_lowers_the_rate_over_the_last_epochs(tiny_cache, tmp_path):
    # Decay over the last 2 of 3 epochs: epoch 1 at the full rate, then 2/3 and 1/3 of it.
    assert _trained(tiny_cache, tmp_path, lr_decay_epochs=2) == _close([LR, LR * 2 / 3, LR / 3])


def test_a_linear_schedule_falls_to_zero_over_the_whole_run(tiny_cache, tmp_path):
    # The last step of epoch e (1-based) is step e * STEPS - 1 of EPOCHS * STEPS.
    total = EPOCHS * STEPS
    expected = [LR * (1 - (epoch * STEPS - 1) / total) for epoch in range(1, EPOCHS + 1)]
    rates = _trained(tiny_cache, tmp_path, lr_schedule="linear")
    assert rates == _close(expected)
    assert rates[-1] == _close(LR / total)  # the last step is the smallest


def test_a_time_budget_ends_the_schedule_when_it_runs_out_before_the_epochs():
    train = TrainConfig(lr_schedule="linear", epochs=100, time_budget=600.0)
    assert whole_run_factor(train, 0, 0.0, 10_000) == 1.0
    assert whole_run_factor(train, 100, 300.0, 10_000) == pytest.approx(0.5)  # by time: half done
    assert whole_run_factor(train, 9_000, 60.0, 10_000) == pytest.approx(0.1)  # by steps, first
    assert whole_run_factor(train, 100, 900.0, 10_000) == 0.0  # never negative past the budget
    assert whole_run_factor(replace(train, lr_schedule="constant"), 9_000, 590.0, 10_000) == 1.0
