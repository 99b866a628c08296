"""The `mri2mri` command end to end on a tiny PNG set, and its one-line errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mri2mri.cli import main

TINY = ["--epochs", "1", "--batch-size", "4", "--image-size", "32", "--base-channels", "8",
        "--device", "cpu", "--quiet"]  # fmt: skip


def write_png_pairs(root: Path, counts=(("train", 8), ("val", 2), ("test", 3)), size: int = 32) -> Path:
    """16-bit T1 PNGs and 8-bit T2 PNGs of a disc whose contrast is inverted between the two."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:size, 0:size]
    for split, count in counts:
        for contrast in ("T1", "T2"):
            (root / split / contrast).mkdir(parents=True, exist_ok=True)
        for index in range(count):
            radius = rng.uniform(size / 5, size / 3)
            disc = ((yy - size / 2) ** 2 + (xx - size / 2) ** 2) < radius**2
            inner = ((yy - size / 2) ** 2 + (xx - size / 2 - 3) ** 2) < (radius / 2) ** 2
            t1 = np.where(disc, 0.4 + 0.5 * inner, 0.0)
            t2 = np.where(disc, 0.9 - 0.6 * inner, 0.0)
            Image.fromarray((t1 * 65535).astype(np.uint16)).save(root / split / "T1" / f"img{index:02d}.png")
            Image.fromarray((t2 * 255).astype(np.uint8)).save(root / split / "T2" / f"img{index:02d}.png")
    return root


@pytest.fixture
def png_root(tmp_path: Path) -> Path:
    return write_png_pairs(tmp_path / "pngs")


def test_train_test_predict_compare_on_png_pairs(png_root, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", str(png_root), "--out", str(run), *TINY]) == 0
    assert (run / "checkpoints" / "gan_t1_to_t2_last.pth").is_file()
    assert (run / "figures" / "loss_curve.png").is_file()
    assert main(["test", str(run), "--device", "cpu", "--quiet"]) == 0
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics["methods"]) >= {"model", "identity", "intensity-map"}
    assert metrics["test_set"]["n_slices"] == 3
    assert sorted((run / "figures").glob("test_visualization_*.png"))
    assert (run / "report.html").is_file() and (run / "test_metrics.csv").is_file()

    image = png_root / "test" / "T1" / "img00.png"
    assert main(["predict", str(run), str(image), str(tmp_path / "out.png"), "--device", "cpu"]) == 0
    assert Image.open(tmp_path / "out.png").size == (32, 32)

    second = tmp_path / "run2"
    assert main(["train", str(run / "cache"), "--out", str(second), *TINY, "--generator", "basic"]) == 0
    assert main(["test", str(second), str(run / "cache"), "--device", "cpu", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["compare", str(run), str(second), "--out", str(tmp_path / "cmp")]) == 0
    table = capsys.readouterr().out
    assert "unet" in table and "basic" in table
    assert (tmp_path / "cmp" / "compare.csv").is_file()


def test_auto_resume_starts_a_new_run_then_continues_it(png_root, tmp_path):
    """What torchrun --max-restarts needs: one command line for the first start and restarts."""
    run = tmp_path / "run"
    options = [*TINY[2:], "--auto-resume"]  # TINY without its --epochs
    assert main(["train", str(png_root), "--out", str(run), "--epochs", "1", *options]) == 0
    assert main(["train", str(run / "cache"), "--out", str(run), "--epochs", "2", *options]) == 0
    history = (run / "history.csv").read_text().splitlines()
    assert [line.split(",")[0] for line in history[1:]] == ["1", "2"]


def _error_line(argv: list[str], capsys) -> str:
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code != 0
    assert err.startswith("error: ") and "Traceback" not in err
    return err


def test_bad_choices_name_the_valid_ones(png_root, tmp_path, capsys):
    out = ["--out", str(tmp_path / "r")]
    assert "unet" in _error_line(["train", str(png_root), *out, *TINY, "--generator", "vnet"], capsys)
    assert "hinge" in _error_line(["train", str(png_root), *out, *TINY, "--gan-loss", "wgan"], capsys)
    assert "nearest valid sizes" in _error_line(["train", str(png_root), *out, *TINY, "--image-size", "40"], capsys)


def test_a_missing_partner_is_one_line_naming_the_file(png_root, tmp_path, capsys):
    (png_root / "train" / "T2" / "img03.png").unlink()
    err = _error_line(["train", str(png_root), "--out", str(tmp_path / "r"), *TINY], capsys)
    assert "img03" in err and "\n" not in err
    assert not (tmp_path / "r" / "checkpoints").exists()


def test_an_unreadable_png_fails_without_a_traceback(png_root, tmp_path):
    (png_root / "val" / "T1" / "img00.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    result = subprocess.run([sys.executable, "-m", "mri2mri", "train", str(png_root), "--out", str(tmp_path / "r"), *TINY],
                            capture_output=True, text=True, timeout=120)  # fmt: skip
    assert result.returncode != 0
    assert "img00.png" in result.stderr and "Traceback" not in result.stderr
