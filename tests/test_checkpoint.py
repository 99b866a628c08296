"""Checkpoints: atomic, checksummed, and never a way to run code."""

from __future__ import annotations

import os

import pytest
import torch

from mri2mri.checkpoint import (
    CheckpointError,
    load_checkpoint,
    load_latest,
    previous_path,
    save_checkpoint,
)


def _payload(value: float = 1.0) -> dict:
    return {"G": {"w": torch.full((3, 3), value)}, "D": {"w": torch.zeros(2)}, "epoch": 4,
            "config": {"train": {"lr": 2e-4}}, "progress": {"best": float("inf")}}  # fmt: skip


def test_round_trip_keeps_every_value(tmp_path):
    path = tmp_path / "run_last.pth"
    save_checkpoint(path, _payload())
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["G"]["w"], torch.ones(3, 3))
    assert loaded["epoch"] == 4 and loaded["config"]["train"]["lr"] == 2e-4
    assert len(loaded["sha256"]) == 64
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_previous_checkpoint_is_kept_and_used_when_the_last_is_damaged(tmp_path):
    path = tmp_path / "run_last.pth"
    save_checkpoint(path, _payload(1.0))
    save_checkpoint(path, _payload(2.0))
    assert previous_path(path).is_file()
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated, as by a bad copy
    with pytest.raises(CheckpointError, match="truncated|unreadable"):
        load_checkpoint(path)
    with pytest.warns(UserWarning, match="falling back"):
        payload, used = load_latest(path)
    assert used == previous_path(path) and torch.equal(payload["G"]["w"], torch.ones(3, 3))


def test_tampered_values_fail_the_checksum(tmp_path):
    path = tmp_path / "x.pth"
    save_checkpoint(path, _payload())
    payload = torch.load(path, weights_only=True)
    payload["G"]["w"][0, 0] = 42.0  # a flipped weight, checksum left as it was
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match="checksum"):
        load_checkpoint(path)


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned_by_checkpoint",))


def test_a_checkpoint_that_would_run_code_is_refused_without_running_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "evil.pth"
    torch.save({"G": {"w": torch.zeros(1)}, "payload": _RunsCode()}, path)
    with pytest.raises(CheckpointError, match="refused"):
        load_checkpoint(path)
    assert not (tmp_path / "pwned_by_checkpoint").exists()


def test_missing_and_foreign_files_give_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_checkpoint(tmp_path / "nope.pth")
    (tmp_path / "garbage.pth").write_bytes(b"\x00not a checkpoint" * 10)
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "garbage.pth")
    assert "\n" not in str(info.value)
    torch.save({"weights": torch.zeros(1)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="not an mri2mri checkpoint"):
        load_checkpoint(tmp_path / "other.pth")
