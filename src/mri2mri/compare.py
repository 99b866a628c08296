"""One table and one figure across training runs scored on the same test set.

Each run folder must hold what training and ``evaluate`` write (:class:`~mri2mri.runfolder.RunFolder`):
the configuration, the test metrics, the history, the predictions preview and (normally) the
run summary. No model is loaded. Runs tested on different slices or different target images
cannot be ranked against each other, so they are refused.

Outputs in ``out_dir``: ``compare.md`` (table and caption), ``compare.csv`` (raw numbers) and
``compare.png`` (the same test slice from every run side by side, the intensity-map baseline
beside them). The metric columns are :data:`mri2mri.metrics.COMPARISON_METRICS`; a run tested
before one of them existed shows "n/a" there.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mri2mri import figures, text
from mri2mri.errors import DataError
from mri2mri.metrics import COMPARISON_METRICS, DIGITS
from mri2mri.report.tables import TABLE_HEADERS, caption, format_mean_std, method_summary
from mri2mri.runfolder import RunFolder

BASELINE = "intensity-map"

# The run's own columns, then the metric columns of the report's tables.
HEADERS = {lang: {**TABLE_HEADERS[lang], **text.COMPARE_HEADERS[lang]} for lang in text.LANGS}
NOTES = text.COMPARE_NOTES
TABLE_METRICS = COMPARISON_METRICS


@dataclass
class Run:
    """What compare reads from one run folder."""

    folder: Path
    label: str
    config: dict[str, Any]
    metrics: dict[str, Any]
    summary: dict[str, Any]
    summary_from_history: bool
    preview: dict[str, np.ndarray]


def _summary_from_history(history_csv: Path) -> dict[str, Any]:
    """Epochs, training time and speed from the history when the run summary is missing."""
    history = figures.read_history(history_csv)
    epochs = [e for e in history["epoch"] if math.isfinite(e)]
    seconds = [s for s in history.get("seconds", []) if math.isfinite(s)]
    speeds = [s for s in history.get("images_per_s", []) if math.isfinite(s)]
    return {
        "epochs": int(max(epochs)) if epochs else None,
        "train_seconds": float(sum(seconds)) if seconds else None,
        "images_per_s": float(np.mean(speeds)) if speeds else None,
    }


def read_run(folder: Path | str) -> Run:
    """Read one run folder; DataError naming the missing or broken file."""
    files = RunFolder(Path(folder))
    if not files.root.is_dir():
        raise DataError(f"{files.root}: not a run folder")
    config = files.read_config()
    metrics = files.read_metrics()
    if "pooled" not in metrics or "test_set" not in metrics:
        raise DataError(f"{files.metrics}: not written by `mri2mri test` (no pooled metrics)")
    if not files.history.is_file():
        raise DataError(f"{files.history}: not found (is {files.root} a training run folder?)")
    from_history = not files.summary.is_file()
    summary = _summary_from_history(files.history) if from_history else files.read_summary() or {}
    preview = files.read_preview()
    return Run(files.root, files.root.name, config, metrics, summary, from_history, preview)


def check_same_test_set(runs: Sequence[Run]) -> None:
    """Refuse runs whose test slices or target images differ from the first run's."""
    reference = runs[0]
    expected = reference.metrics["test_set"]
    for run in runs[1:]:
        test_set = run.metrics["test_set"]
        if test_set.get("subjects") != expected.get("subjects"):
            ours, theirs = set(expected.get("subjects", [])), set(test_set.get("subjects", []))
            detail = "; ".join(part for part in (
                f"only in {reference.label}: {', '.join(sorted(ours - theirs))}" if ours - theirs else "",
                f"only in {run.label}: {', '.join(sorted(theirs - ours))}" if theirs - ours else "",
            ) if part) or "the same subjects in another order"
            raise DataError(
                f"{run.folder}: tested on other subjects than {reference.folder} ({detail}); "
                "compare runs on the same test set"
            )
        if test_set.get("slices_sha1") != expected.get("slices_sha1"):
            raise DataError(
                f"{run.folder}: same test subjects as {reference.folder} but other slices "
                f"({test_set.get('n_slices')} vs {expected.get('n_slices')}); compare runs on the same test set"
            )
        if test_set.get("targets_sha1") != expected.get("targets_sha1"):
            raise DataError(
                f"{run.folder}: same test slices as {reference.folder} but different target images "
                "(another image size or normalisation); compare runs on the same prepared cache"
            )


def _label_of(folders: Sequence[Path]) -> list[str]:
    """Folder names, or full paths where two names collide."""
    names = [f.name for f in folders]
    return [str(f) if names.count(f.name) > 1 else f.name for f in folders]


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|")


def _count(value: Any) -> str:
    if not isinstance(value, int | float) or not math.isfinite(value):
        return "n/a"
    return f"{value / 1e6:.2f} M" if value >= 1e5 else f"{int(value):,}"


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, int | float) or not math.isfinite(seconds):
        return "n/a"
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.2f} h"


def _number(value: Any, digits: int = 1) -> str:
    return f"{value:.{digits}f}" if isinstance(value, int | float) and math.isfinite(value) else "n/a"


def _table_rows(runs: Sequence[Run]) -> list[list[str]]:
    rows = []
    for run in runs:
        model = run.config.get("model", {})
        train = run.config.get("train", {})
        rows.append([
            run.label, model.get("generator", "n/a"), model.get("discriminator", "n/a"),
            train.get("gan_loss", "n/a"), _number(run.summary.get("epochs"), 0),
            *(format_mean_std(method_summary(run.metrics, "model", m), DIGITS[m]) for m in TABLE_METRICS),
            f"{_count(run.summary.get('parameters_G'))} / {_count(run.summary.get('parameters_D'))}",
            _duration(run.summary.get("train_seconds")), _number(run.summary.get("images_per_s")),
        ])
    rows.append([
        BASELINE, "—", "—", "—", "—",
        *(format_mean_std(method_summary(runs[0].metrics, BASELINE, m), DIGITS[m]) for m in TABLE_METRICS),
        "0 / 0", "—", "—",
    ])
    return rows


def _csv_rows(runs: Sequence[Run]) -> tuple[list[str], list[list[Any]]]:
    header = ["run", "run_dir", "generator", "discriminator", "gan_loss", "epochs", "steps"]
    for metric in TABLE_METRICS:
        header += [f"{metric}_mean", f"{metric}_std"]
    header += ["parameters_G", "parameters_D", "train_seconds", "images_per_s", "device",
               "beats_intensity_map"]
    rows = []

    def metric_cells(metrics: dict[str, Any], method: str) -> list[Any]:
        cells: list[Any] = []
        for metric in TABLE_METRICS:
            entry = method_summary(metrics, method, metric) or {}
            cells += [entry.get("mean"), entry.get("std")]
        return cells

    for run in runs:
        model, train, summary = run.config.get("model", {}), run.config.get("train", {}), run.summary
        rows.append([
            run.label, str(run.folder), model.get("generator"), model.get("discriminator"),
            train.get("gan_loss"), summary.get("epochs"), summary.get("steps"),
            *metric_cells(run.metrics, "model"),
            summary.get("parameters_G"), summary.get("parameters_D"), summary.get("train_seconds"),
            summary.get("images_per_s"), summary.get("device"), run.metrics.get("beats_intensity_map"),
        ])
    rows.append([BASELINE, "", "", "", "", "", "", *metric_cells(runs[0].metrics, BASELINE),
                 0, 0, "", "", "", ""])
    return header, [["" if cell is None else cell for cell in row] for row in rows]


def _comparison_figure(runs: Sequence[Run], out_png: Path, lang: str) -> Path:
    """The first run's first preview slice, found in every run's preview by subject and index."""
    first = runs[0].preview
    if len(first["subject"]) == 0:
        raise DataError(f"{RunFolder(runs[0].folder).preview}: no preview slices")
    subject, slice_index = str(first["subject"][0]), int(first["slice_index"][0])
    panels = []
    for run in runs:
        matches = np.flatnonzero((run.preview["subject"] == subject) & (run.preview["slice_index"] == slice_index))
        if len(matches) == 0:
            raise DataError(
                f"{RunFolder(run.folder).preview}: no preview of {subject} slice {slice_index}; "
                "run `mri2mri test` on it again"
            )
        panels.append((run.label, run.preview["prediction"][matches[0]]))
    panels.append((BASELINE, first["intensity_map"][0]))
    names = {"source_name": runs[0].metrics.get("source", "T1"), "target_name": runs[0].metrics.get("target", "T2")}
    return figures.plot_comparison(
        panels, first["source"][0], first["target"][0], out_png, lang, mask=first["mask"][0], **names
    )


def compare_runs(
    run_dirs: Sequence[Path | str], out_dir: Path | str, lang: str = "en"
) -> tuple[str, Path, Path]:
    """Compare finished, tested runs: returns (Markdown table, compare.csv path, figure path).

    Rows are runs, then the intensity-map baseline; metrics are the model's pooled mean ± std
    over the test slices (see the caption written to compare.md). Raises DataError when a folder
    lacks a file or when the runs were tested on different test sets.
    """
    text.check_lang(lang)
    if not run_dirs:
        raise DataError("compare: no run folders given")
    folders = [Path(d) for d in run_dirs]
    runs = [read_run(folder) for folder in folders]
    for run, label in zip(runs, _label_of(folders), strict=True):
        run.label = label
    check_same_test_set(runs)

    headers = HEADERS[lang]
    columns = ["run", "generator", "discriminator", "gan_loss", "epochs", *TABLE_METRICS,
               "parameters", "train_time", "images_per_s"]
    lines = [
        "| " + " | ".join(headers[c] for c in columns) + " |",
        "|" + "---|" * len(columns),
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in _table_rows(runs)),
    ]
    table = "\n".join(lines) + "\n"

    notes = NOTES[lang]
    reference = runs[0].metrics
    caption_text = caption(
        lang, split=reference.get("split", "test"), n_subjects=len(reference["test_set"]["subjects"]),
        n_slices=reference["test_set"]["n_slices"], source=reference.get("source", "T1"),
        target=reference.get("target", "T2"),
    )
    footnotes = [notes["baseline_row"]]
    footnotes += [notes["not_better"].format(run=r.label) for r in runs if r.metrics.get("beats_intensity_map") is False]
    files = RunFolder(runs[0].folder)
    footnotes += [notes["no_summary"].format(run=r.label, summary=files.summary.name, history=files.history.name)
                  for r in runs if r.summary_from_history]  # fmt: skip

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text(
        table + "\n" + caption_text + "\n\n" + "\n".join(f"- {note}" for note in footnotes) + "\n", encoding="utf-8"
    )
    csv_path = out / "compare.csv"
    header, rows = _csv_rows(runs)
    with open(csv_path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    figure_path = _comparison_figure(runs, out / "compare.png", lang)
    return table, csv_path, figure_path
