"""How much can the source intensity alone say about the target, on each held-out patient?

For every patient of a prepared cache, held out in turn, scores three voxel-wise predictors of the
target on that patient's slices with the project's in-brain metrics:

* ``intensity-map``: the baseline itself, a table fitted on the *other* patients (what
  ``mri2mri test`` scores);
* ``intensity-map (own)``: the same table fitted on the held-out patient's *own* source and
  target, an oracle no real model has: the ceiling of any per-voxel lookup for that patient;
* ``constant``: the mean target intensity of the other patients' brain voxels;
* two standardisations of the source before the baseline's table (both fitted without the
  held-out patient's target): ``histogram-matched``, each patient's brain histogram mapped onto
  the training patients' at 50 quantiles (Nyúl & Udupa 1999, with more landmarks), and
  ``white-stripe``, each patient scaled so that its white-matter peak (the highest mode of the
  upper half of its brain histogram) sits at 0.7 (after Shinohara et al. 2014).

Where the oracle table barely beats the constant, the source's intensity carries little of the
target's on that patient, and a model must get its gain from spatial context alone. Writes
``benchmarks/results/table_ceiling.json`` and ``.md``.

    python benchmarks/table_ceiling.py                      # real patients, 256 px, N4 as train
    python benchmarks/table_ceiling.py --bias-correction none   # the sources as they are
    python benchmarks/table_ceiling.py --cache CACHE_DIR    # any prepared cache
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch
from _common import RESULTS

ROOT = Path(__file__).resolve().parents[1]
REAL_DATA = ROOT.parent / "shared" / "data" / "real-mri"


def brain_voxels(cache, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Source (first source's own slice) and target values of the brain voxels of ``rows``."""
    mask = np.asarray(cache.mask[rows, 0]) > 0
    source = np.asarray(cache.source[rows, cache.table_channel])[mask]
    return source, np.asarray(cache.target[rows, 0])[mask]


QUANTILES = np.linspace(1, 99, 50)


def histogram_matched(values: np.ndarray, brain: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """``values`` mapped piecewise-linearly so that their brain quantiles become ``reference``'s."""
    return np.interp(values, np.percentile(brain, QUANTILES), np.percentile(reference, QUANTILES))


def white_matter_peak(brain: np.ndarray) -> float:
    """The highest mode of the upper half of a smoothed 100-bin histogram of brain values."""
    from scipy.ndimage import gaussian_filter1d

    counts, edges = np.histogram(brain, bins=100, range=(0, 1))
    smooth = gaussian_filter1d(counts.astype(float), 2)
    k = 40 + int(np.argmax(smooth[40:]))
    return float(edges[k] + edges[k + 1]) / 2


def white_stripe(values: np.ndarray, brain: np.ndarray) -> np.ndarray:
    return np.clip(values * 0.7 / white_matter_peak(brain), 0, 1)


def score(prediction: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> dict[str, float]:
    """Mean over slices of in-brain PSNR and SSIM, as ``mri2mri test`` pools them."""
    from mri2mri import metrics

    prediction = prediction.clamp(0, 1) * mask
    return {"psnr_mask": float(metrics.psnr(prediction, target, mask).mean()),
            "ssim_mask": float(metrics.ssim(prediction, target, mask).mean())}  # fmt: skip


def ceiling(cache_dir: Path) -> list[dict[str, object]]:
    from mri2mri.baselines import IntensityMap
    from mri2mri.data.cache import SliceCache

    cache = SliceCache(cache_dir)
    rows_of = {r.subject: np.arange(*r.rows) for r in cache.subjects}
    results = []
    for held_out, rows in rows_of.items():
        others = np.concatenate([r for s, r in rows_of.items() if s != held_out])
        train_source, train_target = brain_voxels(cache, others)
        own_source, own_target = brain_voxels(cache, rows)
        source = torch.from_numpy(np.array(cache.source[rows])).float()
        target = torch.from_numpy(np.array(cache.target[rows])).float()
        mask = torch.from_numpy(np.array(cache.mask[rows])).float()
        channel = cache.table_channel
        per_patient = [brain_voxels(cache, r) for s, r in rows_of.items() if s != held_out]
        standardised = np.concatenate([white_stripe(v, v) for v, _ in per_patient])
        table_ws = IntensityMap.fit(standardised, train_target, channel=0)  # applied to `own` below
        own = source[:, channel : channel + 1].numpy()
        predictors = {
            "intensity-map": IntensityMap.fit(train_source, train_target, channel=channel)(source),
            "intensity-map (own)": IntensityMap.fit(own_source, own_target, channel=channel)(source),
            "constant": torch.full_like(target, float(train_target.mean())),
            "histogram-matched": IntensityMap.fit(train_source, train_target, channel=0)(
                torch.from_numpy(histogram_matched(own, own_source, train_source)).float()),
            "white-stripe": table_ws(torch.from_numpy(white_stripe(own, own_source)).float()),
        }
        for method, prediction in predictors.items():
            results.append({"held_out": held_out, "method": method, **score(prediction, target, mask)})
    return results


def markdown(results: list[dict[str, object]]) -> str:
    methods = list(dict.fromkeys(r["method"] for r in results))
    lines = ["| held-out patient | " + " | ".join(f"{m} PSNR brain (dB)" for m in methods) + " |",
             "| --- |" + " --- |" * len(methods)]  # fmt: skip
    for patient in dict.fromkeys(r["held_out"] for r in results):
        cells = {r["method"]: r for r in results if r["held_out"] == patient}
        lines.append(f"| {patient} | " + " | ".join(f"{cells[m]['psnr_mask']:.2f}" for m in methods) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cache", type=Path, default=None, help="a prepared cache (default: the real patients)")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--real", type=Path, default=REAL_DATA)
    parser.add_argument("--bias-correction", choices=("n4", "none"), default="n4",
                        help="the sources' N4 correction when preparing the real patients (default: n4, as train)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    cache = args.cache
    if cache is None:
        cache = ROOT / "outputs" / "quality" / "ceiling" / f"cache{args.image_size}-{args.bias_correction}"
        if not (cache / "cache.json").is_file():
            subprocess.run([sys.executable, "-m", "mri2mri", "prepare", str(args.real), "--out", str(cache),
                            "--image-size", str(args.image_size), "--bias-correction", args.bias_correction,
                            "--quiet"], check=True, cwd=ROOT)  # fmt: skip
    results = ceiling(cache)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "table_ceiling.json").write_text(json.dumps({"cache": str(cache), "results": results}, indent=2) + "\n")
    text = markdown(results)
    (RESULTS / "table_ceiling.md").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
