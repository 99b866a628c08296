"""Grids, registration, masks, normalisation, slicing and its inverse, split, prepare and cache."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REAL_DATA, link_real_subjects, requires_real_data
from scipy import ndimage

from mri2mri.config import DataConfig
from mri2mri.data.cache import SliceCache, is_cache
from mri2mri.data.discovery import discover_pairs
from mri2mri.data.geometry import (
    brain_mask,
    denormalise,
    normalise,
    otsu_threshold,
    plan_geometry,
    resize_bilinear,
    select_slices,
    slices_to_volume,
    volume_to_slices,
)
from mri2mri.data.io import Volume, read_volume
from mri2mri.data.preprocess import (
    ensure_cache,
    prepare,
    register_rigid,
    resample_to,
    split_subjects,
)
from mri2mri.errors import DataError
from mri2mri.portable import prepare_volume


def head(shape=(36, 40, 32), seed=0) -> tuple[np.ndarray, np.ndarray]:
    """A tiny skull-stripped 'head': T1-like and T2-like volumes, zero outside an ellipsoid."""
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    radius = np.sqrt((grid[0] / 0.8) ** 2 + (grid[1] / 0.85) ** 2 + (grid[2] / 0.75) ** 2)
    brain = radius < 1.0
    ventricles = (
        np.sqrt((grid[0] / 0.25) ** 2 + ((grid[1] - 0.1) / 0.35) ** 2 + (grid[2] / 0.3) ** 2) < 1
    )
    lesion = (
        np.sqrt(
            ((grid[0] - 0.35) / 0.2) ** 2 + ((grid[1] + 0.3) / 0.2) ** 2 + (grid[2] / 0.25) ** 2
        )
        < 1
    )
    texture = ndimage.gaussian_filter(rng.normal(size=shape), 1.5)
    texture = texture / np.abs(texture).max()
    t1 = np.where(brain, 600 + 150 * texture, 0.0)
    t1 = np.where(ventricles, 150, t1)
    t1 = np.where(lesion, 350, t1)
    t2 = np.where(brain, 300 - 80 * texture, 0.0)
    t2 = np.where(ventricles, 1200, t2)
    t2 = np.where(lesion, 900, t2)
    return t1.astype(np.float32), t2.astype(np.float32)


def save(path: Path, data: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(data), np.eye(4) if affine is None else affine), str(path))
    return path


def lps_affine(shape, spacing=1.0):
    affine = np.diag([-spacing, -spacing, spacing, 1.0])
    affine[:3, 3] = [(shape[0] - 1) * spacing, (shape[1] - 1) * spacing, 0.0]
    return affine


def make_subjects(root: Path, count: int, shape=(36, 40, 32)) -> None:
    for index in range(count):
        t1, t2 = head(shape, seed=index)
        scale = 10.0 ** (index % 3 - 1)  # three intensity scales
        folder = root / f"sub-{index + 1:02d}"
        if index % 2:  # stored LPS, like many scanners
            save(folder / "T1.nii.gz", t1[::-1, ::-1] * scale, lps_affine(shape))
            save(folder / "T2.nii.gz", t2[::-1, ::-1] * scale, lps_affine(shape))
        else:
            save(folder / "T1.nii.gz", t1 * scale)
            save(folder / "T2.nii.gz", t2 * scale)


def config(**changes) -> DataConfig:
    return DataConfig(**{"image_size": 32, "min_brain_fraction": 0.05, **changes})


# ---------------------------------------------------------------------------------- masks, intensities


def test_brain_mask_zero_background_and_otsu_head_mask():
    t1, t2 = head()
    np.testing.assert_array_equal(brain_mask(t1, t2), (t1 != 0) | (t2 != 0))
    # A head with noisy background and a dark hole inside: Otsu plus hole filling.
    rng = np.random.default_rng(1)
    noisy = np.where(t1 > 0, 600.0, 0.0) + rng.uniform(1, 20, size=t1.shape)
    noisy[16:20, 18:22, 14:18] = 5.0
    mask = brain_mask(noisy.astype(np.float32))
    assert mask[16:20, 18:22, 14:18].all()  # the hole is filled
    assert abs(int(mask.sum()) - int((t1 > 0).sum())) < 0.05 * (t1 > 0).sum()


def test_otsu_threshold_matches_scikit_image():
    from skimage.filters import threshold_otsu

    rng = np.random.default_rng(0)
    values = np.concatenate([rng.normal(10, 3, 5000), rng.normal(80, 10, 3000)]).astype(np.float32)
    assert otsu_threshold(values) == pytest.approx(threshold_otsu(values), abs=0.5)


def test_normalise_percentiles_and_inverse():
    values = np.linspace(0, 1000, 10_000, dtype=np.float32).reshape(10, 10, 100)
    mask = np.ones(values.shape, bool)
    scaled, low, high = normalise(values, mask, (1.0, 99.0))
    assert low == pytest.approx(10.0, abs=0.2) and high == pytest.approx(990.0, abs=0.2)
    assert scaled.min() == 0.0 and scaled.max() == 1.0 and scaled.dtype == np.float32
    inside = (values >= low) & (values <= high)
    np.testing.assert_allclose(
        denormalise(scaled, low, high)[inside], values[inside], rtol=1e-4, atol=1e-2
    )
    with pytest.raises(DataError, match="constant intensity"):
        normalise(np.full((4, 4, 4), 3.0, np.float32), mask[:4, :4, :4])
    with pytest.raises(DataError, match="empty brain mask"):
        normalise(values, np.zeros_like(mask))


# ---------------------------------------------------------------------------------- slicing geometry


def test_slices_round_trip_to_the_file_grid(tmp_path):
    shape = (30, 26, 12)
    stored = np.random.default_rng(0).random(shape).astype(np.float32) + 1.0
    path = save(tmp_path / "v.nii.gz", stored, lps_affine(shape))
    volume = read_volume(path)
    mask = np.zeros(volume.data.shape, bool)
    mask[5:25, 4:20, 2:10] = True
    indices = select_slices(mask, 0.05)
    assert list(indices) == list(range(2, 10))
    probe = plan_geometry(mask, 8, reference=volume)
    geometry = plan_geometry(mask, probe["padded_size"], reference=volume)  # no resizing: exact
    assert geometry["original_orientation"] == ["L", "P", "S"]
    slices = volume_to_slices(volume.data, geometry, indices)
    assert slices.shape == (8, 1, geometry["padded_size"], geometry["padded_size"])
    back = slices_to_volume(slices, geometry, indices)
    assert back.shape == shape
    # The crop is the mask's box plus the margin, and the voxels inside come back exactly.
    assert geometry["crop"] == [[26 - 20 - 4, 26 - 4 + 4], [5 - 4, 25 + 4]]
    inside = volume.to_original(_crop_region(volume.data.shape, geometry, indices))
    np.testing.assert_allclose(back[inside], stored[inside], atol=1e-5)
    assert (back[~inside] == 0).all()


def _crop_region(shape, geometry, indices) -> np.ndarray:
    """Canonical voxels covered by the crop at the kept slices."""
    plane = np.zeros(geometry["plane_shape"], bool)
    (r0, r1), (c0, c1) = geometry["crop"]
    plane[r0:r1, c0:c1] = True
    region = np.zeros(shape, bool)
    region[:, :, indices] = np.rot90(plane, -1)[:, :, None]
    return region


def test_slices_round_trip_with_resizing_is_close():
    shape = (40, 30, 6)
    x = np.linspace(0, 1, shape[0])[:, None, None]
    y = np.linspace(0, 1, shape[1])[None, :, None]
    smooth = np.broadcast_to(0.5 + 0.3 * np.sin(3 * x) * np.cos(2 * y), shape).astype(np.float32)
    volume = Volume(smooth.copy(), np.eye(4), np.eye(4), shape, ("R", "A", "S"))
    mask = np.ones(shape, bool)
    geometry = plan_geometry(mask, 64, reference=volume)
    assert geometry["padded_size"] == 40 and geometry["pad"] == [[5, 5], [0, 0]]  # plane is (J, I)
    indices = np.arange(shape[2])
    back = slices_to_volume(volume_to_slices(smooth, geometry, indices), geometry, indices)
    # Only the outermost voxels blend with the zero padding.
    assert np.abs(back - smooth)[2:-2, 2:-2].max() < 0.02


@pytest.mark.parametrize(
    ("height", "width", "size"), [(50, 37, 32), (20, 24, 64), (240, 200, 64), (64, 64, 63)]
)
def test_resize_matches_torch_antialiased_bilinear(height, width, size):
    import torch
    import torch.nn.functional as F

    stack = np.random.default_rng(0).random((2, 3, height, width)).astype(np.float32)
    expected = F.interpolate(torch.from_numpy(stack), size=(size, size), mode="bilinear",
                             align_corners=False, antialias=True).numpy()  # fmt: skip
    resized = resize_bilinear(stack, size)
    # PyTorch's own weights, summed in its order: only float rounding (a few ulp) may differ.
    np.testing.assert_allclose(resized, expected, rtol=0, atol=1e-6)
    assert resized.min() >= stack.min() and resized.max() <= stack.max()
    # A pixel never depends on the rest of the batch.
    np.testing.assert_array_equal(resize_bilinear(stack[1:, :1], size), resized[1:, :1])


def test_preprocessing_imports_no_torch():
    """Prediction from ONNX runs without PyTorch, and it shares these modules with training."""
    code = (
        "import sys\n"
        "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
        "import mri2mri.data.preprocess, mri2mri.data.png, mri2mri.portable\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


def test_context_slices_are_edge_replicated():
    shape = (8, 8, 5)
    data = np.broadcast_to(np.arange(shape[2], dtype=np.float32), shape).copy()
    volume = Volume(data, np.eye(4), np.eye(4), shape, ("R", "A", "S"))
    geometry = plan_geometry(np.ones(shape, bool), 8, reference=volume, context_slices=2)
    stacks = volume_to_slices(data, geometry, np.array([0, 2, 4]), context_slices=2)
    assert stacks.shape == (3, 5, 8, 8)
    np.testing.assert_array_equal(
        stacks[:, :, 4, 4], [[0, 0, 0, 1, 2], [0, 1, 2, 3, 4], [2, 3, 4, 4, 4]]
    )


def test_prepare_volume_for_inference_covers_every_slice(tmp_path):
    t1, _ = head()
    volume = read_volume(save(tmp_path / "t1.nii.gz", t1[::-1, ::-1], lps_affine(t1.shape)))
    prepared = prepare_volume(volume, config(context_slices=1))
    assert prepared.slices.shape == (t1.shape[2], 3, 32, 32)
    assert prepared.slices.min() >= 0.0 and prepared.slices.max() <= 1.0
    back = slices_to_volume(prepared.slices[:, 1], prepared.geometry, prepared.slice_indices)
    assert back.shape == t1.shape
    restored = denormalise(back, prepared.norm["low"], prepared.norm["high"])
    brain = t1[::-1, ::-1] > 0
    # Resampling blurs edges; inside the brain the intensities come back on the file's grid.
    core = ndimage.binary_erosion(brain, iterations=2)
    window = prepared.norm["high"] - prepared.norm["low"]
    assert np.median(np.abs(restored - t1[::-1, ::-1])[core]) < 0.05 * window


# ---------------------------------------------------------------------------------- registration


def test_registration_recovers_a_shift_within_a_voxel(tmp_path):
    t1, t2 = head((40, 40, 36), seed=3)
    shift = np.array([2.0, -3.0, 1.5])
    moved = ndimage.shift(t1, shift, order=1)
    target = read_volume(save(tmp_path / "t2.nii.gz", t2))
    source = read_volume(save(tmp_path / "t1.nii.gz", moved))
    transform, info = register_rigid(target, source)
    assert np.abs(np.array(info["translation_mm_ras"]) - shift).max() < 1.0
    assert np.abs(info["rotation_rad"]).max() < 0.05
    assert info["final_metric_value"] < 0  # Mattes MI is reported negated
    aligned = resample_to(source, target, transform)
    brain = (t1 > 0) & (aligned > 0)
    before = np.abs(moved - t1)[brain].mean()
    after = np.abs(aligned - t1)[brain].mean()
    assert after < 0.5 * before


def test_prepare_with_register_resamples_onto_the_target_grid(tmp_path, capsys):
    t1, t2 = head((40, 40, 36), seed=4)
    save(tmp_path / "data/sub-01/T2.nii.gz", t2)
    coarse = np.diag([1.5, 1.5, 1.5, 1.0])  # a different grid covering the same head
    moved = ndimage.shift(t1, (1.0, 0.0, -1.0), order=1)
    save(tmp_path / "data/sub-01/T1.nii.gz", ndimage.zoom(moved, 1 / 1.5, order=1), coarse)
    with pytest.raises(DataError, match="no subject|none of 1"):
        prepare(tmp_path / "data", config(), tmp_path / "cache", progress=False)
    assert "pass --register" in capsys.readouterr().err
    path = prepare(tmp_path / "data", config(register=True), tmp_path / "cache", progress=False)
    out = capsys.readouterr().out
    assert "sub-01: rigid registration" in out and "final Mattes MI" in out
    record = SliceCache(path).record("sub-01")
    registration = record.geometry["registration"]
    assert registration["final_metric_value"] < 0 and record.geometry["resampled"]
    assert record.geometry["canonical_shape"] == [40, 40, 36]


# ---------------------------------------------------------------------------------- split


@pytest.mark.parametrize(
    ("count", "expected"),
    [(1, (1, 0, 0)), (2, (1, 0, 1)), (3, (1, 1, 1)), (10, (7, 1, 2)), (20, (14, 3, 3))],
)
def test_split_sizes_and_small_counts(count, expected):
    ids = [f"s{i:02d}" for i in range(count)]
    split = split_subjects(ids, 0.15, 0.15, seed=0)
    if count == 10:
        expected = (
            count - len(split["val"]) - len(split["test"]),
            len(split["val"]),
            len(split["test"]),
        )
        assert split["val"] and split["test"]
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == expected
    assert sorted(split["train"] + split["val"] + split["test"]) == ids  # nobody crosses or is lost
    assert split == split_subjects(list(reversed(ids)), 0.15, 0.15, seed=0)  # deterministic


def test_split_seed_changes_assignment_and_zero_fractions():
    ids = [f"s{i:02d}" for i in range(30)]
    assert split_subjects(ids, 0.2, 0.2, 0) != split_subjects(ids, 0.2, 0.2, 1)
    assert split_subjects(ids[:3], 0.0, 0.0, 0) == {"train": ids[:3], "val": [], "test": []}


# ---------------------------------------------------------------------------------- prepare and cache


def test_prepare_writes_a_subject_level_split_and_reuses_it(tmp_path, capsys):
    make_subjects(tmp_path / "data", 6)
    cfg = config(context_slices=1)
    path = prepare(tmp_path / "data", cfg, tmp_path / "cache", progress=False)
    cache = SliceCache(path)
    assert cache.source.shape[1:] == (3, 32, 32) and cache.target.shape[1:] == (1, 32, 32)
    assert float(cache.source.min()) >= 0.0 and float(cache.source.max()) <= 1.0
    split = json.loads((path / "split.json").read_text())
    groups = [set(split[name]) for name in ("train", "val", "test")]
    assert all(groups) and not (
        groups[0] & groups[1] or groups[0] & groups[2] or groups[1] & groups[2]
    )
    assert set().union(*groups) == {f"sub-{i:02d}" for i in range(1, 7)}
    for record in cache.subjects:
        assert record.subject in split[record.split]
        assert record.norm["target"]["high"] > record.norm["target"]["low"]
    # Subjects stored LPS and RAS give the same slices for the same head.
    lps, ras = cache.record("sub-02"), cache.record("sub-03")
    assert lps.geometry["original_orientation"] == ["L", "P", "S"]
    assert ras.geometry["original_orientation"] == ["R", "A", "S"]
    assert "prepared 6 subjects" in capsys.readouterr().out

    assert prepare(tmp_path / "data", cfg, tmp_path / "cache", progress=False) == path
    assert "reusing the slice cache" in capsys.readouterr().out
    assert ensure_cache(path, cfg, tmp_path / "other") == path
    assert not (tmp_path / "other").exists()

    target = tmp_path / "data/sub-01/T2.nii.gz"
    target.write_bytes(target.read_bytes())  # new mtime: the inputs changed
    prepare(tmp_path / "data", cfg, tmp_path / "cache", progress=False)
    assert "reusing" not in capsys.readouterr().out
    prepare(tmp_path / "data", config(context_slices=0), tmp_path / "cache", progress=False)
    assert "reusing" not in capsys.readouterr().out
    assert SliceCache(path).in_channels == 1


def test_prepare_refuses_to_overwrite_a_foreign_folder(tmp_path):
    make_subjects(tmp_path / "data", 2)
    (tmp_path / "precious").mkdir()
    (tmp_path / "precious" / "thesis.tex").write_text("x")
    with pytest.raises(DataError, match="not a slice cache"):
        prepare(tmp_path / "data", config(), tmp_path / "precious", progress=False)
    with pytest.raises(DataError, match="would contain the input"):
        prepare(tmp_path / "data", config(), tmp_path, progress=False)
    assert (tmp_path / "precious" / "thesis.tex").exists()


def _bad_inputs(root: Path) -> dict[str, str]:
    """Subjects that must each be skipped, with the file name the warning must give."""
    t1, t2 = head(seed=9)
    good = save(root / "sub-bad-trunc/T1.nii.gz", t1)
    save(root / "sub-bad-trunc/T2.nii.gz", t2)
    raw = good.read_bytes()
    good.write_bytes(raw[: len(raw) // 3])
    save(root / "sub-bad-corrupt/T2.nii.gz", t2)
    (root / "sub-bad-corrupt/T1.nii.gz").write_bytes(b"this is not a volume")
    save(root / "sub-bad-missing/T1.nii.gz", t1)
    save(root / "sub-bad-4d/T1.nii.gz", np.stack([t1, t1], -1))
    save(root / "sub-bad-4d/T2.nii.gz", t2)
    nan = t2.copy()
    nan[3, 3, 3] = np.nan
    save(root / "sub-bad-nan/T1.nii.gz", t1)
    save(root / "sub-bad-nan/T2.nii.gz", nan)
    save(root / "sub-bad-const/T1.nii.gz", t1)
    save(root / "sub-bad-const/T2.nii.gz", np.full_like(t2, 7.0))
    save(root / "sub-bad-grid/T1.nii.gz", t1[:, :, :-4])
    save(root / "sub-bad-grid/T2.nii.gz", t2)
    return {
        "sub-bad-trunc": "T1.nii.gz: unreadable",
        "sub-bad-corrupt": "T1.nii.gz: unreadable",
        "sub-bad-missing": "no T2 image",
        "sub-bad-4d": "T1.nii.gz: 4D",
        "sub-bad-nan": "T2.nii.gz: 1 NaN",
        "sub-bad-const": "T2.nii.gz: constant target",
        "sub-bad-grid": "pass --register",
    }


def test_bad_inputs_are_skipped_with_one_line_each(tmp_path, capsys):
    make_subjects(tmp_path / "data", 2)
    expected = _bad_inputs(tmp_path / "data")
    path = prepare(tmp_path / "data", config(), tmp_path / "cache", progress=False)
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.startswith("warning:")]
    assert len(lines) == len(expected)
    for subject, detail in expected.items():
        (line,) = [x for x in lines if f"subject {subject}" in x]
        assert detail in line and line.endswith("skipped")
    assert "prepared 2 subjects" in captured.out and "skipped 7" in captured.out
    assert {r.subject for r in SliceCache(path).subjects} == {"sub-01", "sub-02"}


def test_nothing_usable_is_a_data_error_and_leaves_no_cache(tmp_path, capsys):
    _bad_inputs(tmp_path / "data")
    with pytest.raises(DataError, match="none of 6 subjects could be used"):
        prepare(tmp_path / "data", config(), tmp_path / "out" / "cache", progress=False)
    assert list((tmp_path / "out").iterdir()) == []  # no half-written cache, no temp folder
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no subject with both T1 and T2"):
        prepare(tmp_path / "empty", config(), tmp_path / "cache2", progress=False)
    assert not is_cache(tmp_path / "cache2")


def test_prepare_from_manifest_and_dicom(tmp_path):
    from test_data_io import write_dicom_series

    t1, t2 = head((24, 28, 20), seed=5)
    write_dicom_series(
        tmp_path / "data/sub-01/T1", t1, spacing=(1.0, 1.0, 1.0), slope=1.0, intercept=0.0
    )
    write_dicom_series(
        tmp_path / "data/sub-01/T2", t2, spacing=(1.0, 1.0, 1.0), slope=2.0, intercept=0.0
    )
    path = prepare(
        tmp_path / "data",
        config(test_fraction=0.0, val_fraction=0.0),
        tmp_path / "c1",
        progress=False,
    )
    assert SliceCache(path).record("sub-01").geometry["canonical_shape"] == [24, 28, 20]
    save(tmp_path / "vols/a_t1.nii.gz", t1)
    save(tmp_path / "vols/a_t2.nii.gz", t2)
    (tmp_path / "m").mkdir()
    (tmp_path / "m/pairs.csv").write_text(
        "subject,source,target\na,../vols/a_t1.nii.gz,../vols/a_t2.nii.gz\n"
    )
    path = prepare(tmp_path / "m/pairs.csv", config(), tmp_path / "c2", progress=False)
    assert [r.subject for r in SliceCache(path).subjects] == ["a"]
    assert sorted(p.name for p in (tmp_path / "vols").iterdir()) == ["a_t1.nii.gz", "a_t2.nii.gz"]


# Three of the real patients, three pipelines and naming conventions: BraTS 2023 (raw int16,
# -t1n/-t1c/-t2f), TCGA (already [0, 1], _fla) and BraTS 2018 (raw int16, _t1ce/_flair).
PREPARED_REAL = ("BraTS-GLI-00001-000", "Brats18_2013_2_1", "TCGA-DU-7294")


@pytest.mark.realdata
@requires_real_data
def test_prepare_real_mri(tmp_path):
    """Three real patients with three sources each, through discovery and the cache. Without N4,
    which costs seconds a volume and has its own tests (test_bias_correction.py; test_export.py
    runs it on a real subject)."""
    data = link_real_subjects(tmp_path / "data", PREPARED_REAL)
    config = DataConfig(image_size=64, source=("T1", "T1c", "FLAIR"), bias_correction="none")
    path = prepare(data, config, tmp_path / "cache", progress=False)
    cache = SliceCache(path)
    assert sorted(r.subject for r in cache.subjects) == sorted(PREPARED_REAL)
    assert all(len(cache.split[name]) == 1 for name in ("train", "val", "test"))
    assert cache.source.shape[1:] == (3, 64, 64)  # T1, T1c, FLAIR stacked (no context slices)
    highs = {r.subject: r.norm["source"]["high"] for r in cache.subjects}
    # Three scales: [0, 1] and two raw scanner scales.
    assert highs["TCGA-DU-7294"] <= 2.0 < 100.0 < min(highs["BraTS-GLI-00001-000"], highs["Brats18_2013_2_1"])
    brats18 = next(r for r in cache.subjects if r.subject == "Brats18_2013_2_1")
    assert [Path(p).name for p in brats18.source_files] == [f"Brats18_2013_2_1_{c}.nii.gz" for c in ("t1", "t1ce", "flair")]
    assert Path(brats18.target_file).name == "Brats18_2013_2_1_t2.nii.gz"
    for record in cache.subjects:
        start, stop = record.rows
        source = np.asarray(cache.source[start:stop])
        target = np.asarray(cache.target[start:stop])
        for channel in range(3):  # each source normalised on its own
            assert source[:, channel].min() >= 0.0 and 0.9 < source[:, channel].max() <= 1.0
        assert target.min() >= 0.0 and target.max() <= 1.0 and target.max() > 0.9
        assert record.geometry["canonical_shape"] == [240, 240, 155]
        assert stop - start > 50


@pytest.mark.realdata
@requires_real_data
def test_discovery_finds_every_real_patient_with_four_contrasts():
    """All 27 patients of ../shared/data/real-mri, whatever their naming (names only, nothing read)."""
    discovery = discover_pairs(REAL_DATA, ("T1", "T1c", "FLAIR"), "T2")
    assert not discovery.problems and discovery.skipped == 0
    pairs = {pair.subject: pair for pair in discovery.pairs}
    assert len(pairs) == 27 and sum(s.startswith("Brats18_") for s in pairs) == 24
    case = pairs["Brats18_CBICA_AQN_1"]
    assert [p.name for p in case.sources] == [f"Brats18_CBICA_AQN_1_{c}.nii.gz" for c in ("t1", "t1ce", "flair")]
    assert case.target.name == "Brats18_CBICA_AQN_1_t2.nii.gz"
