"""Self-contained HTML reports: one page per run, and one per ``mri2mri compare``.

A report is a single HTML page that opens in any browser, offline, and can be mailed or
archived on its own: images are embedded as base64 data URIs, the style sheet is inline, and
the only JavaScript is the inline slice viewer (every test slice, from the viewer data written
by ``mri2mri test``; see :mod:`mri2mri.viewer`). Every piece of text that comes from a file is
HTML-escaped, and the CJK glyphs a page uses are embedded with it.

* :mod:`~mri2mri.report.run` — the run report;
* :mod:`~mri2mri.report.comparison` — the comparison report;
* :mod:`~mri2mri.report.page` — the building blocks of a page (tables, images, fonts);
* :mod:`~mri2mri.report.assets` — the inline style sheet and the viewer's script;
* :mod:`~mri2mri.report.tables` — Markdown tables of test metrics and their caption.
"""

from mri2mri.report.comparison import markdown_table_to_html, write_comparison_report
from mri2mri.report.run import write_run_report

__all__ = ["markdown_table_to_html", "write_comparison_report", "write_run_report"]
