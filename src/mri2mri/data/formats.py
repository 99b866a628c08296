"""Every input format the program reads, in one table: its kind, file endings, reader and writer.

Discovery (:mod:`mri2mri.data.discovery`, :mod:`mri2mri.data.png`), preparation
(:mod:`mri2mri.data.preprocess`) and prediction (:mod:`mri2mri.predict`) ask this table which
files are volumes or images and how to read them, so a new format is one entry here plus its
reader: a volume reader takes the path and returns a canonical
:class:`~mri2mri.data.volume.Volume` (:func:`~mri2mri.data.volume.canonical_volume` does the
reorientation), an image reader returns a float32 (H, W) array.

``write`` is the function that writes this format's output, where the program writes it:
a volume's NIfTI file (:func:`~mri2mri.data.nifti.write_nifti`), a DICOM series folder
(:func:`~mri2mri.data.dicom_out.write_dicom_series`), a 16-bit PNG or TIFF
(:func:`~mri2mri.data.images.write_image_16bit`). A format without one is read only; a
prediction from it is written as NIfTI.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mri2mri.data.dicom_in import DICOM_SUFFIX, read_dicom_series
from mri2mri.data.dicom_out import write_dicom_series
from mri2mri.data.images import read_image_2d, write_image_16bit
from mri2mri.data.itk_image import read_itk_volume
from mri2mri.data.nifti import read_nifti, write_nifti
from mri2mri.data.volume import Volume
from mri2mri.errors import DataError


@dataclass(frozen=True)
class Format:
    """One input format."""

    name: str  # as messages name it
    kind: str  # "volume" (3D) or "image" (2D)
    suffixes: tuple[str, ...]  # lower-case file endings
    read: Callable[[Path], Any]  # a Volume for a volume, a float32 (H, W) array for an image
    write: Callable[..., Path] | None = None  # its output writer, where the program writes it
    folder: bool = False  # a folder of such files is one input (a DICOM series), not each file


NIFTI = Format("NIfTI", "volume", (".nii", ".nii.gz"), read_nifti, write_nifti)
DICOM = Format("DICOM", "volume", (DICOM_SUFFIX,), read_dicom_series, write_dicom_series, folder=True)
PNG = Format("PNG", "image", (".png",), read_image_2d, write_image_16bit)
TIFF = Format("TIFF", "image", (".tif", ".tiff"), read_image_2d, write_image_16bit)
ITK = Format("MetaImage/NRRD", "volume", (".mha", ".nrrd"), read_itk_volume)  # read only: NIfTI out
FORMATS: tuple[Format, ...] = (NIFTI, DICOM, PNG, TIFF, ITK)

NIFTI_SUFFIXES = NIFTI.suffixes
IMAGE_SUFFIXES = tuple(s for f in FORMATS if f.kind == "image" for s in f.suffixes)


def file_format(path: Path | str) -> Format | None:
    """The format of a single file named ``path`` by its ending (None for DICOM slices, which
    are read as a folder, and for anything unknown)."""
    name = str(path).lower()
    for candidate in FORMATS:
        if not candidate.folder and name.endswith(candidate.suffixes):
            return candidate
    return None


def is_nifti(path: Path | str) -> bool:
    return str(path).lower().endswith(NIFTI.suffixes)


def is_volume_file(path: Path | str) -> bool:
    """A file holding one whole volume (NIfTI, or any other volume format of the table)."""
    found = file_format(path)
    return found is not None and found.kind == "volume"


def is_image_2d(path: Path | str) -> bool:
    found = file_format(path)
    return found is not None and found.kind == "image"


def split_suffix(name: str, *, folders: bool = False) -> tuple[str, str]:
    """``("sub-01_T1", ".nii.gz")`` for ``sub-01_T1.nii.gz``; ``(name, "")`` when no format's
    ending matches (``folders``: the endings of folder formats' files, ``.dcm``, count too)."""
    lower = name.lower()
    for candidate in FORMATS:
        if candidate.folder and not folders:
            continue
        for suffix in sorted(candidate.suffixes, key=len, reverse=True):
            if lower.endswith(suffix):
                return name[: -len(suffix)], name[-len(suffix) :]
    return name, ""


def read_volume(path: Path | str) -> Volume:
    """Read a volume file or a folder holding one DICOM series as a canonical RAS :class:`Volume`.

    Raises :class:`DataError` (one line naming the file) for unreadable or truncated files,
    volumes that are not 3D, and volumes holding NaN or infinite values.
    """
    path = Path(path)
    if path.is_dir():
        return DICOM.read(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    found = file_format(path)
    if found is None or found.kind != "volume":
        files = " or ".join(f"a {f.name} file ({' or '.join(f.suffixes)})"
                            for f in FORMATS if f.kind == "volume" and not f.folder)  # fmt: skip
        raise DataError(f"{path}: not {files} or a DICOM folder")
    return found.read(path)
