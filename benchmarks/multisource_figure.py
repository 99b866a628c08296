"""One held-out tumour slice synthesised from each set of source contrasts, beside the real T2.

Reads the leave-one-patient-out runs that ``benchmarks/ablation.py`` leaves under its ``--out``
folder (one per configuration, each tested on its own fold's cache), picks the held-out slice
with the most bright T2 (oedema and tumour) and draws, left to right: the real T2, then each
configuration's synthetic T2 with its in-brain PSNR on that slice. ``--lang zh`` draws Chinese
labels.

    python benchmarks/ablation.py --steps 800 --image-size 128 --seeds 0 --skip-builtin \\
        --configs default t1-t1c t1-t1c-flair flair --out outputs/scr
    python benchmarks/multisource_figure.py --runs outputs/scr/real --held-out BrainLesion-preprocessed_case \\
        --configs default t1-t1c t1-t1c-flair flair --out docs/images/multisource_heldout.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
TITLES = {
    "en": {"real": "Real T2", "from": "from {sources}", "title": "{patient}, held out: synthetic T2 from each "
           "set of inputs (PSNR in the brain on this slice)"},  # fmt: skip
    "zh": {"real": "真实 T2", "from": "输入 {sources}", "title": "{patient}（未参与训练）：不同输入合成的 T2"
           "（本切片脑内 PSNR）"},  # fmt: skip
}


def find_run(runs: Path, config: str, held_out: str, seed: int) -> tuple[Path, Path]:
    """The run folder of ``config`` on the fold that holds ``held_out`` out (a fold by site of
    ``benchmarks/folds_by_site.json``, or an older one named after the patient), and that fold's cache."""
    from mri2mri.data.cache import SliceCache

    for fold in sorted(runs.glob("**/fold-*")):
        if not (fold / "cache.json").is_file() or held_out not in SliceCache(fold).split["test"]:
            continue
        run = fold.parent / f"runs-{fold.name.removeprefix('fold-')}" / f"{config}-s{seed}"
        if (run / "checkpoints").is_dir():
            return run, fold
    raise SystemExit(f"error: no finished run of {config!r} with {held_out} held out under {runs}")


def synthesise(run: Path, cache, row: int, correction_weight: float | None = None) -> tuple[np.ndarray, np.ndarray, float, object]:
    """Row ``row`` of ``cache`` through ``run``'s generator: the synthetic and the real target,
    both masked to the brain, the in-brain PSNR of the first against the second, and the run's
    configuration. ``correction_weight`` overrides a residual generator's (``test
    --correction-weight``)."""
    from mri2mri import metrics
    from mri2mri.inference import load_generator
    from mri2mri.runfolder import find_checkpoint

    G, config, _ = load_generator(find_checkpoint(run), correction_weight=correction_weight)
    source = torch.from_numpy(np.array(cache.source[row : row + 1])).float() * 2 - 1
    with torch.inference_mode():
        generated = ((G(source).float() + 1) / 2).clamp(0, 1)
    truth = torch.from_numpy(np.array(cache.target[row : row + 1])).float()
    brain = torch.from_numpy(np.array(cache.mask[row : row + 1])).float()
    psnr = float(metrics.psnr(generated * brain, truth, brain))
    return (generated * brain)[0, 0].numpy(), (truth * brain)[0, 0].numpy(), psnr, config


def save_row(panels: list[tuple[np.ndarray, str]], title: str, out: Path, lang: str) -> None:
    """One row of grey images in [0, 1] with their titles under ``title``, written to ``out``."""
    from matplotlib.figure import Figure

    from mri2mri.figures import figure_style, save_figure

    with figure_style(lang):
        figure = Figure(figsize=(3 * len(panels), 3.9))
        for axis, (image, name) in zip(figure.subplots(1, len(panels)), panels, strict=True):
            axis.imshow(image, cmap="gray", vmin=0, vmax=1)
            axis.set_title(name)
            axis.axis("off")
        figure.suptitle(title)
        figure.tight_layout(rect=(0, 0, 1, 0.9))  # room for the title above the panel titles
        save_figure(figure, out, dpi=80)
    print(f"wrote {out}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=Path, required=True, help="the real-data folder of an ablation --out")
    parser.add_argument("--held-out", required=True)
    parser.add_argument("--configs", nargs="+", required=True)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--lang", default="en", choices=sorted(TITLES))
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    from mri2mri.data.cache import SliceCache

    text = TITLES[args.lang]
    panels, real = [], None
    for config in args.configs:
        run, fold = find_run(args.runs, config, args.held_out, args.seed)
        cache = SliceCache(fold)
        rows = cache.rows("test")
        target = np.array(cache.target[rows, 0])
        mask = np.array(cache.mask[rows, 0]) > 0
        # The same slice for every configuration: all folds of one patient hold the same slices.
        index = int(np.argmax([(t[m] > 0.5).sum() for t, m in zip(target, mask, strict=True)]))
        generated, real, psnr, run_config = synthesise(run, cache, int(rows[index]))
        source = run_config.data.source
        sources = source if isinstance(source, str) else "+".join(source)
        panels.append((generated, f"{text['from'].format(sources=sources)}\n{psnr:.2f} dB"))
    save_row([(real, text["real"]), *panels], text["title"].format(patient=args.held_out), args.out, args.lang)
    return 0


if __name__ == "__main__":
    sys.exit(main())
