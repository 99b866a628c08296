"""The building blocks of a report page: escaped cells, tables, embedded images, the page itself.

Every piece of text that comes from a file is HTML-escaped here. Chinese text would show as
empty boxes on a machine without a CJK font, so :func:`page` embeds the glyphs a page uses: a
subset of the same Noto Sans CJK font the figures use (a few tens of kB).
"""

from __future__ import annotations

import base64
import datetime
import html
import io
import json
import math
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from fontTools import subset

from mri2mri import __version__, text
from mri2mri.errors import ConfigError
from mri2mri.figures import cjk_font_path
from mri2mri.report.assets import STYLE


def phrase(key: str, lang: str, **fmt: object) -> str:
    """One of the report's texts (:data:`mri2mri.text.REPORT`), placeholders filled."""
    return text.REPORT[lang][key].format(**fmt)


def esc(value: object) -> str:
    return html.escape(str(value), quote=True)


def json_block(value: Any) -> str:
    """A JSON value, indented and escaped, as a <pre> block."""
    return f"<pre>{esc(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def format_cell(value: Any) -> str:
    """A cell value as text: numbers to 4 significant digits, mean/std pairs as 'm ± s'."""
    if isinstance(value, dict) and "mean" in value:
        if value.get("std") is None:
            return format_cell(value["mean"])
        return f"{format_cell(value['mean'])} ± {format_cell(value['std'])}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if value is None:
        return "–"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def is_summary(value: Any) -> bool:
    """A {"mean", "std", "n"} summary, shown as one 'mean ± std' cell."""
    return isinstance(value, dict) and "mean" in value and set(value) <= {"mean", "std", "n"}


def table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], bold: set[tuple[int, int]] | None = None
) -> str:
    """An HTML table; cells are escaped; ``bold`` holds (row, column) positions to emphasise."""
    bold = bold or set()
    head = "".join(f"<th>{esc(name)}</th>" for name in header)
    body = []
    for row_index, row in enumerate(rows):
        cells = []
        for column_index, value in enumerate(row):
            numeric = is_number(value) or (isinstance(value, dict) and "mean" in value)
            shown = esc(format_cell(value))
            if (row_index, column_index) in bold:
                shown = f"<strong>{shown}</strong>"
            cells.append(f'<td class="num">{shown}</td>' if numeric else f"<td>{shown}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to one level with 'a / b' keys; mean/std pairs stay whole."""
    if isinstance(value, dict) and value and not is_summary(value):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(flatten(item, f"{prefix} / {key}" if prefix else str(key)))
        return flat
    return {prefix or "value": value}


def key_value_table(mapping: dict[str, Any], lang: str) -> str:
    flat = flatten(mapping)
    return table([phrase("key", lang), phrase("value", lang)], list(flat.items()))


def rows_table(rows: list[dict[str, Any]]) -> str:
    """A table from dicts: the union of their keys (in order of appearance) as columns."""
    columns: list[str] = []
    for row in rows:
        columns.extend(name for name in row if name not in columns)
    return table(columns, [[row.get(name) for name in columns] for row in rows])


def records_table(records: Any, first_column: str) -> str:
    """A table from a list of flat-ish dicts, or from a dict whose values are dicts."""
    rows: list[dict[str, Any]] = []
    if isinstance(records, list):
        rows = [flatten(item) if isinstance(item, dict) else {"value": item} for item in records]
    elif isinstance(records, dict):
        rows = [{first_column: key, **flatten(item)} for key, item in records.items()]
    if not rows:
        return json_block(records)
    return rows_table(rows)


def image(path: Path, alt: str) -> str:
    """An <img> with the PNG embedded as a data URI."""
    payload = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{payload}" alt="{esc(alt)}">'


def figure(path: Path, caption: str) -> str:
    return f"<figure>{image(path, caption)}<figcaption>{esc(caption)}</figcaption></figure>"


def note(message: str) -> str:
    return f'<p class="note">{esc(message)}</p>'


def heading(key: str, lang: str) -> str:
    """A section's <h2>."""
    return f"<h2>{esc(phrase(key, lang))}</h2>"


def details(summary: str, body: str) -> str:
    return f"<details><summary>{esc(summary)}</summary>{body}</details>"


def cjk_font_face(page_text: str) -> str:
    """An @font-face rule embedding just the CJK glyphs of ``page_text`` ('' when there are none)."""
    characters = sorted({char for char in page_text if ord(char) >= 0x2E80})  # CJK blocks onwards
    if not characters:
        return ""
    try:
        font_path = cjk_font_path()
    except ConfigError:
        return ""  # the page still works; browsers with a CJK font of their own show the text
    options = subset.Options()
    font = subset.load_font(str(font_path), options)
    subsetter = subset.Subsetter(options)
    subsetter.populate(unicodes=[ord(char) for char in characters])
    subsetter.subset(font)
    buffer = io.BytesIO()
    subset.save_font(font, buffer, options)
    payload = base64.b64encode(buffer.getvalue()).decode("ascii")
    return ('@font-face { font-family: "mri2mri CJK"; font-display: block; '
            f'src: url(data:font/otf;base64,{payload}) format("opentype"); }}\n')


def page(title: str, sections: Sequence[str], lang: str) -> str:
    """The whole self-contained HTML page: title, sections, footer, inline style and font."""
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    footer = esc(phrase("footer", lang, version=__version__, date=date))
    html_lang = "zh-CN" if lang == "zh" else "en"
    body = (f"<h1>{esc(title)}</h1>\n" + "\n".join(sections)
            + f"\n<footer>{footer}</footer>\n")
    return (
        f'<!DOCTYPE html>\n<html lang="{html_lang}">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{esc(title)}</title>\n<style>{cjk_font_face(title + body)}{STYLE}</style>\n"
        f"</head>\n<body>\n{body}</body>\n</html>\n"
    )
