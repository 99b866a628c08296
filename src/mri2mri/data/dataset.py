"""PyTorch dataset over a slice cache.

A sample is a small typed record: the source slice(s), the target slice, the brain mask and where
the slice came from. Intensities are stored in [0, 1] and served in [-1, 1], the range of the
generators' Tanh output.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset

from mri2mri.data.cache import SliceCache


class Sample(NamedTuple):
    """One training or test example; the default collate function batches each field."""

    source: torch.Tensor  # (C, H, W) in [-1, 1]
    target: torch.Tensor  # (1, H, W) in [-1, 1]
    mask: torch.Tensor  # (1, H, W) float {0, 1}
    subject: str
    slice_index: int


Transform = Callable[[Sample], Sample]


def to_model_range(x: np.ndarray | torch.Tensor):
    """[0, 1] -> [-1, 1]."""
    return x * 2.0 - 1.0


def to_unit_range(x: np.ndarray | torch.Tensor):
    """[-1, 1] -> [0, 1]."""
    return (x + 1.0) * 0.5


class SliceDataset(Dataset[Sample]):
    """The slices of one split of a cache (``"train"``, ``"val"`` or ``"test"``)."""

    def __init__(self, cache: SliceCache, split: str, transform: Transform | None = None):
        self.cache = cache
        self.split = split
        self.rows = cache.rows(split)
        self.transform = transform
        owner = cache.row_owner()
        self._subject = [cache.subjects[owner[r]].subject for r in self.rows]
        self._slice_index = _slice_indices(cache)[self.rows] if len(self.rows) else np.zeros(0, int)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> Sample:
        row = int(self.rows[index])
        # np.array copies the memory-mapped slice so that the tensor owns writable memory.
        sample = Sample(
            source=to_model_range(torch.from_numpy(np.array(self.cache.source[row]))),
            target=to_model_range(torch.from_numpy(np.array(self.cache.target[row]))),
            mask=torch.from_numpy(np.array(self.cache.mask[row], dtype=np.float32)),
            subject=self._subject[index],
            slice_index=int(self._slice_index[index]),
        )
        return self.transform(sample) if self.transform is not None else sample


def _slice_indices(cache: SliceCache) -> np.ndarray:
    indices = np.zeros(len(cache.source), dtype=np.int64)
    for record in cache.subjects:
        start, stop = record.rows
        indices[start:stop] = record.slice_indices[: stop - start]
    return indices
