"""Does the product need more patients, more steps or more capacity? Two learning curves.

On folds of ``benchmarks/folds_by_site.json`` (each fold's test patients from a site none of its
training patients come from), the default configuration is trained

* on 3, 9 and all of the fold's training patients, for the same number of steps (``--steps``),
* on all of them, for each number of steps of ``--budget-steps``,

and scored by ``mri2mri test`` beside the ``intensity-map`` table fitted on the *same* training
patients, with both scorings (unit scale and windowed) and the histogram distance. The subsets are
drawn once per fold with a fixed seed, each containing the smaller ones, so a curve adds patients
rather than swapping them. Writes ``benchmarks/results/<tag>.json`` and ``.md``;
``benchmarks/quality_figures.py curves`` draws them.

    python benchmarks/curves.py --folds brats2013 tcia01 --steps 10000 --budget-steps 10000 30000
    python benchmarks/curves.py --jobs 8 --device cuda ...   # a GPU machine: runs side by side
    python benchmarks/curves.py --finished-only               # tables of the runs finished so far
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import RESULTS
from ablation import FOLDS_FILE, REAL_DATA, ROOT, fold_scores, mri2mri, run_config, site_folds

SCORES = ("psnr_mask", "ssim_mask", "psnr_mask_window", "ssim_mask_window", "histogram_w1")


def subset_folds(full: Path, root: Path, fold: str, counts: list[int]) -> dict[int, Path]:
    """Patient count -> a split of ``full`` with the fold's test patients and that many training
    patients (0: all); nested subsets drawn with a fixed seed."""
    from mri2mri.data.cache import SliceCache, resplit

    held_out = site_folds()[fold]
    others = sorted(r.subject for r in SliceCache(full).subjects if r.subject not in held_out)
    random.Random(0).shuffle(others)
    folds = {}
    for count in counts:
        chosen = others if count == 0 else others[:count]
        target = root / f"fold-{fold}-n{count or len(others)}"
        if not (target / "cache.json").is_file():
            resplit(full, {**{s: "test" for s in held_out}, **{s: "train" for s in chosen}}, target)
        folds[count or len(others)] = target
    return folds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--folds", nargs="+", default=["brats2013", "tcia01"], choices=list(site_folds()))
    parser.add_argument("--patients", type=int, nargs="+", default=[3, 9, 0], help="training patients (0: all)")
    parser.add_argument("--steps", type=int, default=10000, help="steps of the patient curve")
    parser.add_argument("--budget-steps", type=int, nargs="+", default=[10000, 30000], help="the budget curve")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--real", type=Path, default=REAL_DATA)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "curves")
    parser.add_argument("--jobs", type=int, default=1, help="runs trained at once (a GPU machine)")
    parser.add_argument("--device", default=None)
    parser.add_argument("--finished-only", action="store_true", help="summarise finished runs, train nothing")
    parser.add_argument("--tag", default="curves")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.path.insert(0, str(ROOT / "src"))
    started, log = time.time(), []

    full = args.out / "cache"
    if not (full / "cache.json").is_file():
        mri2mri("prepare", str(args.real), "--out", str(full), "--image-size", str(args.image_size), "--quiet", log=log)
    tasks = []  # (fold, patients, steps, seed, cache)
    for fold in args.folds:
        subsets = subset_folds(full, args.out, fold, sorted(set(args.patients)))
        everyone = max(subsets)
        points = {(n, args.steps) for n in subsets} | {(everyone, s) for s in args.budget_steps}
        tasks += [(fold, n, s, seed, subsets[n]) for seed in args.seeds for n, s in sorted(points)]

    def one(task):  # the default, trained as ablation.py trains it (whole epochs nearest to the steps)
        fold, patients, steps, seed, cache = task
        runs = args.out / f"runs-{fold}" / f"n{patients}-steps{steps}"
        return run_config("default", seed, cache, runs, ["--steps", str(steps)], args, log)

    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        runs = list(pool.map(one, tasks))
    rows = []
    for (fold, patients, steps, seed, _), run in zip(tasks, runs, strict=True):
        if run is None:
            continue
        scores = fold_scores(run)
        rows.append({"fold": fold, "patients": patients, "steps": steps, "seed": seed, "run": str(run),
                     **{m: scores["model"][m] for m in SCORES},
                     **{f"table_{m}": scores["intensity-map"][m] for m in SCORES}})  # fmt: skip
    lines = [f"Learning curves (default configuration, {args.image_size} px, batch {args.batch_size}; folds by site, "
             f"{FOLDS_FILE.name}; the table fitted on the same training patients)", "",
             "| fold | training patients | steps | seed | PSNR | table PSNR | PSNR win. | table PSNR win. | SSIM "
             "| table SSIM | W1 | table W1 |", "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        lines.append(f"| {r['fold']} | {r['patients']} | {r['steps']} | {r['seed']} | {r['psnr_mask']:.2f} | "
                     f"{r['table_psnr_mask']:.2f} | {r['psnr_mask_window']:.2f} | {r['table_psnr_mask_window']:.2f} | "
                     f"{r['ssim_mask']:.3f} | {r['table_ssim_mask']:.3f} | {r['histogram_w1']:.4f} | "
                     f"{r['table_histogram_w1']:.4f} |")  # fmt: skip
    report = {"image_size": args.image_size, "batch_size": args.batch_size, "folds": args.folds, "rows": rows,
              "commands": log, "wall_seconds": round(time.time() - started, 1)}  # fmt: skip
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / f"{args.tag}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
