"""The comparison report of ``mri2mri compare``: its table and its figure on one page."""

from __future__ import annotations

from pathlib import Path

from mri2mri import text
from mri2mri.errors import DataError
from mri2mri.report import page
from mri2mri.report.page import heading, phrase
from mri2mri.runfolder import RunFolder


def markdown_table_to_html(markdown: str) -> str:
    """A GitHub-style pipe table as an HTML table (escaped); other text as a <pre> block."""
    lines = [line.strip() for line in markdown.strip().splitlines() if line.strip()]
    table_lines = [line for line in lines if line.startswith("|")]
    if len(table_lines) < 2 or len(table_lines) != len(lines):
        return f"<pre>{page.esc(markdown)}</pre>"

    def cells(line: str) -> list[str]:
        # '\|' is a literal pipe inside a cell.
        parts = line.strip("|").replace("\\|", "\0").split("|")
        return [part.strip().replace("\0", "|") for part in parts]

    header = cells(table_lines[0])
    separator = cells(table_lines[1])
    if not all(set(cell) <= set(":-") and "-" in cell for cell in separator):
        return f"<pre>{page.esc(markdown)}</pre>"
    rows = [cells(line) for line in table_lines[2:]]
    return page.table(header, rows)


def write_comparison_report(
    out_dir: str | Path, markdown_table: str, figure_png: str | Path | None, lang: str = "en"
) -> Path:
    """Write the report page of ``mri2mri compare`` into ``out_dir``: the table and the figure.

    ``markdown_table`` is the comparison table as a pipe table; ``figure_png`` (optional) is
    the side-by-side figure of :func:`mri2mri.figures.plot_comparison`. Returns the path.
    """
    text.check_lang(lang)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = [f"{heading('table', lang)}{markdown_table_to_html(markdown_table)}"]
    if figure_png is not None:
        figure_path = Path(figure_png)
        if not figure_path.is_file():
            raise DataError(f"{figure_path}: comparison figure not found")
        sections.append(heading("figure", lang) + page.figure(figure_path, phrase("figure", lang)))
    path = RunFolder(out).report  # the page has the name a run's report has
    path.write_text(page.page(phrase("comparison_report", lang), sections, lang), encoding="utf-8")
    return path
