"""What a checkpoint holds, and how training writes and restores it.

A checkpoint is a dict of state_dicts (networks, optimisers, schedules, loss scaler, EMA) plus
the configuration and :class:`Progress`, so a resumed run continues exactly where it stopped.
:class:`TrainingStopped` lives here, with the checkpoint it promises was kept.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from mri2mri.checkpoint import has_checkpoint, load_latest, save_checkpoint
from mri2mri.config import RunConfig
from mri2mri.errors import UserError
from mri2mri.runfolder import RunFolder
from mri2mri.runtime import Runtime
from mri2mri.training.networks import Networks


class TrainingStopped(UserError):
    """Training stopped early (signal, numerical fault, write failure); a checkpoint was kept."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # global steps of this epoch already done
    global_step: int = 0
    train_seconds: float = 0.0
    images_seen: int = 0
    best_val_l1: float = math.inf
    skipped_steps: int = 0
    sums: dict[str, float] = field(default_factory=lambda: {"loss_G": 0.0, "loss_D": 0.0, "loss_L1": 0.0, "n": 0.0})

    def state(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


def _save(path: Path, nets: Networks, config: RunConfig, progress: Progress, extras: dict[str, Any],
          *, keep_previous: bool = True) -> None:  # fmt: skip
    """Write a checkpoint (rank 0 only calls this); a failed write stops training, and the
    checkpoint it was replacing stays intact."""
    payload: dict[str, Any] = {
        "format": 1,
        "G": nets.G.state_dict(),
        "D": nets.D.state_dict(),
        "opt_G": nets.opt_G.state_dict(),
        "opt_D": nets.opt_D.state_dict(),
        "sched_G": nets.sched_G.state_dict(),
        "sched_D": nets.sched_D.state_dict(),
        "scaler": nets.scaler.state_dict(),
        "epoch": progress.epoch,
        "progress": progress.state(),
        "config": config.to_dict(),
        **extras,
    }
    if nets.ema is not None:
        payload["ema"] = nets.ema.module.state_dict()
        payload["ema_n_averaged"] = nets.ema.n_averaged  # else the first update after a resume copies G
    try:
        save_checkpoint(path, payload, keep_previous=keep_previous)
    except OSError as error:
        raise TrainingStopped(
            f"{path}: could not write the checkpoint ({error.strerror or error}); training stopped, "
            "the previous checkpoint is intact"
        ) from None


def _restore(folder: RunFolder, nets: Networks, config: RunConfig, runtime: Runtime) -> Progress:
    """Load the run's last checkpoint into ``nets``; its progress, and the history cut back to it."""
    if not has_checkpoint(folder.last):
        raise UserError(f"{folder.last}: nothing to resume (no checkpoint in {folder.checkpoints})")
    payload, used = load_latest(folder.last, map_location=runtime.device)
    saved = RunConfig.from_dict(payload["config"])
    if (saved.model, saved.data.image_size) != (config.model, config.data.image_size):
        raise UserError(f"{used}: the checkpoint's model or image size differs from this run's configuration")
    nets.G.load_state_dict(payload["G"])
    nets.D.load_state_dict(payload["D"])
    nets.opt_G.load_state_dict(payload["opt_G"])
    nets.opt_D.load_state_dict(payload["opt_D"])
    _match_parameter_layouts(nets.opt_G)
    _match_parameter_layouts(nets.opt_D)
    nets.sched_G.load_state_dict(payload["sched_G"])
    nets.sched_D.load_state_dict(payload["sched_D"])
    nets.scaler.load_state_dict(payload["scaler"])
    if nets.ema is not None and "ema" in payload:
        nets.ema.module.load_state_dict(payload["ema"])
        if "ema_n_averaged" in payload:
            nets.ema.n_averaged.copy_(payload["ema_n_averaged"])
    progress = Progress(**payload["progress"])
    if runtime.is_main:
        folder.truncate_history(progress.epoch)
    return progress


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every optimiser state tensor its parameter's memory layout (channels_last or not).

    Fused Adam silently computes wrong updates when a state tensor's strides differ from its
    parameter's (PyTorch 2.13), as after resuming with another memory format.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)
