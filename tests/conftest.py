"""Shared fixtures: tiny data made on the fly, never downloaded."""

from __future__ import annotations

import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from mri2mri.config import DataConfig, ModelConfig, RunConfig, TrainConfig
from mri2mri.data.cache import CacheWriter, SubjectRecord, SubjectSlices


def pytest_configure(config: pytest.Config) -> None:
    """Under pytest-xdist (`make test` runs two workers on 2 cores) each worker's OpenMP gets
    one thread, set before any test module loads torch: two workers of two spinning threads
    each on two cores would wait for each other (see ``mri2mri.threads``). Commands the tests
    start inherit it; a user's own OMP_NUM_THREADS is left alone."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ.setdefault("OMP_NUM_THREADS", "1")


REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-mri"
# Tests on real data (skipped when ../shared is absent) pick the few patients they need: preparing
# one takes half a minute (N4 on each source), all 27 would take the suite's whole budget.
requires_real_data = pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data/real-mri is absent")


def link_real_subjects(root: Path, subjects) -> Path:
    """A data folder of links to these real patients' folders (their own files, unchanged)."""
    root.mkdir(parents=True, exist_ok=True)
    for subject in subjects:
        (root / subject).symlink_to(REAL_DATA / subject, target_is_directory=True)
    return root


def link_real_files(folder: Path, subject: str, names) -> Path:
    """A subject folder holding links to only these files of a real patient."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).symlink_to(REAL_DATA / subject / name)
    return folder


def write_tiny_head(path: Path, seed: int = 0) -> Path:
    """A 24 x 24 x 6 'head': a bright ellipse on an exactly zero background."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in (24, 24, 6)], indexing="ij"))
    inside = (grid[0] / 0.8) ** 2 + (grid[1] / 0.8) ** 2 < 1
    data = np.where(inside, rng.uniform(100, 1000, inside.shape), 0).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.eye(4)), path)
    return path


def write_tiny_cache(
    path: Path, *, size: int = 32, slices: int = 4, splits=("train", "train", "train", "val", "test"), seed: int = 0
) -> Path:
    """A cache whose target is a smooth nonlinear function of the source (learnable quickly)."""
    rng = np.random.default_rng(seed)
    split: dict[str, list[str]] = {"train": [], "val": [], "test": []}
    yy, xx = np.mgrid[0:size, 0:size] / size
    with CacheWriter(path, fingerprint="tiny", data_config={}) as writer:
        for index, name in enumerate(splits):
            subject = f"sub-{index:02d}"
            phase = rng.uniform(0, 2 * np.pi, size=(slices, 1, 1, 1))
            source = 0.5 + 0.4 * np.sin(6 * xx + phase) * np.cos(4 * yy)
            source = np.clip(source + rng.normal(0, 0.01, source.shape), 0, 1).astype(np.float32)
            target = (1.0 - source) ** 2
            mask = np.ones_like(source, dtype=np.uint8)
            record = SubjectRecord(subject, name, f"{subject}/T1.nii.gz", f"{subject}/T2.nii.gz",
                                   slice_indices=list(range(slices)), kind="volume")  # fmt: skip
            writer.add(SubjectSlices(record, source, target.astype(np.float32), mask))
            split[name].append(subject)
        writer.commit(split, split_seed=0)
    return path


@pytest.fixture
def tiny_cache(tmp_path: Path) -> Path:
    return write_tiny_cache(tmp_path / "cache")


def tiny_config(**train_changes) -> RunConfig:
    """The report's networks at 32 px, CPU, few steps; dropout off for exact comparisons."""
    # fp32: exact comparisons (DDP against one process, resume) must not depend on whether this
    # CPU has native bf16, which `--precision auto` would pick.
    train = TrainConfig(**{"epochs": 2, "batch_size": 4, "device": "cpu", "seed": 3, "precision": "fp32",
                           **train_changes})
    return RunConfig(
        data=DataConfig(image_size=32, augment=False),
        model=ModelConfig(generator="unet", discriminator="basic", base_channels=8, dropout=0.0, residual="none"),
        train=train,
    )
