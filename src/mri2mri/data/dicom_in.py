"""DICOM series in: one folder of slices read with pydicom as one canonical RAS volume.

Slices are ordered by their position along the slice normal (not by file name),
RescaleSlope / RescaleIntercept are applied, and the patient-space (LPS) geometry is converted to
the RAS affine that NIfTI uses. The writer is :mod:`mri2mri.data.dicom_out`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mri2mri.data.volume import Volume, canonical_volume
from mri2mri.errors import DataError, first_line

DICOM_SUFFIX = ".dcm"
# Patient space in DICOM is LPS, in NIfTI RAS: the first two axes change sign.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Slice steps may differ from their median by this fraction before a series counts as uneven.
SPACING_TOLERANCE = 0.01


@dataclass(frozen=True)
class _SeriesGeometry:
    """The geometry every slice of a series shares, and each slice's position (LPS mm)."""

    row_cosine: np.ndarray
    column_cosine: np.ndarray
    normal: np.ndarray
    row_spacing: float
    column_spacing: float
    positions: list[np.ndarray]


def read_dicom_series(folder: Path | str) -> Volume:
    """Read every DICOM slice of one series in ``folder`` as a canonical RAS :class:`Volume`.

    Files are ordered by ImagePositionPatient projected on the slice normal, so file names and
    their order do not matter; RescaleSlope and RescaleIntercept are applied per slice.

    A folder must hold exactly one series: slices of several SeriesInstanceUIDs are refused,
    naming each series and its slice count (guessing which one is meant could silently
    synthesise from the wrong scan; put each series in its own folder). Slices of different
    orientations, two slices at one position, and gaps or uneven spacing (beyond
    :data:`SPACING_TOLERANCE` of the median step) are refused too: stacking them would give a
    volume with the wrong geometry.
    """
    folder = Path(folder)
    slices = _read_slices(folder)
    _check_one_series(folder, slices)
    geometry = _series_geometry(folder, slices)
    order = np.argsort([float(p @ geometry.normal) for p in geometry.positions], kind="stable")
    offsets = [float(geometry.positions[i] @ geometry.normal) for i in order]
    _check_slice_spacing(folder, offsets, [slices[i][0] for i in order])
    # Array axes: i = column (along the row cosine), j = row (along the column cosine), k = slice.
    data = np.stack(_rescaled_planes(slices, order), axis=-1).transpose(1, 0, 2)
    affine = _series_affine(geometry, [geometry.positions[i] for i in order], slices[0][1])
    return canonical_volume(data, affine, folder)


def _read_slices(folder: Path) -> list[tuple[Path, Any]]:
    """``(file, dataset)`` of every DICOM image in ``folder``; other files are ignored, a damaged
    ``.dcm`` file is refused."""
    import pydicom  # imported here: only DICOM users pay for it

    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    slices = []
    for file in files:
        named_dicom = file.suffix.lower() == DICOM_SUFFIX
        try:
            dataset = pydicom.dcmread(str(file), force=named_dicom)
        except Exception as error:
            if named_dicom:
                raise DataError(f"{file}: unreadable DICOM ({first_line(error)})") from None
            continue  # not a DICOM file (a README, a DICOMDIR listing...): ignore it
        if "PixelData" in dataset:
            slices.append((file, dataset))
        elif named_dicom and "SOPClassUID" not in dataset:
            raise DataError(f"{file}: not a DICOM image (no SOPClassUID, no pixel data)")
    if not slices:
        raise DataError(f"{folder}: no DICOM slices found")
    return slices


def _series_geometry(folder: Path, slices: list[tuple[Path, Any]]) -> _SeriesGeometry:
    """The shared orientation and pixel spacing of the series; DataError when a slice lacks them,
    they are degenerate, or a slice is oriented differently."""
    first = slices[0][1]
    try:
        orientation = np.array([float(v) for v in first.ImageOrientationPatient])
        row_cosine, column_cosine = orientation[:3], orientation[3:]
        normal = np.cross(row_cosine, column_cosine)
        positions = [np.array([float(v) for v in d.ImagePositionPatient]) for _, d in slices]
        row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
        orientations = [np.array([float(v) for v in d.ImageOrientationPatient]) for _, d in slices]
    except (AttributeError, ValueError, TypeError) as error:
        raise DataError(
            f"{folder}: DICOM slices lack position/orientation ({first_line(error)})"
        ) from None
    if not (row_spacing > 0 and column_spacing > 0) or not np.isfinite([row_spacing, column_spacing]).all():
        raise DataError(f"{folder}: DICOM PixelSpacing {row_spacing}, {column_spacing} is not positive")
    if not np.isfinite(np.linalg.norm(normal)) or np.linalg.norm(normal) < 0.5:
        raise DataError(f"{folder}: DICOM ImageOrientationPatient {list(orientation)} is degenerate")
    for (file, _), other in zip(slices, orientations, strict=True):
        if np.abs(other - orientation).max() > 1e-3:
            raise DataError(
                f"{file}: slice orientation {list(other)} differs from the series' {list(orientation)}"
            )
    return _SeriesGeometry(row_cosine, column_cosine, normal, row_spacing, column_spacing, positions)


def _rescaled_planes(slices: list[tuple[Path, Any]], order: np.ndarray) -> list[np.ndarray]:
    """Each slice's pixels in ``order``, RescaleSlope and RescaleIntercept applied."""
    planes: list[np.ndarray] = []
    for index in order:
        file, dataset = slices[index]
        try:
            pixels = dataset.pixel_array.astype(np.float32)
        except Exception as error:
            raise DataError(f"{file}: unreadable DICOM pixels ({first_line(error)})") from None
        if pixels.ndim != 2 or (planes and pixels.shape != planes[0].shape):
            raise DataError(f"{file}: slice of shape {pixels.shape} in a series of another shape")
        slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
        planes.append(pixels * slope + intercept)
    return planes


def _series_affine(geometry: _SeriesGeometry, sorted_positions: list[np.ndarray], first: Any) -> np.ndarray:
    """The RAS affine of the stacked (column, row, slice) array."""
    if len(sorted_positions) > 1:
        slice_step = (sorted_positions[-1] - sorted_positions[0]) / (len(sorted_positions) - 1)
    else:
        slice_step = geometry.normal * float(getattr(first, "SliceThickness", 1.0) or 1.0)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = geometry.row_cosine * geometry.column_spacing
    affine_lps[:3, 1] = geometry.column_cosine * geometry.row_spacing
    affine_lps[:3, 2] = slice_step
    affine_lps[:3, 3] = sorted_positions[0]
    return _LPS_TO_RAS @ affine_lps


def _check_one_series(folder: Path, slices: list) -> None:
    """Refuse a folder holding slices of several series (SeriesInstanceUID), naming them."""
    counts: dict[str, int] = {}
    for _, dataset in slices:
        uid = str(getattr(dataset, "SeriesInstanceUID", "") or "")
        counts[uid] = counts.get(uid, 0) + 1
    if len(counts) > 1:
        listed = ", ".join(f"{uid or '(no SeriesInstanceUID)'} ({n} slices)" for uid, n in sorted(counts.items()))
        raise DataError(f"{folder}: {len(counts)} DICOM series in one folder: {listed}; put each series in its own folder")


def _check_slice_spacing(folder: Path, offsets: list[float], files: list[Path]) -> None:
    """Refuse duplicate slice positions, gaps and uneven spacing (sorted offsets along the normal)."""
    if len(offsets) < 2:
        return
    steps = np.diff(np.asarray(offsets))
    duplicate = np.flatnonzero(steps < 1e-3)
    if duplicate.size:
        index = int(duplicate[0])
        raise DataError(
            f"{folder}: {files[index].name} and {files[index + 1].name} lie at the same position "
            f"({offsets[index]:.3f} mm along the slice normal); one series has one slice per position"
        )
    median = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - median) > SPACING_TOLERANCE * median + 1e-3)
    if uneven.size:
        index = int(uneven[0])
        raise DataError(
            f"{folder}: slice spacing is not uniform: {steps[index]:.3f} mm between {files[index].name} "
            f"and {files[index + 1].name}, {median:.3f} mm elsewhere (a gap or missing slices)"
        )
