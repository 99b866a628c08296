"""Writing a prediction: NIfTI marked synthetic with its provenance, a DICOM series, a 16-bit
PNG/TIFF (:mod:`mri2mri.data.images`), and the checksum of the model that made it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from mri2mri import __version__
from mri2mri.atomic import file_sha256
from mri2mri.data.images import write_image_16bit
from mri2mri.data.nifti import write_nifti
from mri2mri.predict.model import ModelInfo

__all__ = ["INTENSITY_SCALE", "file_sha256", "write_image_16bit", "write_mask_nifti", "write_synthetic_dicom",
           "write_synthetic_nifti"]

INTENSITY_SCALE = "unit: 0..1 = target window (DataConfig.percentiles of target brain voxels)"


def write_synthetic_nifti(
    path: Path, data: np.ndarray, affine: np.ndarray, info: ModelInfo, *, source: Path,
    uncertainty_passes: int = 0, overwrite: bool = True, preparation: list[dict[str, Any]] | None = None,
) -> Path:
    """float32 NIfTI marked synthetic (descrip, cal range, JSON provenance extension), atomically
    (never replacing a file that appeared meanwhile unless ``overwrite``); ``preparation``, the
    steps that prepared the input, goes into the provenance."""
    import nibabel as nib

    image = nib.Nifti1Image(
        np.asarray(data, dtype=np.float32), np.asarray(affine, dtype=np.float64)
    )
    header = image.header
    header["descrip"] = (
        f"mri2mri uncertainty (std of {uncertainty_passes} passes), synthetic {info.data.target}"
        if uncertainty_passes else info.description()
    )[:79].encode("ascii", "replace")
    header["cal_min"], header["cal_max"] = 0.0, 1.0
    header.set_xyzt_units("mm", "sec")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    provenance = {
        "software": f"mri2mri {__version__}",
        "synthetic": True,
        "source_contrast": info.source_name,
        "target_contrast": info.data.target,
        "generator": info.config.model.generator,
        "model_file": info.name,
        "model_format": info.kind,
        "input": str(source),
        "intensity_scale": INTENSITY_SCALE,
        **({"map": "voxelwise standard deviation over test-time passes (flips and shifts)",
            "passes": uncertainty_passes} if uncertainty_passes else {}),  # fmt: skip
        **{k: v for k, v in info.provenance.items() if k not in ("format",)},
        **({"preparation": preparation} if preparation is not None else {}),
    }
    _add_provenance(image, provenance)
    return write_nifti(path, image, overwrite=overwrite)


def _add_provenance(image, provenance: dict[str, Any]) -> None:
    """The provenance as a JSON comment extension (NIfTI extension code 6)."""
    import nibabel as nib

    image.header.extensions.append(
        nib.nifti1.Nifti1Extension(6, json.dumps(provenance, default=str).encode("utf-8"))
    )


def write_mask_nifti(
    path: Path, mask: np.ndarray, affine: np.ndarray, info: ModelInfo, *, source: Path,
    preparation: list[dict[str, Any]], overwrite: bool = True,
) -> Path:
    """The brain mask a prediction used (uint8, 1 = brain) on the input's grid (``--save-mask``),
    with the same preparation provenance as the synthetic image."""
    import nibabel as nib

    image = nib.Nifti1Image(np.asarray(mask, dtype=np.uint8), np.asarray(affine, dtype=np.float64))
    image.header["descrip"] = f"mri2mri brain mask used for {info.name}"[:79].encode("ascii", "replace")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    _add_provenance(image, {"software": f"mri2mri {__version__}", "map": "brain mask (1 = brain)",
                            "model_file": info.name, "input": str(source), "preparation": preparation})  # fmt: skip
    return write_nifti(path, image, overwrite=overwrite)


def write_synthetic_dicom(
    folder: Path, data: np.ndarray, affine: np.ndarray, info: ModelInfo, *, source: Path,
    overwrite: bool = False,
) -> Path:
    """The synthetic volume as a new DICOM MR series in ``folder`` (:mod:`mri2mri.data.dicom_out`):
    mirroring the input series slice for slice when ``source`` is a DICOM folder."""
    from mri2mri.data.dicom_out import SeriesInfo, write_dicom_series

    passes = info.provenance.get("test_time_passes")  # predict --tta: said in DerivationDescription
    averaged = f", mean of {passes} test-time passes" if passes else ""
    series = SeriesInfo(target=info.data.target, source=info.source_name,
                        model=f"{info.name} ({info.config.model.generator}, {info.kind}{averaged})",
                        software_version=__version__)  # fmt: skip
    return write_dicom_series(folder, data, affine, series, overwrite=overwrite,
                              source_folder=source if Path(source).is_dir() else None)  # fmt: skip
