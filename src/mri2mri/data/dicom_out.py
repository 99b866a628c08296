"""Writing a synthetic volume as a DICOM MR series that viewers and PACS load.

One file per slice, written with pydicom. The series is new (new SeriesInstanceUID and
SOPInstanceUIDs) and says everywhere that it is synthetic: ImageType ``DERIVED\\SECONDARY``,
Synthetic Data (0008,001C) ``YES``, a SeriesDescription naming the synthesised contrast and
mri2mri, and a DerivationDescription naming the model.

Two cases:

* **A DICOM series in**: the output has the input's grid slice for slice. Each output slice
  takes the study and patient modules, the Frame of Reference and the geometry
  (ImagePositionPatient, ImageOrientationPatient, PixelSpacing, SliceThickness) of the input
  slice at the same position, and points at it in its Source Image Sequence.
* **A NIfTI volume in**: the geometry comes from the affine (the volume is first reoriented
  to L-P-S axes so that the slices are the usual axial ones), and the study, patient and Frame
  of Reference UIDs are new: a NIfTI file carries no patient identity. There is no Source
  Image Sequence, since there are no source DICOM instances to point at.

Pixels are unsigned 16-bit; RescaleSlope/RescaleIntercept map them back to the unit scale of
:mod:`mri2mri.predict` (0..1 = the training target window), so a value read through the
modality LUT is the NIfTI output's value to 1e-4.
"""

from __future__ import annotations

import datetime
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from nibabel.orientations import (
    apply_orientation,
    axcodes2ornt,
    inv_ornt_aff,
    io_orientation,
    ornt_transform,
)

from mri2mri.data.dicom_in import DICOM_SUFFIX
from mri2mri.errors import DataError, first_line

# Stored value = round(unit value * STORED_PER_UNIT): a slope of 1e-4 is exact in a DS string.
STORED_PER_UNIT = 10000
RESCALE_SLOPE = 1.0 / STORED_PER_UNIT
MR_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.4"
SLICE_PREFIX = "IM"  # the series' files are IM00001.dcm, IM00002.dcm, ...
# Patient space in DICOM is LPS, in NIfTI RAS: the first two axes change sign.
_RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
# Module attributes copied from the input series (patient, general study, patient study).
PATIENT_STUDY_KEYWORDS = (
    "PatientName", "PatientID", "IssuerOfPatientID", "PatientBirthDate", "PatientSex",
    "PatientAge", "PatientSize", "PatientWeight", "PatientIdentityRemoved",
    "DeidentificationMethod", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
    "AccessionNumber", "ReferringPhysicianName", "StudyDescription",
)  # fmt: skip


@dataclass(frozen=True)
class SeriesInfo:
    """What the written series says about itself."""

    target: str  # the synthesised contrast, e.g. "T2"
    source: str  # the input contrast, e.g. "T1"
    model: str  # the model file name and generator, for DerivationDescription
    software_version: str
    series_number: int = 9001  # high, so that it sorts after the scanner's own series


@dataclass(frozen=True)
class SliceGeometry:
    """Where one output slice lies in patient space (LPS millimetres)."""

    position: np.ndarray  # ImagePositionPatient of the first pixel
    orientation: np.ndarray  # row cosine (3) + column cosine (3)
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    thickness: float


def read_series_headers(folder: Path) -> list[Any]:
    """The headers (no pixel data) of every DICOM image file in ``folder``."""
    import pydicom

    headers = []
    for file in sorted(p for p in Path(folder).iterdir() if p.is_file() and not p.name.startswith(".")):
        try:
            dataset = pydicom.dcmread(str(file), stop_before_pixels=True, force=file.suffix.lower() == DICOM_SUFFIX)
        except Exception:  # the reader has already refused damaged .dcm files; others are ignored
            continue
        if "ImagePositionPatient" in dataset and "SOPInstanceUID" in dataset:
            headers.append(dataset)
    return headers


def geometry_from_affine(affine: np.ndarray, n_slices: int) -> list[SliceGeometry]:
    """Slice geometry of an (columns, rows, slices) array under a RAS ``affine``.

    The inverse of how :func:`mri2mri.data.io.read_dicom_series` builds its affine: array axis
    0 runs along the row cosine (one step = the column spacing), axis 1 along the column
    cosine, axis 2 from slice to slice.
    """
    lps = _RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    column_spacing, row_spacing, slice_spacing = np.linalg.norm(lps[:3, :3], axis=0)
    orientation = np.concatenate([lps[:3, 0] / column_spacing, lps[:3, 1] / row_spacing])
    return [
        SliceGeometry(position=(lps @ np.array([0.0, 0.0, k, 1.0]))[:3], orientation=orientation,
                      pixel_spacing=(float(row_spacing), float(column_spacing)),
                      thickness=float(slice_spacing))  # fmt: skip
        for k in range(n_slices)
    ]


def to_lps_axes(data: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient a volume so that its axes run to patient Left, Posterior and Superior.

    Slices along the last axis are then axial, and shown as radiologists expect (patient's
    right on the left of the screen, anterior at the top).
    """
    transform = ornt_transform(io_orientation(affine), axcodes2ornt(("L", "P", "S")))
    reoriented = apply_orientation(data, transform)
    new_affine = affine @ inv_ornt_aff(transform, data.shape)
    return np.ascontiguousarray(reoriented), new_affine


def match_source_slices(geometry: list[SliceGeometry], headers: list[Any], folder: Path) -> list[Any]:
    """The input header at the position of every output slice (the output is on its grid)."""
    positions = np.array([[float(v) for v in h.ImagePositionPatient] for h in headers])
    tolerance = max(0.01, 0.25 * min(g.thickness for g in geometry)) if geometry else 0.01
    matched = []
    for k, slice_geometry in enumerate(geometry):
        distances = np.linalg.norm(positions - slice_geometry.position, axis=1)
        best = int(np.argmin(distances))
        if distances[best] > tolerance:
            raise DataError(
                f"{folder}: no input slice at the position of output slice {k} "
                f"({distances[best]:.3f} mm away); the series cannot be mirrored"
            )
        matched.append(headers[best])
    return matched


def write_dicom_series(
    folder: Path | str,
    data: np.ndarray,
    affine: np.ndarray,
    info: SeriesInfo,
    *,
    source_folder: Path | str | None = None,
    overwrite: bool = False,
) -> Path:
    """Write ``data`` (unit scale, on the grid of ``affine``) as a new MR series in ``folder``.

    With ``source_folder`` (the DICOM series the volume was synthesised from, whose grid
    ``data`` is on) every slice mirrors the input slice at its position; without it the
    geometry comes from ``affine`` and the study and patient are new. The series is written
    into a temporary folder and renamed into place: a failure leaves no partial series.
    """
    folder = Path(folder)
    data = np.asarray(data, dtype=np.float64)
    if data.ndim != 3:
        raise ValueError(f"expected a 3D volume, got shape {data.shape}")
    if _occupied(folder) and not overwrite:
        raise DataError(f"{folder}: exists; pass --overwrite to replace it")
    if source_folder is not None:
        headers = read_series_headers(Path(source_folder))
        if not headers:
            raise DataError(f"{source_folder}: no DICOM slices with a position to copy")
        geometry = geometry_from_affine(affine, data.shape[2])
        sources = match_source_slices(geometry, headers, Path(source_folder))
    else:
        data, affine = to_lps_axes(data, np.asarray(affine, dtype=np.float64))
        geometry = geometry_from_affine(affine, data.shape[2])
        sources = [None] * data.shape[2]
    datasets = _series_datasets(data, geometry, sources, info)
    return _save_atomically(folder, datasets, overwrite)


def _series_datasets(data: np.ndarray, geometry: list[SliceGeometry], sources: list[Any],
                     info: SeriesInfo) -> list[Any]:  # fmt: skip
    """One pydicom dataset per slice; shared UIDs made once for the whole series."""
    from pydicom.uid import generate_uid

    now = datetime.datetime.now()
    shared = {
        "SeriesInstanceUID": generate_uid(),
        "StudyInstanceUID": generate_uid(),  # replaced by the input's when there is one
        "FrameOfReferenceUID": generate_uid(),
        "PatientID": "mri2mri-" + generate_uid()[-12:],
        "date": now.strftime("%Y%m%d"),
        "time": now.strftime("%H%M%S"),
    }
    return [
        _slice_dataset(np.asarray(data[:, :, k]).T, k, geometry[k], sources[k], info, shared)
        for k in range(data.shape[2])
    ]


def _slice_dataset(plane: np.ndarray, k: int, geometry: SliceGeometry, source: Any,
                   info: SeriesInfo, shared: dict[str, str]) -> Any:  # fmt: skip
    """The dataset of one slice; ``plane`` is (rows, columns) on the unit scale."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, ExplicitVRLittleEndian, generate_uid

    sop_uid = generate_uid()
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = MR_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = MR_IMAGE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SyntheticData = "YES"
    ds.InstanceCreationDate, ds.InstanceCreationTime = shared["date"], shared["time"]
    ds.ContentDate, ds.ContentTime = shared["date"], shared["time"]
    ds.SeriesDate, ds.SeriesTime = shared["date"], shared["time"]
    _set_patient_and_study(ds, source, shared)
    _set_series(ds, k, info, shared)
    _set_geometry(ds, geometry, source)
    _set_pixels(ds, plane)
    return ds


def _set_patient_and_study(ds: Any, source: Any, shared: dict[str, str]) -> None:
    """Patient and study: the input's when there is one, else a new anonymous study."""
    if source is not None:
        for keyword in PATIENT_STUDY_KEYWORDS:
            if keyword in source:
                setattr(ds, keyword, source.data_element(keyword).value)
        ds.FrameOfReferenceUID = source.get("FrameOfReferenceUID", shared["FrameOfReferenceUID"])
    else:
        ds.PatientName = "SYNTHETIC^MRI2MRI"
        ds.PatientID = shared["PatientID"]
        ds.StudyInstanceUID = shared["StudyInstanceUID"]
        ds.StudyDate, ds.StudyTime = shared["date"], shared["time"]
        ds.FrameOfReferenceUID = shared["FrameOfReferenceUID"]
    for keyword, empty in (("PatientName", ""), ("PatientID", ""), ("PatientBirthDate", ""),
                           ("PatientSex", ""), ("StudyDate", ""), ("StudyTime", ""),
                           ("ReferringPhysicianName", ""), ("StudyID", ""), ("AccessionNumber", "")):  # fmt: skip
        if keyword not in ds:  # type 2: present, possibly empty
            setattr(ds, keyword, empty)
    if "StudyInstanceUID" not in ds:
        ds.StudyInstanceUID = shared["StudyInstanceUID"]
    ds.PositionReferenceIndicator = ""


def _set_series(ds: Any, k: int, info: SeriesInfo, shared: dict[str, str]) -> None:
    """Series and equipment: a new series made by this software."""
    ds.Modality = "MR"
    ds.SeriesInstanceUID = shared["SeriesInstanceUID"]
    ds.SeriesNumber = info.series_number
    ds.SeriesDescription = f"synthetic {info.target} (mri2mri)"[:64]
    ds.DerivationDescription = (
        f"synthetic {info.target} synthesised from {info.source} by mri2mri "
        f"{info.software_version}, model {info.model}; not acquired, not for diagnosis"
    )[:1024]
    ds.Manufacturer = "mri2mri"
    ds.SoftwareVersions = info.software_version
    ds.InstanceNumber = k + 1
    ds.ScanningSequence = "RM"  # research mode: no sequence was run
    ds.SequenceVariant = "NONE"
    for keyword in ("ScanOptions", "MRAcquisitionType", "EchoTime", "RepetitionTime", "EchoTrainLength"):
        setattr(ds, keyword, None)  # type 2 attributes with no meaningful value


def _set_geometry(ds: Any, geometry: SliceGeometry, source: Any) -> None:
    """Where the slice lies: the input slice's geometry (and a reference to it), else the affine's."""
    from pydicom.dataset import Dataset

    if source is not None:
        item = Dataset()
        item.ReferencedSOPClassUID = source.get("SOPClassUID", MR_IMAGE_STORAGE)
        item.ReferencedSOPInstanceUID = source.SOPInstanceUID
        ds.SourceImageSequence = [item]
        ds.ImagePositionPatient = source.ImagePositionPatient
        ds.ImageOrientationPatient = source.ImageOrientationPatient
        ds.PixelSpacing = source.PixelSpacing
        ds.SliceThickness = source.get("SliceThickness", _ds(geometry.thickness))
        if "SpacingBetweenSlices" in source:
            ds.SpacingBetweenSlices = source.SpacingBetweenSlices
    else:
        ds.ImagePositionPatient = [_ds(v) for v in geometry.position]
        ds.ImageOrientationPatient = [_ds(v) for v in geometry.orientation]
        ds.PixelSpacing = [_ds(v) for v in geometry.pixel_spacing]
        ds.SliceThickness = _ds(geometry.thickness)
    position = np.array([float(v) for v in ds.ImagePositionPatient])
    orientation = np.array([float(v) for v in ds.ImageOrientationPatient])
    ds.SliceLocation = _ds(float(position @ np.cross(orientation[:3], orientation[3:])))


def _set_pixels(ds: Any, plane: np.ndarray) -> None:
    """Pixels: unsigned 16-bit, the modality LUT maps them to the unit scale."""
    stored = np.round(np.clip(plane, 0.0, None) * STORED_PER_UNIT)
    stored = np.clip(stored, 0, np.iinfo(np.uint16).max).astype(np.uint16)
    ds.Rows, ds.Columns = stored.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept = "0"
    ds.RescaleSlope = _ds(RESCALE_SLOPE)
    ds.RescaleType = "US"  # unspecified: the unit scale of the training target window
    ds.WindowCenter, ds.WindowWidth = "0.5", "1"
    ds.LossyImageCompression = "00"
    ds.PixelData = np.ascontiguousarray(stored).astype("<u2").tobytes()


def slice_file_name(number: int) -> str:
    """The file of the ``number``-th slice (from 1) of a series this program writes."""
    return f"{SLICE_PREFIX}{number:05d}{DICOM_SUFFIX}"


def holds_only_written_series(folder: Path) -> bool:
    """Whether ``folder`` is empty or holds only a series this program wrote."""
    return all(p.is_file() and p.name.startswith(SLICE_PREFIX) and p.suffix == DICOM_SUFFIX
               for p in folder.iterdir())  # fmt: skip


def _ds(value: float) -> str:
    """A decimal string (VR DS) of at most 16 characters."""
    value = float(value)
    if value == 0:
        return "0"
    for digits in range(10, 0, -1):
        text = f"{value:.{digits}g}"
        if len(text) <= 16:
            return text
    return f"{value:.6e}"


def _occupied(folder: Path) -> bool:
    """``folder`` exists and is not an empty folder."""
    return folder.exists() and not (folder.is_dir() and not any(folder.iterdir()))


def _save_atomically(folder: Path, datasets: list[Any], overwrite: bool) -> Path:
    """Write every slice into a temporary sibling folder, then rename it to ``folder``."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        for number, ds in enumerate(datasets, start=1):
            ds.save_as(tmp / slice_file_name(number), enforce_file_format=True)
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()  # an empty folder made for the series
        if folder.exists():
            if not overwrite:
                raise DataError(f"{folder}: exists; pass --overwrite to replace it")
            old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
            os.replace(folder, old / folder.name)
            os.replace(tmp, folder)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, folder)
    except OSError as error:
        shutil.rmtree(tmp, ignore_errors=True)
        raise DataError(f"{folder}: could not write the DICOM series ({first_line(error)})") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return folder
