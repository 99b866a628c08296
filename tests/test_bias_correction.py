"""N4 bias-field correction of the source: it removes a coil's smooth field, prediction repeats
exactly what training's cache saw, and a run trained on a corrected cache records it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from test_data_preprocess import config, head, lps_affine, make_subjects, save

from mri2mri.config import RunConfig
from mri2mri.data.bias import n4_correct
from mri2mri.data.cache import SliceCache, adopt_cache_preparation
from mri2mri.data.io import read_volume
from mri2mri.data.preprocess import prepare
from mri2mri.errors import ConfigError
from mri2mri.portable import prepare_volume


def coil_field(shape) -> np.ndarray:
    """A smooth multiplicative field: 0.6 at one side of the head to 1.6 at the other."""
    grid = np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij")
    return np.exp(0.5 * grid[0] + 0.2 * grid[1] * grid[2]).astype(np.float32)


def side_ratio(image: np.ndarray, tissue: np.ndarray) -> float:
    """Mean of ``tissue`` on the last third of the first axis over its mean on the first third:
    1 when the image has no field along that axis."""
    third = image.shape[0] // 3
    near, far = np.zeros_like(tissue), np.zeros_like(tissue)
    near[-third:], far[:third] = tissue[-third:], tissue[:third]
    return float(image[near].mean() / image[far].mean())


def test_n4_removes_a_smooth_field_and_keeps_the_contrast():
    t1, _ = head((48, 48, 40), seed=2)
    lesion, ventricles = np.isclose(t1, 350), np.isclose(t1, 150)
    tissue = (t1 > 0) & ~lesion & ~ventricles
    biased = t1 * coil_field(t1.shape)
    corrected = n4_correct(biased, t1 > 0, (1.0, 1.0, 1.0))
    assert corrected.dtype == np.float32 and corrected.shape == t1.shape
    assert abs(side_ratio(t1, tissue) - 1) < 0.05 and side_ratio(biased, tissue) > 1.5
    assert abs(side_ratio(corrected, tissue) - 1) < 0.15
    # The contrast between tissues survives: the lesion stays brighter than the ventricles.
    ratio = corrected[lesion].mean() / corrected[ventricles].mean()
    assert 1.8 < ratio < 2.9  # 350 / 150 = 2.33 without a field
    np.testing.assert_array_equal(corrected[t1 == 0], 0.0)


def test_n4_leaves_an_image_without_enough_tissue_alone():
    image = np.zeros((16, 16, 16), np.float32)
    image[8, 8, 8] = 5.0
    np.testing.assert_array_equal(n4_correct(image, image > 0), image)


def test_prediction_repeats_the_correction_training_cached(tmp_path):
    """The cache's slices of a subject and `predict`'s preparation of the same file agree: a model
    trained on corrected slices is never fed uncorrected ones."""
    t1, t2 = head((36, 40, 32), seed=5)
    field = coil_field(t1.shape)
    save(tmp_path / "data/sub-01/T1.nii.gz", t1[::-1, ::-1] * field[::-1, ::-1], lps_affine(t1.shape))
    save(tmp_path / "data/sub-01/T2.nii.gz", t2[::-1, ::-1], lps_affine(t1.shape))
    settings = config(bias_correction="n4", min_brain_fraction=0.0, val_fraction=0.0, test_fraction=0.0)
    cache = SliceCache(prepare(tmp_path / "data", settings, tmp_path / "cache", progress=False))
    record = cache.record("sub-01")
    cached = np.asarray(cache.source[record.rows[0] : record.rows[1]])
    prepared = prepare_volume(read_volume(tmp_path / "data/sub-01/T1.nii.gz"), settings)
    rows = np.searchsorted(prepared.slice_indices, np.asarray(record.slice_indices))
    np.testing.assert_allclose(prepared.slices[rows], cached, atol=1e-5)
    plain = prepare_volume(read_volume(tmp_path / "data/sub-01/T1.nii.gz"), config(min_brain_fraction=0.0, bias_correction="none"))
    assert np.abs(plain.slices[rows] - cached).max() > 0.05  # the correction did change the slices
    assert cache.meta["data_config"]["bias_correction"] == "n4"


def test_a_run_on_a_prepared_cache_records_the_cache_preparation(tmp_path, capsys):
    make_subjects(tmp_path / "data", 3)
    path = prepare(tmp_path / "data", config(bias_correction="n4", percentiles=(1.0, 99.0)),
                   tmp_path / "cache", progress=False)  # fmt: skip
    adopted = adopt_cache_preparation(SliceCache(path), config())  # the defaults: adopted without a word
    assert adopted.bias_correction == "n4" and adopted.percentiles == (1.0, 99.0)
    assert capsys.readouterr().err == ""
    asked = adopt_cache_preparation(SliceCache(path), config(bias_correction="none"))  # asked for: a warning
    assert asked == adopted
    assert "--bias-correction n4; the run uses that" in capsys.readouterr().err


def test_train_on_a_corrected_cache_writes_it_into_config_json(tmp_path):
    make_subjects(tmp_path / "data", 3)
    path = prepare(tmp_path / "data", config(bias_correction="n4"), tmp_path / "cache", progress=False)
    run = tmp_path / "run"
    done = subprocess.run(
        [sys.executable, "-m", "mri2mri", "train", str(path), "--out", str(run), "--epochs", "1",
         "--max-steps-per-epoch", "1", "--batch-size", "2", "--base-channels", "4", "--quiet"],
        capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1],
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    saved = json.loads((run / "config.json").read_text())
    assert saved["data"]["bias_correction"] == "n4"


def test_old_configurations_load_without_correction_and_bad_names_are_refused():
    payload = RunConfig().to_dict()
    del payload["data"]["bias_correction"]
    assert RunConfig.from_dict(payload).data.bias_correction == "none"
    with pytest.raises(ConfigError, match="--bias-correction"):
        config(bias_correction="n3")
