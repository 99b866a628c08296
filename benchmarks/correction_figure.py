"""What half the correction changes, on one slice of a held-out patient.

Reads a ``benchmarks/ablation.py --out`` folder of the residual default, takes the held-out
patient's middle test slice and draws, left to right: the T1 the model saw (after N4), the
intensity-map table's T2 (no correction), the synthetic T2 with the whole learned correction
(``--correction-weight 1``) and with half of it (0.5, the default), each with its in-brain PSNR
on that slice, and the real T2. ``--lang zh`` draws Chinese labels.

    python benchmarks/ablation.py --budget 600 --seeds 0 1 --configs default --skip-builtin \\
        --out outputs/quality_n4
    python benchmarks/correction_figure.py --runs outputs/quality_n4/real \\
        --held-out BraTS-GLI-00001-000 --out docs/images/correction_heldout.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from multisource_figure import find_run, save_row, synthesise

ROOT = Path(__file__).resolve().parents[1]
TITLES = {
    "en": {"t1": "T1 (after N4)", "table": "table alone (w = 0)", "whole": "whole correction (w = 1)",
           "half": "half of it (w = 0.5)", "real": "Real T2",
           "title": "{patient}, held out: how much of the learned correction to add "
           "(PSNR in the brain on this slice)"},  # fmt: skip
    "zh": {"t1": "T1（N4 校正后）", "table": "仅查找表（w = 0）", "whole": "完整校正（w = 1）",
           "half": "一半校正（w = 0.5）", "real": "真实 T2",
           "title": "{patient}（未参与训练）：加入多少学到的校正（本切片脑内 PSNR）"},  # fmt: skip
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="the real-data folder of an ablation --out")
    parser.add_argument("--held-out", required=True)
    parser.add_argument("--config", default="default")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lang", default="en", choices=sorted(TITLES))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from mri2mri.data.cache import SliceCache

    run, fold = find_run(args.runs, args.config, args.held_out, args.seed)
    cache = SliceCache(fold)
    rows = cache.rows("test")
    row = int(rows[len(rows) // 2])
    text = TITLES[args.lang]
    panels = [(np.array(cache.source[row, cache.table_channel]), text["t1"])]
    for key, weight in (("table", 0.0), ("whole", 1.0), ("half", 0.5)):
        synthetic, real, psnr, _ = synthesise(run, cache, row, correction_weight=weight)
        panels.append((synthetic, f"{text[key]}\n{psnr:.2f} dB"))
    panels.append((real, text["real"]))
    save_row(panels, text["title"].format(patient=args.held_out), args.out, args.lang)
    return 0


if __name__ == "__main__":
    sys.exit(main())
