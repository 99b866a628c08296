"""Typed configuration of a run: data, model and training.

The command line only builds these frozen dataclasses; every run folder receives the resolved
configuration as ``config.json`` so that any run can be repeated exactly (nanoGPT's ``GPTConfig``,
EDM's ``training_options.json``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mri2mri.errors import ConfigError

DEFAULT_RUN_NAME = "gan_t1_to_t2"
# Upper bounds of options whose larger values can only be mistakes (and would exhaust memory or
# time before failing): slices are at most this many pixels a side, with at most this many
# context slices a side; the PatchGAN halves the image this many times at most.
MAX_IMAGE_SIZE = 2048
MAX_CONTEXT_SLICES = 16
MAX_DISC_LAYERS = 10
MAX_DISC_SCALES = 6
# At most this many source contrasts stacked as input channels (every known contrast but the target).
MAX_SOURCES = 4
PRECISIONS = ("fp32", "bf16", "fp16", "auto")


@dataclass(frozen=True)
class DataConfig:
    """How paired images become training slices.

    ``source`` is one contrast name, or a tuple of them (``--source T1,T1c,FLAIR``): several
    source contrasts stacked as input channels in that order, contrast-major (each contrast's
    ``2 * context_slices + 1`` channels together, its own slice in the middle of them). A single
    name stays a plain string, so configurations saved before several sources existed load as
    they were.
    """

    source: str | tuple[str, ...] = "T1"
    target: str = "T2"
    image_size: int = 256
    # 2.5D input: this many neighbouring slices on each side become extra input channels.
    context_slices: int = 0
    # Keep an axial slice only if at least this fraction of its pixels is brain.
    min_brain_fraction: float = 0.05
    val_fraction: float = 0.15
    test_fraction: float = 0.15
    split_seed: int = 0
    # Robust per-volume intensity window (percentiles of brain voxels) mapped to [0, 1].
    percentiles: tuple[float, float] = (0.5, 99.5)
    register: bool = False
    # On by default: on held-out real patients from another site, random intensity curves, bias,
    # noise, gamma (source only), flips and small affine maps won the equal-step screening
    # (benchmarks/ablation.py; README). Configurations saved before this default keep theirs.
    augment: bool = True

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError, naming the command-line option, for a value out of range."""
        check_sources(self.source)
        check_int("--image-size", self.image_size, 1, MAX_IMAGE_SIZE)
        check_int("--context-slices", self.context_slices, 0, MAX_CONTEXT_SLICES)
        check_number("--min-brain-fraction", self.min_brain_fraction, 0.0, 1.0, high_open=True)
        check_number("--val-fraction", self.val_fraction, 0.0, 1.0, high_open=True)
        check_number("--test-fraction", self.test_fraction, 0.0, 1.0, high_open=True)
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"--val-fraction {self.val_fraction} + --test-fraction {self.test_fraction} leave "
                "no subject for training; their sum must be below 1"
            )
        check_int("--split-seed", self.split_seed, 0, 2**32 - 1)
        low, high = _pair("percentiles", self.percentiles)
        if not 0.0 <= low < high <= 100.0:
            raise ConfigError(f"percentiles must satisfy 0 <= low < high <= 100, got {self.percentiles}")

    @property
    def sources(self) -> tuple[str, ...]:
        """The source contrasts in channel order (one for a single-source run)."""
        return (self.source,) if isinstance(self.source, str) else tuple(self.source)

    @property
    def channels_per_source(self) -> int:
        return 2 * self.context_slices + 1

    @property
    def in_channels(self) -> int:
        return len(self.sources) * self.channels_per_source

    @property
    def table_channel(self) -> int:
        """The input channel of the first source's own slice (the intensity-map baselines' input):
        ``context_slices`` in the contrast-major layout, the centre channel for one source."""
        return self.context_slices


@dataclass(frozen=True, kw_only=True)
class AugmentationConfig:
    """How much ``--augment`` changes a training sample, shared by the per-sample TorchIO
    transform (``data/augment.py``) and the batched one on the device (``data/gpu_augment.py``).

    Flip and affine act on source, target and mask alike; bias field, noise and gamma on the
    source only. Probabilities are per sample; ``degrees``, ``scale`` and ``translation_pixels``
    bound the in-plane affine map.
    """

    flip_probability: float = 0.5
    affine_probability: float = 0.5
    degrees: float = 5.0
    scale: float = 0.05
    translation_pixels: float = 4.0
    bias_probability: float = 0.3
    bias_coefficients: float = 0.3
    noise_probability: float = 0.3
    noise_std: float = 0.03
    gamma_probability: float = 0.3
    log_gamma: float = 0.2
    # Random smooth monotonic intensity curve on the source (data/intensity_curves.py): another
    # scanner's contrast. ``curve_strength`` < 1 bounds how far each segment's slope moves from 1.
    curve_probability: float = 0.5
    curve_knots: int = 5
    curve_strength: float = 0.6


@dataclass(frozen=True)
class ModelConfig:
    """Which networks, and their options."""

    # Defaults: the winner of the equal-budget ablation (benchmarks/ablation.py, README): the
    # report's U-Net at half width, pix2pix's 70x70 PatchGAN, least-squares adversarial loss.
    generator: str = "unet"
    discriminator: str = "patch70"
    in_channels: int = 1
    out_channels: int = 1
    base_channels: int = 32
    norm: str = "batch"
    dropout: float = 0.5
    upsample: str = "transpose"  # "transpose" or "resize" (resize-convolution)
    disc_layers: int = 3  # n_layers of the 70x70 PatchGAN
    disc_scales: int = 2  # number of scales of the multi-scale PatchGAN
    spectral_norm: bool = False
    # "intensity-map": G's output is a correction added to the intensity-map baseline's image of
    # its input (models/residual.py; the table is fitted on the training subjects); "none": G
    # makes the whole image, as in the report. Configurations saved before this option existed
    # mean "none" (see RunConfig.from_dict).
    residual: str = "intensity-map"
    # The input channel that the residual generator's intensity-map table reads: the first
    # source's own slice (DataConfig.table_channel). None, in configurations saved before several
    # sources existed, means the centre channel, which is that slice for a single source.
    table_channel: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for a number out of range (names are checked by mri2mri.models,
        which knows the networks)."""
        check_int("model in_channels", self.in_channels, 1, MAX_SOURCES * (2 * MAX_CONTEXT_SLICES + 1))
        if self.table_channel is not None:
            check_int("model table_channel", self.table_channel, 0, self.in_channels - 1)
        check_int("model out_channels", self.out_channels, 1, 16)
        check_int("--base-channels", self.base_channels, 1, 1024)
        check_number("--dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_int("--disc-layers", self.disc_layers, 1, MAX_DISC_LAYERS)
        check_int("--disc-scales", self.disc_scales, 1, MAX_DISC_SCALES)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: losses, optimiser, schedule, device and bookkeeping."""

    run_name: str = DEFAULT_RUN_NAME
    epochs: int = 10
    batch_size: int = 2  # small batches, many updates: what won the equal-budget ablation
    lr: float = 2e-4
    beta1: float = 0.5
    beta2: float = 0.999
    gan_loss: str = "lsgan"
    lambda_l1: float = 100.0
    # Squared error: its minimiser is the conditional mean, which is what PSNR rewards where the
    # T1 leaves the T2 uncertain (oedema, CSF at partial volume); L1's is the median.
    lambda_l2: float = 0.0
    lambda_ssim: float = 0.0
    lambda_feature_matching: float = 0.0
    lambda_perceptual: float = 0.0
    perceptual_weights: str | None = None
    lambda_gp: float = 10.0
    lr_decay_epochs: int = 0  # linear decay to zero over the last N epochs (pix2pix)
    ema_decay: float = 0.0  # 0 disables the generator's exponential moving average
    grad_clip: float = 0.0  # 0 disables gradient-norm clipping
    d_steps: int = 1  # discriminator updates per generator update
    seed: int = 0
    # Another run's checkpoint whose G and D weights start this run (a warm start: optimisers,
    # schedule and progress start afresh; the intensity-map table is refitted on this run's data).
    init_from: str | None = None
    device: str = "auto"
    precision: str = "auto"  # bf16 where it is native (GPU, AVX512-BF16/AMX CPU), else fp32
    channels_last: bool = True  # NHWC: ~1.15x training, ~1.4x inference on a CPU (oneDNN), tensor cores on a GPU
    compile: bool = False
    num_workers: int = 0
    time_budget: float | None = None  # seconds of training wall time, then stop cleanly
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    max_steps_per_epoch: int | None = None
    lang: str = "en"

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError, naming the command-line option, for a value out of range."""
        check_int("--epochs", self.epochs, 1)
        check_int("--batch-size", self.batch_size, 1)
        # No upper bound: a huge rate is legal (it diverges, and training stops on that).
        check_number("--lr", self.lr, 0.0, low_open=True)
        check_number("--beta1", self.beta1, 0.0, 1.0, high_open=True)
        check_number("beta2", self.beta2, 0.0, 1.0, high_open=True)
        for option, value in (("--lambda-l1", self.lambda_l1), ("--lambda-l2", self.lambda_l2),
                              ("--lambda-ssim", self.lambda_ssim),
                              ("--lambda-fm", self.lambda_feature_matching),
                              ("--lambda-perceptual", self.lambda_perceptual),
                              ("--lambda-gp", self.lambda_gp), ("--grad-clip", self.grad_clip)):  # fmt: skip
            check_number(option, value, 0.0)
        check_int("--lr-decay-epochs", self.lr_decay_epochs, 0)
        check_number("--ema", self.ema_decay, 0.0, 1.0, high_open=True)
        check_int("--d-steps", self.d_steps, 1, 100)
        check_int("--seed", self.seed, 0, 2**32 - 1)
        if self.precision not in PRECISIONS:
            raise ConfigError(f"unknown --precision {self.precision!r}; choose one of {', '.join(PRECISIONS)}")
        check_int("--num-workers", self.num_workers, 0, 256)
        if self.time_budget is not None:
            check_number("--time-budget", self.time_budget, 0.0, low_open=True)
        check_int("--max-bad-steps", self.max_bad_steps, 1)
        if self.max_steps_per_epoch is not None:
            check_int("--max-steps-per-epoch", self.max_steps_per_epoch, 1)


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to repeat a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for any option of the run out of range (each part checks itself)."""
        self.data.validate()
        self.model.validate()
        self.train.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> RunConfig:
        # A run saved before the residual option existed trained a plain generator, and one saved
        # before augmentation became the default did not augment unless it said so.
        model = {"residual": "none", **payload.get("model", {})}
        data = {"augment": False, **payload.get("data", {})}
        return cls(
            data=_build(DataConfig, data),
            model=_build(ModelConfig, model),
            train=_build(TrainConfig, payload.get("train", {})),
        )

    def save(self, path: Path) -> None:
        """Write the configuration as JSON, atomically (a crash leaves the old file or the new)."""
        from mri2mri.atomic import write_text

        write_text(Path(path), json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        """The configuration saved in ``path``; ConfigError when it is not one."""
        try:
            payload = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
            raise ConfigError(f"{path}: not a readable run configuration ({error})") from None
        if not isinstance(payload, dict) or not all(
            isinstance(payload.get(part, {}), dict) for part in ("data", "model", "train")
        ):
            raise ConfigError(f"{path}: not a run configuration (expected data, model and train objects)")
        try:
            return cls.from_dict(payload)
        except TypeError as error:
            raise ConfigError(f"{path}: not a run configuration ({error})") from None


def _build(kind: type, values: dict[str, Any]):
    """Build a dataclass from JSON values, ignoring unknown keys and restoring tuples."""
    names = {f.name for f in dataclasses.fields(kind)}
    clean = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
    return kind(**clean)


def parse_sources(text: str) -> str | tuple[str, ...]:
    """``--source``: ``"T1"`` stays ``"T1"``; ``"T1,T1c,FLAIR"`` is ``("T1", "T1c", "FLAIR")``."""
    names = [name.strip() for name in str(text).split(",")]
    return names[0] if len(names) == 1 else tuple(names)


def check_sources(source: Any) -> tuple[str, ...]:
    """The source contrasts of ``source`` (a name or a sequence of names); ConfigError naming
    ``--source`` when it is empty, repeats a name or holds more than MAX_SOURCES."""
    names = (source,) if isinstance(source, str) else source
    if not isinstance(names, (tuple, list)) or not all(isinstance(n, str) for n in names):
        raise ConfigError(f"--source must be a contrast name or a list of them, got {source!r}")
    if not names or any(not n.strip() for n in names):
        raise ConfigError(f"--source needs contrast names separated by commas, got {source!r}")
    folded = [n.strip().lower() for n in names]
    repeated = sorted({n for n in names if folded.count(n.strip().lower()) > 1})
    if repeated:
        raise ConfigError(f"--source names {', '.join(repeated)} more than once")
    if len(names) > MAX_SOURCES:
        raise ConfigError(f"--source takes at most {MAX_SOURCES} contrasts, got {len(names)}")
    return tuple(names)


def check_int(option: str, value: Any, low: int, high: int | None = None) -> int:
    """``value`` as an integer in [low, high]; ConfigError naming ``option`` otherwise."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{option} must be an integer, got {value!r}")
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise ConfigError(f"{option} must be {bound}, got {value}")
    return value


def check_number(
    option: str,
    value: Any,
    low: float,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``value`` as a finite number in the interval from low to high (each end closed unless
    ``*_open``); ConfigError naming ``option`` otherwise (NaN and infinity included)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ConfigError(f"{option} must be a finite number, got {value!r}")
    below = value <= low if low_open else value < low
    above = high is not None and (value >= high if high_open else value > high)
    if below or above:
        left, right = "(" if low_open else "[", ")" if high_open else "]"
        interval = f"{left}{low:g}, {high:g}{right}" if high is not None else None
        bound = f"in {interval}" if interval else f"{'above' if low_open else 'at least'} {low:g}"
        raise ConfigError(f"{option} must be {bound}, got {value:g}")
    return float(value)


def _pair(option: str, value: Any) -> tuple[float, float]:
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{option} must be two numbers, got {value!r}")
    return (check_number(option, value[0], 0.0, 100.0), check_number(option, value[1], 0.0, 100.0))


def replace(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported so callers need one import."""
    return dataclasses.replace(config, **changes)
