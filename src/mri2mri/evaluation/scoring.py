"""Scoring: the model and the baselines on exactly the same slices, one batch at a time.

Pure: nothing here writes a file. :func:`score_batches` streams :class:`ScoredBatch` records,
each a run of one subject's consecutive slices with every method's prediction and the metric
values of :data:`mri2mri.metrics.METRICS` per slice, and the subject's whole-volume values.
A subject is read twice: first every method predicts all its slices, which gives each image's
window (:class:`mri2mri.metrics.Window`, over the subject's brain voxels) and the histogram
distances of the whole volume; then its slices are scored. Only the model's raw output is kept
between the two passes (the baselines are cheap to run again). Summarising
(:mod:`mri2mri.evaluation.summary`) and writing (:mod:`mri2mri.evaluation.writing`) consume them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch

from mri2mri.baselines import IntensityMap, LinearRegression, identity
from mri2mri.data.cache import SliceCache, SubjectRecord
from mri2mri.data.dataset import to_model_range, to_unit_range
from mri2mri.errors import DataError
from mri2mri.metrics import (
    HISTOGRAM_METRIC,
    Window,
    histogram_distance,
    image_metrics,
    squared_error_sum,
)
from mri2mri.runfolder import RunFolder
from mri2mri.uncertainty import tta_mean_std, tta_std

Predict = Callable[[torch.Tensor], torch.Tensor]

METHODS = ("model", "identity", "intensity-map")
# Beside those when the model reads several source contrasts (mri2mri.baselines).
MULTI_SOURCE_METHODS = ("linear-regression",)


def evaluation_subjects(
    cache: SliceCache, split: str, exclude_subjects: Iterable[str] = ()
) -> list[SubjectRecord]:
    """The subjects of ``split``, after proving that none of them was trained on.

    A subject counts as trained on when the cache's split file or its record puts it in the
    train split, or when it is in ``exclude_subjects`` (a run's own training subjects when the
    cache being scored is another one). Any overlap raises DataError: scoring training subjects
    would report memorisation as translation quality.
    """
    records = cache.subjects_in(split)
    listed = set(cache.split.get(split, []))
    known = {r.subject for r in cache.subjects}
    missing = sorted(listed - known)
    if missing:
        split_file = RunFolder(cache.path).split  # a cache names its split file as a run does
        raise DataError(f"{split_file}: lists {split} subjects with no slices: {', '.join(missing)}")
    records += [r for r in cache.subjects if r.subject in listed and r not in records]
    trained = set(cache.split.get("train", [])) | {r.subject for r in cache.subjects if r.split == "train"}
    trained |= set(exclude_subjects)
    leaked = sorted({r.subject for r in records} & trained)
    if leaked:
        raise DataError(
            f"{cache.path}: refusing to evaluate the {split} split: subject(s) {', '.join(leaked)} "
            "are in the training split"
        )
    if not records:
        raise DataError(f"{cache.path}: the {split} split has no subjects to evaluate")
    return sorted(records, key=lambda r: r.rows[0])


@dataclass(frozen=True)
class Baselines:
    """The baselines, fitted on the cache's training split, and the source channel they show."""

    intensity_map: IntensityMap
    regression: LinearRegression | None  # only when the model reads several source contrasts
    channel: int  # the first source's own slice

    @classmethod
    def fit(cls, cache: SliceCache) -> Baselines:
        intensity_map = IntensityMap.fit_cache(cache, "train")
        regression = LinearRegression.fit_cache(cache, "train") if len(cache.sources) > 1 else None
        return cls(intensity_map, regression, cache.table_channel)

    @property
    def methods(self) -> tuple[str, ...]:
        """Every scored method, the model first."""
        return METHODS + (MULTI_SOURCE_METHODS if self.regression is not None else ())

    def predict(self, source: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each baseline's (B, 1, H, W) prediction from a float64 source batch in [0, 1]."""
        outputs = {"identity": identity(source, self.channel), "intensity-map": self.intensity_map(source)}
        if self.regression is not None:
            outputs["linear-regression"] = self.regression(source)
        return outputs


@dataclass
class ScoredBatch:
    """Consecutive slices of one subject, predicted by every method and scored."""

    record: SubjectRecord
    offsets: range  # the slices' positions among the subject's slices
    slice_indices: list[int]
    source: np.ndarray  # (B, H, W) float32 in [0, 1]: the shown source channel
    target: np.ndarray  # (B, 1, H, W) float32 in [0, 1], as cached
    mask: np.ndarray  # (B, 1, H, W) the brain mask, as cached
    outputs: dict[str, torch.Tensor]  # method -> (B, 1, H, W) float64 in [0, 1]
    values: dict[str, dict[str, list[float]]]  # method -> metric -> one value per slice
    error_sums: dict[str, tuple[float, int]]  # method -> (squared error, voxels) over the mask
    volume_values: dict[str, dict[str, float]]  # method -> histogram_w1 of the whole subject
    non_finite: int  # non-finite values in the model's raw output
    spread: np.ndarray | None  # (B, 1, H, W) uncertainty, with uncertainty passes

    def rows(self) -> Iterator[list]:
        """Per-slice metric rows: subject, slice index, method, then the metrics, method-major."""
        for method, values in self.values.items():
            for i, slice_index in enumerate(self.slice_indices):
                yield [self.record.subject, slice_index, method, *(column[i] for column in values.values())]


def count_batches(records: Iterable[SubjectRecord], batch_size: int) -> int:
    return sum(math.ceil((r.rows[1] - r.rows[0]) / batch_size) for r in records)


def score_batches(
    predict: Predict,
    cache: SliceCache,
    records: Iterable[SubjectRecord],
    baselines: Baselines,
    *,
    batch_size: int = 16,
    uncertainty_passes: int = 0,
    tta_passes: int = 1,
) -> Iterator[ScoredBatch]:
    """Every slice of ``records``, ``batch_size`` at a time (a batch never spans two subjects);
    the model's prediction is the mean of ``tta_passes`` test-time passes (1: the plain one)."""
    for record in records:
        start, stop = record.rows
        chunks = [range(b, min(stop, b + batch_size)) for b in range(start, stop, batch_size)]
        generated = [_generate(predict, _Slices.read(cache, rows), tta_passes, uncertainty_passes)
                     for rows in chunks]  # fmt: skip
        volume = _Volume.measure(cache, chunks, [raw for raw, _ in generated], baselines)
        for rows, (raw, spread) in zip(chunks, generated, strict=True):
            yield _score(cache, record, rows, raw, spread, volume, baselines)


@dataclass(frozen=True)
class _Slices:
    """Consecutive cached slices: the source batch, the target and the brain mask."""

    source: torch.Tensor  # (B, C, H, W) float32 in [0, 1]
    target_array: np.ndarray  # (B, 1, H, W) float32, as cached
    mask_array: np.ndarray  # (B, 1, H, W), as cached

    @classmethod
    def read(cls, cache: SliceCache, rows: range) -> _Slices:
        picked = slice(rows.start, rows.stop)
        return cls(torch.from_numpy(np.array(cache.source[picked], dtype=np.float32)),
                   np.array(cache.target[picked], dtype=np.float32), np.array(cache.mask[picked]))  # fmt: skip

    @property
    def target(self) -> torch.Tensor:
        return torch.from_numpy(self.target_array).double()

    @property
    def mask(self) -> torch.Tensor:
        return torch.from_numpy(self.mask_array > 0)

    def outputs(self, generated: torch.Tensor, baselines: Baselines) -> dict[str, torch.Tensor]:
        """Every method's (B, 1, H, W) float64 prediction in [0, 1], the model first."""
        model = to_unit_range(generated.to(torch.float64)).clamp(0.0, 1.0)
        return {"model": model, **baselines.predict(self.source.double())}


def _generate(predict: Predict, slices: _Slices, tta_passes: int = 1,
              uncertainty_passes: int = 0) -> tuple[torch.Tensor, np.ndarray | None]:  # fmt: skip
    """The model's raw output for the slices, on the CPU, in the dtype it came in; with
    ``tta_passes`` > 1 the mean of that many test-time passes (float32, clipped to [-1, 1]).
    Second, with ``uncertainty_passes``, the (B, 1, H, W) std over that many passes on the unit
    scale (None without): from the same passes as the mean when there are several."""
    spread = None
    if tta_passes > 1:
        mean, spread = tta_mean_std(_numpy_runner(predict), to_model_range(slices.source).numpy(),
                                    tta_passes, uncertainty_passes)  # fmt: skip
        generated = torch.from_numpy(mean)
    else:
        with torch.no_grad():
            generated = predict(to_model_range(slices.source))
        if uncertainty_passes:
            spread = tta_std(_numpy_runner(predict), to_model_range(slices.source).numpy(), uncertainty_passes)
    if tuple(generated.shape) != tuple(slices.target_array.shape):
        raise ValueError(f"predict returned {tuple(generated.shape)} for targets {tuple(slices.target_array.shape)}")
    return generated.detach().to("cpu"), spread


@dataclass(frozen=True)
class _Volume:
    """What is measured over all of a subject's slices: each method's and the target's window,
    and each method's histogram distance to the target (brain voxels, unit scale)."""

    windows: dict[str, Window]  # method or "target" -> its window
    histogram: dict[str, float]  # method -> 1-Wasserstein distance to the target

    @classmethod
    def measure(cls, cache: SliceCache, chunks: list[range], generated: list[torch.Tensor],
                baselines: Baselines) -> _Volume:  # fmt: skip
        brain: dict[str, list[torch.Tensor]] = {}
        for rows, raw in zip(chunks, generated, strict=True):
            # Read again (the cache is memory-mapped) and keep brain voxels only: cheaper than
            # holding every method's float64 volume until the subject is scored.
            slices = _Slices.read(cache, rows)
            inside = slices.mask
            for name, image in {**slices.outputs(raw, baselines), "target": slices.target}.items():
                brain.setdefault(name, []).append(image[inside])
        voxels = {name: torch.cat(parts) for name, parts in brain.items()}
        return cls(
            windows={name: Window.of(values) for name, values in voxels.items()},
            histogram={name: histogram_distance(values, voxels["target"])
                       for name, values in voxels.items() if name != "target"},
        )  # fmt: skip


def _score(cache: SliceCache, record: SubjectRecord, rows: range, generated: torch.Tensor,
           spread: np.ndarray | None, volume: _Volume, baselines: Baselines) -> ScoredBatch:  # fmt: skip
    slices = _Slices.read(cache, rows)
    target, mask = slices.target, slices.mask
    outputs = slices.outputs(generated, baselines)

    def scored(method: str, prediction: torch.Tensor) -> dict[str, list[float]]:
        windows = (volume.windows[method], volume.windows["target"])
        return {name: value.tolist() for name, value in image_metrics(prediction, target, mask, windows).items()}

    offsets = range(rows.start - record.rows[0], rows.stop - record.rows[0])
    return ScoredBatch(
        record=record, offsets=offsets, slice_indices=[record.slice_indices[o] for o in offsets],
        source=identity(slices.source, baselines.channel).numpy()[:, 0], target=slices.target_array,
        mask=slices.mask_array, outputs=outputs,
        values={method: scored(method, prediction) for method, prediction in outputs.items()},
        error_sums={method: squared_error_sum(prediction, target, mask) for method, prediction in outputs.items()},
        volume_values={method: {HISTOGRAM_METRIC: volume.histogram[method]} for method in outputs},
        non_finite=int((~torch.isfinite(generated)).sum()), spread=spread,
    )  # fmt: skip


def _numpy_runner(predict: Predict) -> Callable[[np.ndarray], np.ndarray]:
    """``predict`` as :mod:`mri2mri.uncertainty` runs it: NumPy float32 in and out, on the CPU."""

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return predict(torch.from_numpy(batch)).detach().to("cpu", torch.float32).numpy()

    return run
