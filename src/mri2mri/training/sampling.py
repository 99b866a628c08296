"""What each step trains on: batches and random streams that depend only on (seed, epoch, step).

Neither the worker process nor how far an earlier run got changes which slices a step sees or
how they are augmented, so a resumed run ends with the same weights as an uninterrupted one,
and N processes together see exactly what one process sees.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mri2mri.config import RunConfig
from mri2mri.data.dataset import Sample, SliceDataset
from mri2mri.errors import ConfigError
from mri2mri.runtime import Runtime


def epoch_batches(
    n_samples: int, batch_size: int, seed: int, epoch: int, start_step: int = 0,
    rank: int = 0, world_size: int = 1,
) -> list[list[int]]:  # fmt: skip
    """This rank's batches of one epoch, from global step ``start_step`` on.

    The permutation depends only on (seed, epoch); each global batch is shared out across
    ranks by striding, so N processes see together exactly what one process sees, and a run
    resumed with another number of processes continues the same sequence of global batches.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_samples, generator=generator).tolist()
    steps = n_samples // batch_size
    offset = epoch * n_samples  # encodes the epoch in the index, for per-sample random seeds
    return [
        [offset + i for i in order[step * batch_size : (step + 1) * batch_size][rank::world_size]]
        for step in range(start_step, steps)
    ]


class EpochBatchSampler(Sampler[list[int]]):
    """This rank's :func:`epoch_batches`, for one DataLoader kept for the whole run.

    Call ``set_epoch(epoch, start_step)`` before each pass: a DataLoader asks its batch sampler
    for a new iterator at every pass, so persistent worker processes (started once, not once per
    epoch) still serve every epoch in its own deterministic order.
    """

    def __init__(self, n_samples: int, batch_size: int, seed: int, steps_per_epoch: int,
                 rank: int = 0, world_size: int = 1):  # fmt: skip
        self.n_samples, self.batch_size, self.seed = n_samples, batch_size, seed
        self.steps_per_epoch, self.rank, self.world_size = steps_per_epoch, rank, world_size
        self.epoch = self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return max(self.steps_per_epoch - self.start_step, 0)

    def __iter__(self) -> Iterator[list[int]]:
        batches = epoch_batches(self.n_samples, self.batch_size, self.seed, self.epoch,
                                self.start_step, self.rank, self.world_size)  # fmt: skip
        return iter(batches[: len(self)])


class EpochIndexed(Dataset[Sample]):
    """Serves ``epoch * n + i`` as sample ``i``, seeding its augmentation from (seed, epoch, i).

    Augmentation then depends on which sample and which epoch, never on which worker process
    or how far a previous run got, which keeps resumed and distributed runs exact.
    """

    def __init__(self, dataset: SliceDataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        if self.dataset.transform is None:
            return self.dataset[index % len(self.dataset)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 7_368_787 + index) % 2**63)
            return self.dataset[index % len(self.dataset)]


def _step_seed(seed: int, global_step: int, rank: int) -> int:
    """The seed of one rank's random stream at one global step (dropout, and any other draw the step makes)."""
    return ((seed * 1_000_003 + global_step) * 1024 + rank) % 2**63


def _augment_seed(seed: int, global_step: int) -> int:
    """One seed for the whole global batch (every rank draws it, keeps its rows), distinct from
    every rank's step seed."""
    return _step_seed(seed, global_step, 1023)


def make_train_loader(
    dataset: Dataset, sampler: EpochBatchSampler, workers: int, runtime: Runtime
) -> DataLoader:
    """One loader for the whole run: its workers persist, the sampler sets each epoch's order."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",  # page-locked batches copy asynchronously
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


def _effective_batch(batch_size: int, n_samples: int, world_size: int) -> int:
    """The global batch size: ``batch_size``, or every slice when there are fewer."""
    if batch_size % world_size:
        raise ConfigError(f"--batch-size {batch_size} is not divisible by the {world_size} processes")
    if n_samples >= batch_size:
        return batch_size
    # Fewer slices than one batch: use them all, rounded down to a multiple of the processes.
    return max(world_size, n_samples - n_samples % world_size)


def _steps_per_epoch(config: RunConfig, n_samples: int, batch_size: int) -> int:
    """Whole global batches per epoch, at most ``max_steps_per_epoch`` when that is set."""
    steps = n_samples // batch_size
    if config.train.max_steps_per_epoch:
        steps = min(steps, config.train.max_steps_per_epoch)
    return steps


def _device_augmentation(config: RunConfig):
    """The batched augmentation (``data/gpu_augment.py``), run on the training device, GPU or CPU.

    One path for every device: a run draws the same changes on a CPU and on a GPU, and no
    per-sample TorchIO work in the data loader starves a GPU (``data/augment.py`` remains for
    use outside training)."""
    if not config.data.augment:
        return None
    import dataclasses

    from mri2mri.data.gpu_augment import BatchAugmentation

    return BatchAugmentation(**dataclasses.asdict(config.augmentation))
