"""Synthesis: a prepared input through the model in batches, and the result back on the input's grid."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np

from mri2mri import console, portable
from mri2mri.data.geometry import (
    brain_mask,
    has_zero_background,
    slices_to_volume,
    square_to_planes,
)
from mri2mri.data.io import read_image_2d, read_volume
from mri2mri.data.resolution import back_onto, in_plane_grid, needs_resampling
from mri2mri.errors import ConfigError, DataError
from mri2mri.predict.model import ContrastWarning, ModelInfo, Runner


def synthesise(run: Runner, prepared: portable.PreparedInput, batch_size: int, tta_passes: int = 1) -> np.ndarray:
    """(n, 1, S, S) predictions in [0, 1]; slices without brain are not run and stay 0. With
    ``tta_passes`` > 1 each is the mean of that many test-time passes (:func:`tta_mean`)."""
    return synthesise_maps(run, prepared, batch_size, tta_passes)[0]


def synthesise_maps(run: Runner, prepared: portable.PreparedInput, batch_size: int, tta_passes: int = 1,
                    uncertainty_passes: int = 0) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """``(prediction, spread)``, both (n, 1, S, S): :func:`synthesise`'s prediction and, with
    ``uncertainty_passes``, the voxelwise std over that many test-time passes (None without),
    from one run of the passes (:func:`~mri2mri.uncertainty.tta_mean_std`)."""
    from mri2mri.uncertainty import tta_mean_std

    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    shape = (prepared.slices.shape[0], 1, *prepared.slices.shape[2:])
    out = np.zeros(shape, dtype=np.float32)
    spread = np.zeros(shape, dtype=np.float32) if uncertainty_passes else None
    rows = np.flatnonzero(prepared.mask.reshape(prepared.mask.shape[0], -1).any(axis=1))
    for start in range(0, rows.size, batch_size):
        chunk = rows[start : start + batch_size]
        batch = prepared.slices[chunk] * 2.0 - 1.0  # [0, 1] -> the model's [-1, 1]
        if tta_passes > 1 or spread is not None:
            prediction, std = tta_mean_std(run, batch, tta_passes, uncertainty_passes)
            if spread is not None:
                spread[chunk] = std
        else:
            prediction = run(batch)
        prediction = np.asarray(prediction, dtype=np.float32)[:, :1]
        portable.check_finite_output(prediction)  # np.clip below would keep NaN as NaN
        out[chunk] = (prediction + 1.0) * 0.5
    return np.clip(out, 0.0, 1.0, out=out), spread


def _check_channels(prepared: portable.PreparedInput, info: ModelInfo, path: Path) -> None:
    if prepared.slices.shape[1] != info.config.model.in_channels:
        raise DataError(f"{path}: prepared {prepared.slices.shape[1]} input channels, the model "
                        f"{info.name} expects {info.config.model.in_channels}")  # fmt: skip


# Said instead of the contrast check's question when the input still has its skull: the likelier cause.
NOT_STRIPPED = ("it is not skull-stripped (no zero background, so its mask holds skull and scalp); strip "
                "the skull first (e.g. with SynthStrip or HD-BET): mri2mri does not do it yet")  # fmt: skip


def _warn_contrast(prepared: portable.PreparedInput, info: ModelInfo, paths: Sequence[Path] = (),
                   stripped: Sequence[bool] = ()) -> None:  # fmt: skip
    """The contrast check; with several sources, once per input against that contrast's reference.
    An input that fails it and is not skull-stripped (``stripped``, per input) is told so, rather
    than asked whether it is the right contrast."""
    if len(info.sources) == 1:
        messages = [portable.check_source(prepared, info.source_reference)]
    else:
        per_source = prepared.slices.shape[1] // len(info.sources)
        references = (info.source_reference or {}).get("sources") or {}
        messages = [portable.check_source(prepared, references.get(contrast),
                                          channel=k * per_source + info.data.context_slices, name=str(path))
                    for k, (contrast, path) in enumerate(zip(info.sources, paths, strict=True))]  # fmt: skip
    for k, message in enumerate(messages):
        if message and k < len(stripped) and not stripped[k]:
            message = f"{message.rsplit('; ', 1)[0]}; {NOT_STRIPPED}"  # replaces "is it really a T1 image?"
        if message:
            console.warn(message, ContrastWarning, stacklevel=3)


def synthesise_uncertainty(
    run: Runner, prepared: portable.PreparedInput, batch_size: int, passes: int
) -> np.ndarray:
    """(n, 1, S, S) voxelwise std over ``passes`` test-time passes (:mod:`mri2mri.uncertainty`)."""
    return synthesise_maps(run, prepared, batch_size, 1, passes)[1]


def predict_volume(
    run: Runner, info: ModelInfo, path: Path, *, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)``: the synthetic volume on the grid of the file or DICOM folder ``path``."""
    data, _, affine = predict_volume_maps(run, info, path, batch_size=batch_size)
    return data, affine


@dataclass
class VolumePrediction:
    """A synthetic volume on its input file's grid, with what made it."""

    data: np.ndarray  # float32 in [0, 1], 0 outside the brain mask
    uncertainty: np.ndarray | None  # voxelwise std over test-time passes, when asked for
    affine: np.ndarray  # the input file's own affine
    mask: np.ndarray  # bool, the brain mask used, on the input file's grid
    preparation: list[dict[str, Any]]  # every preparation step and its parameters, in order


# Another source must cover at least this share of the first source's head once on its grid.
MIN_OVERLAP = 0.5


def predict_volume_maps(
    run: Runner, info: ModelInfo, path: Path, *, batch_size: int = 16, uncertainty_passes: int = 0,
    others: Sequence[Path] = (), register: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(data, uncertainty, affine)`` on the grid of ``path``: :func:`predict_volume_full`
    without its mask and provenance."""
    result = predict_volume_full(run, info, path, batch_size=batch_size, uncertainty_passes=uncertainty_passes,
                                 others=others, register=register)  # fmt: skip
    return result.data, result.uncertainty, result.affine


def predict_volume_full(
    run: Runner, info: ModelInfo, path: Path, *, batch_size: int = 16, uncertainty_passes: int = 0,
    others: Sequence[Path] = (), register: bool = False, tta_passes: int = 1,
) -> VolumePrediction:
    """The synthetic volume on the grid of ``path``, its brain mask, and the voxelwise
    uncertainty over ``uncertainty_passes`` test-time passes (None when that is 0). The volume
    is the mean of ``tta_passes`` test-time passes (1: the plain prediction).

    The first source is resampled in-plane to the spacing the model trained at when it has
    another (:mod:`mri2mri.data.resolution`; the result comes back onto its own grid). ``others``
    are the further inputs of a model of several sources, in its order: each is resampled onto
    that grid (rigidly registered first with ``register``, its final metric kept in the
    provenance) and must cover the first source's head (:data:`MIN_OVERLAP`); two inputs with
    identical voxels (one image saved twice) are a DataError naming both."""
    volume = read_volume(path)
    spacing = info.data.in_plane_spacing
    grid = in_plane_grid(volume, spacing) if needs_resampling(volume, spacing) else volume
    steps: list[dict[str, Any]] = [{"step": "read", "file": str(path), "shape": list(volume.original_shape),
                                    "spacing_mm": [round(s, 4) for s in volume.spacing]}]  # fmt: skip
    if grid is not volume:
        steps.append({"step": "in_plane_resampling", "spacing_mm": list(spacing), "shape": list(grid.data.shape),
                      "interpolation": "linear", "back": "linear onto the input grid; mask cut at 0.5"})  # fmt: skip
    volumes = [read_volume(other) for other in others]
    _refuse_identical(info, (path, *others), (volume, *volumes))
    aligned = []
    head = brain_mask(grid.data) if others else None
    for other, read in zip(others, volumes, strict=True):
        data, registration = _onto_grid(read, grid, register)
        aligned.append((data, str(other)))
        steps.append({"step": "onto_first_source_grid", "file": str(other),
                      "method": "rigid registration" if register else "resampled in scanner coordinates",
                      "registration": registration, "overlap": _check_overlap(data, head, other, path)})  # fmt: skip
    prepared = portable.prepare_volume(grid, info.data, aligned)
    steps.extend(_preparation_steps(prepared, info))
    _check_channels(prepared, info, path)
    _warn_contrast(prepared, info, (path, *others), [has_zero_background(v.data) for v in (volume, *volumes)])
    synthetic, spread = synthesise_maps(run, prepared, batch_size, tta_passes, uncertainty_passes)
    data, mask = _on_input_grid(synthetic, prepared, grid, volume, path)
    uncertainty = None if spread is None else _on_input_grid(spread, prepared, grid, volume, path)[0]
    return VolumePrediction(data=data, uncertainty=uncertainty, affine=volume.original_affine, mask=mask,
                            preparation=steps)  # fmt: skip


def _refuse_identical(info: ModelInfo, paths: Sequence[Path], volumes: Sequence) -> None:
    """DataError when two inputs of a model of several sources hold the same voxels: the
    model would see one contrast in two channels and invent the other."""
    for i, j in combinations(range(len(volumes)), 2):
        a, b = volumes[i], volumes[j]
        if a.data.shape == b.data.shape and np.array_equal(a.data, b.data):
            raise DataError(f"{paths[i]} and {paths[j]}: the {info.sources[i]} and {info.sources[j]} "
                            "inputs hold identical voxels; give each contrast its own image")  # fmt: skip


def _check_overlap(data: np.ndarray, head: np.ndarray, where: Path, first: Path) -> float:
    """The share of the first source's head (or brain, when skull-stripped:
    :func:`~mri2mri.data.geometry.brain_mask`) that another source covers on its grid; a
    :class:`DataError` below :data:`MIN_OVERLAP` (another study, or a registration astray)."""
    covered = float(np.count_nonzero(data[head])) / max(int(head.sum()), 1)
    if covered < MIN_OVERLAP:
        raise DataError(f"{where}: covers {covered:.0%} of the head of {first} on its grid; the contrasts "
                        "do not overlap (not one study, or the registration failed)")  # fmt: skip
    return round(covered, 4)


def _preparation_steps(prepared: portable.PreparedInput, info: ModelInfo) -> list[dict[str, Any]]:
    """The steps of :func:`~mri2mri.data.geometry.slice_volume` as run, for the provenance."""
    data = info.data
    return [
        {"step": "brain_extraction", **(prepared.extraction or {"method": "none"})},
        {"step": "bias_correction", "method": data.bias_correction},
        {"step": "intensity_window", "percentiles": list(data.percentiles), **prepared.norm},
        {"step": "slices", "image_size": data.image_size, "context_slices": data.context_slices,
         "crop": prepared.geometry["crop"], "padded_size": prepared.geometry["padded_size"]},
    ]


def _onto_grid(moving, reference, register: bool) -> tuple[np.ndarray, dict[str, Any] | None]:
    """``(data, registration)``: ``moving``'s canonical data on ``reference``'s grid: as is when
    the grids agree, else resampled in scanner coordinates, or after a rigid registration with
    ``register`` (whose report is returned)."""
    from mri2mri.data.preprocess import register_rigid, resample_to, same_grid

    if register:
        transform, registration = register_rigid(reference, moving)
        return resample_to(moving, reference, transform), registration
    if same_grid(moving, reference):
        return moving.data, None
    return resample_to(moving, reference), None


def _on_input_grid(
    slices: np.ndarray, prepared: portable.PreparedInput, grid, volume, path: Path
) -> tuple[np.ndarray, np.ndarray]:
    """``(data, mask)``: slices put back on the input file's own grid (from the in-plane
    ``grid`` they were made on, when it is another), zero outside its brain mask."""
    canonical = slices_to_volume(slices, prepared.geometry, prepared.slice_indices, original=False)
    canonical = portable.masked(canonical, prepared.full_mask)
    mask = prepared.full_mask
    if grid is not volume:
        canonical, mask = back_onto(canonical, mask, grid, volume)
    data = volume.to_original(canonical)
    if data.shape != tuple(volume.original_shape):  # a broken inverse must never be written
        raise RuntimeError(
            f"{path}: reassembled shape {data.shape} != input shape {volume.original_shape}"
        )
    return data.astype(np.float32), volume.to_original(mask)


def predict_image(run: Runner, info: ModelInfo, path: Path, *, batch_size: int = 16, tta_passes: int = 1) -> np.ndarray:
    """The synthetic (H, W) image in [0, 1] for a PNG/TIFF source image (the mean of
    ``tta_passes`` test-time passes)."""
    prepared = portable.prepare_image(read_image_2d(path), info.data, str(path))
    _check_channels(prepared, info, path)
    _warn_contrast(prepared, info)
    predicted = synthesise(run, prepared, batch_size, tta_passes)
    return portable.masked(square_to_planes(predicted, prepared.geometry)[0, 0], prepared.full_mask)
