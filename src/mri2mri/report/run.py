"""The run report: one self-contained page describing what a run folder holds.

The page shows the run's configuration as tables, loss and validation curves redrawn from its
history, the test metrics with the baselines beside the model, the slice viewer, the example
figures and the run summary (see DESIGN.md, "What a run folder holds"). Missing parts are
skipped with a note; the test metrics are read defensively and any method / metric keys found
are shown. Every file goes through :class:`~mri2mri.runfolder.RunFolder`.
"""

from __future__ import annotations

import base64
import json
import math
from pathlib import Path
from typing import Any

from mri2mri import text
from mri2mri.errors import DataError
from mri2mri.figures import plot_loss_curve, plot_validation_curves, t
from mri2mri.metrics import HIGHER_IS_BETTER, VOLUME_METRICS
from mri2mri.report import page
from mri2mri.report.assets import VIEWER_SCRIPT
from mri2mri.report.page import esc, heading, note, phrase
from mri2mri.runfolder import RunFolder, read_json
from mri2mri.viewer import load_viewer

# Direction of a metric the registry does not know (older or other tools' metrics), for bolding
# the best method: matched on the lower-cased metric name.
_HIGHER_IS_BETTER = ("psnr", "ssim", "ncc", "pearson", "dice")
_LOWER_IS_BETTER = ("mae", "mse", "nmse", "rmse", "l1", "lpips", "fid", "error")


def _config_section(config: Any, lang: str) -> str:
    if not isinstance(config, dict):
        return heading("configuration", lang) + page.json_block(config)
    tables = []
    loose = {k: v for k, v in config.items() if not isinstance(v, dict)}
    if loose:
        tables.append(f"<div>{page.key_value_table(loose, lang)}</div>")
    for section, values in config.items():
        if isinstance(values, dict):
            tables.append(f"<div><h3>{esc(section)}</h3>{page.key_value_table(values, lang)}</div>")
    return heading("configuration", lang) + f'<div class="config">{"".join(tables)}</div>'


def metric_direction(name: str) -> int:
    """+1 if higher is better, -1 if lower is better, 0 if unknown."""
    if name in HIGHER_IS_BETTER:
        return 1 if HIGHER_IS_BETTER[name] else -1
    lowered = name.lower()
    if any(key in lowered for key in _HIGHER_IS_BETTER):
        return 1
    if any(key in lowered for key in _LOWER_IS_BETTER):
        return -1
    return 0


def _mean_of(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("mean")
    return float(value) if page.is_number(value) and math.isfinite(value) else None


def _best(values: list[Any], metric: str, column: int = 1) -> set[tuple[int, int]]:
    """The (row, ``column``) positions of the best of ``values`` (summaries or numbers) by the
    metric's direction; none when it is unknown or fewer than two values are finite."""
    direction = metric_direction(metric)
    means = [(mean, row) for row, mean in enumerate(_mean_of(value) for value in values) if mean is not None]
    if not direction or len(means) < 2:
        return set()
    best = max(mean * direction for mean, _ in means)
    return {(row, column) for mean, row in means if mean * direction == best}


def _pooled_table(pooled: dict[str, Any], lang: str) -> str:
    """Methods as rows (model and baselines side by side), metrics as columns; best in bold."""
    methods = [name for name, values in pooled.items() if isinstance(values, dict)]
    metrics: list[str] = []
    for name in methods:
        metrics.extend(metric for metric in pooled[name] if metric not in metrics)
    rows = [[name, *(pooled[name].get(metric) for metric in metrics)] for name in methods]
    bold: set[tuple[int, int]] = set()
    for column, metric in enumerate(metrics, start=1):
        bold |= _best([row[column] for row in rows], metric, column)
    table = page.table([phrase("method", lang), *metrics], rows, bold)
    return table + (note(phrase("best", lang)) if bold else "")


def _per_subject_table(per_subject: Any, lang: str) -> str:
    """One row per (subject, method) for {subject: {"n_slices": .., method: {metric: ..}}}."""
    if not isinstance(per_subject, dict) or not all(
        isinstance(entry, dict) for entry in per_subject.values()
    ):
        return page.records_table(per_subject, phrase("subject", lang))
    rows: list[dict[str, Any]] = []
    for subject, entry in per_subject.items():
        scalars = {k: v for k, v in entry.items() if not isinstance(v, dict) or page.is_summary(v)}
        methods = {k: v for k, v in entry.items() if k not in scalars}
        head = {phrase("subject", lang): subject, **scalars}
        if not methods:
            rows.append(head)
        for method, values in methods.items():
            rows.append({**head, phrase("method", lang): method, **page.flatten(values)})
    return page.rows_table(rows)


def _verdict_and_warnings(metrics: dict[str, Any], lang: str) -> list[str]:
    parts = []
    if isinstance(metrics.get("caption"), str):
        parts.append(f"<p>{esc(metrics['caption'])}</p>")
    verdict = metrics.get("beats_intensity_map")
    if isinstance(verdict, bool):
        css, key = ("good", "verdict_yes") if verdict else ("bad", "verdict_no")
        parts.append(f'<p class="{css}">{esc(phrase(key, lang))}</p>')
    elif verdict is not None:
        parts.append(page.key_value_table({"beats_intensity_map": verdict}, lang))
    warnings = metrics.get("warnings")
    if isinstance(warnings, list) and warnings:
        items = "".join(f"<li>{esc(line)}</li>" for line in warnings)
        parts.append(f'<h3>{esc(phrase("warnings", lang))}</h3><ul class="bad">{items}</ul>')
    return parts


def _metrics_section(metrics: Any, lang: str, file_name: str) -> str:
    """The test metrics (schema of :mod:`mri2mri.evaluation`), whatever methods and metrics they
    hold; ``file_name`` names their file in the note on entries not shown otherwise."""
    parts = [heading("metrics", lang)]
    if not isinstance(metrics, dict):
        return "".join([*parts, page.json_block(metrics)])
    parts += _verdict_and_warnings(metrics, lang)
    for key in ("pooled", "across_subjects"):
        if isinstance(metrics.get(key), dict) and metrics[key]:
            parts.append(f"<h3>{esc(phrase(key, lang))}</h3>{_pooled_table(metrics[key], lang)}")
    for name in VOLUME_METRICS:  # one value per subject; absent from PNG pairs and older runs
        volume = metrics.get(name)
        if isinstance(volume, dict) and volume:
            parts.append(f"<h3>{esc(phrase(name, lang))}</h3>"
                         + page.table([phrase("method", lang), text.METRIC_LABELS[lang][name]],
                                      list(volume.items()), _best(list(volume.values()), name)))
    if metrics.get("per_subject"):
        parts.append(page.details(phrase("per_subject", lang),
                                  _per_subject_table(metrics["per_subject"], lang)))
    for key in ("protocol", "test_set"):
        if isinstance(metrics.get(key), dict) and metrics[key]:
            parts.append(page.details(phrase(key, lang), page.key_value_table(metrics[key], lang)))
    shown = {"caption", "beats_intensity_map", "warnings", "pooled", "across_subjects",
             *VOLUME_METRICS, "per_subject", "protocol", "test_set"}
    others = {key: value for key, value in metrics.items() if key not in shown}
    if others:
        parts.append(page.details(phrase("other_metrics", lang, file=file_name), page.json_block(others)))
    return "".join(parts)


def _training_section(folder: RunFolder, lang: str) -> tuple[str, set[Path]]:
    """Redraw the curves from the history (in ``lang``); fall back to PNGs already there."""
    parts = [heading("training", lang)]
    loss_png, validation_png = folder.loss_curve, folder.validation_curves
    if folder.history.is_file():
        plot_loss_curve(folder.history, loss_png, lang)
        if plot_validation_curves(folder.history, validation_png, lang) is None:
            validation_png.unlink(missing_ok=True)  # a stale figure would contradict the note
    shown: set[Path] = set()
    if loss_png.is_file():
        parts.append(page.figure(loss_png, phrase("loss_curves", lang)))
        shown.add(loss_png)
    else:
        parts.append(note(phrase("missing", lang, name=folder.history.name)))
    if validation_png.is_file():
        parts.append(page.figure(validation_png, phrase("validation_curves", lang)))
        shown.add(validation_png)
    elif loss_png.is_file():
        parts.append(note(phrase("no_validation", lang, file=folder.history.name)))
    return "".join(parts), shown


def _viewer_panels(entry: dict[str, Any], index: int, payload: dict[str, Any], labels: dict[str, str],
                   lang: str) -> str:  # fmt: skip
    """One subject's viewer: slider, metrics line and a canvas per panel."""
    height, width = payload["size"]
    count = len(entry["slices"])
    panels = "".join(
        f'<figure><canvas width="{width}" height="{height}" data-panel="{esc(panel)}"></canvas>'
        f"<figcaption>{esc(labels.get(panel, panel))}</figcaption></figure>"
        for panel in payload["panels"]
    )
    return (
        f'<div class="viewer" tabindex="0" data-index="{index}" '
        f'data-slice-text="{esc(text.REPORT[lang]["viewer_slice"])}">'
        f"<h3>{esc(entry['subject'])}</h3>"
        f'<input type="range" min="0" max="{count - 1}" value="{count // 2}" '
        f'aria-label="{esc(entry["subject"])}">'
        f'<p class="slice-metrics"></p><div class="panels">{panels}</div></div>'
    )


def _viewer_section(folder: Path, config: Any, lang: str) -> str:
    """The slice viewer of every test subject ('' when the run folder has no viewer)."""
    try:
        payload = load_viewer(folder)
    except (OSError, ValueError, KeyError) as error:
        return heading("viewer", lang) + note(f"{folder}: unreadable ({error})")
    if not payload or not payload.get("subjects"):
        return ""
    data = config.get("data", {}) if isinstance(config, dict) else {}
    names = {"source": str(data.get("source", "T1")), "target": str(data.get("target", "T2"))}
    labels = {"source": t("input", lang, **names), "prediction": t("generated", lang, **names),
              "target": t("real", lang, **names), "error": phrase("error_panel", lang)}  # fmt: skip
    height, width = payload["size"]
    for entry in payload["subjects"]:
        entry["sprites"] = {panel: "data:image/jpeg;base64," + base64.b64encode(raw).decode("ascii")
                            for panel, raw in entry.pop("data").items()}  # fmt: skip
    parts = [f'<h2 id="viewer">{esc(phrase("viewer", lang))}</h2>',  # the page's #viewer links here
             note(phrase("viewer_help", lang, size=max(height, width), vmax=payload.get("error_vmax")))]  # fmt: skip
    parts += [_viewer_panels(entry, index, payload, labels, lang)
              for index, entry in enumerate(payload["subjects"])]  # fmt: skip
    if payload.get("omitted_subjects"):
        parts.append(note(phrase("viewer_omitted", lang, subjects=", ".join(payload["omitted_subjects"]))))
    blob = json.dumps({k: payload[k] for k in ("size", "panels", "metric_names", "subjects")})
    parts.append('<script type="application/json" id="viewer-data">'
                 + blob.replace("</", "<\\/") + "</script>")  # fmt: skip
    parts.append(f"<script>{VIEWER_SCRIPT}</script>")
    return "\n".join(parts)


def _title(config: Any, folder: RunFolder, lang: str) -> str:
    run_name, translation = folder.root.name, ""
    if isinstance(config, dict):
        train = config.get("train") if isinstance(config.get("train"), dict) else {}
        data = config.get("data") if isinstance(config.get("data"), dict) else {}
        run_name = str(train.get("run_name", run_name))
        if "source" in data and "target" in data:
            translation = f" ({data['source']} → {data['target']})"
    return f"{phrase('run_report', lang)}: {run_name}{translation}"


def _figure_sections(folder: RunFolder, shown: set[Path], lang: str) -> list[str]:
    """The test examples, then any other figure the folder holds."""
    sections = []
    examples = folder.test_figures()
    if examples:
        sections.append(heading("examples", lang) + "".join(page.figure(path, path.stem) for path in examples))
    others = [p for p in sorted(folder.figures.glob("*.png")) if p not in shown and p not in examples]
    if others:
        sections.append(heading("other_figures", lang) + "".join(page.figure(path, path.stem) for path in others))
    return sections


def write_run_report(run_dir: str | Path, lang: str = "en") -> Path:
    """Write the run folder's report page, a self-contained page describing a run; returns its path.

    Curves are redrawn into the run's figures from its history in the requested language.
    Raises DataError if ``run_dir`` is not a folder or one of its JSON files is unreadable.
    """
    text.check_lang(lang)
    folder = RunFolder(Path(run_dir))
    if not folder.root.is_dir():
        raise DataError(f"{folder.root}: run folder not found")
    config = read_json(folder.config, what="run configuration") if folder.config.is_file() else None
    if config is not None:
        sections = [_config_section(config, lang)]
    else:
        sections = [heading("configuration", lang) + note(phrase("missing", lang, name=folder.config.name))]
    training, shown = _training_section(folder, lang)
    sections.append(training)
    if folder.metrics.is_file():
        metrics = read_json(folder.metrics, what="test metrics")
        sections.append(_metrics_section(metrics, lang, folder.metrics.name))
    else:
        sections.append(heading("metrics", lang) + note(phrase("missing", lang, name=folder.metrics.name)))
    viewer = _viewer_section(folder.viewer, config, lang)
    if viewer:
        sections.append(viewer)
    sections += _figure_sections(folder, shown, lang)
    if folder.summary.is_file():
        summary = read_json(folder.summary, what="run summary")
        body = page.key_value_table(summary, lang) if isinstance(summary, dict) else page.json_block(summary)
        sections.append(f"{heading('summary', lang)}{body}")
    folder.report.write_text(page.page(_title(config, folder, lang), sections, lang), encoding="utf-8")
    return folder.report
