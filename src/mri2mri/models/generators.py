"""Generators: source contrast (B, in_channels, H, W) -> target contrast (B, out_channels, H, W).

Every generator ends in Tanh, so its output lies in [-1, 1] like the dataset's targets. Each class
states the image sizes it accepts: ``total_stride`` (H and W must be multiples of it, so that the
skip connections line up) and ``minimum_size``; ``mri2mri.models.check_image_size`` enforces them.

Read top to bottom: the report's encoder-decoder and U-Net, then the larger networks of
the report's future work (the Johnson/CycleGAN ResNet generator and the pix2pix 8-level U-Net).
Shape comments write ``b`` for ``base_channels`` (64 in the report, 32 by default here).
"""

from __future__ import annotations

import torch
from torch import nn

from mri2mri.config import ModelConfig
from mri2mri.models.blocks import (
    DownBlock,
    UpBlock,
    init_gan_weights,
    make_norm,
    upsample_conv,
)


class BasicGenerator(nn.Module):
    """The lab report's encoder-decoder generator (two strided convs down, two up, Tanh).

    Exactly the report's layers at the defaults (base_channels 64, batch norm, transposed
    convolutions, PyTorch's default initialisation); ``norm`` and ``upsample`` replace the
    normalisation and the transposed convolutions. It has no dropout layer in the report.
    """

    total_stride = 4
    minimum_size = 8  # the normalised H/4 map keeps more than one pixel (instance norm, batch 1)

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 64,
        norm: str = "batch",
        upsample: str = "transpose",
    ):
        super().__init__()
        b = base_channels
        # Report, generator "basic": encoder.
        self.encoder = nn.Sequential(
            nn.Conv2d(in_channels, b, kernel_size=4, stride=2, padding=1),  # (B, b, H/2, W/2)
            nn.LeakyReLU(0.2),
            nn.Conv2d(b, 2 * b, kernel_size=4, stride=2, padding=1),  # (B, 2b, H/4, W/4)
            make_norm(norm, 2 * b),
            nn.LeakyReLU(0.2),
        )
        # Report, generator "basic": decoder.
        self.decoder = nn.Sequential(
            upsample_conv(2 * b, b, upsample),  # (B, b, H/2, W/2)
            make_norm(norm, b),
            nn.ReLU(),
            upsample_conv(b, out_channels, upsample),  # (B, out, H, W)
            nn.Tanh(),
        )

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> BasicGenerator:
        return cls(cfg.in_channels, cfg.out_channels, cfg.base_channels, cfg.norm, cfg.upsample)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decoder(self.encoder(x))


class _FullOptionsGenerator(nn.Module):
    """Generators whose constructor takes every ``ModelConfig`` option, in one order."""

    @classmethod
    def from_config(cls, cfg: ModelConfig):
        return cls(cfg.in_channels, cfg.out_channels, cfg.base_channels, cfg.norm, cfg.dropout, cfg.upsample)


class UNetGenerator(_FullOptionsGenerator):
    """The lab report's U-Net: four DownBlocks, three UpBlocks with skips, a final up + Tanh.

    Exactly the report's layers at the defaults (base_channels 64, batch norm, dropout 0.5 in the
    first UpBlock, transposed convolutions, PyTorch's default initialisation). ``dropout`` sets
    the probability of that one dropout layer (0 removes it).
    """

    total_stride = 16
    minimum_size = 32  # the normalised H/16 bottleneck keeps more than one pixel

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 64,
        norm: str = "batch",
        dropout: float = 0.5,
        upsample: str = "transpose",
    ):
        super().__init__()
        b = base_channels
        # Report, U-Net encoder: the first DownBlock has no normalisation.
        self.down1 = DownBlock(in_channels, b, norm="none")  # (B, b, H/2, W/2)
        self.down2 = DownBlock(b, 2 * b, norm)  # (B, 2b, H/4, W/4)
        self.down3 = DownBlock(2 * b, 4 * b, norm)  # (B, 4b, H/8, W/8)
        self.down4 = DownBlock(4 * b, 8 * b, norm)  # (B, 8b, H/16, W/16)
        # Report, U-Net decoder: each UpBlock concatenates the matching encoder features.
        self.up1 = UpBlock(8 * b, 4 * b, norm, dropout, upsample)  # (B, 4b+4b, H/8, W/8)
        self.up2 = UpBlock(8 * b, 2 * b, norm, 0.0, upsample)  # (B, 2b+2b, H/4, W/4)
        self.up3 = UpBlock(4 * b, b, norm, 0.0, upsample)  # (B, b+b, H/2, W/2)
        self.final = nn.Sequential(
            upsample_conv(2 * b, out_channels, upsample),  # (B, out, H, W)
            nn.Tanh(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        d1 = self.down1(x)
        d2 = self.down2(d1)
        d3 = self.down3(d2)
        d4 = self.down4(d3)
        u1 = self.up1(d4, d3)
        u2 = self.up2(u1, d2)
        u3 = self.up3(u2, d1)
        return self.final(u3)


class ResidualBlock(nn.Module):
    """Johnson et al. 2016 / CycleGAN residual block: x + (pad, conv3, norm, ReLU, [dropout],
    pad, conv3, norm), reflection padding against border artefacts."""

    def __init__(self, channels: int, norm: str, dropout: float, bias: bool):
        super().__init__()
        layers: list[nn.Module] = [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=bias),
            make_norm(norm, channels),
            nn.ReLU(),
        ]
        if dropout > 0:
            layers.append(nn.Dropout(dropout))
        layers += [
            nn.ReflectionPad2d(1),
            nn.Conv2d(channels, channels, kernel_size=3, bias=bias),
            make_norm(norm, channels),
        ]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.block(x)


class ResNetGenerator(_FullOptionsGenerator):
    """Johnson et al. 2016 / CycleGAN "resnet_9blocks": 7x7 conv, two stride-2 downs, nine
    residual blocks at 1/4 resolution, two ups, 7x7 conv, Tanh (the report's future work: residual blocks)."""

    total_stride = 4
    minimum_size = 8  # reflection padding of 1 at H/4 needs at least 2 pixels there

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 64,
        norm: str = "batch",
        dropout: float = 0.5,
        upsample: str = "transpose",
        n_blocks: int = 9,
    ):
        super().__init__()
        b = base_channels
        bias = norm != "batch"  # a bias before BatchNorm is redundant (pix2pix convention)
        # CycleGAN ResNet generator: stem.
        self.stem = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(in_channels, b, kernel_size=7, bias=bias),  # (B, b, H, W)
            make_norm(norm, b),
            nn.ReLU(),
        )
        # CycleGAN ResNet generator: two stride-2 downsamplings.
        self.down = nn.Sequential(
            # (B, 2b, H/2, W/2)
            nn.Conv2d(b, 2 * b, kernel_size=3, stride=2, padding=1, bias=bias),
            make_norm(norm, 2 * b),
            nn.ReLU(),
            # (B, 4b, H/4, W/4)
            nn.Conv2d(2 * b, 4 * b, kernel_size=3, stride=2, padding=1, bias=bias),
            make_norm(norm, 4 * b),
            nn.ReLU(),
        )
        # CycleGAN ResNet generator: residual blocks at 1/4 resolution.
        self.blocks = nn.Sequential(
            *(ResidualBlock(4 * b, norm, dropout, bias) for _ in range(n_blocks))
        )
        # CycleGAN ResNet generator: two upsamplings and the 7x7 output convolution.
        self.up = nn.Sequential(
            # (B, 2b, H/2, W/2)
            upsample_conv(4 * b, 2 * b, upsample, bias=bias, transpose_kernel=3),
            make_norm(norm, 2 * b),
            nn.ReLU(),
            upsample_conv(2 * b, b, upsample, bias=bias, transpose_kernel=3),  # (B, b, H, W)
            make_norm(norm, b),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.ReflectionPad2d(3),
            nn.Conv2d(b, out_channels, kernel_size=7),  # (B, out, H, W)
            nn.Tanh(),
        )
        self.apply(init_gan_weights)

    @classmethod
    def from_config(cls, cfg: ModelConfig) -> ResNetGenerator:
        return cls(cfg.in_channels, cfg.out_channels, cfg.base_channels, cfg.norm, cfg.dropout, cfg.upsample,
                   n_blocks=cfg.resnet_blocks)  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.up(self.blocks(self.down(self.stem(x)))))


class UNet256Generator(_FullOptionsGenerator):
    """The pix2pix paper's 8-level U-Net (Isola et al. 2017, appendix 6.1.1):
    encoder C64-C128-C256-C512-C512-C512-C512-C512, decoder CD512-CD1024-CD1024-C1024-C1024-
    C512-C256-C128 (channels after concatenation), dropout in the three innermost up blocks.

    Eight stride-2 levels: H and W must be multiples of 256 (a 256 x 256 image reaches a 1 x 1
    bottleneck). As in the reference code, the first and the innermost encoder blocks have no
    normalisation (the innermost map is 1 x 1 at 256 px, where a norm is undefined for batch 1).
    """

    total_stride = 256
    minimum_size = 256
    levels = 8

    def __init__(
        self,
        in_channels: int = 1,
        out_channels: int = 1,
        base_channels: int = 64,
        norm: str = "batch",
        dropout: float = 0.5,
        upsample: str = "transpose",
    ):
        super().__init__()
        bias = norm != "batch"  # a bias before BatchNorm is redundant (pix2pix convention)
        # Encoder widths at base 64: 64, 128, 256, then 512 for every further level (L = self.levels:
        # 8 for unet256, 7 for unet128).
        widths = [base_channels * min(2**level, 8) for level in range(self.levels)]
        # pix2pix encoder: level i gives (B, widths[i], H / 2**(i+1), W / 2**(i+1)).
        self.downs = nn.ModuleList()
        for level, width in enumerate(widths):
            previous = in_channels if level == 0 else widths[level - 1]
            level_norm = "none" if level in (0, self.levels - 1) else norm
            level_bias = bias or level_norm == "none"
            self.downs.append(DownBlock(previous, width, level_norm, bias=level_bias))
        # pix2pix decoder: up block j gives (B, 2 * widths[L-2-j], H / 2**(L-1-j), W / 2**(L-1-j))
        # after concatenating encoder level L-2-j; the first three use dropout.
        self.ups = nn.ModuleList()
        for j in range(self.levels - 1):
            source_width = widths[-1] if j == 0 else 2 * widths[self.levels - 1 - j]
            self.ups.append(
                UpBlock(
                    source_width,
                    widths[self.levels - 2 - j],
                    norm,
                    dropout if j < 3 else 0.0,
                    upsample,
                    bias,
                )
            )
        self.final = nn.Sequential(
            upsample_conv(2 * widths[0], out_channels, upsample),  # (B, out, H, W)
            nn.Tanh(),
        )
        self.apply(init_gan_weights)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for down in self.downs:
            x = down(x)
            skips.append(x)
        x = skips.pop()  # the innermost level, (B, widths[-1], H / 2**L, W / 2**L), 1 x 1 at the smallest size
        for up in self.ups:
            x = up(x, skips.pop())
        return self.final(x)  # (B, out, H, W)


class UNet128Generator(UNet256Generator):
    """pix2pix's U-Net for 128 x 128 images (the reference code's ``unet_128``): the same blocks
    as ``unet256`` with seven stride-2 levels, so a 128 x 128 image reaches a 1 x 1 bottleneck.

    Against the report's four-level ``unet`` it is three levels deeper: its receptive field spans
    the whole 128 px slice, and the added levels work on 4 x 4 to 1 x 1 maps, so they add many
    parameters (10.5 M against 1.5 M at base 32, one source) for few multiply-adds; a training
    step on a 2-core CPU still takes about twice the default's (README, *Six more levers*).
    """

    total_stride = 128
    minimum_size = 128
    levels = 7


GENERATORS: dict[str, type[nn.Module]] = {
    "basic": BasicGenerator,
    "unet": UNetGenerator,
    "resnet9": ResNetGenerator,
    "unet128": UNet128Generator,
    "unet256": UNet256Generator,
}
