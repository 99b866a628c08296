"""Summarising: scored slices -> means and standard deviations, per subject and pooled.

:class:`Tally` accumulates what the scored batches say (per-slice values, the 3D error sums of
each subject, digests of the test set, uncertainty and error voxels) and :func:`metrics_payload`
turns it into the test metrics payload, whose schema :mod:`mri2mri.evaluation` documents.
Nothing here writes a file.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mri2mri import text
from mri2mri.data.cache import SliceCache, SubjectRecord
from mri2mri.evaluation.scoring import Baselines, ScoredBatch
from mri2mri.metrics import (
    HISTOGRAM_METRIC,
    METRIC_NAMES,
    VOLUME_METRIC,
    VOLUME_METRICS,
    WINDOW_PERCENTILES,
    psnr_value,
)
from mri2mri.report.tables import caption
from mri2mri.uncertainty import spearman

SCHEMA = 1

_LOW, _HIGH = WINDOW_PERCENTILES
PROTOCOL = {
    "range": "images scaled to [0, 1]; predictions clamped",
    "whole_image": "prediction and target multiplied by the brain mask",
    "in_mask": "brain-mask voxels only",
    "ssim": "scikit-image structural_similarity: Gaussian window 11, sigma 1.5, K1 0.01, "
            "K2 0.03, population covariance; whole image = cropped map mean, "
            "masked = map mean over the mask",
    "window": f"_window metrics: each image (prediction, baseline, target) first mapped to "
              f"clip((x - p{_LOW:g}) / (p{_HIGH:g} - p{_LOW:g}), 0, 1) by its own {_LOW:g}th and "
              f"{_HIGH:g}th percentiles of the brain voxels of the subject's test slices",
    "volume_psnr": "one PSNR over every brain voxel of a subject's cached slices",
    "histogram_w1": "1-Wasserstein distance between the predicted and the real intensity "
                    "distributions of a subject's brain voxels, unit scale (lower is better)",
    "std": "population standard deviation (ddof 0)",
}  # fmt: skip
UNCERTAINTY = {
    "method": "test-time augmentation: horizontal flips and 1-2 pixel shifts; "
              "uncertainty = voxelwise std of the outputs (unit scale)",
    "correlation": "Spearman rank correlation between uncertainty and |prediction - target| "
                   "over a subject's brain voxels",
}  # fmt: skip


@dataclass
class SubjectScores:
    """Per-slice metric values of one method on one subject, its 3D error sums and its other
    whole-volume values (histogram_w1)."""

    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRIC_NAMES})
    squared_error: float = 0.0
    voxels: int = 0
    volume_values: dict[str, float] = field(default_factory=dict)

    def volume(self) -> dict[str, float]:
        """Every whole-volume metric of :data:`mri2mri.metrics.VOLUME_METRICS` (NaN if unknown)."""
        psnr = psnr_value(self.squared_error / self.voxels) if self.voxels else math.nan
        return {VOLUME_METRIC: psnr, HISTOGRAM_METRIC: self.volume_values.get(HISTOGRAM_METRIC, math.nan)}


class Tally:
    """Everything the summary needs from the scored batches, accumulated as they stream by."""

    def __init__(self, records: Sequence[SubjectRecord], methods: Iterable[str]):
        self.records = list(records)
        self.scores = {method: {r.subject: SubjectScores() for r in records} for method in methods}
        # Streamed digests of what was scored, so `compare` can prove two runs saw the same test
        # set; separate streams keep them independent of the batch size.
        self.slices_hash, self.targets_hash, self.masks_hash = hashlib.sha1(), hashlib.sha1(), hashlib.sha1()
        self.non_finite = 0
        # Per subject: brain voxels' uncertainty and absolute error, for their rank correlation.
        self.spreads: dict[str, list[np.ndarray]] = {r.subject: [] for r in records}
        self.errors: dict[str, list[np.ndarray]] = {r.subject: [] for r in records}

    def add(self, batch: ScoredBatch) -> None:
        subject = batch.record.subject
        self.targets_hash.update(batch.target.tobytes())
        self.masks_hash.update(batch.mask.tobytes())
        for slice_index in batch.slice_indices:
            self.slices_hash.update(f"{subject}\t{slice_index}\n".encode())
        self.non_finite += batch.non_finite
        for method, values in batch.values.items():
            scored = self.scores[method][subject]
            for name in METRIC_NAMES:
                scored.values[name].extend(values[name])
            error, voxels = batch.error_sums[method]
            scored.squared_error += error
            scored.voxels += voxels
            scored.volume_values.update(batch.volume_values[method])  # the same on every batch
        if batch.spread is not None:
            inside = batch.mask > 0
            self.spreads[subject].append(batch.spread[inside])
            error = np.abs(batch.outputs["model"].numpy() - batch.target.astype(np.float64))
            self.errors[subject].append(error[inside])

    def test_set(self, cache: SliceCache) -> dict[str, Any]:
        """What was scored: subjects, slice count and digests (``compare`` checks them)."""
        joined = self.targets_hash.hexdigest() + self.masks_hash.hexdigest()
        return {
            "subjects": [r.subject for r in self.records],
            "n_slices": sum(r.rows[1] - r.rows[0] for r in self.records),
            "slices_sha1": self.slices_hash.hexdigest(),
            "targets_sha1": hashlib.sha1(joined.encode()).hexdigest(),
            "cache_fingerprint": cache.fingerprint,
        }


def contrast_names(cache: SliceCache) -> dict[str, str]:
    """The source contrast(s) and the target contrast of a cache, as tables and figures name them."""
    return {"source": ",".join(cache.sources),
            "target": cache.meta.get("data_config", {}).get("target", "T2")}  # fmt: skip


def metrics_payload(tally: Tally, cache: SliceCache, baselines: Baselines, *, split: str, lang: str,
                    model_name: str, uncertainty_passes: int = 0) -> dict[str, Any]:  # fmt: skip
    """The test metrics payload (schema in :mod:`mri2mri.evaluation`)."""
    names = contrast_names(cache)
    test_set = tally.test_set(cache)
    kind_volume = all(r.kind == "volume" for r in tally.records)
    summaries = summarise(tally.scores, kind_volume)
    beats, warnings = _verdict(summaries, tally.non_finite, model_name, lang)
    result = {
        "schema": SCHEMA, "model_name": model_name, "split": split, **names, "lang": lang,
        "caption": caption(lang, split=split, n_subjects=len(tally.records), n_slices=test_set["n_slices"], **names),
        "protocol": dict(PROTOCOL),
        "test_set": test_set,
        "metric_names": list(METRIC_NAMES),
        "methods": list(baselines.methods),
        **summaries,
        "baselines": _baselines_entry(baselines, cache),
        "beats_intensity_map": bool(beats),
        "warnings": warnings,
    }  # fmt: skip
    if uncertainty_passes:
        result["uncertainty"] = _uncertainty_summary(tally.spreads, tally.errors, uncertainty_passes)
    return result


def _verdict(summaries: dict[str, Any], non_finite: int, model_name: str, lang: str) -> tuple[bool, list[str]]:
    """Whether the model beats the intensity map on masked PSNR, and the warnings to report."""
    model_psnr = summaries["pooled"]["model"]["psnr_mask"]["mean"]
    baseline_psnr = summaries["pooled"]["intensity-map"]["psnr_mask"]["mean"]
    beats = model_psnr is not None and baseline_psnr is not None and model_psnr > baseline_psnr
    warnings: list[str] = []
    if non_finite:
        warnings.append(f"{model_name} produced {non_finite} non-finite output values")
    if not beats:
        warnings.append(text.NOT_BETTER[lang].format(
            model=model_name, model_psnr=_nan(model_psnr), baseline_psnr=_nan(baseline_psnr)))
    return beats, warnings


def _baselines_entry(baselines: Baselines, cache: SliceCache) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "identity": {"channel": baselines.channel},
        "intensity-map": {"fitted_on": "train", "channel": baselines.channel, **baselines.intensity_map.to_dict()},
    }
    if baselines.regression is not None:
        entry["linear-regression"] = {"fitted_on": "train", "sources": list(cache.sources),
                                      **baselines.regression.to_dict()}  # fmt: skip
    return entry


def summary_of(values: Iterable[float]) -> dict[str, float | int | None]:
    """{"mean", "std", "n"} of the finite values (population std); None/0 when there are none."""
    finite = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": json_number(finite.mean()), "std": json_number(finite.std()), "n": int(finite.size)}


def json_number(value: float | None) -> float | None:
    """A number as JSON can hold it: non-finite values become None (null)."""
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def summarise(scores: dict[str, dict[str, SubjectScores]], kind_volume: bool) -> dict[str, Any]:
    """The summary, pooled, across_subjects, volume_psnr, histogram_w1 and per_subject parts of
    the payload (the whole-volume parts only for volumes)."""
    pooled, across = {}, {}
    volume: dict[str, dict[str, Any]] = {name: {} for name in VOLUME_METRICS}
    per_subject: dict[str, dict[str, Any]] = {}
    for method, by_subject in scores.items():
        pooled[method] = {
            m: summary_of(v for s in by_subject.values() for v in s.values[m]) for m in METRIC_NAMES
        }
        subject_means: dict[str, list[float]] = {m: [] for m in METRIC_NAMES}
        volumes: dict[str, list[float]] = {name: [] for name in VOLUME_METRICS}
        for subject, scored in by_subject.items():
            entry: dict[str, Any] = {m: summary_of(scored.values[m]) for m in METRIC_NAMES}
            for m in METRIC_NAMES:
                subject_means[m].append(_nan(entry[m]["mean"]))
            if kind_volume:
                for name, value in scored.volume().items():
                    entry[name] = json_number(value)
                    volumes[name].append(value)
            slot = per_subject.setdefault(subject, {"n_slices": len(scored.values[METRIC_NAMES[0]])})
            slot[method] = entry
        across[method] = {m: summary_of(subject_means[m]) for m in METRIC_NAMES}
        if kind_volume:
            for name in VOLUME_METRICS:
                volume[name][method] = summary_of(volumes[name])
    summary = {
        method: {m: pooled[method][m]["mean"] for m in METRIC_NAMES}
        | ({name: volume[name][method]["mean"] for name in VOLUME_METRICS} if kind_volume else {})
        for method in scores
    }
    result: dict[str, Any] = {"summary": summary, "pooled": pooled, "across_subjects": across}
    if kind_volume:
        result.update(volume)
    result["per_subject"] = per_subject
    return result


def _uncertainty_summary(spreads: dict[str, list[np.ndarray]], errors: dict[str, list[np.ndarray]],
                         passes: int) -> dict[str, Any]:  # fmt: skip
    """The "uncertainty" part of the payload: Spearman(uncertainty, |error|) per subject."""
    per_subject = {}
    for subject, parts in spreads.items():
        spread = np.concatenate(parts) if parts else np.zeros(0)
        error = np.concatenate(errors[subject]) if parts else np.zeros(0)
        per_subject[subject] = {"spearman": json_number(spearman(spread, error)), "n_voxels": int(spread.size)}
    return {
        "method": UNCERTAINTY["method"],
        "passes": passes,
        "correlation": UNCERTAINTY["correlation"],
        "spearman": summary_of(_nan(v["spearman"]) for v in per_subject.values()),
        "per_subject": per_subject,
    }
