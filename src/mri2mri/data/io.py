"""Reading and writing images: NIfTI, DICOM series, PNG and TIFF behind one small interface.

Which files are which, and their readers and writers, is the table of
:mod:`mri2mri.data.formats`; the readers live beside their format (:mod:`~mri2mri.data.nifti`,
:mod:`~mri2mri.data.dicom_in`, :mod:`~mri2mri.data.images`). Every volume comes back as a
:class:`~mri2mri.data.volume.Volume` in the closest canonical orientation (RAS+), whatever the
orientation code of its header, so that "axial slice" always means ``data[:, :, k]``; it keeps
its original affine and shape so that results can be put back on the grid of the file they came
from (:meth:`Volume.to_original`). This module gathers those names and checks, before any work,
that an output can be written.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from mri2mri.data.dicom_in import SPACING_TOLERANCE, read_dicom_series
from mri2mri.data.formats import (
    IMAGE_SUFFIXES,
    NIFTI_SUFFIXES,
    is_image_2d,
    is_nifti,
    is_volume_file,
    read_volume,
)
from mri2mri.data.images import ImageWarning, read_image_2d
from mri2mri.data.nifti import MAX_VOLUME_BYTES, check_claimed_size
from mri2mri.data.volume import CANONICAL_CODES, Volume, canonical_to_original
from mri2mri.errors import DataError

__all__ = [
    "CANONICAL_CODES", "IMAGE_SUFFIXES", "MAX_VOLUME_BYTES", "NIFTI_SUFFIXES", "SPACING_TOLERANCE",
    "ImageWarning", "Volume", "canonical_to_original", "check_claimed_size", "check_writable_folder",
    "check_writable_output", "default_dir_mode", "is_image_2d", "is_nifti", "is_volume_file",
    "read_dicom_series", "read_image_2d", "read_volume",
]  # fmt: skip


# --------------------------------------------------------------------------------------------
# Writing files whole


def default_dir_mode() -> int:
    """The permissions ``os.mkdir`` would give a new folder (0o777 less the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def check_writable_output(path: Path | str, what: str = "output") -> None:
    """Refuse, before any work, an output file that cannot be created: its nearest existing
    ancestor must be a folder this process may write into (not a file, not ``/proc``)."""
    path = Path(path)
    if path.is_dir():
        raise DataError(f"{path}: is a folder; the {what} must be a file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    check_writable_folder(parent, what, target=path)


def check_writable_folder(folder: Path | str, what: str = "output", *, target: Path | None = None) -> None:
    """Refuse a folder that cannot receive new files (a file, or a folder this process may not
    write into, such as one under ``/proc``), naming ``target`` (default: the folder)."""
    folder = Path(folder)
    target = target or folder
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise DataError(f"{target}: cannot write the {what}: {probe} is not a folder")
    try:
        handle, name = tempfile.mkstemp(prefix=".write-check-", dir=probe)
    except OSError as error:
        reason = error.strerror or type(error).__name__
        raise DataError(f"{target}: cannot write the {what} in {probe} ({reason})") from None
    os.close(handle)
    os.unlink(name)
