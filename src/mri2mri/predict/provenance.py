"""Recognising a synthetic input: an image this program (or another) marked as synthetic.

A synthetic image fed back as a source gives a synthetic image of a synthetic image, and the
contrast check cannot tell (it looks like the contrast it was made to look like). The marks
read here are the ones :mod:`mri2mri.predict.outputs` and :mod:`mri2mri.data.dicom_out`
write: the NIfTI ``descrip`` and JSON provenance extension, and DICOM Synthetic Data
(0008,001C) ``YES``, which other tools set too.
"""

from __future__ import annotations

import json
from pathlib import Path

# How the NIfTI descrip of every output of ``predict`` begins (ModelInfo.description and the
# uncertainty map's).
SYNTHETIC_DESCRIPS = ("mri2mri synthetic", "mri2mri uncertainty")
NIFTI_JSON_EXTENSION = 6  # the code of a JSON comment extension


def synthetic_marker(path: Path) -> str | None:
    """Why ``path`` (a NIfTI file or a DICOM series folder) is synthetic, in a few words naming
    the mark, or None when it carries none. An unreadable file is None: reading it for the
    prediction reports what is wrong with it."""
    path = Path(path)
    if path.is_dir():
        return _dicom_marker(path)
    if path.name.lower().endswith((".nii", ".nii.gz")):
        return _nifti_marker(path)
    return None


def _nifti_marker(path: Path) -> str | None:
    import nibabel as nib

    try:
        header = nib.load(str(path)).header
        descrip = bytes(header["descrip"]).split(b"\0")[0].decode("ascii", "replace").strip()
        extensions = list(header.extensions)
    except Exception:  # noqa: BLE001 - any unreadable header: the reader says why later
        return None
    if descrip.startswith(SYNTHETIC_DESCRIPS):
        return f"its NIfTI header says {descrip!r}"
    for extension in extensions:
        if extension.get_code() != NIFTI_JSON_EXTENSION:
            continue
        try:
            provenance = json.loads(extension.get_content())
        except ValueError:
            continue
        if isinstance(provenance, dict) and provenance.get("synthetic") is True:
            return f"its NIfTI provenance says it is synthetic ({provenance.get('software', 'unknown software')})"
    return None


def _dicom_marker(folder: Path) -> str | None:
    """The Synthetic Data attribute of the first DICOM image in ``folder``: one series shares it."""
    import pydicom

    for file in sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            dataset = pydicom.dcmread(str(file), stop_before_pixels=True, force=file.suffix.lower() == ".dcm")
        except Exception:  # noqa: BLE001 - not DICOM (a README...): the reader ignores it too
            continue
        if "SOPClassUID" not in dataset and "ImagePositionPatient" not in dataset:
            continue
        if str(dataset.get("SyntheticData", "")).upper() == "YES":
            return "its DICOM Synthetic Data (0008,001C) is YES"
        return None
    return None
