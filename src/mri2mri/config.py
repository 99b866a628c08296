"""Typed configuration of a run: data, model and training.

The command line only builds these frozen dataclasses; every run folder receives the resolved
configuration as ``config.json`` so that any run can be repeated exactly (nanoGPT's ``GPTConfig``,
EDM's ``training_options.json``).
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DEFAULT_RUN_NAME = "gan_t1_to_t2"


@dataclass(frozen=True)
class DataConfig:
    """How paired images become training slices."""

    source: str = "T1"
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
    augment: bool = False

    @property
    def in_channels(self) -> int:
        return 2 * self.context_slices + 1


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
    device: str = "auto"
    precision: str = "fp32"
    channels_last: bool = True  # NHWC: ~1.15x training, ~1.4x inference on a CPU (oneDNN), tensor cores on a GPU
    compile: bool = False
    num_workers: int = 0
    time_budget: float | None = None  # seconds of training wall time, then stop cleanly
    max_bad_steps: int = 20  # consecutive non-finite steps before the run stops
    max_steps_per_epoch: int | None = None
    lang: str = "en"


@dataclass(frozen=True)
class RunConfig:
    """Everything needed to repeat a run."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, payload: dict[str, Any]) -> RunConfig:
        return cls(
            data=_build(DataConfig, payload.get("data", {})),
            model=_build(ModelConfig, payload.get("model", {})),
            train=_build(TrainConfig, payload.get("train", {})),
        )

    def save(self, path: Path) -> None:
        Path(path).write_text(json.dumps(self.to_dict(), indent=2) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> RunConfig:
        return cls.from_dict(json.loads(Path(path).read_text(encoding="utf-8")))


def _build(kind: type, values: dict[str, Any]):
    """Build a dataclass from JSON values, ignoring unknown keys and restoring tuples."""
    names = {f.name for f in dataclasses.fields(kind)}
    clean = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items() if k in names}
    return kind(**clean)


def replace(config: Any, **changes: Any) -> Any:
    """``dataclasses.replace`` re-exported so callers need one import."""
    return dataclasses.replace(config, **changes)
