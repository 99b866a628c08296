"""Inputs that claim more than they hold, networks that can never fit, and the permissions of the
files written whole (temporary file + rename)."""

from __future__ import annotations

import gzip
import os
import stat
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import write_tiny_cache

from mri2mri.checkpoint import save_checkpoint
from mri2mri.config import ModelConfig, RunConfig
from mri2mri.data.io import read_volume
from mri2mri.errors import ConfigError, DataError
from mri2mri.models import minimum_image_size
from mri2mri.models.discriminators import DISCRIMINATORS


def _header_only(shape: tuple[int, ...], dtype=np.uint8) -> bytes:
    """A NIfTI-1 header (plus the 4-byte extension flag) claiming ``shape`` with no voxels."""
    header = nib.Nifti1Header()
    header.set_data_shape(shape)
    header.set_data_dtype(dtype)
    header["vox_offset"] = 352
    return header.binaryblock + b"\0" * 4


def test_a_tiny_file_claiming_gigabytes_is_refused_before_reading(tmp_path):
    bomb = tmp_path / "bomb.nii.gz"
    bomb.write_bytes(gzip.compress(_header_only((1500, 1500, 1500))))
    assert bomb.stat().st_size < 200
    with pytest.raises(DataError, match="GiB"):
        read_volume(bomb)


def test_an_uncompressed_file_shorter_than_its_header_claims_is_refused(tmp_path):
    short = tmp_path / "short.nii"
    short.write_bytes(_header_only((64, 64, 64)) + b"\0" * 1000)
    with pytest.raises(DataError, match="truncated"):
        read_volume(short)


def _linear_minimum(cfg: ModelConfig) -> int:
    size = 1
    while min(DISCRIMINATORS[cfg.discriminator].patch_map_sizes(cfg, size)) < 1:
        size += 1
    return size


@pytest.mark.parametrize("discriminator", ["basic", "patch70", "multiscale"])
def test_the_minimum_size_search_agrees_with_a_linear_search(discriminator):
    from mri2mri.models import _discriminator_minimum_size

    for layers in (1, 2, 3, 5):
        cfg = ModelConfig(discriminator=discriminator, disc_layers=layers, disc_scales=3)
        assert _discriminator_minimum_size(cfg) == _linear_minimum(cfg)


def test_the_deepest_allowed_discriminator_is_answered_and_deeper_refused():
    # The deepest configuration the options allow: the search ends (with a size or a one-line
    # refusal) instead of counting up one pixel at a time.
    cfg = ModelConfig(discriminator="multiscale", disc_layers=10, disc_scales=6)
    try:
        assert minimum_image_size(cfg) > 1000
    except ConfigError as error:
        assert "--disc-layers" in str(error)
    with pytest.raises(ConfigError, match="--disc-layers"):
        ModelConfig(disc_layers=50)


@pytest.fixture
def umask_022():
    previous = os.umask(0o022)
    yield
    os.umask(previous)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_files_written_whole_follow_the_umask(tmp_path, umask_022):
    cache = write_tiny_cache(tmp_path / "cache")
    assert _mode(cache) == 0o755
    assert _mode(cache / "cache.json") == 0o644
    checkpoint = tmp_path / "ck" / "run_last.pth"
    save_checkpoint(checkpoint, {"G": {}, "config": {}})
    assert _mode(checkpoint) == 0o644
    RunConfig().save(tmp_path / "config.json")
    assert _mode(tmp_path / "config.json") == 0o644
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
