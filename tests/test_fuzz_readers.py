"""Property-based fuzzing of every reader: garbage in ends in the project's own one-line error.

Truncated, corrupted and mis-shaped NIfTI, PNG, TIFF and DICOM bytes must end in ``DataError``
(or read successfully as a valid image), never in another exception, a crash or a hang.
"""

from __future__ import annotations

import io
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from mri2mri.data.io import read_image_2d, read_volume
from mri2mri.errors import DataError

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _nifti_bytes(shape=(6, 5, 4), gz: bool = False) -> bytes:
    image = nib.Nifti1Image(np.arange(np.prod(shape), dtype=np.float32).reshape(shape), np.eye(4))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / ("v.nii.gz" if gz else "v.nii")
        nib.save(image, path)
        return path.read_bytes()


def _png_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint16).reshape(8, 8) * 1000).save(buffer, format="PNG")
    return buffer.getvalue()


def _tiff_bytes() -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.arange(64, dtype=np.uint8).reshape(8, 8)).save(buffer, format="TIFF")
    return buffer.getvalue()


def _dicom_bytes() -> bytes:
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = "1.2.840.10008.5.1.4.1.1.4"
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset("x.dcm", {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.Rows, ds.Columns = 4, 4
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation, ds.SamplesPerPixel = 0, 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.ImagePositionPatient = [0, 0, 0]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [1, 1]
    ds.PixelData = np.arange(16, dtype=np.uint16).tobytes()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


VALID = {
    "v.nii": _nifti_bytes(),
    "v.nii.gz": _nifti_bytes(gz=True),
    "x.png": _png_bytes(),
    "x.tif": _tiff_bytes(),
    "dicom/x.dcm": _dicom_bytes(),
}


def _mutations(data: bytes):
    """Truncations, overwritten spans and appended junk of a valid file."""
    return st.one_of(
        st.integers(0, len(data) - 1).map(lambda n: data[:n]),
        st.tuples(st.integers(0, len(data) - 1), st.binary(min_size=1, max_size=64)).map(
            lambda t: data[: t[0]] + t[1] + data[t[0] + len(t[1]) :]
        ),
        st.binary(min_size=0, max_size=512),
    )


def _read(name: str, folder: Path):
    path = folder / name
    if name.startswith("dicom/"):
        return read_volume(path.parent)
    if name.endswith((".png", ".tif")):
        return read_image_2d(path)
    return read_volume(path)


@pytest.mark.parametrize("name", sorted(VALID))
def test_each_valid_file_reads(name, tmp_path):
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    (tmp_path / name).write_bytes(VALID[name])
    assert _read(name, tmp_path) is not None


@pytest.mark.parametrize("name", sorted(VALID))
def test_damaged_files_end_in_a_one_line_data_error(name):
    @FUZZ
    @given(data=_mutations(VALID[name]))
    def check(data: bytes) -> None:
        with tempfile.TemporaryDirectory() as folder:
            path = Path(folder) / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
            try:
                _read(name, Path(folder))
            except DataError as error:
                message = str(error)
                assert "\n" not in message and folder in message
            except BaseException as error:  # anything else is a bug in our readers
                raise AssertionError(f"{name}: {type(error).__name__}: {error}") from error

    check()


@pytest.mark.parametrize("shape", [(4, 4), (3, 4, 5, 2), (2, 3, 4, 5, 6)])
def test_mis_shaped_nifti_is_refused(shape, tmp_path):
    path = tmp_path / "bad.nii.gz"
    nib.save(nib.Nifti1Image(np.ones(shape, dtype=np.float32), np.eye(4)), path)
    with pytest.raises(DataError, match="bad.nii.gz"):
        read_volume(path)
