"""Figures of the quality benchmarks: the cross-validation by site, and the learning curves.

``bysite`` reads a ``benchmarks/ablation.py`` result (``benchmarks/results/<tag>.json``) and draws,
fold by fold, one configuration's in-brain PSNR on the unit scale, windowed as a viewer shows it,
and its in-brain SSIM, each seed a dot and the mean a bar, beside the ``intensity-map`` table
fitted on the same fold's training patients (and, for several sources, ``linear-regression``).

``curves`` reads a ``benchmarks/curves.py`` result and draws in-brain PSNR (unit scale and
windowed) against the number of training patients and against the number of steps, one line per
fold, the table fitted on the same patients dashed beside it.

``--lang zh`` draws Chinese labels.

    python benchmarks/quality_figures.py bysite --results benchmarks/results/quality_bysite_600s.json \\
        --config default --out docs/images/quality_bysite.png
    python benchmarks/quality_figures.py curves --results benchmarks/results/curves.json \\
        --out docs/images/learning_curves.png
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TEXT = {
    "en": {
        "psnr_mask": "PSNR in the brain (dB), unit scale",
        "psnr_mask_window": "PSNR in the brain (dB), windowed",
        "ssim_mask": "SSIM in the brain",
        "model": "mri2mri {config}",
        "table": "intensity-map (same training patients)",
        "regression": "linear-regression (same training patients)",
        "bysite": "Held-out sites: {config} against the baselines ({runs} runs; dots: seeds)",
        "patients": "training patients ({steps} steps)",
        "steps": "training steps (all of the fold's patients)",
        "curves": "Learning curves on held-out sites (solid: mri2mri, dashed: intensity-map)",
    },
    "zh": {
        "psnr_mask": "脑内 PSNR（dB），单位尺度",
        "psnr_mask_window": "脑内 PSNR（dB），按窗宽窗位",
        "ssim_mask": "脑内 SSIM",
        "model": "mri2mri {config}",
        "table": "强度映射表（相同训练患者）",
        "regression": "线性回归（相同训练患者）",
        "bysite": "未见过的站点：{config} 与基线对比（{runs} 次训练；圆点：随机种子）",
        "patients": "训练患者数（{steps} 步）",
        "steps": "训练步数（该折全部训练患者）",
        "curves": "未见过站点上的学习曲线（实线：mri2mri，虚线：强度映射表）",
    },
}
BYSITE_METRICS = ("psnr_mask", "psnr_mask_window", "ssim_mask")
CURVE_METRICS = ("psnr_mask", "psnr_mask_window")


def read_results(path: Path) -> dict:
    """A benchmark's JSON result; ValueError naming the file when it cannot be read."""
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: cannot read a benchmark result ({error})") from None


def bysite_figure(results: dict, config: str, out: Path, lang: str) -> Path:
    """Per fold: the configuration's seeds (dots) and mean (bar) beside the baselines' bars."""
    from matplotlib.figure import Figure

    from mri2mri.figures import figure_style

    rows = results.get("datasets", {}).get("real", {}).get("rows", [])
    runs = [r for r in rows if r["method"] == config]
    if not runs:
        raise ValueError(f"no run of {config!r} in the result (methods: "
                         f"{', '.join(sorted({str(r['method']) for r in rows})) or 'none'})")  # fmt: skip
    folds = list(dict.fromkeys(r["fold"] for r in runs))
    regression = {r["fold"]: r for r in rows if str(r["method"]).startswith("linear-regression")}
    text = TEXT[lang]
    with figure_style(lang):
        figure = Figure(figsize=(4.2 * len(BYSITE_METRICS), 4.4))
        axes = figure.subplots(1, len(BYSITE_METRICS))
        width = 0.27 if regression else 0.38
        for axis, metric in zip(axes, BYSITE_METRICS, strict=True):
            for i, fold in enumerate(folds):
                mine = [float(r[metric]) for r in runs if r["fold"] == fold]
                table = statistics.fmean(float(r[f"table_{metric}"]) for r in runs if r["fold"] == fold)
                bars = [(table, "tab:gray", "table")]
                if fold in regression:
                    bars.append((float(regression[fold][metric]), "tab:olive", "regression"))
                bars.append((statistics.fmean(mine), "tab:blue", "model"))
                for j, (value, colour, key) in enumerate(bars):
                    x = i + (j - (len(bars) - 1) / 2) * width
                    label = text[key].format(config=config) if i == 0 else None
                    axis.bar(x, value, width, color=colour, alpha=0.55 if key != "model" else 0.8, label=label)
                axis.scatter([i + (len(bars) - 1) / 2 * width] * len(mine), mine, s=14, color="black", zorder=3)
            axis.set_xticks(range(len(folds)), folds, rotation=35, ha="right")
            axis.set_title(text[metric])
            values = [float(r[k]) for r in runs for k in (metric, f"table_{metric}")]
            low, high = min(values), max(values)
            axis.set_ylim(low - 0.15 * (high - low) - (0.02 if "ssim" in metric else 0.5), high + 0.1 * (high - low))
        figure.legend(*axes[0].get_legend_handles_labels(), loc="lower center", ncol=3, fontsize=9)
        figure.suptitle(text["bysite"].format(config=config, runs=len(runs)))
        figure.tight_layout(rect=(0, 0.07, 1, 1))  # room for the legend below the panels
        return _save(figure, out)


def curves_figure(results: dict, out: Path, lang: str) -> Path:
    """PSNR against training patients (at the patient curve's steps) and against steps (with all
    of a fold's patients), both scorings, one colour per fold."""
    from mri2mri.figures import figure_style

    with figure_style(lang):  # tick labels are formatted when saved, under the same style
        return _save(draw_curves(results, lang), out)


def draw_curves(results: dict, lang: str):
    """The figure of :func:`curves_figure`, unsaved."""
    from matplotlib.figure import Figure

    from mri2mri.figures import figure_style

    rows = results.get("rows", [])
    if not rows:
        raise ValueError("the curves result holds no finished run")
    folds = list(dict.fromkeys(r["fold"] for r in rows))
    text = TEXT[lang]
    with figure_style(lang):
        figure = Figure(figsize=(10, 7.6))
        axes = figure.subplots(len(CURVE_METRICS), 2, squeeze=False)
        ticks: tuple[set[int], set[int]] = (set(), set())  # every fold's x values, per column
        for c, fold in enumerate(folds):
            mine = [r for r in rows if r["fold"] == fold]
            everyone = max(r["patients"] for r in mine)
            # the patient curve's steps: those of the runs on fewer patients (curves.py --steps)
            fewest_steps = min(r["steps"] for r in ([r for r in mine if r["patients"] < everyone] or mine))
            by_patients = _mean_by([r for r in mine if r["steps"] == fewest_steps], "patients")
            by_steps = _mean_by([r for r in mine if r["patients"] == everyone], "steps")
            colour = f"C{c}"
            for row, metric in enumerate(CURVE_METRICS):
                for col, points in enumerate((by_patients, by_steps)):
                    axis = axes[row][col]
                    xs = sorted(points)
                    axis.plot(xs, [points[x][metric] for x in xs], "o-", color=colour, label=fold)
                    axis.plot(xs, [points[x][f"table_{metric}"] for x in xs], "s--", color=colour, alpha=0.6)
                    ticks[col].update(xs)
        # each axis labelled once, after every fold has drawn on it
        for col, (values, key) in enumerate(zip(ticks, ("patients", "steps"), strict=True)):
            positions, labels = shared_ticks(values)
            for row, metric in enumerate(CURVE_METRICS):
                axes[row][col].set_xticks(positions, labels)
                axes[row][col].set_xlabel(text[key].format(steps=fewest_steps))
                axes[row][col].set_ylabel(text[metric])
        axes[0][0].legend(fontsize=8)
        figure.suptitle(text["curves"])
        figure.tight_layout()
        return figure


def shared_ticks(values: set[int], close: float = 0.05) -> tuple[list[float], list[str]]:
    """Tick positions and labels for x values pooled over folds; values within ``close`` of the
    axis span (all of one fold's 23 patients, another's 24) share one tick labelled "23/24"."""
    ordered = sorted(values)
    span = (ordered[-1] - ordered[0]) or 1
    groups: list[list[int]] = []
    for x in ordered:
        if groups and x - groups[-1][-1] <= close * span:
            groups[-1].append(x)
        else:
            groups.append([x])
    return [statistics.fmean(g) for g in groups], ["/".join(str(x) for x in g) for g in groups]


def _mean_by(rows: list[dict], key: str) -> dict[int, dict[str, float]]:
    """Rows grouped by ``key``, each metric averaged over seeds."""
    groups: dict[int, list[dict]] = {}
    for r in rows:
        groups.setdefault(int(r[key]), []).append(r)
    metrics = [*CURVE_METRICS, *(f"table_{m}" for m in CURVE_METRICS)]
    return {x: {m: statistics.fmean(float(r[m]) for r in group) for m in metrics} for x, group in groups.items()}


def _save(figure, out: Path) -> Path:
    from mri2mri.figures import save_figure

    save_figure(figure, out, dpi=90)
    print(f"wrote {out}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="figure", required=True)
    for name in ("bysite", "curves"):
        p = sub.add_parser(name)
        p.add_argument("--results", type=Path, required=True, help="the benchmark's JSON result")
        p.add_argument("--out", type=Path, required=True, help="the PNG to write")
        p.add_argument("--lang", default="en", choices=sorted(TEXT))
        if name == "bysite":
            p.add_argument("--config", default="default", help="the configuration to draw")
    args = parser.parse_args(argv)
    sys.path.insert(0, str(ROOT / "src"))
    try:
        results = read_results(args.results)
        if args.figure == "bysite":
            bysite_figure(results, args.config, args.out, args.lang)
        else:
            curves_figure(results, args.out, args.lang)
    except ValueError as error:  # bad input: one line, no traceback, nothing written
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
