"""Small blocks shared by the generators and the discriminators.

Read top to bottom: choice validation, the normalisation factory, the upsampling convolution
(transposed or resize-convolution), then the encoder and decoder blocks of the U-Nets.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

from mri2mri.errors import ConfigError

NORMS = ("batch", "instance", "none")
UPSAMPLES = ("transpose", "resize")


def check_choice(kind: str, name: str, valid: Iterable[str]) -> None:
    """Raise ConfigError naming the valid choices when ``name`` is not one of them."""
    valid = tuple(valid)
    if name not in valid:
        raise ConfigError(f"unknown {kind} {name!r}; valid {kind} names: {', '.join(valid)}")


def make_norm(norm: str, channels: int) -> nn.Module:
    """BatchNorm (the report), InstanceNorm (pix2pix/CycleGAN option) or nothing."""
    check_choice("norm", norm, NORMS)
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "instance":
        # affine=False, no running statistics: as the pix2pix/CycleGAN reference code.
        return nn.InstanceNorm2d(channels, affine=False, track_running_stats=False)
    return nn.Identity()


def upsample_conv(
    in_channels: int,
    out_channels: int,
    upsample: str = "transpose",
    *,
    bias: bool = True,
    transpose_kernel: int = 4,
) -> nn.Module:
    """Double the resolution: ConvTranspose (stride 2) or nearest x2 then a 3x3 convolution.

    The resize-convolution avoids the checkerboard artefacts of strided transposed convolutions
    (Odena, Dumoulin and Olah, "Deconvolution and Checkerboard Artifacts", Distill 2016).
    ``transpose_kernel`` 4 (pix2pix, the report) or 3 (Johnson/CycleGAN ResNet, with
    output_padding 1) keeps the output exactly twice the input size.
    """
    check_choice("upsample", upsample, UPSAMPLES)
    if upsample == "resize":
        return nn.Sequential(
            nn.Upsample(scale_factor=2, mode="nearest"),
            nn.Conv2d(in_channels, out_channels, kernel_size=3, stride=1, padding=1, bias=bias),
        )
    output_padding = 1 if transpose_kernel == 3 else 0
    return nn.ConvTranspose2d(
        in_channels,
        out_channels,
        kernel_size=transpose_kernel,
        stride=2,
        padding=1,
        output_padding=output_padding,
        bias=bias,
    )


class DownBlock(nn.Sequential):
    """Encoder block (the report's DownBlock; pix2pix's Ck): Conv k4 s2 p1, norm, LeakyReLU 0.2."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "batch", bias: bool = True):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel_size=4, stride=2, padding=1, bias=bias),
            make_norm(norm, out_channels),
            nn.LeakyReLU(0.2),
        )


class UpBlock(nn.Module):
    """Decoder block (the report's UpBlock; pix2pix's CDk): upsample x2, norm, ReLU, dropout,
    then concatenation with the encoder's skip features."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        norm: str = "batch",
        dropout: float = 0.0,
        upsample: str = "transpose",
        bias: bool = True,
    ):
        super().__init__()
        layers: list[nn.Module] = [
            upsample_conv(in_channels, out_channels, upsample, bias=bias),
            make_norm(norm, out_channels),
            nn.ReLU(),
        ]
        if dropout > 0:
            # Dropout after ReLU equals dropout before it (same mask, positive scale).
            layers.append(nn.Dropout(dropout))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        # (B, C_in, h, w) -> (B, C_out + C_skip, 2h, 2w)
        return torch.cat([self.block(x), skip], dim=1)


def init_gan_weights(module: nn.Module, std: float = 0.02) -> None:
    """DCGAN/pix2pix initialisation: conv weights ~ N(0, 0.02), norm scales ~ N(1, 0.02).

    Use as ``network.apply(init_gan_weights)``.
    """
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, std)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, std)
        nn.init.zeros_(module.bias)
