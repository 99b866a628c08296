"""Baselines that a translation model has to beat, scored on the same slices as the model.

- ``identity``: the input contrast itself (its central channel when the input carries 2.5D
  context). It answers "does the model do better than not translating at all?".
- ``intensity-map``: the conditional mean of the target intensity given the source intensity,
  a 256-bin histogram regression fitted on the brain voxels of the training split. It is the
  best any voxel-wise intensity lookup can do in mean squared error, so a model that does not
  beat it has learnt nothing about anatomy or context.

Both act on images in [0, 1] and return (B, 1, H, W) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mri2mri.data.cache import SliceCache
from mri2mri.errors import DataError

N_BINS = 256


def identity(source: torch.Tensor) -> torch.Tensor:
    """The central channel of a (B, C, H, W) source batch: (B, 1, H, W)."""
    centre = source.shape[1] // 2
    return source[:, centre : centre + 1]


def _bin_of(values: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin k holds [k / n, (k + 1) / n); 1.0 and anything outside [0, 1] go to the edge bins."""
    return np.clip(np.floor(values * n_bins), 0, n_bins - 1).astype(np.int64)


@dataclass(frozen=True)
class IntensityMap:
    """Histogram regression target = f(source): ``table[k]`` is the mean target intensity of the
    training voxels whose source intensity falls in bin k; applied by linear interpolation
    between bin centres (constant beyond the first and last centre)."""

    table: np.ndarray  # (n_bins,) float64, every bin filled
    counts: np.ndarray  # (n_bins,) int64 training voxels per bin; 0 = interpolated bin

    @property
    def n_bins(self) -> int:
        return len(self.table)

    @property
    def centres(self) -> np.ndarray:
        return (np.arange(self.n_bins) + 0.5) / self.n_bins

    @classmethod
    def from_sums(cls, sums: np.ndarray, counts: np.ndarray) -> IntensityMap:
        """The map from per-bin sums of target values and voxel counts; empty bins are filled by
        linear interpolation between the nearest filled bins' centres."""
        filled = counts > 0
        if not filled.any():
            raise DataError("intensity-map baseline: no brain voxels to fit it on")
        centres = (np.arange(len(counts)) + 0.5) / len(counts)
        means = sums[filled] / counts[filled]
        table = np.interp(centres, centres[filled], means)
        return cls(table=table, counts=counts.astype(np.int64))

    @classmethod
    def fit(cls, source: np.ndarray, target: np.ndarray, n_bins: int = N_BINS) -> IntensityMap:
        """Fit on paired voxel values in [0, 1] (1D arrays of brain voxels)."""
        sums, counts = _bin_sums(source, target, n_bins)
        return cls.from_sums(sums, counts)

    @classmethod
    def fit_cache(
        cls, cache: SliceCache, split: str = "train", n_bins: int = N_BINS, chunk_rows: int = 64,
        *, background_in_first_bin: bool = False,
    ) -> IntensityMap:  # fmt: skip
        """Fit on the brain voxels of every slice of ``split`` (the central source channel),
        reading the memory-mapped cache a chunk of rows at a time.

        With ``background_in_first_bin``, the voxels outside the brain whose source falls in the
        first bin count too: a map applied to whole slices (the residual generator's) then sends
        the empty background to the target's background (0), not to the darkest brain tissue's
        target (in a T1 -> T2 map, bright CSF). Brain voxels almost never fall in that bin
        (below the 0.5th percentile after normalisation: about 0.05 % of them)."""
        rows = cache.rows(split)
        if len(rows) == 0:
            raise DataError(f"{cache.path}: no {split} subjects to fit the intensity-map baseline on")
        centre = cache.in_channels // 2
        sums = np.zeros(n_bins)
        counts = np.zeros(n_bins, dtype=np.int64)
        for start in range(0, len(rows), chunk_rows):
            chunk = rows[start : start + chunk_rows]
            brain = np.asarray(cache.mask[chunk, 0]) > 0
            source_all = np.asarray(cache.source[chunk, centre])
            if background_in_first_bin:
                brain = brain | (source_all < 1.0 / n_bins)
            source = source_all[brain]
            target = np.asarray(cache.target[chunk, 0])[brain]
            chunk_sums, chunk_counts = _bin_sums(source, target, n_bins)
            sums += chunk_sums
            counts += chunk_counts
        return cls.from_sums(sums, counts)

    def __call__(self, source: torch.Tensor) -> torch.Tensor:
        """Map a (B, C, H, W) source batch in [0, 1] (central channel) to (B, 1, H, W)."""
        values = identity(source)
        table = torch.as_tensor(self.table, dtype=values.dtype, device=values.device)
        # Position on the axis of bin centres: centre k sits at k. Same as np.interp(x, centres, table).
        position = (values * self.n_bins - 0.5).clamp(0, self.n_bins - 1)
        low = position.floor().long()
        high = (low + 1).clamp(max=self.n_bins - 1)
        weight = position - low.to(values.dtype)
        return table[low] * (1 - weight) + table[high] * weight

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, written beside the metrics so the baseline can be repeated."""
        return {
            "n_bins": self.n_bins,
            "n_voxels": int(self.counts.sum()),
            "empty_bins": int((self.counts == 0).sum()),
            "table": [round(float(v), 6) for v in self.table],
        }


def _bin_sums(source: np.ndarray, target: np.ndarray, n_bins: int) -> tuple[np.ndarray, np.ndarray]:
    bins = _bin_of(np.asarray(source, dtype=np.float64).ravel(), n_bins)
    weights = np.asarray(target, dtype=np.float64).ravel()
    sums = np.bincount(bins, weights=weights, minlength=n_bins)
    counts = np.bincount(bins, minlength=n_bins)
    return sums, counts
