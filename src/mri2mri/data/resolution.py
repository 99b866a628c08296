"""The in-plane resolution the network saw in training, for a volume acquired at another.

A model learns textures at the pixel size of its training slices (1 mm for the real patients);
a raw clinical T1 has 0.72 mm pixels, a T2 0.51 mm. Prediction therefore resamples the first
source (and the sources on its grid) in-plane to the spacing recorded in the model
(``DataConfig.in_plane_spacing``, from its cache), runs the network there, and puts the result
back onto the first source's own grid (:func:`back_onto`). The slice axis is left alone: the
model works slice by slice, so a 3-5 mm slice stays one slice, and the output keeps the input's
thick slices (their partial-volume blur included; nothing between them is invented).

SimpleITK, never PyTorch: the ONNX route runs this too.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from mri2mri.data.volume import Volume

# Spacings within this relative difference count as equal: no resampling, the volume as it is.
TOLERANCE = 0.02


def needs_resampling(volume: Volume, spacing: Sequence[float] | None) -> bool:
    """True when the model recorded an in-plane spacing and ``volume``'s differs from it."""
    if spacing is None:
        return False
    return any(abs(have - want) > TOLERANCE * want for have, want in zip(volume.spacing[:2], spacing, strict=True))


def in_plane_grid(volume: Volume, spacing: Sequence[float]) -> Volume:
    """``volume`` resampled (linear) in-plane to ``spacing`` mm (canonical R and A axes), its
    slices kept: the same field of view (the outer edges of its first and last voxels), the same
    slice positions."""
    from mri2mri.data.preprocess import resample_to

    affine = np.array(volume.affine, dtype=np.float64)
    shape = list(volume.data.shape)
    for axis in (0, 1):
        old, new = volume.spacing[axis], float(spacing[axis])
        shape[axis] = max(1, int(round(shape[axis] * old / new)))
        direction = affine[:3, axis] / old
        # The first voxel's centre moves from half an old voxel to half a new one inside the edge.
        affine[:3, 3] += direction * (new - old) / 2.0
        affine[:3, axis] = direction * new
    grid = Volume(data=np.zeros(shape, dtype=np.float32), affine=affine, original_affine=affine,
                  original_shape=tuple(shape), original_orientation=("R", "A", "S"), path=volume.path)  # fmt: skip
    grid.data = resample_to(volume, grid)
    return grid


def onto_grid(data: np.ndarray, grid: Volume, reference: Volume, *, mask: bool = False) -> np.ndarray:
    """``data`` on ``grid`` (canonical) resampled onto ``reference``'s canonical grid: linear, or,
    for a ``mask``, linear then cut at one half (the mask's own boundary, not a dilation)."""
    from mri2mri.data.preprocess import resample_to

    moving = Volume(data=np.asarray(data, dtype=np.float32), affine=grid.affine, original_affine=grid.affine,
                    original_shape=grid.data.shape, original_orientation=("R", "A", "S"), path=grid.path)  # fmt: skip
    resampled = resample_to(moving, reference)
    return resampled >= 0.5 if mask else resampled


def back_onto(canonical: np.ndarray, full_mask: np.ndarray, grid: Volume, volume: Volume) -> tuple[np.ndarray, np.ndarray]:
    """``(data, mask)``: a synthetic volume and its brain mask on ``grid`` put back onto
    ``volume``'s canonical grid, the data zero outside the mask."""
    mask = onto_grid(full_mask.astype(np.float32), grid, volume, mask=True)
    data = onto_grid(canonical, grid, volume)
    return np.where(mask, data, np.float32(0.0)).astype(np.float32), mask
