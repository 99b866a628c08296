"""TorchIO augmentation on dataset Samples: geometry shared, acquisition effects on the source only."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mri2mri.config import DataConfig
from mri2mri.data.augment import MRIAugmentation, build_augmentation
from mri2mri.data.dataset import Sample


@pytest.fixture(autouse=True)
def _one_thread():
    # TorchIO's small tensor operations crawl when threads contend on a shared machine.
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


def sample(channels=3, size=32) -> Sample:
    rows, cols = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    mask = (((rows - 14) ** 2 + (cols - 12) ** 2) < 100).float()[None]
    ramp = (cols.float() / size)[None]
    source = (mask * (0.3 + 0.5 * ramp)).repeat(channels, 1, 1) * 2 - 1
    target = mask * (0.9 - 0.5 * ramp) * 2 - 1
    return Sample(source=source, target=target, mask=mask, subject="sub-01", slice_index=7)


def test_identity_when_augment_is_off():
    s = sample()
    assert build_augmentation(DataConfig(augment=False))(s) is s
    assert isinstance(build_augmentation(DataConfig(augment=True)), MRIAugmentation)


def test_flip_acts_on_source_target_and_mask_alike():
    torch.manual_seed(0)
    flip_only = MRIAugmentation(
        flip_probability=1.0,
        affine_probability=0.0,
        bias_probability=0.0,
        noise_probability=0.0,
        gamma_probability=0.0,
    )
    s = sample()
    out = flip_only(s)
    torch.testing.assert_close(out.source, s.source.flip(-1))
    torch.testing.assert_close(out.target, s.target.flip(-1))
    torch.testing.assert_close(out.mask, s.mask.flip(-1))
    assert (out.subject, out.slice_index) == ("sub-01", 7)


def test_affine_keeps_the_mask_binary_and_aligned_with_the_target():
    torch.manual_seed(1)
    affine_only = MRIAugmentation(
        flip_probability=0.0,
        affine_probability=1.0,
        degrees=10,
        scale=0.1,
        bias_probability=0.0,
        noise_probability=0.0,
        gamma_probability=0.0,
    )
    s = sample()
    s = s._replace(target=s.mask * 2 - 1)  # a target that is the mask: both must move together
    moved = 0
    for _ in range(4):
        out = affine_only(s)
        assert set(out.mask.unique().tolist()) <= {0.0, 1.0}
        target_support = out.target[0] > 0.0
        agreement = (target_support == (out.mask[0] > 0.5)).float().mean()
        assert agreement > 0.98
        moved += int(not torch.equal(out.mask, s.mask))
        assert out.source.shape == (3, 32, 32) and out.source.min() >= -1 and out.source.max() <= 1
    assert moved >= 3


def test_acquisition_effects_touch_the_source_only():
    torch.manual_seed(2)
    acquisition = MRIAugmentation(
        flip_probability=0.0,
        affine_probability=0.0,
        bias_probability=1.0,
        noise_probability=1.0,
        gamma_probability=1.0,
    )
    s = sample()
    out = acquisition(s)
    torch.testing.assert_close(out.target, s.target)
    torch.testing.assert_close(out.mask, s.mask)
    assert not torch.allclose(out.source, s.source)
    assert out.source.min() >= -1 and out.source.max() <= 1


def test_augmentation_through_a_dataloader(tmp_path):
    from test_data_preprocess import config, make_subjects

    from mri2mri.data.cache import SliceCache
    from mri2mri.data.dataset import SliceDataset
    from mri2mri.data.preprocess import prepare

    make_subjects(tmp_path / "data", 3, shape=(32, 32, 20))
    data_config = config(augment=True, context_slices=1)
    cache = SliceCache(prepare(tmp_path / "data", data_config, tmp_path / "cache", progress=False))
    dataset = SliceDataset(cache, "train", transform=build_augmentation(data_config))
    batch = next(iter(torch.utils.data.DataLoader(dataset, batch_size=4, shuffle=True)))
    assert batch.source.shape == (4, 3, 32, 32) and batch.mask.shape == (4, 1, 32, 32)
    assert np.isfinite(batch.source.numpy()).all()
