"""Typed configuration of a run: data, model, training and augmentation.

Each option is written once, as a field of these frozen dataclasses: its default, its type, its
range check (``validate``, run whenever a configuration is made, by the command line or by
Python) and its help text (the field's ``metadata``, from which :mod:`mri2mri.options` derives
the command-line flag). Every run folder receives the resolved configuration as ``config.json``
so that any run can be repeated exactly (nanoGPT's ``GPTConfig``, EDM's
``training_options.json``). Named presets (the report's experiments, pix2pix's) live here too.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mri2mri.checks import MAX_SOURCES, check_int, check_number, check_pair, check_sources  # noqa: F401
from mri2mri.errors import ConfigError
from mri2mri.names import default_run_name

# Upper bounds of options whose larger values can only be mistakes (and would exhaust memory or
# time before failing): slices are at most this many pixels a side, with at most this many
# context slices a side; the PatchGAN halves the image this many times at most.
MAX_IMAGE_SIZE = 2048
MAX_CONTEXT_SLICES = 16
MAX_DISC_LAYERS = 10
MAX_DISC_SCALES = 6
PRECISIONS = ("fp32", "bf16", "fp16", "auto")
LR_SCHEDULES = ("constant", "linear")
BIAS_CORRECTIONS = ("n4", "none")
BRAIN_EXTRACTIONS = ("auto", "deepbet", "none")
LANGUAGES = ("en", "zh")


def option(help: str = "", *, flag: str | None = None, metavar: str | None = None,
           parse: Any = None, choices: tuple[str, ...] | None = None,
           cli_default: Any = dataclasses.MISSING) -> dict[str, Any]:  # fmt: skip
    """A field's command-line description (``field(metadata=option(...))``): its help, and where
    the rule ``name -> --name`` does not hold, its flag, metavar, parser, choices, or a default the
    command resolves later (``--image-size``: the cache's size, or 256)."""
    return {"cli": {"help": help, "flag": flag, "metavar": metavar, "parse": parse, "choices": choices,
                    "cli_default": cli_default}}  # fmt: skip


def parse_sources(text: str) -> str | tuple[str, ...]:
    """``--source``: ``"T1"`` stays ``"T1"``; ``"T1,T1c,FLAIR"`` is ``("T1", "T1c", "FLAIR")``."""
    names = [name.strip() for name in str(text).split(",")]
    return names[0] if len(names) == 1 else tuple(names)


# A field with this metadata is not a command-line option (derived from other options, or kept
# for configurations saved by older versions).
INTERNAL: dict[str, Any] = {"cli": None}


@dataclass(frozen=True)
class DataConfig:
    """How paired images become training slices.

    ``source`` is one contrast name, or a tuple of them (``--source T1,T1c,FLAIR``): several
    source contrasts stacked as input channels in that order, contrast-major (each contrast's
    ``2 * context_slices + 1`` channels together, its own slice in the middle of them). A single
    name stays a plain string, so configurations saved before several sources existed load as
    they were.
    """

    source: str | tuple[str, ...] = field(default="T1", metadata=option(
        "input contrast (T1, T2, FLAIR, T1c, PD), or several stacked as channels in the order "
        "given: T1,T1c,FLAIR", parse=parse_sources))  # fmt: skip
    target: str = field(default="T2", metadata=option("contrast to synthesise"))
    image_size: int = field(default=256, metadata=option(
        "slice size in pixels (default: a cache's own size, else 256; the demo 128 on a CPU)",
        cli_default=None))  # fmt: skip
    context_slices: int = field(default=0, metadata=option(
        "2.5D: neighbouring slices on each side as extra input channels"))  # fmt: skip
    min_brain_fraction: float = field(default=0.05, metadata=option(
        "keep an axial slice only if at least this fraction of its pixels is brain"))  # fmt: skip
    val_fraction: float = field(default=0.15, metadata=option("fraction of subjects for validation"))
    test_fraction: float = field(default=0.15, metadata=option("fraction of subjects for the test split"))
    split_seed: int = field(default=0, metadata=option("seed of the subject-level split"))
    percentiles: tuple[float, float] = field(default=(0.5, 99.5), metadata=option(
        "robust per-volume intensity window: these percentiles of brain voxels map to 0 and 1",
        metavar=("LOW", "HIGH")))  # fmt: skip
    register: bool = field(default=False, metadata=option(
        "rigidly register source to target (mutual information)"))  # fmt: skip
    # On by default: on held-out real patients from another site it made the synthetic T2 closer
    # to the real one on two of three folds and left the third as it was (benchmarks/ablation.py,
    # configuration no-n4; README).
    bias_correction: str = field(default="n4", metadata=option(
        "n4: divide each source volume's N4 bias field out before the intensity window "
        "(SimpleITK; prediction repeats it; 2D images are used as they are); none: use the "
        "intensities as they are", choices=BIAS_CORRECTIONS))  # fmt: skip
    # auto by default: every volume the models trained on is skull-stripped (it is left as it is),
    # while a study as it leaves the scanner has skull and neck on (data/extraction.py).
    # Configurations saved before this option existed mean "none" (see RunConfig.from_dict).
    brain_extraction: str = field(default="auto", metadata=option(
        "auto: extract the brain (deepbet, on the first source; the mask carried onto the other "
        "sources) only from a volume that is not already skull-stripped; deepbet: always; none: "
        "never", choices=BRAIN_EXTRACTIONS))  # fmt: skip
    # The in-plane voxel size (mm along the canonical R and A axes) of the slices the model trained
    # on, recorded from its cache: a volume of another in-plane spacing is resampled to it for the
    # network, and the result back (data/resolution.py). None, in configurations saved before it
    # was recorded (and for image pairs): no resampling.
    in_plane_spacing: tuple[float, float] | None = field(default=None, metadata=INTERNAL)
    # On by default: on held-out real patients from another site, random intensity curves, bias,
    # noise, gamma (source only), flips and small affine maps won the equal-step screening
    # (benchmarks/ablation.py; README). Configurations saved before this default keep theirs.
    augment: bool = field(default=True, metadata=option(
        "MRI-aware augmentation of training slices (on by default; --no-augment turns it off; "
        "the --augment-* options set how much)"))  # fmt: skip

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
        if self.bias_correction not in BIAS_CORRECTIONS:
            raise ConfigError(f"unknown --bias-correction {self.bias_correction!r}; choose one of "
                              f"{', '.join(BIAS_CORRECTIONS)}")  # fmt: skip
        if self.brain_extraction not in BRAIN_EXTRACTIONS:
            raise ConfigError(f"unknown --brain-extraction {self.brain_extraction!r}; choose one of "
                              f"{', '.join(BRAIN_EXTRACTIONS)}")  # fmt: skip
        if self.in_plane_spacing is not None:
            for value in check_pair("in-plane spacing", self.in_plane_spacing):
                check_number("in-plane spacing", value, 0.0, 100.0, low_open=True)
        low, high = check_pair("percentiles", self.percentiles)
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

    flip_probability: float = field(default=0.5, metadata=option("probability of a left-right flip"))
    affine_probability: float = field(default=0.5, metadata=option("probability of a small in-plane affine map"))
    degrees: float = field(default=5.0, metadata=option("largest rotation of the affine map, in degrees"))
    scale: float = field(default=0.05, metadata=option("largest relative scaling of the affine map"))
    translation_pixels: float = field(default=4.0, metadata=option("largest shift of the affine map, in pixels"))
    bias_probability: float = field(default=0.3, metadata=option("probability of a smooth bias field on the source"))
    bias_coefficients: float = field(default=0.3, metadata=option("largest coefficient of the bias field"))
    noise_probability: float = field(default=0.3, metadata=option("probability of Gaussian noise on the source"))
    noise_std: float = field(default=0.03, metadata=option("largest noise std (images in [-1, 1])"))
    gamma_probability: float = field(default=0.3, metadata=option("probability of a gamma change of the source"))
    log_gamma: float = field(default=0.2, metadata=option("largest |log gamma|"))
    # Random smooth monotonic intensity curve on the source (data/intensity_curves.py): another
    # scanner's contrast. ``curve_strength`` < 1 bounds how far each segment's slope moves from 1.
    curve_probability: float = field(default=0.5, metadata=option(
        "probability of a random smooth monotonic intensity curve on the source (another scanner)"))
    curve_knots: int = field(default=5, metadata=option("segments of the intensity curve"))
    curve_strength: float = field(default=0.6, metadata=option(
        "how far each segment's slope may move from 1 (below 1)"))  # fmt: skip

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError, naming the command-line option, for a value out of range."""
        for name in ("flip", "affine", "bias", "noise", "gamma", "curve"):
            check_number(f"--augment-{name}-probability", getattr(self, f"{name}_probability"), 0.0, 1.0)
        check_number("--augment-degrees", self.degrees, 0.0, 180.0)
        check_number("--augment-scale", self.scale, 0.0, 1.0, high_open=True)
        for name in ("translation_pixels", "bias_coefficients", "noise_std", "log_gamma"):
            check_number(f"--augment-{name.replace('_', '-')}", getattr(self, name), 0.0)
        check_int("--augment-curve-knots", self.curve_knots, 1, 64)
        check_number("--augment-curve-strength", self.curve_strength, 0.0, 1.0, high_open=True)


@dataclass(frozen=True)
class ModelConfig:
    """Which networks, and their options."""

    # Defaults: the winner of the equal-budget ablation (benchmarks/ablation.py, README): the
    # report's U-Net at half width, pix2pix's 70x70 PatchGAN, least-squares adversarial loss.
    generator: str = field(default="unet", metadata=option(
        "basic, unet (the report's), resnet9, unet128 or unet256 (pix2pix's, for 128 or 256 px)"))  # fmt: skip
    discriminator: str = field(default="patch70", metadata=option(
        "basic (the report's PatchGAN), patch70, multiscale"))  # fmt: skip
    in_channels: int = field(default=1, metadata=INTERNAL)  # DataConfig.in_channels
    out_channels: int = field(default=1, metadata=INTERNAL)
    base_channels: int = field(default=32, metadata=option("width of the first layer of both networks"))
    norm: str = field(default="batch", metadata=option("batch, instance or none"))
    dropout: float = field(default=0.5, metadata=option("dropout in the generator's decoder"))
    upsample: str = field(default="transpose", metadata=option("transpose or resize (resize-convolution)"))
    disc_layers: int = field(default=3, metadata=option("layers of the 70x70 PatchGAN"))
    disc_scales: int = field(default=2, metadata=option("scales of the multi-scale PatchGAN"))
    spectral_norm: bool = field(default=False, metadata=option("spectral normalisation in the discriminator"))
    resnet_blocks: int = field(default=9, metadata=option(
        "residual blocks of the resnet9 generator at 1/4 resolution (CycleGAN: 9 at 256 px, 6 at 128)"))  # fmt: skip
    # "intensity-map": G's output is a correction added to the intensity-map baseline's image of
    # its input (models/residual.py; the table is fitted on the training subjects); "none": G
    # makes the whole image, as in the report. Configurations saved before this option existed
    # mean "none" (see RunConfig.from_dict).
    residual: str = field(default="intensity-map", metadata=option(
        "intensity-map: G learns a correction to the intensity-map baseline's image (fitted on the "
        "training subjects); none: G makes the whole image", choices=("intensity-map", "none")))  # fmt: skip
    # The input channel that the residual generator's intensity-map table reads: the first
    # source's own slice (DataConfig.table_channel). None, in configurations saved before several
    # sources existed, means the centre channel, which is that slice for a single source.
    table_channel: int | None = field(default=None, metadata=INTERNAL)
    # How much of the learned correction a residual generator adds to the table at inference
    # (test, predict, validation, ONNX); training always uses all of it. 0.75: on the 27 real
    # patients cross-validated by site it is as good as 0.5 on the unit scale and better
    # windowed and by the brain histogram, for one source and for three (README, "Quality at
    # another hospital"); the whole correction over-shoots on patients from another site.
    # Configurations saved before this option existed mean 1 (see RunConfig.from_dict).
    correction_weight: float = field(default=0.75, metadata=option(
        "share of the learned correction added to the intensity-map table at inference "
        "(1: all of it; 0: the table alone; residual generators only)"))  # fmt: skip

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for a number out of range (names are checked by mri2mri.models,
        which knows the networks)."""
        check_number("--correction-weight", self.correction_weight, 0.0, 1.0)
        check_int("model in_channels", self.in_channels, 1, MAX_SOURCES * (2 * MAX_CONTEXT_SLICES + 1))
        if self.table_channel is not None:
            check_int("model table_channel", self.table_channel, 0, self.in_channels - 1)
        check_int("model out_channels", self.out_channels, 1, 16)
        check_int("--base-channels", self.base_channels, 1, 1024)
        check_number("--dropout", self.dropout, 0.0, 1.0, high_open=True)
        check_int("--disc-layers", self.disc_layers, 1, MAX_DISC_LAYERS)
        check_int("--disc-scales", self.disc_scales, 1, MAX_DISC_SCALES)
        check_int("--resnet-blocks", self.resnet_blocks, 1, 64)


@dataclass(frozen=True)
class TrainConfig:
    """The optimisation: losses, optimiser, schedule, device and bookkeeping."""

    run_name: str | None = field(default=None, metadata=option("name of the checkpoints (<run>_best.pth); default gan_<sources>_to_<target>"))
    epochs: int = field(default=10, metadata=option("passes over the training slices"))
    # Small batches, many updates: what won the equal-budget ablation.
    batch_size: int = field(default=2, metadata=option("slices per step"))
    lr: float = field(default=2e-4, metadata=option("Adam learning rate of both networks"))
    beta1: float = field(default=0.5, metadata=option("Adam beta1"))
    beta2: float = field(default=0.999, metadata=option("Adam beta2"))
    gan_loss: str = field(default="lsgan", metadata=option("bce, lsgan, hinge or wgan-gp"))
    lambda_l1: float = field(default=100.0, metadata=option("weight of the L1 loss"))
    # Squared error: its minimiser is the conditional mean, which is what PSNR rewards where the
    # T1 leaves the T2 uncertain (oedema, CSF at partial volume); L1's is the median.
    lambda_l2: float = field(default=0.0, metadata=option(
        "weight of the squared error (the conditional mean: what PSNR rewards)"))  # fmt: skip
    lambda_ssim: float = field(default=0.0, metadata=option("weight of the SSIM loss (1 - SSIM)"))
    lambda_feature_matching: float = field(default=0.0, metadata=option(
        "weight of discriminator feature matching", flag="--lambda-fm"))  # fmt: skip
    lambda_perceptual: float = field(default=0.0, metadata=option("weight of the perceptual loss"))
    perceptual_weights: str | None = field(default=None, metadata=option("state_dict file of the perceptual network"))
    lambda_gp: float = field(default=10.0, metadata=option("weight of the gradient penalty (wgan-gp)"))
    lr_decay_epochs: int = field(default=0, metadata=option("linear decay of the rate to zero over the last N epochs (pix2pix)"))
    lr_schedule: str = field(default="constant", metadata=option(  # training/schedule.py
        "constant, or linear: the learning rate falls to zero over the run (its steps or --time-budget)"))  # fmt: skip
    ema_decay: float = field(default=0.0, metadata=option("EMA decay of G's weights (0: off)", flag="--ema"))
    grad_clip: float = field(default=0.0, metadata=option("gradient-norm clipping (0: off)"))
    d_steps: int = field(default=1, metadata=option("discriminator updates per generator update"))
    seed: int = field(default=0, metadata=option("seed of weights, batches and augmentation"))
    # Another run's checkpoint whose G and D weights start this run (a warm start: optimisers,
    # schedule and progress start afresh; the intensity-map table is refitted on this run's data).
    init_from: str | None = field(default=None, metadata=option(
        "start from another run's G and D weights (run folder or .pth; same networks)", metavar="CHECKPOINT"))
    device: str = field(default="auto", metadata=option("auto, cpu, cuda or mps"))
    precision: str = field(default="auto", metadata=option(
        "auto (bf16 on a GPU or a CPU with native bf16, else fp32), fp32, bf16 or fp16 (GPU)"))  # fmt: skip
    # NHWC: ~1.15x training, ~1.4x inference on a CPU (oneDNN), tensor cores on a GPU.
    channels_last: bool = field(default=True, metadata=option(
        "NHWC memory format (default on: faster convolutions on CPUs and GPUs)"))  # fmt: skip
    compile: bool = field(default=False, metadata=option("torch.compile the networks"))
    num_workers: int = field(default=0, metadata=option("data-loader worker processes"))
    time_budget: float | None = field(default=None, metadata=option(
        "stop after this much training time, writing a checkpoint", metavar="SECONDS"))  # fmt: skip
    max_bad_steps: int = field(default=20, metadata=option(
        "consecutive non-finite steps before the run stops"))  # fmt: skip
    max_steps_per_epoch: int | None = field(default=None, metadata=option("cap on the steps of one epoch"))
    # Figures and report; the flag is every command's --lang.
    lang: str = field(default="en", metadata=INTERNAL)

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError, naming the command-line option, for a value out of range."""
        check_int("--epochs", self.epochs, 1)
        check_int("--batch-size", self.batch_size, 1)
        # No upper bound: a huge rate is legal (it diverges, and training stops on that).
        check_number("--lr", self.lr, 0.0, low_open=True)
        check_number("--beta1", self.beta1, 0.0, 1.0, high_open=True)
        check_number("--beta2", self.beta2, 0.0, 1.0, high_open=True)
        for option, value in (("--lambda-l1", self.lambda_l1), ("--lambda-l2", self.lambda_l2),
                              ("--lambda-ssim", self.lambda_ssim),
                              ("--lambda-fm", self.lambda_feature_matching),
                              ("--lambda-perceptual", self.lambda_perceptual),
                              ("--lambda-gp", self.lambda_gp), ("--grad-clip", self.grad_clip)):  # fmt: skip
            check_number(option, value, 0.0)
        check_int("--lr-decay-epochs", self.lr_decay_epochs, 0)
        if self.lr_schedule not in LR_SCHEDULES:
            raise ConfigError(f"unknown --lr-schedule {self.lr_schedule!r}; choose one of {', '.join(LR_SCHEDULES)}")
        if self.lr_schedule != "constant" and self.lr_decay_epochs > 0:
            raise ConfigError("--lr-decay-epochs and --lr-schedule linear both set the decay; choose one")
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
        if self.lang not in LANGUAGES:
            raise ConfigError(f"unknown --lang {self.lang!r}; choose one of {', '.join(LANGUAGES)}")


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to repeat a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    # How much augmentation changes a sample when ``data.augment`` is on. Configurations saved
    # before it was recorded ran with these defaults.
    augmentation: AugmentationConfig = field(default_factory=AugmentationConfig)

    def __post_init__(self) -> None:
        # No run name: one after the contrasts (gan_t1_t1c_flair_to_t2). An empty name is the
        # user's own and is refused as unsafe where the run folder checks names.
        if self.train.run_name is None:
            name = default_run_name(self.data.sources, self.data.target)
            object.__setattr__(self, "train", dataclasses.replace(self.train, run_name=name))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError for any option of the run out of range (each part checks itself)."""
        self.data.validate()
        self.model.validate()
        self.train.validate()
        self.augmentation.validate()

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> RunConfig:
        # A run saved before the residual option existed trained a plain generator, one saved
        # before augmentation became the default did not augment unless it said so, and one saved
        # before bias correction existed saw its intensities as they were; one saved before the
        # correction weight existed added all of its correction; one saved before brain extraction
        # existed used its volumes as they were.
        model = {"residual": "none", "correction_weight": 1.0, **payload.get("model", {})}
        data = {"augment": False, "bias_correction": "none", "brain_extraction": "none", **payload.get("data", {})}
        return cls(
            data=_build(DataConfig, data),
            model=_build(ModelConfig, model),
            train=_build(TrainConfig, payload.get("train", {})),
            augmentation=_build(AugmentationConfig, payload.get("augmentation", {})),
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
            isinstance(payload.get(part, {}), dict) for part in ("data", "model", "train", "augmentation")
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


def replace(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported so callers need one import."""
    return dataclasses.replace(config, **changes)


# Named configurations: the report's two experiments and pix2pix's, for reproducing them in one
# option (``--preset``). Keys are field names of DataConfig, ModelConfig or TrainConfig.
PRESETS: dict[str, dict[str, Any]] = {
    "report-basic": {"generator": "basic", "discriminator": "basic", "base_channels": 64, "gan_loss": "bce",
                     "residual": "none", "augment": False},
    "report-unet": {"generator": "unet", "discriminator": "basic", "base_channels": 64, "gan_loss": "bce",
                    "residual": "none", "augment": False},
    "pix2pix": {"generator": "unet256", "discriminator": "patch70", "base_channels": 64, "gan_loss": "bce",
                "residual": "none", "augment": False},
}  # fmt: skip


def preset_changes(name: str, current: dict[str, Any]) -> dict[str, Any]:
    """The preset's values for the options of ``current`` (field name -> value) that are still at
    their defaults: options chosen explicitly win over the preset's."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(sorted(PRESETS))}")
    defaults = {f.name: f.default for part in (DataConfig, ModelConfig, TrainConfig)
                for f in dataclasses.fields(part)}  # fmt: skip
    return {key: value for key, value in PRESETS[name].items() if current.get(key, defaults[key]) == defaults[key]}


def preset_config(name: str, base: RunConfig | None = None) -> RunConfig:
    """``base`` (the defaults when None) with preset ``name`` applied where ``base`` keeps the
    defaults: the Python form of ``train --preset NAME``."""
    base = RunConfig() if base is None else base
    parts = {"data": base.data, "model": base.model, "train": base.train}
    current = {key: value for part in parts.values() for key, value in vars(part).items()}
    changes = preset_changes(name, current)
    for part_name, part in parts.items():
        own = {k: v for k, v in changes.items() if k in {f.name for f in dataclasses.fields(part)}}
        parts[part_name] = dataclasses.replace(part, **own)
    return dataclasses.replace(base, **parts)
