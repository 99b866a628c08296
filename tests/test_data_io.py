"""Reading NIfTI (any orientation), DICOM series and 2D images; writing NIfTI atomically."""

from __future__ import annotations

import gzip
import random

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from mri2mri.data.io import (
    ImageWarning,
    read_dicom_series,
    read_image_2d,
    read_volume,
)
from mri2mri.errors import DataError


def _ras_volume(shape=(12, 14, 10)) -> np.ndarray:
    """A volume whose every voxel is distinct, so any wrong flip or permutation shows."""
    return np.arange(np.prod(shape), dtype=np.float32).reshape(shape)


def _save(path, data, affine):
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


# An RAS volume with spacing (1, 2, 3) and the same voxels stored as LPS and as (S, R, A) order.
_SPACING = np.array([1.0, 2.0, 3.0])
_RAS_AFFINE = np.diag([*_SPACING, 1.0])
_RAS_AFFINE[:3, 3] = [-5.0, 7.0, 11.0]


def _stored_variants(data):
    shape = np.array(data.shape)
    # LPS: first two axes reversed; the affine's columns flip and the origin moves to the far end.
    lps = data[::-1, ::-1, :]
    lps_affine = _RAS_AFFINE.copy()
    lps_affine[:3, 0] *= -1
    lps_affine[:3, 1] *= -1
    lps_affine[:3, 3] = _RAS_AFFINE[:3, :3] @ [shape[0] - 1, shape[1] - 1, 0] + _RAS_AFFINE[:3, 3]
    # (S, R, A) axis order: transpose and permute the affine's columns accordingly.
    sra = data.transpose(2, 0, 1)
    sra_affine = np.eye(4)
    sra_affine[:3, :3] = _RAS_AFFINE[:3, [2, 0, 1]]
    sra_affine[:3, 3] = _RAS_AFFINE[:3, 3]
    return {"RAS": (data, _RAS_AFFINE), "LPS": (lps, lps_affine), "SRA": (sra, sra_affine)}


@pytest.mark.parametrize("stored", ["RAS", "LPS", "SRA"])
def test_read_volume_reorients_to_canonical(tmp_path, stored):
    data = _ras_volume()
    array, affine = _stored_variants(data)[stored]
    path = _save(tmp_path / f"{stored}.nii.gz", array, affine)
    volume = read_volume(path)
    np.testing.assert_array_equal(volume.data, data)
    np.testing.assert_allclose(volume.affine, _RAS_AFFINE, atol=1e-5)
    np.testing.assert_allclose(volume.spacing, _SPACING, atol=1e-6)
    assert volume.original_orientation == tuple(stored)
    assert volume.original_shape == array.shape
    # Undoing the canonicalisation gives the file's own array back.
    np.testing.assert_array_equal(volume.to_original(volume.data), array)


def test_read_volume_accepts_trailing_singleton_and_rejects_4d(tmp_path):
    data = _ras_volume((8, 8, 6))
    ok = read_volume(_save(tmp_path / "ok.nii.gz", data[..., None], np.eye(4)))
    assert ok.data.shape == (8, 8, 6)
    with pytest.raises(DataError, match=r"four\.nii\.gz: 4D"):
        read_volume(_save(tmp_path / "four.nii.gz", np.stack([data, data], -1), np.eye(4)))


def test_read_volume_rejects_corrupt_truncated_and_nan(tmp_path):
    path = _save(tmp_path / "good.nii.gz", _ras_volume(), np.eye(4))
    truncated = tmp_path / "truncated.nii.gz"
    truncated.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 2])
    with pytest.raises(DataError, match="truncated.nii.gz: unreadable NIfTI"):
        read_volume(truncated)
    garbage = tmp_path / "garbage.nii"
    garbage.write_bytes(b"not a nifti file at all" * 20)
    with pytest.raises(DataError, match="garbage.nii: unreadable"):
        read_volume(garbage)
    bad_gzip = tmp_path / "bad.nii.gz"
    bad_gzip.write_bytes(gzip.compress(b"short"))
    with pytest.raises(DataError, match="bad.nii.gz"):
        read_volume(bad_gzip)
    nan = _ras_volume()
    nan[2, 3, 4] = np.nan
    with pytest.raises(DataError, match="nan.nii.gz: 1 NaN"):
        read_volume(_save(tmp_path / "nan.nii.gz", nan, np.eye(4)))
    with pytest.raises(DataError, match="no such file"):
        read_volume(tmp_path / "missing.nii.gz")


# ---------------------------------------------------------------------------------- DICOM


def write_dicom_series(
    folder, volume_ras: np.ndarray, spacing=(0.8, 0.9, 2.0), slope=0.5, intercept=-100.0
):
    """Write an RAS volume (i = R, j = A, k = S) as axial DICOM slices in shuffled file order.

    Stored pixel = (value - intercept) / slope. DICOM rows run anterior->posterior (column cosine
    (0, 1, 0) in LPS) and columns right->left (row cosine (1, 0, 0) in LPS).
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, MRImageStorage, generate_uid

    folder.mkdir(parents=True, exist_ok=True)
    n_i, n_j, n_k = volume_ras.shape
    stored = np.round((volume_ras - intercept) / slope).astype(np.uint16)
    series = generate_uid()
    order = list(range(n_k))
    random.Random(0).shuffle(order)
    for file_number, k in enumerate(order):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = MRImageStorage
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID = MRImageStorage
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.SeriesInstanceUID = series
        ds.Modality = "MR"
        ds.Rows, ds.Columns = n_j, n_i
        ds.PixelSpacing = [spacing[1], spacing[0]]  # row spacing (between rows), column spacing
        ds.SliceThickness = spacing[2]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        # Pixel (row 0, col 0) is the most right (i = n_i-1) and anterior (j = n_j-1) voxel:
        # LPS x = -R, y = -A.
        ds.ImagePositionPatient = [-(n_i - 1) * spacing[0], -(n_j - 1) * spacing[1], k * spacing[2]]
        ds.InstanceNumber = file_number + 1
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
        ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
        # row r = A index n_j-1-r, column c = R index n_i-1-c
        plane = stored[::-1, ::-1, k].T
        ds.PixelData = np.ascontiguousarray(plane).tobytes()
        ds.save_as(folder / f"IM{file_number:04d}.dcm", enforce_file_format=True)
    return folder


def test_read_dicom_series_orders_by_position_and_rescales(tmp_path):
    rng = np.random.default_rng(0)
    volume = np.round(rng.uniform(0, 500, size=(10, 9, 7))).astype(np.float32)
    folder = write_dicom_series(tmp_path / "T1", volume)
    result = read_dicom_series(folder)
    np.testing.assert_allclose(result.data, volume, atol=1e-4)
    np.testing.assert_allclose(result.spacing, (0.8, 0.9, 2.0), atol=1e-6)
    # Voxel (0, 0, 0) is the most left, posterior, inferior one: RAS x = 0, y = 0, z = 0.
    np.testing.assert_allclose(result.affine[:3, 3], [0.0, 0.0, 0.0], atol=1e-6)
    assert read_volume(folder).data.shape == (10, 9, 7)


def test_read_dicom_series_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(DataError, match="no DICOM slices"):
        read_dicom_series(empty)
    folder = write_dicom_series(tmp_path / "T2", np.ones((4, 4, 3), np.float32) * 10)
    (folder / "broken.dcm").write_bytes(b"\x00" * 10)
    with pytest.raises(DataError, match="broken.dcm"):
        read_dicom_series(folder)
    (folder / "broken.dcm").unlink()
    first = sorted(folder.iterdir())[0]
    first.write_bytes(first.read_bytes()[:-20])  # truncated pixel data
    with pytest.raises(DataError, match=first.name):
        read_dicom_series(folder)


# ---------------------------------------------------------------------------------- 2D images


def test_read_image_2d_8_and_16_bit_png_and_tiff(tmp_path):
    eight = np.arange(0, 256, dtype=np.uint8).reshape(16, 16)
    Image.fromarray(eight).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image_2d(tmp_path / "a.png"), eight.astype(np.float32))
    sixteen = (np.arange(256, dtype=np.uint16).reshape(16, 16) * 250).astype(np.uint16)
    Image.fromarray(sixteen).save(tmp_path / "b.png")
    out = read_image_2d(tmp_path / "b.png")
    assert out.dtype == np.float32 and out.max() == 255 * 250
    np.testing.assert_array_equal(out, sixteen.astype(np.float32))
    Image.fromarray(sixteen).save(tmp_path / "c.tif")
    np.testing.assert_array_equal(read_image_2d(tmp_path / "c.tif"), sixteen.astype(np.float32))


def test_read_image_2d_rgb_warns_and_bad_files_raise(tmp_path):
    rgb = np.zeros((8, 8, 3), np.uint8)
    rgb[..., 0] = 100
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with pytest.warns(ImageWarning, match="rgb.png: RGB image converted to gray"):
        gray = read_image_2d(tmp_path / "rgb.png")
    np.testing.assert_allclose(gray, 29.9, atol=1e-3)
    (tmp_path / "empty.png").write_bytes(b"")
    with pytest.raises(DataError, match="empty.png: empty file"):
        read_image_2d(tmp_path / "empty.png")
    (tmp_path / "junk.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(DataError, match="junk.png: unreadable image"):
        read_image_2d(tmp_path / "junk.png")
