"""Equal-budget ablation: which generator / discriminator / loss is best for T1 -> T2?

Every configuration trains for the same wall-clock budget (``train --time-budget``) and is
tested on held-out subjects:

* real data (``../shared/data/real-mri``, three patients): three folds, each holding out one
  patient and training on the other two; results are mean +- std over the held-out patients;
* the built-in simulated data: its own subject-level split.

Each fold's runs are put side by side with ``mri2mri compare``; the summary table goes to
``benchmarks/results/ablation.md`` and ``ablation.json``.

    python benchmarks/ablation.py --budget 120                 # what the README reports
    python benchmarks/ablation.py --budget 5 --quick           # a smoke test of the script
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

from _common import RESULTS

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "real-mri"

# name -> extra `mri2mri train` arguments. The first three are the references: the report's two experiments and pix2pix.
CONFIGS: dict[str, list[str]] = {
    "report-basic": ["--generator", "basic", "--base-channels", "64", "--discriminator", "basic", "--gan-loss", "bce"],
    "report-unet": ["--generator", "unet", "--base-channels", "64", "--discriminator", "basic", "--gan-loss", "bce"],
    "pix2pix": ["--generator", "unet256", "--base-channels", "64", "--discriminator", "patch70", "--gan-loss", "bce"],
    "unet-lsgan": ["--generator", "unet", "--base-channels", "64", "--discriminator", "basic", "--gan-loss", "lsgan"],
    "unet32-patch70-lsgan": ["--generator", "unet", "--base-channels", "32", "--discriminator", "patch70",
                             "--gan-loss", "lsgan"],  # fmt: skip
}


def mri2mri(*args: str, log: list[str]) -> None:
    command = [sys.executable, "-m", "mri2mri", *args]
    log.append(shlex.join(["mri2mri", *args]))
    print("$", log[-1], flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def run_config(name: str, cache: Path, out: Path, args: argparse.Namespace, log: list[str]) -> Path:
    run = out / name
    if not (run / "metrics.json").is_file():
        if run.exists():
            import shutil

            shutil.rmtree(run)
        mri2mri("train", str(cache), "--out", str(run), "--run-name", name, "--epochs", "100000",
                "--time-budget", str(args.budget), "--batch-size", str(args.batch_size),
                "--seed", "0", "--quiet", *CONFIGS[name], log=log)  # fmt: skip
        mri2mri("test", str(run), str(cache), "--quiet", log=log)
    return run


def fold_metrics(run: Path) -> dict[str, float]:
    metrics = json.loads((run / "metrics.json").read_text())
    summary = json.loads((run / "run_summary.json").read_text())
    pooled = metrics["pooled"]
    out = {
        "psnr_mask": pooled["model"]["psnr_mask"]["mean"],
        "ssim_mask": pooled["model"]["ssim_mask"]["mean"],
        "mae_mask": pooled["model"]["mae_mask"]["mean"],
        "psnr": pooled["model"]["psnr"]["mean"],
        "intensity_map_psnr_mask": pooled["intensity-map"]["psnr_mask"]["mean"],
        "intensity_map_ssim_mask": pooled["intensity-map"]["ssim_mask"]["mean"],
        "parameters_G": summary["parameters_G"],
        "images_per_s": summary["images_per_s"],
        "steps": summary["steps"],
    }
    if "volume_psnr" in metrics and "model" in metrics["volume_psnr"]:
        out["volume_psnr"] = metrics["volume_psnr"]["model"]["mean"]
    return out


def summarise(per_fold: dict[str, list[dict[str, float]]]) -> list[dict[str, object]]:
    rows = []
    for name, folds in per_fold.items():
        row: dict[str, object] = {"config": name, "args": " ".join(CONFIGS[name]), "folds": len(folds)}
        for key in folds[0]:
            values = [f[key] for f in folds if f.get(key) is not None]
            row[key] = statistics.fmean(values)
            row[key + "_std"] = statistics.pstdev(values) if len(values) > 1 else 0.0
        rows.append(row)
    return rows


def markdown(rows: list[dict[str, object]], title: str, spread: str) -> str:
    lines = [
        f"**{title}** (masked metrics: prediction and target inside the brain mask; {spread})",
        "",
        "| configuration | PSNR brain (dB) | SSIM brain | MAE brain | parameters G | images/s | steps |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in sorted(rows, key=lambda r: -float(r["psnr_mask"])):
        lines.append(
            f"| {row['config']} | {row['psnr_mask']:.2f} +- {row['psnr_mask_std']:.2f} | "
            f"{row['ssim_mask']:.3f} +- {row['ssim_mask_std']:.3f} | {row['mae_mask']:.4f} | "
            f"{int(row['parameters_G']):,} | {row['images_per_s']:.1f} | {row['steps']:.0f} |"
        )
    base = rows[0]
    lines.append(
        f"| intensity-map baseline | {base['intensity_map_psnr_mask']:.2f} +- "
        f"{base['intensity_map_psnr_mask_std']:.2f} | {base['intensity_map_ssim_mask']:.3f} | | | | |"
    )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=120.0, help="training seconds per run")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "ablation")
    parser.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    parser.add_argument("--real", type=Path, default=REAL_DATA)
    parser.add_argument("--skip-builtin", action="store_true")
    parser.add_argument("--quick", action="store_true", help="tiny phantom only, for a smoke test")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.path.insert(0, str(ROOT / "src"))
    from mri2mri.data.cache import SliceCache, resplit

    started = time.time()
    log: list[str] = []
    report: dict[str, object] = {"budget_s": args.budget, "image_size": args.image_size, "datasets": {}}
    tables = []

    datasets: list[tuple[str, list[tuple[str, Path]]]] = []
    if args.real.is_dir() and not args.quick:
        full = args.out / "real" / "cache"
        if not (full / "cache.json").is_file():
            mri2mri("prepare", str(args.real), "--out", str(full), "--image-size", str(args.image_size),
                    "--quiet", log=log)  # fmt: skip
        subjects = [r.subject for r in SliceCache(full).subjects]
        folds = []
        for held_out in subjects:
            assignment = {s: ("test" if s == held_out else "train") for s in subjects}
            folds.append((held_out, resplit(full, assignment, args.out / "real" / f"fold-{held_out}")))
        datasets.append(("real", folds))
    if not args.skip_builtin:
        phantom = args.out / "builtin" / "phantom"
        if not (phantom / "sub-01").is_dir():
            mri2mri("phantom", "--out", str(phantom), "--subjects", "4" if args.quick else "10", log=log)
        cache = args.out / "builtin" / "cache"
        if not (cache / "cache.json").is_file():
            size = "32" if args.quick else str(args.image_size)
            mri2mri("prepare", str(phantom), "--out", str(cache), "--image-size", size, "--quiet", log=log)
        datasets.append(("builtin", [("split", cache)]))

    configs = [c for c in args.configs if not (args.quick and c == "pix2pix")]
    for dataset, folds in datasets:
        per_fold: dict[str, list[dict[str, float]]] = {name: [] for name in configs}
        for fold_name, cache in folds:
            runs = [run_config(name, cache, cache.parent / f"runs-{fold_name}", args, log) for name in configs]
            for name, run in zip(configs, runs, strict=True):
                per_fold[name].append(fold_metrics(run))
            mri2mri("compare", *map(str, runs), "--out", str(cache.parent / f"compare-{fold_name}"), log=log)
        rows = summarise(per_fold)
        title = (f"Real data: 3 patients, one held out per fold, {args.budget:.0f} s of training each"
                 if dataset == "real" else f"Built-in simulated data, {args.budget:.0f} s of training each")  # fmt: skip
        spread = ("mean +- std over the held-out patients" if dataset == "real"
                  else "one split, mean over its held-out subjects' slices")  # fmt: skip
        tables.append(markdown(rows, title, spread))
        report["datasets"][dataset] = {"rows": rows, "folds": [f for f, _ in folds]}

    report["commands"] = log
    report["wall_seconds"] = round(time.time() - started, 1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    suffix = "_quick" if args.quick else ""
    (RESULTS / f"ablation{suffix}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = "\n\n".join(tables)
    (RESULTS / f"ablation{suffix}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
