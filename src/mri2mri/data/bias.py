"""N4 bias-field correction of a source image (Tustison et al., IEEE TMI 2010), through SimpleITK.

A receive coil's sensitivity makes the same tissue brighter near it and darker far from it: a
smooth, multiplicative field that differs from scanner to scanner. A network trained on two sites
reads that field as tissue contrast; on a third site's T1 (BraTS-GLI-00001-000, whose centre is
darker than its rim) it painted oedema-bright T2 over normal deep grey matter. Dividing the field
out before the intensity window is a standard early step of MRI pipelines (ANTs'
``N4BiasFieldCorrection`` is the reference implementation) and removes that difference at its
source; the training augmentation's random bias field only teaches tolerance of fields the size
it draws.

The field is fitted where the brain mask is and the image is positive, on a copy shrunk by
:data:`SHRINK` (the usual speed-up: the field is smooth, and a 240 x 240 x 155 volume then takes
about 5 s), and divided out of the full-resolution image. The module never imports PyTorch:
prediction from an ONNX file runs it too (:mod:`mri2mri.data.geometry`).
"""

from __future__ import annotations

import numpy as np

# Settings of the N4 fit. They are fixed, not options: a checkpoint records only that N4 ran, and
# prediction must repeat exactly the correction training saw.
SHRINK = 4  # fit on every 4th voxel along each axis
LEVELS = 4  # B-spline fitting levels (the control-point grid doubles at each)
ITERATIONS = 50  # per level
CONVERGENCE = 1e-3


def n4_correct(data: np.ndarray, mask: np.ndarray, spacing: tuple[float, ...] | None = None) -> np.ndarray:
    """``data`` (2D or 3D) divided by the N4 bias field fitted inside ``mask``, as float32.

    ``spacing`` is the voxel size in mm along ``data``'s axes (1 mm when not given). Voxels
    outside the mask are divided by the same smooth field, so the image stays continuous; an
    image whose mask holds too few positive voxels to fit a field is returned unchanged.
    """
    import SimpleITK as sitk

    data = np.asarray(data, dtype=np.float32)
    fit_mask = np.asarray(mask, dtype=bool) & (data > 0)
    shrink = SHRINK if min(data.shape) >= 8 * SHRINK else 1
    if int(fit_mask.sum()) < 64 * shrink**data.ndim:
        return data.copy()
    # SimpleITK indexes arrays (z, y, x): reverse the axes so that spacing[i] belongs to axis i.
    image = sitk.GetImageFromArray(data.T.copy())
    image.SetSpacing(tuple(float(s) for s in (spacing or (1.0,) * data.ndim)))
    region = sitk.GetImageFromArray(fit_mask.T.astype(np.uint8))
    region.CopyInformation(image)
    small, small_region = sitk.Shrink(image, [shrink] * data.ndim), sitk.Shrink(region, [shrink] * data.ndim)
    n4 = sitk.N4BiasFieldCorrectionImageFilter()
    n4.SetMaximumNumberOfIterations([ITERATIONS] * LEVELS)
    n4.SetConvergenceThreshold(CONVERGENCE)
    n4.Execute(small, small_region)
    log_field = sitk.GetArrayFromImage(n4.GetLogBiasFieldAsImage(image)).T
    return (data / np.exp(log_field)).astype(np.float32)
