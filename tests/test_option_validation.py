"""Every numeric option of `train`, `prepare` and `predict`, out of range, through the real CLI:
one line on stderr, exit 2, no traceback, nothing written where the output would go."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_tiny_cache

from mri2mri.checkpoint import save_checkpoint
from mri2mri.cli import build_parser
from mri2mri.cli import main as cli_main
from mri2mri.config import (
    AugmentationConfig,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
)
from mri2mri.errors import ConfigError
from mri2mri.models import build_generator
from mri2mri.options import PARTS, cli_fields, config_from_args, flag_of

# Options shared by `train` and `prepare` (the data options).
DATA_OPTIONS = [
    ("--image-size", "-5"), ("--image-size", "0"), ("--image-size", "100000"),
    ("--context-slices", "-1"), ("--context-slices", "1000"),
    ("--min-brain-fraction", "-0.1"), ("--min-brain-fraction", "1.5"), ("--min-brain-fraction", "nan"),
    ("--val-fraction", "2"), ("--val-fraction", "-0.5"), ("--val-fraction", "inf"),
    ("--test-fraction", "2"), ("--test-fraction", "nan"),
    ("--split-seed", "-1"),
]  # fmt: skip

TRAIN_OPTIONS = [
    ("--base-channels", "0"), ("--dropout", "1"), ("--dropout", "-0.5"),
    ("--disc-layers", "0"), ("--disc-layers", "50"), ("--disc-scales", "0"), ("--disc-scales", "100"),
    ("--epochs", "-1"), ("--epochs", "0"), ("--batch-size", "0"), ("--batch-size", "-4"),
    ("--lr", "nan"), ("--lr", "-1"), ("--lr", "inf"), ("--lr", "0"),
    ("--beta1", "2"), ("--beta1", "-0.1"),
    ("--lambda-l1", "-100"), ("--lambda-l1", "nan"), ("--lambda-ssim", "-1"), ("--lambda-fm", "-1"),
    ("--lambda-perceptual", "-1"), ("--lambda-gp", "-1"), ("--lambda-gp", "inf"),
    ("--lr-decay-epochs", "-1"), ("--ema", "2"), ("--ema", "-1"), ("--ema", "nan"),
    ("--grad-clip", "-1"), ("--grad-clip", "nan"), ("--d-steps", "-1"), ("--d-steps", "0"),
    ("--seed", "-1"), ("--num-workers", "-1"),
    ("--time-budget", "nan"), ("--time-budget", "-1"), ("--time-budget", "0"),
    ("--max-steps-per-epoch", "0"), ("--max-bad-steps", "0"), ("--checkpoint-every", "-1"),
    ("--precision", "fp64"), ("--beta2", "1"), ("--lr-schedule", "cosine"),
    ("--augment-flip-probability", "1.5"), ("--augment-curve-probability", "-0.1"),
    ("--augment-degrees", "-1"), ("--augment-noise-std", "nan"), ("--augment-curve-knots", "0"),
    ("--augment-curve-strength", "1"),
]  # fmt: skip

PREDICT_OPTIONS = [("--batch-size", "0"), ("--batch-size", "-3"), ("--precision", "fp8"),
                   ("--uncertainty-passes", "1"), ("--uncertainty-passes", "-1"), ("--uncertainty-passes", "100000")]  # fmt: skip


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> dict[str, Path]:
    """A slice cache, a subject folder of NIfTI volumes and a checkpoint, all tiny."""
    root = tmp_path_factory.mktemp("options")
    cache = write_tiny_cache(root / "cache")
    rng = np.random.default_rng(0)
    subject = root / "data" / "sub-01"
    subject.mkdir(parents=True)
    for name in ("T1", "T2"):
        volume = rng.uniform(1, 100, (16, 16, 8)).astype(np.float32)
        nib.save(nib.Nifti1Image(volume, np.eye(4)), subject / f"{name}.nii.gz")
    config = RunConfig(data=DataConfig(image_size=32),
                       model=ModelConfig(base_channels=4, residual="none"))  # fmt: skip
    checkpoint = root / "run" / "checkpoints" / "tiny_best.pth"
    torch.manual_seed(0)
    G = build_generator(config.model)
    save_checkpoint(checkpoint, {"G": G.state_dict(), "config": config.to_dict(), "epoch": 1})
    return {"cache": cache, "data": root / "data", "volume": subject / "T1.nii.gz", "checkpoint": checkpoint}


def _refused(argv: list[str], output: Path, capsys) -> str:
    """Run the CLI and assert the one-line refusal; return the line."""
    code = cli_main(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, (argv, captured.err)
    assert len(lines) == 1 and lines[0].startswith("error: "), (argv, captured.err)
    assert "Traceback" not in captured.err + captured.out
    assert not output.exists(), f"{argv} wrote {output}"
    return lines[0]


@pytest.mark.parametrize(("option", "value"), DATA_OPTIONS + TRAIN_OPTIONS)
def test_train_refuses_out_of_range_options(inputs, tmp_path, capsys, option, value):
    out = tmp_path / "run"
    line = _refused(["train", str(inputs["cache"]), "--out", str(out), "--quiet", option, value],
                    out, capsys)  # fmt: skip
    assert option in line  # the message names the option as the user typed it


@pytest.mark.parametrize(("option", "value"), DATA_OPTIONS)
def test_prepare_refuses_out_of_range_options(inputs, tmp_path, capsys, option, value):
    out = tmp_path / "prepared"
    line = _refused(["prepare", str(inputs["data"]), "--out", str(out), "--quiet", option, value],
                    out, capsys)  # fmt: skip
    assert option in line


@pytest.mark.parametrize(("option", "value"), PREDICT_OPTIONS)
def test_predict_refuses_out_of_range_options(inputs, tmp_path, capsys, option, value):
    out = tmp_path / "synth.nii.gz"
    passes = ["--uncertainty"] if option == "--uncertainty-passes" else []  # counted only then
    line = _refused(["predict", str(inputs["checkpoint"]), str(inputs["volume"]), str(out), "--device", "cpu",
                     *passes, option, value], out, capsys)  # fmt: skip
    assert option in line


def test_unwritable_outputs_are_refused_before_any_work(inputs, tmp_path, capsys):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder\n")
    for output in (Path("/proc/x.nii.gz"), blocker / "x.nii.gz"):
        _refused(["predict", str(inputs["checkpoint"]), str(inputs["volume"]), str(output),
                  "--device", "cpu"], output, capsys)  # fmt: skip
    _refused(["train", str(inputs["cache"]), "--out", str(blocker / "run"), "--quiet"], blocker / "run", capsys)
    _refused(["prepare", str(inputs["data"]), "--out", str(blocker / "c"), "--quiet"], blocker / "c", capsys)
    _refused(["export", str(inputs["checkpoint"]), "--onnx", str(blocker / "m.onnx")], blocker / "m.onnx", capsys)


def test_the_python_api_goes_through_the_same_checks():
    """The dataclasses check themselves: the CLI only builds them."""
    with pytest.raises(ConfigError, match="--lr"):
        TrainConfig(lr=float("inf"))
    with pytest.raises(ConfigError, match="--image-size"):
        DataConfig(image_size=0)
    with pytest.raises(ConfigError, match="--disc-layers"):
        ModelConfig(disc_layers=50)
    for precision in ("fp32", "bf16", "fp16", "auto"):
        assert TrainConfig(precision=precision).precision == precision


def test_two_learning_rate_decays_are_refused_together(inputs, tmp_path, capsys):
    out = tmp_path / "run"
    line = _refused(["train", str(inputs["cache"]), "--out", str(out), "--quiet", "--lr-decay-epochs", "2",
                     "--lr-schedule", "linear"], out, capsys)  # fmt: skip
    assert "--lr-decay-epochs" in line and "--lr-schedule" in line


def test_an_empty_saved_configuration_is_one_line_on_resume(inputs, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("")
    code = cli_main(["train", str(inputs["cache"]), "--out", str(run), "--resume", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and "config.json" in err
    assert sorted(p.name for p in run.iterdir()) == ["config.json"]


# Values a string option needs to be valid; any other string option takes an arbitrary name.
_VALID_STRINGS = {"precision": "fp32", "device": "cpu", "source": "T1c,FLAIR", "target": "PD",
                  "lr_schedule": "linear"}
# Fields that refuse each other's non-default values: each is set on a command line of its own.
_EXCLUSIVE = {"lr_decay_epochs"}


def _other_value(field, default) -> list[str]:
    """Command-line words that set ``field`` to something other than its default."""
    kind = str(field.type).replace(" ", "")
    choices = field.metadata["cli"].get("choices") if field.metadata.get("cli") else None
    if choices:
        return [next(choice for choice in choices if choice != default)]
    if kind == "bool":
        return [] if default else [None]  # the flag alone turns it on; --no-x turns it off
    if kind.startswith("tuple["):
        return ["1", "99"]
    if kind.startswith("int"):
        return [str((default or 2) + 1)]
    if kind.startswith("float"):
        return [str(default / 2 if default else 0.25)]
    return [_VALID_STRINGS.get(field.name, f"custom-{field.name}")]


def test_every_configuration_field_is_a_train_flag_and_reaches_config_json(tmp_path):
    """The flags are derived from the dataclasses: each field of the run configuration that is
    not internal is a `train` option; setting it on the command line reaches the configuration
    and survives config.json."""
    fields = [(part, kind, prefix, field) for part, (kind, prefix) in PARTS.items() for field in cli_fields(kind)]
    together = [entry for entry in fields if entry[3].name not in _EXCLUSIVE]
    alone = [[entry] for entry in fields if entry[3].name in _EXCLUSIVE]
    assert len(alone) == len(_EXCLUSIVE)
    for index, group in enumerate([together, *alone]):
        argv, expected = ["train", "data"], {}
        for part, kind, prefix, field in group:
            default = getattr(kind(), field.name)
            words = _other_value(field, default)
            flag = flag_of(field, prefix)
            if words == []:
                argv.append("--no-" + flag[2:])
            elif words == [None]:
                argv.append(flag)
            else:
                argv += [flag, *words]
            expected[(part, field.name)] = default
        args = build_parser().parse_args(argv)
        config = config_from_args(args, image_size=64)
        for (part, name), default in expected.items():
            if name != "image_size":
                assert getattr(getattr(config, part), name) != default, f"{part}.{name} kept its default"
        config.save(tmp_path / f"config-{index}.json")
        assert RunConfig.load(tmp_path / f"config-{index}.json") == config
        if group is together:
            assert config.model.in_channels == config.data.in_channels == 2 * 7  # two sources, 3 context slices a side


def test_presets_live_with_the_configuration():
    from mri2mri.config import PRESETS, preset_config

    pix2pix = preset_config("pix2pix")
    assert (pix2pix.model.generator, pix2pix.model.base_channels, pix2pix.train.gan_loss) == ("unet256", 64, "bce")
    assert pix2pix.data.augment is False and pix2pix.model.residual == "none"
    # An option chosen explicitly wins over the preset's value.
    mine = RunConfig(model=ModelConfig(base_channels=16))
    assert preset_config("pix2pix", mine).model.base_channels == 16
    with pytest.raises(ConfigError, match="unknown preset"):
        preset_config("vnet")
    assert set(PRESETS) == {"report-basic", "report-unet", "pix2pix"}


def test_a_configuration_saved_before_augmentation_was_recorded_loads_with_the_old_settings(tmp_path):
    saved = RunConfig().to_dict()
    del saved["augmentation"]
    (tmp_path / "config.json").write_text(__import__("json").dumps(saved))
    assert RunConfig.load(tmp_path / "config.json").augmentation == AugmentationConfig()
