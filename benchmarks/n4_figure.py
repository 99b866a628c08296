"""What N4 bias correction of the source changes, on one slice of a held-out patient.

Reads two ``benchmarks/ablation.py --out`` folders, one run with ``--configs no-n4`` (the sources
as they are) and one with ``--configs default`` (N4), takes the held-out patient's middle test
slice and draws, left to right: the T1 the model saw without and with N4, the synthetic T2 of the
run trained on each (with its in-brain PSNR on that slice), and the real T2. ``--lang zh`` draws
Chinese labels.

    python benchmarks/ablation.py --steps 800 --image-size 128 --seeds 0 1 --skip-builtin \\
        --configs default no-n4 --out outputs/n4
    python benchmarks/n4_figure.py --runs outputs/n4/real --held-out BraTS-GLI-00001-000 \\
        --out docs/images/n4_heldout.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from multisource_figure import find_run, save_row, synthesise

ROOT = Path(__file__).resolve().parents[1]
TITLES = {
    "en": {"t1": "T1 as it is", "t1_n4": "T1 after N4", "from": "synthetic T2 from {what}",
           "real": "Real T2", "title": "{patient}, held out: the source's bias field and the synthetic T2 "
           "(PSNR in the brain on this slice)"},  # fmt: skip
    "zh": {"t1": "原始 T1", "t1_n4": "N4 校正后的 T1", "from": "由{what}合成的 T2", "real": "真实 T2",
           "title": "{patient}（未参与训练）：源图像的偏置场与合成 T2（本切片脑内 PSNR）"},  # fmt: skip
}
WHAT = {"en": {"no-n4": "T1 as it is", "default": "T1 after N4"}, "zh": {"no-n4": "原始 T1", "default": "N4 后的 T1"}}


def middle_slice(runs: Path, config: str, held_out: str, seed: int) -> dict[str, np.ndarray | float]:
    """The middle test slice of ``held_out`` in ``config``'s fold: source, synthetic and real T2, PSNR."""
    from mri2mri.data.cache import SliceCache

    run, fold = find_run(runs, config, held_out, seed)
    cache = SliceCache(fold)
    rows = cache.rows("test")
    row = int(rows[len(rows) // 2])
    synthetic, real, psnr, _ = synthesise(run, cache, row)
    source = np.array(cache.source[row, cache.table_channel])
    return {"source": source, "synthetic": synthetic, "real": real, "psnr": psnr}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="the real-data folder of an ablation --out")
    parser.add_argument("--held-out", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lang", default="en", choices=sorted(TITLES))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    plain, corrected = (middle_slice(args.runs, c, args.held_out, args.seed) for c in ("no-n4", "default"))
    text, what = TITLES[args.lang], WHAT[args.lang]
    panels = [(plain["source"], text["t1"]), (corrected["source"], text["t1_n4"]),
              (plain["synthetic"], f"{text['from'].format(what=what['no-n4'])}\n{plain['psnr']:.2f} dB"),
              (corrected["synthetic"], f"{text['from'].format(what=what['default'])}\n{corrected['psnr']:.2f} dB"),
              (corrected["real"], text["real"])]  # fmt: skip
    save_row(panels, text["title"].format(patient=args.held_out), args.out, args.lang)
    return 0


if __name__ == "__main__":
    sys.exit(main())
