"""Self-contained HTML reports: one page per run, and one per ``mri2mri compare``.

A report is a single ``report.html`` that opens in any browser, offline, and can be mailed or
archived on its own: images are embedded as base64 data URIs, the style sheet is inline, and
the only JavaScript is the inline slice viewer (every test slice, from ``viewer/`` written by
``mri2mri test``; see :mod:`mri2mri.viewer`). Every piece of text that comes from a file is HTML-escaped. Chinese
text would show as empty boxes on a machine without a CJK font, so the glyphs a page uses are
embedded too: a subset of the same Noto Sans CJK font the figures use (a few tens of kB).

The run report shows what the run folder holds (see DESIGN.md, "What a run folder holds"):
``config.json`` as tables, loss and validation curves redrawn from ``history.csv``, the test
metrics of ``metrics.json`` with the baselines beside the model, the example figures
``figures/test_visualization_*.png``, and ``run_summary.json``. Missing parts are skipped with a
note; ``metrics.json`` is read defensively and any method / metric keys found are shown.
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

from mri2mri import __version__
from mri2mri.errors import ConfigError, DataError
from mri2mri.figures import check_lang, cjk_font_path, plot_loss_curve, plot_validation_curves

TEXT: dict[str, dict[str, str]] = {
    "en": {
        "run_report": "mri2mri run report",
        "comparison_report": "mri2mri run comparison",
        "configuration": "Run configuration",
        "training": "Training curves",
        "loss_curves": "Training losses",
        "validation_curves": "Validation metrics",
        "metrics": "Test metrics",
        "pooled": "Pooled test metrics (mean ± std)",
        "across_subjects": "Across subjects (mean ± std of the per-subject means)",
        "volume_psnr": "Volume PSNR (dB, over each subject's brain voxels)",
        "per_subject": "Per subject",
        "protocol": "Evaluation protocol",
        "test_set": "Test set",
        "warnings": "Warnings",
        "subject": "Subject",
        "method": "Method",
        "verdict_yes": "The model beats the intensity-mapping baseline.",
        "verdict_no": "The model does NOT beat the intensity-mapping baseline.",
        "other_metrics": "Other entries of metrics.json",
        "examples": "Test examples",
        "other_figures": "Other figures",
        "summary": "Run summary",
        "key": "Key",
        "value": "Value",
        "missing": "{name} not found in this run folder.",
        "no_validation": "history.csv holds no validation values.",
        "best": "Bold: best value of each metric.",
        "table": "Comparison table",
        "figure": "Comparison figure",
        "footer": "Written by mri2mri {version} on {date}.",
        "viewer": "Slice viewer",
        "viewer_help": "Every slice of each test subject: drag the slider or press ←/→ (↑/↓) after "
                       "clicking a viewer. Images are downscaled to {size} px and stored as 8-bit "
                       "JPEG; the error is |generated − real| in the brain, black to bright at 0 to {vmax}.",
        "viewer_slice": "slice {index} ({number}/{count})",
        "viewer_omitted": "Not in the viewer, to keep this page small: {subjects}.",
        "error_panel": "Absolute error",
    },
    "zh": {
        "run_report": "mri2mri 运行报告",
        "comparison_report": "mri2mri 运行对比",
        "configuration": "运行配置",
        "training": "训练曲线",
        "loss_curves": "训练损失",
        "validation_curves": "验证集指标",
        "metrics": "测试集指标",
        "pooled": "汇总测试指标（均值 ± 标准差）",
        "across_subjects": "受试者间（各受试者均值的均值 ± 标准差）",
        "volume_psnr": "体积 PSNR（dB，每名受试者的全部脑体素）",
        "per_subject": "按受试者",
        "protocol": "评估方案",
        "test_set": "测试集",
        "warnings": "警告",
        "subject": "受试者",
        "method": "方法",
        "verdict_yes": "模型优于强度映射基线。",
        "verdict_no": "模型未优于强度映射基线。",
        "other_metrics": "metrics.json 中的其他内容",
        "examples": "测试集示例",
        "other_figures": "其他图像",
        "summary": "运行摘要",
        "key": "项目",
        "value": "值",
        "missing": "本运行目录中没有 {name}。",
        "no_validation": "history.csv 中没有验证集数值。",
        "best": "粗体：各指标的最佳值。",
        "table": "对比表",
        "figure": "对比图",
        "footer": "由 mri2mri {version} 于 {date} 生成。",
        "viewer": "切片浏览器",
        "viewer_help": "每名测试受试者的全部切片：拖动滑块，或点击浏览器后按 ←/→（↑/↓）翻页。"
                       "图像缩小到 {size} 像素并以 8 位 JPEG 保存；误差为脑内 |生成 − 真实|，"
                       "由黑到亮对应 0 到 {vmax}。",
        "viewer_slice": "切片 {index}（{number}/{count}）",
        "viewer_omitted": "为控制页面大小，以下受试者未放入浏览器：{subjects}。",
        "error_panel": "绝对误差",
    },
}

# Metric direction, for bolding the best method: matched on the lower-cased metric name.
_HIGHER_IS_BETTER = ("psnr", "ssim", "ncc", "pearson", "dice")
_LOWER_IS_BETTER = ("mae", "mse", "nmse", "rmse", "l1", "lpips", "fid", "error")

_STYLE = """
/* The embedded CJK subset comes first: it holds only the page's CJK glyphs, so Latin text
   falls through to the system fonts, and Chromium then never picks a tofu-only fallback. */
body { font-family: "mri2mri CJK", system-ui, -apple-system, "Segoe UI", "Noto Sans",
       "Noto Sans CJK SC", "Microsoft YaHei", "PingFang SC", sans-serif;
       margin: 2rem auto; max-width: 1200px;
       padding: 0 1rem; color: #1d1d1f; line-height: 1.45; }
h1 { border-bottom: 2px solid #444; padding-bottom: .3rem; }
h2 { margin-top: 2.2rem; border-bottom: 1px solid #ccc; padding-bottom: .2rem; }
table { border-collapse: collapse; margin: .6rem 0 1rem; font-size: .92rem; }
th, td { border: 1px solid #d0d0d0; padding: .25rem .6rem; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr:nth-child(even) td { background: #fafafa; }
figure { margin: 1rem 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #e0e0e0; }
figcaption { color: #555; font-size: .9rem; }
.note { color: #666; font-style: italic; }
.good { color: #126b12; font-weight: 600; }
.bad { color: #a11; font-weight: 600; }
.config { display: flex; flex-wrap: wrap; gap: 1.5rem; }
pre { background: #f6f6f6; padding: .6rem; overflow-x: auto; }
footer { margin-top: 3rem; color: #888; font-size: .85rem; }
.viewer { margin: 1rem 0 1.6rem; padding: .6rem; border: 1px solid #ddd; }
.viewer:focus { outline: 2px solid #4a7ebb; }
.viewer .panels { display: flex; flex-wrap: wrap; gap: .6rem; }
.viewer figure { margin: 0; }
.viewer canvas { width: 192px; height: auto; image-rendering: pixelated; background: #000; }
.viewer input[type=range] { width: min(100%, 800px); }
.viewer .slice-metrics { font-variant-numeric: tabular-nums; }
"""

# The slice viewer: draws slice k of each sprite sheet into its canvas. ?slice=K in the page's
# address opens every viewer at slice K (for links, and for testing the page in a browser).
_VIEWER_SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById('viewer-data').textContent);
  const start = new URLSearchParams(window.location.search).get('slice');
  let active = null;
  document.querySelectorAll('.viewer').forEach(function (root) {
    const subject = data.subjects[Number(root.dataset.index)];
    const slider = root.querySelector('input[type=range]');
    const canvases = Array.from(root.querySelectorAll('canvas'));
    const label = root.querySelector('.slice-metrics');
    const [height, width] = data.size;
    const sheets = data.panels.map(function (panel) {
      const image = new Image();
      image.src = subject.sprites[panel];
      return image;
    });
    function format(name, value) {
      if (value === null || value === undefined) { return name + ' n/a'; }
      return name + ' ' + value.toFixed(name.startsWith('psnr') ? 2 : 4);
    }
    function draw() {
      const k = Number(slider.value);
      canvases.forEach(function (canvas, i) {
        const context = canvas.getContext('2d');
        context.clearRect(0, 0, width, height);
        context.drawImage(sheets[i], 0, k * height, width, height, 0, 0, width, height);
      });
      const metrics = data.metric_names.map(function (name) { return format(name, subject.metrics[name][k]); });
      label.textContent = root.dataset.sliceText.replace('{index}', subject.slices[k])
        .replace('{number}', k + 1).replace('{count}', subject.slices.length) + ': ' + metrics.join(', ');
      root.dataset.slice = String(k);
    }
    function step(delta) {
      slider.value = String(Math.min(Number(slider.max), Math.max(0, Number(slider.value) + delta)));
      draw();
    }
    root.mri2mriStep = step;
    slider.addEventListener('input', draw);
    root.addEventListener('focusin', function () { active = root; });
    root.addEventListener('pointerdown', function () { active = root; });
    Promise.all(sheets.map(function (image) { return image.decode(); })).then(function () {
      if (start !== null && !Number.isNaN(Number(start))) {
        slider.value = String(Math.min(Number(slider.max), Math.max(0, Math.round(Number(start)))));
      }
      draw();
      root.dataset.ready = '1';
    });
  });
  document.addEventListener('keydown', function (event) {
    const root = active || document.querySelector('.viewer');
    // A focused slider moves by itself on arrow keys; do not move it twice.
    const onSlider = event.target instanceof Element && event.target.matches('input[type=range]');
    if (!root || !root.mri2mriStep || onSlider) { return; }
    const delta = {ArrowRight: 1, ArrowDown: 1, ArrowLeft: -1, ArrowUp: -1}[event.key];
    if (delta) { root.mri2mriStep(delta); event.preventDefault(); }
  });
})();
"""


def _text(key: str, lang: str, **fmt: object) -> str:
    return TEXT[lang][key].format(**fmt)


def _json_block(value: Any) -> str:
    """A JSON value, indented and escaped, as a <pre> block."""
    return f"<pre>{_esc(json.dumps(value, indent=2, ensure_ascii=False))}</pre>"


def _esc(value: object) -> str:
    return html.escape(str(value), quote=True)


# ---------------------------------------------------------------------------------------------
# Building blocks


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DataError(f"{path}: cannot read JSON ({error})") from None


def _format(value: Any) -> str:
    """A cell value as text: numbers to 4 significant digits, mean/std pairs as 'm ± s'."""
    if isinstance(value, dict) and "mean" in value:
        if value.get("std") is None:
            return _format(value["mean"])
        return f"{_format(value['mean'])} ± {_format(value['std'])}"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if value is None:
        return "–"
    if isinstance(value, (list, dict)):
        return json.dumps(value, ensure_ascii=False)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _table(
    header: Sequence[str], rows: Iterable[Sequence[Any]], bold: set[tuple[int, int]] | None = None
) -> str:
    """An HTML table; cells are escaped; ``bold`` holds (row, column) positions to emphasise."""
    bold = bold or set()
    head = "".join(f"<th>{_esc(name)}</th>" for name in header)
    body = []
    for row_index, row in enumerate(rows):
        cells = []
        for column_index, value in enumerate(row):
            numeric = _is_number(value) or (isinstance(value, dict) and "mean" in value)
            text = _esc(_format(value))
            if (row_index, column_index) in bold:
                text = f"<strong>{text}</strong>"
            cells.append(f'<td class="num">{text}</td>' if numeric else f"<td>{text}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts to one level with 'a / b' keys; mean/std pairs stay whole."""
    if isinstance(value, dict) and value and not _is_summary(value):
        flat: dict[str, Any] = {}
        for key, item in value.items():
            flat.update(_flatten(item, f"{prefix} / {key}" if prefix else str(key)))
        return flat
    return {prefix or "value": value}


def _key_value_table(mapping: dict[str, Any], lang: str) -> str:
    flat = _flatten(mapping)
    return _table([_text("key", lang), _text("value", lang)], list(flat.items()))


def _is_summary(value: Any) -> bool:
    """A {"mean", "std", "n"} summary, shown as one 'mean ± std' cell."""
    return isinstance(value, dict) and "mean" in value and set(value) <= {"mean", "std", "n"}


def _rows_table(rows: list[dict[str, Any]]) -> str:
    """A table from dicts: the union of their keys (in order of appearance) as columns."""
    columns: list[str] = []
    for row in rows:
        columns.extend(name for name in row if name not in columns)
    return _table(columns, [[row.get(name) for name in columns] for row in rows])


def _records_table(records: Any, first_column: str) -> str:
    """A table from a list of flat-ish dicts, or from a dict whose values are dicts."""
    rows: list[dict[str, Any]] = []
    if isinstance(records, list):
        rows = [_flatten(item) if isinstance(item, dict) else {"value": item} for item in records]
    elif isinstance(records, dict):
        rows = [{first_column: key, **_flatten(item)} for key, item in records.items()]
    if not rows:
        return _json_block(records)
    return _rows_table(rows)


def _per_subject_table(per_subject: Any, lang: str) -> str:
    """One row per (subject, method) for {subject: {"n_slices": .., method: {metric: ..}}}."""
    if not isinstance(per_subject, dict) or not all(
        isinstance(entry, dict) for entry in per_subject.values()
    ):
        return _records_table(per_subject, _text("subject", lang))
    rows: list[dict[str, Any]] = []
    for subject, entry in per_subject.items():
        scalars = {k: v for k, v in entry.items() if not isinstance(v, dict) or _is_summary(v)}
        methods = {k: v for k, v in entry.items() if k not in scalars}
        head = {_text("subject", lang): subject, **scalars}
        if not methods:
            rows.append(head)
        for method, values in methods.items():
            rows.append({**head, _text("method", lang): method, **_flatten(values)})
    return _rows_table(rows)


def _image(path: Path, alt: str) -> str:
    """An <img> with the PNG embedded as a data URI."""
    payload = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<img src="data:image/png;base64,{payload}" alt="{_esc(alt)}">'


def _figure(path: Path, caption: str) -> str:
    return f"<figure>{_image(path, caption)}<figcaption>{_esc(caption)}</figcaption></figure>"


def _note(text: str) -> str:
    return f'<p class="note">{_esc(text)}</p>'


def _cjk_font_face(text: str) -> str:
    """An @font-face rule embedding just the CJK glyphs of ``text`` ('' when there are none)."""
    characters = sorted({char for char in text if ord(char) >= 0x2E80})  # CJK blocks onwards
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


def _page(title: str, sections: Sequence[str], lang: str) -> str:
    date = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    footer = _esc(_text("footer", lang, version=__version__, date=date))
    html_lang = "zh-CN" if lang == "zh" else "en"
    body = (f"<h1>{_esc(title)}</h1>\n" + "\n".join(sections)
            + f"\n<footer>{footer}</footer>\n")
    return (
        f'<!DOCTYPE html>\n<html lang="{html_lang}">\n<head>\n<meta charset="utf-8">\n'
        f'<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{_esc(title)}</title>\n<style>{_cjk_font_face(title + body)}{_STYLE}</style>\n"
        f"</head>\n<body>\n{body}</body>\n</html>\n"
    )


# ---------------------------------------------------------------------------------------------
# Sections of the run report


def _config_section(config: Any, lang: str) -> str:
    heading = f"<h2>{_esc(_text('configuration', lang))}</h2>"
    if not isinstance(config, dict):
        return heading + _json_block(config)
    tables = []
    loose = {k: v for k, v in config.items() if not isinstance(v, dict)}
    if loose:
        tables.append(f"<div>{_key_value_table(loose, lang)}</div>")
    for section, values in config.items():
        if isinstance(values, dict):
            tables.append(f"<div><h3>{_esc(section)}</h3>{_key_value_table(values, lang)}</div>")
    return heading + f'<div class="config">{"".join(tables)}</div>'


def _metric_direction(name: str) -> int:
    """+1 if higher is better, -1 if lower is better, 0 if unknown."""
    lowered = name.lower()
    if any(key in lowered for key in _HIGHER_IS_BETTER):
        return 1
    if any(key in lowered for key in _LOWER_IS_BETTER):
        return -1
    return 0


def _mean_of(value: Any) -> float | None:
    if isinstance(value, dict):
        value = value.get("mean")
    return float(value) if _is_number(value) and math.isfinite(value) else None


def _pooled_table(pooled: dict[str, Any], lang: str) -> str:
    """Methods as rows (model and baselines side by side), metrics as columns; best in bold."""
    methods = [name for name, values in pooled.items() if isinstance(values, dict)]
    metrics: list[str] = []
    for name in methods:
        metrics.extend(metric for metric in pooled[name] if metric not in metrics)
    rows = [[name, *(pooled[name].get(metric) for metric in metrics)] for name in methods]
    bold: set[tuple[int, int]] = set()
    for column, metric in enumerate(metrics, start=1):
        direction = _metric_direction(metric)
        means = [(_mean_of(row[column]), index) for index, row in enumerate(rows)]
        means = [(mean, index) for mean, index in means if mean is not None]
        if direction and len(means) > 1:
            best = max(mean * direction for mean, _ in means)
            bold.update((index, column) for mean, index in means if mean * direction == best)
    table = _table([_text("method", lang), *metrics], rows, bold)
    return table + (_note(_text("best", lang)) if bold else "")


def _details(summary: str, body: str) -> str:
    return f"<details><summary>{_esc(summary)}</summary>{body}</details>"


def _metrics_section(metrics: Any, lang: str) -> str:
    """metrics.json (schema of mri2mri.evaluation), shown whatever methods and metrics it has."""
    parts = [f"<h2>{_esc(_text('metrics', lang))}</h2>"]
    if not isinstance(metrics, dict):
        parts.append(_json_block(metrics))
        return "".join(parts)
    if isinstance(metrics.get("caption"), str):
        parts.append(f"<p>{_esc(metrics['caption'])}</p>")
    verdict = metrics.get("beats_intensity_map")
    if isinstance(verdict, bool):
        css, key = ("good", "verdict_yes") if verdict else ("bad", "verdict_no")
        parts.append(f'<p class="{css}">{_esc(_text(key, lang))}</p>')
    elif verdict is not None:
        parts.append(_key_value_table({"beats_intensity_map": verdict}, lang))
    warnings = metrics.get("warnings")
    if isinstance(warnings, list) and warnings:
        items = "".join(f"<li>{_esc(line)}</li>" for line in warnings)
        parts.append(f'<h3>{_esc(_text("warnings", lang))}</h3><ul class="bad">{items}</ul>')
    for key in ("pooled", "across_subjects"):
        if isinstance(metrics.get(key), dict) and metrics[key]:
            parts.append(f"<h3>{_esc(_text(key, lang))}</h3>{_pooled_table(metrics[key], lang)}")
    volume = metrics.get("volume_psnr")
    if isinstance(volume, dict) and volume:
        parts.append(f"<h3>{_esc(_text('volume_psnr', lang))}</h3>"
                     + _table([_text("method", lang), "PSNR"], list(volume.items())))
    if metrics.get("per_subject"):
        parts.append(_details(_text("per_subject", lang),
                              _per_subject_table(metrics["per_subject"], lang)))
    for key in ("protocol", "test_set"):
        if isinstance(metrics.get(key), dict) and metrics[key]:
            parts.append(_details(_text(key, lang), _key_value_table(metrics[key], lang)))
    shown = {"caption", "beats_intensity_map", "warnings", "pooled", "across_subjects",
             "volume_psnr", "per_subject", "protocol", "test_set"}
    others = {key: value for key, value in metrics.items() if key not in shown}
    if others:
        parts.append(_details(
            _text("other_metrics", lang),
            _json_block(others),
        ))
    return "".join(parts)


def _training_section(run_dir: Path, figures_dir: Path, lang: str) -> tuple[str, set[Path]]:
    """Redraw the curves from history.csv (in ``lang``); fall back to PNGs already there."""
    parts = [f"<h2>{_esc(_text('training', lang))}</h2>"]
    loss_png = figures_dir / "loss_curve.png"
    validation_png = figures_dir / "validation_curves.png"
    history = run_dir / "history.csv"
    if history.is_file():
        plot_loss_curve(history, loss_png, lang)
        if plot_validation_curves(history, validation_png, lang) is None:
            validation_png.unlink(missing_ok=True)  # a stale figure would contradict the note
    shown: set[Path] = set()
    if loss_png.is_file():
        parts.append(_figure(loss_png, _text("loss_curves", lang)))
        shown.add(loss_png)
    else:
        parts.append(_note(_text("missing", lang, name="history.csv")))
    if validation_png.is_file():
        parts.append(_figure(validation_png, _text("validation_curves", lang)))
        shown.add(validation_png)
    elif loss_png.is_file():
        parts.append(_note(_text("no_validation", lang)))
    return "".join(parts), shown


def write_run_report(run_dir: str | Path, lang: str = "en") -> Path:
    """Write ``run_dir/report.html``, a self-contained page describing a run; returns its path.

    Curves are redrawn into ``run_dir/figures`` from ``history.csv`` in the requested language.
    Raises DataError if ``run_dir`` is not a folder or one of its JSON files is unreadable.
    """
    check_lang(lang)
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"{run}: run folder not found")
    figures_dir = run / "figures"

    config = _read_json(run / "config.json") if (run / "config.json").is_file() else None
    run_name = run.name
    translation = ""
    if isinstance(config, dict):
        train = config.get("train") if isinstance(config.get("train"), dict) else {}
        data = config.get("data") if isinstance(config.get("data"), dict) else {}
        run_name = str(train.get("run_name", run_name))
        if "source" in data and "target" in data:
            translation = f" ({data['source']} → {data['target']})"
    title = f"{_text('run_report', lang)}: {run_name}{translation}"

    sections = []
    if config is not None:
        sections.append(_config_section(config, lang))
    else:
        sections.append(f"<h2>{_esc(_text('configuration', lang))}</h2>"
                        + _note(_text("missing", lang, name="config.json")))

    training, shown = _training_section(run, figures_dir, lang)
    sections.append(training)

    if (run / "metrics.json").is_file():
        sections.append(_metrics_section(_read_json(run / "metrics.json"), lang))
    else:
        sections.append(f"<h2>{_esc(_text('metrics', lang))}</h2>"
                        + _note(_text("missing", lang, name="metrics.json")))

    viewer = _viewer_section(run / "viewer", config, lang)
    if viewer:
        sections.append(viewer)

    examples = sorted(figures_dir.glob("test_visualization_*.png"))
    if examples:
        sections.append(f"<h2>{_esc(_text('examples', lang))}</h2>"
                        + "".join(_figure(path, path.stem) for path in examples))
    others = [p for p in sorted(figures_dir.glob("*.png")) if p not in shown and p not in examples]
    if others:
        sections.append(f"<h2>{_esc(_text('other_figures', lang))}</h2>"
                        + "".join(_figure(path, path.stem) for path in others))

    summary_path = run / "run_summary.json"
    if summary_path.is_file():
        summary = _read_json(summary_path)
        body = (_key_value_table(summary, lang) if isinstance(summary, dict)
                else _json_block(summary))
        sections.append(f"<h2>{_esc(_text('summary', lang))}</h2>{body}")

    out = run / "report.html"
    out.write_text(_page(title, sections, lang), encoding="utf-8")
    return out


def _viewer_section(folder: Path, config: Any, lang: str) -> str:
    """The slice viewer of every test subject ('' when the run folder has no ``viewer/``)."""
    from mri2mri.figures import t
    from mri2mri.viewer import load_viewer

    try:
        payload = load_viewer(folder)
    except (OSError, ValueError, KeyError) as error:
        return f"<h2>{_esc(_text('viewer', lang))}</h2>" + _note(f"{folder}: unreadable ({error})")
    if not payload or not payload.get("subjects"):
        return ""
    data = config.get("data", {}) if isinstance(config, dict) else {}
    names = {"source": str(data.get("source", "T1")), "target": str(data.get("target", "T2"))}
    labels = {"source": t("input", lang, **names), "prediction": t("generated", lang, **names),
              "target": t("real", lang, **names), "error": _text("error_panel", lang)}  # fmt: skip
    height, width = payload["size"]
    for entry in payload["subjects"]:
        entry["sprites"] = {panel: "data:image/jpeg;base64," + base64.b64encode(raw).decode("ascii")
                            for panel, raw in entry.pop("data").items()}  # fmt: skip
    parts = [f'<h2 id="viewer">{_esc(_text("viewer", lang))}</h2>',  # report.html#viewer links here
             _note(_text("viewer_help", lang, size=max(height, width), vmax=payload.get("error_vmax")))]  # fmt: skip
    for index, entry in enumerate(payload["subjects"]):
        count = len(entry["slices"])
        panels = "".join(
            f'<figure><canvas width="{width}" height="{height}" data-panel="{_esc(panel)}"></canvas>'
            f"<figcaption>{_esc(labels.get(panel, panel))}</figcaption></figure>"
            for panel in payload["panels"]
        )
        parts.append(
            f'<div class="viewer" tabindex="0" data-index="{index}" '
            f'data-slice-text="{_esc(TEXT[lang]["viewer_slice"])}">'
            f"<h3>{_esc(entry['subject'])}</h3>"
            f'<input type="range" min="0" max="{count - 1}" value="{count // 2}" '
            f'aria-label="{_esc(entry["subject"])}">'
            f'<p class="slice-metrics"></p><div class="panels">{panels}</div></div>'
        )
    if payload.get("omitted_subjects"):
        parts.append(_note(_text("viewer_omitted", lang, subjects=", ".join(payload["omitted_subjects"]))))
    blob = json.dumps({k: payload[k] for k in ("size", "panels", "metric_names", "subjects")})
    parts.append('<script type="application/json" id="viewer-data">'
                 + blob.replace("</", "<\\/") + "</script>")  # fmt: skip
    parts.append(f"<script>{_VIEWER_SCRIPT}</script>")
    return "\n".join(parts)


# ---------------------------------------------------------------------------------------------
# Comparison report


def markdown_table_to_html(markdown: str) -> str:
    """A GitHub-style pipe table as an HTML table (escaped); other text as a <pre> block."""
    lines = [line.strip() for line in markdown.strip().splitlines() if line.strip()]
    table_lines = [line for line in lines if line.startswith("|")]
    if len(table_lines) < 2 or len(table_lines) != len(lines):
        return f"<pre>{_esc(markdown)}</pre>"

    def cells(line: str) -> list[str]:
        # '\|' is a literal pipe inside a cell.
        parts = line.strip("|").replace("\\|", "\0").split("|")
        return [part.strip().replace("\0", "|") for part in parts]

    header = cells(table_lines[0])
    separator = cells(table_lines[1])
    if not all(set(cell) <= set(":-") and "-" in cell for cell in separator):
        return f"<pre>{_esc(markdown)}</pre>"
    rows = [cells(line) for line in table_lines[2:]]
    return _table(header, rows)


def write_comparison_report(
    out_dir: str | Path, markdown_table: str, figure_png: str | Path | None, lang: str = "en"
) -> Path:
    """Write ``out_dir/report.html`` for ``mri2mri compare``: the table and the figure.

    ``markdown_table`` is the comparison table as a pipe table; ``figure_png`` (optional) is
    the side-by-side figure of :func:`mri2mri.figures.plot_comparison`. Returns the path.
    """
    check_lang(lang)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sections = [f"<h2>{_esc(_text('table', lang))}</h2>{markdown_table_to_html(markdown_table)}"]
    if figure_png is not None:
        figure_path = Path(figure_png)
        if not figure_path.is_file():
            raise DataError(f"{figure_path}: comparison figure not found")
        sections.append(f"<h2>{_esc(_text('figure', lang))}</h2>"
                        + _figure(figure_path, _text("figure", lang)))
    path = out / "report.html"
    path.write_text(_page(_text("comparison_report", lang), sections, lang), encoding="utf-8")
    return path
