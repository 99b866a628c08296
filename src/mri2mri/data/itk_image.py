"""MetaImage (``.mha``) and NRRD (``.nrrd``) volumes, read with SimpleITK.

ITK keeps its geometry in LPS millimetres (origin, spacing, direction cosines) and its array in
(z, y, x) order; NIfTI and this program use RAS and (x, y, z). The reader converts both, so a
volume saved as ``.mha`` and as ``.nii.gz`` gives the same canonical :class:`Volume`. Single-file
formats only: a ``.mhd`` header keeps its voxels in a separate ``.raw`` file that a cache's
fingerprint would not see.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from mri2mri.data.volume import Volume, canonical_volume
from mri2mri.errors import DataError, first_line

# LPS (ITK) to RAS (NIfTI): the first two world axes change sign.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])


def read_itk_volume(path: Path) -> Volume:
    """A MetaImage or NRRD file as a canonical RAS :class:`Volume`; DataError naming the file for
    anything unreadable or not one 3D scalar volume."""
    import SimpleITK as sitk  # here, not at the top: training from a prepared cache never needs it

    try:
        image = sitk.ReadImage(str(path))
    except RuntimeError as error:  # SimpleITK reports every reading problem as RuntimeError
        raise DataError(f"{path}: unreadable {Path(path).suffix} image ({first_line(error)})") from None
    if image.GetDimension() != 3 or image.GetNumberOfComponentsPerPixel() != 1:
        raise DataError(
            f"{path}: {image.GetDimension()}D image with {image.GetNumberOfComponentsPerPixel()} "
            "component(s) per voxel; expected one 3D scalar volume"
        )
    data = np.transpose(sitk.GetArrayFromImage(image), (2, 1, 0)).astype(np.float32)  # (z,y,x) -> (x,y,z)
    direction = np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3)
    affine = np.eye(4)
    affine[:3, :3] = _LPS_TO_RAS @ direction @ np.diag(image.GetSpacing())
    affine[:3, 3] = _LPS_TO_RAS @ np.asarray(image.GetOrigin(), dtype=np.float64)
    return canonical_volume(data, affine, path)
