"""DICOM series assembly refuses what cannot be one volume: several series in a folder, mixed
orientations, two slices at one position, gaps and uneven spacing, zero pixel spacing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest
from test_data_io import write_dicom_series

from mri2mri.data.io import read_dicom_series
from mri2mri.errors import DataError


def _series(folder: Path, seed: int = 0) -> Path:
    volume = np.round(np.random.default_rng(seed).uniform(0, 500, size=(8, 8, 6))).astype(np.float32)
    return write_dicom_series(folder, volume)


def _edit(folder: Path, change, which=None) -> None:
    """Apply ``change(dataset, k)`` to the slice files (all, or those whose slice index k is in which)."""
    for file in sorted(folder.glob("*.dcm")):
        dataset = pydicom.dcmread(file)
        k = round(float(dataset.ImagePositionPatient[2]) / 2.0)
        if which is None or k in which:
            change(dataset, k)
            dataset.save_as(file)


def test_two_series_in_one_folder_are_refused_naming_both(tmp_path):
    first = _series(tmp_path / "a")
    second = _series(tmp_path / "b", seed=1)
    for index, file in enumerate(sorted(second.glob("*.dcm"))):
        file.rename(first / f"other{index:03d}.dcm")
    uids = {str(pydicom.dcmread(f).SeriesInstanceUID) for f in first.glob("*.dcm")}
    with pytest.raises(DataError, match="2 DICOM series") as info:
        read_dicom_series(first)
    assert all(uid in str(info.value) for uid in uids)


def test_a_gap_is_refused(tmp_path):
    folder = _series(tmp_path / "s")
    _edit(folder, lambda d, k: setattr(d, "ImagePositionPatient", [*d.ImagePositionPatient[:2], k * 2.0 + 20]),
          which={4, 5})  # fmt: skip
    with pytest.raises(DataError, match="not uniform"):
        read_dicom_series(folder)


def test_mixed_orientations_are_refused(tmp_path):
    folder = _series(tmp_path / "s")
    _edit(folder, lambda d, k: setattr(d, "ImageOrientationPatient", [0, 1, 0, 1, 0, 0]), which={2})
    with pytest.raises(DataError, match="orientation"):
        read_dicom_series(folder)


def test_duplicate_positions_are_refused(tmp_path):
    folder = _series(tmp_path / "s")
    _edit(folder, lambda d, k: setattr(d, "ImagePositionPatient", [*d.ImagePositionPatient[:2], 0.0]), which={1})
    with pytest.raises(DataError, match="same position"):
        read_dicom_series(folder)


def test_identical_positions_and_zero_pixel_spacing_are_one_line(tmp_path):
    folder = _series(tmp_path / "same")
    _edit(folder, lambda d, k: setattr(d, "ImagePositionPatient", [0.0, 0.0, 0.0]))
    with pytest.raises(DataError, match="same position") as info:
        read_dicom_series(folder)
    assert "\n" not in str(info.value)
    folder = _series(tmp_path / "zero")
    _edit(folder, lambda d, k: setattr(d, "PixelSpacing", [0, 0]))
    with pytest.raises(DataError, match="PixelSpacing"):
        read_dicom_series(folder)
