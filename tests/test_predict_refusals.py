"""Plainly wrong inputs to `predict` are refused in one line, never turned into a wrong image:
one file given for two contrasts, a synthetic image given as a source, outputs written where
they would be read back as inputs, a batch output named like a file, options that would do
nothing, and BIDS images left out without a word."""

from __future__ import annotations

import json
import os
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_tiny_head
from test_data_io import write_dicom_series

from mri2mri import portable
from mri2mri.checkpoint import save_checkpoint
from mri2mri.cli import main as cli_main
from mri2mri.config import DataConfig, ModelConfig, RunConfig, replace
from mri2mri.data.images import write_image_16bit
from mri2mri.data.io import read_volume
from mri2mri.errors import DataError
from mri2mri.models import build_generator
from mri2mri.predict import (
    ContrastWarning,
    ModelInfo,
    load_model,
    plan_subject_jobs,
    predict_volume_maps,
)
from mri2mri.runfolder import RunFolder

SOURCES = ("T1", "T1c", "FLAIR")


def _config(sources: tuple[str, ...] = ("T1",)) -> RunConfig:
    """A tiny generator of ``sources`` -> T2 at 32 px."""
    data = DataConfig(source=sources if len(sources) > 1 else sources[0], image_size=32, context_slices=0)
    model = ModelConfig(generator="unet", base_channels=4, norm="none", dropout=0.0, residual="none",
                        in_channels=data.in_channels)  # fmt: skip
    return RunConfig(data=data, model=model)


def _checkpoint(path: Path, sources: tuple[str, ...] = ("T1",)) -> Path:
    """An untrained tiny generator for ``sources`` -> T2: enough to run a prediction."""
    config = _config(sources)
    torch.manual_seed(0)
    save_checkpoint(path, {"G": build_generator(config.model).state_dict(), "config": config.to_dict(), "epoch": 1})
    return path


@pytest.fixture(scope="module")
def single(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("single") / "t1_to_t2.pth")


@pytest.fixture(scope="module")
def multi(tmp_path_factory) -> Path:
    return _checkpoint(tmp_path_factory.mktemp("multi") / "multi.pth", SOURCES)


def _run(argv: list[str], capsys) -> tuple[int, str]:
    code = cli_main([*argv, "--device", "cpu", "--precision", "fp32"])
    return code, capsys.readouterr().err


def _refused(argv: list[str], capsys, *absent: Path) -> str:
    """The command exits 2 with one line and no traceback, and writes none of ``absent``."""
    code, err = _run(argv, capsys)
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    for path in absent:
        assert not path.exists(), path
    return err


# ------------------------------------------------------------------- one image for two contrasts


@pytest.mark.parametrize("how", ["same path", "hard link", "copy"])
def test_one_image_given_for_two_contrasts_is_refused_naming_both(multi, tmp_path, capsys, how):
    t1 = write_tiny_head(tmp_path / "a_t1.nii.gz")
    flair = write_tiny_head(tmp_path / "a_flair.nii.gz", seed=1)
    twin = t1 if how == "same path" else tmp_path / "b.nii.gz"
    if how == "hard link":
        os.link(t1, twin)
    elif how == "copy":
        shutil.copy(t1, twin)
    out = tmp_path / "out.nii.gz"
    err = _refused(["predict", str(multi), f"--input=T1={t1}", f"--input=T1c={twin}", f"--input=FLAIR={flair}",
                    str(out)], capsys, out)  # fmt: skip
    assert str(t1) in err and str(twin) in err and "the T1 and T1c inputs" in err, err
    assert ("identical voxels" if how == "copy" else "one file") in err, err


def test_a_link_back_into_a_subject_folder_is_one_file_not_two(multi, tmp_path):
    folder = tmp_path / "sub-01"
    for seed, name in enumerate(SOURCES):
        write_tiny_head(folder / f"{name}.nii.gz", seed)
    (folder / "loop").symlink_to(folder, target_is_directory=True)
    _, info = load_model(multi, device="cpu", precision="fp32")
    [job] = plan_subject_jobs(info, folder, tmp_path / "o.nii.gz", inputs=None, overwrite=False)
    assert job.sources == tuple(folder / f"{name}.nii.gz" for name in SOURCES)
    other = folder / "more"  # a second, different T1 deeper down is named by where it lies
    write_tiny_head(other / "T1.nii.gz", seed=7)
    with pytest.raises(DataError, match=r"several T1 inputs \((T1\.nii\.gz, more/T1\.nii\.gz|more/T1\.nii\.gz, T1\.nii\.gz)\)"):
        plan_subject_jobs(info, folder, tmp_path / "o.nii.gz", inputs=None, overwrite=False)


# ------------------------------------------------------------------------ a synthetic input


def test_a_synthetic_nifti_input_is_refused_unless_allowed(single, tmp_path, capsys):
    source = write_tiny_head(tmp_path / "x_t1.nii.gz")
    synthetic = tmp_path / "x_t1_synth.nii.gz"
    assert _run(["predict", str(single), str(source), str(synthetic)], capsys)[0] == 0
    out = tmp_path / "y.nii.gz"
    err = _refused(["predict", str(single), str(synthetic), str(out)], capsys, out)
    assert str(synthetic) in err and "synthetic" in err and "--allow-synthetic-input" in err, err
    assert _run(["predict", str(single), str(synthetic), str(out), "--allow-synthetic-input"], capsys)[0] == 0
    assert out.is_file()


def test_a_synthetic_dicom_series_is_refused(single, tmp_path, capsys):
    source = write_tiny_head(tmp_path / "x_t1.nii.gz")
    series = tmp_path / "series"
    assert _run(["predict", str(single), str(source), str(series), "--output-format", "dicom"], capsys)[0] == 0
    out = tmp_path / "y.nii.gz"
    err = _refused(["predict", str(single), str(series), str(out)], capsys, out)
    assert "Synthetic Data" in err, err


# ------------------------------------------------------------- outputs never read back as inputs


def test_a_batch_into_its_own_input_folder_is_refused(single, tmp_path, capsys):
    folder = tmp_path / "batch"
    write_tiny_head(folder / "a_t1.nii.gz")
    _refused(["predict", str(single), str(folder), str(folder)], capsys, folder / "a_t1_synth.nii.gz")


def test_an_earlier_output_in_a_batch_folder_is_left_out_with_a_note(single, tmp_path, capsys):
    folder = tmp_path / "batch"
    source = write_tiny_head(folder / "a_t1.nii.gz")
    assert _run(["predict", str(single), str(source), str(folder / "a_t1_synth.nii.gz")], capsys)[0] == 0
    code, err = _run(["predict", str(single), str(folder), str(tmp_path / "out")], capsys)
    assert code == 0, err
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["a_t1_synth.nii.gz"]
    assert "a_t1_synth.nii.gz: skipped, it is synthetic" in err, err


def test_a_dicom_output_inside_the_input_series_is_refused(single, tmp_path, capsys):
    series = write_dicom_series(tmp_path / "dcm_in", np.asarray(nib.load(write_tiny_head(tmp_path / "v.nii.gz")).dataobj))
    for file in series.iterdir():  # named as a scanner names them, not as this program does
        file.rename(series / f"MR.1.{file.stem}")
    before = sorted(series.iterdir())
    _refused(["predict", str(single), str(series), str(series), "--output-format", "dicom"], capsys)
    assert sorted(series.iterdir()) == before


# ---------------------------------------------------------------- a batch output named like a file


def test_a_batch_output_named_like_a_file_is_refused(single, multi, tmp_path, capsys):
    folder = tmp_path / "batch"
    write_tiny_head(folder / "a_t1.nii.gz")
    _refused(["predict", str(single), str(folder), str(tmp_path / "out.nii.gz")], capsys, tmp_path / "out.nii.gz")
    subjects = tmp_path / "subjects"
    for subject in ("sub-01", "sub-02"):
        for seed, name in enumerate(SOURCES):
            write_tiny_head(subjects / subject / f"{name}.nii.gz", seed)
    _refused(["predict", str(multi), str(subjects), str(tmp_path / "o.nii.gz")], capsys, tmp_path / "o.nii.gz")


# --------------------------------------------------------------------- options that do nothing


def test_uncertainty_options_that_would_do_nothing_are_refused(single, tmp_path, capsys):
    image = tmp_path / "slice.png"
    write_image_16bit(image, np.pad(np.random.default_rng(0).uniform(0.2, 1.0, (20, 20)).astype(np.float32), 6))
    out = tmp_path / "o.png"
    err = _refused(["predict", str(single), str(image), str(out), "--uncertainty"], capsys, out)
    assert "volumes" in err and "slice.png" in err, err
    source = write_tiny_head(tmp_path / "x_t1.nii.gz")
    err = _refused(["predict", str(single), str(source), str(tmp_path / "y.nii.gz"), "--uncertainty-passes", "4"],
                   capsys, tmp_path / "y.nii.gz")  # fmt: skip
    assert "without --uncertainty" in err, err
    code = cli_main(["test", str(single), "--uncertainty-passes", "4", "--device", "cpu"])  # `test` too
    err = capsys.readouterr().err
    assert code == 2 and "--uncertainty-passes 4 does nothing without --uncertainty" in err, err


def test_test_time_passes_out_of_range_are_refused_before_any_work(single, tmp_path, capsys):
    source = write_tiny_head(tmp_path / "x_t1.nii.gz")
    for passes in ("0", "35"):
        err = _refused(["predict", str(single), str(source), str(tmp_path / "y.nii.gz"), "--tta", passes],
                       capsys, tmp_path / "y.nii.gz")  # fmt: skip
        assert f"--tta must be between 1 and 34, got {passes}" in err, err
    code = cli_main(["test", str(single), "--tta", "0", "--device", "cpu"])  # `test` too
    err = capsys.readouterr().err
    assert code == 2 and "--tta must be between 1" in err, err


# ------------------------------------------------------------------- names of checkpoints and cards


def test_checkpoints_are_named_after_the_models_contrasts():
    config = RunConfig(data=DataConfig(source=SOURCES, target="T2"))
    assert config.train.run_name == "gan_t1_t1c_flair_to_t2"
    assert RunFolder(Path("run"), config.train.run_name).best.name == "gan_t1_t1c_flair_to_t2_best.pth"
    assert RunConfig().train.run_name == "gan_t1_to_t2"  # the single-source default is unchanged
    assert RunConfig(data=DataConfig(target="FLAIR")).train.run_name == "gan_t1_to_flair"


# ---------------------------------------------------------------------------------------- BIDS


def test_bids_images_with_invalid_labels_are_named_and_counted(single, tmp_path, capsys):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    for label in ("01", "a_b", "x y"):
        write_tiny_head(root / f"sub-{label}" / "anat" / f"sub-{label}_T1w.nii.gz")
    out = tmp_path / "derivative"
    code, err = _run(["predict", str(single), str(root), str(out)], capsys)
    assert code == 2, err
    assert "sub-a_b_T1w.nii.gz: not a valid BIDS name" in err and "sub-x y_T1w.nii.gz: not a valid BIDS name" in err
    assert "2 of 3 inputs failed" in err, err
    assert (out / "sub-01" / "anat" / "sub-01_desc-synthetic_T2w.nii.gz").is_file()


def test_a_bids_derivative_named_like_a_file_is_refused(single, tmp_path, capsys):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text(json.dumps({"Name": "tiny", "BIDSVersion": "1.9.0"}))
    write_tiny_head(root / "sub-01" / "anat" / "sub-01_T1w.nii.gz")
    _refused(["predict", str(single), str(root), str(tmp_path / "out.nii.gz")], capsys, tmp_path / "out.nii.gz")


# ------------------------------------------------------------------------ a skull-on input


def test_an_input_with_its_skull_is_told_to_strip_it_not_asked_its_contrast(tmp_path):
    stripped = write_tiny_head(tmp_path / "stripped_t1.nii.gz")
    brain = np.asarray(nib.load(stripped).dataobj)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in brain.shape], indexing="ij"))
    radius = np.hypot(grid[0], grid[1])
    head = np.where(radius < 0.8, brain, np.where(radius < 0.95, 2500.0, 0.0))  # a bright skull around it
    head = head + np.random.default_rng(1).uniform(1, 30, head.shape)  # and scanner noise, nowhere zero
    raw = tmp_path / "raw_t1.nii.gz"
    nib.save(nib.Nifti1Image(head.astype(np.float32), np.eye(4)), raw)
    # A model that extracts no brain (--brain-extraction none): the input goes in as it is.
    config = replace(_config(), data=replace(_config().data, brain_extraction="none"))
    prepared = portable.prepare_volume(read_volume(stripped), config.data)
    reference = portable.source_reference([portable.intensity_histogram(prepared.slices, prepared.mask)], "T1")
    info = ModelInfo(config=config, name="m.pth", kind="pytorch", source_reference=reference)

    def warnings_of(path: Path) -> list[str]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            predict_volume_maps(lambda batch: batch[:, :1] * 0, info, path)
        return [str(w.message) for w in caught if issubclass(w.category, ContrastWarning)]

    assert warnings_of(stripped) == []
    [message] = warnings_of(raw)
    assert "raw_t1.nii.gz" in message and "not skull-stripped" in message and "really" not in message, message
