"""From volumes on disk to a slice cache: grids, masks, normalisation, slices, split.

The steps, each a small function that inference reuses to treat one volume exactly as training
did:

1. :func:`same_grid` / :func:`register_rigid` / :func:`resample_to`: the source is put on the
   target's voxel grid (SimpleITK; rigid Mattes mutual information registration on request).
2. :func:`brain_mask`: non-zero voxels when the background is exactly zero (skull-stripped
   data), else an Otsu head mask with holes filled.
3. :func:`normalise`: clip to percentiles of brain voxels, scale to [0, 1]; ``low``/``high`` are
   kept so that :func:`denormalise` maps outputs back.
4. :func:`select_slices`, :func:`plan_geometry`, :func:`volume_to_slices`: axial slices with
   enough brain, cropped to the brain's bounding box, padded to a square, resized; and
   :func:`slices_to_volume`, the exact inverse back onto the input file's grid.
5. :func:`split_subjects` and :func:`prepare`: split by subject, write the cache (or reuse it).

The geometry dict (``SubjectRecord.geometry``; JSON, lists for arrays)::

    version               1
    kind                  "volume" (or "image" for a PNG pair, see mri2mri.data.png)
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
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage

from mri2mri.config import DataConfig
from mri2mri.data.cache import CacheWriter, SliceCache, SubjectRecord, SubjectSlices, is_cache
from mri2mri.data.discovery import SubjectPair, canonical_contrast, discover_pairs
from mri2mri.data.io import Volume, canonical_to_original, read_volume
from mri2mri.errors import DataError

GEOMETRY_VERSION = 1
# Bump when the slices a given input produces change, so old caches are not reused.
PREPROCESS_VERSION = 1
# Voxels of margin kept around the brain's bounding box when cropping.
CROP_MARGIN = 4
# A volume whose voxels are exactly zero at least this often has a stripped (zero) background.
ZERO_BACKGROUND_FRACTION = 0.1
# DataConfig fields that change the slices or the split (augment does not).
SLICE_FIELDS = (
    "source",
    "target",
    "image_size",
    "context_slices",
    "min_brain_fraction",
    "val_fraction",
    "test_fraction",
    "split_seed",
    "percentiles",
    "register",
)


def warn(message: str) -> None:
    """One warning line on stderr (bad subjects, odd inputs)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def say(message: str) -> None:
    print(message, flush=True)


# --------------------------------------------------------------------------------------------
# 1. Grids: same grid, rigid registration, resampling (SimpleITK)


def same_grid(a: Volume, b: Volume, *, tolerance_mm: float = 1e-3) -> bool:
    """True when both canonical volumes share shape and voxel-to-world affine."""
    return a.data.shape == b.data.shape and np.allclose(a.affine, b.affine, atol=tolerance_mm)


def describe_grid(volume: Volume) -> str:
    shape = "x".join(str(s) for s in volume.data.shape)
    spacing = "x".join(f"{s:.3g}" for s in volume.spacing)
    origin = ",".join(f"{o:.1f}" for o in volume.affine[:3, 3])
    return f"{shape} voxels of {spacing} mm at ({origin})"


def to_sitk(volume: Volume):
    """The canonical volume as a SimpleITK image (LPS physical space, index order i, j, k)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.data.transpose(2, 1, 0)))
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (affine_lps[:3, :3] / spacing).flatten()])
    image.SetOrigin([float(v) for v in affine_lps[:3, 3]])
    return image


def resample_to(moving: Volume, reference: Volume, transform=None) -> np.ndarray:
    """``moving`` resampled (linear) onto ``reference``'s grid; outside its field of view is 0.

    ``transform`` maps reference physical points to moving physical points (SimpleITK's
    convention, what :func:`register_rigid` returns); None is the identity.
    """
    import SimpleITK as sitk

    result = sitk.Resample(
        to_sitk(moving),
        to_sitk(reference),
        transform if transform is not None else sitk.Transform(),
        sitk.sitkLinear,
        0.0,
        sitk.sitkFloat32,
    )
    return np.ascontiguousarray(sitk.GetArrayFromImage(result).transpose(2, 1, 0))


def register_rigid(fixed: Volume, moving: Volume, *, seed: int = 0, iterations: int = 100):
    """Rigid (Euler 3D) registration of ``moving`` onto ``fixed`` by Mattes mutual information.

    Starts from the identity (scanner coordinates are usually close already), multi-resolution.
    Returns ``(transform, info)`` where ``info`` holds the final metric value and the parameters.
    """
    import SimpleITK as sitk

    fixed_image, moving_image = to_sitk(fixed), to_sitk(moving)
    initial = sitk.Euler3DTransform()
    centre_index = [(s - 1) / 2.0 for s in fixed_image.GetSize()]
    initial.SetCenter(fixed_image.TransformContinuousIndexToPhysicalPoint(centre_index))

    # Shrink while the coarsest level keeps at least 16 voxels along the shortest axis.
    shrink = [1]
    while min(fixed_image.GetSize()) // (shrink[0] * 2) >= 16 and len(shrink) < 3:
        shrink.insert(0, shrink[0] * 2)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # About 50k random samples per level: enough for a 6-parameter fit, fast on 240^3 volumes.
    voxels = [np.prod(fixed_image.GetSize()) / factor**3 for factor in shrink]
    method.SetMetricSamplingPercentagePerLevel([float(min(0.5, 5e4 / v)) for v in voxels], seed)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([float(s // 2) for s in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    try:
        transform = method.Execute(fixed_image, moving_image)
    except RuntimeError as error:
        raise DataError(
            f"{moving.path}: rigid registration onto {fixed.path} failed ({error})"
        ) from None
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(transform).GetNthTransform(0))
    parameters = np.array(euler.GetParameters())
    info = {
        "metric": "mattes_mutual_information",
        "final_metric_value": float(method.GetMetricValue()),
        "iterations": int(method.GetOptimizerIteration()),
        "stop": method.GetOptimizerStopConditionDescription(),
        "rotation_rad": [float(v) for v in parameters[:3]],
        "translation_mm_ras": [float(v) for v in parameters[3:] * np.array([-1.0, -1.0, 1.0])],
    }
    return transform, info


# --------------------------------------------------------------------------------------------
# 2-3. Brain mask and intensity normalisation


def has_zero_background(volume: np.ndarray) -> bool:
    """Skull-stripped data: a sizeable share of voxels is exactly zero."""
    return float(np.count_nonzero(volume == 0)) >= ZERO_BACKGROUND_FRACTION * volume.size


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


def normalise(
    volume: np.ndarray, mask: np.ndarray, percentiles: tuple[float, float] = (0.5, 99.5)
) -> tuple[np.ndarray, float, float]:
    """Clip to the given percentiles of the masked voxels and scale to [0, 1].

    Returns ``(array01, low, high)``; :func:`denormalise` with the same ``low, high`` maps back.
    Raises :class:`DataError` when the mask is empty or the window has zero width.
    """
    values = volume[mask]
    if values.size == 0:
        raise DataError("empty brain mask: no voxel to normalise on")
    low, high = (float(v) for v in np.percentile(values, percentiles))
    if not high > low:
        raise DataError(f"constant intensity {low:g} inside the brain mask")
    scaled = (volume.astype(np.float32) - np.float32(low)) / np.float32(high - low)
    return np.clip(scaled, 0.0, 1.0, out=scaled), low, high


def denormalise(array01: np.ndarray, low: float, high: float) -> np.ndarray:
    """Inverse of :func:`normalise` inside the window: [0, 1] -> [low, high]."""
    return np.asarray(array01, dtype=np.float32) * np.float32(high - low) + np.float32(low)


# --------------------------------------------------------------------------------------------
# 4. Slices: selection, geometry, forward and inverse


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
    return _resize(padded, geometry["image_size"])


def square_to_planes(
    squares: np.ndarray, geometry: dict[str, Any], *, fill: float = 0.0
) -> np.ndarray:
    """Inverse of :func:`planes_to_square`: (n, C, S, S) -> (n, C, H, W), ``fill`` outside the crop."""
    (r0, r1), (c0, c1) = geometry["crop"]
    (top, _), (left, _) = geometry["pad"]
    padded = _resize(squares, geometry["padded_size"])
    inner = padded[:, :, top : top + (r1 - r0), left : left + (c1 - c0)]
    height, width = geometry["plane_shape"]
    planes = np.full((*squares.shape[:2], height, width), fill, dtype=np.float32)
    planes[:, :, r0:r1, c0:c1] = inner
    return planes


def _resize(stack: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize of (n, C, h, w) to (n, C, size, size), antialiased when shrinking."""
    stack = np.require(
        stack, np.float32, ["C_CONTIGUOUS", "WRITEABLE"]
    )  # torch wants writable memory
    if stack.shape[-2:] == (size, size) or stack.shape[0] == 0:
        return stack
    resized = F.interpolate(
        torch.from_numpy(stack),
        size=(size, size),
        mode="bilinear",
        align_corners=False,
        antialias=True,
    )
    # The antialiasing filter is a convex combination: clip its float rounding to the input range.
    return resized.clamp_(float(stack.min()), float(stack.max())).numpy()


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
# One volume for inference, one subject for the cache


@dataclass
class PreparedVolume:
    """One volume processed as training did, for inference."""

    slices: np.ndarray  # (n, C, S, S) float32 in [0, 1]
    mask: np.ndarray  # (n, 1, S, S) bool
    slice_indices: np.ndarray  # (n,) axial indices in the canonical volume
    geometry: dict[str, Any]
    norm: dict[str, float]  # {"low": ..., "high": ...}


def prepare_volume(
    volume: Volume, data_config: DataConfig, *, all_slices: bool = True
) -> PreparedVolume:
    """Mask, normalise and slice one source volume (no target) exactly like :func:`prepare`.

    With ``all_slices`` every axial slice is returned, so that :func:`slices_to_volume` can
    rebuild the whole volume; otherwise only the slices with enough brain.
    """
    _check_not_constant(volume, "volume")
    mask = brain_mask(volume.data)
    data01, low, high = _normalise_named(volume, volume.data, mask, data_config.percentiles)
    if all_slices:
        indices = np.arange(volume.data.shape[2])
    else:
        indices = select_slices(mask, data_config.min_brain_fraction)
    geometry = plan_geometry(
        mask, data_config.image_size, reference=volume, context_slices=data_config.context_slices
    )
    return PreparedVolume(
        slices=volume_to_slices(data01, geometry, indices, data_config.context_slices),
        mask=volume_to_slices(mask.astype(np.float32), geometry, indices) >= 0.5,
        slice_indices=indices,
        geometry=geometry,
        norm={"low": low, "high": high},
    )


def prepare_subject(pair: SubjectPair, data_config: DataConfig) -> SubjectSlices:
    """Read, align, mask, normalise and slice one subject; :class:`DataError` names the file."""
    source = read_volume(pair.source)
    target = read_volume(pair.target)
    _check_not_constant(source, "source")
    _check_not_constant(target, "target")

    registration = None
    if data_config.register:
        transform, registration = register_rigid(target, source, seed=data_config.split_seed)
        source_data = resample_to(source, target, transform)
        say(
            f"{pair.subject}: rigid registration of {Path(pair.source).name} onto "
            f"{Path(pair.target).name}, final Mattes MI {registration['final_metric_value']:.4f}"
            f" after {registration['iterations']} iterations"
        )
    elif not same_grid(source, target):
        raise DataError(
            f"subject {pair.subject}: {pair.source} ({describe_grid(source)}) is not on the grid of "
            f"{pair.target} ({describe_grid(target)}); pass --register to register and resample"
        )
    else:
        source_data = source.data

    mask = brain_mask(source_data, target.data)
    source01, source_low, source_high = _normalise_named(
        source, source_data, mask, data_config.percentiles
    )
    target01, target_low, target_high = _normalise_named(
        target, target.data, mask, data_config.percentiles
    )
    indices = select_slices(mask, data_config.min_brain_fraction)
    if indices.size == 0:
        raise DataError(
            f"subject {pair.subject}: no axial slice of {pair.target} has "
            f"{data_config.min_brain_fraction:.0%} brain"
        )
    geometry = plan_geometry(
        mask, data_config.image_size, reference=target, context_slices=data_config.context_slices
    )
    geometry["registration"] = registration
    geometry["resampled"] = registration is not None
    record = SubjectRecord(
        subject=pair.subject,
        split="",  # decided once every subject is known, see prepare()
        source_file=str(pair.source),
        target_file=str(pair.target),
        slice_indices=[int(i) for i in indices],
        norm={
            "source": {"low": source_low, "high": source_high},
            "target": {"low": target_low, "high": target_high},
        },
        geometry=geometry,
        kind="volume",
    )
    return SubjectSlices(
        record=record,
        source=volume_to_slices(source01, geometry, indices, data_config.context_slices),
        target=volume_to_slices(target01, geometry, indices),
        mask=volume_to_slices(mask.astype(np.float32), geometry, indices) >= 0.5,
    )


def _check_not_constant(volume: Volume, role: str) -> None:
    if volume.data.size == 0 or float(np.ptp(volume.data)) == 0.0:
        value = float(volume.data.flat[0]) if volume.data.size else float("nan")
        raise DataError(f"{volume.path}: constant {role} volume (every voxel is {value:g})")


def _normalise_named(volume: Volume, data, mask, percentiles):
    try:
        return normalise(data, mask, percentiles)
    except DataError as error:
        raise DataError(f"{volume.path}: {error}") from None


# --------------------------------------------------------------------------------------------
# 5. Split, fingerprint, prepare


def split_subjects(
    subjects: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Deterministic subject-level split; with few subjects each split that can get one does.

    Priority is train, then test, then val: 1 subject -> train; 2 -> train + test; 3 -> one each
    (when the fractions are non-zero). The same ids and seed always give the same split.
    """
    ids = sorted(set(subjects))
    count = len(ids)
    n_test = int(round(count * test_fraction))
    n_val = int(round(count * val_fraction))
    if test_fraction > 0 and count >= 2:
        n_test = max(n_test, 1)
    if val_fraction > 0 and count >= 3:
        n_val = max(n_val, 1)
    while n_test + n_val > max(count - 1, 0) and n_val > 0:
        n_val -= 1
    while n_test + n_val > max(count - 1, 0) and n_test > 0:
        n_test -= 1
    order = [ids[i] for i in np.random.default_rng(seed).permutation(count)]
    return {
        "train": sorted(order[n_test + n_val :]),
        "val": sorted(order[n_test : n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


def slice_settings(data_config: DataConfig) -> dict[str, Any]:
    """The DataConfig fields that affect the cache, with contrast names made canonical."""
    settings = {name: getattr(data_config, name) for name in SLICE_FIELDS}
    settings["source"] = canonical_contrast(data_config.source)
    settings["target"] = canonical_contrast(data_config.target)
    settings["percentiles"] = [float(p) for p in data_config.percentiles]
    return settings


def fingerprint(paths: list[Path], data_config: DataConfig) -> str:
    """Hash of every input file's path, size and mtime, plus the settings that shape slices."""
    entries = []
    for path in sorted({Path(p) for p in paths}):
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for file in files:
            stat = file.stat()
            entries.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns])
    payload = {
        "version": PREPROCESS_VERSION,
        "files": entries,
        "settings": slice_settings(data_config),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def prepare(
    data_path: Path | str, data_config: DataConfig, cache_dir: Path | str, *, progress: bool = True
) -> Path:
    """Make (or reuse) a slice cache at ``cache_dir`` from raw data and return its path.

    ``data_path`` is a folder of subjects (NIfTI / DICOM, any layout of
    :mod:`mri2mri.data.discovery`), a CSV manifest, or a PNG-pair root
    ``root/{train,val,test}/{T1,T2}/NAME.png``. When ``cache_dir`` already holds a cache with
    the same fingerprint (same files, sizes, mtimes and slice settings) it is reused as is.
    Bad subjects are skipped with one warning line each; :class:`DataError` only when nothing
    usable remains. A failure never leaves a half-written cache.
    """
    from mri2mri.data import png  # png imports this module's helpers

    data_path, cache_dir = Path(data_path), Path(cache_dir)
    _check_cache_location(data_path, cache_dir)
    canonical_contrast(data_config.source), canonical_contrast(data_config.target)
    if png.is_png_pair_root(data_path):
        pairs = png.discover_image_pairs(data_path, data_config.source, data_config.target)
        files = [p for pair in pairs for p in (pair.source, pair.target)]
        key = fingerprint(files, data_config)
        if _reusable(cache_dir, key):
            return cache_dir
        return png.write_image_cache(
            pairs, data_config, cache_dir, fingerprint=key, progress=progress
        )

    discovery = discover_pairs(data_path, data_config.source, data_config.target)
    for problem in discovery.problems:
        warn(problem)
    if not discovery.pairs:
        detail = f"; first problem: {discovery.problems[0]}" if discovery.problems else ""
        raise DataError(
            f"{data_path}: no subject with both {data_config.source} and {data_config.target} "
            f"images found{detail}"
        )
    manifest = [data_path] if data_path.is_file() else []
    files = manifest + [p for pair in discovery.pairs for p in (pair.source, pair.target)]
    key = fingerprint(files, data_config)
    if _reusable(cache_dir, key):
        return cache_dir

    skipped = len(discovery.problems)
    kept: list[SubjectRecord] = []
    n_slices = 0
    from tqdm.auto import tqdm

    with CacheWriter(
        cache_dir, fingerprint=key, data_config=dataclasses.asdict(data_config)
    ) as writer:
        for pair in tqdm(discovery.pairs, desc="prepare", unit="subject", disable=not progress):
            try:
                item = prepare_subject(pair, data_config)
            except DataError as error:
                message = str(error)
                if not message.startswith(f"subject {pair.subject}"):
                    message = f"subject {pair.subject}: {message}"
                warn(f"{message}; skipped")
                skipped += 1
                continue
            writer.add(item)
            kept.append(item.record)
            n_slices += item.source.shape[0]
        if not kept:
            raise DataError(
                f"{data_path}: none of {len(discovery.pairs)} subjects could be used "
                f"(see the warnings above)"
            )
        split = split_subjects(
            [r.subject for r in kept],
            data_config.val_fraction,
            data_config.test_fraction,
            data_config.split_seed,
        )
        for record in kept:  # the writer holds these same records and writes them on commit
            record.split = next(name for name, ids in split.items() if record.subject in ids)
        path = writer.commit(split, data_config.split_seed)
    counts = ", ".join(f"{len(split[name])} {name}" for name in ("train", "val", "test"))
    say(f"prepared {len(kept)} subjects ({n_slices} slices; {counts}), skipped {skipped} -> {path}")
    return path


def ensure_cache(data_path: Path | str, data_config: DataConfig, cache_dir: Path | str) -> Path:
    """``data_path`` itself when it already is a slice cache, else :func:`prepare` into ``cache_dir``."""
    data_path = Path(data_path)
    if is_cache(data_path):
        cached = SliceCache(data_path).meta.get("data_config", {})
        for role in ("source", "target"):
            wanted = canonical_contrast(getattr(data_config, role))
            have = cached.get(role)
            if have and canonical_contrast(have) != wanted:
                warn(
                    f"{data_path}: cache was prepared with {role} {have}, not {wanted}; using it as is"
                )
        return data_path
    return prepare(data_path, data_config, cache_dir)


def _reusable(cache_dir: Path, key: str) -> bool:
    if not is_cache(cache_dir):
        return False
    try:
        same = SliceCache(cache_dir).fingerprint == key
    except DataError:
        return False
    if same:
        say(
            f"reusing the slice cache at {cache_dir}: inputs and settings unchanged (fingerprint {key[:12]})"
        )
    return same


def _check_cache_location(data_path: Path, cache_dir: Path) -> None:
    """Never let writing the cache delete the inputs or an unrelated folder."""
    data, cache = data_path.resolve(), cache_dir.resolve()
    if data == cache or cache in data.parents:
        raise DataError(
            f"{cache_dir}: the cache folder would contain the input data {data_path}; choose another"
        )
    if cache.exists() and not is_cache(cache) and (cache.is_file() or any(cache.iterdir())):
        raise DataError(f"{cache_dir}: exists and is not a slice cache; refusing to overwrite it")
