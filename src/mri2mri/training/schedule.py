"""Learning-rate schedules: pix2pix's per-epoch decay, and a linear decay over the whole run.

The per-epoch decay is a ``LambdaLR`` that the loop steps at the end of each epoch. The
whole-run decay (``--lr-schedule linear``) is set before every step instead, because a run with
a time budget does not know its length in epochs: its fraction done is the larger of its steps
over ``epochs × steps per epoch`` and its training seconds over the budget. Both come from the
saved :class:`~mri2mri.training.state.Progress`, so a resumed run continues the same schedule.
Training to a budget with the rate falling to zero at its end beats a constant rate at every
budget in Li, Yumer & Ramanan, *Budgeted training* (ICLR 2020).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

from mri2mri.config import TrainConfig


def epoch_decay(epochs: int, decay_epochs: int) -> Callable[[int], float]:
    """pix2pix's schedule: constant, then linearly to zero over the last ``decay_epochs``."""
    start = max(epochs - decay_epochs, 0)

    def factor(epoch: int) -> float:
        if decay_epochs <= 0 or epoch < start:
            return 1.0
        return max(0.0, 1.0 - (epoch - start + 1) / (decay_epochs + 1))

    return factor


def run_fraction(train: TrainConfig, steps_done: int, seconds_done: float, total_steps: int) -> float:
    """How much of the run is done, in [0, 1]: by steps, or by training time when a budget is set
    and it runs out first."""
    fraction = steps_done / max(total_steps, 1)
    if train.time_budget is not None:
        fraction = max(fraction, seconds_done / train.time_budget)
    return min(fraction, 1.0)


def whole_run_factor(train: TrainConfig, steps_done: int, seconds_done: float, total_steps: int) -> float:
    """The share of ``--lr`` for the next step: 1 for a constant schedule, ``1 - fraction done``
    for the linear one."""
    if train.lr_schedule == "constant":
        return 1.0
    return 1.0 - run_fraction(train, steps_done, seconds_done, total_steps)


def set_learning_rate(optimizers: Iterable[torch.optim.Optimizer], lr: float) -> None:
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            group["lr"] = lr
