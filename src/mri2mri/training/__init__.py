"""Training: the alternating GAN step of the report, and the loop around it.

* :mod:`~mri2mri.training.networks` — G and D, their optimisers, schedules and wrappers;
* :mod:`~mri2mri.training.step` — one GAN step, in the report's (and the pix2pix paper's) order;
* :mod:`~mri2mri.training.sampling` — data order and random streams that depend only on
  (seed, epoch, step), so a resumed run ends with the same weights as an uninterrupted one;
* :mod:`~mri2mri.training.state` — what a checkpoint holds, and its save and restore;
* :mod:`~mri2mri.training.validation` — the validation scores of each epoch;
* :mod:`~mri2mri.training.loop` — epochs, checkpoints, stops on a time budget, a
  signal or non-finite steps, DistributedDataParallel under torchrun.

The names below are the ones other modules, tests and benchmarks use.
"""

from mri2mri.training.loop import TrainResult, train
from mri2mri.training.networks import (
    DiscriminatorObjective,
    Networks,
    build_networks,
    residual_table,
)
from mri2mri.training.sampling import (
    EpochBatchSampler,
    EpochIndexed,
    epoch_batches,
    make_train_loader,
)
from mri2mri.training.state import Progress, TrainingStopped
from mri2mri.training.step import StepResult, gan_step
from mri2mri.training.validation import validate

__all__ = [
    "DiscriminatorObjective",
    "EpochBatchSampler",
    "EpochIndexed",
    "Networks",
    "Progress",
    "StepResult",
    "TrainResult",
    "TrainingStopped",
    "build_networks",
    "epoch_batches",
    "gan_step",
    "make_train_loader",
    "residual_table",
    "train",
    "validate",
]
