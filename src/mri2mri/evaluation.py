"""Honest evaluation of a translation model on a held-out split of a slice cache.

``evaluate`` scores the model and two baselines (:mod:`mri2mri.baselines`) on exactly the same
slices, per slice, per subject and pooled, and refuses to score any subject the model was
trained on. Everything it reports is on images in [0, 1] under one protocol
(:func:`mri2mri.metrics.image_metrics`): whole-image metrics compare the prediction multiplied
by the brain mask with the (masked) target, in-mask metrics use brain voxels only.

Outputs in ``out_dir``::

    metrics.json               summaries (schema below), caption, beats-baseline flag
    test_metrics.csv           one row per slice and method
    predictions_preview.npz    up to 4 fixed test slices, so `compare` needs no model
    figures/test_visualization_NN.png   input | generated | real | error, per subject and position
    figures/test_grid.png               many slices in one figure
    viewer/                    every test slice at <= 128 px for report.html's viewer (mri2mri.viewer)

metrics.json::

    {"schema": 1, "model_name", "split", "source", "target", "lang", "caption",
     "protocol": {name: text},
     "test_set": {"subjects": [...], "n_slices", "slices_sha1", "targets_sha1", "cache_fingerprint"},
     "metric_names": ["psnr", "ssim", "mae", "nmse", "psnr_mask", "ssim_mask", "mae_mask", "nmse_mask"],
     "methods": ["model", "identity", "intensity-map"],
     "summary":         {method: {metric: mean, "volume_psnr": mean}},  # compact, for printing
     "pooled":          {method: {metric: {"mean", "std", "n"}}},       # over all slices
     "across_subjects": {method: {metric: {"mean", "std", "n"}}},       # over per-subject means
     "volume_psnr":     {method: {"mean", "std", "n"}},   # volumes only: 3D PSNR over the brain
     "per_subject": {subject: {"n_slices": int,
                               method: {metric: {"mean", "std", "n"}, "volume_psnr": float}}},
     "baselines": {"identity": {"channel"}, "intensity-map": {"fitted_on", "n_bins", "n_voxels",
                                                              "empty_bins", "table"}},
     "beats_intensity_map": bool, "warnings": [...],
     "uncertainty": {"method", "passes", "spearman": {"mean", "std", "n"},   # only with
                     "per_subject": {subject: {"spearman", "n_voxels"}}}}    # uncertainty_passes

"model" is the evaluated model (named by "model_name"); "volume_psnr" entries exist only when
the subjects are volumes (cache kind "volume"), not PNG pairs.
Standard deviations are population ones (ddof 0); non-finite numbers are written as null.
"""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from mri2mri import figures
from mri2mri.baselines import IntensityMap, LinearRegression, identity
from mri2mri.data.cache import SliceCache, SubjectRecord
from mri2mri.data.dataset import to_model_range, to_unit_range
from mri2mri.errors import DataError
from mri2mri.metrics import METRIC_NAMES, image_metrics, psnr_value, squared_error_sum
from mri2mri.viewer import METRIC_NAMES as VIEWER_METRICS
from mri2mri.viewer import ViewerCollector

log = logging.getLogger(__name__)

Predict = Callable[[torch.Tensor], torch.Tensor]

METHODS = ("model", "identity", "intensity-map")
# Beside those when the model reads several source contrasts (mri2mri.baselines).
MULTI_SOURCE_METHODS = ("linear-regression",)
CSV_COLUMNS = ("subject", "slice_index", "method", *METRIC_NAMES)
MAX_PREVIEW_SLICES = 4
MAX_GRID_ROWS = 8
SCHEMA = 1

CAPTIONS = {
    "en": (
        "{split} split: {n_subjects} subjects, {n_slices} slices; intensities scaled to [0, 1]. "
        "Whole-image PSNR/SSIM/MAE/NMSE compare the prediction multiplied by the brain mask with "
        "the target (whose background is zero after skull stripping; a generator's is not). "
        "In-mask values use brain voxels only; masked SSIM is the mean of the SSIM map "
        "(Gaussian window 11, sigma 1.5) over the mask. Mean ± std over slices. Baselines: "
        "identity (the {source} input itself) and intensity-map (mean {target} intensity per "
        "{source} intensity bin, fitted on the training split)."
    ),
    "zh": (
        "{split} 集：{n_subjects} 个受试者，{n_slices} 张切片；强度缩放到 [0, 1]。"
        "整幅图像的 PSNR/SSIM/MAE/NMSE 以乘以脑掩膜后的预测图像与目标图像比较"
        "（去颅骨后目标背景为零，生成器输出则不然）。掩膜内指标只使用脑体素；"
        "掩膜 SSIM 为 SSIM 图（高斯窗 11，sigma 1.5）在掩膜内的均值。数值为切片上的均值 ± 标准差。"
        "基线：identity（直接使用输入 {source}）与 intensity-map"
        "（按 {source} 强度分箱的 {target} 平均强度，在训练集上拟合）。"
    ),
}
WARNING_NOT_BETTER = {
    "en": "{model} does not beat the intensity-map baseline on masked PSNR ({model_psnr:.2f} dB vs {baseline_psnr:.2f} dB)",
    "zh": "{model} 的掩膜 PSNR 未超过 intensity-map 基线（{model_psnr:.2f} dB 对 {baseline_psnr:.2f} dB）",
}
SLICE_TITLE = {"en": "{subject}, slice {slice_index}", "zh": "{subject}，切片 {slice_index}"}


def caption(lang: str, *, split: str, n_subjects: int, n_slices: int, source: str, target: str) -> str:
    """The caption that goes under every table of these metrics."""
    return CAPTIONS[figures.check_lang(lang)].format(
        split=split, n_subjects=n_subjects, n_slices=n_slices, source=source, target=target
    )


# ---------------------------------------------------------------------------------------------
# Which subjects may be scored


def evaluation_subjects(
    cache: SliceCache, split: str, exclude_subjects: Iterable[str] = ()
) -> list[SubjectRecord]:
    """The subjects of ``split``, after proving that none of them was trained on.

    A subject counts as trained on when the cache's split.json or its record puts it in the
    train split, or when it is in ``exclude_subjects`` (a run's own training subjects when the
    cache being scored is another one). Any overlap raises DataError: scoring training subjects
    would report memorisation as translation quality.
    """
    records = cache.subjects_in(split)
    listed = set(cache.split.get(split, []))
    known = {r.subject for r in cache.subjects}
    missing = sorted(listed - known)
    if missing:
        raise DataError(f"{cache.path}: split.json lists {split} subjects with no slices: {', '.join(missing)}")
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


# ---------------------------------------------------------------------------------------------
# Accumulating results


@dataclass
class _SubjectScores:
    """Per-slice metric values of one method on one subject, and its 3D error sums."""

    values: dict[str, list[float]] = field(default_factory=lambda: {m: [] for m in METRIC_NAMES})
    squared_error: float = 0.0
    voxels: int = 0


@dataclass
class _FigureSlice:
    subject: str
    slice_index: int
    source: np.ndarray  # (H, W) central channel, [0, 1]
    target: np.ndarray
    prediction: np.ndarray
    intensity_map: np.ndarray
    mask: np.ndarray
    uncertainty: np.ndarray | None = None  # (H, W) std over test-time passes, when asked for


def _positions(n_slices: int, count: int) -> list[int]:
    """``count`` evenly spread offsets inside a subject's n slices (away from its ends)."""
    if count <= 0:
        return []
    return sorted({min(n_slices - 1, (k + 1) * n_slices // (count + 1)) for k in range(count)})


def _summary(values: Iterable[float]) -> dict[str, float | int | None]:
    finite = np.array([v for v in values if not math.isnan(v)], dtype=np.float64)
    if finite.size == 0:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": _json_number(finite.mean()), "std": _json_number(finite.std()), "n": int(finite.size)}


def _json_number(value: float | None) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(value)


def evaluate(
    predict: Predict,
    cache: SliceCache | Path | str,
    out_dir: Path | str,
    *,
    split: str = "test",
    lang: str = "en",
    batch_size: int = 16,
    n_figure_positions: int = 3,
    model_name: str = "model",
    exclude_subjects: Iterable[str] = (),
    progress: bool = True,
    uncertainty_passes: int = 0,
) -> dict[str, Any]:
    """Score ``predict`` and the baselines on ``split`` of ``cache``; write results to ``out_dir``.

    With ``uncertainty_passes`` (K >= 2) the model also runs K test-time passes per slice
    (:mod:`mri2mri.uncertainty`) and metrics.json reports, per subject, the Spearman correlation
    between the voxelwise uncertainty and the absolute error inside the brain: how well the
    uncertainty ranks the errors. The test figures then get an uncertainty panel.

    ``predict`` receives a CPU float32 source batch (B, C, H, W) in [-1, 1] and returns
    (B, 1, H, W) in [-1, 1] on any device (the caller wraps the generator in eval mode and
    no_grad, and moves tensors where it needs them). Predictions are clamped to [-1, 1].
    Returns the metrics.json payload.
    """
    figures.check_lang(lang)
    cache = cache if isinstance(cache, SliceCache) else SliceCache(Path(cache))
    out_dir = Path(out_dir)
    records = evaluation_subjects(cache, split, exclude_subjects)
    intensity_map = IntensityMap.fit_cache(cache, "train")
    several = len(cache.sources) > 1
    methods = METHODS + (MULTI_SOURCE_METHODS if several else ())
    regression = LinearRegression.fit_cache(cache, "train") if several else None
    names = {"source": ",".join(cache.sources),
             "target": cache.meta.get("data_config", {}).get("target", "T2")}
    shown = cache.table_channel  # the first source's own slice

    scores = {method: {r.subject: _SubjectScores() for r in records} for method in methods}
    csv_rows: list[list[Any]] = []
    figure_slices: list[_FigureSlice] = []
    preview_slices: list[_FigureSlice] = []
    # Streamed digests of what was scored, so `compare` can prove two runs saw the same test set;
    # separate streams keep them independent of the batch size.
    slices_hash, targets_hash, masks_hash = hashlib.sha1(), hashlib.sha1(), hashlib.sha1()
    non_finite = 0
    # Per subject: brain voxels' uncertainty and absolute error, for their rank correlation.
    spreads: dict[str, list[np.ndarray]] = {r.subject: [] for r in records}
    errors: dict[str, list[np.ndarray]] = {r.subject: [] for r in records}
    viewer = ViewerCollector(error_vmax=figures.DEFAULT_ERROR_VMAX)  # every slice, for report.html

    n_batches = sum(math.ceil((r.rows[1] - r.rows[0]) / batch_size) for r in records)
    bar = tqdm(total=n_batches, desc=f"evaluate {split}", unit="batch", disable=not progress)
    for record in records:
        start, stop = record.rows
        wanted = set(_positions(stop - start, n_figure_positions))
        preview_offset = (stop - start) // 2 if len(preview_slices) < MAX_PREVIEW_SLICES else None
        for batch_start in range(start, stop, batch_size):
            rows = slice(batch_start, min(stop, batch_start + batch_size))
            source = torch.from_numpy(np.array(cache.source[rows], dtype=np.float32))
            target_array = np.array(cache.target[rows], dtype=np.float32)
            mask_array = np.array(cache.mask[rows])
            targets_hash.update(target_array.tobytes())
            masks_hash.update(mask_array.tobytes())
            target = torch.from_numpy(target_array).double()
            mask = torch.from_numpy(mask_array > 0)

            with torch.no_grad():
                generated = predict(to_model_range(source))
            if tuple(generated.shape) != tuple(target.shape):
                raise ValueError(f"predict returned {tuple(generated.shape)} for targets {tuple(target.shape)}")
            generated = generated.detach().to("cpu", torch.float64)
            non_finite += int((~torch.isfinite(generated)).sum())
            source64 = source.double()
            outputs = {
                "model": to_unit_range(generated).clamp(0.0, 1.0),
                "identity": identity(source64, shown),
                "intensity-map": intensity_map(source64),
            }
            if regression is not None:
                outputs["linear-regression"] = regression(source64)
            spread = _uncertainty(predict, source, uncertainty_passes) if uncertainty_passes else None
            if spread is not None:
                inside = mask_array > 0
                spreads[record.subject].append(spread[inside])
                error = np.abs(outputs["model"].numpy() - target_array.astype(np.float64))
                errors[record.subject].append(error[inside])

            slice_indices = [record.slice_indices[r - start] for r in range(rows.start, rows.stop)]
            for slice_index in slice_indices:
                slices_hash.update(f"{record.subject}\t{slice_index}\n".encode())
            for method, prediction in outputs.items():
                values = {k: v.tolist() for k, v in image_metrics(prediction, target, mask).items()}
                subject_scores = scores[method][record.subject]
                if method == "model":
                    model_values = values
                for name in METRIC_NAMES:
                    subject_scores.values[name].extend(values[name])
                error, voxels = squared_error_sum(prediction, target, mask)
                subject_scores.squared_error += error
                subject_scores.voxels += voxels
                for i, slice_index in enumerate(slice_indices):
                    csv_rows.append([record.subject, slice_index, method, *(values[n][i] for n in METRIC_NAMES)])

            shown_source = identity(source, shown).numpy()
            for i, slice_index in enumerate(slice_indices):
                viewer.add(record.subject, slice_index, shown_source[i, 0], outputs["model"][i, 0].numpy(),
                           target_array[i, 0], mask_array[i, 0],
                           {name: model_values[name][i] for name in VIEWER_METRICS})  # fmt: skip
            for i, row in enumerate(range(rows.start, rows.stop)):
                offset = row - start
                if offset not in wanted and offset != preview_offset:
                    continue
                kept = _FigureSlice(
                    subject=record.subject,
                    slice_index=slice_indices[i],
                    source=shown_source[i, 0].copy(),
                    target=target_array[i, 0].copy(),
                    prediction=outputs["model"][i, 0].float().numpy().copy(),
                    # The map is fitted on brain voxels only; its background value means nothing.
                    intensity_map=(outputs["intensity-map"][i, 0] * mask[i, 0]).float().numpy(),
                    mask=mask_array[i, 0].astype(np.float32),
                    uncertainty=None if spread is None else spread[i, 0].copy(),
                )
                if offset in wanted:
                    figure_slices.append(kept)
                if offset == preview_offset:
                    preview_slices.append(kept)
            bar.update(1)
    bar.close()

    kind_volume = all(r.kind == "volume" for r in records)
    summaries = _summaries(scores, kind_volume)
    model_psnr = summaries["pooled"]["model"]["psnr_mask"]["mean"]
    baseline_psnr = summaries["pooled"]["intensity-map"]["psnr_mask"]["mean"]
    beats = model_psnr is not None and baseline_psnr is not None and model_psnr > baseline_psnr
    warnings: list[str] = []
    if non_finite:
        warnings.append(f"{model_name} produced {non_finite} non-finite output values")
    if not beats:
        warnings.append(WARNING_NOT_BETTER[lang].format(
            model=model_name, model_psnr=_nan(model_psnr), baseline_psnr=_nan(baseline_psnr)))
    for line in warnings:
        log.warning("warning: %s", line)

    n_slices = sum(r.rows[1] - r.rows[0] for r in records)
    result = {
        "schema": SCHEMA,
        "model_name": model_name,
        "split": split,
        **names,
        "lang": lang,
        "caption": caption(lang, split=split, n_subjects=len(records), n_slices=n_slices, **names),
        "protocol": {
            "range": "images scaled to [0, 1]; predictions clamped",
            "whole_image": "prediction and target multiplied by the brain mask",
            "in_mask": "brain-mask voxels only",
            "ssim": "scikit-image structural_similarity: Gaussian window 11, sigma 1.5, K1 0.01, "
                    "K2 0.03, population covariance; whole image = cropped map mean, "
                    "masked = map mean over the mask",
            "volume_psnr": "one PSNR over every brain voxel of a subject's cached slices",
            "std": "population standard deviation (ddof 0)",
        },
        "test_set": {
            "subjects": [r.subject for r in records],
            "n_slices": n_slices,
            "slices_sha1": slices_hash.hexdigest(),
            "targets_sha1": hashlib.sha1((targets_hash.hexdigest() + masks_hash.hexdigest()).encode()).hexdigest(),
            "cache_fingerprint": cache.fingerprint,
        },
        "metric_names": list(METRIC_NAMES),
        "methods": list(methods),
        **summaries,
        "baselines": {
            "identity": {"channel": shown},
            "intensity-map": {"fitted_on": "train", "channel": shown, **intensity_map.to_dict()},
            **({"linear-regression": {"fitted_on": "train", "sources": list(cache.sources),
                                      **regression.to_dict()}} if regression is not None else {}),
        },
        "beats_intensity_map": bool(beats),
        "warnings": warnings,
    }
    if uncertainty_passes:
        result["uncertainty"] = _uncertainty_summary(spreads, errors, uncertainty_passes)

    out_dir.mkdir(parents=True, exist_ok=True)
    _write_csv(out_dir / "test_metrics.csv", csv_rows)
    (out_dir / "metrics.json").write_text(json.dumps(result, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    _write_preview(out_dir / "predictions_preview.npz", preview_slices)
    _write_figures(out_dir / "figures", figure_slices, names, lang, uncertainty_passes)
    viewer.write(out_dir / "viewer")
    return result


def _uncertainty(predict: Predict, source: torch.Tensor, passes: int) -> np.ndarray:
    """(B, 1, H, W) std of the model's output over ``passes`` test-time passes, unit scale."""
    from mri2mri.uncertainty import tta_std

    def run(batch: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return predict(torch.from_numpy(batch)).detach().to("cpu", torch.float32).numpy()

    return tta_std(run, to_model_range(source).numpy(), passes)


def _uncertainty_summary(spreads: dict[str, list[np.ndarray]], errors: dict[str, list[np.ndarray]],
                         passes: int) -> dict[str, Any]:  # fmt: skip
    """The "uncertainty" part of metrics.json: Spearman(uncertainty, |error|) per subject."""
    from mri2mri.uncertainty import spearman

    per_subject = {}
    for subject, parts in spreads.items():
        spread = np.concatenate(parts) if parts else np.zeros(0)
        error = np.concatenate(errors[subject]) if parts else np.zeros(0)
        per_subject[subject] = {"spearman": _json_number(spearman(spread, error)), "n_voxels": int(spread.size)}
    return {
        "method": "test-time augmentation: horizontal flips and 1-2 pixel shifts; "
                  "uncertainty = voxelwise std of the outputs (unit scale)",
        "passes": passes,
        "correlation": "Spearman rank correlation between uncertainty and |prediction - target| "
                       "over a subject's brain voxels",
        "spearman": _summary(_nan(v["spearman"]) for v in per_subject.values()),
        "per_subject": per_subject,
    }  # fmt: skip


def _nan(value: float | None) -> float:
    return math.nan if value is None else value


def _summaries(scores: dict[str, dict[str, _SubjectScores]], kind_volume: bool) -> dict[str, Any]:
    """The summary, pooled, across_subjects, volume_psnr and per_subject parts of metrics.json."""
    pooled, across, volume = {}, {}, {}
    per_subject: dict[str, dict[str, Any]] = {}
    for method, by_subject in scores.items():
        pooled[method] = {
            m: _summary(v for s in by_subject.values() for v in s.values[m]) for m in METRIC_NAMES
        }
        subject_means: dict[str, list[float]] = {m: [] for m in METRIC_NAMES}
        volumes = []
        for subject, scored in by_subject.items():
            entry: dict[str, Any] = {m: _summary(scored.values[m]) for m in METRIC_NAMES}
            for m in METRIC_NAMES:
                subject_means[m].append(_nan(entry[m]["mean"]))
            if kind_volume:
                value = psnr_value(scored.squared_error / scored.voxels) if scored.voxels else math.nan
                entry["volume_psnr"] = _json_number(value)
                volumes.append(value)
            slot = per_subject.setdefault(subject, {"n_slices": len(scored.values[METRIC_NAMES[0]])})
            slot[method] = entry
        across[method] = {m: _summary(subject_means[m]) for m in METRIC_NAMES}
        if kind_volume:
            volume[method] = _summary(volumes)
    summary = {
        method: {m: pooled[method][m]["mean"] for m in METRIC_NAMES}
        | ({"volume_psnr": volume[method]["mean"]} if kind_volume else {})
        for method in scores
    }
    result: dict[str, Any] = {"summary": summary, "pooled": pooled, "across_subjects": across}
    if kind_volume:
        result["volume_psnr"] = volume
    result["per_subject"] = per_subject
    return result


# ---------------------------------------------------------------------------------------------
# Writing


def _write_csv(path: Path, rows: list[list[Any]]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(CSV_COLUMNS)
        for row in rows:
            writer.writerow([*row[:3], *(format(float(v), ".8g") for v in row[3:])])


def _write_preview(path: Path, kept: list[_FigureSlice]) -> None:
    np.savez_compressed(
        path,
        subject=np.array([k.subject for k in kept], dtype=str),
        slice_index=np.array([k.slice_index for k in kept], dtype=np.int64),
        source=np.stack([k.source for k in kept]).astype(np.float32),
        target=np.stack([k.target for k in kept]).astype(np.float32),
        prediction=np.stack([k.prediction for k in kept]).astype(np.float32),
        intensity_map=np.stack([k.intensity_map for k in kept]).astype(np.float32),
        mask=np.stack([k.mask for k in kept]).astype(np.float32),
    )


def _write_figures(folder: Path, kept: list[_FigureSlice], names: dict[str, str], lang: str,
                   uncertainty_passes: int = 0) -> None:  # fmt: skip
    if not kept:
        return
    folder.mkdir(parents=True, exist_ok=True)
    titles = [SLICE_TITLE[lang].format(subject=k.subject, slice_index=k.slice_index) for k in kept]
    for number, (item, title) in enumerate(zip(kept, titles, strict=True), start=1):
        figures.plot_triptych(
            item.source, item.prediction, item.target, folder / f"test_visualization_{number:02d}.png",
            mask=item.mask, source_name=names["source"], target_name=names["target"], title=title,
            lang=lang, uncertainty=item.uncertainty, uncertainty_passes=uncertainty_passes,
        )
    chosen = np.unique(np.linspace(0, len(kept) - 1, min(MAX_GRID_ROWS, len(kept))).round().astype(int))
    figures.plot_slice_grid(
        [(kept[i].source, kept[i].prediction, kept[i].target) for i in chosen],
        folder / "test_grid.png",
        row_labels=[titles[i] for i in chosen],
        masks=[kept[i].mask for i in chosen],
        source_name=names["source"],
        target_name=names["target"],
        lang=lang,
    )


def format_mean_std(summary: dict[str, Any] | None, digits: int = 3) -> str:
    """"mean ± std" of a summary dict; "n/a" when it has no finite values."""
    if not summary or summary.get("mean") is None:
        return "n/a"
    std = summary.get("std")
    return f"{summary['mean']:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{summary['mean']:.{digits}f}"


TABLE_HEADERS = {
    "en": {"method": "Method", "psnr": "PSNR (dB)", "ssim": "SSIM", "mae": "MAE", "nmse": "NMSE",
           "psnr_mask": "PSNR in mask (dB)", "ssim_mask": "SSIM in mask", "mae_mask": "MAE in mask",
           "nmse_mask": "NMSE in mask", "volume_psnr": "3D PSNR in mask (dB)"},
    "zh": {"method": "方法", "psnr": "PSNR (dB)", "ssim": "SSIM", "mae": "MAE", "nmse": "NMSE",
           "psnr_mask": "掩膜内 PSNR (dB)", "ssim_mask": "掩膜内 SSIM", "mae_mask": "掩膜内 MAE",
           "nmse_mask": "掩膜内 NMSE", "volume_psnr": "掩膜内三维 PSNR (dB)"},
}
DIGITS = {"psnr": 2, "psnr_mask": 2, "volume_psnr": 2, "ssim": 4, "ssim_mask": 4,
          "mae": 4, "mae_mask": 4, "nmse": 4, "nmse_mask": 4}


def metrics_table(result: dict[str, Any], lang: str = "en") -> str:
    """A Markdown table of pooled mean ± std per method (model first, then the baselines),
    followed by the caption; ``result`` is the payload of metrics.json."""
    headers = TABLE_HEADERS[figures.check_lang(lang)]
    columns = list(result["metric_names"])
    if "volume_psnr" in result:
        columns.append("volume_psnr")
    lines = [
        "| " + " | ".join([headers["method"], *(headers[c] for c in columns)]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for method in result["methods"]:
        label = result["model_name"] if method == "model" else method
        cells = [
            format_mean_std(
                result["volume_psnr"][method] if c == "volume_psnr" else result["pooled"][method][c], DIGITS[c]
            )
            for c in columns
        ]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    text = caption(
        lang, split=result["split"], n_subjects=len(result["test_set"]["subjects"]),
        n_slices=result["test_set"]["n_slices"], source=result["source"], target=result["target"],
    )
    return "\n".join(lines) + "\n\n" + text + "\n"


def load_preview(path: Path | str) -> dict[str, np.ndarray]:
    """The arrays of a ``predictions_preview.npz``: subject (k,), slice_index (k,) and images
    (k, H, W) in [0, 1]: source (central channel), target, prediction (the model's raw output),
    intensity_map (the baseline, zero outside the brain mask) and mask."""
    path = Path(path)
    try:
        with np.load(path) as data:
            return {name: data[name] for name in data.files}
    except (OSError, ValueError) as error:
        raise DataError(f"{path}: unreadable predictions preview ({error})") from None
