"""The model of a prediction: a PyTorch checkpoint (``.pth`` or a run folder) or an exported
``.onnx`` file, as a runner of batches and the :class:`ModelInfo` that configures the rest.

The ONNX route imports nothing from PyTorch (``tests/test_export.py`` checks it)."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mri2mri import portable
from mri2mri.config import DataConfig, RunConfig
from mri2mri.contrast import source_reference_of
from mri2mri.data.discovery import canonical_sources
from mri2mri.errors import ConfigError, DataError, first_line
from mri2mri.options import PREDICT_PRECISION
from mri2mri.pretrained import ready_model_of, resolve_model

# (B, C, S, S) float32 in [-1, 1] -> (B, 1, S, S) float32 in [-1, 1]
Runner = Callable[[np.ndarray], np.ndarray]

# Keys of the ONNX model's metadata_props (written by mri2mri.export).
META_PREFIX = "mri2mri."
META_CONFIG = META_PREFIX + "config"
META_REFERENCE = META_PREFIX + "source_reference"
META_CHECKPOINT = META_PREFIX + "checkpoint"


class ContrastWarning(UserWarning):
    """The input's intensities look unlike the contrast the model was trained on."""


@dataclass(frozen=True)
class ModelInfo:
    """What prediction needs to know about a model, from a checkpoint or ONNX metadata."""

    config: RunConfig
    name: str  # the checkpoint or ONNX file name, recorded in every output
    kind: str  # "pytorch" or "onnx"
    source_reference: dict[str, Any] | None = None
    provenance: dict[str, Any] = field(default_factory=dict)

    @property
    def data(self) -> DataConfig:
        return self.config.data

    @property
    def sources(self) -> tuple[str, ...]:
        """The canonical source contrasts the model reads, in channel order."""
        return canonical_sources(self.data.source)

    @property
    def source_name(self) -> str:
        """``T1``, or ``T1,T1c,FLAIR`` for a model of several sources."""
        return ",".join(self.sources)

    def description(self) -> str:
        """The NIfTI descrip field (80 bytes with its terminator)."""
        text = (f"mri2mri synthetic {self.data.target} from {self.source_name}, "
                f"{self.config.model.generator}, {self.name}")  # fmt: skip
        return text.encode("ascii", "replace")[:79].decode("ascii")


def load_model(
    checkpoint: Path | str,
    *,
    device: str = "auto",
    precision: str = PREDICT_PRECISION,
    correction_weight: float | None = None,
) -> tuple[Runner, ModelInfo]:
    """A runner and its :class:`ModelInfo` for a ``.pth`` checkpoint, a run folder or a ``.onnx`` file.

    ``correction_weight`` runs a residual checkpoint with that share of its learned correction
    instead of the one it was trained with (``predict --correction-weight``); an ONNX graph has
    its weight built in, so it is refused there. ``checkpoint`` may also name a ready-made model
    (:mod:`mri2mri.pretrained`)."""
    checkpoint = resolve_model(checkpoint)
    if checkpoint.suffix.lower() == ".onnx":
        if correction_weight is not None:
            raise ConfigError(f"{checkpoint}: --correction-weight applies to PyTorch checkpoints; an ONNX "
                              "graph has its weight built in (export it again with `mri2mri export "
                              "--correction-weight W`)")  # fmt: skip
        return load_onnx_model(checkpoint, device=device, precision=precision)
    return load_torch_model(checkpoint, device=device, precision=precision, correction_weight=correction_weight)


def load_onnx_model(
    path: Path, *, device: str = "auto", precision: str = PREDICT_PRECISION
) -> tuple[Runner, ModelInfo]:
    """An exported model run by onnxruntime (no PyTorch needed); its metadata configures predict."""
    import onnxruntime as ort

    if precision not in ("fp32", "auto"):  # auto: an ONNX model always runs in fp32
        raise ConfigError(
            f"--precision {precision} applies to PyTorch checkpoints; an ONNX model runs in fp32"
        )
    if device not in ("auto", "cpu", "cuda"):
        raise ConfigError(
            f"unknown device {device!r} for an ONNX model; choose one of auto, cpu, cuda"
        )
    available = ort.get_available_providers()
    if device == "cuda" and "CUDAExecutionProvider" not in available:
        raise ConfigError("--device cuda was asked for but this onnxruntime has no CUDA provider")
    use_cuda = device in ("auto", "cuda") and "CUDAExecutionProvider" in available
    providers = (["CUDAExecutionProvider"] if use_cuda else []) + ["CPUExecutionProvider"]
    if not path.is_file():
        raise DataError(f"{path}: ONNX model not found")
    try:
        session = ort.InferenceSession(str(path), providers=providers)
    except Exception as error:  # onnxruntime raises its own exception types for bad files
        raise DataError(f"{path}: unreadable ONNX model ({first_line(error)[:200]})") from None
    meta = session.get_modelmeta().custom_metadata_map
    if META_CONFIG not in meta:
        raise DataError(
            f"{path}: not an mri2mri model (no {META_CONFIG} in its metadata); export it with `mri2mri export`"
        )
    config = RunConfig.from_dict(json.loads(meta[META_CONFIG]))
    input_name = session.get_inputs()[0].name
    provenance = {key[len(META_PREFIX):]: value for key, value in meta.items()
                  if key.startswith(META_PREFIX) and key not in (META_CONFIG, META_REFERENCE)}  # fmt: skip
    provenance.update(_correction_provenance(config))

    portable.check_finite_weights(portable.onnx_initializers(str(path)), path.name)

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    info = ModelInfo(config=config, name=path.name, kind="onnx",
                     source_reference=portable.reference_from_json(meta.get(META_REFERENCE)),
                     provenance=provenance)  # fmt: skip
    return run, info


def load_torch_model(
    checkpoint: Path, *, device: str = "auto", precision: str = PREDICT_PRECISION,
    correction_weight: float | None = None,
) -> tuple[Runner, ModelInfo]:
    """The generator of a checkpoint (EMA weights when present) in eval mode on ``device``; with
    ``correction_weight``, a residual one adds that share of its correction (see :func:`load_model`)."""
    import torch

    from mri2mri.inference import load_generator, make_predictor
    from mri2mri.runfolder import find_checkpoint
    from mri2mri.runtime import setup_runtime

    path = find_checkpoint(checkpoint, "best")
    runtime = setup_runtime(device, precision, channels_last=True)  # NHWC: faster convolutions
    G, config, payload = load_generator(path, runtime.device, correction_weight)
    weights = G.state_dict().items()
    portable.check_finite_weights(((k, v.detach().float().cpu().numpy()) for k, v in weights), path.name)
    predictor = make_predictor(G, runtime)

    def run(batch: np.ndarray) -> np.ndarray:
        return predictor(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    reference = source_reference_of(path, config, payload)
    ready = ready_model_of(path)
    info = ModelInfo(config=config, name=path.name, kind="pytorch", source_reference=reference,
                     provenance={"checkpoint": path.name, **({"ready_made_model": ready.name} if ready else {}),
                                 "epoch": payload.get("epoch"),
                                 "weights": "ema" if payload.get("ema") else "G",
                                 **_correction_provenance(config)})  # fmt: skip
    return run, info


def _correction_provenance(config: RunConfig) -> dict[str, float]:
    """The share of the learned correction a residual model adds, for every output's provenance."""
    if config.model.residual == "none":
        return {}
    return {"correction_weight": config.model.correction_weight}
