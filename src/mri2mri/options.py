"""The options of a run: command-line flags derived from the configuration's fields, and the checks
that need the registries of networks, losses and devices.

An option is written once, as a field of a dataclass in :mod:`mri2mri.config` with its help in
the field's metadata; :func:`add_config_options` turns the fields into ``argparse`` flags
(``batch_size`` -> ``--batch-size``, a bool defaulting to True -> ``--x/--no-x``) and
:func:`config_from_args` turns the parsed flags back into the dataclass, so the command line can
neither forget an option nor build a configuration its own way.

:func:`check_run` is the one validation every entry point goes through (the command line before
it prepares any data, :func:`mri2mri.training.train` for Python callers): the numbers are checked
by the dataclasses themselves, the names here, by the modules that know them. Nothing here
imports torch at module level, so building the parser stays fast.
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from mri2mri.config import AugmentationConfig, DataConfig, ModelConfig, RunConfig, TrainConfig
from mri2mri.errors import ConfigError

# Each part of the run configuration: its dataclass and the prefix of its flags and dests.
PARTS: dict[str, tuple[type, str]] = {
    "data": (DataConfig, ""),
    "model": (ModelConfig, ""),
    "train": (TrainConfig, ""),
    "augmentation": (AugmentationConfig, "augment_"),
}

_TYPES = {"int": int, "float": float, "str": str}


def _spec(field: dataclasses.Field) -> dict[str, Any] | None:
    """A field's command-line description: None for an internal field, {} for one without help."""
    return field.metadata.get("cli", {})


# Prediction runs in fp32 unless asked otherwise: the synthetic image is then the checkpoint's own
# numbers on every machine, and the same (to 1e-4 of its range) as its ONNX export's, which
# always runs in fp32. ``auto`` would pick bf16 on CPUs with native bf16 and not on others, so one
# checkpoint would give two images (about 3e-3 of the range apart on a real volume).
PREDICT_PRECISION = "fp32"
PREDICT_PRECISION_HELP = (f"{PREDICT_PRECISION} (default: the same image on every machine and in the ONNX "
                          "export), auto (bf16 on a GPU or a CPU with native bf16, else fp32), bf16 or fp16 (GPU)")


def help_of(kind: type, name: str) -> str:
    """The help text of field ``name`` of ``kind``, for a command that offers it outside a run
    configuration (``predict --brain-extraction``)."""
    field = next(f for f in dataclasses.fields(kind) if f.name == name)
    return (_spec(field) or {}).get("help", "")


def cli_fields(kind: type) -> list[dataclasses.Field]:
    """The fields of a configuration dataclass that are command-line options."""
    return [f for f in dataclasses.fields(kind) if _spec(f) is not None]


def flag_of(field: dataclasses.Field, prefix: str = "") -> str:
    """The flag of a field: its own (``--lambda-fm``), else ``--<prefix><name>`` with dashes."""
    spec = _spec(field) or {}
    return spec.get("flag") or "--" + (prefix + field.name).replace("_", "-")


def _default(field: dataclasses.Field) -> Any:
    if field.default is not dataclasses.MISSING:
        return field.default
    return field.default_factory()  # type: ignore[misc]


def _argument(field: dataclasses.Field) -> dict[str, Any]:
    """``add_argument`` keywords for a field, from its type annotation and metadata."""
    spec = _spec(field) or {}
    default = spec.get("cli_default", dataclasses.MISSING)
    default = _default(field) if default is dataclasses.MISSING else default
    kind = str(field.type).replace(" ", "")
    keywords: dict[str, Any] = {"default": default, "help": spec.get("help") or None}
    if spec.get("metavar"):
        keywords["metavar"] = spec["metavar"]
    if spec.get("choices"):
        keywords["choices"] = spec["choices"]
    if kind == "bool":
        keywords["action"] = argparse.BooleanOptionalAction if default else "store_true"
    elif spec.get("parse") is not None:
        keywords["type"] = spec["parse"]
    elif kind.startswith("tuple["):
        keywords.update(type=_TYPES[kind[6:-1].split(",")[0]], nargs=kind.count(",") + 1)
    else:
        keywords["type"] = _TYPES[kind.removesuffix("|None")]
    return keywords


def add_config_options(parser: argparse.ArgumentParser, part: str, *, title: str | None = None,
                       exclude: tuple[str, ...] = ()) -> None:  # fmt: skip
    """Add the flags of one part of the run configuration (``data``, ``model``, ``train``,
    ``augmentation``) as an argument group; ``exclude`` names fields left out."""
    kind, prefix = PARTS[part]
    group = parser.add_argument_group(title or part)
    for field in cli_fields(kind):
        if field.name not in exclude:
            group.add_argument(flag_of(field, prefix), dest=prefix + field.name, **_argument(field))


def part_from_args(part: str, args: argparse.Namespace, **fixed: Any) -> Any:
    """One part of the configuration from parsed flags; ``fixed`` values win (derived ones such
    as ``in_channels``); fields the command has no flag for keep their defaults."""
    kind, prefix = PARTS[part]
    values = {}
    for field in dataclasses.fields(kind):
        if hasattr(args, prefix + field.name):
            value = getattr(args, prefix + field.name)
            values[field.name] = tuple(value) if isinstance(value, list) else value
    values.update(fixed)
    return kind(**values)


def config_from_args(args: argparse.Namespace, image_size: int) -> RunConfig:
    """The run configuration of ``train`` or ``demo`` from its parsed flags."""
    data = part_from_args("data", args, image_size=image_size)
    model = part_from_args("model", args, in_channels=data.in_channels, table_channel=data.table_channel)
    return RunConfig(data=data, model=model, train=part_from_args("train", args),
                     augmentation=part_from_args("augmentation", args))  # fmt: skip


def check_run(config: RunConfig) -> None:
    """Every name of a run checked before any data is prepared or any network is built:
    networks, losses, image size, precision on the chosen device, the run's name, and the
    combinations that cannot work. ConfigError naming the option and its valid values."""
    from mri2mri import losses
    from mri2mri.models import check_image_size, check_model_config
    from mri2mri.runfolder import check_safe_name
    from mri2mri.runtime import check_precision, resolve_device

    check_safe_name(config.train.run_name)
    check_model_config(config.model)
    check_image_size(config.model, config.data.image_size)
    if config.train.gan_loss not in losses.GAN_LOSSES:
        raise ConfigError(
            f"unknown --gan-loss {config.train.gan_loss!r}; choose one of {', '.join(losses.GAN_LOSSES)}"
        )
    check_precision(config.train.precision, resolve_device(config.train.device))
    if config.train.gan_loss == "wgan-gp" and config.model.norm == "batch":
        # The gradient penalty assumes each sample's critic value depends on that sample alone.
        raise ConfigError("--gan-loss wgan-gp needs --norm instance or none (batch norm mixes samples)")


def check_tta(passes: int) -> int:
    """The test-time passes ``--tta`` averages (1: the plain prediction); ConfigError out of range."""
    from mri2mri.uncertainty import check_passes

    try:
        return check_passes(passes, "--tta", minimum=1)
    except ValueError as error:
        raise ConfigError(str(error)) from None


def check_uncertainty(uncertainty: bool, passes: int | None) -> int:
    """The test-time passes ``--uncertainty`` runs (0 without it): ``passes``, or the default
    when not given. ConfigError for a number out of range, or for ``--uncertainty-passes``
    without ``--uncertainty``, which would do nothing and say nothing."""
    from mri2mri.uncertainty import DEFAULT_PASSES, check_passes

    if not uncertainty:
        if passes is not None:
            raise ConfigError(f"--uncertainty-passes {passes} does nothing without --uncertainty; "
                              "add --uncertainty or leave it out")  # fmt: skip
        return 0
    try:
        return check_passes(DEFAULT_PASSES if passes is None else passes)
    except ValueError as error:
        raise ConfigError(str(error)) from None
