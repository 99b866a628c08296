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
        curve_probability=0.0,
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


def test_intensity_curves_are_monotonic_keep_the_ends_and_reorder_nothing():
    from mri2mri.data.intensity_curves import apply_curves, curve_knots

    knots = curve_knots(torch.rand(8, 5, generator=torch.Generator().manual_seed(0)), strength=0.9)
    assert torch.all(knots[:, 0] == 0) and torch.allclose(knots[:, -1], torch.ones(8))
    assert torch.all(knots.diff(dim=1) > 0)
    ramp = torch.linspace(0, 1, 101).view(1, 1, 1, 101).expand(8, 2, 3, 101)
    curved = apply_curves(ramp, knots)
    assert torch.all(curved.diff(dim=-1) > 0)  # strictly increasing: the anatomy's order of grey levels stays
    assert not torch.allclose(curved, ramp, atol=0.02)  # and yet the contrast changed
    torch.testing.assert_close(curved[:, 0], curved[:, 1])  # one curve per sample, every channel alike
    no_change = apply_curves(ramp, curve_knots(torch.rand(8, 5), strength=0.0))
    torch.testing.assert_close(no_change, ramp)


def test_the_intensity_curve_changes_the_source_only():
    torch.manual_seed(4)
    curve_only = MRIAugmentation(flip_probability=0.0, affine_probability=0.0, bias_probability=0.0,
                                 noise_probability=0.0, gamma_probability=0.0, curve_probability=1.0)  # fmt: skip
    s = sample()
    out = curve_only(s)
    torch.testing.assert_close(out.target, s.target)
    torch.testing.assert_close(out.mask, s.mask)
    assert not torch.allclose(out.source, s.source, atol=1e-3)
    order = torch.argsort(s.source.flatten())  # monotonic: brighter stays brighter
    assert torch.all(out.source.flatten()[order].diff() >= -1e-6)


def test_the_batched_augmentation_applies_the_same_kind_of_curve():
    from mri2mri.data.gpu_augment import BatchAugmentation

    curve_only = BatchAugmentation(flip_probability=0.0, affine_probability=0.0, bias_probability=0.0,
                                   noise_probability=0.0, gamma_probability=0.0, curve_probability=1.0)  # fmt: skip
    s = sample()
    source, target, _ = curve_only(s.source[None], s.target[None], seed=3)
    torch.testing.assert_close(target[0], s.target)
    assert not torch.allclose(source[0], s.source, atol=1e-3)
    order = torch.argsort(s.source.flatten())
    assert torch.all(source[0].flatten()[order].diff() >= -1e-6)


@pytest.mark.parametrize("batched", [False, True])
def test_an_empty_background_stays_empty(batched):
    # Skull-stripped inputs are exactly 0 outside the head; noise there would be a contrast the
    # model never meets at prediction (and the residual model's table maps it to tissue).
    from mri2mri.data.gpu_augment import BatchAugmentation

    settings = {"flip_probability": 0.0, "affine_probability": 0.0, "bias_probability": 1.0,
                "noise_probability": 1.0, "gamma_probability": 1.0, "curve_probability": 1.0}  # fmt: skip
    s = sample()
    empty = s.source == -1
    if batched:
        source = BatchAugmentation(**settings)(s.source[None], s.target[None], seed=5)[0][0]
    else:
        torch.manual_seed(5)
        source = MRIAugmentation(**settings)(s).source
    assert empty.any() and torch.all(source[empty] == -1)
    assert not torch.allclose(source[~empty], s.source[~empty], atol=1e-3)
