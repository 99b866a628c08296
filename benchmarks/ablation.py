"""Quality benchmark: which configuration makes the best synthetic T2 on patients it never saw?

Every configuration trains for the same wall-clock budget (``train --time-budget``, default
600 s: run it alone on the machine, since any other busy process slows training and the budget
then buys fewer steps) and is tested on held-out subjects, scored with the project's in-brain
metrics beside the ``intensity-map`` and ``identity`` baselines on the same slices:

* real data (``../shared/data/real-mri``, 27 patients): cross-validation by site, with the folds
  of ``benchmarks/folds_by_site.json`` (each fold's test patients come from a site none of its
  training patients come from, but for the two CBICA folds, which split one site and are also
  summarised apart); every baseline is fitted on the fold's training patients only; one row per
  fold and seed, and mean +- std over them;
* the built-in simulated data at the demo's budget (128 px, the demo's 30 epochs on a CPU with
  native bf16; 30 on every machine here, so runs compare): its own subject-level split.

At these budgets one training run moves a held-out patient's PSNR by up to 1.5 dB, so rank
configurations over several seeds (``--seeds 0 1``) as well as folds. ``--steps N`` trains a fixed
number of steps instead of a time budget: a screening mode whose ranking does not depend on how
busy the machine is (fair only between configurations whose steps cost the same).

Two scorings, both reported: the in-brain PSNR and SSIM on the documented unit scale, and after
each image (prediction, table, real T2) is windowed by its own 0.5-99.5th brain percentiles, as a
viewer does (``psnr_mask_window``, ``ssim_mask_window``); and ``histogram_w1``, the 1-Wasserstein
distance between the real and the synthetic brain-intensity distributions, which a washed-out
image cannot hide from. Per-fold rows and the summary go to ``benchmarks/results/quality.json``
and ``quality.md``.

    make bench-quality                                         # 600 s per run, seeds 0 and 1
    python benchmarks/ablation.py --budget 150 --configs default plain --seeds 0
    python benchmarks/ablation.py --steps 600 --configs default plain --skip-builtin
    python benchmarks/ablation.py --steps 800 --configs default t1-t1c --folds original  # one fold
    python benchmarks/ablation.py --budget 5 --quick           # a smoke test of the script
    python benchmarks/ablation.py --skip-builtin --finished-only  # tables of a benchmark stopped early
    python benchmarks/ablation.py --steps 10000 --jobs 12 --device cuda ...  # a GPU machine: runs side by side

``--jobs N`` trains N runs at once: on a GPU machine with many cores one small 128 px run keeps
the device mostly idle, so a dozen side by side finish a screen in the time of one. Keep 1 on a
small CPU, where parallel runs only share the cores (and ``--budget`` would buy each fewer steps).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import statistics
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from _common import RESULTS, machine

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "real-mri"
FOLDS_FILE = Path(__file__).resolve().parent / "folds_by_site.json"

# name -> `mri2mri train` arguments on top of the library's defaults. "default" is whatever
# `train` does without options; the presets are the report's two experiments and pix2pix's.
CONFIGS: dict[str, list[str]] = {
    "default": [],
    # The default before the residual generator and augmentation: U-Net/32, patch70, LSGAN.
    "plain": ["--residual", "none", "--no-augment"],
    "residual-only": ["--no-augment"],
    "pix2pix": ["--preset", "pix2pix"],
    "report-basic": ["--preset", "report-basic"],
    "report-unet": ["--preset", "report-unet"],
    # Levers on top of the default, each measured on its own.
    "ema": ["--ema", "0.999"],
    "ssim": ["--lambda-ssim", "20"],
    "batch4": ["--batch-size", "4"],
    "instance": ["--norm", "instance"],
    "unet64": ["--base-channels", "64"],
    "unet256-32": ["--generator", "unet256", "--base-channels", "32"],
    # Depth, not width: pix2pix's seven-level U-Net for 128 px (Isola et al. 2017; the reference
    # code's unet_128) against the report's four levels; 7x the parameters, half the steps in 600 s.
    "unet128": ["--generator", "unet128"],
    "adv-low": ["--lambda-l1", "1000"],  # adversarial weight 10x lower relative to L1
    "lr-high": ["--lr", "5e-4"],
    "ema-adv-low": ["--ema", "0.999", "--lambda-l1", "1000"],
    "adv-off": ["--lambda-l1", "100000"],  # practically a pure L1 regression
    # Squared error instead of L1 (same gradient as L1 at an error of 0.05); with EMA.
    "mse": ["--lambda-l1", "0", "--lambda-l2", "1000"],
    # A warm start from a run trained on the built-in data; make it first: `mri2mri phantom --out
    # outputs/pre/phantom`, `mri2mri prepare outputs/pre/phantom --out outputs/pre/cache
    # --image-size 128`, `mri2mri train outputs/pre/cache --out outputs/pre/run --epochs 4`.
    "phantom-init": ["--init-from", "outputs/pre/run"],
    # The same warm start inside a 600 s budget: 120 s on the built-in data at 256 px (`mri2mri
    # prepare outputs/pre/phantom --out outputs/pre/cache256 --image-size 256`, `mri2mri train
    # outputs/pre/cache256 --out outputs/pre/run256 --epochs 100 --time-budget 120`), then 480 s
    # on the real patients (the later --time-budget wins over --budget's 600).
    "phantom-init-600": ["--init-from", "outputs/pre/run256", "--time-budget", "480"],
    "mse-ema": ["--lambda-l1", "0", "--lambda-l2", "1000", "--ema", "0.999"],
    # Heavier source-only intensity randomisation than the default's (another scanner's contrast).
    "aug-strong": ["--augment-curve-probability", "0.9", "--augment-curve-strength", "0.9",
                   "--augment-gamma-probability", "0.5", "--augment-log-gamma", "0.4",
                   "--augment-bias-probability", "0.6", "--augment-bias-coefficients", "0.5"],
    "no-residual": ["--residual", "none"],
    # The residual model adding its whole correction at inference (the default before 0.5);
    # benchmarks/correction_weight.py scores finished runs at every weight without retraining.
    "whole-correction": ["--correction-weight", "1"],
    # The rate falls linearly to zero over the run (its steps, or its --budget): Li et al. 2020.
    "lr-linear": ["--lr-schedule", "linear"],
    # The adversarial term 3.3x stronger relative to L1 (sharpness and contrast are what the GAN
    # adds; pix2pix's 100 was tuned for photographs): Isola et al. 2017, section 4.2.
    "adv-high": ["--lambda-l1", "30"],
    # Hinge loss for D and G (Lim & Ye 2017; Miyato et al. 2018), the loss of SPADE and BigGAN.
    "hinge": ["--gan-loss", "hinge"],
    # Discriminator feature matching (Salimans et al. 2016; pix2pixHD, Wang et al. 2018).
    "fm": ["--lambda-fm", "10"],
    # An exponential moving average of G's weights, the one used at test time (Karras et al. 2018).
    "ema-adv-high": ["--ema", "0.999", "--lambda-l1", "30"],
    # No dropout in the generator's decoder. pix2pix keeps dropout 0.5 as its only noise source
    # (Isola et al. 2017, section 2.1: it left the output barely stochastic); in this small U-Net it drops
    # half of the deepest decoder features, and the curves say capacity, not data, is the limit.
    "no-dropout": ["--dropout", "0"],
}
# Configurations that need their own prepared slices: `mri2mri prepare` arguments.
PREPARE: dict[str, list[str]] = {"context1": ["--context-slices", "1"]}
CONFIGS["context1"] = []  # 2.5D input: one neighbouring slice on each side
# Several source contrasts stacked as input channels (and FLAIR alone), each with its own cache.
PREPARE["t1-t1c"] = ["--source", "T1,T1c"]
CONFIGS["t1-t1c"] = ["--source", "T1,T1c"]
PREPARE["t1-t1c-flair"] = ["--source", "T1,T1c,FLAIR"]
CONFIGS["t1-t1c-flair"] = ["--source", "T1,T1c,FLAIR"]
# The three sources with an SSIM term weighted as the L1 term (Zhao et al. 2017: a loss led by
# SSIM beat L1 alone for image restoration), the lever aimed at the in-brain SSIM; same slices.
PREPARE["t1-t1c-flair-ssim"] = PREPARE["t1-t1c-flair"]
CONFIGS["t1-t1c-flair-ssim"] = [*CONFIGS["t1-t1c-flair"], "--lambda-ssim", "100"]
# The three sources with a lever first measured on T1, each on the three sources' slices:
# "hinge", the adversarial loss the SSIM bar of several sources had left untried; "adv-low", the
# other direction from "adv-high", which cost the T1 model SSIM at 600 s; "no-dropout";
# "no-augment" ("residual-only" for T1), whether the augmentation chosen on three patients still
# pays for its steps with 27 patients from several sites, and "aug-strong", the other direction:
# more of the source-only intensity changes that stand for another scanner; and "batch4", whether
# the small batch chosen on three patients is still right for 27 (more slices per step, fewer steps);
# "unet128", capacity that a CPU can afford: three more U-Net levels on maps of 4 x 4 and smaller;
# "lr-high", a 2.5x larger step size for a budget of a few thousand steps on a CPU; "unet64", width
# (4x the parameters), which gets a third of the steps on a 2-core CPU: a lever for a GPU machine
# (`--steps N --jobs 12 --device cuda`), where the steps, not the seconds, are the budget.
for _suffix, _lever in (("hinge", "hinge"), ("adv-low", "adv-low"), ("no-dropout", "no-dropout"),
                        ("no-augment", "residual-only"), ("aug-strong", "aug-strong"),
                        ("batch4", "batch4"), ("unet128", "unet128"), ("lr-high", "lr-high"),
                        ("unet64", "unet64")):  # fmt: skip
    PREPARE[f"t1-t1c-flair-{_suffix}"] = PREPARE["t1-t1c-flair"]
    CONFIGS[f"t1-t1c-flair-{_suffix}"] = [*CONFIGS["t1-t1c-flair"], *CONFIGS[_lever]]
# The three sources with 2.5D input (one neighbouring slice each side of each source: 9 channels),
# untried on the 27 patients; it was flat on T1 on the first three (README, the 800-step screen).
PREPARE["t1-t1c-flair-context1"] = [*PREPARE["t1-t1c-flair"], *PREPARE["context1"]]
CONFIGS["t1-t1c-flair-context1"] = CONFIGS["t1-t1c-flair"]
PREPARE["flair"] = ["--source", "FLAIR"]
CONFIGS["flair"] = ["--source", "FLAIR"]
# The default before N4 bias correction of the source became part of the preparation.
PREPARE["no-n4"] = ["--bias-correction", "none"]
CONFIGS["no-n4"] = []
METRICS = ("psnr_mask", "ssim_mask", "mae_mask", "psnr_mask_window", "ssim_mask_window", "volume_psnr",
           "histogram_w1")
GAINS = ("psnr_mask", "ssim_mask", "psnr_mask_window", "ssim_mask_window")  # model minus table, per run
BASELINES = ("intensity-map", "identity", "linear-regression")  # the last only for several sources


def is_baseline(method: str) -> bool:
    return method.split(" ")[0] in BASELINES


def baseline_label(name: str, baseline: str) -> str:
    """A baseline depends on the sources (intensity-map reads the first, linear-regression all):
    a configuration of other sources names its own, e.g. ``intensity-map (FLAIR)``."""
    prepare = PREPARE.get(name, [])
    notes = []
    if "--source" in prepare:
        notes.append(prepare[prepare.index("--source") + 1])
    if "--bias-correction" in prepare and prepare[prepare.index("--bias-correction") + 1] == "none":
        notes.append("no N4")
    return f"{baseline} ({', '.join(notes)})" if notes else baseline
DEMO_IMAGE_SIZE, DEMO_EPOCHS = 128, 30  # `mri2mri demo` on a CPU with native bf16 (15 in fp32)


def mri2mri(*args: str, log: list[str]) -> None:
    command = [sys.executable, "-m", "mri2mri", *args]
    log.append(shlex.join(["mri2mri", *args]))
    print("$", log[-1], flush=True)
    subprocess.run(command, check=True, cwd=ROOT)


def run_config(name: str, seed: int, cache: Path, runs: Path, schedule: list[str], args: argparse.Namespace,
               log: list[str]) -> Path | None:  # fmt: skip
    """Train and test one configuration on one fold (reusing a finished run of the same name);
    None for a run not finished yet when only finished runs are wanted."""
    run = runs / f"{name}-s{seed}"
    if schedule and schedule[0] == "--steps":  # whole epochs nearest to that many steps on this fold
        from mri2mri.data.cache import SliceCache

        per_epoch = max(len(SliceCache(cache).rows("train")) // args.batch_size, 1)
        schedule = ["--epochs", str(max(round(int(schedule[1]) / per_epoch), 1))]
    if not (run / "metrics.json").is_file() and args.finished_only:
        return None
    if not (run / "metrics.json").is_file():
        if run.exists():
            shutil.rmtree(run)
        device = ["--device", args.device] if args.device else []
        mri2mri("train", str(cache), "--out", str(run), "--run-name", name, *schedule,
                "--batch-size", str(args.batch_size), "--seed", str(seed), "--quiet", *device, *CONFIGS[name],
                log=log)  # fmt: skip
        mri2mri("test", str(run), str(cache), "--quiet", *device, log=log)
    return run


def fold_scores(run: Path) -> dict[str, dict[str, float]]:
    """Pooled in-brain metrics of the model and of each baseline on the run's test slices."""
    metrics = json.loads((run / "metrics.json").read_text())
    summary = json.loads((run / "run_summary.json").read_text())
    config = json.loads((run / "config.json").read_text())
    scores = {}
    for method in ("model", *(b for b in BASELINES if b in metrics["pooled"])):
        scores[method] = {m: metrics["pooled"][method][m]["mean"] for m in METRICS if m in metrics["pooled"][method]}
        for volume_metric in ("volume_psnr", "histogram_w1"):  # per subject, then averaged
            if method in metrics.get(volume_metric, {}):
                scores[method][volume_metric] = metrics[volume_metric][method]["mean"]
    # What a wall-clock budget bought depends on the machine: keep the steps and the precision.
    scores["model"].update(steps=summary["steps"], images_per_s=summary["images_per_s"],
                           parameters_G=summary["parameters_G"], train_seconds=summary["train_seconds"],
                           precision=summary.get("precision"),
                           correction_weight=config["model"].get("correction_weight"))  # fmt: skip
    return scores


def mean_std(values: list[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "std": statistics.pstdev(values) if len(values) > 1 else 0.0}


def summarise(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Mean +- std of every metric per configuration (over folds and seeds), baselines last, and
    how often the configuration beat the intensity-map baseline on a fold."""
    by_method: dict[str, list[dict[str, object]]] = {}
    for row in rows:
        by_method.setdefault(str(row["method"]), []).append(row)
    summary = []
    for method, group in by_method.items():
        entry: dict[str, object] = {"method": method, "runs": len(group)}
        for key in (*METRICS, "steps", "images_per_s", "parameters_G"):
            values = [float(r[key]) for r in group if r.get(key) is not None]
            if values:
                entry[key] = mean_std(values)
        if not is_baseline(method):
            entry["wins_over_intensity_map"] = sum(1 for r in group if r["gain_psnr_mask"] > 0)
            for metric in GAINS:
                entry[f"gain_{metric}"] = mean_std([float(r[f"gain_{metric}"]) for r in group])
        summary.append(entry)
    return sorted(summary, key=lambda e: (is_baseline(e["method"]), -e["psnr_mask"]["mean"]))


def markdown(summary: list[dict[str, object]], rows: list[dict[str, object]], title: str) -> str:
    def cell(entry, key, digits):
        value = entry.get(key)
        if not value:
            return ""
        return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"

    lines = [
        f"**{title}**",
        "",
        "| method | runs | PSNR brain (dB) | SSIM brain | PSNR windowed (dB) | SSIM windowed | histogram W1 "
        "| MAE brain | Δ PSNR vs table (dB) | Δ SSIM vs table | Δ PSNR windowed | Δ SSIM windowed | beats table "
        "| steps |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for e in summary:
        baseline = is_baseline(e["method"])
        gains = ["" if baseline else cell(e, f"gain_{m}", 3 if "ssim" in m else 2) for m in GAINS]
        lines.append(
            f"| {e['method']}{' (baseline)' if baseline else ''} | {e['runs']} | {cell(e, 'psnr_mask', 2)} | "
            f"{cell(e, 'ssim_mask', 3)} | {cell(e, 'psnr_mask_window', 2)} | {cell(e, 'ssim_mask_window', 3)} | "
            f"{cell(e, 'histogram_w1', 4)} | {cell(e, 'mae_mask', 4)} | {' | '.join(gains)} | "
            f"{'' if baseline else str(e['wins_over_intensity_map']) + '/' + str(e['runs'])} | "
            f"{'' if baseline else format(e['steps']['mean'], '.0f')} |"
        )
    lines += ["", "Per fold and seed (in-brain PSNR dB / SSIM, unit scale and windowed; histogram W1; the "
              "table's on the same slices):", "",
              "| fold | method | seed | PSNR | SSIM | PSNR win. | SSIM win. | W1 | table PSNR | table SSIM "
              "| table PSNR win. | table SSIM win. | table W1 | steps |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for r in rows:
        if is_baseline(r["method"]):
            continue
        lines.append(f"| {r['fold']} | {r['method']} | {r['seed']} | {r['psnr_mask']:.2f} | {r['ssim_mask']:.3f} | "
                     f"{r['psnr_mask_window']:.2f} | {r['ssim_mask_window']:.3f} | {r['histogram_w1']:.4f} | "
                     f"{r['table_psnr_mask']:.2f} | {r['table_ssim_mask']:.3f} | {r['table_psnr_mask_window']:.2f} | "
                     f"{r['table_ssim_mask_window']:.3f} | {r['table_histogram_w1']:.4f} | {r['steps']} |")  # fmt: skip
    return "\n".join(lines)


def evaluate_dataset(folds: list[tuple[str, Path]], configs: list[str], seeds: list[int], schedule: list[str],
                     args: argparse.Namespace, log: list[str]) -> list[dict[str, object]]:  # fmt: skip
    """One row per (fold, configuration, seed), and one per (fold, baseline) for each fold.

    ``--jobs N`` trains N runs at once (a GPU machine with many cores, where one small run leaves
    most of the device idle); on a 2-core CPU keep one, since runs in parallel only share it."""
    rows: list[dict[str, object]] = []
    baselines_done: set[str] = set()
    # Configuration by configuration, each over every fold: a run cut short still ranks whole rows.
    tasks = [(seed, name, fold, cache) for seed in seeds for name in configs for fold, cache in folds]

    def one(task: tuple[int, str, str, Path]) -> Path | None:
        seed, name, fold, cache = task
        return run_config(name, seed, cache, cache.parent / f"runs-{fold}", schedule, args, log)

    with ThreadPoolExecutor(max_workers=max(args.jobs, 1)) as pool:
        finished = list(pool.map(one, tasks))
    for (seed, name, fold, _), run in zip(tasks, finished, strict=True):
        if run is None:
            continue
        scores = fold_scores(run)
        table = scores["intensity-map"]
        rows.append({"fold": fold, "method": name, "seed": seed, "run": str(run), **scores["model"],
                     **{f"table_{m}": table[m] for m in (*GAINS, "histogram_w1")},
                     **{f"gain_{m}": scores["model"][m] - table[m] for m in GAINS}})  # fmt: skip
        if fold not in baselines_done:  # the same test slices for every run of the fold
            rows += [{"fold": fold, "method": baseline_label(name, b), "seed": None, **scores[b]}
                     for b in BASELINES if b in scores]
            baselines_done.add(fold)
    return rows


def _one_baseline_row_per_fold(rows: list[dict[str, object]]) -> list[dict[str, object]]:
    """Configurations on other prepared slices score the baselines again on the same patients:
    keep the first (the shared cache's) of each."""
    seen: set[tuple[object, object]] = set()
    kept = []
    for row in rows:
        if is_baseline(str(row["method"])):
            if (row["fold"], row["method"]) in seen:
                continue
            seen.add((row["fold"], row["method"]))
        kept.append(row)
    return kept


def site_folds(path: Path = FOLDS_FILE) -> dict[str, list[str]]:
    """Fold name -> its test patients (benchmarks/folds_by_site.json)."""
    return json.loads(path.read_text(encoding="utf-8"))["folds"]


def real_folds(args: argparse.Namespace, log: list[str], prepare_args: list[str] = ()) -> list[tuple[str, Path]]:
    """The by-site folds of the real patients, each a split of one prepared cache: the fold's
    patients are its test set, every other patient trains."""
    from mri2mri.data.cache import SliceCache, resplit

    variant = "-".join(a.lstrip("-") for a in prepare_args)
    root = args.out / "real" / variant if variant else args.out / "real"
    full = root / "cache"
    if not (full / "cache.json").is_file():
        mri2mri("prepare", str(args.real), "--out", str(full), "--image-size", str(args.image_size),
                *prepare_args, "--quiet", log=log)  # fmt: skip
    subjects = [r.subject for r in SliceCache(full).subjects]
    folds = []
    for fold, held_out in site_folds().items():
        if args.folds and fold not in args.folds:
            continue
        missing = sorted(set(held_out) - set(subjects))
        if missing:
            raise SystemExit(f"{full}: fold {fold} needs {', '.join(missing)}, which the cache lacks")
        assignment = {s: ("test" if s in held_out else "train") for s in subjects}
        target = root / f"fold-{fold}"
        folds.append((fold, target if (target / "cache.json").is_file() else resplit(full, assignment, target)))
    return folds


def builtin_split(args: argparse.Namespace, log: list[str]) -> list[tuple[str, Path]]:
    phantom = args.out / "builtin" / "phantom"
    if not (phantom / "sub-01").is_dir():
        mri2mri("phantom", "--out", str(phantom), "--subjects", "4" if args.quick else "10", log=log)
    cache = args.out / "builtin" / "cache"
    if not (cache / "cache.json").is_file():
        size = "32" if args.quick else str(DEMO_IMAGE_SIZE)
        mri2mri("prepare", str(phantom), "--out", str(cache), "--image-size", size, "--quiet", log=log)
    return [("split", cache)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--budget", type=float, default=600.0, help="training seconds per run on the real data")
    parser.add_argument("--steps", type=int, default=None, help="train this many steps instead of --budget")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=2)
    parser.add_argument("--out", type=Path, default=ROOT / "outputs" / "quality")
    parser.add_argument("--configs", nargs="+", default=["default", "pix2pix"], choices=list(CONFIGS))
    parser.add_argument("--real", type=Path, default=REAL_DATA)
    parser.add_argument("--folds", nargs="+", default=None, metavar="FOLD", choices=list(site_folds()),
                        help="only these folds of benchmarks/folds_by_site.json (a quicker screen; the "
                             "default runs every fold)")  # fmt: skip
    parser.add_argument("--jobs", type=int, default=1,
                        help="runs trained at once (a GPU machine; keep 1 on a small CPU)")
    parser.add_argument("--device", default=None, help="train and test on this device (default: train's)")
    parser.add_argument("--skip-builtin", action="store_true")
    parser.add_argument("--skip-real", action="store_true")
    parser.add_argument("--finished-only", action="store_true",
                        help="summarise the runs already finished in --out and train nothing (a benchmark "
                             "stopped early; run it again without this to finish it)")  # fmt: skip
    parser.add_argument("--tag", default="quality", help="name of the result files in benchmarks/results/")
    parser.add_argument("--quick", action="store_true", help="tiny phantom only, for a smoke test")
    args = parser.parse_args()
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.path.insert(0, str(ROOT / "src"))

    started = time.time()
    log: list[str] = []
    if args.steps:
        schedule, budget_text = ["--steps", str(args.steps)], f"about {args.steps} steps (whole epochs)"
    else:
        schedule, budget_text = ["--epochs", "100000", "--time-budget", str(args.budget)], f"{args.budget:.0f} s"
    if args.finished_only:
        budget_text += " (the runs finished so far)"
    report: dict[str, object] = {"budget_s": None if args.steps else args.budget, "steps": args.steps,
                                 "seeds": args.seeds, "image_size": args.image_size, "batch_size": args.batch_size,
                                 "configs": {n: CONFIGS[n] for n in args.configs}, "datasets": {}}  # fmt: skip
    tables = []
    configs = [c for c in args.configs if not (args.quick and c == "pix2pix")]
    prepared = (args.out / "real" / "cache" / "cache.json").is_file()  # a machine without the volumes
    if (args.real.is_dir() or prepared) and not (args.quick or args.skip_real):
        rows = []
        variants: dict[tuple[str, ...], list[str]] = {}  # each configuration on the folds prepared for it
        for name in configs:
            variants.setdefault(tuple(PREPARE.get(name, [])), []).append(name)
        for prepare_args, names in variants.items():
            rows += evaluate_dataset(real_folds(args, log, list(prepare_args)), names, args.seeds, schedule, args, log)
        rows = _one_baseline_row_per_fold(rows)
        summary = summarise(rows)
        setting = (f"{args.image_size} px, {budget_text} of training per run, seeds {', '.join(map(str, args.seeds))}; "
                   "mean ± std over folds and seeds")
        shared = set(json.loads(FOLDS_FILE.read_text(encoding="utf-8"))["shared_site"])
        tables.append(markdown(summary, rows, f"Real data: 27 patients, folds by site ({FOLDS_FILE.name}), {setting}"))
        report["datasets"]["real"] = {"rows": rows, "summary": summary}
        for label, keep in (("other sites only (folds without CBICA)", lambda f: f not in shared),
                            ("the two CBICA folds (one site split in two)", lambda f: f in shared)):  # fmt: skip
            part = [r for r in rows if keep(r["fold"])]
            if part:
                tables.append(markdown(summarise(part), part, f"Real data, {label}: {setting}"))
    if not args.skip_builtin:
        epochs = 2 if args.quick else DEMO_EPOCHS
        demo = ["--epochs", str(epochs)]
        rows = evaluate_dataset(builtin_split(args, log), configs, args.seeds[:1], demo, args, log)
        summary = summarise(rows)
        tables.append(markdown(summary, rows, f"Built-in simulated data at the demo's budget ({DEMO_IMAGE_SIZE} px, "
                                              f"{epochs} epochs), seed {args.seeds[0]}; one split, 2 held-out "
                                              f"subjects"))  # fmt: skip
        report["datasets"]["builtin"] = {"rows": rows, "summary": summary}

    report["commands"] = log
    import torch

    report["machine"] = where = machine(torch.device(args.device or "cpu"))  # the one that wrote this file
    precisions = sorted({str(r["precision"]) for d in report["datasets"].values() for r in d["rows"] if r.get("precision")})
    tables.append(f"Machine: {where['device_name']} ({where['device']}, {where['cpu_count']} cores, torch "
                  f"{where['torch']}); training precision {', '.join(precisions) or 'unrecorded'}.")  # fmt: skip
    report["wall_seconds"] = round(time.time() - started, 1)
    report["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)
    RESULTS.mkdir(parents=True, exist_ok=True)
    tag = args.tag + ("_quick" if args.quick else "")
    (RESULTS / f"{tag}.json").write_text(json.dumps(report, indent=2) + "\n")
    text = "\n\n".join(tables)
    (RESULTS / f"{tag}.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
