"""Resuming is exact for every training option: a run stopped at an epoch boundary or in the
middle of an epoch, then resumed, ends with the same G, D and EMA weights as a run that was
never stopped."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from conftest import tiny_config

from mri2mri.checkpoint import load_checkpoint
from mri2mri.config import PRESETS, RunConfig, replace
from mri2mri.training import train

RUN = "gan_t1_to_t2"

def _preset(name: str) -> RunConfig:
    """The preset's model and loss settings, at the tiny test size."""
    config = tiny_config()
    values = PRESETS[name]
    model = replace(config.model, generator=values["generator"], discriminator=values["discriminator"],
                    residual=values["residual"])  # fmt: skip
    data = replace(config.data, augment=values["augment"])
    train_config = replace(config.train, gan_loss=values["gan_loss"])
    return replace(config, model=model, data=data, train=train_config)


def _with(**changes) -> RunConfig:
    config = tiny_config()
    data = {k: changes.pop(k) for k in ("augment",) if k in changes}
    model = {k: changes.pop(k) for k in ("residual",) if k in changes}
    return replace(config, data=replace(config.data, **data), model=replace(config.model, **model),
                   train=replace(config.train, **changes))  # fmt: skip


OPTIONS = {
    "defaults": lambda: tiny_config(),
    "ema": lambda: _with(ema_decay=0.9),
    "lr-decay": lambda: _with(lr_decay_epochs=1),
    "lr-linear": lambda: _with(lr_schedule="linear"),
    "grad-clip": lambda: _with(grad_clip=0.05),
    "d-steps": lambda: _with(d_steps=2),
    "augment": lambda: _with(augment=True),
    "residual": lambda: _with(residual="intensity-map"),
    "report-basic": lambda: _preset("report-basic"),
}


def _weights(run) -> dict[str, dict[str, torch.Tensor]]:
    payload = load_checkpoint(run / "checkpoints" / f"{RUN}_last.pth")
    return {key: payload[key] for key in ("G", "D", "ema") if key in payload}


def _assert_same(straight, resumed) -> None:
    assert straight.keys() == resumed.keys()
    for network, weights in straight.items():
        for key, value in weights.items():
            assert torch.equal(value, resumed[network][key]), f"{network}.{key}"


@pytest.mark.parametrize("stop", ["epoch-boundary", "mid-epoch"])
@pytest.mark.parametrize("option", OPTIONS)
def test_resume_is_exact(tiny_cache, tmp_path, option, stop):
    config = OPTIONS[option]()
    config = replace(config, train=replace(config.train, epochs=2))
    straight, split = tmp_path / "straight", tmp_path / "split"
    train(config, tiny_cache, straight, progress=False)
    if stop == "epoch-boundary":
        # Stopped right after the first epoch's checkpoint (the run folder of a SIGKILL there):
        # that checkpoint is the one the straight run kept as *_prev, and the options are the same.
        shutil.copytree(straight, split)
        os.replace(split / "checkpoints" / f"{RUN}_last_prev.pth", split / "checkpoints" / f"{RUN}_last.pth")
        assert load_checkpoint(split / "checkpoints" / f"{RUN}_last.pth")["progress"]["global_step"] == 3
    else:  # stopped by the time budget after one step
        result = train(replace(config, train=replace(config.train, time_budget=1e-9)), tiny_cache, split,
                       progress=False)  # fmt: skip
        assert result.global_step == 1
    train(config, tiny_cache, split, resume=True, progress=False)
    _assert_same(_weights(tmp_path / "straight"), _weights(tmp_path / "split"))
