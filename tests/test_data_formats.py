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
    with pytest.raises(DataError, match=r"not a NIfTI file \(\.nii or \.nii\.gz\) or a DICOM folder"):
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

