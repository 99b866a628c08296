"""Networks: choose them by name from ModelConfig, and check the image sizes they accept.

``build_generator(cfg)`` gives G: (B, in_channels, H, W) -> (B, out_channels, H, W) in [-1, 1].
``build_discriminator(cfg)`` gives D: D(source, target) -> list over scales of lists of feature
maps, the last of each the patch logit map; ``D.probability_map(source, target)`` for figures.
``check_image_size(cfg, size)`` raises ConfigError naming the nearest valid sizes.
"""

from __future__ import annotations

from torch import nn

from mri2mri.config import ModelConfig
from mri2mri.errors import ConfigError
from mri2mri.models.blocks import NORMS, UPSAMPLES, check_choice
from mri2mri.models.discriminators import (
    DISCRIMINATORS,
    ConditionalDiscriminator,
    apply_spectral_norm,
)
from mri2mri.models.generators import GENERATORS
from mri2mri.models.residual import RESIDUALS, TableResidual

__all__ = [
    "DISCRIMINATORS",
    "GENERATORS",
    "NORMS",
    "RESIDUALS",
    "UPSAMPLES",
    "build_discriminator",
    "build_generator",
    "check_image_size",
    "check_model_config",
    "count_parameters",
    "minimum_image_size",
]


# The discriminator's minimum image size is searched up to this side (far beyond any scan).
_LARGEST_SEARCHED_SIZE = 1 << 16


def _check_common(cfg: ModelConfig) -> None:
    check_choice("norm", cfg.norm, NORMS)
    for name in ("in_channels", "out_channels", "base_channels"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"model {name} must be at least 1, got {getattr(cfg, name)}")


def check_model_config(cfg: ModelConfig) -> None:
    """Raise ConfigError for any option of ``cfg`` that the builders would refuse, without
    building a network (a 54 M-parameter one takes seconds to initialise)."""
    _check_generator_options(cfg)
    _check_discriminator_options(cfg)


def _check_generator_options(cfg: ModelConfig) -> None:
    check_choice("generator", cfg.generator, GENERATORS)
    check_choice("upsample", cfg.upsample, UPSAMPLES)
    check_choice("residual", cfg.residual, RESIDUALS)
    _check_common(cfg)
    if not 0.0 <= cfg.dropout < 1.0:
        raise ConfigError(f"model dropout must be in [0, 1), got {cfg.dropout}")


def _check_discriminator_options(cfg: ModelConfig) -> None:
    check_choice("discriminator", cfg.discriminator, DISCRIMINATORS)
    _check_common(cfg)
    if cfg.disc_layers < 1:
        raise ConfigError(f"model disc_layers must be at least 1, got {cfg.disc_layers}")
    if cfg.disc_scales < 1:
        raise ConfigError(f"model disc_scales must be at least 1, got {cfg.disc_scales}")


def build_generator(cfg: ModelConfig) -> nn.Module:
    """The generator named by ``cfg.generator`` (one of GENERATORS), with cfg's options; with
    ``cfg.residual == "intensity-map"`` it is the correction inside a ``TableResidual``, whose
    table the caller fits (training) or loads with the weights (a checkpoint)."""
    _check_generator_options(cfg)
    generator = GENERATORS[cfg.generator].from_config(cfg)
    if cfg.residual == "intensity-map":
        return TableResidual(generator, table_channel=cfg.table_channel, correction_weight=cfg.correction_weight)
    return generator


def build_discriminator(cfg: ModelConfig) -> ConditionalDiscriminator:
    """The discriminator named by ``cfg.discriminator`` (one of DISCRIMINATORS), with
    ``cfg.in_channels + cfg.out_channels`` input channels and optional spectral norm."""
    _check_discriminator_options(cfg)
    discriminator = DISCRIMINATORS[cfg.discriminator].from_config(cfg)
    if cfg.spectral_norm:
        apply_spectral_norm(discriminator)
    return discriminator


def _discriminator_minimum_size(cfg: ModelConfig) -> int:
    """Smallest input side for which every scale of the discriminator yields a patch map."""
    discriminator = DISCRIMINATORS[cfg.discriminator]

    def fits(size: int) -> bool:
        return min(discriminator.patch_map_sizes(cfg, size)) >= 1

    # Map sizes grow monotonically with the input size: double until one fits, then bisect, so
    # the search takes O(log size) steps however deep the discriminator (each layer can
    # multiply the minimum by 4, so a linear search never ends for deep ones).
    high = 1
    while not fits(high):
        if high >= _LARGEST_SEARCHED_SIZE:
            raise ConfigError(
                f"discriminator {cfg.discriminator!r} with {cfg.disc_layers} layers and "
                f"{cfg.disc_scales} scales needs images larger than {_LARGEST_SEARCHED_SIZE} pixels; "
                "use fewer --disc-layers or --disc-scales"
            )
        high *= 2
    low = high // 2  # does not fit (or is 0)
    while high - low > 1:
        middle = (low + high) // 2
        if fits(middle):
            high = middle
        else:
            low = middle
    return high


def minimum_image_size(cfg: ModelConfig) -> int:
    """Smallest image side that both the generator and the discriminator of cfg accept."""
    check_choice("generator", cfg.generator, GENERATORS)
    check_choice("discriminator", cfg.discriminator, DISCRIMINATORS)
    generator = GENERATORS[cfg.generator]
    minimum = max(generator.minimum_size, _discriminator_minimum_size(cfg))
    return -(-minimum // generator.total_stride) * generator.total_stride


def check_image_size(cfg: ModelConfig, size: int) -> None:
    """Raise ConfigError unless ``size`` x ``size`` images suit cfg's generator and discriminator.

    The generator needs a multiple of its total stride (its skip connections must line up) and
    at least its minimum size; the discriminator needs enough pixels for a patch map at every
    scale. The message names the nearest valid sizes below and above.
    """
    minimum = minimum_image_size(cfg)
    generator = GENERATORS[cfg.generator]
    multiple = generator.total_stride
    if size >= minimum and size % multiple == 0:
        return
    above = max(minimum, -(-size // multiple) * multiple)
    below = (size // multiple) * multiple
    nearest = f"{below} or {above}" if below >= minimum else f"{above} (the smallest)"
    raise ConfigError(
        f"image size {size} does not suit generator {cfg.generator!r} (multiple of {multiple}, "
        f"at least {generator.minimum_size}) and discriminator {cfg.discriminator!r} "
        f"(at least {_discriminator_minimum_size(cfg)}); nearest valid sizes: {nearest}"
    )


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``module``, optionally only those requiring grad."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)
