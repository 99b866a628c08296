"""Markdown tables of test metrics and the caption that goes under them.

Columns, labels and decimals come from the metric registry (:data:`mri2mri.metrics.METRICS`)
and the labels of :data:`mri2mri.text.METRIC_LABELS`; ``mri2mri compare`` builds its table
from the same pieces.
"""

from __future__ import annotations

from typing import Any

from mri2mri import text
from mri2mri.metrics import DIGITS, VOLUME_METRICS

# Column headers of the metric tables: "method", then one per metric (and the volume metrics).
TABLE_HEADERS = {lang: {"method": text.METHOD_HEADER[lang], **text.METRIC_LABELS[lang]} for lang in text.LANGS}

__all__ = ["DIGITS", "TABLE_HEADERS", "caption", "format_mean_std", "method_summary", "metrics_table"]


def caption(lang: str, *, split: str, n_subjects: int, n_slices: int, source: str, target: str) -> str:
    """The caption that goes under every table of these metrics."""
    return text.CAPTIONS[text.check_lang(lang)].format(
        split=split, n_subjects=n_subjects, n_slices=n_slices, source=source, target=target
    )


def format_mean_std(summary: dict[str, Any] | None, digits: int = 3) -> str:
    """"mean ± std" of a summary dict; "n/a" when it has no finite values."""
    if not summary or summary.get("mean") is None:
        return "n/a"
    std = summary.get("std")
    return f"{summary['mean']:.{digits}f} ± {std:.{digits}f}" if std is not None else f"{summary['mean']:.{digits}f}"


def method_summary(result: dict[str, Any], method: str, metric: str) -> dict[str, Any] | None:
    """The {"mean", "std", "n"} of ``metric`` for ``method`` in a test metrics payload: pooled
    over slices, or over subjects for a volume metric; None when the payload lacks it (a run
    folder written before the metric existed)."""
    section = result.get(metric) if metric in VOLUME_METRICS else result.get("pooled")
    entry = section.get(method) if isinstance(section, dict) else None
    if metric in VOLUME_METRICS:
        return entry if isinstance(entry, dict) else None
    value = entry.get(metric) if isinstance(entry, dict) else None
    return value if isinstance(value, dict) else None


def metrics_table(result: dict[str, Any], lang: str = "en") -> str:
    """A Markdown table of pooled mean ± std per method (model first, then the baselines), and
    the volume metrics over subjects, followed by the caption; ``result`` is the test metrics
    payload (:mod:`mri2mri.evaluation`)."""
    headers = TABLE_HEADERS[text.check_lang(lang)]
    columns = list(result["metric_names"]) + [name for name in VOLUME_METRICS if name in result]
    lines = [
        "| " + " | ".join([headers["method"], *(headers.get(c, c) for c in columns)]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for method in result["methods"]:
        label = result["model_name"] if method == "model" else method
        cells = [format_mean_std(method_summary(result, method, c), DIGITS.get(c, 3)) for c in columns]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    summary = caption(
        lang, split=result["split"], n_subjects=len(result["test_set"]["subjects"]),
        n_slices=result["test_set"]["n_slices"], source=result["source"], target=result["target"],
    )
    return "\n".join(lines) + "\n\n" + summary + "\n"
