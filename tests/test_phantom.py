"""The embedded phantom: NIfTI layout, determinism, and MR contrasts that match the physics."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from mri2mri.data import phantom
from mri2mri.errors import ConfigError

CONTRASTS = ("T1", "T2", "PD")


def load(folder, contrast):
    image = nib.load(folder / f"{contrast}.nii.gz")
    return np.asanyarray(image.dataobj), image


@pytest.fixture(scope="module")
def subject():
    """One subject at the default 2 mm grid, with a lesion."""
    return phantom.simulate_subject(np.random.default_rng(7), lesion_probability=1.0)


def test_spin_echo_signal_matches_the_formula_and_its_limits():
    tissue = phantom.TISSUES["gm"]
    sequence = phantom.SEQUENCES["T2"]
    expected = (tissue.proton_density * (1 - np.exp(-sequence.tr_ms / tissue.t1_ms))
                * np.exp(-sequence.te_ms / tissue.t2_ms))
    signal = phantom.spin_echo_signal(tissue.proton_density, tissue.t1_ms, tissue.t2_ms, sequence)
    assert signal == pytest.approx(expected)
    # Infinite TR and zero TE leave the proton density alone.
    limit = phantom.spin_echo_signal(0.8, 1000.0, 80.0, phantom.SpinEcho(tr_ms=1e9, te_ms=0.0))
    assert limit == pytest.approx(0.8)


def test_write_phantom_layout(tmp_path):
    folders = phantom.write_phantom(tmp_path, n_subjects=2, seed=1, voxel_size=4.0)
    assert [f.name for f in folders] == ["sub-01", "sub-02"]
    for folder in folders:
        volumes = {c: load(folder, c) for c in CONTRASTS}
        shapes = {data.shape for data, _ in volumes.values()}
        assert len(shapes) == 1 and len(shapes.pop()) == 3
        for data, image in volumes.values():
            assert data.dtype == np.float32
            assert np.allclose(np.abs(np.diag(image.affine)[:3]), 4.0)
            assert data.min() >= 0.0
            corners = data[::data.shape[0] - 1, ::data.shape[1] - 1, ::data.shape[2] - 1]
            assert np.all(corners == 0.0)  # the box around a head has background corners
            assert (data == 0.0).mean() > 0.2
        # One anatomy: the same head mask (non-zero voxels) in every contrast.
        masks = [data > 0 for data, _ in volumes.values()]
        assert all(np.array_equal(masks[0], mask) for mask in masks[1:])
        assert 0.1 < masks[0].mean() < 0.9
    description = json.loads((tmp_path / "phantom.json").read_text())
    assert description["seed"] == 1 and set(description["has_lesion"]) == {"sub-01", "sub-02"}


def test_phantom_is_deterministic_by_seed_and_subjects_differ(tmp_path):
    first = phantom.write_phantom(tmp_path / "a", n_subjects=2, seed=3, voxel_size=4.0)
    again = phantom.write_phantom(tmp_path / "b", n_subjects=1, seed=3, voxel_size=4.0)
    other = phantom.write_phantom(tmp_path / "c", n_subjects=1, seed=4, voxel_size=4.0)
    t2_a, _ = load(first[0], "T2")
    # Subject 1 does not depend on how many subjects were asked for.
    assert np.array_equal(t2_a, load(again[0], "T2")[0])
    assert not np.array_equal(t2_a, load(other[0], "T2")[0])
    t2_b, _ = load(first[1], "T2")
    assert not np.array_equal(t2_a > 0, t2_b > 0)  # different deformation, different outline


def test_tissue_contrast_follows_the_relaxation_physics(subject):
    pure = {name: subject.fractions[name] > 0.9 for name in ("wm", "gm", "csf")}
    assert all(mask.sum() > 50 for mask in pure.values())
    mean = {c: {n: float(subject.images[c][m].mean()) for n, m in pure.items()} for c in CONTRASTS}
    # T1-weighted: white matter brightest, CSF darkest, grey matter between.
    assert mean["T1"]["wm"] > mean["T1"]["gm"] > mean["T1"]["csf"]
    # T2-weighted: CSF brightest, white matter darkest, grey matter between.
    assert mean["T2"]["csf"] > mean["T2"]["gm"] > mean["T2"]["wm"]
    assert mean["T2"]["csf"] > 2 * mean["T2"]["wm"]
    # PD-weighted: little contrast, grey matter above white matter.
    assert mean["PD"]["gm"] > mean["PD"]["wm"]


def test_lesion_is_obvious_on_t2_and_subtle_on_t1(subject):
    assert subject.has_lesion
    lesion = subject.fractions["lesion"] > 0.9
    white = subject.fractions["wm"] > 0.9
    assert lesion.sum() > 0
    t1, t2 = subject.images["T1"], subject.images["T2"]
    assert t2[lesion].mean() > 1.8 * t2[white].mean()
    assert 0.75 * t1[white].mean() < t1[lesion].mean() < t1[white].mean()


def test_background_is_exactly_zero_and_brain_positive(subject):
    for contrast in CONTRASTS:
        image = subject.images[contrast]
        assert np.all(image[~subject.mask] == 0.0)
        assert np.all(image[subject.mask] > 0.0)


def test_bad_arguments_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="valid contrasts: T1, T2, PD"):
        phantom.write_phantom(tmp_path, n_subjects=1, contrasts=("T1", "FLAIR"))
    with pytest.raises(ConfigError, match="n_subjects"):
        phantom.write_phantom(tmp_path, n_subjects=0)
    with pytest.raises(ConfigError, match="voxel_size"):
        phantom.write_phantom(tmp_path, voxel_size=0.1)


def test_smooth_field_equals_a_cubic_3d_zoom_of_the_coarse_grid():
    shape = (13, 17, 11)
    field = phantom.smooth_field(np.random.default_rng(5), shape, nodes=4)
    coarse = np.random.default_rng(5).standard_normal((4, 4, 4))
    reference = ndimage.zoom(coarse, [s / 4 for s in shape], order=3, mode="nearest")
    assert field.shape == shape
    np.testing.assert_allclose(field, reference / np.abs(reference).max(), atol=1e-5)
