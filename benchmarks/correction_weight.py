"""How much of its learned correction should a residual generator add to the table?

``--residual intensity-map`` models predict ``table(x) + w * correction(x)`` at inference, with
``w = --correction-weight`` (0.5 by default; training always adds the whole correction). The
prediction is linear in ``w``, so one forward pass per run at ``w = 1`` and the table's image give
the prediction at every weight exactly. This script re-scores the finished runs of an
``ablation.py`` benchmark (its folds by site) at a grid of weights, on each fold's held-out
patients, with the project's in-brain metrics (the per-slice PSNR, SSIM and MAE, on the unit
scale and windowed, that ``mri2mri test`` pools, and the per-patient histogram W1 it averages),
beside the ``intensity-map`` baseline as that run's ``test`` scored it. Nothing is trained. Writes ``<out>/<tag>.json`` and ``.md`` (``--out``: ``benchmarks/results``).

    python benchmarks/correction_weight.py --runs outputs/quality_n4/real --tag correction_weight_600s
    python benchmarks/correction_weight.py --runs outputs/n4/real --tag correction_weight_800steps
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS, finished_runs

from mri2mri.data.cache import SliceCache
from mri2mri.data.dataset import to_model_range, to_unit_range
from mri2mri.inference import load_generator
from mri2mri.metrics import Window, histogram_distance, image_metrics
from mri2mri.models.residual import TableResidual
from mri2mri.runfolder import RunFolder, find_checkpoint, read_json_object

WEIGHTS = (0.0, 0.25, 0.4, 0.5, 0.6, 0.75, 1.0)
METRICS = ("psnr_mask", "ssim_mask", "mae_mask", "psnr_mask_window", "ssim_mask_window")
HISTOGRAM = "histogram_w1"


def whole_and_table(G: TableResidual, source: torch.Tensor, batch_size: int = 16) -> tuple[torch.Tensor, torch.Tensor]:
    """The eval-mode prediction of ``G`` (set to the whole correction), and the table's image, in [-1, 1]."""
    whole, table = [], []
    with torch.inference_mode():
        for start in range(0, len(source), batch_size):
            batch = to_model_range(source[start : start + batch_size])
            whole.append(G(batch).double())
            table.append(G.lookup(batch).double())
    return torch.cat(whole), torch.cat(table)


def score_run(run: Path, cache: SliceCache, weights: tuple[float, ...]) -> dict[str, dict[str, float]]:
    """The in-brain metrics of ``run`` on its fold's test patients at each weight: per-slice
    values pooled over every test slice, each patient windowed by its own percentiles, and the
    histogram W1 averaged over the patients (as ``mri2mri test`` pools and averages them)."""
    G, _, _ = load_generator(find_checkpoint(run, "best"), correction_weight=1.0)  # refuses a plain generator
    per_slice: dict[float, dict[str, list[torch.Tensor]]] = {w: {m: [] for m in METRICS} for w in weights}
    histogram: dict[float, list[float]] = {w: [] for w in weights}
    for record in cache.subjects_in("test"):
        start, stop = record.rows
        source = torch.from_numpy(np.array(cache.source[start:stop], dtype=np.float32))
        target = torch.from_numpy(np.array(cache.target[start:stop], dtype=np.float32)).double()
        mask = torch.from_numpy(np.array(cache.mask[start:stop]) > 0)
        whole, table = whole_and_table(G, source)
        for weight in weights:
            prediction = to_unit_range(table + weight * (whole - table)).clamp(0.0, 1.0)
            windows = (Window.of(prediction, mask), Window.of(target, mask))
            values = image_metrics(prediction, target, mask, windows)
            for name in METRICS:
                per_slice[weight][name].append(values[name])
            histogram[weight].append(histogram_distance(prediction, target, mask))
    scores = {f"{w:g}": {**{m: float(torch.cat(per_slice[w][m]).mean()) for m in METRICS},
                         HISTOGRAM: float(np.mean(histogram[w]))} for w in weights}  # fmt: skip
    baseline = read_json_object(RunFolder(run).metrics)["summary"]["intensity-map"]
    scores["intensity-map"] = {name: float(baseline[name]) for name in (*METRICS, HISTOGRAM)}
    return scores


def markdown(results: dict, weights: tuple[float, ...]) -> str:
    runs = [(fold, name, scores) for fold, by_run in results["folds"].items() for name, scores in by_run.items()]
    keys = [f"{w:g}" for w in weights] + ["intensity-map"]
    lines = [
        f"**Correction weight, re-scored on the held-out patients of each fold of `{results['runs']}` "
        f"({len(runs)} runs of `{results['config']}`); in-brain PSNR (dB) / SSIM, mean of slices**",
        "",
        "| fold | run | " + " | ".join(f"w = {k}" if k != "intensity-map" else k for k in keys) + " |",
        "| --- | --- | " + " | ".join("---" for _ in keys) + " |",
    ]
    for fold, name, scores in runs:
        cells = [f"{scores[k]['psnr_mask']:.2f} / {scores[k]['ssim_mask']:.3f}" for k in keys]
        lines.append(f"| {fold} | {name} | " + " | ".join(cells) + " |")
    summary = []
    for k in keys:
        psnr = np.array([s[k]["psnr_mask"] for _, _, s in runs])
        ssim = np.array([s[k]["ssim_mask"] for _, _, s in runs])
        summary.append(f"{psnr.mean():.2f} ± {psnr.std():.2f} / {ssim.mean():.3f}")
    lines.append("| **mean ± std** | | " + " | ".join(summary) + " |")
    gains = []
    for k in keys[:-1]:
        gain = np.array([s[k]["psnr_mask"] - s["intensity-map"]["psnr_mask"] for _, _, s in runs])
        wins = int((gain > 0).sum())
        gains.append(f"{gain.mean():+.2f} ({wins}/{len(runs)})")
    lines.append("| Δ PSNR vs table (runs above it) | | " + " | ".join(gains) + " | |")
    for metric, label, digits in (("psnr_mask_window", "PSNR windowed (dB)", 2), ("ssim_mask_window", "SSIM windowed", 3),
                                  (HISTOGRAM, "histogram W1 (lower is better)", 4)):  # fmt: skip
        cells = [f"{np.mean([s[k][metric] for _, _, s in runs]):.{digits}f}" for k in keys]
        lines.append(f"| mean {label} | | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="an ablation.py output's real/ folder")
    parser.add_argument("--config", default="default", help="which configuration's runs (default: default)")
    parser.add_argument("--weights", type=float, nargs="+", default=list(WEIGHTS))
    parser.add_argument("--tag", default="correction_weight")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON and Markdown")
    args = parser.parse_args()
    torch.manual_seed(0)
    weights = tuple(args.weights)
    results = {"runs": str(args.runs), "config": args.config, "weights": list(weights), "folds": {}}
    for held_out, run, fold in finished_runs(args.runs, [args.config]):
        scores = score_run(run, SliceCache(fold), weights)
        results["folds"].setdefault(held_out, {})[run.name] = scores
        best = max(weights, key=lambda w: scores[f"{w:g}"]["psnr_mask"])
        print(f"{held_out} {run.name}: w=1 {scores['1']['psnr_mask']:.2f} dB, "
              f"best w={best:g} {scores[f'{best:g}']['psnr_mask']:.2f} dB", flush=True)  # fmt: skip
    if not results["folds"]:
        raise SystemExit(f"{args.runs}: no finished runs of {args.config!r}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(results, indent=2))
    table = markdown(results, weights)
    (args.out / f"{args.tag}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
