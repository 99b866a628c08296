"""Does averaging test-time passes (``test --tta K``) improve the finished runs of a benchmark?

Re-scores every finished run of ``ablation.py``'s folds by site with ``mri2mri test --tta K``
for each K of ``--passes`` (K = 1, the plain prediction, is scored again so that every pair is
measured the same way), on the fold's held-out patients, and reports the pooled in-brain metrics
of each K, their change from K = 1 run by run (mean, spread, and on how many runs it rose), and
the seconds each K took. Nothing is trained. Writes ``<out>/<tag>.json`` and ``.md`` (``--out``:
``benchmarks/results``); the ``test`` outputs of each K go under ``--scratch``.

    python benchmarks/tta.py --runs "outputs/ssim600s1/real/source-T1,T1c,FLAIR" \\
        --configs t1-t1c-flair t1-t1c-flair-ssim --passes 1 2 8 --tag tta_multisource_600s_s1
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from _common import RESULTS, finished_runs

from mri2mri.inference import evaluate_run

METRICS = ("psnr_mask", "ssim_mask", "psnr_mask_window", "ssim_mask_window")
HISTOGRAM = "histogram_w1"


def score(run: Path, cache: Path, passes: int, scratch: Path) -> dict[str, float]:
    """The run's pooled in-brain metrics and histogram W1 with ``passes`` test-time passes,
    as ``mri2mri test RUN CACHE --tta passes`` reports them, and the seconds it took."""
    start = time.perf_counter()
    payload = evaluate_run(run, cache, out_dir=scratch, device="cpu", progress=False, tta_passes=passes)
    seconds = time.perf_counter() - start
    scores = {m: payload["pooled"]["model"][m]["mean"] for m in METRICS}
    return {**scores, HISTOGRAM: payload[HISTOGRAM]["model"]["mean"], "seconds": seconds}


def changes(results: list[dict], passes: int, metric: str) -> dict[str, float]:
    """Run by run, ``metric`` at ``passes`` minus at one pass: mean, spread, runs where it rose."""
    deltas = [r["scores"][str(passes)][metric] - r["scores"]["1"][metric] for r in results]
    rose = sum(d < 0 if metric == HISTOGRAM else d > 0 for d in deltas)  # W1: lower is closer
    return {"mean": statistics.fmean(deltas), "std": statistics.pstdev(deltas), "improved": rose, "runs": len(deltas)}


def markdown(payload: dict) -> str:
    passes, results = payload["passes"], payload["results"]
    lines = [f"**Test-time averaging, re-scored with `mri2mri test --tta K` on the held-out patients of "
             f"`{payload['runs']}` ({len(results)} runs); in-brain PSNR (dB) / SSIM, pooled over slices**",
             "", "| fold | run | " + " | ".join(f"K = {k}" for k in passes) + " |",
             "| --- | --- | " + " | ".join("---" for _ in passes) + " |"]  # fmt: skip
    for r in results:
        cells = [f"{r['scores'][str(k)]['psnr_mask']:.2f} / {r['scores'][str(k)]['ssim_mask']:.3f}" for k in passes]
        lines.append(f"| {r['fold']} | {r['run']} | " + " | ".join(cells) + " |")
    for metric, label, digits in (("psnr_mask", "PSNR (dB)", 2), ("ssim_mask", "SSIM", 3),
                                  ("psnr_mask_window", "PSNR windowed (dB)", 2),
                                  ("ssim_mask_window", "SSIM windowed", 3), (HISTOGRAM, "histogram W1", 4)):  # fmt: skip
        cells = []
        for k in passes:
            mean = statistics.fmean(r["scores"][str(k)][metric] for r in results)
            if k == 1:
                cells.append(f"{mean:.{digits}f}")
                continue
            c = payload["changes"][str(k)][metric]
            cells.append(f"{mean:.{digits}f} ({c['mean']:+.{digits}f} ± {c['std']:.{digits}f}, "
                         f"better in {c['improved']}/{c['runs']})")  # fmt: skip
        lines.append(f"| mean {label} | | " + " | ".join(cells) + " |")
    seconds = [statistics.fmean(r["scores"][str(k)]["seconds"] for r in results) for k in passes]
    lines.append("| seconds per `test` | | " + " | ".join(f"{s:.0f}" for s in seconds) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=Path, required=True, help="an ablation.py output's real/<source> folder")
    parser.add_argument("--configs", nargs="+", default=["default"], help="which configurations' runs")
    parser.add_argument("--passes", type=int, nargs="+", default=[1, 2, 8], help="the K to score (1 is added)")
    parser.add_argument("--tag", default="tta")
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder of the JSON and Markdown")
    parser.add_argument("--scratch", type=Path, default=Path("outputs") / "tta", help="the test outputs of each K")
    args = parser.parse_args()
    passes = sorted({1, *args.passes})
    runs = finished_runs(args.runs, args.configs)
    if not runs:
        raise SystemExit(f"{args.runs}: no finished runs of {', '.join(args.configs)}")
    results = []
    for fold, run, cache in runs:
        scores = {str(k): score(run, cache, k, args.scratch / args.tag / fold / run.name / f"k{k}") for k in passes}
        results.append({"fold": fold, "run": run.name, "scores": scores})
        print(f"{fold} {run.name}: " + ", ".join(f"K={k} {scores[str(k)]['psnr_mask']:.2f} dB / "
                                                   f"{scores[str(k)]['ssim_mask']:.3f}" for k in passes), flush=True)  # fmt: skip
    payload = {"runs": str(args.runs), "configs": args.configs, "passes": passes, "results": results,
               "changes": {str(k): {m: changes(results, k, m) for m in (*METRICS, HISTOGRAM)} for k in passes[1:]}}  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.tag}.json").write_text(json.dumps(payload, indent=2))
    table = markdown(payload)
    (args.out / f"{args.tag}.md").write_text(table)
    print(table)


if __name__ == "__main__":
    main()
