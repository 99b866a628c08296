"""The raw study's figure: raw T1 | extracted brain | synthetic T2 | real T2 (registered).

Reads the volumes ``benchmarks/raw_study.py`` kept in its ``--work`` folder and its JSON, and
draws the axial slice of the T1W grid with the most extracted brain. ``--lang zh`` draws Chinese
labels.

    python benchmarks/raw_study.py --model RUN --cache CACHE --work outputs/raw_study
    python benchmarks/raw_study_figure.py --work outputs/raw_study --out docs/images/raw_study.png
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
from multisource_figure import save_row

ROOT = Path(__file__).resolve().parents[1]
STUDY = ROOT.parent / "shared" / "data" / "clinical-raw" / "ms-patient01-study1"
RESULTS = Path(__file__).resolve().parent / "results" / "raw_study.json"
TITLES = {
    "en": {"raw": "Raw T1 (skull on, 3 mm)", "brain": "Extracted brain (deepbet)", "synthetic": "Synthetic T2",
           "real": "Real T2 (registered)", "title": "A raw clinical study, T1 -> T2 on the T1W grid "
           "(in the brain: PSNR {psnr:.2f} dB, SSIM {ssim:.3f}; intensity map {base_psnr:.2f} dB, {base_ssim:.3f})"},
    "zh": {"raw": "原始 T1（含颅骨，3 mm）", "brain": "提取的脑（deepbet）", "synthetic": "合成 T2",
           "real": "真实 T2（已配准）", "title": "原始临床检查：T1 -> T2，位于 T1W 网格（脑内 PSNR {psnr:.2f} dB，"
           "SSIM {ssim:.3f}；强度映射 {base_psnr:.2f} dB，{base_ssim:.3f}）"},
}  # fmt: skip


def window(image: np.ndarray, inside: np.ndarray) -> np.ndarray:
    """``image`` scaled to [0, 1] by the 0.5th and 99.5th percentiles of its values ``inside``."""
    low, high = np.percentile(image[inside], (0.5, 99.5))
    return np.clip((image - low) / max(high - low, 1e-6), 0, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="the --work folder of raw_study.py")
    parser.add_argument("--results", type=Path, default=RESULTS)
    parser.add_argument("--study", type=Path, default=STUDY)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lang", default="en", choices=sorted(TITLES))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from mri2mri.data.io import read_volume

    raw = read_volume(args.study / "study1_T1W.nii.gz").data
    brain = read_volume(args.work / "t1_synth_mask.nii.gz").data > 0
    synthetic = read_volume(args.work / "t1_synth.nii.gz").data
    real = read_volume(args.work / "t2_on_t1.nii.gz").data
    k = int(np.argmax(brain.reshape(-1, brain.shape[2]).sum(axis=0)))

    def view(volume: np.ndarray) -> np.ndarray:  # as the model's slices: anterior on top
        return np.rot90(volume[:, :, k])

    text = TITLES[args.lang]
    rows = json.loads(args.results.read_text(encoding="utf-8"))["scores_in_extracted_brain"]
    title = text["title"].format(psnr=rows["model"]["psnr"], ssim=rows["model"]["ssim"],
                                 base_psnr=rows["intensity_map"]["psnr"], base_ssim=rows["intensity_map"]["ssim"])  # fmt: skip
    panels = [
        (view(window(raw, raw > 0)), text["raw"]),
        (view(np.where(brain, window(raw, brain), 0)), text["brain"]),
        (view(np.clip(synthetic, 0, 1)), text["synthetic"]),
        (view(window(real, brain & (real > 0))), text["real"]),
    ]
    save_row(panels, title, args.out, args.lang)
    return 0


if __name__ == "__main__":
    sys.exit(main())
