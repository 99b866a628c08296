"""Markdown tables of test metrics and the caption that goes under them.

Columns, labels and decimals come from the metric registry (:data:`mri2mri.metrics.METRICS`)
and the labels of :data:`mri2mri.text.METRIC_LABELS`; ``mri2mri compare`` builds its table
from the same pieces.
"""

from __future__ import annotations

from typing import Any

from mri2mri import text
from mri2mri.metrics import DIGITS, VOLUME_METRIC

# Column headers of the metric tables: "method", then one per metric (and the volume metric).
TABLE_HEADERS = {lang: {"method": text.METHOD_HEADER[lang], **text.METRIC_LABELS[lang]} for lang in text.LANGS}

__all__ = ["DIGITS", "TABLE_HEADERS", "caption", "format_mean_std", "metrics_table"]


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


def metrics_table(result: dict[str, Any], lang: str = "en") -> str:
    """A Markdown table of pooled mean ± std per method (model first, then the baselines),
    followed by the caption; ``result`` is the test metrics payload (:mod:`mri2mri.evaluation`)."""
    headers = TABLE_HEADERS[text.check_lang(lang)]
    columns = list(result["metric_names"])
    if VOLUME_METRIC in result:
        columns.append(VOLUME_METRIC)
    lines = [
        "| " + " | ".join([headers["method"], *(headers[c] for c in columns)]) + " |",
        "|" + "---|" * (len(columns) + 1),
    ]
    for method in result["methods"]:
        label = result["model_name"] if method == "model" else method
        cells = [
            format_mean_std(
                result[VOLUME_METRIC][method] if c == VOLUME_METRIC else result["pooled"][method][c], DIGITS[c]
            )
            for c in columns
        ]
        lines.append("| " + " | ".join([label, *cells]) + " |")
    summary = caption(
        lang, split=result["split"], n_subjects=len(result["test_set"]["subjects"]),
        n_slices=result["test_set"]["n_slices"], source=result["source"], target=result["target"],
    )
    return "\n".join(lines) + "\n\n" + summary + "\n"
