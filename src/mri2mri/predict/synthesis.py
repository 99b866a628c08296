"""Synthesis: a prepared input through the model in batches, and the result back on the input's grid."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import combinations
from pathlib import Path

import numpy as np

from mri2mri import console, portable
from mri2mri.data.geometry import has_zero_background, slices_to_volume, square_to_planes
from mri2mri.data.io import read_image_2d, read_volume
from mri2mri.errors import ConfigError, DataError
from mri2mri.predict.model import ContrastWarning, ModelInfo, Runner


def synthesise(run: Runner, prepared: portable.PreparedInput, batch_size: int) -> np.ndarray:
    """(n, 1, S, S) predictions in [0, 1]; slices without brain are not run and stay 0."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    out = np.zeros((prepared.slices.shape[0], 1, *prepared.slices.shape[2:]), dtype=np.float32)
    rows = np.flatnonzero(prepared.mask.reshape(prepared.mask.shape[0], -1).any(axis=1))
    for start in range(0, rows.size, batch_size):
        chunk = rows[start : start + batch_size]
        prediction = run(prepared.slices[chunk] * 2.0 - 1.0)  # [0, 1] -> the model's [-1, 1]
        prediction = np.asarray(prediction, dtype=np.float32)[:, :1]
        portable.check_finite_output(prediction)  # np.clip below would keep NaN as NaN
        out[chunk] = (prediction + 1.0) * 0.5
    return np.clip(out, 0.0, 1.0, out=out)


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
    from mri2mri.uncertainty import tta_std

    out = np.zeros((prepared.slices.shape[0], 1, *prepared.slices.shape[2:]), dtype=np.float32)
    rows = np.flatnonzero(prepared.mask.reshape(prepared.mask.shape[0], -1).any(axis=1))
    for start in range(0, rows.size, batch_size):
        chunk = rows[start : start + batch_size]
        out[chunk] = tta_std(run, prepared.slices[chunk] * 2.0 - 1.0, passes)
    return out


def predict_volume(
    run: Runner, info: ModelInfo, path: Path, *, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)``: the synthetic volume on the grid of the file or DICOM folder ``path``."""
    data, _, affine = predict_volume_maps(run, info, path, batch_size=batch_size)
    return data, affine


def predict_volume_maps(
    run: Runner, info: ModelInfo, path: Path, *, batch_size: int = 16, uncertainty_passes: int = 0,
    others: Sequence[Path] = (), register: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(data, uncertainty, affine)`` on the grid of ``path``; the voxelwise uncertainty over
    ``uncertainty_passes`` test-time passes, or None when that is 0.

    ``others`` are the further inputs of a model of several sources, in its order: each is
    resampled onto ``path``'s grid (rigidly registered to it first with ``register``); two
    inputs with identical voxels (one image saved twice) are a DataError naming both."""
    volume = read_volume(path)
    volumes = [read_volume(other) for other in others]
    _refuse_identical(info, (path, *others), (volume, *volumes))
    aligned = [(_onto_grid(read, volume, register), str(other)) for read, other in zip(volumes, others, strict=True)]
    prepared = portable.prepare_volume(volume, info.data, aligned)
    _check_channels(prepared, info, path)
    _warn_contrast(prepared, info, (path, *others), [has_zero_background(v.data) for v in (volume, *volumes)])
    data = _on_input_grid(synthesise(run, prepared, batch_size), prepared, volume, path)
    uncertainty = None
    if uncertainty_passes:
        spread = synthesise_uncertainty(run, prepared, batch_size, uncertainty_passes)
        uncertainty = _on_input_grid(spread, prepared, volume, path)
    return data, uncertainty, volume.original_affine


def _refuse_identical(info: ModelInfo, paths: Sequence[Path], volumes: Sequence) -> None:
    """DataError when two inputs of a model of several sources hold the same voxels: the
    model would see one contrast in two channels and invent the other."""
    for i, j in combinations(range(len(volumes)), 2):
        a, b = volumes[i], volumes[j]
        if a.data.shape == b.data.shape and np.array_equal(a.data, b.data):
            raise DataError(f"{paths[i]} and {paths[j]}: the {info.sources[i]} and {info.sources[j]} "
                            "inputs hold identical voxels; give each contrast its own image")  # fmt: skip


def _onto_grid(moving, reference, register: bool) -> np.ndarray:
    """``moving``'s canonical data on ``reference``'s grid: as is when the grids agree, else
    resampled in scanner coordinates, or after a rigid registration with ``register``."""
    from mri2mri.data.preprocess import register_rigid, resample_to, same_grid

    if register:
        transform, _ = register_rigid(reference, moving)
        return resample_to(moving, reference, transform)
    if same_grid(moving, reference):
        return moving.data
    return resample_to(moving, reference)


def _on_input_grid(slices: np.ndarray, prepared: portable.PreparedInput, volume, path: Path) -> np.ndarray:
    """Slices put back on the input file's own grid, zero outside its brain mask."""
    canonical = slices_to_volume(slices, prepared.geometry, prepared.slice_indices, original=False)
    canonical = portable.masked(canonical, prepared.full_mask)
    data = volume.to_original(canonical)
    if data.shape != tuple(volume.original_shape):  # a broken inverse must never be written
        raise RuntimeError(
            f"{path}: reassembled shape {data.shape} != input shape {volume.original_shape}"
        )
    return data.astype(np.float32)


def predict_image(run: Runner, info: ModelInfo, path: Path, *, batch_size: int = 16) -> np.ndarray:
    """The synthetic (H, W) image in [0, 1] for a PNG/TIFF source image."""
    prepared = portable.prepare_image(read_image_2d(path), info.data, str(path))
    _check_channels(prepared, info, path)
    _warn_contrast(prepared, info)
    predicted = synthesise(run, prepared, batch_size)
    return portable.masked(square_to_planes(predicted, prepared.geometry)[0, 0], prepared.full_mask)
