"""Scoring: the model and the baselines on exactly the same slices, one batch at a time.

Pure: nothing here writes a file. :func:`score_batches` streams :class:`ScoredBatch` records,
each a run of one subject's consecutive slices with every method's prediction and the metric
values of :data:`mri2mri.metrics.METRICS` per slice; summarising
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
from mri2mri.metrics import image_metrics, squared_error_sum
from mri2mri.runfolder import RunFolder
from mri2mri.uncertainty import tta_std

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
) -> Iterator[ScoredBatch]:
    """Every slice of ``records``, ``batch_size`` at a time (a batch never spans two subjects)."""
    for record in records:
        start, stop = record.rows
        for batch_start in range(start, stop, batch_size):
            rows = range(batch_start, min(stop, batch_start + batch_size))
            yield _score(predict, cache, record, rows, baselines, uncertainty_passes)


def _score(predict: Predict, cache: SliceCache, record: SubjectRecord, rows: range,
           baselines: Baselines, uncertainty_passes: int) -> ScoredBatch:  # fmt: skip
    picked = slice(rows.start, rows.stop)
    source = torch.from_numpy(np.array(cache.source[picked], dtype=np.float32))
    target_array = np.array(cache.target[picked], dtype=np.float32)
    mask_array = np.array(cache.mask[picked])
    target = torch.from_numpy(target_array).double()
    mask = torch.from_numpy(mask_array > 0)

    with torch.no_grad():
        generated = predict(to_model_range(source))
    if tuple(generated.shape) != tuple(target.shape):
        raise ValueError(f"predict returned {tuple(generated.shape)} for targets {tuple(target.shape)}")
    generated = generated.detach().to("cpu", torch.float64)
    outputs = {"model": to_unit_range(generated).clamp(0.0, 1.0), **baselines.predict(source.double())}
    spread = _uncertainty(predict, source, uncertainty_passes) if uncertainty_passes else None

    offsets = range(rows.start - record.rows[0], rows.stop - record.rows[0])
    return ScoredBatch(
        record=record, offsets=offsets, slice_indices=[record.slice_indices[o] for o in offsets],
        source=identity(source, baselines.channel).numpy()[:, 0], target=target_array, mask=mask_array,
        outputs=outputs,
        values={method: {name: value.tolist() for name, value in image_metrics(prediction, target, mask).items()}
                for method, prediction in outputs.items()},
        error_sums={method: squared_error_sum(prediction, target, mask) for method, prediction in outputs.items()},
        non_finite=int((~torch.isfinite(generated)).sum()), spread=spread,
    )  # fmt: skip


def _uncertainty(predict: Predict, source: torch.Tensor, passes: int) -> np.ndarray:
    """(B, 1, H, W) std of the model's output over ``passes`` test-time passes, unit scale."""

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return predict(torch.from_numpy(batch)).detach().to("cpu", torch.float32).numpy()

    return tta_std(run, to_model_range(source).numpy(), passes)
