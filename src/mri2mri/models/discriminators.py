"""Conditional discriminators: D(source, target) judges a target given its source, patch by patch.

Every discriminator sees ``cat(source, target)`` (source_channels + target_channels input
channels) and returns a list over scales of lists of feature maps; the last map of each scale is
the patch map of LOGITS (losses use BCE-with-logits and friends; ``probability_map`` applies the
sigmoid for figures). The intermediate maps feed the feature-matching loss.

Read top to bottom: the shared interface, the report's simplified PatchGAN, the pix2pix 70x70
PatchGAN, the pix2pixHD multi-scale discriminator, and spectral normalisation.
Shape comments write ``b`` for ``base_channels``.
"""

from __future__ import annotations

import abc

import torch
from torch import nn

from mri2mri.config import ModelConfig
from mri2mri.models.blocks import init_gan_weights, make_norm

Features = list[list[torch.Tensor]]  # scales x layers; features[s][-1] is the logit map


def _strided_size(size: int) -> int:
    """Side after a Conv k4 s2 p1: floor((size + 2 - 4) / 2) + 1 = floor(size / 2)."""
    return size // 2


class ConditionalDiscriminator(nn.Module, abc.ABC):
    """Interface of every discriminator: ``forward(source, target) -> Features``, the patch-map
    arithmetic that ``check_image_size`` relies on, and the probability map."""

    @classmethod
    @abc.abstractmethod
    def from_config(cls, cfg: ModelConfig) -> ConditionalDiscriminator:
        """Build from ModelConfig (in_channels/out_channels are the source/target channels)."""

    @classmethod
    @abc.abstractmethod
    def patch_map_sizes(cls, cfg: ModelConfig, size: int) -> list[int]:
        """Side of each scale's logit map for a ``size`` x ``size`` input (< 1: too small)."""

    def probability_map(self, source: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Sigmoid of the first (full-resolution) scale's logit map, (B, 1, h, w), for figures."""
        return torch.sigmoid(self(source, target)[0][-1])


class _SingleScaleDiscriminator(ConditionalDiscriminator):
    """A stack of ``self.stages`` on cat(source, target); every stage's output is a feature,
    the last one the logit map."""

    stages: nn.ModuleList

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> Features:
        x = torch.cat([source, target], dim=1)  # (B, C_source + C_target, H, W)
        features = []
        for stage in self.stages:
            x = stage(x)
            features.append(x)
        return [features]


class BasicDiscriminator(_SingleScaleDiscriminator):
    """The lab report's simplified PatchGAN: Conv k4 s2, LeakyReLU; Conv k4 s2, BN, LeakyReLU;
    Conv k4 s1 -> one logit per patch. A 256 x 256 pair gives a 61 x 61 map."""

    def __init__(
        self,
        source_channels: int = 1,
        target_channels: int = 1,
        base_channels: int = 64,
        norm: str = "batch",
    ):
        super().__init__()
        b = base_channels
        # Report, discriminator "basic", one stage per returned feature map.
        self.stages = nn.ModuleList(
            [
                nn.Sequential(
                    nn.Conv2d(source_channels + target_channels, b, 4, stride=2, padding=1),
                    nn.LeakyReLU(0.2),
                ),  # (B, b, H/2, W/2)
                nn.Sequential(
                    nn.Conv2d(b, 2 * b, 4, stride=2, padding=1),
                    make_norm(norm, 2 * b),
                    nn.LeakyReLU(0.2),
                ),  # (B, 2b, H/4, W/4)
                nn.Conv2d(2 * b, 1, 4, stride=1, padding=0),  # (B, 1, H/4 - 3, W/4 - 3) logits
            ]
        )

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> BasicDiscriminator:
        return cls(cfg.in_channels, cfg.out_channels, cfg.base_channels, cfg.norm)

    @classmethod
    def patch_map_sizes(cls, cfg: ModelConfig, size: int) -> list[int]:
        return [_strided_size(_strided_size(size)) - 3]

class PatchDiscriminator(_SingleScaleDiscriminator):
    """The pix2pix 70x70 PatchGAN (Isola et al. 2017, appendix 6.1.2: C64-C128-C256-C512, then a
    1-channel conv); ``n_layers`` stride-2 convolutions (3 gives the 70 x 70 receptive field,
    a 30 x 30 map for 256 x 256 input)."""

    def __init__(
        self,
        source_channels: int = 1,
        target_channels: int = 1,
        base_channels: int = 64,
        norm: str = "batch",
        n_layers: int = 3,
    ):
        super().__init__()
        bias = norm != "batch"  # a bias before BatchNorm is redundant (pix2pix convention)
        b = base_channels
        # pix2pix PatchGAN: C64 without normalisation.
        stages: list[nn.Module] = [
            nn.Sequential(
                nn.Conv2d(source_channels + target_channels, b, 4, stride=2, padding=1),
                nn.LeakyReLU(0.2),
            )  # (B, b, H/2, W/2)
        ]
        # pix2pix PatchGAN: stride-2 Ck blocks, widths doubling up to 8 * base.
        width = b
        for layer in range(1, n_layers):
            previous, width = width, b * min(2**layer, 8)
            stages.append(
                nn.Sequential(
                    nn.Conv2d(previous, width, 4, stride=2, padding=1, bias=bias),
                    make_norm(norm, width),
                    nn.LeakyReLU(0.2),
                )  # (B, width, H / 2**(layer+1), W / 2**(layer+1))
            )
        # pix2pix PatchGAN: one stride-1 Ck block, then the 1-channel logit convolution.
        previous, width = width, b * min(2**n_layers, 8)
        stages.append(
            nn.Sequential(
                nn.Conv2d(previous, width, 4, stride=1, padding=1, bias=bias),
                make_norm(norm, width),
                nn.LeakyReLU(0.2),
            )  # (B, width, H / 2**n_layers - 1, W / 2**n_layers - 1)
        )
        # (B, 1, H / 2**n_layers - 2, W / 2**n_layers - 2) logits
        stages.append(nn.Conv2d(width, 1, 4, stride=1, padding=1))
        self.stages = nn.ModuleList(stages)
        self.n_layers = n_layers
        self.apply(init_gan_weights)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> PatchDiscriminator:
        return cls(cfg.in_channels, cfg.out_channels, cfg.base_channels, cfg.norm, cfg.disc_layers)

    @classmethod
    def patch_map_sizes(cls, cfg: ModelConfig, size: int) -> list[int]:
        return [_patch70_map_size(size, cfg.disc_layers)]

def _patch70_map_size(size: int, n_layers: int) -> int:
    for _ in range(n_layers):
        size = _strided_size(size)
    return size - 2  # two k4 s1 p1 convolutions each remove one pixel


def _average_pool_size(size: int) -> int:
    """Side after AvgPool2d(3, stride 2, padding 1): ceil(size / 2)."""
    return (size + 1) // 2


class MultiScaleDiscriminator(ConditionalDiscriminator):
    """pix2pixHD (Wang et al. 2018, section 3.2): ``n_scales`` 70x70 PatchGANs, the k-th on the
    pair average-pooled k times, so coarse scales judge global structure."""

    def __init__(
        self,
        source_channels: int = 1,
        target_channels: int = 1,
        base_channels: int = 64,
        norm: str = "batch",
        n_layers: int = 3,
        n_scales: int = 2,
    ):
        super().__init__()
        self.scales = nn.ModuleList(
            PatchDiscriminator(source_channels, target_channels, base_channels, norm, n_layers)
            for _ in range(n_scales)
        )
        # pix2pixHD downsampling between scales; padding not counted so borders stay unbiased.
        self.downsample = nn.AvgPool2d(3, stride=2, padding=1, count_include_pad=False)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> MultiScaleDiscriminator:
        return cls(
            cfg.in_channels,
            cfg.out_channels,
            cfg.base_channels,
            cfg.norm,
            cfg.disc_layers,
            cfg.disc_scales,
        )

    @classmethod
    def patch_map_sizes(cls, cfg: ModelConfig, size: int) -> list[int]:
        sizes = []
        for _ in range(cfg.disc_scales):
            sizes.append(_patch70_map_size(size, cfg.disc_layers))
            size = _average_pool_size(size)
        return sizes

    def forward(self, source: torch.Tensor, target: torch.Tensor) -> Features:
        features: Features = []
        for index, discriminator in enumerate(self.scales):
            if index > 0:
                source = self.downsample(source)  # (B, C, ceil(h/2), ceil(w/2))
                target = self.downsample(target)
            features.extend(discriminator(source, target))
        return features


def apply_spectral_norm(network: nn.Module) -> nn.Module:
    """Spectral normalisation (Miyato et al. 2018) on every convolution, in place; returns it."""
    for module in list(network.modules()):
        if isinstance(module, nn.Conv2d):
            nn.utils.parametrizations.spectral_norm(module)
    return network


DISCRIMINATORS: dict[str, type[ConditionalDiscriminator]] = {
    "basic": BasicDiscriminator,
    "patch70": PatchDiscriminator,
    "multiscale": MultiScaleDiscriminator,
}
