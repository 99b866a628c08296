"""The table of input formats: every ending recognised once, and a new format is one entry."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from mri2mri.data import formats
from mri2mri.data.discovery import discover_pairs
from mri2mri.data.volume import canonical_volume
from mri2mri.errors import DataError
from mri2mri.predict import input_kind, output_name


def test_every_file_ending_names_its_format_and_kind():
    for entry in formats.FORMATS:
        for suffix in entry.suffixes:
            name = f"sub-01_T1{suffix.upper()}"  # endings match in any case
            if entry.folder:
                assert formats.file_format(name) is None  # a DICOM slice is read with its folder
            else:
                assert formats.file_format(name) is entry
                assert formats.split_suffix(name) == ("sub-01_T1", suffix.upper())
            assert formats.split_suffix(name, folders=True)[0] == "sub-01_T1"
    assert formats.is_volume_file("a.nii.gz") and formats.is_nifti("a.NII")
    assert formats.is_image_2d("a.tiff") and not formats.is_image_2d("a.nii")
    assert formats.file_format("notes.txt") is None


def test_output_names_follow_the_table():
    assert output_name(Path("x_T1.nii.gz"), "volume") == "x_T1_synth.nii.gz"
    assert output_name(Path("x.TIF"), "image") == "x_synth.TIF"
    assert output_name(Path("series"), "volume") == "series_synth.nii.gz"
    assert output_name(Path("x.nii"), "volume", "dicom") == "x_synth"


def test_unknown_volume_file_is_refused_naming_the_formats(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text("no image")
    with pytest.raises(DataError, match=r"not a NIfTI file \(\.nii or \.nii\.gz\) or a MetaImage/NRRD file \(\.mha or \.nrrd\) or a DICOM folder"):
        formats.read_volume(path)


def test_a_new_volume_format_is_one_table_entry_and_its_reader(tmp_path, monkeypatch):
    """What adding, say, MetaImage takes: a reader returning a Volume, and its entry."""

    def read_raw(path: Path):
        data = np.load(path).astype(np.float32)
        return canonical_volume(data, np.eye(4), path)

    raw = formats.Format("raw", "volume", (".raw.npy",), read_raw)
    monkeypatch.setattr(formats, "FORMATS", (*formats.FORMATS, raw))
    for subject in ("sub-01", "sub-02"):
        for contrast in ("T1", "T2"):
            (tmp_path / subject).mkdir(exist_ok=True)
            with open(tmp_path / subject / f"{contrast}.raw.npy", "wb") as handle:
                np.save(handle, np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    found = discover_pairs(tmp_path, "T1", "T2")
    assert [p.subject for p in found.pairs] == ["sub-01", "sub-02"]
    volume = formats.read_volume(found.pairs[0].source)
    assert volume.data.shape == (2, 3, 4)
    assert input_kind(found.pairs[0].source) == "volume"
    assert output_name(found.pairs[0].source, "volume") == "T1_synth.nii.gz"  # written as NIfTI


@pytest.mark.parametrize("suffix", [".mha", ".nrrd"])
def test_a_metaimage_or_nrrd_volume_reads_like_the_same_volume_in_nifti(tmp_path, suffix):
    """The same oblique, anisotropic volume saved by SimpleITK and by nibabel gives the same
    canonical data and affine, and predict/discovery treat it as a volume."""
    import nibabel as nib
    import SimpleITK as sitk

    from mri2mri.data.io import read_volume

    rng = np.random.default_rng(0)
    data = rng.random((7, 9, 5), dtype=np.float32)  # (x, y, z)
    image = sitk.GetImageFromArray(np.transpose(data, (2, 1, 0)))  # ITK arrays are (z, y, x)
    image.SetSpacing((0.9, 1.1, 3.0))
    image.SetOrigin((10.0, -20.0, 30.0))
    angle = np.deg2rad(20)
    image.SetDirection((np.cos(angle), -np.sin(angle), 0.0, np.sin(angle), np.cos(angle), 0.0, 0.0, 0.0, 1.0))
    itk_path = tmp_path / f"sub-01_T1{suffix}"
    sitk.WriteImage(image, str(itk_path))
    # The same geometry written the NIfTI way: RAS affine = diag(-1, -1, 1) @ LPS.
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(image.GetDirection()).reshape(3, 3) @ np.diag(image.GetSpacing())
    lps[:3, 3] = image.GetOrigin()
    nifti_path = tmp_path / "same.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([-1.0, -1.0, 1.0, 1.0]) @ lps), nifti_path)

    from_itk, from_nifti = read_volume(itk_path), read_volume(nifti_path)
    np.testing.assert_array_equal(from_itk.data, from_nifti.data)
    np.testing.assert_allclose(from_itk.affine, from_nifti.affine, atol=1e-5)
    assert from_itk.original_shape == from_nifti.original_shape == (7, 9, 5)
    assert input_kind(itk_path) == "volume"
    assert output_name(itk_path, "volume") == "sub-01_T1_synth.nii.gz"


def test_a_2d_metaimage_is_refused_naming_the_file(tmp_path):
    import SimpleITK as sitk

    from mri2mri.data.io import read_volume

    path = tmp_path / "flat.mha"
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((4, 5), dtype=np.float32)), str(path))
    with pytest.raises(DataError, match="flat.mha: 2D image"):
        read_volume(path)
