"""Losses: adversarial variants, gradient penalty, SSIM, feature matching, perceptual."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from skimage.metrics import structural_similarity
from torch import nn

from mri2mri.config import ModelConfig
from mri2mri.errors import ConfigError, DataError
from mri2mri.losses import (
    GAN_LOSSES,
    PerceptualLoss,
    discriminator_loss,
    feature_matching_loss,
    generator_adversarial_loss,
    gradient_penalty,
    ssim_loss,
    vgg16_feature_extractor,
)
from mri2mri.models import build_discriminator, build_generator

SIZE = 32


def _logit_maps(features):
    return [scale[-1] for scale in features]


def _softplus(x: float) -> float:
    return math.log1p(math.exp(x))


# Hand-computed values for real logit 2 and fake logit -1 on every patch.
EXPECTED_D = {
    "bce": 0.5 * (_softplus(-2.0) + _softplus(-1.0)),
    "lsgan": 0.5 * ((2.0 - 1.0) ** 2 + 1.0**2),
    "hinge": 0.0 + 0.0,  # relu(1 - 2) + relu(1 + (-1))
    "wgan-gp": -1.0 - 2.0,
}
EXPECTED_G = {"bce": _softplus(1.0), "lsgan": 4.0, "hinge": 1.0, "wgan-gp": 1.0}


@pytest.mark.parametrize("kind", GAN_LOSSES)
def test_adversarial_losses_hand_values(kind):
    real = [torch.full((2, 1, 3, 3), 2.0), torch.full((2, 1, 1, 1), 2.0)]
    fake = [torch.full((2, 1, 3, 3), -1.0), torch.full((2, 1, 1, 1), -1.0)]
    assert discriminator_loss(kind, real, fake).item() == pytest.approx(EXPECTED_D[kind])
    assert generator_adversarial_loss(kind, fake).item() == pytest.approx(EXPECTED_G[kind])
    # One scale passed as a bare tensor gives the same value as the average over equal scales.
    assert discriminator_loss(kind, real[0], fake[0]).item() == pytest.approx(EXPECTED_D[kind])


def test_bce_is_the_report_loss():
    real, fake = torch.randn(2, 1, 5, 5), torch.randn(2, 1, 5, 5)
    expected = 0.5 * (
        nn.BCEWithLogitsLoss()(real, torch.ones_like(real))
        + nn.BCEWithLogitsLoss()(fake, torch.zeros_like(fake))
    )
    torch.testing.assert_close(discriminator_loss("bce", [real], [fake]), expected)


def test_losses_average_over_scales():
    real = [torch.zeros(1, 1, 4, 4), torch.full((1, 1, 2, 2), 3.0)]
    fake = [torch.zeros(1, 1, 4, 4), torch.ones(1, 1, 2, 2)]
    # lsgan per scale: 0.5 * (1 + 0) = 0.5 and 0.5 * (4 + 1) = 2.5
    assert discriminator_loss("lsgan", real, fake).item() == pytest.approx(1.5)
    # wgan generator per scale: 0 and -1
    assert generator_adversarial_loss("wgan-gp", fake).item() == pytest.approx(-0.5)


def test_unknown_gan_loss_lists_the_valid_names():
    with pytest.raises(ConfigError) as error:
        discriminator_loss("relativistic", [torch.zeros(1)], [torch.zeros(1)])
    assert all(name in str(error.value) for name in GAN_LOSSES)
    with pytest.raises(ConfigError):
        generator_adversarial_loss("wgan", [torch.zeros(1)])


def _has_gradient(module: nn.Module) -> bool:
    return any(p.grad is not None and p.grad.abs().sum() > 0 for p in module.parameters())


@pytest.mark.parametrize("kind", GAN_LOSSES)
def test_one_backward_step_reaches_the_right_network(kind):
    torch.manual_seed(0)
    cfg = ModelConfig(generator="basic", discriminator="multiscale", base_channels=4)
    generator, discriminator = build_generator(cfg), build_discriminator(cfg)
    source = torch.rand(2, 1, 48, 48) * 2 - 1
    target = torch.rand(2, 1, 48, 48) * 2 - 1
    fake = generator(source)

    # Discriminator step on the detached fake: gradients reach D only.
    loss_d = discriminator_loss(
        kind,
        _logit_maps(discriminator(source, target)),
        _logit_maps(discriminator(source, fake.detach())),
    )
    if kind == "wgan-gp":
        loss_d = loss_d + 10.0 * gradient_penalty(discriminator, source, target, fake)
    loss_d.backward()
    assert torch.isfinite(loss_d)
    assert _has_gradient(discriminator)
    assert not _has_gradient(generator)

    # Generator step: gradients reach G through D.
    discriminator.zero_grad()
    fake_features = discriminator(source, fake)
    loss_g = generator_adversarial_loss(kind, _logit_maps(fake_features))
    real_features = [scale[:-1] for scale in discriminator(source, target)]
    loss_g = loss_g + feature_matching_loss(real_features, [s[:-1] for s in fake_features])
    loss_g = loss_g + ssim_loss(fake, target) + F.l1_loss(fake, target)
    loss_g.backward()
    assert torch.isfinite(loss_g)
    assert _has_gradient(generator)


class LinearCritic(nn.Module):
    """D(source, x) = sum(w * x): its gradient with respect to x is w everywhere."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight = nn.Parameter(weight)

    def forward(self, source, target):
        value = (self.weight * target).sum(dim=(1, 2, 3)) + 0 * source.sum()
        return [[value.view(-1, 1, 1, 1)]]


def test_gradient_penalty_of_a_linear_critic():
    torch.manual_seed(0)
    weight = torch.randn(1, 6, 6) * 0.5
    critic = LinearCritic(weight.clone())
    source, real, fake = torch.randn(3, 4, 1, 6, 6)
    penalty = gradient_penalty(critic, source, real, fake)
    norm = weight.norm()
    torch.testing.assert_close(penalty, (norm - 1.0) ** 2)
    # The penalty trains the critic: d/dw (||w|| - 1)^2 = 2 (||w|| - 1) w / ||w||.
    penalty.backward()
    torch.testing.assert_close(critic.weight.grad, 2 * (norm - 1.0) * weight / norm)


def test_gradient_penalty_with_a_real_discriminator():
    torch.manual_seed(0)
    cfg = ModelConfig(discriminator="patch70", norm="instance", base_channels=4)
    discriminator = build_discriminator(cfg)
    images = torch.rand(3, 2, 1, SIZE, SIZE) * 2 - 1
    penalty = gradient_penalty(discriminator, *images)
    assert penalty.ndim == 0 and penalty >= 0
    penalty.backward()
    assert _has_gradient(discriminator)


def test_ssim_loss_is_zero_for_identical_images():
    image = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    assert ssim_loss(image, image.clone()).item() == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("noise", [0.05, 0.3, 1.0])
def test_ssim_loss_agrees_with_scikit_image(noise):
    rng = np.random.default_rng(1)
    real = rng.random((2, 1, 40, 36))
    fake = np.clip(real + noise * rng.standard_normal(real.shape), 0, 1)
    expected = np.mean(
        [
            structural_similarity(
                fake[i, 0],
                real[i, 0],
                gaussian_weights=True,
                sigma=1.5,
                use_sample_covariance=False,
                data_range=1.0,
            )
            for i in range(2)
        ]
    )
    to_model = lambda a: torch.tensor(a, dtype=torch.float32) * 2 - 1  # noqa: E731
    loss = ssim_loss(to_model(fake), to_model(real)).item()
    assert 1.0 - loss == pytest.approx(expected, abs=1e-4)


def test_ssim_loss_is_float32_under_autocast():
    real = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    fake = (real + 0.1 * torch.randn_like(real)).clamp(-1, 1)
    with torch.autocast(device_type="cpu", dtype=torch.bfloat16):
        loss = ssim_loss(fake.bfloat16(), real.bfloat16())
    assert loss.dtype == torch.float32
    expected = ssim_loss(fake.bfloat16().float(), real.bfloat16().float())
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)


def test_ssim_loss_is_the_test_metric_and_differentiable():
    """One SSIM: the loss is 1 - the metric's whole-image SSIM on [0, 1], and gradients flow."""
    from mri2mri import metrics

    real = torch.rand(2, 1, 40, 36) * 2 - 1
    fake = (real + 0.3 * torch.randn_like(real)).clamp(-1, 1).requires_grad_(True)
    loss = ssim_loss(fake, real)
    expected = 1.0 - metrics.ssim((fake.detach() + 1) / 2, (real + 1) / 2).mean()
    assert loss.item() == pytest.approx(expected.item(), abs=1e-6)
    loss.backward()
    assert fake.grad is not None and torch.isfinite(fake.grad).all() and fake.grad.abs().sum() > 0


def test_ssim_loss_rejects_mismatched_or_tiny_images():
    with pytest.raises(ValueError):
        ssim_loss(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 17))
    with pytest.raises(ValueError):
        ssim_loss(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))


def test_feature_matching():
    torch.manual_seed(0)
    cfg = ModelConfig(discriminator="multiscale", base_channels=4)
    discriminator = build_discriminator(cfg).eval()
    source = torch.rand(2, 1, 48, 48)
    real = torch.rand(2, 1, 48, 48, requires_grad=True)
    fake = torch.rand(2, 1, 48, 48, requires_grad=True)

    def intermediate(image):
        return [scale[:-1] for scale in discriminator(source, image)]

    real_features = intermediate(real)
    assert feature_matching_loss(real_features, intermediate(real)).item() == 0.0
    loss = feature_matching_loss(real_features, intermediate(fake))
    assert loss > 0
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    # Real features are detached: nothing flows back through the real pair's branch.
    assert real.grad is None


def test_feature_matching_averages_layers_then_scales():
    zero, one = torch.zeros(1, 2), torch.ones(1, 2)
    real = [[zero, zero], [zero]]
    fake = [[one, 3 * one], [one]]
    # scale 1: mean(1, 3) = 2; scale 2: 1; average 1.5
    assert feature_matching_loss(real, fake).item() == pytest.approx(1.5)


def _write_random_vgg(path, extra_keys=True):
    torch.manual_seed(0)
    state = {f"features.{k}": v for k, v in vgg16_feature_extractor().state_dict().items()}
    if extra_keys:  # torchvision's whole vgg16 state_dict has deeper layers and a classifier
        state["features.17.weight"] = torch.zeros(512, 256, 3, 3)
        state["classifier.0.weight"] = torch.zeros(4, 4)
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return state


@pytest.mark.parametrize("file_name", ["vgg16.pth", "vgg16.safetensors"])
def test_perceptual_loss_with_a_weights_file(tmp_path, file_name):
    path = tmp_path / file_name
    state = _write_random_vgg(path)
    loss_fn = PerceptualLoss(path)
    torch.testing.assert_close(loss_fn.features[14].weight, state["features.14.weight"])
    real = torch.rand(2, 1, SIZE, SIZE) * 2 - 1
    fake = (torch.rand(2, 1, SIZE, SIZE) * 2 - 1).requires_grad_(True)
    assert loss_fn(real, real.clone()).item() == pytest.approx(0.0, abs=1e-7)
    loss = loss_fn(fake, real)
    assert loss > 0
    loss.backward()
    assert fake.grad is not None and fake.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in loss_fn.parameters())


def test_perceptual_loss_without_weights_explains_how_to_get_them(tmp_path):
    for missing in (None, tmp_path / "absent.pth"):
        with pytest.raises(ConfigError) as error:
            PerceptualLoss(missing)
        message = str(error.value)
        assert "torchvision.models.vgg16" in message and "state_dict" in message
        assert "\n" not in message


def test_perceptual_loss_rejects_a_wrong_file(tmp_path):
    wrong_keys = tmp_path / "other.pth"
    torch.save({"weight": torch.zeros(3)}, wrong_keys)
    with pytest.raises(DataError, match="features.0.weight"):
        PerceptualLoss(wrong_keys)
    wrong_shape = tmp_path / "shape.pth"
    state = _write_random_vgg(wrong_shape, extra_keys=False)
    state["features.0.weight"] = torch.zeros(64, 1, 3, 3)
    torch.save(state, wrong_shape)
    with pytest.raises(DataError, match="shape"):
        PerceptualLoss(wrong_shape)
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(DataError):
        PerceptualLoss(garbage)
