"""Torch-free twins of the preprocessing steps that prediction needs, and the input check.

``mri2mri predict model.onnx ...`` must run where PyTorch is not installed, but
:mod:`mri2mri.data.preprocess` imports torch (for one bilinear resize). This module holds the
same steps in NumPy/SciPy: brain mask, percentile normalisation, crop / pad / resize geometry,
2.5D slicing and its inverse. ``tests/test_predict.py`` checks that every function here gives
the same arrays as its namesake in :mod:`mri2mri.data.preprocess` and :mod:`mri2mri.data.png`,
so the two cannot drift apart unnoticed. (Once preprocess itself is torch-free, for example by
using :func:`resize_bilinear` below, predict can import it directly and this copy can go.)

It also holds the *source reference*: a histogram of the normalised intensities of the brain
voxels the model was trained on, stored in exported models, against which the input of a
prediction is compared to warn about a volume of the wrong contrast.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from mri2mri.config import DataConfig
from mri2mri.data.io import Volume
from mri2mri.errors import DataError

GEOMETRY_VERSION = 1
CROP_MARGIN = 4
ZERO_BACKGROUND_FRACTION = 0.1

# --------------------------------------------------------------------------------------------
# Resize: the NumPy equivalent of F.interpolate(mode="bilinear", align_corners=False,
# antialias=True), which is what data.preprocess uses (a triangle filter widened by the scale
# when shrinking, as in Pillow), written as two weight matrices.


def _resize_weights(in_size: int, out_size: int) -> np.ndarray:
    """(out_size, in_size) interpolation weights of PyTorch's antialiased bilinear kernel."""
    scale = in_size / out_size
    support = scale if scale >= 1.0 else 1.0
    inverse = 1.0 / scale if scale >= 1.0 else 1.0
    weights = np.zeros((out_size, in_size), dtype=np.float64)
    for i in range(out_size):
        centre = scale * (i + 0.5)
        first = max(int(centre - support + 0.5), 0)
        last = min(int(centre + support + 0.5), in_size)
        taps = np.arange(first, last)
        row = np.clip(1.0 - np.abs((taps - centre + 0.5) * inverse), 0.0, None)
        total = row.sum()
        weights[i, first:last] = row / total if total > 0 else row
    return weights.astype(np.float32)


def resize_bilinear(stack: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (n, C, h, w) to (n, C, size, size), antialiased when shrinking."""
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    if stack.shape[-2:] == (size, size) or stack.shape[0] == 0:
        return stack
    n, channels, height, width = stack.shape
    rows = _resize_weights(height, size)  # (size, h)
    cols = _resize_weights(width, size)  # (size, w)
    # Two large matrix products (one BLAS call each) instead of a broadcast stack of small ones.
    wide = stack.reshape(-1, width) @ cols.T  # (n*C*h, size)
    wide = wide.reshape(n * channels, height, size).transpose(1, 0, 2).reshape(height, -1)
    out = (rows @ wide).reshape(size, n * channels, size).transpose(1, 0, 2)
    return np.ascontiguousarray(out.reshape(n, channels, size, size), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Mask and normalisation (data.preprocess.brain_mask / normalise)


def has_zero_background(volume: np.ndarray) -> bool:
    """Skull-stripped data: a sizeable share of voxels is exactly zero."""
    return float(np.count_nonzero(volume == 0)) >= ZERO_BACKGROUND_FRACTION * volume.size


def brain_mask(volume: np.ndarray) -> np.ndarray:
    """Brain (or head) mask of one volume, as data.preprocess.brain_mask computes it."""
    if has_zero_background(volume):
        return volume != 0
    from skimage.filters import threshold_otsu

    mask = volume > threshold_otsu(volume) if np.ptp(volume) > 0 else np.zeros(volume.shape, bool)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    mask = ndimage.binary_fill_holes(mask, structure=in_plane)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return mask


def normalise(
    array: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float]
) -> tuple[np.ndarray, float, float]:
    """Clip to percentiles of the masked voxels and scale to [0, 1]: ``(array01, low, high)``."""
    values = array[mask]
    if values.size == 0:
        raise DataError("empty brain mask: no voxel to normalise on")
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if not high > low:
        raise DataError(f"constant intensity {low:g} inside the brain mask")
    scaled = (array.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled), low, high


# --------------------------------------------------------------------------------------------
# Geometry (data.preprocess.plan_geometry / square_geometry; keys documented there)


def square_geometry(plane_shape, crop, image_size: int, context_slices: int = 0) -> dict[str, Any]:
    crop_height = crop[0][1] - crop[0][0]
    crop_width = crop[1][1] - crop[1][0]
    side = max(crop_height, crop_width)
    top, left = (side - crop_height) // 2, (side - crop_width) // 2
    return {
        "plane_shape": [int(plane_shape[0]), int(plane_shape[1])],
        "crop": [[int(v) for v in crop[0]], [int(v) for v in crop[1]]],
        "pad": [[top, side - crop_height - top], [left, side - crop_width - left]],
        "padded_size": int(side),
        "image_size": int(image_size),
        "context_slices": int(context_slices),
    }


def plan_geometry(
    mask: np.ndarray, image_size: int, *, reference: Volume, context_slices: int = 0
) -> dict[str, Any]:
    """One crop (the brain's bounding box over all slices plus a margin) for the whole volume."""
    plane_mask = np.rot90(mask.any(axis=2))  # (J, I): the slice image's view
    height, width = plane_mask.shape
    rows, cols = np.flatnonzero(plane_mask.any(axis=1)), np.flatnonzero(plane_mask.any(axis=0))
    if rows.size == 0:
        crop = [[0, height], [0, width]]
    else:
        crop = [
            [max(int(rows[0]) - CROP_MARGIN, 0), min(int(rows[-1]) + 1 + CROP_MARGIN, height)],
            [max(int(cols[0]) - CROP_MARGIN, 0), min(int(cols[-1]) + 1 + CROP_MARGIN, width)],
        ]
    geometry = {
        "version": GEOMETRY_VERSION,
        "kind": "volume",
        "grid_file": reference.path,
        "original_shape": list(reference.original_shape),
        "original_affine": np.asarray(reference.original_affine).tolist(),
        "original_orientation": list(reference.original_orientation),
        "canonical_shape": list(reference.data.shape),
        "canonical_affine": np.asarray(reference.affine).tolist(),
        "spacing": list(reference.spacing),
        "slice_axis": 2,
        "plane": "rot90",
        "registration": None,
        "resampled": False,
    }
    geometry.update(square_geometry((height, width), crop, image_size, context_slices))
    return geometry


def planes_to_square(planes: np.ndarray, geometry: dict[str, Any]) -> np.ndarray:
    """(n, C, H, W) full slice images -> (n, C, S, S): crop, zero-pad to square, resize."""
    (r0, r1), (c0, c1) = geometry["crop"]
    (top, bottom), (left, right) = geometry["pad"]
    padded = np.pad(planes[:, :, r0:r1, c0:c1], ((0, 0), (0, 0), (top, bottom), (left, right)))
    return resize_bilinear(padded, geometry["image_size"])


def square_to_planes(squares: np.ndarray, geometry: dict[str, Any]) -> np.ndarray:
    """Inverse of :func:`planes_to_square`: (n, C, S, S) -> (n, C, H, W), zero outside the crop."""
    (r0, r1), (c0, c1) = geometry["crop"]
    (top, _), (left, _) = geometry["pad"]
    padded = resize_bilinear(squares, geometry["padded_size"])
    height, width = geometry["plane_shape"]
    planes = np.zeros((*squares.shape[:2], height, width), dtype=np.float32)
    planes[:, :, r0:r1, c0:c1] = padded[:, :, top : top + (r1 - r0), left : left + (c1 - c0)]
    return planes


def volume_to_slices(data: np.ndarray, geometry: dict[str, Any], slice_indices: np.ndarray,
                     context_slices: int = 0) -> np.ndarray:  # fmt: skip
    """Canonical (I, J, K) -> (n, 2c+1, S, S); neighbours clamped at the volume's ends."""
    offsets = np.arange(-context_slices, context_slices + 1)
    indices = np.clip(np.asarray(slice_indices)[:, None] + offsets[None, :], 0, data.shape[2] - 1)
    planes = np.rot90(data, 1, axes=(0, 1))  # (J, I, K): slice images
    return planes_to_square(planes[:, :, indices].transpose(2, 3, 0, 1), geometry)


def slices_to_canonical(
    slices: np.ndarray, geometry: dict[str, Any], slice_indices: np.ndarray
) -> np.ndarray:
    """(n, 1, S, S) slices back into the canonical (I, J, K) volume; other slices are 0."""
    planes = square_to_planes(np.asarray(slices, dtype=np.float32)[:, :1], geometry)[
        :, 0
    ]  # (n, J, I)
    height, width = geometry["plane_shape"]
    stacked = np.zeros((height, width, geometry["canonical_shape"][2]), dtype=np.float32)
    stacked[:, :, np.asarray(slice_indices, dtype=np.int64)] = planes.transpose(1, 2, 0)
    return np.ascontiguousarray(np.rot90(stacked, -1, axes=(0, 1)))


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
    """Every axial slice of a source volume, masked, normalised and sliced as training did."""
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
    mask = image > 0 if has_zero_background(image) else np.ones(image.shape, dtype=bool)
    try:
        image01, low, high = normalise(image, mask, data_config.percentiles)
    except DataError as error:
        raise DataError(f"{path}: {error}") from None
    height, width = image.shape
    geometry = {"version": GEOMETRY_VERSION, "kind": "image", "grid_file": path,
                **square_geometry((height, width), [[0, height], [0, width]], data_config.image_size,
                                  data_config.context_slices)}  # fmt: skip
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
