"""compare_runs on fake run folders: evaluate() output plus config, history and run summary."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
from test_evaluation import bad_predict, build_cache, good_predict

from mri2mri.compare import compare_runs
from mri2mri.config import ModelConfig, RunConfig, TrainConfig
from mri2mri.errors import DataError
from mri2mri.evaluation import evaluate

HISTORY = (
    "epoch,loss_G,loss_D,loss_L1,val_L1,val_PSNR,val_SSIM,seconds,images_per_s\n"
    "1,5.0,0.7,0.3,0.25,18.0,0.6,10.0,40.0\n"
    "2,4.0,0.6,0.2,0.20,20.0,0.7,12.0,44.0\n"
)


def make_run(
    folder: Path, cache, predict, *, generator: str, gan_loss: str, summary: bool = True, batch_size: int = 16
) -> Path:
    RunConfig(model=ModelConfig(generator=generator, discriminator="basic"), train=TrainConfig(gan_loss=gan_loss)).save(
        _mkdir(folder) / "config.json"
    )
    (folder / "history.csv").write_text(HISTORY, encoding="utf-8")
    if summary:
        payload = {"parameters_G": 54_414_017, "parameters_D": 2_766_529, "train_seconds": 3725.0,
                   "images_per_s": 31.5, "epochs": 2, "steps": 40, "device": "cpu"}
        (folder / "run_summary.json").write_text(json.dumps(payload), encoding="utf-8")
    with warnings.catch_warnings():  # the bad run is meant to lose to the baseline
        warnings.filterwarnings("ignore", "resnet does not beat", UserWarning)
        evaluate(predict, cache, folder, n_figure_positions=0, model_name=generator, batch_size=batch_size,
                 progress=False)
    return folder


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    cache = build_cache(root)
    good = make_run(root / "unet_bce", cache, good_predict(), generator="unet", gan_loss="bce")
    # Another batch size must not make the same test set look different.
    bad = make_run(root / "resnet_lsgan", cache, bad_predict, generator="resnet", gan_loss="lsgan",
                   summary=False, batch_size=3)
    return root, good, bad


def test_table_csv_and_figure(two_runs):
    root, good, bad = two_runs
    table, csv_path, figure = compare_runs([good, bad], root / "compare")
    lines = table.strip().splitlines()
    assert lines[0].startswith("| Run | Generator | Discriminator | GAN loss | Epochs | PSNR in mask (dB) |")
    assert len(lines) == 2 + 3  # header, separator, two runs, the baseline
    assert lines[2].startswith("| unet_bce | unet | basic | bce | 2 |")
    assert "54.41 M / 2.77 M" in lines[2] and "1.03 h" in lines[2] and "31.5" in lines[2]
    # Without run_summary.json: epochs, time and speed come from history.csv.
    assert lines[3].startswith("| resnet_lsgan | resnet | basic | lsgan | 2 |")
    assert "22 s" in lines[3] and "42.0" in lines[3] and "n/a / n/a" in lines[3]
    assert lines[4].startswith("| intensity-map |")

    metrics = json.loads((good / "metrics.json").read_text(encoding="utf-8"))
    assert f"{metrics['pooled']['model']['psnr_mask']['mean']:.2f} ±" in lines[2]
    assert f"{metrics['pooled']['intensity-map']['psnr_mask']['mean']:.2f} ±" in lines[4]

    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [r["run"] for r in rows] == ["unet_bce", "resnet_lsgan", "intensity-map"]
    assert float(rows[0]["psnr_mask_mean"]) == pytest.approx(metrics["pooled"]["model"]["psnr_mask"]["mean"])
    assert float(rows[0]["psnr_mask_mean"]) > float(rows[2]["psnr_mask_mean"]) > float(rows[1]["psnr_mask_mean"])
    assert rows[0]["beats_intensity_map"] == "True" and rows[1]["beats_intensity_map"] == "False"
    assert rows[0]["parameters_G"] == "54414017" and rows[1]["parameters_G"] == ""

    markdown = (root / "compare" / "compare.md").read_text(encoding="utf-8")
    assert markdown.startswith(table)
    assert "multiplied by the brain mask" in markdown
    assert "resnet_lsgan does not beat the intensity-map baseline" in markdown
    assert figure == root / "compare" / "compare.png" and figure.stat().st_size > 5000


def test_new_metrics_are_compared_and_older_run_folders_still_read(two_runs, tmp_path):
    """The windowed scores and the histogram distance are columns; a run tested before they
    existed (its metrics.json lacks them) still compares, with "n/a" in those columns."""
    root, good, _ = two_runs
    old = tmp_path / "old_run"
    old.mkdir()
    for name in ("config.json", "history.csv", "run_summary.json", "predictions_preview.npz"):
        (old / name).write_bytes((good / name).read_bytes())
    metrics = json.loads((good / "metrics.json").read_text(encoding="utf-8"))
    new_names = ("psnr_mask_window", "ssim_mask_window", "histogram_w1")
    metrics.pop("histogram_w1")
    metrics["metric_names"] = [m for m in metrics["metric_names"] if m not in new_names]
    for part in (metrics["summary"], metrics["pooled"], metrics["across_subjects"],
                 *metrics["per_subject"].values()):  # fmt: skip
        for entry in part.values():
            for name in new_names:
                if isinstance(entry, dict):
                    entry.pop(name, None)
    (old / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")

    table, csv_path, _ = compare_runs([good, old], tmp_path / "out")
    header, _, new_row, old_row, baseline_row = table.strip().splitlines()
    columns = [cell.strip() for cell in header.strip("|").split("|")]
    at = {label: columns.index(label) for label in ("PSNR in mask, windowed (dB)", "SSIM in mask, windowed",
                                                     "Brain histogram W1")}  # fmt: skip
    cells = {name: [c.strip() for c in row.strip("|").split("|")]
             for name, row in (("new", new_row), ("old", old_row), ("baseline", baseline_row))}  # fmt: skip
    current = json.loads((good / "metrics.json").read_text(encoding="utf-8"))
    w1 = current["histogram_w1"]["model"]
    assert cells["new"][at["Brain histogram W1"]] == f"{w1['mean']:.4f} ± {w1['std']:.4f}"
    assert cells["baseline"][at["PSNR in mask, windowed (dB)"]].startswith(
        f"{current['pooled']['intensity-map']['psnr_mask_window']['mean']:.2f} ±")
    assert all(cells["old"][i] == "n/a" for i in at.values())
    assert cells["old"][columns.index("PSNR in mask (dB)")] == cells["new"][columns.index("PSNR in mask (dB)")]
    with open(csv_path, newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert float(rows[0]["histogram_w1_mean"]) == pytest.approx(w1["mean"])
    assert rows[1]["histogram_w1_mean"] == "" and rows[1]["psnr_mask_window_mean"] == ""
    # The run report of the older folder is written too.
    from mri2mri import report

    assert "Brain-intensity histogram distance" not in report.write_run_report(old).read_text(encoding="utf-8")


def test_chinese_table(two_runs):
    root, good, bad = two_runs
    table, _, figure = compare_runs([good, bad], root / "compare_zh", lang="zh")
    assert table.startswith("| 运行 | 生成器 |")
    assert "掩膜" in (root / "compare_zh" / "compare.md").read_text(encoding="utf-8")
    assert figure.is_file()


def test_runs_on_other_test_subjects_are_refused(two_runs, tmp_path):
    _, good, _ = two_runs
    split = {"train": ["sub-01"], "val": ["sub-02"], "test": ["sub-03"]}
    other = make_run(tmp_path / "other", build_cache(tmp_path / "c1", split), good_predict(),
                     generator="unet", gan_loss="bce")
    with pytest.raises(DataError, match="other subjects.*only in unet_bce: sub-02"):
        compare_runs([good, other], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_runs_on_other_target_images_are_refused(two_runs, tmp_path):
    _, good, _ = two_runs
    other = make_run(tmp_path / "other", build_cache(tmp_path / "c2", seed=5), good_predict(),
                     generator="unet", gan_loss="bce")
    with pytest.raises(DataError, match="different target images"):
        compare_runs([good, other], tmp_path / "out")


def test_missing_files_are_named(two_runs, tmp_path):
    _, good, _ = two_runs
    empty = _mkdir(tmp_path / "not_a_run")
    with pytest.raises(DataError, match=r"not_a_run/config.json: run configuration not found"):
        compare_runs([good, empty], tmp_path / "out")
    (empty / "config.json").write_text("{}", encoding="utf-8")
    with pytest.raises(DataError, match=r"not_a_run/metrics.json: test metrics .*not found"):
        compare_runs([good, empty], tmp_path / "out")
    with pytest.raises(DataError, match="no run folders"):
        compare_runs([], tmp_path / "out")


def test_same_folder_names_get_full_paths(two_runs, tmp_path):
    root, good, _ = two_runs
    twin = tmp_path / "elsewhere" / good.name
    twin.mkdir(parents=True)
    for name in ("config.json", "metrics.json", "history.csv", "run_summary.json", "predictions_preview.npz"):
        (twin / name).write_bytes((good / name).read_bytes())
    table, _, _ = compare_runs([good, twin], tmp_path / "out")
    rows = table.strip().splitlines()[2:4]
    assert rows[0].startswith(f"| {good} |") and rows[1].startswith(f"| {twin} |")
    assert np.all([row.split("|")[6] == rows[0].split("|")[6] for row in rows])  # same PSNR cell
