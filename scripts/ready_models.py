"""Build the ready-made models that ship inside the package (``src/mri2mri/weights``).

Each model is a recipe that the cross-validation by site chose (``benchmarks/ablation.py`` on
the folds of ``benchmarks/folds_by_site.json``), trained on all 27 patients of
``../shared/data/real-mri`` with a fixed seed, then packaged: its generator's weights in half
precision (what storing them so costs is measured and recorded), the manifest entry with the
file's SHA-256 and the recipe's cross-validated scores, and its model card.

    python scripts/ready_models.py train t1-to-t2      # prepare (128 px) and train: ~12 min on 2 CPU cores
    python scripts/ready_models.py package t1-to-t2    # weights, manifest entry, model card
    python scripts/ready_models.py train brasyn-t2
    python scripts/ready_models.py package brasyn-t2

    python scripts/ready_models.py card t1-to-t2       # the scores and card again, weights untouched

``package`` and ``card`` read the scores from ``benchmarks/results`` (the JSON that the
cross-validation commands of each recipe, listed below, write) and refuse when they are missing.
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

REAL = ROOT.parent / "shared" / "data" / "real-mri"
WORK = ROOT / "outputs" / "ready"
RESULTS = ROOT / "benchmarks" / "results"
FOLDS = ROOT / "benchmarks" / "folds_by_site.json"
IMAGE_SIZE = 128
EPOCHS = 6  # ~9,700 steps at batch 2 over the 27 patients' slices
SEED = 0

# name -> the recipe: its sources and target, its training options on top of train's defaults,
# the correction weight it ships with, and the cross-validation that scored it.
RECIPES: dict[str, dict[str, Any]] = {
    "t1-to-t2": {
        "sources": ["T1"], "target": "T2", "train": [],
        "correction_weight": 0.75,
        "summary": "T1 -> T2: a U-Net adding a learned correction to the intensity table of the T1",
        # 600 s per fold: about the steps of the shipped model's training. Its runs were tested at
        # train's default weight, the shipped one, so no re-scoring ("weights": None).
        "cv": {
            "results": "quality_bysite_600s", "config": "default", "baseline": "intensity-map", "weights": None,
            "commands": [
                "python benchmarks/ablation.py --budget 600 --image-size 128 --seeds 0 1 --configs default "
                "--skip-builtin --out outputs/bysite600 --tag quality_bysite_600s",
            ],
        },
    },
    "brasyn-t2": {
        "sources": ["T1", "T1c", "FLAIR"], "target": "T2", "train": [],
        "correction_weight": 0.75,
        "summary": "T1 + T1c + FLAIR -> T2 (the BraSyn setting): a U-Net adding a learned correction to the "
                   "intensity table of the T1",
        "cv": {
            "results": "quality_bysite_multisource_3000steps", "config": "t1-t1c-flair",
            "baseline": "linear-regression (T1,T1c,FLAIR)",
            "weights": "correction_weight_bysite_multisource_3000steps",
            "commands": [
                "python benchmarks/ablation.py --steps 3000 --image-size 128 --seeds 0 1 --configs t1-t1c-flair "
                "--skip-builtin --out outputs/bysite128 --tag quality_bysite_multisource_3000steps",
                "python benchmarks/correction_weight.py --runs 'outputs/bysite128/real/source-T1,T1c,FLAIR' "
                "--config t1-t1c-flair --weights 0 0.25 0.5 0.6 0.75 1 "
                "--tag correction_weight_bysite_multisource_3000steps",
            ],
        },
    },
}  # fmt: skip
SCORES = ("psnr_mask", "ssim_mask", "psnr_mask_window", "ssim_mask_window", "histogram_w1")


def paths(name: str) -> dict[str, Path]:
    sources = ",".join(RECIPES[name]["sources"])
    return {"prepared": WORK / f"cache-{sources}", "cache": WORK / name / "cache", "run": WORK / name / "run"}


def mri2mri(*args: str) -> str:
    command = ["mri2mri", *args]
    print("$", shlex.join(command), flush=True)
    subprocess.run([sys.executable, "-m", "mri2mri", *args], check=True, cwd=ROOT)
    return shlex.join(command)


def train_commands(name: str) -> list[str]:
    """The commands that make the model's training run (also written into its model card)."""
    recipe, where = RECIPES[name], paths(name)
    rel = {k: str(v.relative_to(ROOT)) for k, v in where.items()}
    return [
        f"mri2mri prepare ../shared/data/real-mri --out {rel['prepared']} --image-size {IMAGE_SIZE} "
        f"--source {','.join(recipe['sources'])} --target {recipe['target']}",
        f"(every patient of {rel['prepared']} into the train split: mri2mri.data.cache.resplit -> {rel['cache']})",
        " ".join([f"mri2mri train {rel['cache']} --out {rel['run']} --epochs {EPOCHS} --seed {SEED}",
                  *recipe["train"]]),
    ]


def train(name: str) -> None:
    from mri2mri.data.cache import SliceCache, resplit

    recipe, where = RECIPES[name], paths(name)
    if not (where["prepared"] / "cache.json").is_file():
        mri2mri("prepare", str(REAL), "--out", str(where["prepared"]), "--image-size", str(IMAGE_SIZE),
                "--source", ",".join(recipe["sources"]), "--target", recipe["target"])  # fmt: skip
    if not (where["cache"] / "cache.json").is_file():
        where["cache"].parent.mkdir(parents=True, exist_ok=True)
        resplit(where["prepared"], {r.subject: "train" for r in SliceCache(where["prepared"]).subjects}, where["cache"])
    mri2mri("train", str(where["cache"]), "--out", str(where["run"]), "--epochs", str(EPOCHS), "--seed", str(SEED),
            *recipe["train"])  # fmt: skip


def cross_validation(name: str) -> dict[str, Any]:
    """The recipe's scores over the folds by site: mean and std over its runs (folds x seeds) at
    the shipped correction weight, and the baseline's on the same test patients."""
    recipe = RECIPES[name]
    cv = recipe["cv"]
    files = [RESULTS / f"{cv[key]}.json" for key in ("results", "weights") if cv[key]]
    for path in files:
        if not path.is_file():
            raise SystemExit(f"{path}: missing; run the recipe's cross-validation first:\n  " + "\n  ".join(cv["commands"]))
    quality = json.loads(files[0].read_text())
    rows = quality["datasets"]["real"]["rows"]
    runs = [r for r in rows if r["method"] == cv["config"]]
    baseline = [r for r in rows if r["method"] == cv["baseline"]]
    if cv["weights"]:  # runs tested at another weight, re-scored at the shipped one
        weight = str(recipe["correction_weight"]).rstrip("0").rstrip(".")
        rescored = json.loads(files[1].read_text())["folds"]
        model_values = [rescored[r["fold"]][f"{cv['config']}-s{r['seed']}"][weight] for r in runs]
    else:
        tested = {r.get("correction_weight") for r in runs}
        if tested != {recipe["correction_weight"]}:
            raise SystemExit(f"{files[0]}: runs tested at correction weight {sorted(map(str, tested))}, "
                             f"not the shipped {recipe['correction_weight']:g}")  # fmt: skip
        model_values = runs

    from ablation import mean_std

    def spread(values: list[dict[str, float]], key: str) -> dict[str, float]:
        return mean_std([float(v[key]) for v in values])

    beats = sum(1 for r, v in zip(runs, model_values, strict=True) if v["psnr_mask"] > r["table_psnr_mask"])
    return {
        "protocol": f"{len({r['fold'] for r in runs})} folds by site ({FOLDS.name}), seeds "
                    f"{', '.join(str(s) for s in sorted({r['seed'] for r in runs}))}, {quality['image_size']} px, "
                    f"{training_budget(quality, runs)} (the shipped model: {EPOCHS} epochs on all 27 patients), "
                    f"correction weight {recipe['correction_weight']:g}.",
        "runs": len(runs),
        "model": {key: spread(model_values, key) for key in SCORES},
        "baseline_name": cv["baseline"],
        "baseline": {key: spread(baseline, key) for key in SCORES},
        "beats_intensity_map": f"{beats}/{len(runs)}",
        "commands": cv["commands"],
    }  # fmt: skip


def training_budget(quality: dict[str, Any], runs: list[dict[str, Any]]) -> str:
    """How long each fold trained: a step count, or a wall-clock budget with the steps it bought
    and the machine that bought them (a budget means nothing without both)."""
    if quality.get("steps"):
        return f"{quality['steps']} steps per fold"
    steps = [float(r["steps"]) for r in runs]
    low, high = min(steps), max(steps)
    precision = "/".join(sorted({str(r.get("precision")) for r in runs if r.get("precision")})) or "precision unrecorded"
    where = quality.get("machine", {})
    machine = (f"{where['device_name']}, {where['cpu_count']} cores" if where.get("device") == "cpu"
               else where.get("device_name", "machine unrecorded"))  # fmt: skip
    return (f"{quality['budget_s']:.0f} s of training per fold ({low:,.0f}-{high:,.0f} steps; {precision} "
            f"on {machine})")


def training_data() -> list[dict[str, Any]]:
    """The 27 patients by source and site, with what to cite."""
    folds = json.loads(FOLDS.read_text())["folds"]
    cbica = len(folds["cbica-1"]) + len(folds["cbica-2"])
    return [
        {"source": "BraTS 2018 training set", "sites": f"BraTS 2013 cohort ({len(folds['brats2013'])}), CBICA / "
         f"University of Pennsylvania ({cbica}), TCIA01 ({len(folds['tcia01'])}), TCIA02/03/10 "
         f"({len(folds['tcia02-03-10'])})", "patients": 24,
         "cite": "Menze et al., IEEE TMI 2015; Bakas et al., Scientific Data 2017; Bakas et al., arXiv:1811.02629 "
                 "(2018)", "licence": "BraTS data terms; TCIA images CC BY 3.0"},
        {"source": "BraTS 2023 adult glioma training case (BraTS-GLI-00001-000)", "sites": "BraTS 2023",
         "patients": 1, "cite": "Baid et al., arXiv:2107.02314 (2021) and the BraTS 2023 challenge",
         "licence": "BraTS data terms"},
        {"source": "TCGA-LGG (TCGA-DU-7294) and a post-operative glioma case, as preprocessed by the BrainLesion "
                   "project", "sites": "TCIA", "patients": 2,
         "cite": "Clark et al., J Digit Imaging 2013 (TCIA); Pedano et al. 2016 (TCGA-LGG collection)",
         "licence": "CC BY 3.0"},
    ]  # fmt: skip


def half_precision_cost(payload: dict[str, Any], config: Any, cache: Path, slices: int = 64) -> dict[str, float]:
    """What storing the generator's weights in float16 costs: the largest change of the output and
    the change of in-brain PSNR against the real target, on evenly spaced slices of ``cache``."""
    import numpy as np
    import torch

    from mri2mri.data.cache import SliceCache
    from mri2mri.metrics import psnr_value
    from mri2mri.models import build_generator

    data = SliceCache(cache)
    rows = np.linspace(0, len(data.source) - 1, slices).astype(int)
    source = torch.from_numpy(np.asarray(data.source[rows])) * 2 - 1
    target, mask = np.asarray(data.target[rows])[:, 0], np.asarray(data.mask[rows])[:, 0] > 0
    outputs = {}
    for dtype in (torch.float32, torch.float16):
        G = build_generator(config.model)
        weights = payload.get("ema") or payload["G"]
        G.load_state_dict({k: v.to(dtype).float() if v.is_floating_point() else v for k, v in weights.items()})
        with torch.no_grad():
            outputs[dtype] = ((G.eval()(source) + 1) / 2).clamp(0, 1)[:, 0].numpy()
    full, half = outputs[torch.float32], outputs[torch.float16]

    def brain_psnr(image: np.ndarray) -> float:
        return psnr_value(float(np.mean((image[mask] - target[mask]) ** 2)))

    return {
        "max_abs_change": float(np.abs(full - half).max()),
        "psnr_mask_change_db": brain_psnr(half) - brain_psnr(full),
        "slices": slices,
    }


def package(name: str, run: Path | None, cache: Path | None) -> None:
    from mri2mri.atomic import file_sha256
    from mri2mri.checkpoint import save_checkpoint
    from mri2mri.inference import load_generator
    from mri2mri.pretrained import WEIGHTS_DIR
    from mri2mri.runfolder import find_checkpoint, read_json_object

    recipe, where = RECIPES[name], paths(name)
    run = run or where["run"]
    checkpoint = find_checkpoint(run, "last")
    G, config, payload = load_generator(checkpoint, "cpu", recipe["correction_weight"])
    summary = read_json_object(run / "run_summary.json", what="run summary")
    cv = cross_validation(name)
    cost = half_precision_cost(payload, config, cache or where["cache"])
    weights_key = "ema" if payload.get("ema") else "G"
    half = {k: v.half() if v.is_floating_point() else v for k, v in G.state_dict().items()}
    shipped = {"format": payload["format"], "G": half, "config": config.to_dict(), "epoch": payload.get("epoch"),
               "source_reference": payload.get("source_reference")}  # fmt: skip
    WEIGHTS_DIR.mkdir(parents=True, exist_ok=True)
    path = WEIGHTS_DIR / f"{name}.pth"
    save_checkpoint(path, shipped, keep_previous=False)
    entry = {
        "name": name, "file": path.name, "sha256": file_sha256(path), "sources": recipe["sources"],
        "target": recipe["target"], "summary": recipe["summary"],
        "training": {
            "summary": f"27 patients, {summary.get('steps')} steps",
            "patients": 27, "data": training_data(), "image_size": IMAGE_SIZE, "epochs": EPOCHS, "seed": SEED,
            "steps": summary.get("steps"), "train_seconds": summary.get("train_seconds"),
            "device": summary.get("device"), "weights": f"{weights_key}, stored as float16",
            "commands": train_commands(name),
        },
        "storage": {"dtype": "float16", **cost},
        "cross_validation": cv,
    }  # fmt: skip
    write_entry_and_card(path, entry)
    print(f"wrote {path} ({path.stat().st_size / 1e6:.1f} MB), its card and the manifest; float16 costs "
          f"{cost['psnr_mask_change_db']:+.4f} dB (largest change {cost['max_abs_change']:.2e})")


def card(name: str) -> None:
    """The shipped model's cross-validated scores and card again, from the recipe's results as
    they are now; the weights and what the manifest says of their training stay as they are."""
    from mri2mri.errors import DataError
    from mri2mri.pretrained import ready_models, verified_path

    model = ready_models().get(name)
    if model is None:
        raise SystemExit(f"{name}: not in the manifest; run `package {name}` first")
    try:
        path = verified_path(model)  # the card describes these very weights
    except DataError as error:
        raise SystemExit(str(error)) from None
    write_entry_and_card(path, {**model.entry, "cross_validation": cross_validation(name)})
    print(f"wrote {model.card} and the manifest's cross-validation of {name}")


def write_entry_and_card(path: Path, entry: dict[str, Any]) -> None:
    """Record ``entry`` (the weights ``path``) in the manifest and write the weights' card."""
    from mri2mri import modelcard, pretrained
    from mri2mri.atomic import write_text
    from mri2mri.checkpoint import load_checkpoint
    from mri2mri.config import RunConfig
    from mri2mri.contrast import source_reference_of
    from mri2mri.models import build_discriminator, build_generator, count_parameters

    name, where = entry["name"], pretrained.WEIGHTS_DIR / pretrained.MANIFEST.name
    manifest = json.loads(where.read_text()) if where.is_file() else {"format": 1, "models": []}
    manifest["models"] = [m for m in manifest["models"] if m["name"] != name] + [entry]
    manifest["models"].sort(key=lambda m: list(RECIPES).index(m["name"]) if m["name"] in RECIPES else 99)
    write_text(where, json.dumps(manifest, indent=2) + "\n")
    shipped = load_checkpoint(path)
    config = RunConfig.from_dict(shipped["config"])
    parameters = {"generator": count_parameters(build_generator(config.model)),
                  "discriminator": count_parameters(build_discriminator(config.model))}  # fmt: skip
    reference = source_reference_of(path, config, shipped)
    text = modelcard.ready_model_card_text(entry, config, parameters=parameters, source_reference=reference)
    write_text(path.with_name(f"{name}{modelcard.CARD_SUFFIX}"), text)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", choices=["train", "package", "card"])
    parser.add_argument("name", choices=list(RECIPES))
    parser.add_argument("--run", type=Path, default=None, help="package this run folder (default: train's)")
    parser.add_argument("--cache", type=Path, default=None, help="its training cache (default: train's)")
    args = parser.parse_args()
    if args.action == "train":
        train(args.name)
    elif args.action == "card":
        card(args.name)
    else:
        package(args.name, args.run, args.cache)
    return 0


if __name__ == "__main__":
    sys.exit(main())
