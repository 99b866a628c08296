"""The in-memory volume every reader returns: canonical RAS data plus what undoes the reorientation.

Every volume comes back from :func:`mri2mri.data.io.read_volume` in the closest canonical
orientation (RAS+: the first array axis runs to the patient's Right, the second to Anterior, the
third to Superior), whatever the orientation code of its file, so that "axial slice" always means
``data[:, :, k]``. It keeps the file's own affine and shape so that results can be put back on the
grid of the file they came from (:meth:`Volume.to_original`).
"""

from __future__ import annotations

from dataclasses import dataclass

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from mri2mri.errors import DataError

CANONICAL_CODES = ("R", "A", "S")


@dataclass
class Volume:
    """A 3D scalar volume in canonical RAS orientation, plus what is needed to undo that.

    ``data`` is float32 of shape ``(I, J, K)``; ``affine`` maps canonical voxel indices to RAS
    millimetres. ``original_affine`` / ``original_shape`` / ``original_orientation`` describe the
    array as stored in the file.
    """

    data: np.ndarray
    affine: np.ndarray
    original_affine: np.ndarray
    original_shape: tuple[int, int, int]
    original_orientation: tuple[str, str, str]
    path: str = ""

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in millimetres along the canonical axes."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))

    def to_original(self, array: np.ndarray) -> np.ndarray:
        """Map an array on the canonical grid back to the file's own axis order and directions."""
        return canonical_to_original(array, self.original_affine)


def canonical_volume(data: np.ndarray, affine: np.ndarray, path) -> Volume:
    """The :class:`Volume` of an array as stored in a file under its RAS ``affine``: reoriented
    to canonical RAS (what a reader of a new format calls last)."""
    image = nib.Nifti1Image(data, affine)
    canonical = nib.as_closest_canonical(image)
    canonical_data = np.asarray(canonical.dataobj, dtype=np.float32)
    return checked_volume(canonical_data, canonical.affine, affine, data.shape, path)


def checked_volume(data, affine, original_affine, original_shape, path) -> Volume:
    """A :class:`Volume` of canonical ``data``; DataError naming ``path`` for NaN or infinity."""
    finite = np.isfinite(data)
    if not finite.all():
        bad = int(data.size - finite.sum())
        raise DataError(f"{path}: {bad} NaN or infinite voxels")
    original_affine = np.asarray(original_affine, dtype=np.float64)
    return Volume(
        data=np.ascontiguousarray(data, dtype=np.float32),
        affine=np.asarray(affine, dtype=np.float64),
        original_affine=original_affine,
        original_shape=tuple(int(s) for s in original_shape[:3]),
        original_orientation=tuple(nib.aff2axcodes(original_affine)),
        path=str(path),
    )


def canonical_to_original(array: np.ndarray, original_affine: np.ndarray) -> np.ndarray:
    """Reorder and flip the axes of a canonical (RAS) array back to a file's own orientation."""
    transform = ornt_transform(axcodes2ornt(CANONICAL_CODES), io_orientation(original_affine))
    return np.ascontiguousarray(apply_orientation(array, transform))
