"""A prediction input prepared as training prepared its source, and the input contrast check.

``mri2mri predict model.onnx ...`` must run where PyTorch is not installed, so this module and
everything it imports is NumPy/SciPy: the steps themselves (brain mask, percentile
normalisation, crop / pad / resize geometry, 2.5D slicing and its inverse) are those of
:mod:`mri2mri.data.geometry`, the very functions :mod:`mri2mri.data.preprocess` and
:mod:`mri2mri.data.png` build the training cache with. ``tests/test_export.py`` runs the ONNX
route with ``import torch`` made to fail.

It also holds the *source reference*: a histogram of the normalised intensities of the brain
voxels the model was trained on, stored in exported models, against which the input of a
prediction is compared to warn about a volume of the wrong contrast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np

from mri2mri.config import DataConfig
from mri2mri.data.geometry import (
    brain_mask,
    image_geometry,
    image_mask,
    normalise,
    plan_geometry,
    planes_to_square,
    volume_to_slices,
)
from mri2mri.data.io import Volume
from mri2mri.errors import DataError

# --------------------------------------------------------------------------------------------
# One input, prepared as training prepared its source


@dataclass
class PreparedInput:
    """A volume or 2D image prepared as the model's input."""

    slices: np.ndarray  # (n, C, S, S) float32 in [0, 1]
    mask: np.ndarray  # (n, 1, S, S) bool, the brain mask on the slices
    full_mask: np.ndarray  # the brain mask on the input's own (canonical or image) grid
    slice_indices: np.ndarray  # (n,) axial indices of the canonical volume ([0] for an image)
    geometry: dict[str, Any]
    norm: dict[str, float]  # {"low", "high"}: the source window mapped to [0, 1]


def prepare_volume(volume: Volume, data_config: DataConfig) -> PreparedInput:
    """Every axial slice of a source volume, masked, normalised and sliced as training did
    (:func:`mri2mri.data.preprocess.prepare_subject`), for :func:`~mri2mri.data.geometry.slices_to_volume`."""
    if volume.data.size == 0 or float(np.ptp(volume.data)) == 0.0:
        raise DataError(
            f"{volume.path}: constant volume (every voxel is {float(volume.data.flat[0]):g})"
        )
    mask = brain_mask(volume.data)
    try:
        data01, low, high = normalise(volume.data, mask, data_config.percentiles)
    except DataError as error:
        raise DataError(f"{volume.path}: {error}") from None
    indices = np.arange(volume.data.shape[2])
    geometry = plan_geometry(mask, data_config.image_size, reference=volume,
                             context_slices=data_config.context_slices)  # fmt: skip
    return PreparedInput(
        slices=volume_to_slices(data01, geometry, indices, data_config.context_slices),
        mask=volume_to_slices(mask.astype(np.float32), geometry, indices) >= 0.5,
        full_mask=mask,
        slice_indices=indices,
        geometry=geometry,
        norm={"low": low, "high": high},
    )


def prepare_image(image: np.ndarray, data_config: DataConfig, path: str = "") -> PreparedInput:
    """A 2D source image as data.png prepares one: the source repeated over the context channels."""
    mask = image_mask(image)
    try:
        image01, low, high = normalise(image, mask, data_config.percentiles)
    except DataError as error:
        raise DataError(f"{path}: {error}") from None
    geometry = image_geometry(image.shape, data_config.image_size, data_config.context_slices, path)
    planes = np.repeat(image01[None, None], data_config.in_channels, axis=1)
    return PreparedInput(
        slices=planes_to_square(planes, geometry),
        mask=planes_to_square(mask[None, None].astype(np.float32), geometry) >= 0.5,
        full_mask=mask,
        slice_indices=np.zeros(1, dtype=np.int64),
        geometry=geometry,
        norm={"low": low, "high": high},
    )


# --------------------------------------------------------------------------------------------
# Source reference: does the input look like what the model was trained on?

HISTOGRAM_BINS = 20
# The warning fires when the input's distance exceeds max(MIN_THRESHOLD, FACTOR x the largest
# distance of a training subject from the training mean): the spread of the training data sets
# the scale, and the floor keeps a small, homogeneous training set from making it hair-trigger.
# Calibration on the three real cases of ../shared/data/real-mri (64 px, reference = two T1s):
# a held-out T1 lies at 0.054, T2 at 0.28-0.29, FLAIR at 0.05-0.19, T1c at 0.05-0.25. So the
# check catches a T2 given to a T1 model reliably, a FLAIR or T1c only sometimes.
MIN_THRESHOLD = 0.1
FACTOR = 2.0


def intensity_histogram(slices01: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Normalised histogram (sums to 1) of the centre channel's brain voxels on [0, 1]."""
    centre = slices01[:, slices01.shape[1] // 2]
    values = centre[np.asarray(mask)[:, 0].astype(bool)]
    counts, _ = np.histogram(values, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    return counts / max(int(counts.sum()), 1)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 (earth mover's) distance of two histograms on [0, 1], in intensity units."""
    return float(np.abs(np.cumsum(a) - np.cumsum(b)).sum() / HISTOGRAM_BINS)


def source_reference(per_subject: list[np.ndarray], contrast: str) -> dict[str, Any]:
    """The reference stored with a model: mean histogram and the warning threshold."""
    histograms = np.asarray(per_subject, dtype=np.float64)
    mean = histograms.mean(axis=0)
    spread = max(histogram_distance(h, mean) for h in histograms)
    return {
        "contrast": contrast,
        "bins": HISTOGRAM_BINS,
        "histogram": [round(float(v), 6) for v in mean],
        "n_subjects": len(histograms),
        "max_subject_distance": round(spread, 6),
        "threshold": round(max(MIN_THRESHOLD, FACTOR * spread), 6),
    }


def check_source(prepared: PreparedInput, reference: dict[str, Any] | None) -> str | None:
    """A one-line warning when the input's intensities look unlike the training source, else None."""
    if not reference:
        return None
    expected = np.asarray(reference["histogram"], dtype=np.float64)
    if expected.size != HISTOGRAM_BINS:
        return None
    distance = histogram_distance(intensity_histogram(prepared.slices, prepared.mask), expected)
    if distance <= float(reference["threshold"]):
        return None
    return (
        f"{prepared.geometry.get('grid_file', 'input')}: its normalised brain intensities differ from "
        f"the training {reference.get('contrast', 'source')} images (distance {distance:.3f} > "
        f"{float(reference['threshold']):.3f}); is it really a {reference.get('contrast', 'source')} image?"
    )


def reference_from_json(text: str | None) -> dict[str, Any] | None:
    """Parse a stored reference; anything malformed counts as absent."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return (
        value if isinstance(value, dict) and "histogram" in value and "threshold" in value else None
    )
