"""`mri2mri predict`: whole volumes and images in, synthetic contrast out, on the input's grid."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage
from test_data_io import write_dicom_series

from mri2mri import portable
from mri2mri.checkpoint import save_checkpoint
from mri2mri.cli import main as cli_main
from mri2mri.config import DataConfig, ModelConfig, RunConfig
from mri2mri.data import png, preprocess
from mri2mri.data.cache import SliceCache
from mri2mri.data.geometry import normalise
from mri2mri.data.io import read_volume
from mri2mri.errors import DataError
from mri2mri.models import build_generator
from mri2mri.predict import ContrastWarning, ModelInfo, predict_path, predict_volume
from mri2mri.training import residual_table

REAL_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "real-mri"
SPACING = (1.2, 1.1, 2.0)
SHAPE = (36, 40, 16)  # canonical (R, A, S) voxels of the synthetic subjects


# --------------------------------------------------------------------------------------------
# Tiny data: T2 = a decreasing map of T1 inside an ellipsoidal "brain", zero outside


def brain_pair(shape=SHAPE, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Canonical T1 and T2 arrays; after per-volume normalisation T2 is exactly 1 - T1 in the brain."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = ((grid / np.array([0.85, 0.9, 0.95])[:, None, None, None]) ** 2).sum(0) < 1
    field = ndimage.gaussian_filter(rng.normal(size=shape), 2.0)
    field = np.clip((field - field[inside].min()) / np.ptp(field[inside]), 0, 1)
    # sqrt skews T1 towards bright (like white matter), so T2 is skewed towards dark.
    t1 = np.where(inside, 200 + 800 * np.sqrt(field), 0).astype(np.float32)
    t2 = np.where(inside, 1200 - t1, 0).astype(np.float32)
    return t1, t2


def oblique_affine() -> np.ndarray:
    """Stored axes (S->I, P, R->L)-like with a 12 degree rotation, translation, non-unit spacing."""
    angle = np.deg2rad(12)
    rotation = np.array(
        [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]]
    )
    axes = np.array(
        [[0, 0, -SPACING[0]], [0, -SPACING[1], 0], [-SPACING[2], 0, 0]]
    )  # columns: stored axes
    affine = np.eye(4)
    affine[:3, :3] = rotation @ axes
    affine[:3, 3] = [31.5, -12.25, 7.0]
    return affine


def save_oblique(path: Path, canonical: np.ndarray) -> Path:
    """Store a canonical array with axes reversed and flipped under :func:`oblique_affine`."""
    stored = np.ascontiguousarray(canonical.transpose(2, 1, 0)[::-1, ::-1, ::-1])
    nib.save(nib.Nifti1Image(stored, oblique_affine()), path)
    return path


def expected_t2(stored: np.ndarray, percentiles=(0.5, 99.5)) -> tuple[np.ndarray, np.ndarray]:
    """(1 - normalised T1) and the brain mask, on the stored grid."""
    mask = stored != 0
    t1_01, _, _ = normalise(stored, mask, percentiles)
    return (1.0 - t1_01) * mask, mask


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


# Without N4: the synthetic T1 is a smooth random field, which N4 would take for a bias field and
# flatten; these tests check what predict does with the intensities (tests/test_bias_correction.py
# checks that predict repeats training's N4).
DATA_CONFIG = DataConfig(image_size=32, context_slices=1, val_fraction=0.25, test_fraction=0.25,
                         bias_correction="none")  # fmt: skip


def fit_run(root: Path, *, steps: int = 250) -> Path:
    """A run folder whose checkpoint learnt T1 -> T2 on a cache made by `prepare` (L1 only: fast).

    The model sees exactly the slices `prepare` makes (reorientation, mask, normalisation,
    2.5D context), so a prediction that processes a volume differently scores badly.
    """
    for index in range(4):
        t1, t2 = brain_pair(seed=index)
        folder = root / "data" / f"sub-{index:02d}"
        folder.mkdir(parents=True)
        for name, array in (("T1", t1), ("T2", t2)):
            nib.save(nib.Nifti1Image(array, np.diag([*SPACING, 1.0])), folder / f"{name}.nii.gz")
    run = root / "run"
    cache = SliceCache(
        preprocess.prepare(root / "data", DATA_CONFIG, run / "cache", progress=False)
    )
    (run / "split.json").write_text((run / "cache" / "split.json").read_text())
    config = RunConfig(
        data=DATA_CONFIG,
        model=ModelConfig(
            generator="unet", base_channels=8, norm="none", dropout=0.0, in_channels=3
        ),
    )
    torch.manual_seed(0)
    G = build_generator(config.model)
    G.set_table(residual_table(config, cache))  # the default: a correction over the intensity map
    rows = cache.rows("train")
    source = torch.from_numpy(np.array(cache.source[rows])) * 2 - 1
    target = torch.from_numpy(np.array(cache.target[rows])) * 2 - 1
    optimiser = torch.optim.Adam(G.parameters(), lr=3e-3)
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        batch = torch.randint(0, len(rows), (8,), generator=generator)
        loss = F.l1_loss(G(source[batch]), target[batch])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    save_checkpoint(
        run / "checkpoints" / "tiny_best.pth",
        {"G": G.state_dict(), "config": config.to_dict(), "epoch": 1},
    )
    return run


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return fit_run(tmp_path_factory.mktemp("predict"))


@pytest.fixture(scope="module")
def t1_file(tmp_path_factory) -> Path:
    """An unseen subject's T1, stored in a non-canonical, rotated orientation."""
    return save_oblique(tmp_path_factory.mktemp("inputs") / "new_T1.nii.gz", brain_pair(seed=11)[0])


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --------------------------------------------------------------------------------------------
# A 2D image is prepared as its training pairs were


def test_portable_image_preparation_equals_png_pairs(tmp_path):
    image = np.zeros((40, 52), np.uint16)
    image[5:35, 8:44] = np.random.default_rng(0).integers(1000, 60000, (30, 36))
    for contrast in ("T1", "T2"):
        (tmp_path / "train" / contrast).mkdir(parents=True)
        Image.fromarray(image).save(tmp_path / "train" / contrast / "a.png")
    config = DataConfig(image_size=32, context_slices=1)
    pair = png.discover_image_pairs(tmp_path, "T1", "T2")[0]
    theirs = png.image_pair_slices(pair, config)
    ours = portable.prepare_image(image.astype(np.float32), config, str(pair.source))
    np.testing.assert_allclose(ours.slices, theirs.source, atol=1e-5)
    np.testing.assert_array_equal(ours.mask, theirs.mask)
    assert ours.geometry == theirs.record.geometry | {"grid_file": str(pair.source)}


# --------------------------------------------------------------------------------------------
# Volumes


def test_exact_inverse_with_an_oracle_model(t1_file):
    """A 'model' that inverts its centre channel must give 1 - normalised T1 on the input's grid."""
    # 64 px > the 40 px brain crop: slicing up-samples, so the round trip barely blurs. Without
    # N4, whose field would change the intensities this compares (the geometry is under test).
    config = RunConfig(
        data=DataConfig(image_size=64, context_slices=1, bias_correction="none"),
        model=ModelConfig(in_channels=3),
    )
    info = ModelInfo(config=config, name="oracle", kind="test")
    data, affine = predict_volume(lambda batch: -batch[:, 1:2], info, t1_file, batch_size=5)
    stored = np.asarray(nib.load(t1_file).dataobj, dtype=np.float32)
    expected, mask = expected_t2(stored)
    assert data.shape == stored.shape and data.dtype == np.float32
    np.testing.assert_array_equal(affine, nib.load(t1_file).affine)
    assert np.all(data[~mask] == 0)
    # Away from the brain's edge, where resampling mixes in the background, it is nearly exact:
    # any flip, transposition or shift of the grid would destroy this.
    inner = ndimage.binary_erosion(mask, iterations=2)
    assert correlation(data[inner], expected[inner]) > 0.995
    assert np.abs(data[inner] - expected[inner]).mean() < 0.015


def test_predict_nifti_on_the_input_grid_with_the_learnt_contrast(run_dir, t1_file, tmp_path):
    output = tmp_path / "out" / "new_T2.nii.gz"
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContrastWarning)  # a T1 must not trigger the contrast check
        written = predict_path(run_dir, t1_file, output, device="cpu", batch_size=4)
    assert written == [output] and leftovers(output.parent) == ["new_T2.nii.gz"]
    source, result = nib.load(t1_file), nib.load(output)
    assert nib.aff2axcodes(source.affine) != ("R", "A", "S")
    assert result.shape == source.shape
    np.testing.assert_array_equal(result.affine, source.affine)
    assert nib.aff2axcodes(result.affine) == nib.aff2axcodes(source.affine)
    assert result.get_data_dtype() == np.float32
    description = result.header["descrip"].item().decode()
    assert description.startswith("mri2mri synthetic T2 from T1, unet, tiny_best.pth")
    provenance = json.loads(result.header.extensions[0].get_content())
    assert provenance["synthetic"] is True and provenance["model_file"] == "tiny_best.pth"
    data = result.get_fdata(dtype=np.float32)
    expected, mask = expected_t2(np.asarray(source.dataobj, dtype=np.float32))
    assert np.all(data[~mask] == 0) and data.min() >= 0 and data.max() <= 1
    # The brain's rim mixes with background when slices are resized (see the oracle test).
    inner = ndimage.binary_erosion(mask, iterations=2)
    assert correlation(data[inner], expected[inner]) > 0.9
    assert correlation(data[mask], expected[mask]) > 0.7


def test_predict_dicom_series(run_dir, tmp_path):
    series = write_dicom_series(tmp_path / "T1", brain_pair(seed=12)[0], SPACING, slope=1.0, intercept=0.0)
    output = tmp_path / "dicom_T2.nii"
    predict_path(run_dir, series, output, device="cpu")
    volume = read_volume(series)
    result = nib.load(output)
    assert result.shape == volume.original_shape
    np.testing.assert_allclose(result.affine, volume.original_affine, atol=1e-4)
    stored = volume.to_original(volume.data)
    expected, mask = expected_t2(stored)
    inner = ndimage.binary_erosion(mask, iterations=2)
    assert correlation(result.get_fdata()[inner], expected[inner]) > 0.9


# --------------------------------------------------------------------------------------------
# Images and batch mode


def test_png_in_16_bit_png_out(run_dir, tmp_path):
    t1, _ = brain_pair(seed=13)
    plane = np.rot90(t1[:, :, 8])  # one axial slice in the training view
    source = tmp_path / "slice.png"
    Image.fromarray(np.round(plane * 40).astype(np.uint16)).save(source)
    output = tmp_path / "slice_T2.png"
    predict_path(run_dir, source, output, device="cpu")
    with Image.open(output) as image:
        assert image.mode == "I;16" and image.size == (plane.shape[1], plane.shape[0])
        result = np.asarray(image).astype(np.float32) / 65535
    expected, mask = expected_t2(plane)
    assert np.all(result[~mask] == 0)
    assert correlation(result[mask], expected[mask]) > 0.8


def test_batch_folder_writes_one_output_per_input(run_dir, t1_file, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    for seed in (14, 15):
        save_oblique(inputs / f"sub-{seed}_T1.nii.gz", brain_pair(seed=seed)[0])
    plane = np.rot90(brain_pair(seed=16)[0][:, :, 8])
    Image.fromarray(np.round(plane * 40).astype(np.uint16)).save(inputs / "slice.tif")
    write_dicom_series(inputs / "sub-17_dicom", brain_pair(seed=17)[0], SPACING, slope=1.0, intercept=0.0)
    written = predict_path(run_dir, inputs, tmp_path / "out", device="cpu")
    assert sorted(p.name for p in written) == sorted(
        [
            "slice_synth.tif",
            "sub-14_T1_synth.nii.gz",
            "sub-15_T1_synth.nii.gz",
            "sub-17_dicom_synth",  # DICOM in, DICOM series folder out
        ]
    )
    assert leftovers(tmp_path / "out") == sorted(p.name for p in written)
    assert (
        nib.load(tmp_path / "out" / "sub-14_T1_synth.nii.gz").shape
        == nib.load(inputs / "sub-14_T1.nii.gz").shape
    )


def test_cli_predict(run_dir, t1_file, tmp_path, capsys):
    output = tmp_path / "cli.nii.gz"
    assert cli_main(["predict", str(run_dir / "checkpoints" / "tiny_best.pth"), str(t1_file), str(output),
                     "--device", "cpu", "--batch-size", "8"]) == 0  # fmt: skip
    assert f"wrote {output}" in capsys.readouterr().out
    assert cli_main(["predict", str(run_dir), str(t1_file), str(output), "--device", "cpu"]) == 2
    error = capsys.readouterr().err.strip()
    assert error.count("\n") == 0 and str(output) in error and "--overwrite" in error


# --------------------------------------------------------------------------------------------
# Bad input: one clear line naming the file, no partial output


def test_four_d_input_is_refused(run_dir, tmp_path):
    source = tmp_path / "fmri.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((8, 8, 8, 3), np.float32), np.eye(4)), source)
    with pytest.raises(DataError, match=r"fmri\.nii\.gz: 4D") as error:
        predict_path(run_dir, source, tmp_path / "out" / "x.nii.gz", device="cpu")
    assert "\n" not in str(error.value)
    assert leftovers(tmp_path / "out") == []


def test_unreadable_input_is_refused(run_dir, tmp_path):
    source = tmp_path / "broken.nii.gz"
    source.write_bytes(b"\x1f\x8b not really gzip")
    with pytest.raises(DataError, match=r"broken\.nii\.gz: unreadable"):
        predict_path(run_dir, source, tmp_path / "out" / "x.nii.gz", device="cpu")
    assert leftovers(tmp_path / "out") == []
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(DataError, match=r"notes\.txt: not a NIfTI"):
        predict_path(run_dir, notes, tmp_path / "x.nii.gz", device="cpu")
    with pytest.raises(DataError, match=r"x\.png: a volume's output must be a NIfTI"):
        predict_path(run_dir, tmp_path / "broken.nii.gz", tmp_path / "x.png", device="cpu")


def test_existing_output_needs_overwrite(run_dir, t1_file, tmp_path):
    output = tmp_path / "exists.nii.gz"
    output.write_bytes(b"keep me")
    with pytest.raises(DataError, match=r"exists\.nii\.gz: exists; pass --overwrite"):
        predict_path(run_dir, t1_file, output, device="cpu")
    assert output.read_bytes() == b"keep me"
    predict_path(run_dir, t1_file, output, device="cpu", overwrite=True)
    assert nib.load(output).shape == nib.load(t1_file).shape


def test_failure_while_writing_leaves_no_file(run_dir, t1_file, tmp_path, monkeypatch):
    def fail(image, filename):
        Path(filename).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(nib, "save", fail)
    with pytest.raises(OSError, match="disk full"):
        predict_path(run_dir, t1_file, tmp_path / "out" / "x.nii.gz", device="cpu")
    assert leftovers(tmp_path / "out") == []


def test_wrong_contrast_warns(run_dir, tmp_path):
    t2_file = save_oblique(tmp_path / "actually_T2.nii.gz", brain_pair(seed=11)[1])
    with pytest.warns(ContrastWarning, match=r"actually_T2\.nii\.gz: .*is it really a T1"):
        predict_path(run_dir, t2_file, tmp_path / "x.nii.gz", device="cpu")


def test_batch_mode_reports_bad_inputs_and_keeps_good_ones(run_dir, t1_file, tmp_path):
    inputs = tmp_path / "inputs"
    inputs.mkdir()
    (inputs / "a_T1.nii.gz").write_bytes(Path(t1_file).read_bytes())
    (inputs / "b_T1.nii.gz").write_bytes(b"garbage")
    with pytest.raises(
        DataError, match=r"1 of 2 inputs failed \(first: .*b_T1\.nii\.gz: unreadable"
    ):
        predict_path(run_dir, inputs, tmp_path / "out", device="cpu")
    assert leftovers(tmp_path / "out") == ["a_T1_synth.nii.gz"]


# --------------------------------------------------------------------------------------------
# Real data (skipped when ../shared/data/real-mri is absent)


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data/real-mri is absent")
def test_real_volume_keeps_its_grid(tmp_path):
    """A real 240 x 240 x 155 LPS volume at 64 px: output grid = input grid; the contrast check."""
    config = RunConfig(data=DataConfig(image_size=64, context_slices=1),
                       model=ModelConfig(base_channels=8, in_channels=3))  # fmt: skip
    torch.manual_seed(0)
    save_checkpoint(
        tmp_path / "real.pth",
        {"G": build_generator(config.model).state_dict(), "config": config.to_dict()},
    )
    case = REAL_DATA / "BrainLesion-preprocessed_case"
    output = tmp_path / "t2_synth.nii.gz"
    predict_path(tmp_path / "real.pth", case / "t1n.nii.gz", output, device="cpu", batch_size=32)
    source, result = nib.load(case / "t1n.nii.gz"), nib.load(output)
    assert result.shape == source.shape
    np.testing.assert_array_equal(result.affine, source.affine)
    assert np.all(result.get_fdata(dtype=np.float32)[np.asarray(source.dataobj) == 0] == 0)


REAL_CASES = {
    "BraTS-GLI-00001-000": ("BraTS-GLI-00001-000-t1n.nii.gz", "BraTS-GLI-00001-000-t2w.nii.gz"),
    "BrainLesion-preprocessed_case": ("t1n.nii.gz", "t2w.nii.gz"),
    "TCGA-DU-7294": ("TCGA-DU-7294_t1_bet_normalized.nii.gz", "TCGA-DU-7294_t2_bet_normalized.nii.gz"),
}


@pytest.mark.realdata
@pytest.mark.skipif(not REAL_DATA.is_dir(), reason="../shared/data/real-mri is absent")
def test_contrast_check_on_real_patients():
    """Each patient held out once, references from the other two: its T1 passes, its T2 is flagged.

    TCGA-DU-7294's T1 lies just past the source threshold; it passes because it is far from the
    T2 reference (it was a false alarm with the source reference alone)."""
    data = DataConfig(image_size=64)
    histograms = {}
    for case, files in REAL_CASES.items():
        for contrast, name in zip(("T1", "T2"), files, strict=True):
            prepared = portable.prepare_volume(read_volume(REAL_DATA / case / name), data)
            histograms[case, contrast] = (prepared, portable.intensity_histogram(prepared.slices, prepared.mask))
    for held_out in REAL_CASES:
        others = [case for case in REAL_CASES if case != held_out]
        reference = portable.source_reference(
            [histograms[c, "T1"][1] for c in others], "T1", [histograms[c, "T2"][1] for c in others], "T2"
        )
        assert portable.check_source(histograms[held_out, "T1"][0], reference) is None, held_out
        message = portable.check_source(histograms[held_out, "T2"][0], reference)
        assert message is not None and "look more like the training T2 images" in message, held_out


def _prepared_with_histogram(histogram: np.ndarray) -> portable.PreparedInput:
    """An input whose brain voxels have exactly ``histogram`` (20 bins, 100 voxels)."""
    counts = np.round(np.asarray(histogram) * 100).astype(int)
    values = np.repeat((np.arange(portable.HISTOGRAM_BINS) + 0.5) / portable.HISTOGRAM_BINS, counts)
    slices = values.reshape(1, 1, 10, 10).astype(np.float32)
    mask = np.ones_like(slices, dtype=bool)
    return portable.PreparedInput(slices, mask, mask[0, 0], np.zeros(1, int), {"grid_file": "x.nii"}, {})


def _one_bin(index: int) -> np.ndarray:
    histogram = np.zeros(portable.HISTOGRAM_BINS)
    histogram[index] = 1.0
    return histogram


def test_contrast_check_uses_the_target_reference():
    # Source mass in bin 5, target mass in bin 15: one bin is 0.05 of distance.
    reference = portable.source_reference([_one_bin(5)], "T1", [_one_bin(15)], "T2")
    assert reference["threshold"] == portable.MIN_THRESHOLD
    check = portable.check_source
    assert check(_prepared_with_histogram(_one_bin(6)), reference) is None  # within the threshold
    assert check(_prepared_with_histogram(_one_bin(2)), reference) is None  # past it, away from T2
    closer_to_t2 = check(_prepared_with_histogram(_one_bin(11)), reference)
    assert closer_to_t2 is not None and closer_to_t2.startswith("x.nii: ") and "T2" in closer_to_t2
    far = check(_prepared_with_histogram(_one_bin(0)), reference)  # 0.25 from T1: past 2 x 0.1
    assert far is not None and "differ from the training T1 images (distance 0.250 > 0.100)" in far
    without_target = portable.source_reference([_one_bin(5)], "T1")  # an older model's reference
    assert check(_prepared_with_histogram(_one_bin(2)), without_target) is not None
