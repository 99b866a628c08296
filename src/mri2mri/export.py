"""``mri2mri export``: a checkpoint's generator as ONNX and/or safetensors, with a model card.

ONNX: exported with PyTorch's torch.export-based ("dynamo") exporter, the default since
PyTorch 2.9 (the TorchScript exporter is deprecated); batch, height and width are dynamic, so
the file runs at any batch size and at any image size the generator accepts (a multiple of its
total stride). The model's ``metadata_props`` carry everything ``mri2mri predict`` needs to
process a volume as training did, so the ``.onnx`` file alone is enough to predict, with
onnxruntime and without PyTorch:

    mri2mri.format          "1"
    mri2mri.config          RunConfig as JSON (DataConfig: percentiles, image_size, context...)
    mri2mri.source / target / generator / image_size / context_slices / size_multiple
    mri2mri.checkpoint      file name, plus checkpoint_sha256, epoch, weights ("ema" or "G")
    mri2mri.source_reference  JSON histogram of training source intensities (when known)
    mri2mri.input_range / output_range   "[-1, 1]"

safetensors: the generator's ``state_dict`` (the EMA weights when the checkpoint has them) and
the same metadata as strings, for sharing weights without pickles.

Every export writes a model card beside each exported model, named after it (``g.onnx`` and
``g.safetensors`` -> ``g_MODEL_CARD.md``), so that two models can share a folder. Files are
written to a temporary name and renamed; existing files are refused unless ``overwrite``.
"""

from __future__ import annotations

import json
import logging
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from mri2mri import __version__, atomic, modelcard
from mri2mri.config import RunConfig
from mri2mri.contrast import source_reference_of
from mri2mri.data.io import check_writable_output
from mri2mri.errors import ConfigError, DataError
from mri2mri.inference import load_generator
from mri2mri.models import build_discriminator, count_parameters
from mri2mri.models.generators import GENERATORS
from mri2mri.predict import (
    META_CHECKPOINT,
    META_CONFIG,
    META_PREFIX,
    META_REFERENCE,
    file_sha256,
)
from mri2mri.pretrained import resolve_model
from mri2mri.runfolder import find_checkpoint, run_folder_of

EXPORTER = f"torch.onnx.export(dynamo=True), torch {torch.__version__}"
# The exported graph must match PyTorch this closely (max absolute difference, [-1, 1] range).
PARITY_TOLERANCE = 1e-4


def export_model(
    checkpoint: Path | str,
    *,
    onnx_path: Path | str | None = None,
    safetensors_path: Path | str | None = None,
    overwrite: bool = False,
    correction_weight: float | None = None,
) -> list[Path]:
    """Export a checkpoint's generator; returns the files written (models and model cards).

    ``correction_weight`` exports a residual generator with that share of its learned correction
    built into the ONNX graph (and recorded in the metadata and the model card) instead of the
    one it was trained with."""
    if onnx_path is None and safetensors_path is None:
        raise ConfigError("nothing to export: pass --onnx FILE and/or --safetensors FILE")
    targets = [
        (Path(p), suffix)
        for p, suffix in ((onnx_path, ".onnx"), (safetensors_path, ".safetensors"))
        if p
    ]
    for path, suffix in targets:
        if path.suffix.lower() != suffix:
            raise DataError(f"{path}: expected a {suffix} file name")
    cards = sorted({modelcard.card_path(path) for path, _ in targets})
    for path in [p for p, _ in targets] + cards:
        if path.exists() and not overwrite:
            raise DataError(f"{path}: exists; pass --overwrite to replace it")
        check_writable_output(path)  # before the export, not after it

    source = find_checkpoint(resolve_model(checkpoint), "best")
    G, config, payload = load_generator(source, "cpu", correction_weight)
    run_dir = run_folder_of(source)
    reference = source_reference_of(source, config, payload)
    metadata = export_metadata(config, source, payload, reference)

    written: list[Path] = []
    if onnx_path:
        written.append(export_onnx(G, config, Path(onnx_path), metadata))
    if safetensors_path:
        written.append(export_safetensors(G, Path(safetensors_path), metadata))
    parameters = {
        "generator": count_parameters(G),
        "discriminator": count_parameters(build_discriminator(config.model)),
    }
    for card in cards:
        text = modelcard.model_card_text(
            config, checkpoint=source, run_dir=run_dir, parameters=parameters,
            files=[p for p in written if modelcard.card_path(p) == card], source_reference=reference,
            exporter=EXPORTER if onnx_path else "",
        )  # fmt: skip
        written.append(atomic.write_text(card, text))
    return written


def export_metadata(config: RunConfig, checkpoint: Path, payload: dict[str, Any],
                    reference: dict[str, Any] | None) -> dict[str, str]:  # fmt: skip
    """String key/values stored in the ONNX metadata_props and the safetensors header."""
    metadata = {
        META_PREFIX + "format": "1",
        META_PREFIX + "version": __version__,
        META_CONFIG: json.dumps(config.to_dict(), sort_keys=True),
        META_PREFIX + "source": ",".join(config.data.sources),  # several: in channel order
        META_PREFIX + "target": config.data.target,
        META_PREFIX + "generator": config.model.generator,
        META_PREFIX + "image_size": str(config.data.image_size),
        META_PREFIX + "context_slices": str(config.data.context_slices),
        META_PREFIX + "size_multiple": str(GENERATORS[config.model.generator].total_stride),
        META_PREFIX + "input_range": "[-1, 1]",
        META_PREFIX + "output_range": "[-1, 1]",
        META_CHECKPOINT: checkpoint.name,
        META_PREFIX + "checkpoint_sha256": file_sha256(checkpoint),
        META_PREFIX + "epoch": str(payload.get("epoch", "")),
        META_PREFIX + "weights": "ema" if payload.get("ema") else "G",
    }
    if reference:
        metadata[META_REFERENCE] = json.dumps(reference, sort_keys=True)
    return metadata


def export_onnx(G: nn.Module, config: RunConfig, path: Path, metadata: dict[str, str]) -> Path:
    """The generator as an ONNX file with dynamic batch, height and width, checked against PyTorch."""
    import onnx

    G = G.eval().cpu()
    size = config.data.image_size
    # Batch 2 in the example: a batch of 1 would let the exporter specialise that axis to 1.
    example = torch.zeros(2, config.model.in_channels, size, size)
    batch = torch.export.Dim("batch")
    spatial = torch.export.Dim.AUTO
    with warnings.catch_warnings(), _quiet_exporter():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(
            G, (example,), dynamo=True, input_names=["source"], output_names=["prediction"],
            dynamic_shapes=({0: batch, 2: spatial, 3: spatial},), optimize=True, verbose=False,
        )  # fmt: skip
    model = program.model_proto
    onnx.helper.set_model_props(model, metadata)
    atomic.save_atomically(path, lambda tmp: onnx.save_model(model, tmp, save_as_external_data=False), suffix=".onnx")
    check_onnx_parity(
        G,
        path,
        torch.rand(1, *example.shape[1:], generator=torch.Generator().manual_seed(0)) * 2 - 1,
    )
    return path


def check_onnx_parity(G: nn.Module, path: Path, source: torch.Tensor) -> float:
    """Max |ONNX - PyTorch| on ``source``; the exported file is removed and an error raised past tolerance."""
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        expected = G(source).numpy()
    got = session.run(None, {session.get_inputs()[0].name: source.numpy()})[0]
    difference = float(np.abs(got - expected).max())
    if not difference <= PARITY_TOLERANCE:
        path.unlink(missing_ok=True)
        raise RuntimeError(
            f"{path}: ONNX output differs from PyTorch by {difference:.2e}; export removed"
        )
    return difference


def export_safetensors(G: nn.Module, path: Path, metadata: dict[str, str]) -> Path:
    """The generator's state_dict as safetensors, the metadata in its header."""
    from safetensors.torch import save_file

    tensors = {name: value.detach().cpu().contiguous() for name, value in G.state_dict().items()}
    return atomic.save_atomically(path, lambda tmp: save_file(tensors, tmp, metadata=metadata), suffix=".safetensors")


class _quiet_exporter:  # noqa: N801 - used as a context manager, reads like one
    """Silence the exporter's INFO/WARNING log lines (e.g. 'torchvision is not installed')."""

    names = ("torch.onnx", "torch.export", "torch._dynamo", "torch._export", "onnxscript")

    def __enter__(self) -> None:
        self._levels = {name: logging.getLogger(name).level for name in self.names}
        for name in self.names:
            logging.getLogger(name).setLevel(logging.ERROR)

    def __exit__(self, *exc) -> None:
        for name, level in self._levels.items():
            logging.getLogger(name).setLevel(level)
