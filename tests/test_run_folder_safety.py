"""A run's data and a user's files are never replaced: the lock comes first, `test` prepares
other data elsewhere, and `--out` must be a run folder of this program or new."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_tiny_cache

from mri2mri.checkpoint import save_checkpoint
from mri2mri.cli import main as cli_main
from mri2mri.config import DataConfig, ModelConfig, RunConfig
from mri2mri.errors import DataError
from mri2mri.inference import evaluate_run
from mri2mri.models import build_generator

CONFIG = RunConfig(
    data=DataConfig(image_size=32),
    model=ModelConfig(generator="unet", discriminator="basic", base_channels=4, dropout=0.0, residual="none"),
)


def _subjects(root: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in (24, 24, 8)], indexing="ij"))
    inside = grid[0] ** 2 + grid[1] ** 2 < 0.8
    for index in range(n):
        folder = root / f"sub-{index:02d}"
        folder.mkdir(parents=True)
        t1 = np.where(inside, rng.uniform(200, 1000, inside.shape), 0).astype(np.float32)
        for name, array in (("T1", t1), ("T2", np.where(inside, 1200 - t1, 0).astype(np.float32))):
            nib.save(nib.Nifti1Image(array, np.eye(4)), folder / f"{name}.nii.gz")
    return root


def _run(root: Path) -> Path:
    """A run folder with its cache and an (untrained) checkpoint."""
    run = root / "run"
    write_tiny_cache(run / "cache")
    CONFIG.save(run / "config.json")
    torch.manual_seed(0)
    G = build_generator(CONFIG.model)
    save_checkpoint(run / "checkpoints" / "tiny_best.pth", {"G": G.state_dict(), "config": CONFIG.to_dict()})
    return run


def _trained_elsewhere(root: Path) -> Path:
    """What the run (which has no split.json) trained on: none of the subjects scored here."""
    split = root / "trained_split.json"
    split.write_text('{"train": ["sub-99"]}\n')
    return split


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
            for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip


def test_a_second_training_into_an_active_run_touches_nothing(tmp_path, capsys):
    run = _run(tmp_path)
    data = _subjects(tmp_path / "data")
    (run / ".lock").write_text(f"{os.getppid()}\n")  # a live process that is not this one
    before = _snapshot(run)
    code = cli_main(["train", str(data), "--out", str(run), "--image-size", "32", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "another training" in err
    assert _snapshot(run) == before  # the active run's cache was not rebuilt


def test_test_on_other_data_keeps_the_runs_cache(tmp_path):
    run = _run(tmp_path)
    other = _subjects(tmp_path / "other")
    before = _snapshot(run / "cache")
    evaluate_run(run, other, out_dir=tmp_path / "eval", device="cpu", progress=False,
                 trained_on=_trained_elsewhere(tmp_path))  # fmt: skip
    assert _snapshot(run / "cache") == before


def test_test_refuses_a_cache_of_another_image_size(tmp_path):
    run = _run(tmp_path)
    other = write_tiny_cache(tmp_path / "big", size=64)
    with pytest.raises(DataError, match="64x64.*32x32"):
        evaluate_run(run, other, out_dir=tmp_path / "eval", device="cpu", progress=False,
                     trained_on=_trained_elsewhere(tmp_path))  # fmt: skip


def test_out_may_not_be_the_data_or_a_folder_of_user_files(tmp_path, capsys):
    data = _subjects(tmp_path / "data")
    (data / "config.json").write_text('{"mine": true}\n')
    before = _snapshot(data)
    assert cli_main(["train", str(data), "--out", str(data), "--quiet"]) == 2
    assert "training data" in capsys.readouterr().err
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "history.csv").write_text("my,own\n")
    (mine / "notes.txt").write_text("keep\n")
    assert cli_main(["train", str(data), "--out", str(mine), "--quiet"]) == 2
    assert "did not write" in capsys.readouterr().err
    assert _snapshot(data) == before
    assert sorted(p.name for p in mine.iterdir()) == ["history.csv", "notes.txt"]
