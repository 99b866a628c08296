"""Honest evaluation of a translation model on a held-out split of a slice cache.

``evaluate`` scores the model and two baselines (:mod:`mri2mri.baselines`) on exactly the same
slices, per slice, per subject and pooled, and refuses to score any subject the model was
trained on. Everything it reports is on images in [0, 1] under one protocol
(:class:`mri2mri.metrics.ProtocolPair`): whole-image metrics compare the prediction multiplied
by the brain mask with the (masked) target, in-mask metrics use brain voxels only. The
``_window`` metrics score the same images after each is windowed by its own 0.5-99.5th
percentiles of the subject's brain voxels (:class:`mri2mri.metrics.Window`), and
``histogram_w1`` is the distance between the predicted and the real brain-intensity histograms
of each subject's volume (:func:`mri2mri.metrics.histogram_distance`). Three parts:

* :mod:`~mri2mri.evaluation.scoring` — model and baselines -> per-slice metric values (no files);
* :mod:`~mri2mri.evaluation.summary` — values -> means and std, per subject and pooled: the payload;
* :mod:`~mri2mri.evaluation.writing` — the run folder's test outputs.

Outputs, as :class:`~mri2mri.runfolder.RunFolder` names them::

    metrics                 the payload below: summaries, caption, beats-baseline flag
    test_metrics            one row per slice and method (CSV_COLUMNS)
    preview                 up to 4 fixed test slices, so `compare` needs no model
    test_figure(n)          input | generated | real | error, per subject and position
    test_grid               many slices in one figure
    viewer                  every test slice at <= 128 px for the report's viewer (mri2mri.viewer)

The payload::

    {"schema": 1, "model_name", "split", "source", "target", "lang", "caption",
     "protocol": {name: text},
     "test_set": {"subjects": [...], "n_slices", "slices_sha1", "targets_sha1", "cache_fingerprint"},
     "metric_names": [name of each metric of mri2mri.metrics.METRICS],
     "methods": ["model", "identity", "intensity-map"],
     "summary":         {method: {metric: mean, "volume_psnr": mean, "histogram_w1": mean}},
     "pooled":          {method: {metric: {"mean", "std", "n"}}},       # over all slices
     "across_subjects": {method: {metric: {"mean", "std", "n"}}},       # over per-subject means
     "volume_psnr":     {method: {"mean", "std", "n"}},   # volumes only: 3D PSNR over the brain
     "histogram_w1":    {method: {"mean", "std", "n"}},   # volumes only: brain histogram distance
     "per_subject": {subject: {"n_slices": int,
                               method: {metric: {"mean", "std", "n"}, "volume_psnr": float,
                                        "histogram_w1": float}}},
     "baselines": {"identity": {"channel"}, "intensity-map": {"fitted_on", "n_bins", "n_voxels",
                                                              "empty_bins", "table"}},
     "beats_intensity_map": bool, "warnings": [...],
     "uncertainty": {"method", "passes", "spearman": {"mean", "std", "n"},   # only with
                     "per_subject": {subject: {"spearman", "n_voxels"}}}}    # uncertainty_passes

"model" is the evaluated model (named by "model_name"); "volume_psnr" and "histogram_w1" entries
exist only when the subjects are volumes (cache kind "volume"), not PNG pairs. Every metric name
is one of :data:`mri2mri.metrics.METRICS` (``psnr_mask_window`` and ``ssim_mask_window`` among
them); run folders written before a metric existed lack its keys, and readers skip them.
Standard deviations are population ones (ddof 0); non-finite numbers are written as null.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mri2mri import console, text
from mri2mri.data.cache import SliceCache
from mri2mri.evaluation.scoring import (
    METHODS,
    MULTI_SOURCE_METHODS,
    Baselines,
    Predict,
    count_batches,
    evaluation_subjects,
    score_batches,
)
from mri2mri.evaluation.summary import SCHEMA, Tally, contrast_names, metrics_payload
from mri2mri.evaluation.writing import CSV_COLUMNS, Keeper, load_preview, write_outputs

# Tables and captions live with the report; these names stay importable from here.
from mri2mri.report.tables import DIGITS, TABLE_HEADERS, caption, format_mean_std, metrics_table
from mri2mri.runfolder import RunFolder

__all__ = [
    "CSV_COLUMNS", "DIGITS", "METHODS", "MULTI_SOURCE_METHODS", "SCHEMA", "TABLE_HEADERS", "Predict",
    "caption", "evaluate", "evaluation_subjects", "format_mean_std", "load_preview", "metrics_table",
]  # fmt: skip


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
    tta_passes: int = 1,
) -> dict[str, Any]:
    """Score ``predict`` and the baselines on ``split`` of ``cache``; write results to ``out_dir``.

    With ``tta_passes`` (K > 1) the model's prediction is the mean of K test-time passes
    (:func:`mri2mri.uncertainty.tta_mean`); the payload's protocol records K.

    With ``uncertainty_passes`` (K >= 2) the model also runs K test-time passes per slice
    (:mod:`mri2mri.uncertainty`) and the payload reports, per subject, the Spearman correlation
    between the voxelwise uncertainty and the absolute error inside the brain: how well the
    uncertainty ranks the errors. The test figures then get an uncertainty panel.

    ``predict`` receives a CPU float32 source batch (B, C, H, W) in [-1, 1] and returns
    (B, 1, H, W) in [-1, 1] on any device (the caller wraps the generator in eval mode and
    no_grad, and moves tensors where it needs them). Predictions are clamped to [-1, 1].
    Returns the payload (the run folder's test metrics).
    """
    text.check_lang(lang)
    cache = cache if isinstance(cache, SliceCache) else SliceCache(Path(cache))
    folder = RunFolder(Path(out_dir))
    records = evaluation_subjects(cache, split, exclude_subjects)
    baselines = Baselines.fit(cache)
    tally, kept = Tally(records, baselines.methods), Keeper(n_figure_positions)

    bar = console.progress(total=count_batches(records, batch_size), desc=f"evaluate {split}",
                           unit="batch", enabled=progress)  # fmt: skip
    for batch in score_batches(predict, cache, records, baselines, batch_size=batch_size,
                               uncertainty_passes=uncertainty_passes, tta_passes=tta_passes):  # fmt: skip
        tally.add(batch)
        kept.add(batch)
        bar.update(1)
    bar.close()

    result = metrics_payload(tally, cache, baselines, split=split, lang=lang, model_name=model_name,
                             uncertainty_passes=uncertainty_passes)  # fmt: skip
    result["protocol"]["test_time_passes"] = tta_passes  # 1: the plain prediction
    for line in result["warnings"]:
        console.warn(line)
    write_outputs(folder, result, kept, contrast_names(cache), lang, uncertainty_passes)
    return result
