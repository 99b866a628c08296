"""Baselines that a translation model has to beat, scored on the same slices as the model.

- ``identity``: the input contrast itself (its central channel when the input carries 2.5D
  context). It answers "does the model do better than not translating at all?".
- ``intensity-map``: the conditional mean of the target intensity given the source intensity,
  a 256-bin histogram regression fitted on the brain voxels of the training split. It is the
  best any voxel-wise intensity lookup can do in mean squared error, so a model that does not
  beat it has learnt nothing about anatomy or context.
- ``linear-regression`` (models of several source contrasts): target = w . sources + b, a
  per-voxel least-squares fit from every source's own slice, on the brain voxels of the training
  split. It answers "does the model do better than a voxel-wise mix of its inputs?".

With several sources, ``identity`` and ``intensity-map`` read the first source's own slice
(channel ``SliceCache.table_channel`` of the contrast-major layout). All act on images in
[0, 1] and return (B, 1, H, W) in [0, 1].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mri2mri.data.cache import SliceCache
from mri2mri.errors import DataError

N_BINS = 256


def identity(source: torch.Tensor, channel: int | None = None) -> torch.Tensor:
    """Channel ``channel`` (default: the central one) of a (B, C, H, W) source batch: (B, 1, H, W)."""
    centre = source.shape[1] // 2 if channel is None else channel
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
    channel: int | None = None  # the source channel it reads (None: the central one)

    @property
    def n_bins(self) -> int:
        return len(self.table)

    @property
    def centres(self) -> np.ndarray:
        return (np.arange(self.n_bins) + 0.5) / self.n_bins

    @classmethod
    def from_sums(cls, sums: np.ndarray, counts: np.ndarray, channel: int | None = None) -> IntensityMap:
        """The map from per-bin sums of target values and voxel counts; empty bins are filled by
        linear interpolation between the nearest filled bins' centres."""
        filled = counts > 0
        if not filled.any():
            raise DataError("intensity-map baseline: no brain voxels to fit it on")
        centres = (np.arange(len(counts)) + 0.5) / len(counts)
        means = sums[filled] / counts[filled]
        table = np.interp(centres, centres[filled], means)
        return cls(table=table, counts=counts.astype(np.int64), channel=channel)

    @classmethod
    def fit(
        cls, source: np.ndarray, target: np.ndarray, n_bins: int = N_BINS, channel: int | None = None
    ) -> IntensityMap:
        """Fit on paired voxel values in [0, 1] (1D arrays of brain voxels); ``channel``: the input
        channel the map reads when applied (None: the centre)."""
        sums, counts = _bin_sums(source, target, n_bins)
        return cls.from_sums(sums, counts, channel=channel)

    @classmethod
    def fit_cache(
        cls, cache: SliceCache, split: str = "train", n_bins: int = N_BINS, chunk_rows: int = 64,
        *, background_in_first_bin: bool = False,
    ) -> IntensityMap:  # fmt: skip
        """Fit on the brain voxels of every slice of ``split`` (the first source's own slice),
        reading the memory-mapped cache a chunk of rows at a time.

        With ``background_in_first_bin``, the voxels outside the brain whose source falls in the
        first bin count too: a map applied to whole slices (the residual generator's) then sends
        the empty background to the target's background (0), not to the darkest brain tissue's
        target (in a T1 -> T2 map, bright CSF). Brain voxels almost never fall in that bin
        (below the 0.5th percentile after normalisation: about 0.05 % of them)."""
        rows = cache.rows(split)
        if len(rows) == 0:
            raise DataError(f"{cache.path}: no {split} subjects to fit the intensity-map baseline on")
        centre = cache.table_channel
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
        return cls.from_sums(sums, counts, channel=centre)

    def __call__(self, source: torch.Tensor) -> torch.Tensor:
        """Map a (B, C, H, W) source batch in [0, 1] (channel ``self.channel``) to (B, 1, H, W)."""
        values = identity(source, self.channel)
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


@dataclass(frozen=True)
class LinearRegression:
    """Least squares target = sum_i weights[i] * source_i + intercept over brain voxels, where
    source_i is channel ``channels[i]`` (each source's own slice); clipped to [0, 1] when applied."""

    weights: np.ndarray  # (n_sources,) float64
    intercept: float
    channels: tuple[int, ...]
    n_voxels: int

    @classmethod
    def fit(cls, features: np.ndarray, target: np.ndarray, channels: tuple[int, ...]) -> LinearRegression:
        """Fit on (n_voxels, n_sources) features and (n_voxels,) targets in [0, 1]."""
        gram, moment, n = _normal_equations(features, target)
        return cls._solve(gram, moment, n, channels)

    @classmethod
    def fit_cache(cls, cache: SliceCache, split: str = "train", chunk_rows: int = 64) -> LinearRegression:
        """Fit on the brain voxels of every slice of ``split``, a chunk of rows at a time (the
        normal equations are summed, so memory holds one chunk)."""
        rows = cache.rows(split)
        if len(rows) == 0:
            raise DataError(f"{cache.path}: no {split} subjects to fit the linear-regression baseline on")
        per_source = cache.in_channels // len(cache.sources)
        channels = tuple(k * per_source + cache.context_slices for k in range(len(cache.sources)))
        size = len(channels) + 1
        gram, moment, n = np.zeros((size, size)), np.zeros(size), 0
        for start in range(0, len(rows), chunk_rows):
            chunk = rows[start : start + chunk_rows]
            brain = np.asarray(cache.mask[chunk, 0]) > 0
            source = np.asarray(cache.source[chunk])
            features = np.stack([source[:, c][brain] for c in channels], axis=1)
            chunk_gram, chunk_moment, chunk_n = _normal_equations(features, np.asarray(cache.target[chunk, 0])[brain])
            gram, moment, n = gram + chunk_gram, moment + chunk_moment, n + chunk_n
        return cls._solve(gram, moment, n, channels)

    @classmethod
    def _solve(cls, gram: np.ndarray, moment: np.ndarray, n: int, channels: tuple[int, ...]) -> LinearRegression:
        if n == 0:
            raise DataError("linear-regression baseline: no brain voxels to fit it on")
        # lstsq: a source constant over the training voxels leaves the system singular.
        solution = np.linalg.lstsq(gram, moment, rcond=None)[0]
        return cls(weights=solution[:-1], intercept=float(solution[-1]), channels=tuple(channels), n_voxels=int(n))

    def __call__(self, source: torch.Tensor) -> torch.Tensor:
        """Map a (B, C, H, W) source batch in [0, 1] to (B, 1, H, W) in [0, 1]."""
        out = torch.full_like(source[:, :1], self.intercept)
        for weight, channel in zip(self.weights, self.channels, strict=True):
            out = out + float(weight) * source[:, channel : channel + 1]
        return out.clamp(0.0, 1.0)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description, written beside the metrics so the baseline can be repeated."""
        return {
            "channels": list(self.channels),
            "weights": [round(float(w), 6) for w in self.weights],
            "intercept": round(self.intercept, 6),
            "n_voxels": self.n_voxels,
        }


def _normal_equations(features: np.ndarray, target: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """X^T X and X^T y of the design matrix [features, 1] (float64), and the voxel count."""
    features = np.asarray(features, dtype=np.float64)
    design = np.concatenate([features, np.ones((features.shape[0], 1))], axis=1)
    target = np.asarray(target, dtype=np.float64).ravel()
    return design.T @ design, design.T @ target, int(features.shape[0])
