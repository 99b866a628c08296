"""From the scanner to a synthetic T2: a raw clinical study through ``mri2mri predict``, scored.

The study (``../shared/data/clinical-raw/ms-patient01-study1``: skull and neck on, 3-4 mm axial
slices, each contrast on its own grid) is not training data. For a T1 -> T2 run this script:

1. times ``mri2mri predict RUN study1_T1W.nii.gz OUT --save-mask`` as a user runs it (a fresh
   process: imports, model, deepbet brain extraction, in-plane resampling, N4, network, output);
2. registers the study's real T2W rigidly onto the T1W grid (Mattes mutual information, the
   ``--register`` of prepare and predict) and normalises it inside the extracted brain to the
   percentiles training normalised its targets with;
3. scores, inside the extracted brain (and the registered T2's field of view), the synthetic T2
   beside the ``intensity-map`` baseline fitted on the run's training patients and *prepared the
   same way* (it replaces the network in the very same prediction code), and beside the same model
   with ``--brain-extraction none`` (what the skull does to it): PSNR over the brain voxels of the
   volume, SSIM in the brain averaged over the axial slices;
4. with ``--multi-model`` (a run of several sources, e.g. T1,FLAIR -> T2), times ``mri2mri
   predict MULTI STUDY_FOLDER OUT --register`` on the subject folder and scores it too.

    python benchmarks/raw_study.py --model /tmp/t1run --cache /tmp/t1cache \\
        [--multi-model /tmp/msrun] [--work /tmp/raw_study]

Writes benchmarks/results/raw_study.json and keeps the volumes in ``--work`` for
``benchmarks/raw_study_figure.py``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import torch
from _common import write_results

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT.parent / "shared" / "data" / "clinical-raw" / "ms-patient01-study1"
MIN_SLICE_VOXELS = 500  # SSIM is averaged over axial slices with at least this much scored brain


def predict_cli(model: Path, inputs: Path, output: Path, *extra: str) -> tuple[float, dict]:
    """Wall seconds of ``mri2mri predict`` in a fresh process, and the output's provenance."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    command = [sys.executable, "-m", "mri2mri", "predict", str(model), str(inputs), str(output), "--overwrite", *extra]
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr}")
    provenance = json.loads(nib.load(output).header.extensions[0].get_content())
    return round(seconds, 1), provenance


def real_t2_on_t1(study: Path, work: Path) -> tuple[np.ndarray, dict]:
    """The study's T2W rigidly registered onto the T1W grid (canonical), saved for the figure."""
    from mri2mri.data.io import read_volume
    from mri2mri.data.preprocess import register_rigid, resample_to

    t1, t2 = read_volume(study / "study1_T1W.nii.gz"), read_volume(study / "study1_T2W.nii.gz")
    transform, registration = register_rigid(t1, t2)
    data = resample_to(t2, t1, transform)
    nib.save(nib.Nifti1Image(t1.to_original(data), t1.original_affine), work / "t2_on_t1.nii.gz")
    return data, registration


def baseline_volume(model: Path, cache: Path, t1: Path) -> tuple[np.ndarray, dict]:
    """The intensity-map baseline (fitted on the run's training patients) run through the same
    prediction as the model: extraction, resampling, N4, window, slices and back."""
    from mri2mri.baselines import IntensityMap
    from mri2mri.data.cache import SliceCache
    from mri2mri.predict import load_model, predict_volume_full

    table = IntensityMap.fit_cache(SliceCache(cache), "train")
    _, info = load_model(model, device="cpu", precision="fp32")

    def run(batch: np.ndarray) -> np.ndarray:  # [-1, 1] in and out, as a generator
        with torch.no_grad():
            return (table(torch.from_numpy((batch + 1.0) / 2.0)) * 2.0 - 1.0).numpy()

    result = predict_volume_full(run, info, t1)
    return result.data, {"n_voxels": int(table.counts.sum()), "n_bins": table.n_bins}


def canonical(path: Path) -> np.ndarray:
    from mri2mri.data.io import read_volume

    return read_volume(path).data


def scores(synthetic: np.ndarray, real01: np.ndarray, scored: np.ndarray) -> dict[str, float]:
    """PSNR over every scored voxel of the volume; masked SSIM per axial slice, averaged; and,
    to tell structure from brightness, the voxels' Pearson correlation with the real T2 (blind to
    a global offset or gain) and their mean difference from it (the offset PSNR pays for)."""
    from mri2mri.metrics import ssim, volume_psnr

    def stack(array: np.ndarray) -> torch.Tensor:  # (I, J, K) -> (K, 1, I, J)
        return torch.from_numpy(np.ascontiguousarray(array.transpose(2, 0, 1)[:, None], dtype=np.float32))

    keep = scored.reshape(-1, scored.shape[2]).sum(axis=0) >= MIN_SLICE_VOXELS
    pred, real, mask = stack(synthetic[..., keep]), stack(real01[..., keep]), stack(scored[..., keep])
    inside = scored & keep[None, None, :]
    return {"psnr": round(volume_psnr(pred, real, mask), 3), "ssim": round(float(ssim(pred, real, mask).mean()), 4),
            "pearson_r": round(float(np.corrcoef(synthetic[inside], real01[inside])[0, 1]), 4),
            "mean_difference": round(float((synthetic[inside] - real01[inside]).mean()), 4),
            "slices": int(keep.sum()), "voxels": int(inside.sum())}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, required=True, help="a T1 -> T2 run folder or checkpoint")
    parser.add_argument("--cache", type=Path, required=True, help="the slice cache that run trained on")
    parser.add_argument("--multi-model", type=Path, default=None, help="a run of several sources (T1,FLAIR -> T2)")
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--work", type=Path, default=Path("outputs") / "raw_study")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from mri2mri.data.geometry import normalise

    args.work.mkdir(parents=True, exist_ok=True)
    t1 = args.study / "study1_T1W.nii.gz"
    seconds, provenance = predict_cli(args.model, t1, args.work / "t1_synth.nii.gz", "--save-mask")
    seconds_none, _ = predict_cli(args.model, t1, args.work / "t1_synth_none.nii.gz", "--brain-extraction", "none")
    real, registration = real_t2_on_t1(args.study, args.work)
    brain = canonical(args.work / "t1_synth_mask.nii.gz") > 0
    scored = brain & (real > 0)  # inside the extracted brain and the T2's field of view
    real01, low, high = normalise(real, scored, (0.5, 99.5))
    baseline, table = baseline_volume(args.model, args.cache, t1)
    nib.save(nib.Nifti1Image(baseline, nib.load(t1).affine), args.work / "t1_baseline.nii.gz")
    rows = {
        "model": scores(canonical(args.work / "t1_synth.nii.gz"), real01, scored),
        "intensity_map": scores(canonical(args.work / "t1_baseline.nii.gz"), real01, scored),
        "model_without_extraction": scores(canonical(args.work / "t1_synth_none.nii.gz"), real01, scored),
    }
    payload = {
        "study": str(args.study), "model": str(args.model), "cache": str(args.cache),
        "training": _training(args.model), "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
        "predict_seconds": seconds, "predict_seconds_without_extraction": seconds_none,
        "preparation": provenance.get("preparation"), "t2_registration": registration,
        "t2_window": [low, high], "scores_in_extracted_brain": rows, "baseline_table": table,
    }  # fmt: skip
    if args.multi_model is not None:
        payload["multi_source"] = _multi_source(args, real01, scored)
    path = write_results("raw_study", payload, args.out)
    for name, row in rows.items():
        print(f"{name:26s} PSNR {row['psnr']:.2f} dB  SSIM {row['ssim']:.4f}  r {row['pearson_r']:.3f}  "
              f"mean difference {row['mean_difference']:+.3f}")
    print(f"predict {seconds} s (without extraction {seconds_none} s); wrote {path}")
    return 0


def _training(model: Path) -> dict:
    """How the run was trained (its budget and steps), from its run_summary.json."""
    summary = model / "run_summary.json" if model.is_dir() else model.parent.parent / "run_summary.json"
    if not summary.is_file():
        return {}
    values = json.loads(summary.read_text(encoding="utf-8"))
    return {key: values.get(key) for key in ("train_seconds", "steps", "epochs", "device", "precision")}


def _multi_source(args: argparse.Namespace, real01: np.ndarray, scored: np.ndarray) -> dict:
    """``predict MULTI STUDY_FOLDER OUT --register``: its time, registrations and scores."""
    output = args.work / "multi_synth.nii.gz"
    seconds, provenance = predict_cli(args.multi_model, args.study, output, "--register", "--save-mask")
    steps = [s for s in provenance["preparation"] if s["step"] == "onto_first_source_grid"]
    return {"model": str(args.multi_model), "training": _training(args.multi_model), "predict_seconds": seconds,
            "sources": provenance.get("source_contrast"), "registrations": steps,
            "scores": scores(canonical(output), real01, scored)}  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
