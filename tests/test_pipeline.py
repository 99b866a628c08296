"""The input pipeline: one loader with persistent workers keeps each epoch's order, and the
batched on-device augmentation is deterministic, aligned and independent of the process count."""

from __future__ import annotations

import torch
from conftest import tiny_config

from mri2mri.checkpoint import load_checkpoint
from mri2mri.config import replace
from mri2mri.data.gpu_augment import BatchAugmentation
from mri2mri.training import EpochBatchSampler, epoch_batches, train

NO_ACQUISITION = {"bias_probability": 0.0, "noise_probability": 0.0, "gamma_probability": 0.0,
                  "curve_probability": 0.0}
NO_GEOMETRY = {"flip_probability": 0.0, "affine_probability": 0.0}


def _weights(run):
    return load_checkpoint(run / "checkpoints" / "gan_t1_to_t2_last.pth")["G"]


def _images(n: int = 4, size: int = 32) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    source = torch.rand(n, 1, size, size, generator=generator) * 2 - 1
    mask = (source > 0).float()
    return source, -source, mask


def test_batch_sampler_serves_each_epoch_in_its_order():
    sampler = EpochBatchSampler(20, 4, seed=1, steps_per_epoch=4, rank=1, world_size=2)
    for epoch, start in ((0, 0), (3, 1), (0, 2)):
        sampler.set_epoch(epoch, start)
        expected = epoch_batches(20, 4, seed=1, epoch=epoch, start_step=start, rank=1, world_size=2)[: 4 - start]
        assert list(sampler) == expected
        assert len(sampler) == len(expected)


def test_persistent_workers_train_like_the_main_process(tiny_cache, tmp_path):
    config = tiny_config(epochs=2)
    train(config, tiny_cache, tmp_path / "inline", progress=False)
    with_workers = replace(config, train=replace(config.train, num_workers=2))
    train(with_workers, tiny_cache, tmp_path / "workers", progress=False)
    inline, workers = _weights(tmp_path / "inline"), _weights(tmp_path / "workers")
    assert all(torch.equal(inline[key], workers[key]) for key in inline)


def test_flip_and_affine_move_source_target_and_mask_together():
    source, target, mask = _images()
    flip = BatchAugmentation(flip_probability=1.0, affine_probability=0.0, **NO_ACQUISITION)
    out_source, out_target, out_mask = flip(source, target, mask, seed=0)
    assert torch.allclose(out_source, source.flip(-1), atol=1e-5)
    assert torch.allclose(out_target, target.flip(-1), atol=1e-5)
    assert torch.equal(out_mask, mask.flip(-1))
    move = BatchAugmentation(flip_probability=0.0, affine_probability=1.0, degrees=10, **NO_ACQUISITION)
    out_source, out_target, out_mask = move(source, source.clone(), mask, seed=0)
    assert not torch.allclose(out_source, source, atol=1e-2)
    assert torch.allclose(out_target, out_source, atol=1e-6)  # the same warp on both images
    assert set(out_mask.unique().tolist()) <= {0.0, 1.0}  # nearest neighbour: still a mask


def test_acquisition_changes_the_source_only_and_stays_in_range():
    source, target, _ = _images()
    acquisition = BatchAugmentation(bias_probability=1.0, noise_probability=1.0, gamma_probability=1.0, **NO_GEOMETRY)
    out_source, out_target, _ = acquisition(source, target, seed=3)
    assert torch.equal(out_target, target)
    assert not torch.allclose(out_source, source, atol=1e-3)
    assert out_source.min() >= -1 and out_source.max() <= 1


def test_same_seed_same_result_whatever_the_number_of_processes():
    source, target, mask = _images(n=4)
    augment = BatchAugmentation(flip_probability=0.5, affine_probability=1.0, bias_probability=1.0,
                                noise_probability=1.0, gamma_probability=1.0)  # fmt: skip
    whole = augment(source, target, mask, seed=7)
    assert all(torch.equal(a, b) for a, b in zip(whole, augment(source, target, mask, seed=7), strict=True))
    assert not torch.equal(whole[0], augment(source, target, mask, seed=8)[0])
    for rank in range(2):  # rank r of 2 holds rows r::2 of the global batch
        share = augment(source[rank::2], target[rank::2], mask[rank::2], seed=7, rank=rank, world_size=2)
        for full, part in zip(whole, share, strict=True):
            assert torch.allclose(full[rank::2], part, atol=1e-6)


def test_training_with_device_augmentation_resumes_exactly(tiny_cache, tmp_path):
    config = tiny_config(epochs=2)
    config = replace(config, data=replace(config.data, augment=True))
    train(config, tiny_cache, tmp_path / "straight", progress=False)
    train(replace(config, train=replace(config.train, epochs=1)), tiny_cache, tmp_path / "split", progress=False)
    train(config, tiny_cache, tmp_path / "split", resume=True, progress=False)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    train(replace(config, data=replace(config.data, augment=False)), tiny_cache, tmp_path / "plain", progress=False)
    plain = _weights(tmp_path / "plain")
    assert any(not torch.equal(straight[key], plain[key]) for key in straight)
