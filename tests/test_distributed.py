"""DistributedDataParallel on the CPU with gloo: two processes train like one, and a run started
with two processes resumes with one.

Two processes each see half of every global batch (``epoch_batches`` strides it), gradients are
averaged by DDP and batch-norm statistics are those of the global batch (``GlobalBatchNorm2d``
on the CPU), so after a few steps the weights equal those of one process on the whole batch.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.multiprocessing as mp
from conftest import tiny_config

from mri2mri.checkpoint import load_checkpoint
from mri2mri.config import RunConfig, replace
from mri2mri.models import build_generator
from mri2mri.runfolder import read_history_rows
from mri2mri.training import train

pytestmark = pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="this torch has no gloo backend",
)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _train_rank(rank: int, world_size: int, port: int, config: dict, cache: str, run_dirs: list[str]) -> None:
    """One process of a ``world_size`` run, set up as torchrun would set it up."""
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world_size), LOCAL_WORLD_SIZE=str(world_size),
    )  # fmt: skip
    os.environ.pop("OMP_NUM_THREADS", None)  # the runtime shares the cores out itself
    train(RunConfig.from_dict(config), Path(cache), Path(run_dirs[rank]), progress=False)


def _train_two_processes(config: RunConfig, cache: Path, run_dirs: list[Path]) -> None:
    args = (2, _free_port(), config.to_dict(), str(cache), [str(p) for p in run_dirs])
    mp.spawn(_train_rank, args=args, nprocs=2, join=True)


def _inert_keys(state: dict[str, torch.Tensor]) -> set[str]:
    """Biases of a convolution that feeds a batch norm, and that norm's running mean.

    Batch norm subtracts the per-channel mean, so such a bias has no effect and a zero gradient
    up to rounding; Adam divides that rounding noise by its own size and moves the bias by
    +-lr at random. Its value (and the running mean it shifts) is therefore noise in one
    process as in two, and is left out of the comparison.
    """
    inert = set()
    for key in state:
        if key.endswith(".running_mean"):
            prefix, _, index = key[: -len(".running_mean")].rpartition(".")
            if index.isdigit():
                inert |= {key, f"{prefix}.{int(index) - 1}.bias"}
    return inert & set(state)


def _assert_same_weights(expected_run: Path, actual_run: Path, tolerance: float = 1e-5) -> None:
    expected = load_checkpoint(expected_run / "checkpoints" / "gan_t1_to_t2_last.pth")
    actual = load_checkpoint(actual_run / "checkpoints" / "gan_t1_to_t2_last.pth")
    assert actual["progress"]["global_step"] == expected["progress"]["global_step"]
    for network in ("G", "D"):
        compared = set(expected[network]) - _inert_keys(expected[network])
        assert len(compared) > len(expected[network]) // 2
        for key in compared:
            difference = (expected[network][key].float() - actual[network][key].float()).abs().max()
            assert difference <= tolerance, f"{network}.{key} differs by {difference:.2e}"
    # What the inert biases cannot change: G's output with batch statistics on a fixed input.
    config = RunConfig.from_dict(expected["config"])
    source = torch.linspace(-1, 1, 4 * 32 * 32).reshape(4, 1, 32, 32)
    outputs = []
    for payload in (expected, actual):
        G = build_generator(config.model)
        G.load_state_dict(payload["G"])
        outputs.append(G.train()(source).detach())
    assert torch.allclose(outputs[0], outputs[1], atol=1e-4)


def _files(run: Path) -> set[str]:
    return {str(p.relative_to(run)) for p in run.rglob("*") if p.is_file()}


def test_two_processes_train_like_one_and_resume_with_one(tiny_cache, tmp_path):
    config = tiny_config(epochs=1)  # 12 training slices, batch 4: 3 global steps per epoch
    two_epochs = replace(config, train=replace(config.train, epochs=2))
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train(config, tiny_cache, single, progress=False)

    # Rank 1 gets a folder of its own: it must leave it empty (rank 0 alone writes the run).
    rank1_folder = tmp_path / "rank1"
    _train_two_processes(config, tiny_cache, [ddp, rank1_folder])
    assert not rank1_folder.exists() or not any(rank1_folder.iterdir())
    assert _files(ddp) == _files(single)
    assert [row["epoch"] for row in read_history_rows(ddp / "history.csv")] == ["1"]
    _assert_same_weights(single, ddp)

    # The two-process run resumes with one process and continues the same global batches.
    train(two_epochs, tiny_cache, single, resume=True, progress=False)
    result = train(two_epochs, tiny_cache, ddp, resume=True, progress=False)
    assert (result.epochs_done, result.global_step) == (2, 6)
    assert [row["epoch"] for row in read_history_rows(ddp / "history.csv")] == ["1", "2"]
    _assert_same_weights(single, ddp)


def test_two_processes_train_like_one_with_feature_matching_and_two_d_steps(tiny_cache, tmp_path):
    """The D forward shared by G's and D's update (and its features) under DDP, without norms."""
    config = tiny_config(epochs=1, gan_loss="hinge", lambda_feature_matching=10.0, d_steps=2)
    config = replace(config, model=replace(config.model, norm="none"))
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    train(config, tiny_cache, single, progress=False)
    _train_two_processes(config, tiny_cache, [ddp, tmp_path / "rank1"])
    _assert_same_weights(single, ddp)
