"""What `predict` writes besides NIfTI: DICOM series, a BIDS derivative, uncertainty maps."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import torch
from pydicom.pixels import apply_modality_lut
from test_data_io import write_dicom_series
from test_predict import SPACING, brain_pair, fit_run, save_oblique

from mri2mri import __version__
from mri2mri.bids import output_name, parse_name, predict_bids
from mri2mri.cli import main as cli_main
from mri2mri.data.io import read_volume
from mri2mri.errors import DataError
from mri2mri.predict import file_sha256, predict_path
from mri2mri.uncertainty import (
    MAX_PASSES,
    spearman,
    transform,
    tta_mean,
    tta_mean_std,
    tta_std,
    untransform,
)

PATIENT = {"PatientName": "DOE^JANE", "PatientID": "P-0042", "PatientBirthDate": "19700101",
           "PatientSex": "F", "StudyDate": "20240102", "AccessionNumber": "ACC7"}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return fit_run(tmp_path_factory.mktemp("outputs"))


@pytest.fixture(scope="module")
def dicom_input(tmp_path_factory) -> Path:
    """An axial T1 series (shuffled files) with a study, a patient and a frame of reference."""
    folder = write_dicom_series(tmp_path_factory.mktemp("dicom") / "T1", brain_pair(seed=12)[0],
                                SPACING, slope=1.0, intercept=0.0)  # fmt: skip
    study, frame = pydicom.uid.generate_uid(), pydicom.uid.generate_uid()
    for file in folder.iterdir():
        ds = pydicom.dcmread(file)
        for keyword, value in PATIENT.items():
            setattr(ds, keyword, value)
        ds.StudyInstanceUID, ds.FrameOfReferenceUID = study, frame
        ds.SOPClassUID = pydicom.uid.MRImageStorage
        ds.save_as(file, enforce_file_format=True)
    return folder


def read_series(folder: Path) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in sorted(folder.iterdir())]


def sitk_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


# --------------------------------------------------------------------------------------------
# DICOM out


def test_dicom_series_in_gives_a_synthetic_series_on_its_geometry(run_dir, dicom_input, tmp_path):
    out = tmp_path / "synth_T2"
    assert predict_path(run_dir, dicom_input, out, device="cpu") == [out]  # auto: DICOM in, DICOM out
    written = read_series(out)
    inputs = {tuple(float(v) for v in d.ImagePositionPatient): d for d in read_series(dicom_input)}
    assert len(written) == len(inputs)
    input_series = next(iter(inputs.values())).SeriesInstanceUID
    input_sops = {d.SOPInstanceUID for d in inputs.values()}
    assert len({d.SeriesInstanceUID for d in written}) == 1
    assert written[0].SeriesInstanceUID != input_series
    assert len({d.SOPInstanceUID for d in written}) == len(written)
    assert not input_sops & {d.SOPInstanceUID for d in written}
    for ds in written:
        source = inputs[tuple(float(v) for v in ds.ImagePositionPatient)]
        assert ds.StudyInstanceUID == source.StudyInstanceUID
        assert ds.FrameOfReferenceUID == source.FrameOfReferenceUID
        for keyword, value in PATIENT.items():
            assert str(ds.data_element(keyword).value) == value
        assert ds.Modality == "MR"
        assert list(ds.ImageType) == ["DERIVED", "SECONDARY"]
        assert ds[0x0008, 0x001C].value == "YES"  # Synthetic Data
        assert "synthetic T2" in ds.SeriesDescription and "mri2mri" in ds.SeriesDescription
        assert "tiny_best.pth" in ds.DerivationDescription and "T1" in ds.DerivationDescription
        assert [float(v) for v in ds.ImageOrientationPatient] == [float(v) for v in source.ImageOrientationPatient]
        assert [float(v) for v in ds.PixelSpacing] == [float(v) for v in source.PixelSpacing]
        assert float(ds.SliceThickness) == float(source.SliceThickness)
        assert ds.SourceImageSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
        assert (ds.BitsAllocated, ds.PixelRepresentation) == (16, 0)
        assert ds.file_meta.MediaStorageSOPInstanceUID == ds.SOPInstanceUID

    # Pixels through the modality LUT are the NIfTI output's unit-scale values.
    nifti = tmp_path / "synth_T2.nii.gz"
    predict_path(run_dir, dicom_input, nifti, device="cpu")
    expected = nib.load(nifti)
    back = read_volume(out)  # mri2mri's own DICOM reader
    assert back.original_shape == expected.shape
    np.testing.assert_allclose(back.original_affine, expected.affine, atol=1e-4)
    np.testing.assert_allclose(back.to_original(back.data), expected.get_fdata(), atol=6e-5)
    assert expected.get_fdata().max() > 0.5  # not an empty image

    # SimpleITK reads the series on the input's grid, with the same values.
    image, source = sitk_series(out), sitk_series(dicom_input)
    assert image.GetSize() == source.GetSize()
    np.testing.assert_allclose(image.GetOrigin(), source.GetOrigin(), atol=1e-4)
    np.testing.assert_allclose(image.GetSpacing(), source.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(image.GetDirection(), source.GetDirection(), atol=1e-6)
    via_nifti = sitk.ReadImage(str(nifti))
    np.testing.assert_allclose(image.GetOrigin(), via_nifti.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(via_nifti), atol=6e-5)

    # pydicom alone: unsigned 16-bit stored values that RescaleSlope/Intercept take to the unit scale.
    normal = np.asarray(image.GetDirection()).reshape(3, 3)[:, 2]
    along = sorted(written, key=lambda d: float(normal @ (np.asarray(d.ImagePositionPatient, float) - image.GetOrigin())))
    stored = np.stack([d.pixel_array for d in along])  # (slices, rows, columns), SimpleITK's order
    assert stored.dtype == np.uint16 and stored.max() > 2**12  # the 16-bit range is used
    assert all(d.RescaleSlope == written[0].RescaleSlope and d.RescaleIntercept == written[0].RescaleIntercept for d in written)
    unit = stored * float(written[0].RescaleSlope) + float(written[0].RescaleIntercept)
    np.testing.assert_allclose(unit, sitk.GetArrayFromImage(via_nifti), atol=6e-5)
    np.testing.assert_allclose(np.stack([apply_modality_lut(d.pixel_array, d) for d in along]), unit)

    # SimpleITK (GDCM) sees the synthetic flags too.
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(next(out.iterdir())))
    reader.ReadImageInformation()
    assert reader.GetMetaData("0008|001c").strip() == "YES"  # Synthetic Data
    assert reader.GetMetaData("0008|0008").strip() == "DERIVED\\SECONDARY"
    assert reader.GetMetaData("0008|0060").strip() == "MR"
    assert "synthetic T2" in reader.GetMetaData("0008|103e")


def test_nifti_in_dicom_out_takes_its_geometry_from_the_affine(run_dir, tmp_path):
    t1 = save_oblique(tmp_path / "new_T1.nii.gz", brain_pair(seed=11)[0])  # rotated, axes reversed
    out = tmp_path / "series"
    predict_path(run_dir, t1, out, device="cpu", output_format="dicom")
    nifti = predict_path(run_dir, t1, tmp_path / "synth.nii.gz", device="cpu")[0]
    written = read_series(out)
    assert all("SourceImageSequence" not in ds for ds in written)
    assert len({ds.StudyInstanceUID for ds in written}) == 1 and written[0].StudyInstanceUID
    assert written[0].PatientID and written[0][0x0008, 0x001C].value == "YES"
    # The same voxels in the same place: both read back as canonical RAS volumes.
    back, expected = read_volume(out), read_volume(nifti)
    np.testing.assert_allclose(back.affine, expected.affine, atol=1e-4)
    np.testing.assert_allclose(back.data, expected.data, atol=6e-5)
    image, via_nifti = sitk_series(out), sitk.ReadImage(str(nifti))
    reoriented = sitk.DICOMOrient(via_nifti, "LPS")  # the series is written on L-P-S axes
    np.testing.assert_allclose(image.GetOrigin(), reoriented.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(image.GetDirection(), reoriented.GetDirection(), atol=1e-5)
    np.testing.assert_allclose(sitk.GetArrayFromImage(image), sitk.GetArrayFromImage(reoriented), atol=6e-5)


def test_dicom_output_is_refused_when_it_exists_and_replaced_with_overwrite(run_dir, dicom_input, tmp_path):
    out = tmp_path / "synth"
    predict_path(run_dir, dicom_input, out, device="cpu")
    first = sorted(d.SOPInstanceUID for d in read_series(out))
    with pytest.raises(DataError, match="exists"):
        predict_path(run_dir, dicom_input, out, device="cpu")
    assert sorted(d.SOPInstanceUID for d in read_series(out)) == first  # untouched
    predict_path(run_dir, dicom_input, out, device="cpu", overwrite=True)
    assert sorted(d.SOPInstanceUID for d in read_series(out)) != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["synth"]  # no temporary folders left
    with pytest.raises(DataError, match="folder"):
        predict_path(run_dir, dicom_input, tmp_path / "x.png", device="cpu", output_format="dicom")


def test_cli_output_format_dicom(run_dir, tmp_path, capsys):
    t1 = save_oblique(tmp_path / "T1.nii.gz", brain_pair(seed=3)[0])
    assert cli_main(["predict", str(run_dir), str(t1), str(tmp_path / "out"), "--device", "cpu",
                     "--output-format", "dicom"]) == 0  # fmt: skip
    assert len(list((tmp_path / "out").glob("IM*.dcm"))) == nib.load(t1).shape[0]  # L-P-S: axial = stored axis 0
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["predict", str(run_dir), str(t1), str(tmp_path / "o2"), "--output-format", "tiff"])
    assert exit_info.value.code == 2 and "invalid choice" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# Uncertainty


def test_tta_views_are_undone_exactly():
    batch = np.random.default_rng(0).normal(size=(2, 3, 8, 8))
    for k in range(MAX_PASSES):
        assert not np.array_equal(transform(batch, k), batch) or k == 0
        np.testing.assert_array_equal(untransform(transform(batch, k), k), batch)


def test_tta_std_is_zero_for_an_equivariant_model_and_not_for_one_that_is_not():
    batch = np.random.default_rng(1).uniform(-1, 1, size=(2, 3, 16, 16)).astype(np.float32)

    def pointwise(x):  # commutes with flips and shifts
        return np.tanh(2 * x[:, 1:2])

    def leaning(x):  # depends on where a pixel sits
        return np.tanh(2 * x[:, 1:2]) * np.linspace(0, 1, x.shape[-1])

    assert tta_std(pointwise, batch, 8).max() < 1e-6
    spread = tta_std(leaning, batch, 8)
    assert spread.shape == (2, 1, 16, 16) and spread.mean() > 0.01
    with pytest.raises(ValueError, match="between 2"):
        tta_std(pointwise, batch, 1)


def test_the_test_time_mean_averages_what_each_pass_adds_back_on_the_input_grid():
    """A model that is exact but for a left-right ramp of its own: the flipped pass, flipped
    back, carries the mirrored ramp, so the mean of the two is exact; the plain pass is not.
    A wrongly undone view (not flipped back, or shifted the wrong way) leaves an error."""
    batch = np.random.default_rng(2).uniform(-0.7, 0.7, size=(2, 3, 16, 16)).astype(np.float32)
    ramp = np.linspace(-0.2, 0.2, 16)

    def leaning(x):
        return x[:, 1:2] + ramp

    np.testing.assert_allclose(tta_mean(leaning, batch, 1), batch[:, 1:2] + ramp, atol=1e-6)
    np.testing.assert_allclose(tta_mean(leaning, batch, 2), batch[:, 1:2], atol=1e-6)
    # Pointwise models commute with every view: any number of passes gives the plain prediction.
    np.testing.assert_allclose(tta_mean(lambda x: np.tanh(2 * x[:, 1:2]), batch, 8),
                               np.tanh(2 * batch[:, 1:2]), atol=1e-6)  # fmt: skip
    # Each pass is clipped to the model's range before it is averaged, as the prediction is.
    assert tta_mean(lambda x: 3 * x[:, :1], batch, 4).max() <= 1.0
    with pytest.raises(ValueError, match="--tta must be between 1"):
        tta_mean(leaning, batch, 0)


def test_the_mean_and_the_spread_of_the_same_passes_run_the_network_once_a_pass():
    batch = np.random.default_rng(3).uniform(-1, 1, size=(2, 3, 16, 16)).astype(np.float32)
    calls = []

    def leaning(x):
        calls.append(len(x))
        return np.tanh(2 * x[:, 1:2]) * np.linspace(0, 1, x.shape[-1])

    for mean_passes, std_passes in ((8, 8), (4, 8), (8, 3)):
        calls.clear()
        mean, spread = tta_mean_std(leaning, batch, mean_passes, std_passes)
        assert len(calls) == max(mean_passes, std_passes)
        np.testing.assert_allclose(mean, tta_mean(leaning, batch, mean_passes), atol=1e-7)
        np.testing.assert_allclose(spread, tta_std(leaning, batch, std_passes), atol=1e-7)
    assert tta_mean_std(leaning, batch, 2)[1] is None
    with pytest.raises(ValueError, match="--uncertainty-passes must be between 2"):
        tta_mean_std(leaning, batch, 2, 1)
    # predict's volume path: the averaged volume and its uncertainty map from one set of passes.
    from mri2mri.portable import PreparedInput
    from mri2mri.predict.synthesis import synthesise, synthesise_maps, synthesise_uncertainty

    unit = (batch + 1) / 2
    mask = np.ones((2, 1, 16, 16), dtype=bool)
    prepared = PreparedInput(unit, mask, mask[:, 0], np.arange(2), {"grid_file": "x.nii"}, {})
    calls.clear()
    mean, spread = synthesise_maps(leaning, prepared, 16, tta_passes=8, uncertainty_passes=8)
    assert len(calls) == 8
    np.testing.assert_allclose(mean, synthesise(leaning, prepared, 16, tta_passes=8), atol=1e-6)
    np.testing.assert_allclose(spread, synthesise_uncertainty(leaning, prepared, 16, 8), atol=1e-6)


def test_an_infinite_output_is_refused_on_the_averaged_and_uncertainty_paths_too():
    # Clipping each pass to the model's range must not turn infinity into a finite value that
    # the finiteness check would let through (a plain pass refuses it; so must averaged passes).
    from mri2mri.errors import UserError
    from mri2mri.portable import PreparedInput
    from mri2mri.predict.synthesis import synthesise_maps

    slices = np.full((1, 1, 8, 8), 0.5, dtype=np.float32)
    mask = np.ones_like(slices, dtype=bool)
    prepared = PreparedInput(slices, mask, mask[:, 0], np.arange(1), {"grid_file": "x.nii"}, {})

    def overflowing(x):
        out = x[:, :1].copy()
        out[..., 0, 0] = np.inf
        return out

    for tta_passes, uncertainty_passes in ((1, 0), (2, 0), (1, 8), (8, 8)):
        with pytest.raises(UserError, match="NaN or infinite"):
            synthesise_maps(overflowing, prepared, 4, tta_passes, uncertainty_passes)


def test_test_with_averaged_passes_and_uncertainty_runs_each_pass_once(tmp_path):
    from conftest import write_tiny_cache

    from mri2mri.evaluation import evaluate

    slices, size = 4, 32
    cache = write_tiny_cache(tmp_path / "cache", size=size, slices=slices,
                             splits=("train", "val", "test", "test"))  # fmt: skip
    calls = []

    def model(source: torch.Tensor) -> torch.Tensor:
        calls.append(len(source))
        return source[:, :1] * torch.linspace(0, 1, source.shape[-1])

    result = evaluate(model, cache, tmp_path / "eval", progress=False, uncertainty_passes=8, tta_passes=8)
    # Two test subjects, one batch each: the mean and the spread from the same 8 passes (16
    # calls in all; the spread's own passes on top of the mean's would make 32).
    assert calls == [slices] * 16
    assert result["protocol"]["test_time_passes"] == 8 and result["uncertainty"]["passes"] == 8
    assert sorted(result["uncertainty"]["per_subject"]) == ["sub-02", "sub-03"]
    for entry in result["uncertainty"]["per_subject"].values():
        assert entry["n_voxels"] == slices * size * size and np.isfinite(entry["spearman"])


def test_evaluate_with_test_time_passes_scores_their_mean_and_says_so(tmp_path):
    from conftest import write_tiny_cache

    from mri2mri.evaluation import evaluate

    size = 32
    cache = write_tiny_cache(tmp_path / "cache", size=size, slices=4, splits=("train", "val", "test", "test"))
    ramp = torch.linspace(-0.2, 0.2, size)

    def biased(source: torch.Tensor) -> torch.Tensor:  # the tiny cache's target, plus the ramp
        unit = (source[:, :1] + 1) / 2
        return 2 * (1 - unit) ** 2 - 1 + ramp

    plain = evaluate(biased, cache, tmp_path / "plain", progress=False)
    mean = evaluate(biased, cache, tmp_path / "tta", progress=False, tta_passes=2)
    psnr = [r["pooled"]["model"]["psnr_mask"]["mean"] for r in (plain, mean)]
    assert psnr[1] > psnr[0] + 10, psnr  # the flipped pass cancels the ramp
    assert plain["protocol"]["test_time_passes"] == 1
    saved = json.loads((tmp_path / "tta" / "metrics.json").read_text())
    assert saved["protocol"]["test_time_passes"] == 2


def test_predict_with_test_time_passes_writes_their_mean_and_records_them(run_dir, tmp_path):
    t1 = save_oblique(tmp_path / "T1.nii.gz", brain_pair(seed=11)[0])
    plain, mean = tmp_path / "plain.nii.gz", tmp_path / "mean.nii.gz"
    predict_path(run_dir, t1, plain, device="cpu")
    predict_path(run_dir, t1, mean, device="cpu", tta_passes=4)
    a, b = nib.load(plain), nib.load(mean)
    brain = nib.load(t1).get_fdata() != 0
    values = b.get_fdata()
    assert values.shape == a.shape and (values[~brain] == 0).all() and values.min() >= 0 and values.max() <= 1
    assert np.abs(values - a.get_fdata())[brain].mean() > 1e-4  # a real network is not flip-invariant
    assert json.loads(b.header.extensions[0].get_content())["test_time_passes"] == 4
    assert "test_time_passes" not in json.loads(a.header.extensions[0].get_content())


def test_a_dicom_series_of_averaged_passes_says_so(run_dir, dicom_input, tmp_path):
    out = tmp_path / "synth_T2"
    predict_path(run_dir, dicom_input, out, device="cpu", tta_passes=2)
    assert all("mean of 2 test-time passes" in ds.DerivationDescription for ds in read_series(out))


def test_spearman_matches_a_numpy_rank_correlation():
    rng = np.random.default_rng(4)
    x = rng.normal(size=500)
    y = x + rng.normal(size=500)
    ranks = [np.argsort(np.argsort(v)).astype(float) for v in (x, y)]  # no ties in continuous data
    assert spearman(x, y) == pytest.approx(np.corrcoef(*ranks)[0, 1], abs=1e-12)
    assert spearman(x, np.exp(x)) == pytest.approx(1.0) and spearman(x, -x**3) == pytest.approx(-1.0)
    assert np.isnan(spearman(np.ones(10), y[:10]))


def test_metrics_json_correlation_is_high_when_the_error_is_where_the_passes_disagree(tmp_path):
    """A stand-in model that is exact but for a left-right ramp: flipped passes disagree by the
    ramp, which is also its error, so uncertainty ranks the error well."""
    from conftest import write_tiny_cache

    from mri2mri.evaluation import evaluate

    slices, size = 4, 32
    cache = write_tiny_cache(tmp_path / "cache", size=size, slices=slices,
                             splits=("train", "val", "test", "test"))  # fmt: skip
    ramp = torch.linspace(-0.2, 0.2, size)

    def biased(source: torch.Tensor) -> torch.Tensor:  # the tiny cache's target, plus the ramp
        unit = (source[:, :1] + 1) / 2
        return 2 * (1 - unit) ** 2 - 1 + ramp

    result = evaluate(biased, cache, tmp_path / "eval", progress=False, uncertainty_passes=8)
    block = json.loads((tmp_path / "eval" / "metrics.json").read_text())["uncertainty"]
    assert block == result["uncertainty"] and block["passes"] == 8
    assert sorted(block["per_subject"]) == ["sub-02", "sub-03"]
    for entry in block["per_subject"].values():
        assert entry["n_voxels"] == slices * size * size  # every voxel of the all-ones mask
        assert entry["spearman"] > 0.8
    assert block["spearman"]["n"] == 2 and block["spearman"]["mean"] > 0.8


def test_predict_writes_the_uncertainty_beside_the_output(run_dir, tmp_path):
    t1 = save_oblique(tmp_path / "T1.nii.gz", brain_pair(seed=11)[0])
    out = tmp_path / "T2.nii.gz"
    written = predict_path(run_dir, t1, out, device="cpu", uncertainty=True, uncertainty_passes=4)
    spread_file = tmp_path / "T2_uncertainty.nii.gz"
    assert written == [out, spread_file]
    spread, synth = nib.load(spread_file), nib.load(out)
    assert spread.shape == synth.shape
    np.testing.assert_allclose(spread.affine, synth.affine)
    values = spread.get_fdata()
    brain = nib.load(t1).get_fdata() != 0
    assert (values >= 0).all() and (values[~brain] == 0).all()
    assert values[brain].mean() > 1e-4  # a real network is not exactly flip- and shift-invariant
    assert "uncertainty" in spread.header["descrip"].tobytes().decode()
    (tmp_path / "T2b_uncertainty.nii.gz").write_bytes(b"kept")
    with pytest.raises(DataError, match="uncertainty.nii.gz: exists"):
        predict_path(run_dir, t1, tmp_path / "T2b.nii.gz", device="cpu", uncertainty=True)
    assert (tmp_path / "T2b_uncertainty.nii.gz").read_bytes() == b"kept"
    assert not (tmp_path / "T2b.nii.gz").exists()


def test_test_command_reports_how_uncertainty_ranks_errors(run_dir, tmp_path):
    from mri2mri.inference import evaluate_run

    result = evaluate_run(run_dir, out_dir=tmp_path / "eval", device="cpu", progress=False,
                          uncertainty_passes=4)  # fmt: skip
    saved = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    block = saved["uncertainty"]
    assert block == result["uncertainty"] and block["passes"] == 4
    assert set(block["per_subject"]) == set(saved["test_set"]["subjects"])
    for entry in block["per_subject"].values():
        assert entry["n_voxels"] > 100 and -1 <= entry["spearman"] <= 1
    # The figures get a fifth panel: wider than the four-panel ones of a plain test.
    from PIL import Image

    plain = evaluate_run(run_dir, out_dir=tmp_path / "plain", device="cpu", progress=False)
    assert "uncertainty" not in plain
    with_panel = Image.open(tmp_path / "eval" / "figures" / "test_visualization_01.png").size
    without = Image.open(tmp_path / "plain" / "figures" / "test_visualization_01.png").size
    assert with_panel[0] > without[0] * 1.15


def test_cli_test_uncertainty(run_dir, tmp_path, capsys):
    out = tmp_path / "eval"
    assert cli_main(["test", str(run_dir), "--out", str(out), "--device", "cpu", "--quiet",
                     "--uncertainty", "--uncertainty-passes", "3"]) == 0  # fmt: skip
    block = json.loads((out / "metrics.json").read_text())["uncertainty"]
    assert block["passes"] == 3 and block["per_subject"]
    capsys.readouterr()
    assert cli_main(["test", str(run_dir), "--out", str(tmp_path / "e2"), "--device", "cpu", "--quiet",
                     "--uncertainty", "--uncertainty-passes", "1"]) == 2  # fmt: skip
    assert "between 2" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------
# BIDS


def make_bids(root: Path) -> Path:
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    for subject, session, seed in (("01", None, 20), ("02", "pre", 21), ("02", "post", 22)):
        folder = root / f"sub-{subject}" / (f"ses-{session}" if session else "") / "anat"
        folder.mkdir(parents=True)
        stem = f"sub-{subject}" + (f"_ses-{session}" if session else "")
        t1, t2 = brain_pair(seed=seed)
        affine = np.diag([*SPACING, 1.0])
        nib.save(nib.Nifti1Image(t1, affine), folder / f"{stem}_T1w.nii.gz")
        nib.save(nib.Nifti1Image(t2, affine), folder / f"{stem}_T2w.nii.gz")  # not an input
    nib.save(nib.Nifti1Image(brain_pair(seed=23)[0], np.eye(4)), root / "sub-01" / "anat" / "sub-01_ce-gadolinium_T1w.nii.gz")
    return root


def test_bids_names():
    assert parse_name("sub-01_ses-2_acq-mp2rage_run-1_T1w.nii.gz") == (
        {"sub": "01", "ses": "2", "acq": "mp2rage", "run": "1"}, "T1w", ".nii.gz")
    assert parse_name("notes.nii") is None
    assert output_name({"sub": "01", "ses": "2", "run": "1"}, "T2") == "sub-01_ses-2_run-1_desc-synthetic_T2w"
    assert output_name({"sub": "01", "acq": "x"}, "T1c") == "sub-01_acq-x_ce-gadolinium_desc-synthetic_T1w"
    assert output_name({"sub": "01"}, "FLAIR") == "sub-01_desc-synthetic_FLAIR"
    assert output_name({"sub": "01"}, "PD") == "sub-01_desc-synthetic_PDw"


def test_bids_dataset_in_gives_a_valid_derivative_out(run_dir, tmp_path):
    bids = pytest.importorskip("bids")
    root = make_bids(tmp_path / "raw")
    out = tmp_path / "derivatives" / "mri2mri"
    assert cli_main(["predict", str(run_dir), str(root), str(out), "--device", "cpu"]) == 0  # found as BIDS

    description = json.loads((out / "dataset_description.json").read_text())
    assert description["DatasetType"] == "derivative" and description["BIDSVersion"]
    assert description["GeneratedBy"][0]["Name"] == "mri2mri"
    assert description["GeneratedBy"][0]["Version"] == __version__

    layout = bids.BIDSLayout(str(out), validate=False, is_derivative=True)
    found = layout.get(suffix="T2w", desc="synthetic", extension=".nii.gz")
    assert sorted((f.entities["subject"], f.entities.get("session")) for f in found) == [
        ("01", None), ("02", "post"), ("02", "pre")]
    assert not layout.get(suffix="T1w")  # the ce-gadolinium T1w is not a T1 input
    digest = file_sha256(run_dir / "checkpoints" / "tiny_best.pth")
    for image in found:
        sidecar = image.get_metadata()
        (source,) = sidecar["Sources"]
        assert source.startswith("bids:raw:")
        relative = source.removeprefix("bids:raw:")
        assert (root / relative).is_file() and relative.endswith("_T1w.nii.gz")
        assert relative.split("/")[0] == f"sub-{image.entities['subject']}"
        assert sidecar["CheckpointSHA256"] == digest
        assert sidecar["SoftwareVersion"] == __version__ and sidecar["Model"] == "tiny_best.pth"
        assert sidecar["CorrectionWeight"] == 0.75  # a residual model: the share of its correction it added (the default)
        assert "TestTimePasses" not in sidecar  # one plain pass
        assert nib.load(image.path).shape == nib.load(root / relative).shape
    assert description["DatasetLinks"]["raw"] == root.resolve().as_uri()


def test_bids_refuses_existing_outputs_and_datasets_that_are_not_bids(run_dir, tmp_path):
    root = make_bids(tmp_path / "raw")
    out = tmp_path / "deriv"
    written = predict_bids(run_dir, root, out, device="cpu", uncertainty=True, uncertainty_passes=2)
    assert (out / "sub-01" / "anat" / "sub-01_desc-synthetic_T2w_uncertainty.nii.gz") in written
    with pytest.raises(DataError, match="exists; pass --overwrite"):
        predict_bids(run_dir, root, out, device="cpu")
    with pytest.raises(DataError, match="not a BIDS dataset"):
        predict_bids(run_dir, tmp_path / "deriv" / "sub-01", tmp_path / "x", device="cpu")
    with pytest.raises(DataError, match="its own folder"):
        predict_bids(run_dir, root, root / "sub-03", device="cpu")


def test_cli_bids_flag_writes_the_derivative_and_refuses_a_folder_that_is_not_bids(run_dir, tmp_path, capsys):
    bids = pytest.importorskip("bids")
    root = make_bids(tmp_path / "raw")
    out = tmp_path / "deriv"
    assert cli_main(["predict", str(run_dir), str(root), str(out), "--bids", "--device", "cpu",
                     "--uncertainty", "--uncertainty-passes", "2", "--tta", "2"]) == 0  # fmt: skip
    layout = bids.BIDSLayout(str(out), validate=False, is_derivative=True)
    synthetic = layout.get(desc="synthetic", suffix="T2w", extension=".nii.gz")
    assert len(synthetic) == 3
    for image in synthetic:
        spread = Path(image.path.replace("_T2w.nii.gz", "_T2w_uncertainty.nii.gz"))
        assert spread.is_file() and image.get_metadata()["UncertaintyMap"] == spread.name
        assert image.get_metadata()["TestTimePasses"] == 2  # the image is the mean of two passes
        assert nib.load(spread).shape == nib.load(image.path).shape
    capsys.readouterr()
    plain = tmp_path / "plain"  # NIfTI files but no dataset_description.json
    plain.mkdir()
    nib.save(nib.Nifti1Image(brain_pair(seed=24)[0], np.eye(4)), plain / "sub-01_T1w.nii.gz")
    assert cli_main(["predict", str(run_dir), str(plain), str(tmp_path / "d2"), "--bids", "--device", "cpu"]) == 2
    assert "not a BIDS dataset" in capsys.readouterr().err
    assert not (tmp_path / "d2").exists()


def test_uncertainty_panel_in_chinese(tmp_path):
    from PIL import Image

    from mri2mri import figures

    yy, xx = np.mgrid[-1:1:32j, -1:1:32j]
    head = (xx**2 + yy**2 < 0.8).astype(np.float32)
    source, target = head * (0.5 + 0.3 * xx), head * (0.6 - 0.3 * xx)
    four = figures.plot_triptych(source, target * 0.9, target, tmp_path / "four.png", mask=head, lang="zh")
    five = figures.plot_triptych(source, target * 0.9, target, tmp_path / "five.png", mask=head, lang="zh",
                                 uncertainty=head * 0.05 * np.abs(xx), uncertainty_passes=8)  # fmt: skip
    assert "不确定性" in figures.t("uncertainty", "zh", passes=8)
    assert Image.open(five).size[0] > Image.open(four).size[0] * 1.15
