"""The slice cache: atomic writes, split views, cross-validation folds."""

from __future__ import annotations

import numpy as np
import pytest

from mri2mri.data.cache import (
    CacheError,
    CacheWriter,
    SliceCache,
    SubjectRecord,
    SubjectSlices,
    resplit,
)
from mri2mri.data.dataset import SliceDataset


def test_cache_round_trip_and_dataset_ranges(tiny_cache):
    cache = SliceCache(tiny_cache)
    assert cache.in_channels == 1 and cache.image_size == (32, 32)
    assert len(cache.rows("train")) == 12 and len(cache.rows("test")) == 4
    dataset = SliceDataset(cache, "test")
    sample = dataset[0]
    assert sample.source.shape == (1, 32, 32) and sample.subject == "sub-04"
    assert float(sample.source.min()) >= -1.0 and float(sample.source.max()) <= 1.0
    np.testing.assert_allclose((sample.target.numpy() + 1) / 2, cache.target[cache.rows("test")[0]], atol=1e-6)


def test_a_failed_write_leaves_no_cache_behind(tmp_path):
    with pytest.raises(RuntimeError), CacheWriter(tmp_path / "cache", fingerprint="f", data_config={}) as writer:
        record = SubjectRecord("a", "train", "a/T1", "a/T2", slice_indices=[0])
        writer.add(SubjectSlices(record, np.zeros((1, 1, 8, 8)), np.zeros((1, 1, 8, 8)), np.ones((1, 1, 8, 8))))
        raise RuntimeError("disk went away")
    assert list(tmp_path.iterdir()) == []


def test_resplit_rotates_the_held_out_subject_without_copying(tiny_cache, tmp_path):
    fold = resplit(tiny_cache, {"sub-00": "train", "sub-01": "train", "sub-04": "test"}, tmp_path / "fold")
    cache = SliceCache(fold)
    assert cache.split == {"train": ["sub-00", "sub-01"], "val": [], "test": ["sub-04"]}
    assert len(cache.rows("train")) == 8 and len(cache.rows("val")) == 0
    assert (fold / "source.npy").stat().st_ino == (tiny_cache / "source.npy").stat().st_ino
    with pytest.raises(CacheError, match="no subject"):
        resplit(tiny_cache, {"sub-99": "test"}, tmp_path / "bad")


def test_not_a_cache_is_a_clear_error(tmp_path):
    with pytest.raises(CacheError, match="not a slice cache"):
        SliceCache(tmp_path)
