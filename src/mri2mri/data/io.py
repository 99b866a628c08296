"""Reading and writing images: NIfTI, DICOM series, PNG and TIFF behind one small interface.

Every volume comes back as a :class:`Volume` in the closest canonical orientation (RAS+: the
first array axis runs to the patient's Right, the second to Anterior, the third to Superior),
whatever the orientation code of its header, so that "axial slice" always means ``data[:, :, k]``.
The volume keeps its original affine and shape so that results can be put back on the grid of
the file they came from (:meth:`Volume.to_original`).

DICOM series are read with pydicom: slices are ordered by their position along the slice normal
(not by file name), RescaleSlope / RescaleIntercept are applied, and the patient-space (LPS)
geometry is converted to the RAS affine that NIfTI uses.
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.orientations import apply_orientation, axcodes2ornt, io_orientation, ornt_transform

from mri2mri.errors import DataError, first_line

NIFTI_SUFFIXES = (".nii", ".nii.gz")
IMAGE_SUFFIXES = (".png", ".tif", ".tiff")
CANONICAL_CODES = ("R", "A", "S")
# Patient space in DICOM is LPS, in NIfTI RAS: the first two axes change sign.
_LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])


class ImageWarning(UserWarning):
    """An input was usable but needed a silent-looking fix (for example RGB turned gray)."""


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


def is_nifti(path: Path) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_image_2d(path: Path) -> bool:
    return str(path).lower().endswith(IMAGE_SUFFIXES)


def read_volume(path: Path | str) -> Volume:
    """Read a NIfTI file or a folder holding one DICOM series as a canonical RAS :class:`Volume`.

    Raises :class:`DataError` (one line naming the file) for unreadable or truncated files,
    volumes that are not 3D, and volumes holding NaN or infinite values.
    """
    path = Path(path)
    if path.is_dir():
        return read_dicom_series(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if not is_nifti(path):
        raise DataError(f"{path}: not a NIfTI file (.nii or .nii.gz) or a DICOM folder")
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
    return _checked_volume(data, canonical.affine, image.affine, image.shape, path)


# A volume whose header claims more voxel bytes than this is refused before its data is read: a
# 512^3 float32 volume is 0.5 GiB, and an 86-byte file can claim terabytes.
MAX_VOLUME_BYTES = 2 * 1024**3


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


def _checked_volume(data, affine, original_affine, original_shape, path) -> Volume:
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


# --------------------------------------------------------------------------------------------
# DICOM


def read_dicom_series(folder: Path | str) -> Volume:
    """Read every DICOM slice of one series in ``folder`` as a canonical RAS :class:`Volume`.

    Files are ordered by ImagePositionPatient projected on the slice normal, so file names and
    their order do not matter; RescaleSlope and RescaleIntercept are applied per slice.

    A folder must hold exactly one series: slices of several SeriesInstanceUIDs are refused,
    naming each series and its slice count (guessing which one is meant could silently
    synthesise from the wrong scan; put each series in its own folder). Slices of different
    orientations, two slices at one position, and gaps or uneven spacing (beyond
    :data:`SPACING_TOLERANCE` of the median step) are refused too: stacking them would give a
    volume with the wrong geometry.
    """
    import pydicom  # imported here: only DICOM users pay for it

    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    slices = []
    for file in files:
        try:
            dataset = pydicom.dcmread(str(file), force=file.suffix.lower() == ".dcm")
        except Exception as error:
            if file.suffix.lower() == ".dcm":
                raise DataError(f"{file}: unreadable DICOM ({first_line(error)})") from None
            continue  # not a DICOM file (a README, a DICOMDIR listing...): ignore it
        if "PixelData" in dataset:
            slices.append((file, dataset))
        elif file.suffix.lower() == ".dcm" and "SOPClassUID" not in dataset:
            raise DataError(f"{file}: not a DICOM image (no SOPClassUID, no pixel data)")
    if not slices:
        raise DataError(f"{folder}: no DICOM slices found")
    _check_one_series(folder, slices)

    first = slices[0][1]
    try:
        orientation = np.array([float(v) for v in first.ImageOrientationPatient])
        row_cosine, column_cosine = orientation[:3], orientation[3:]
        normal = np.cross(row_cosine, column_cosine)
        positions = [np.array([float(v) for v in d.ImagePositionPatient]) for _, d in slices]
        row_spacing, column_spacing = (float(v) for v in first.PixelSpacing)
        orientations = [np.array([float(v) for v in d.ImageOrientationPatient]) for _, d in slices]
    except (AttributeError, ValueError, TypeError) as error:
        raise DataError(
            f"{folder}: DICOM slices lack position/orientation ({first_line(error)})"
        ) from None
    if not (row_spacing > 0 and column_spacing > 0) or not np.isfinite([row_spacing, column_spacing]).all():
        raise DataError(f"{folder}: DICOM PixelSpacing {row_spacing}, {column_spacing} is not positive")
    if not np.isfinite(np.linalg.norm(normal)) or np.linalg.norm(normal) < 0.5:
        raise DataError(f"{folder}: DICOM ImageOrientationPatient {list(orientation)} is degenerate")
    for (file, _), other in zip(slices, orientations, strict=True):
        if np.abs(other - orientation).max() > 1e-3:
            raise DataError(
                f"{file}: slice orientation {list(other)} differs from the series' {list(orientation)}"
            )

    order = np.argsort([float(p @ normal) for p in positions], kind="stable")
    _check_slice_spacing(folder, [float(positions[i] @ normal) for i in order], [slices[i][0] for i in order])
    planes = []
    for index in order:
        file, dataset = slices[index]
        try:
            pixels = dataset.pixel_array.astype(np.float32)
        except Exception as error:
            raise DataError(f"{file}: unreadable DICOM pixels ({first_line(error)})") from None
        if pixels.ndim != 2 or (planes and pixels.shape != planes[0].shape):
            raise DataError(f"{file}: slice of shape {pixels.shape} in a series of another shape")
        slope = float(getattr(dataset, "RescaleSlope", 1.0) or 1.0)
        intercept = float(getattr(dataset, "RescaleIntercept", 0.0) or 0.0)
        planes.append(pixels * slope + intercept)

    # Array axes: i = column (along the row cosine), j = row (along the column cosine), k = slice.
    data = np.stack(planes, axis=-1).transpose(1, 0, 2)
    sorted_positions = [positions[i] for i in order]
    if len(sorted_positions) > 1:
        slice_step = (sorted_positions[-1] - sorted_positions[0]) / (len(sorted_positions) - 1)
    else:
        slice_step = normal * float(getattr(first, "SliceThickness", 1.0) or 1.0)
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cosine * column_spacing
    affine_lps[:3, 1] = column_cosine * row_spacing
    affine_lps[:3, 2] = slice_step
    affine_lps[:3, 3] = sorted_positions[0]
    affine = _LPS_TO_RAS @ affine_lps

    image = nib.Nifti1Image(data, affine)
    canonical = nib.as_closest_canonical(image)
    canonical_data = np.asarray(canonical.dataobj, dtype=np.float32)
    return _checked_volume(canonical_data, canonical.affine, affine, data.shape, folder)


# Slice steps may differ from their median by this fraction before a series counts as uneven.
SPACING_TOLERANCE = 0.01


def _check_one_series(folder: Path, slices: list) -> None:
    """Refuse a folder holding slices of several series (SeriesInstanceUID), naming them."""
    counts: dict[str, int] = {}
    for _, dataset in slices:
        uid = str(getattr(dataset, "SeriesInstanceUID", "") or "")
        counts[uid] = counts.get(uid, 0) + 1
    if len(counts) > 1:
        listed = ", ".join(f"{uid or '(no SeriesInstanceUID)'} ({n} slices)" for uid, n in sorted(counts.items()))
        raise DataError(f"{folder}: {len(counts)} DICOM series in one folder: {listed}; put each series in its own folder")


def _check_slice_spacing(folder: Path, offsets: list[float], files: list[Path]) -> None:
    """Refuse duplicate slice positions, gaps and uneven spacing (sorted offsets along the normal)."""
    if len(offsets) < 2:
        return
    steps = np.diff(np.asarray(offsets))
    duplicate = np.flatnonzero(steps < 1e-3)
    if duplicate.size:
        index = int(duplicate[0])
        raise DataError(
            f"{folder}: {files[index].name} and {files[index + 1].name} lie at the same position "
            f"({offsets[index]:.3f} mm along the slice normal); one series has one slice per position"
        )
    median = float(np.median(steps))
    uneven = np.flatnonzero(np.abs(steps - median) > SPACING_TOLERANCE * median + 1e-3)
    if uneven.size:
        index = int(uneven[0])
        raise DataError(
            f"{folder}: slice spacing is not uniform: {steps[index]:.3f} mm between {files[index].name} "
            f"and {files[index + 1].name}, {median:.3f} mm elsewhere (a gap or missing slices)"
        )


# --------------------------------------------------------------------------------------------
# 2D images


def read_image_2d(path: Path | str) -> np.ndarray:
    """Read a PNG or TIFF (8- or 16-bit, or float) as a float32 2D array in its own units.

    RGB or RGBA images are converted to gray (ITU-R 601 luma) with an :class:`ImageWarning`.
    Raises :class:`DataError` naming the file for empty, unreadable or multi-page files.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    try:
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                raise DataError(f"{path}: multi-page image; give volumes as NIfTI or DICOM")
            image.load()
            mode = image.mode
            if mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                warnings.warn(f"{path}: {mode} image converted to gray", ImageWarning, stacklevel=2)
                array = np.asarray(image.convert("RGB"), dtype=np.float32)
                array = array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            else:
                array = np.asarray(image)
    except DataError:
        raise
    except Exception as error:  # a damaged file can fail anywhere inside Pillow's decoders
        raise DataError(f"{path}: unreadable image ({first_line(error)})") from None
    array = np.asarray(array)
    if array.dtype.byteorder == ">":  # 16-bit big-endian PNG modes
        array = array.astype(array.dtype.newbyteorder("="))
    array = array.astype(np.float32)
    if array.ndim != 2 or array.size == 0:
        raise DataError(f"{path}: image of shape {array.shape}; expected a 2D grayscale image")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: NaN or infinite pixels")
    return array
