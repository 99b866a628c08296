"""Brain extraction as a step of the source preparation (data/extraction.py), the in-plane
resolution the model trained at (data/resolution.py), several grids, and the raw-study path of
`predict`. deepbet runs for real wherever a test says it extracts."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_predict import SPACING, brain_pair

from mri2mri.checkpoint import save_checkpoint
from mri2mri.cli import main as cli_main
from mri2mri.config import DataConfig, ModelConfig, RunConfig
from mri2mri.data import preprocess
from mri2mri.data.cache import SliceCache, adopt_cache_preparation
from mri2mri.data.geometry import slice_volume
from mri2mri.data.io import read_volume
from mri2mri.data.resolution import in_plane_grid
from mri2mri.errors import DataError
from mri2mri.models import build_generator
from mri2mri.predict import load_model, predict_path, predict_volume_full

RAW = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "clinical-raw" / "ms-patient01-study1"
AFFINE = np.diag([*SPACING, 1.0])


def save_model(path: Path, data: DataConfig, *, unknown: tuple[str, ...] = ()) -> Path:
    """An untrained generator's checkpoint (what predict does with its input is under test, not
    what it learnt); the data fields named in ``unknown`` are left out of its configuration, as
    a version from before they existed saved it."""
    run = RunConfig(data=data, model=ModelConfig(base_channels=8, residual="none", in_channels=data.in_channels))
    config = run.to_dict()
    for name in unknown:
        del config["data"][name]
    torch.manual_seed(0)
    save_checkpoint(path, {"G": build_generator(run.model).state_dict(), "config": config})
    return path


def save(path: Path, data: np.ndarray, affine: np.ndarray = AFFINE) -> Path:
    nib.save(nib.Nifti1Image(np.asarray(data, dtype=np.float32), affine), path)
    return path


def head_with_skull(shape=(48, 48, 40), seed: int = 0) -> np.ndarray:
    """A noisy, non-zero background everywhere: not skull-stripped."""
    return np.random.default_rng(seed).uniform(100, 200, shape).astype(np.float32)


def run_cli(args: list[str], capsys) -> tuple[int, list[str]]:
    code = cli_main([str(a) for a in args])
    return code, [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# Skull-stripped data and old checkpoints: exactly as before


def test_auto_leaves_a_zero_background_volume_untouched(tmp_path):
    volume = read_volume(save(tmp_path / "T1.nii.gz", brain_pair(seed=3)[0]))
    sliced = {method: slice_volume([(volume.data, volume.path)], volume,
                                   DataConfig(image_size=32, brain_extraction=method))
              for method in ("auto", "none")}  # fmt: skip
    np.testing.assert_array_equal(sliced["auto"].slices, sliced["none"].slices)
    np.testing.assert_array_equal(sliced["auto"].full_mask, sliced["none"].full_mask)
    assert sliced["auto"].windows == sliced["none"].windows
    assert sliced["auto"].extraction["method"] == "none"
    assert "already skull-stripped" in sliced["auto"].extraction["reason"]


def test_auto_leaves_a_large_simulated_brain_untouched(tmp_path):
    """A skull-stripped brain larger than any real one (the built-in data's first subject, 2.5 L)
    is not taken for a head: deepbet finds brain in nearly all of it, and auto uses it as it is."""
    from mri2mri.data.phantom import write_phantom

    write_phantom(tmp_path / "phantom", n_subjects=1, seed=0)
    volume = read_volume(tmp_path / "phantom" / "sub-01" / "T1.nii.gz")
    sliced = {method: slice_volume([(volume.data, volume.path)], volume,
                                   DataConfig(image_size=32, brain_extraction=method))
              for method in ("auto", "none")}  # fmt: skip
    np.testing.assert_array_equal(sliced["auto"].slices, sliced["none"].slices)
    assert sliced["auto"].extraction["method"] == "none"
    assert "deepbet's brain holds" in sliced["auto"].extraction["reason"]


def test_a_checkpoint_saved_before_extraction_keeps_the_volume_as_it_is(tmp_path):
    """An older configuration has neither field: no extraction (even of a volume with its
    background on) and no in-plane resampling, so it predicts as it always did."""
    checkpoint = save_model(tmp_path / "old.pth", DataConfig(image_size=32),
                            unknown=("brain_extraction", "in_plane_spacing"))  # fmt: skip
    run, info = load_model(checkpoint, device="cpu")
    assert (info.data.brain_extraction, info.data.in_plane_spacing) == ("none", None)
    result = predict_volume_full(run, info, save(tmp_path / "T1.nii.gz", head_with_skull()))
    steps = {step["step"]: step for step in result.preparation}
    assert steps["brain_extraction"]["method"] == "none" and "in_plane_resampling" not in steps
    assert result.mask.mean() > 0.5  # the Otsu head mask of a non-stripped volume, as before


# --------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written


def test_a_2d_localiser_is_refused_in_one_line(tmp_path, capsys):
    checkpoint = save_model(tmp_path / "m.pth", DataConfig(image_size=32))
    localiser = save(tmp_path / "localiser.nii.gz", head_with_skull((96, 96, 1)), np.diag([2.0, 2.0, 5.0, 1.0]))
    code, lines = run_cli(["predict", checkpoint, localiser, tmp_path / "out.nii.gz"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert str(localiser) in lines[0] and "2D image" in lines[0]
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_volume_without_a_brain_is_refused_in_one_line(tmp_path, capsys):
    """deepbet (run for real) calls part of a volume of noise brain; the check refuses it."""
    checkpoint = save_model(tmp_path / "m.pth", DataConfig(image_size=32))
    noise = save(tmp_path / "noise.nii.gz", head_with_skull((96, 96, 48)), np.diag([1.5, 1.5, 1.5, 1.0]))
    code, lines = run_cli(["predict", checkpoint, noise, tmp_path / "out.nii.gz", "--save-mask"], capsys)
    assert code == 2 and len(lines) == 1, lines
    assert str(noise) in lines[0] and "no brain found" in lines[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.pth", "noise.nii.gz"]


def test_onnx_without_pytorch_says_what_extraction_needs(tmp_path):
    """The ONNX route imports PyTorch only to extract a brain; without it, one clear line."""
    from mri2mri.export import export_model

    checkpoint = save_model(tmp_path / "m.pth", DataConfig(image_size=32))
    export_model(checkpoint, onnx_path=tmp_path / "m.onnx")
    head = save(tmp_path / "head.nii.gz", head_with_skull())
    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
        "from mri2mri.errors import UserError\n"
        "from mri2mri.predict import predict_path\n"
        "try:\n"
        f"    predict_path({str(tmp_path / 'm.onnx')!r}, {str(head)!r}, {str(tmp_path / 'out.nii.gz')!r})\n"
        "except UserError as error:\n"
        "    print('refused:', error)\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "refused: brain extraction needs the deepbet package and PyTorch" in done.stdout
    assert "--brain-extraction none" in done.stdout and not (tmp_path / "out.nii.gz").exists()


def test_contrasts_that_do_not_overlap_are_refused_and_registration_is_reported(tmp_path):
    t1, flair = brain_pair(seed=4)
    checkpoint = save_model(tmp_path / "m.pth", DataConfig(source=("T1", "FLAIR"), image_size=32))
    first = save(tmp_path / "T1.nii.gz", t1)
    far = AFFINE.copy()
    far[:3, 3] = [400.0, 0.0, 0.0]  # another body part's worth away: nothing in common
    inputs = {"T1": first, "FLAIR": save(tmp_path / "FLAIR.nii.gz", flair, far)}
    with pytest.raises(DataError, match="do not overlap") as caught:
        predict_path(checkpoint, None, tmp_path / "out.nii.gz", inputs=inputs, device="cpu")
    assert str(inputs["FLAIR"]) in str(caught.value) and not (tmp_path / "out.nii.gz").exists()

    inputs["FLAIR"] = save(tmp_path / "FLAIR.nii.gz", flair)
    output = predict_path(checkpoint, None, tmp_path / "out.nii.gz", inputs=inputs, device="cpu", register=True)[0]
    provenance = json.loads(nib.load(output).header.extensions[0].get_content())
    onto = next(step for step in provenance["preparation"] if step["step"] == "onto_first_source_grid")
    assert onto["registration"]["metric"] == "mattes_mutual_information"
    assert np.isfinite(onto["registration"]["final_metric_value"]) and onto["overlap"] > 0.9


def test_rigid_registration_is_repeatable(tmp_path):
    """Seed 0 (the default) used to mean SimpleITK's wall clock: two runs sampled differently."""
    t1, flair = brain_pair(seed=6)
    moved = AFFINE.copy()
    moved[:3, 3] = [1.5, -1.0, 0.5]
    fixed, moving = read_volume(save(tmp_path / "T1.nii.gz", t1)), read_volume(save(tmp_path / "F.nii.gz", flair, moved))
    first, second = (preprocess.register_rigid(fixed, moving)[1] for _ in range(2))
    assert first["final_metric_value"] == second["final_metric_value"]
    assert first["translation_mm_ras"] == pytest.approx(second["translation_mm_ras"], abs=1e-9)


# --------------------------------------------------------------------------------------------
# Resolution: the network sees the spacing it trained at; the output lies on the input's grid


def test_in_plane_resampling_keeps_the_field_of_view(tmp_path):
    """A linear ramp of the R coordinate, resampled in-plane: every new voxel holds its own R."""
    affine = np.diag([0.5, 0.7, 3.0, 1.0])
    affine[:3, 3] = [-20.0, 5.0, 1.0]
    i = np.arange(80, dtype=np.float32)[:, None, None]
    volume = read_volume(save(tmp_path / "ramp.nii.gz", np.broadcast_to(affine[0, 3] + 0.5 * i, (80, 60, 10)), affine))
    grid = in_plane_grid(volume, (1.0, 1.0))
    assert grid.data.shape == (40, 42, 10) and grid.spacing == pytest.approx((1.0, 1.0, 3.0))
    r = grid.affine[0, 3] + 1.0 * np.arange(40)
    np.testing.assert_allclose(grid.data[1:-1, 5, 4], r[1:-1], atol=1e-3)  # edges: half outside
    assert grid.affine[2, 3] == volume.affine[2, 3]  # the slices stay where they were


def test_a_source_at_another_spacing_is_resampled_and_comes_back_onto_its_grid(tmp_path):
    data = DataConfig(image_size=32, in_plane_spacing=(2.0, 2.0), bias_correction="none")
    checkpoint = save_model(tmp_path / "m.pth", data)
    source = save(tmp_path / "T1.nii.gz", brain_pair(seed=5)[0])
    output = tmp_path / "out.nii.gz"
    written = predict_path(checkpoint, source, output, device="cpu", save_mask=True)
    assert written == [output, tmp_path / "out_mask.nii.gz"]
    result, mask, stored = nib.load(output), nib.load(written[1]), nib.load(source)
    assert result.shape == mask.shape == stored.shape
    np.testing.assert_array_equal(result.affine, stored.affine)
    values, brain = result.get_fdata(), np.asarray(mask.dataobj) == 1
    assert np.all(values[~brain] == 0) and brain.sum() > 0.8 * (stored.get_fdata() != 0).sum()
    steps = [step["step"] for step in json.loads(result.header.extensions[0].get_content())["preparation"]]
    assert steps == ["read", "in_plane_resampling", "brain_extraction", "bias_correction",
                     "intensity_window", "slices"]  # fmt: skip


def test_training_records_the_in_plane_spacing_it_saw(tmp_path):
    for index in range(3):
        folder = tmp_path / "data" / f"sub-{index}"
        folder.mkdir(parents=True)
        t1, t2 = brain_pair(seed=index)
        save(folder / "T1.nii.gz", t1), save(folder / "T2.nii.gz", t2)
    config = DataConfig(image_size=32, bias_correction="none", val_fraction=0.0, test_fraction=0.0)
    cache = SliceCache(preprocess.prepare(tmp_path / "data", config, tmp_path / "cache", progress=False))
    assert adopt_cache_preparation(cache, config).in_plane_spacing == pytest.approx(SPACING[:2])


# --------------------------------------------------------------------------------------------
# The raw clinical study (skipped when ../shared/data/clinical-raw is absent)


@pytest.mark.realdata
@pytest.mark.skipif(not RAW.is_dir(), reason="../shared/data/clinical-raw is absent")
def test_pytorch_and_onnx_extract_the_same_brain_from_the_raw_study(tmp_path):
    """deepbet on the raw T1 (skull and neck on, 3 mm slices), once per route: the same mask, the
    same synthetic image (to 1e-4 of its range), on the T1W's own grid, 0 outside the brain."""
    from mri2mri.export import export_model

    checkpoint = save_model(tmp_path / "m.pth", DataConfig(image_size=64, in_plane_spacing=(1.0, 1.0)))
    export_model(checkpoint, onnx_path=tmp_path / "m.onnx")
    t1 = RAW / "study1_T1W.nii.gz"
    images, masks = {}, {}
    for kind in ("pth", "onnx"):
        written = predict_path(tmp_path / f"m.{kind}", t1, tmp_path / f"{kind}.nii.gz", device="cpu",
                               precision="fp32", save_mask=True)  # ONNX runs in fp32
        images[kind], masks[kind] = (nib.load(path) for path in written)
    raw = nib.load(t1)
    for image in (*images.values(), *masks.values()):
        assert image.shape == raw.shape and np.allclose(image.affine, raw.affine)
    mask = np.asarray(masks["pth"].dataobj)
    np.testing.assert_array_equal(mask, np.asarray(masks["onnx"].dataobj))
    brain_ml = mask.sum() * np.prod(raw.header.get_zooms()) / 1000
    assert 1000 < brain_ml < 1800  # an adult brain, not the head (2577 mL non-zero)
    pth, onnx = images["pth"].get_fdata(), images["onnx"].get_fdata()
    assert np.all(pth[mask == 0] == 0) and np.abs(pth - onnx).max() <= 1e-4 * np.ptp(pth)
    steps = json.loads(images["onnx"].header.extensions[0].get_content())["preparation"]
    assert next(s for s in steps if s["step"] == "brain_extraction")["method"] == "deepbet"
