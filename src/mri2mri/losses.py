"""Losses of the GAN step: adversarial variants, SSIM, feature matching, perceptual.

All are stateless functions of their arguments (EDM's loss callables): nothing is kept between
calls. Discriminator outputs arrive as the models' ``Features`` (a list over scales of lists of
feature maps, the last of each the patch LOGIT map); the adversarial functions take the list of
logit maps, one per scale, ``[features[-1] for features in D(source, target)]``, and average the
loss over scales, so its size does not depend on the number of scales.

Images arrive in the model range [-1, 1]. L1 is ``torch.nn.functional.l1_loss`` directly.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from mri2mri.errors import ConfigError, DataError
from mri2mri.metrics import SSIM_WINDOW, ssim
from mri2mri.models.blocks import check_choice

GAN_LOSSES = ("bce", "lsgan", "hinge", "wgan-gp")

# ----------------------------------------------------------------------------------------------
# Adversarial losses, per scale; the public functions average them over scales.


def _bce_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    # The report (and pix2pix): half the sum, so D learns at half the rate of G.
    real_loss = F.binary_cross_entropy_with_logits(real, torch.ones_like(real))
    fake_loss = F.binary_cross_entropy_with_logits(fake, torch.zeros_like(fake))
    return 0.5 * (real_loss + fake_loss)


def _bce_generator(fake: torch.Tensor) -> torch.Tensor:
    # Non-saturating generator loss (Goodfellow et al. 2014), as the report.
    return F.binary_cross_entropy_with_logits(fake, torch.ones_like(fake))


def _lsgan_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    # Least squares GAN (Mao et al. 2017) with targets 1 / 0, halved as pix2pix does.
    return 0.5 * (torch.mean((real - 1.0) ** 2) + torch.mean(fake**2))


def _lsgan_generator(fake: torch.Tensor) -> torch.Tensor:
    return torch.mean((fake - 1.0) ** 2)


def _hinge_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    # Hinge loss (Lim and Ye 2017; SAGAN, BigGAN).
    return torch.mean(F.relu(1.0 - real)) + torch.mean(F.relu(1.0 + fake))


def _wasserstein_discriminator(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    # WGAN critic (Arjovsky et al. 2017); Lipschitz through gradient_penalty (Gulrajani 2017).
    return torch.mean(fake) - torch.mean(real)


def _negative_mean_generator(fake: torch.Tensor) -> torch.Tensor:
    # Generator loss of both the hinge GAN and the WGAN.
    return -torch.mean(fake)


_DISCRIMINATOR_LOSSES = {
    "bce": _bce_discriminator,
    "lsgan": _lsgan_discriminator,
    "hinge": _hinge_discriminator,
    "wgan-gp": _wasserstein_discriminator,
}
_GENERATOR_LOSSES = {
    "bce": _bce_generator,
    "lsgan": _lsgan_generator,
    "hinge": _negative_mean_generator,
    "wgan-gp": _negative_mean_generator,
}


def _as_scales(logits: torch.Tensor | list[torch.Tensor]) -> list[torch.Tensor]:
    return [logits] if isinstance(logits, torch.Tensor) else list(logits)


def discriminator_loss(
    kind: str,
    real_logits: list[torch.Tensor],
    fake_logits: list[torch.Tensor],
) -> torch.Tensor:
    """Discriminator (critic) loss of ``kind`` (one of GAN_LOSSES), averaged over scales.

    bce: 0.5 * (BCE(real, 1) + BCE(fake, 0)) (the report); lsgan: 0.5 * (mean((real - 1)^2) +
    mean(fake^2)); hinge: mean(relu(1 - real)) + mean(relu(1 + fake)); wgan-gp: mean(fake) -
    mean(real), to which the caller adds ``lambda_gp * gradient_penalty(...)``. Pass the fake
    logits of a detached fake. A single tensor is accepted for a single scale.
    """
    check_choice("GAN loss", kind, GAN_LOSSES)
    real_scales, fake_scales = _as_scales(real_logits), _as_scales(fake_logits)
    if len(real_scales) != len(fake_scales) or not real_scales:
        raise ValueError(
            f"real and fake logits need the same, non-zero number of scales, "
            f"got {len(real_scales)} and {len(fake_scales)}"
        )
    loss = _DISCRIMINATOR_LOSSES[kind]
    total = sum(loss(real, fake) for real, fake in zip(real_scales, fake_scales, strict=True))
    return total / len(real_scales)


def generator_adversarial_loss(kind: str, fake_logits: list[torch.Tensor]) -> torch.Tensor:
    """Generator's adversarial loss of ``kind`` (one of GAN_LOSSES), averaged over scales.

    bce: BCE(fake, 1) (the report); lsgan: mean((fake - 1)^2); hinge and wgan-gp: -mean(fake).
    """
    check_choice("GAN loss", kind, GAN_LOSSES)
    fake_scales = _as_scales(fake_logits)
    if not fake_scales:
        raise ValueError("fake logits need at least one scale")
    loss = _GENERATOR_LOSSES[kind]
    return sum(loss(fake) for fake in fake_scales) / len(fake_scales)


def gradient_penalty(
    discriminator: nn.Module,
    source: torch.Tensor,
    real: torch.Tensor,
    fake: torch.Tensor,
) -> torch.Tensor:
    """WGAN-GP penalty (Gulrajani et al. 2017): mean over the batch of (||grad||_2 - 1)^2.

    The gradient is that of the critic's value for each sample (its logit maps averaged over
    patches and scales, as in ``discriminator_loss``) with respect to the target image at a
    random interpolate ``eps * real + (1 - eps) * fake`` (one eps ~ U[0, 1] per sample). The
    source is the condition, held fixed: the critic must be 1-Lipschitz in the image it judges.
    ``real`` and ``fake`` are detached here; the result keeps the graph to D's parameters
    (create_graph), and the caller multiplies it by lambda_gp.
    """
    real, fake = real.detach(), fake.detach()
    eps = torch.rand(real.shape[0], *([1] * (real.dim() - 1)), device=real.device, dtype=real.dtype)
    interpolate = (eps * real + (1.0 - eps) * fake).requires_grad_(True)
    scales = [features[-1] for features in discriminator(source, interpolate)]
    # Per-sample critic value; summed over the batch since samples do not interact in D
    # (true in eval mode or without batch norm, as WGAN-GP recommends for the critic).
    critic = sum(logits.flatten(1).mean(dim=1) for logits in scales) / len(scales)
    (gradient,) = torch.autograd.grad(critic.sum(), interpolate, create_graph=True)
    gradient_norm = gradient.flatten(1).norm(2, dim=1)
    return torch.mean((gradient_norm - 1.0) ** 2)


# ----------------------------------------------------------------------------------------------
# Structural similarity (Wang et al. 2004) as a loss: the test metric's own SSIM.


def ssim_loss(fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """1 - mean SSIM between two (B, C, H, W) batches in [-1, 1], computed on [0, 1].

    The SSIM is :func:`mri2mri.metrics.ssim` without a mask, the one the test metrics report:
    Gaussian window 11 x 11, sigma 1.5, K1 0.01, K2 0.03, data range 1, population
    covariances, and the map's mean with a border of the window radius cropped, i.e. over the
    pixels whose window lies inside the image (the same valid region scikit-image averages;
    there no padding enters). On a tensor that requires gradients the metric filters with
    matrix products, so the loss is differentiable on any device. H and W must be at least 11.
    Computed in float32 with autocast off: E[x^2] - E[x]^2 loses all precision in half precision.
    """
    if fake.shape != real.shape:
        shapes = f"{tuple(fake.shape)} and {tuple(real.shape)}"
        raise ValueError(f"ssim_loss needs images of equal shape, got {shapes}")
    if min(fake.shape[-2:]) < SSIM_WINDOW:
        shape = tuple(fake.shape)
        raise ValueError(f"ssim_loss needs images of at least {SSIM_WINDOW} px, got {shape}")
    with torch.autocast(device_type=fake.device.type, enabled=False):
        unit_fake, unit_real = (fake.float() + 1.0) * 0.5, (real.float() + 1.0) * 0.5  # -> [0, 1]
        return 1.0 - ssim(unit_fake, unit_real).mean()


# ----------------------------------------------------------------------------------------------
# Discriminator feature matching (pix2pixHD, Wang et al. 2018, section 3.2).


def feature_matching_loss(
    real_features: list[list[torch.Tensor]],
    fake_features: list[list[torch.Tensor]],
) -> torch.Tensor:
    """L1 between D's intermediate features for the real and the fake pair.

    Both arguments are scales x layers of feature maps WITHOUT the logit maps, that is
    ``[scale[:-1] for scale in D(source, image)]``; every map given is compared. The L1 is
    averaged over the layers of a scale, then over scales. Real features are detached: this
    loss trains the generator only.
    """
    if len(real_features) != len(fake_features) or not real_features:
        raise ValueError("real and fake features need the same, non-zero number of scales")
    per_scale = []
    for real_layers, fake_layers in zip(real_features, fake_features, strict=True):
        pairs = list(zip(real_layers, fake_layers, strict=True))
        if not pairs:
            raise ValueError("feature matching needs at least one intermediate feature map")
        per_scale.append(sum(F.l1_loss(fake, real.detach()) for real, fake in pairs) / len(pairs))
    return sum(per_scale) / len(per_scale)


# ----------------------------------------------------------------------------------------------
# Perceptual loss (Johnson et al. 2016) with user-supplied VGG16 weights.

# torchvision vgg16().features indices of the convolutions up to relu3_3, with their shapes.
VGG16_CONVOLUTIONS = {
    0: (3, 64),
    2: (64, 64),
    5: (64, 128),
    7: (128, 128),
    10: (128, 256),
    12: (256, 256),
    14: (256, 256),
}
VGG16_FEATURE_LAYERS = (3, 8, 15)  # relu1_2, relu2_2, relu3_3 in vgg16().features
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

PERCEPTUAL_WEIGHTS_RECIPE = (
    "on a machine with torchvision run: import torch, torchvision; "
    "model = torchvision.models.vgg16(weights='IMAGENET1K_V1'); "
    "torch.save(model.state_dict(), 'vgg16.pth')  then pass that file as perceptual_weights"
)


def vgg16_feature_extractor() -> nn.Sequential:
    """torchvision's ``vgg16().features[:16]`` (conv1_1 ... relu3_3) with its exact indices, so
    that torchvision's state_dict keys ``features.N.weight/bias`` load into it."""
    layers: list[nn.Module] = []
    for index in range(16):
        if index in VGG16_CONVOLUTIONS:
            in_channels, out_channels = VGG16_CONVOLUTIONS[index]
            layers.append(nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1))
        elif index in (4, 9):
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            return load_file(str(path))
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # noqa: BLE001 - any unreadable file is a DataError for the user
        raise DataError(f"{path}: cannot read perceptual-loss weights ({error})") from error
    if not isinstance(state, dict):
        raise DataError(f"{path}: perceptual-loss weights must be a state_dict (a dict of tensors)")
    return state


class PerceptualLoss(nn.Module):
    """Perceptual loss: mean L1 between VGG16 features (relu1_2, relu2_2, relu3_3) of the fake
    and the real image (Johnson et al. 2016), with weights the user supplies; nothing downloads.

    ``weights_path`` is a ``.pth`` (loaded with ``torch.load(weights_only=True)``) or
    ``.safetensors`` state_dict holding ``features.{0,2,5,7,10,12,14}.{weight,bias}`` with
    torchvision's VGG16 shapes; other keys (the deeper layers, the classifier) are ignored, so
    torchvision's whole ``vgg16`` state_dict works. Recipe, on a machine with torchvision::

        import torch, torchvision
        model = torchvision.models.vgg16(weights="IMAGENET1K_V1")
        torch.save(model.state_dict(), "vgg16.pth")

    Images in [-1, 1] with any number of channels are averaged to grey, mapped to [0, 1],
    repeated to RGB and normalised with the ImageNet mean and std. The extractor is frozen; move
    the loss to the device with ``.to(device)``.
    """

    def __init__(self, weights_path: str | Path | None):
        super().__init__()
        if weights_path is None:
            raise ConfigError(
                "the perceptual loss needs VGG16 weights (perceptual_weights); "
                + PERCEPTUAL_WEIGHTS_RECIPE
            )
        path = Path(weights_path)
        if not path.is_file():
            raise ConfigError(
                f"{path}: perceptual-loss weights file not found; " + PERCEPTUAL_WEIGHTS_RECIPE
            )
        self.features = vgg16_feature_extractor()
        state = _read_state_dict(path)
        wanted = {
            f"features.{index}.{name}": f"{index}.{name}"
            for index in VGG16_CONVOLUTIONS
            for name in ("weight", "bias")
        }
        missing = [key for key in wanted if key not in state]
        if missing:
            raise DataError(
                f"{path}: not a VGG16 state_dict, missing {', '.join(missing)}; "
                + PERCEPTUAL_WEIGHTS_RECIPE
            )
        own = self.features.state_dict()
        for key, own_key in wanted.items():
            if tuple(state[key].shape) != tuple(own[own_key].shape):
                raise DataError(
                    f"{path}: {key} has shape {tuple(state[key].shape)}, "
                    f"VGG16 needs {tuple(own[own_key].shape)}"
                )
        self.features.load_state_dict({own_key: state[key] for key, own_key in wanted.items()})
        self.features.eval()
        self.features.requires_grad_(False)
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

    def _normalise(self, image: torch.Tensor) -> torch.Tensor:
        grey = (image.mean(dim=1, keepdim=True) + 1.0) * 0.5  # (B, 1, H, W) in [0, 1]
        return (grey.expand(-1, 3, -1, -1) - self.mean) / self.std  # (B, 3, H, W)

    def _feature_maps(self, image: torch.Tensor) -> list[torch.Tensor]:
        maps = []
        x = self._normalise(image)
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in VGG16_FEATURE_LAYERS:
                maps.append(x)
        return maps

    def forward(self, fake: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            real_maps = self._feature_maps(real)
        fake_maps = self._feature_maps(fake)
        losses = [F.l1_loss(f, r) for f, r in zip(fake_maps, real_maps, strict=True)]
        return sum(losses) / len(losses)
