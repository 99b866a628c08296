"""Generators and discriminators: shapes, ranges, options, size rules, bad choices."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mri2mri.config import ModelConfig, replace
from mri2mri.errors import ConfigError
from mri2mri.models import (
    DISCRIMINATORS,
    GENERATORS,
    NORMS,
    UPSAMPLES,
    build_discriminator,
    build_generator,
    check_image_size,
    count_parameters,
    minimum_image_size,
)

# Two valid sizes per generator (the smallest valid ones, and the next), tiny widths for speed.
GENERATOR_SIZES = {
    "basic": (32, 48),
    "unet": (32, 48),
    "resnet9": (32, 36),
    "unet128": (128, 256),
    "unet256": (256, 512),
}
TINY = 4  # base_channels of the tiny test networks


def _images(batch: int, channels: int, size: int) -> torch.Tensor:
    return torch.rand(batch, channels, size, size) * 2 - 1


def test_every_generator_has_test_sizes():
    assert set(GENERATOR_SIZES) == set(GENERATORS)


@pytest.mark.parametrize(
    ("name", "size"),
    [(name, size) for name, sizes in GENERATOR_SIZES.items() for size in sizes],
)
def test_generator_output_shape_and_range(name, size):
    torch.manual_seed(0)
    cfg = ModelConfig(residual="none", generator=name, base_channels=TINY)
    check_image_size(ModelConfig(residual="none", generator=name, discriminator="basic"), size)
    generator = build_generator(cfg)
    output = generator(_images(2, 1, size))
    assert output.shape == (2, 1, size, size)
    assert torch.isfinite(output).all()
    assert output.abs().max() <= 1.0


@pytest.mark.parametrize("name", ["basic", "unet"])
def test_report_generators_at_256(name):
    generator = build_generator(ModelConfig(residual="none", generator=name)).eval()
    with torch.no_grad():
        output = generator(_images(1, 1, 256))
    assert output.shape == (1, 1, 256, 256)
    assert output.abs().max() <= 1.0


def _conv(in_channels, out_channels, kernel=4, bias=True):
    return in_channels * out_channels * kernel * kernel + (out_channels if bias else 0)


def test_report_networks_have_exactly_the_report_layers():
    # Hand count of the report's layers at base 64 (every conv with bias; BN scale + shift).
    basic_g = _conv(1, 64) + _conv(64, 128) + 2 * 128 + _conv(128, 64) + 2 * 64 + _conv(64, 1)
    assert count_parameters(build_generator(ModelConfig(residual="none", generator="basic", base_channels=64))) == basic_g
    downs = _conv(1, 64) + _conv(64, 128) + _conv(128, 256) + _conv(256, 512)
    ups = _conv(512, 256) + _conv(512, 128) + _conv(256, 64) + _conv(128, 1)
    norms = 2 * (128 + 256 + 512) + 2 * (256 + 128 + 64)
    assert count_parameters(build_generator(ModelConfig(residual="none", generator="unet", base_channels=64))) == downs + ups + norms
    basic_d = _conv(2, 64) + _conv(64, 128) + 2 * 128 + _conv(128, 1)
    assert count_parameters(build_discriminator(ModelConfig(discriminator="basic", base_channels=64))) == basic_d
    unet = build_generator(ModelConfig(residual="none", generator="unet", base_channels=64))
    assert [m.p for m in unet.modules() if isinstance(m, nn.Dropout)] == [0.5]


def test_pix2pix_networks_parameter_counts():
    # Reference implementations at 1 input / 1 output channel, base 64, batch norm.
    assert count_parameters(build_generator(ModelConfig(residual="none", generator="unet256", base_channels=64))) == 54_408_385
    assert count_parameters(build_generator(ModelConfig(residual="none", generator="resnet9", base_channels=64))) == 11_370_881
    # unet_128: unet256 without one 512-wide level (down 512 -> 512 and up 1024 -> 512, each
    # 4 x 4 without bias, each with a BatchNorm of 512: 2 x 512 parameters).
    one_level = _conv(512, 512, bias=False) + 2 * 512 + _conv(1024, 512, bias=False) + 2 * 512
    assert count_parameters(build_generator(ModelConfig(residual="none", generator="unet128", base_channels=64))) == 54_408_385 - one_level
    patch = build_discriminator(ModelConfig(discriminator="patch70", base_channels=64))
    assert count_parameters(patch) == 2_764_609


def test_report_discriminator_patch_map_at_256():
    discriminator = build_discriminator(ModelConfig(discriminator="basic", base_channels=64))
    features = discriminator(_images(2, 1, 256), _images(2, 1, 256))
    assert len(features) == 1
    assert [tuple(f.shape) for f in features[0]] == [
        (2, 64, 128, 128),
        (2, 128, 64, 64),
        (2, 1, 61, 61),
    ]
    probability = discriminator.probability_map(_images(2, 1, 256), _images(2, 1, 256))
    assert probability.shape == (2, 1, 61, 61)
    assert ((probability > 0) & (probability < 1)).all()


@pytest.mark.parametrize(
    ("name", "size", "expected"),
    [
        ("basic", 256, [61]),
        ("basic", 32, [5]),
        ("patch70", 256, [30]),
        ("patch70", 64, [6]),
        ("multiscale", 256, [30, 14]),
        ("multiscale", 64, [6, 2]),
        ("multiscale", 50, [4, 1]),
    ],
)
def test_discriminator_patch_maps(name, size, expected):
    cfg = ModelConfig(discriminator=name, base_channels=TINY)
    discriminator = build_discriminator(cfg)
    features = discriminator(_images(2, 1, size), _images(2, 1, size))
    assert len(features) == (cfg.disc_scales if name == "multiscale" else 1)
    assert [scale[-1].shape[-1] for scale in features] == expected
    assert [scale[-1].shape[:2] for scale in features] == [(2, 1)] * len(expected)
    assert DISCRIMINATORS[name].patch_map_sizes(cfg, size) == expected


def test_patch70_layers_option():
    cfg = ModelConfig(discriminator="patch70", base_channels=TINY, disc_layers=2)
    features = build_discriminator(cfg)(_images(1, 1, 64), _images(1, 1, 64))
    assert features[0][-1].shape == (1, 1, 14, 14)  # 64 / 4 - 2
    assert len(features[0]) == 4  # 2 strided stages, 1 stride-1 stage, the logits


@pytest.mark.parametrize("generator_name", list(GENERATORS))
def test_generators_take_25d_input(generator_name):
    size = GENERATOR_SIZES[generator_name][0]
    cfg = ModelConfig(residual="none", generator=generator_name, in_channels=3, base_channels=TINY)
    output = build_generator(cfg)(_images(2, 3, size))
    assert output.shape == (2, 1, size, size)


@pytest.mark.parametrize("discriminator_name", list(DISCRIMINATORS))
def test_discriminators_take_25d_input(discriminator_name):
    cfg = ModelConfig(discriminator=discriminator_name, in_channels=3, base_channels=TINY)
    discriminator = build_discriminator(cfg)
    first = next(m for m in discriminator.modules() if isinstance(m, nn.Conv2d))
    assert first.in_channels == 4
    features = discriminator(_images(2, 3, 64), _images(2, 1, 64))
    assert features[0][-1].shape[1] == 1


@pytest.mark.parametrize("discriminator_name", list(DISCRIMINATORS))
def test_spectral_norm_on_every_conv(discriminator_name):
    torch.manual_seed(0)
    cfg = ModelConfig(discriminator=discriminator_name, base_channels=TINY, spectral_norm=True)
    discriminator = build_discriminator(cfg)
    convs = [m for m in discriminator.modules() if isinstance(m, nn.Conv2d)]
    assert convs
    assert all(nn.utils.parametrize.is_parametrized(conv, "weight") for conv in convs)
    source, target = _images(2, 1, 64), _images(2, 1, 64)
    with torch.no_grad():
        for _ in range(30):  # power iteration: one step per training forward
            discriminator(source, target)
    discriminator.eval()
    for conv in convs:
        sigma = torch.linalg.matrix_norm(conv.weight.detach().flatten(1), ord=2).item()
        assert sigma == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("generator_name", list(GENERATORS))
def test_resize_upsampling_replaces_transposed_convolutions(generator_name):
    size = GENERATOR_SIZES[generator_name][0]
    cfg = ModelConfig(residual="none", generator=generator_name, base_channels=TINY, upsample="resize")
    generator = build_generator(cfg)
    assert not any(isinstance(m, nn.ConvTranspose2d) for m in generator.modules())
    assert any(isinstance(m, nn.Upsample) for m in generator.modules())
    assert generator(_images(2, 1, size)).shape == (2, 1, size, size)


@pytest.mark.parametrize("generator_name", list(GENERATORS))
@pytest.mark.parametrize("norm", ["instance", "none"])
def test_norm_option(generator_name, norm):
    size = GENERATOR_SIZES[generator_name][0]
    cfg = ModelConfig(residual="none", generator=generator_name, base_channels=TINY, norm=norm)
    generator = build_generator(cfg)
    kinds = {type(m) for m in generator.modules()}
    assert nn.BatchNorm2d not in kinds
    assert (nn.InstanceNorm2d in kinds) == (norm == "instance")
    assert generator(_images(1, 1, size)).shape == (1, 1, size, size)


@pytest.mark.parametrize(
    ("generator_name", "expected"), [("basic", 0), ("unet", 1), ("resnet9", 9), ("unet128", 3), ("unet256", 3)]
)
def test_dropout_option(generator_name, expected):
    def dropouts(dropout):
        cfg = ModelConfig(residual="none", generator=generator_name, base_channels=TINY, dropout=dropout)
        return [m.p for m in build_generator(cfg).modules() if isinstance(m, nn.Dropout)]

    assert dropouts(0.3) == [0.3] * expected
    assert dropouts(0.0) == []


@pytest.mark.parametrize("discriminator_name", list(DISCRIMINATORS))
def test_discriminator_norm_option(discriminator_name):
    cfg = ModelConfig(discriminator=discriminator_name, base_channels=TINY, norm="instance")
    kinds = {type(m) for m in build_discriminator(cfg).modules()}
    assert nn.InstanceNorm2d in kinds
    assert nn.BatchNorm2d not in kinds


@pytest.mark.parametrize(
    ("field", "value", "valid"),
    [
        ("generator", "unet512", GENERATORS),
        ("discriminator", "stylegan", DISCRIMINATORS),
        ("norm", "group", NORMS),
        ("upsample", "bilinear", UPSAMPLES),
    ],
)
def test_unknown_names_list_the_valid_ones(field, value, valid):
    cfg = ModelConfig(**{field: value})
    builder = build_discriminator if field == "discriminator" else build_generator
    with pytest.raises(ConfigError) as error:
        builder(cfg)
    message = str(error.value)
    assert value in message
    assert all(name in message for name in valid)
    assert "\n" not in message


@pytest.mark.parametrize(
    "changes",
    [{"in_channels": 0}, {"base_channels": 0}, {"dropout": 1.0}, {"dropout": -0.1}],
)
def test_bad_generator_numbers(changes):
    with pytest.raises(ConfigError):
        build_generator(ModelConfig(**changes))


@pytest.mark.parametrize("changes", [{"disc_layers": 0}, {"disc_scales": 0}, {"norm": "layer"}])
def test_bad_discriminator_numbers(changes):
    with pytest.raises(ConfigError):
        build_discriminator(ModelConfig(discriminator="multiscale", **changes))


@pytest.mark.parametrize(
    ("generator_name", "discriminator_name", "size", "nearest"),
    [
        ("unet", "basic", 100, "96 or 112"),
        ("unet", "basic", 8, "32 (the smallest)"),
        ("basic", "basic", 30, "28 or 32"),
        ("basic", "patch70", 16, "24 (the smallest)"),
        ("basic", "multiscale", 44, "48 (the smallest)"),
        ("resnet9", "basic", 62, "60 or 64"),
        ("unet128", "patch70", 200, "128 or 256"),
        ("unet128", "basic", 64, "128 (the smallest)"),
        ("unet256", "patch70", 300, "256 or 512"),
        ("unet256", "basic", 128, "256 (the smallest)"),
    ],
)
def test_check_image_size_names_nearest_valid_sizes(
    generator_name, discriminator_name, size, nearest
):
    cfg = ModelConfig(residual="none", generator=generator_name, discriminator=discriminator_name)
    with pytest.raises(ConfigError) as error:
        check_image_size(cfg, size)
    message = str(error.value)
    assert f"image size {size}" in message
    assert message.endswith(f"nearest valid sizes: {nearest}")
    assert generator_name in message and discriminator_name in message


@pytest.mark.parametrize(
    ("generator_name", "size"),
    [("basic", 256), ("unet", 256), ("unet", 64), ("resnet9", 64), ("unet128", 128), ("unet256", 256)],
)
def test_check_image_size_accepts_valid_sizes(generator_name, size):
    for discriminator_name in DISCRIMINATORS:
        cfg = ModelConfig(residual="none", generator=generator_name, discriminator=discriminator_name)
        check_image_size(cfg, size)


@pytest.mark.parametrize("discriminator_name", list(DISCRIMINATORS))
def test_check_image_size_agrees_with_the_networks(discriminator_name):
    # Around the smallest valid size, check_image_size passes exactly when G and D run.
    cfg = ModelConfig(residual="none", generator="basic", discriminator=discriminator_name, base_channels=TINY)
    generator, discriminator = build_generator(cfg), build_discriminator(cfg)
    minimum = minimum_image_size(cfg)
    for size in range(minimum - 8, minimum + 5, 4):
        source = _images(2, 1, size)
        try:
            check_image_size(cfg, size)
        except ConfigError:
            with pytest.raises(RuntimeError):
                discriminator(source, generator(source))
        else:
            maps = discriminator(source, generator(source))
            assert min(scale[-1].shape[-1] for scale in maps) >= 1


def test_count_parameters_trainable_only():
    generator = build_generator(ModelConfig(residual="none", generator="basic", base_channels=TINY))
    total = count_parameters(generator)
    generator.decoder.requires_grad_(False)
    frozen = sum(p.numel() for p in generator.decoder.parameters())
    assert count_parameters(generator, trainable_only=True) == total - frozen
    assert count_parameters(generator) == total


def test_resnet_blocks_sets_the_depth_of_the_resnet_generator():
    from mri2mri.cli import build_parser
    from mri2mri.options import config_from_args

    args = build_parser().parse_args(["train", "data", "--generator", "resnet9", "--resnet-blocks", "3"])
    config = config_from_args(args, image_size=32)
    G = build_generator(replace(config.model, residual="none"))
    assert len(G.blocks) == 3
    assert G(torch.zeros(1, 1, 32, 32)).shape == (1, 1, 32, 32)
    assert len(build_generator(ModelConfig(generator="resnet9", residual="none")).blocks) == 9  # CycleGAN's
