"""The NumPy/SciPy steps that turn one volume into model slices and back: mask, window, geometry.

These are shared, not copied: :mod:`mri2mri.data.preprocess` builds the slice cache with them
and :mod:`mri2mri.portable` prepares a prediction input with them, so training and prediction
cannot drift apart. The module must never import PyTorch: ``mri2mri predict model.onnx`` runs
where it is not installed (``tests/test_export.py`` checks that with ``sys.modules["torch"] =
None``). The Otsu threshold is NumPy too, since scikit-image is only a test dependency.

0. :mod:`mri2mri.data.extraction`: a raw volume's skull removed (``DataConfig.brain_extraction``).
1. :func:`brain_mask` (volumes) and :func:`image_mask` (2D pairs): non-zero voxels when the
   background is exactly zero (skull-stripped data), else an Otsu head mask with holes filled
   (volumes) or every pixel (images).
2. :func:`normalise`: clip to percentiles of brain voxels, scale to [0, 1]; ``low``/``high`` are
   kept so that :func:`denormalise` maps outputs back. Before it, each source volume's N4 bias
   field is divided out (:mod:`mri2mri.data.bias`, ``DataConfig.bias_correction``).
3. :func:`select_slices`, :func:`plan_geometry`, :func:`volume_to_slices`: axial slices with
   enough brain, cropped to the brain's bounding box, padded to a square, resized
   (:func:`resize_bilinear`); and :func:`slices_to_volume`, the exact inverse back onto the
   input file's grid.
4. :func:`slice_volume` and :func:`square_image`: steps 1-3 in their order for one volume (or
   one 2D image) and its sources; training's cache and prediction's input are both made by them.

The geometry dict (``SubjectRecord.geometry``; JSON, lists for arrays)::

    version               1
    kind                  "volume" (or "image" for a PNG pair, see :func:`image_geometry`)
    grid_file             the file whose voxel grid the slices live on (the target's)
    original_shape        [X, Y, Z] of that file's array
    original_affine       4x4 voxel -> RAS mm of that file
    original_orientation  e.g. ["L", "P", "S"], the file's axis codes
    canonical_shape       [I, J, K] after nibabel.as_closest_canonical (RAS+)
    canonical_affine      4x4 of the canonical array
    spacing               [di, dj, dk] mm
    slice_axis            2 (axial slices are canonical[:, :, k])
    plane                 "rot90": a slice image is np.rot90(canonical[:, :, k]): rows run
                          anterior (top) to posterior, columns from the patient's left to right
                          (neurological view); image shape = plane_shape = [J, I]
    plane_shape           [H, W] of the full slice image
    crop                  [[row0, row1], [col0, col1]] kept region of the slice image
    pad                   [[top, bottom], [left, right]] zeros added to make it square
    padded_size           P, side of the square before resizing
    image_size            S, side of the cached slices (bilinear, antialiased P -> S)
    context_slices        k: channels are slices k-c ... k+c, clamped at the volume's ends
    registration          None, or {"metric": "mattes_mutual_information",
                          "final_metric_value": ..., "iterations": ..., "rotation_rad": [...],
                          "translation_mm_ras": [...], "resampled": true}
    resampled             whether the source was resampled onto the target grid
    brain_extraction      (training's records) what data/extraction.py did: {"method": "none", ...}
                          or deepbet's record (threshold, brain volume in mL, seconds)

An ``"image"`` geometry has only ``version``, ``kind``, ``grid_file`` and the entries from
``plane_shape`` to ``context_slices`` (the crop is the whole image).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import ndimage

from mri2mri.config import DataConfig
from mri2mri.data.extraction import ZERO_BACKGROUND_FRACTION, has_zero_background, strip  # noqa: F401
from mri2mri.data.volume import Volume, canonical_to_original
from mri2mri.errors import DataError

GEOMETRY_VERSION = 1
# Voxels of margin kept around the brain's bounding box when cropping.
CROP_MARGIN = 4


# --------------------------------------------------------------------------------------------
# 1-2. Brain mask and intensity normalisation


def brain_mask(*volumes: np.ndarray) -> np.ndarray:
    """Boolean brain (or head) mask of co-registered volumes on one grid.

    When every volume has an exactly-zero background: voxels non-zero in any of them
    (``T1 != 0 | T2 != 0``). Otherwise: an Otsu threshold per volume, united, holes filled in
    each axial slice, and the largest connected component kept (a head mask).
    """
    if not volumes:
        raise ValueError("brain_mask needs at least one volume")
    if all(has_zero_background(v) for v in volumes):
        mask = np.zeros(volumes[0].shape, dtype=bool)
        for volume in volumes:
            mask |= volume != 0
        return mask
    mask = np.zeros(volumes[0].shape, dtype=bool)
    for volume in volumes:
        if np.ptp(volume) > 0:
            mask |= volume > otsu_threshold(volume)
    in_plane = np.zeros((3, 3, 3), dtype=bool)
    in_plane[:, :, 1] = ndimage.generate_binary_structure(2, 1)
    mask = ndimage.binary_fill_holes(mask, structure=in_plane)
    labels, count = ndimage.label(mask)
    if count > 1:
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        mask = labels == int(np.argmax(sizes))
    return mask


def image_mask(*images: np.ndarray) -> np.ndarray:
    """Mask of co-registered 2D images: pixels > 0 in any of them when every image has an
    exactly-zero background, else every pixel (a 2D slice is too small for a reliable head mask)."""
    if all(has_zero_background(image) for image in images):
        mask = np.zeros(images[0].shape, dtype=bool)
        for image in images:
            mask |= image > 0
        return mask
    return np.ones(images[0].shape, dtype=bool)


def otsu_threshold(values: np.ndarray, bins: int = 256) -> float:
    """Otsu's threshold: the histogram cut that maximises the between-class variance."""
    counts, edges = np.histogram(values, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    weight_low = np.cumsum(counts)
    weight_high = weight_low[-1] - weight_low
    sum_low = np.cumsum(counts * centres)
    mean_low = sum_low / np.maximum(weight_low, 1)
    mean_high = (sum_low[-1] - sum_low) / np.maximum(weight_high, 1)
    between = weight_low * weight_high * (mean_low - mean_high) ** 2
    return float(centres[int(np.argmax(between[:-1]))])


def check_not_constant(volume: Volume, role: str = "") -> None:
    """A :class:`DataError` naming the file when every voxel of ``volume`` has one value."""
    if volume.data.size == 0 or float(np.ptp(volume.data)) == 0.0:
        value = float(volume.data.flat[0]) if volume.data.size else float("nan")
        what = f"constant {role} volume" if role else "constant volume"
        raise DataError(f"{volume.path}: {what} (every voxel is {value:g})")


def normalise(
    volume: np.ndarray,
    mask: np.ndarray,
    percentiles: tuple[float, float] = (0.5, 99.5),
    *,
    where: str | None = None,
) -> tuple[np.ndarray, float, float]:
    """Clip to the given percentiles of the masked voxels and scale to [0, 1].

    Returns ``(array01, low, high)``; :func:`denormalise` with the same ``low, high`` maps back.
    Raises :class:`DataError` when the mask is empty or the window has zero width; its message
    starts with ``where`` (the file) when given.
    """
    prefix = "" if where is None else f"{where}: "
    values = volume[mask]
    if values.size == 0:
        raise DataError(f"{prefix}empty brain mask: no voxel to normalise on")
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if not high > low:
        raise DataError(f"{prefix}constant intensity {low:g} inside the brain mask")
    scaled = (volume.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled), low, high


def denormalise(array01: np.ndarray, low: float, high: float) -> np.ndarray:
    """Inverse of :func:`normalise` inside the window: [0, 1] -> [low, high]."""
    return np.asarray(array01, dtype=np.float32) * np.float32(high - low) + np.float32(low)


# --------------------------------------------------------------------------------------------
# Resize: PyTorch's F.interpolate(mode="bilinear", align_corners=False, antialias=True) in
# NumPy, which is what the cache was made with before this module existed: a triangle filter,
# widened by the scale when shrinking (as in Pillow), applied along the width, then the height.
# Each output pixel sums its taps one by one in float32, so a pixel never depends on the rest
# of the batch (identical channels stay identical). tests/test_data_preprocess.py checks it
# against PyTorch.


def _resize_taps(in_size: int, out_size: int) -> tuple[np.ndarray, np.ndarray]:
    """``(first, weights)``: each output pixel's first input pixel and its (out_size, taps) weights.

    The arithmetic follows ATen's ``_compute_weights_aa`` step by step (float32 where it uses the
    tensor's type, float64 where C++ promotes to double), so the weights are PyTorch's own.
    """
    f32 = np.float32
    scale = f32(in_size) / f32(out_size)
    shrinking = bool(scale >= 1.0)
    support = scale if shrinking else f32(1.0)  # half-width of the triangle, in input pixels
    inverse = f32(1.0 / float(scale)) if shrinking else f32(1.0)
    first = np.zeros(out_size, dtype=np.int64)
    rows = []
    for i in range(out_size):
        centre = f32(float(scale) * (i + 0.5))
        first[i] = max(int(float(centre - support) + 0.5), 0)
        last = min(int(float(centre + support) + 0.5), in_size)
        taps = np.arange(first[i], last).astype(f32)
        distance = np.abs(((taps - centre).astype(np.float64) + 0.5) * float(inverse)).astype(f32)
        row = np.where(distance < 1.0, f32(1.0) - distance, f32(0.0))
        total = np.cumsum(row, dtype=f32)[-1] if row.size else f32(0.0)  # summed in order
        rows.append(row / total if total != 0 else row)
    weights = np.zeros((out_size, max(row.size for row in rows)), dtype=f32)
    for i, row in enumerate(rows):
        weights[i, : row.size] = row
    return first, weights


def _resize_axis(stack: np.ndarray, axis: int, size: int) -> np.ndarray:
    """Resize (n, C, h, w) along ``axis`` (-1: width, -2: height) to ``size``."""
    first, weights = _resize_taps(stack.shape[axis], size)
    # Taps past a short row's end have weight 0; clamp their index so it stays valid.
    taps = np.minimum(first[:, None] + np.arange(weights.shape[1]), stack.shape[axis] - 1)
    if axis == -2:
        weights = weights[:, :, None]  # broadcast over the width
    out = np.take(stack, taps[:, 0], axis=axis)
    out *= weights[:, 0]
    term = np.empty_like(out)  # reused: large temporaries cost more than the arithmetic
    for tap in range(1, weights.shape[1]):
        np.take(stack, taps[:, tap], axis=axis, out=term)
        term *= weights[:, tap]
        out += term
    return out


def resize_bilinear(stack: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (n, C, h, w) to (n, C, size, size), antialiased when shrinking."""
    stack = np.ascontiguousarray(stack, dtype=np.float32)
    if stack.shape[-2:] == (size, size) or stack.shape[0] == 0:
        return stack
    out = stack
    if out.shape[-1] != size:
        out = _resize_axis(out, -1, size)  # (n, C, h, S)
    if out.shape[-2] != size:
        out = _resize_axis(out, -2, size)  # (n, C, S, S)
    # The filter is a convex combination: clip its float rounding to the input range, so that
    # [0, 1] stays [0, 1].
    return np.clip(out, stack.min(), stack.max(), out=out)


# --------------------------------------------------------------------------------------------
# 3. Slices: selection, geometry, forward and inverse


def select_slices(mask: np.ndarray, min_brain_fraction: float) -> np.ndarray:
    """Indices k of axial slices ``mask[:, :, k]`` with at least that fraction of brain pixels."""
    fraction = mask.reshape(-1, mask.shape[2]).mean(axis=0)
    return np.flatnonzero(fraction >= min_brain_fraction)


def plan_geometry(
    mask: np.ndarray,
    image_size: int,
    *,
    reference: Volume,
    context_slices: int = 0,
    margin: int = CROP_MARGIN,
) -> dict[str, Any]:
    """The geometry dict (module docstring) for volumes on ``reference``'s canonical grid.

    The crop is the bounding box of the mask over all slices, plus ``margin`` voxels, so every
    slice of a subject shares one crop and one scale.
    """
    plane_mask = np.rot90(mask.any(axis=2))  # (J, I): the slice image's view
    height, width = plane_mask.shape
    rows, cols = np.flatnonzero(plane_mask.any(axis=1)), np.flatnonzero(plane_mask.any(axis=0))
    if rows.size == 0:
        crop = [[0, height], [0, width]]
    else:
        crop = [
            [max(int(rows[0]) - margin, 0), min(int(rows[-1]) + 1 + margin, height)],
            [max(int(cols[0]) - margin, 0), min(int(cols[-1]) + 1 + margin, width)],
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


def image_geometry(
    shape: tuple[int, int], image_size: int, context_slices: int, grid_file: str
) -> dict[str, Any]:
    """The geometry dict of a whole 2D image (kind ``"image"``): no crop, padded to a square."""
    height, width = shape
    return {
        "version": GEOMETRY_VERSION,
        "kind": "image",
        "grid_file": grid_file,
        **square_geometry((height, width), [[0, height], [0, width]], image_size, context_slices),
    }


def square_geometry(plane_shape, crop, image_size: int, context_slices: int = 0) -> dict[str, Any]:
    """Crop, pad-to-square and resize entries of the geometry dict for one plane shape."""
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


def planes_to_square(planes: np.ndarray, geometry: dict[str, Any]) -> np.ndarray:
    """(n, C, H, W) full slice images -> (n, C, S, S): crop, zero-pad to square, resize."""
    (r0, r1), (c0, c1) = geometry["crop"]
    (top, bottom), (left, right) = geometry["pad"]
    cropped = planes[:, :, r0:r1, c0:c1]
    padded = np.pad(cropped, ((0, 0), (0, 0), (top, bottom), (left, right)))
    return resize_bilinear(padded, geometry["image_size"])


def square_to_planes(
    squares: np.ndarray, geometry: dict[str, Any], *, fill: float = 0.0
) -> np.ndarray:
    """Inverse of :func:`planes_to_square`: (n, C, S, S) -> (n, C, H, W), ``fill`` outside the crop."""
    (r0, r1), (c0, c1) = geometry["crop"]
    (top, _), (left, _) = geometry["pad"]
    padded = resize_bilinear(squares, geometry["padded_size"])
    inner = padded[:, :, top : top + (r1 - r0), left : left + (c1 - c0)]
    height, width = geometry["plane_shape"]
    planes = np.full((*squares.shape[:2], height, width), fill, dtype=np.float32)
    planes[:, :, r0:r1, c0:c1] = inner
    return planes


def volume_to_slices(
    data: np.ndarray, geometry: dict[str, Any], slice_indices: np.ndarray, context_slices: int = 0
) -> np.ndarray:
    """Canonical volume (I, J, K) -> (n, 2c+1, S, S) slice stacks at ``slice_indices``.

    Channel ``j`` of row ``n`` is slice ``slice_indices[n] - c + j``, clamped to the volume
    (edge replication); channels are in slice order (inferior first).
    """
    offsets = np.arange(-context_slices, context_slices + 1)
    indices = np.clip(np.asarray(slice_indices)[:, None] + offsets[None, :], 0, data.shape[2] - 1)
    planes = np.rot90(data, 1, axes=(0, 1))  # (J, I, K): slice images
    stacks = planes[:, :, indices].transpose(2, 3, 0, 1)  # (n, C, J, I)
    return planes_to_square(stacks, geometry)


def slices_to_volume(
    slices: np.ndarray,
    geometry: dict[str, Any],
    slice_indices: np.ndarray,
    *,
    fill: float = 0.0,
    original: bool = True,
) -> np.ndarray:
    """Put (n, S, S) or (n, 1, S, S) slices back into a volume: the inverse of slicing.

    Undoes resize, pad and crop, places each slice at its index (other slices get ``fill``),
    and, when ``original``, reorients to the axis order of the file named by
    ``geometry["grid_file"]``; that volume's affine is ``geometry["original_affine"]``
    (``geometry["canonical_affine"]`` when ``original`` is False).
    """
    slices = np.asarray(slices, dtype=np.float32)
    if slices.ndim == 3:
        slices = slices[:, None]
    planes = square_to_planes(slices[:, :1], geometry, fill=fill)[:, 0]  # (n, J, I)
    height, width = geometry["plane_shape"]
    depth = geometry["canonical_shape"][2]
    stacked = np.full((height, width, depth), fill, dtype=np.float32)
    stacked[:, :, np.asarray(slice_indices, dtype=np.int64)] = planes.transpose(1, 2, 0)
    canonical = np.ascontiguousarray(np.rot90(stacked, -1, axes=(0, 1)))  # (I, J, K)
    if not original:
        return canonical
    return canonical_to_original(canonical, np.asarray(geometry["original_affine"]))


# --------------------------------------------------------------------------------------------
# 4. One input, mask to slices: the sequence training and prediction share


@dataclass
class Sliced:
    """An input's sources (and, for training, its target) masked, normalised and sliced."""

    slices: np.ndarray  # (n, C, S, S) float32 in [0, 1], the sources contrast-major
    mask: np.ndarray  # (n, 1, S, S) bool, the brain mask on the slices
    full_mask: np.ndarray  # the brain mask on the input's own (canonical or image) grid
    slice_indices: np.ndarray  # (n,) axial indices of the canonical volume ([0] for an image)
    geometry: dict[str, Any]
    windows: list[tuple[float, float]]  # every source's (low, high) mapped to [0, 1], in order
    target: np.ndarray | None = None  # (n, 1, S, S) float32 in [0, 1] when a target was given
    target_window: tuple[float, float] | None = None
    extraction: dict[str, Any] | None = None  # what brain extraction did (data/extraction.py)


def _normalised(arrays: Sequence[tuple[np.ndarray, str]], mask: np.ndarray, percentiles) -> list:
    return [normalise(data, mask, percentiles, where=where) for data, where in arrays]


def _bias_corrected(sources: Sequence[tuple[np.ndarray, str]], data_config: DataConfig,
                    spacing: Sequence[float]) -> list[tuple[np.ndarray, str]]:  # fmt: skip
    """The source volumes with their N4 bias field divided out when ``data_config`` asks for it.
    Each field is fitted inside that source's own mask, so that training (which masks with the
    target too) and prediction (the source alone) correct a source identically. The target is
    never corrected: it is what the metrics score against, and what the model must reproduce."""
    if data_config.bias_correction == "none":
        return list(sources)
    from mri2mri.data.bias import n4_correct

    return [(n4_correct(data, brain_mask(data), spacing), where) for data, where in sources]


def slice_volume(
    sources: Sequence[tuple[np.ndarray, str]],
    reference: Volume,
    data_config: DataConfig,
    *,
    target: tuple[np.ndarray, str] | None = None,
    min_brain_fraction: float | None = None,
) -> Sliced:
    """Mask, normalise and slice one subject: ``sources`` are ``(data, where)`` in channel order,
    already on ``reference``'s canonical grid (the file they came from, for messages).

    The brain is extracted first (:func:`~mri2mri.data.extraction.strip`, on the first source,
    every array zeroed outside its mask; ``data_config.brain_extraction``). Each source's N4 bias
    field is divided out next when ``data_config.bias_correction`` is
    ``"n4"``, fitted in that source's own mask, so identically in both. Training
    (:func:`mri2mri.data.preprocess.prepare_subject`) passes the ``target`` and
    ``min_brain_fraction``; prediction (:func:`mri2mri.portable.prepare_volume`) neither. The
    two differ on purpose in two steps only:

    * the brain mask unites the first source and the target when there is one
      (``brain_mask(source, target)``): a training pair is masked where either contrast shows
      tissue, while a prediction has only its source to go by. On skull-stripped data (an
      exactly-zero background) both are the non-zero voxels of co-registered images, so they
      agree where it matters; every further source is normalised inside this same mask;
    * training keeps the axial slices with at least ``min_brain_fraction`` brain; prediction
      keeps every slice (:func:`mri2mri.predict.synthesise` runs those with any brain), so the
      output covers the whole input volume.

    An empty selection gives empty stacks; the caller says why.
    """
    sources, target, extraction = strip(sources, target, reference.spacing, data_config.brain_extraction)
    sources = _bias_corrected(sources, data_config, reference.spacing)
    first = sources[0][0]
    mask = brain_mask(first, target[0]) if target is not None else brain_mask(first)
    windows = _normalised(sources, mask, data_config.percentiles)
    target_window = _normalised([target], mask, data_config.percentiles)[0] if target is not None else None
    if min_brain_fraction is None:
        indices = np.arange(mask.shape[2])
    else:
        indices = select_slices(mask, min_brain_fraction)
    geometry = plan_geometry(mask, data_config.image_size, reference=reference,
                             context_slices=data_config.context_slices)  # fmt: skip
    stacks = [volume_to_slices(data01, geometry, indices, data_config.context_slices)
              for data01, _, _ in windows]  # fmt: skip
    return Sliced(
        slices=stacks[0] if len(stacks) == 1 else np.concatenate(stacks, axis=1),
        mask=volume_to_slices(mask.astype(np.float32), geometry, indices) >= 0.5,
        full_mask=mask,
        slice_indices=indices,
        geometry=geometry,
        windows=[(low, high) for _, low, high in windows],
        target=None if target_window is None else volume_to_slices(target_window[0], geometry, indices),
        target_window=None if target_window is None else target_window[1:],
        extraction=extraction,
    )


def square_image(
    source: tuple[np.ndarray, str], data_config: DataConfig, grid_file: str, *,
    target: tuple[np.ndarray, str] | None = None,
) -> Sliced:
    """Mask, normalise and square one 2D source image (and a training pair's ``target``): the
    source is repeated over the context channels. As for volumes, the mask of a training pair
    unites source and target (:func:`image_mask`), a prediction's is the source's alone."""
    image = source[0]
    mask = image_mask(image, target[0]) if target is not None else image_mask(image)
    windows = _normalised([source] + ([target] if target is not None else []), mask, data_config.percentiles)
    geometry = image_geometry(image.shape, data_config.image_size, data_config.context_slices, grid_file)
    planes = np.repeat(windows[0][0][None, None], data_config.in_channels, axis=1)
    return Sliced(
        slices=planes_to_square(planes, geometry),
        mask=planes_to_square(mask[None, None].astype(np.float32), geometry) >= 0.5,
        full_mask=mask,
        slice_indices=np.zeros(1, dtype=np.int64),
        geometry=geometry,
        windows=[windows[0][1:]],
        target=None if target is None else planes_to_square(windows[1][0][None, None], geometry),
        target_window=None if target is None else windows[1][1:],
    )
