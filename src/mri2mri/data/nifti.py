"""NIfTI files (``.nii``, ``.nii.gz``): the reader and the atomic writer, with nibabel."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from mri2mri.atomic import save_atomically
from mri2mri.data.volume import Volume, checked_volume
from mri2mri.errors import DataError, first_line

# A volume whose header claims more voxel bytes than this is refused before its data is read: a
# 512^3 float32 volume is 0.5 GiB, and an 86-byte file can claim terabytes.
MAX_VOLUME_BYTES = 2 * 1024**3


def read_nifti(path: Path) -> Volume:
    """A NIfTI file as a canonical RAS :class:`Volume`; DataError naming the file for anything
    unreadable, truncated, oversized or not 3D."""
    try:
        image = nib.load(str(path))
        check_claimed_size(image, path)
        image = _squeeze_to_3d(image, path)
        canonical = nib.as_closest_canonical(image)
        data = np.asarray(canonical.get_fdata(dtype=np.float32))
    except DataError:
        raise
    except Exception as error:  # nibabel raises many types for corrupt or truncated files
        raise DataError(
            f"{path}: unreadable NIfTI ({type(error).__name__}: {first_line(error)})"
        ) from None
    return checked_volume(data, canonical.affine, image.affine, image.shape, path)


def check_claimed_size(image: nib.Nifti1Image, path: Path, limit: int = MAX_VOLUME_BYTES) -> None:
    """Refuse a NIfTI whose header claims more data than ``limit`` bytes or, for an uncompressed
    file, more than the file holds, before any of that data is allocated."""
    header = image.header
    shape = tuple(int(s) for s in header.get_data_shape())
    itemsize = np.dtype(header.get_data_dtype()).itemsize
    claimed = int(np.prod(shape, dtype=object)) * itemsize
    if claimed > limit:
        raise DataError(
            f"{path}: header claims a {'x'.join(map(str, shape))} volume of {claimed / 1024**3:.1f} GiB, "
            f"more than the {limit / 1024**3:.0f} GiB limit; the file is damaged or not a single volume"
        )
    if not str(path).lower().endswith(".gz"):
        available = path.stat().st_size - int(header.get_data_offset())
        if claimed > available:
            raise DataError(
                f"{path}: truncated NIfTI (header claims {claimed} bytes of voxels, the file holds {max(available, 0)})"
            )


def _squeeze_to_3d(image: nib.Nifti1Image, path: Path) -> nib.Nifti1Image:
    shape = image.shape
    if len(shape) == 3:
        return image
    # A trailing axis of length one (x, y, z, 1) is still one volume.
    if len(shape) > 3 and all(s == 1 for s in shape[3:]):
        data = np.asarray(image.dataobj).reshape(shape[:3])
        return nib.Nifti1Image(data, image.affine, image.header)
    raise DataError(f"{path}: {len(shape)}D image of shape {tuple(shape)}; expected one 3D volume")


def write_nifti(path: Path | str, image: nib.Nifti1Image, *, overwrite: bool = True) -> Path:
    """``image`` saved whole to ``path`` (compressed when it ends in ``.gz``), never replacing a
    file that appeared meanwhile unless ``overwrite``."""
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    return save_atomically(Path(path), lambda tmp: nib.save(image, tmp), suffix=suffix, replace=overwrite)
