"""``mri2mri predict``: a whole volume (or a 2D image) in, its synthetic target contrast out.

The model is a PyTorch checkpoint (a ``.pth`` file or a run folder) or an exported ``.onnx``
file. The ONNX route runs on onnxruntime and imports nothing from PyTorch, so a user can
synthesise on a machine without it: every preprocessing step here is NumPy
(:mod:`mri2mri.portable` and :mod:`mri2mri.data.geometry`, the functions training's
:mod:`mri2mri.data.preprocess` uses too).

A volume (NIfTI file or DICOM series folder) is processed exactly as training processed its
source: reoriented to canonical RAS, brain-masked, normalised to [0, 1] by the run's
``DataConfig.percentiles`` of brain voxels, cut into axial slices cropped to the brain, padded
to a square and resized to the run's image size, with ``DataConfig.context_slices`` neighbours
on each side as extra channels (2.5D). Every axial slice that holds brain is synthesised, in
batches, without gradients; the slices are put back (resize, pad and crop undone, reorientation
undone) so that the output NIfTI has exactly the input file's shape, affine and orientation.
Voxels outside the input's brain mask, and slices without brain, are zero.

Output intensity scale
----------------------
The output is float32 on a **unit scale**: 0 and 1 are the low and high ends of the window
that training mapped the *target* contrast to, i.e. the ``percentiles`` (default 0.5th and
99.5th) of the target's brain intensities. So 1.0 means "as bright as the brightest target
brain tissue (e.g. CSF on T2)", 0.0 the darkest. We do not rescale to scanner units because a
weighted MR image has none that carry over: its values depend on receiver gain, coil and
reconstruction, differ between scanners and sessions, and cannot be inferred from a T1 image;
any such number would be invented. The unit scale is the scale the model was trained and
evaluated on (metrics.json compares images in [0, 1]); multiply it by a reference value of
your own when a tool needs another range. The NIfTI header says so: ``descrip`` records that
the image is synthetic and which model made it, ``cal_min``/``cal_max`` are 0 and 1, and a
JSON comment extension (code 6) holds the full provenance.

A 2D PNG/TIFF image gives the same kind of file: a 16-bit image of the [0, 1] output
(0..65535), masked like the input's training pairs (non-zero pixels when the background is
exactly zero).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mri2mri import __version__, portable
from mri2mri.atomic import save_atomically
from mri2mri.config import DataConfig, RunConfig, check_int
from mri2mri.contrast import source_reference_of
from mri2mri.data.discovery import (
    canonical_contrast,
    canonical_sources,
    contrast_of,
    subject_contrasts,
)
from mri2mri.data.geometry import slices_to_volume, square_to_planes
from mri2mri.data.io import (
    check_writable_folder,
    check_writable_output,
    is_image_2d,
    is_nifti,
    read_image_2d,
    read_volume,
)
from mri2mri.errors import ConfigError, DataError, first_line

# (B, C, S, S) float32 in [-1, 1] -> (B, 1, S, S) float32 in [-1, 1]
Runner = Callable[[np.ndarray], np.ndarray]

# Keys of the ONNX model's metadata_props (written by mri2mri.export).
META_PREFIX = "mri2mri."
META_CONFIG = META_PREFIX + "config"
META_REFERENCE = META_PREFIX + "source_reference"
META_CHECKPOINT = META_PREFIX + "checkpoint"
# Histograms of at most this many subjects x slices of a cache make the source reference.
INTENSITY_SCALE = "unit: 0..1 = target window (DataConfig.percentiles of target brain voxels)"


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


# --------------------------------------------------------------------------------------------
# Loading a model


def load_model(
    checkpoint: Path | str, *, device: str = "auto", precision: str = "auto"
) -> tuple[Runner, ModelInfo]:
    """A runner and its :class:`ModelInfo` for a ``.pth`` checkpoint, a run folder or a ``.onnx`` file."""
    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() == ".onnx":
        return load_onnx_model(checkpoint, device=device, precision=precision)
    return load_torch_model(checkpoint, device=device, precision=precision)


def load_onnx_model(
    path: Path, *, device: str = "auto", precision: str = "auto"
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

    portable.check_finite_weights(portable.onnx_initializers(str(path)), path.name)

    def run(batch: np.ndarray) -> np.ndarray:
        return session.run(None, {input_name: np.ascontiguousarray(batch, dtype=np.float32)})[0]

    info = ModelInfo(config=config, name=path.name, kind="onnx",
                     source_reference=portable.reference_from_json(meta.get(META_REFERENCE)),
                     provenance=provenance)  # fmt: skip
    return run, info


def load_torch_model(
    checkpoint: Path, *, device: str = "auto", precision: str = "auto"
) -> tuple[Runner, ModelInfo]:
    """The generator of a checkpoint (EMA weights when present) in eval mode on ``device``."""
    import torch

    from mri2mri.inference import load_generator, make_predictor
    from mri2mri.runfolder import find_checkpoint
    from mri2mri.runtime import setup_runtime

    path = find_checkpoint(checkpoint, "best")
    runtime = setup_runtime(device, precision, channels_last=True)  # NHWC: faster convolutions
    G, config, payload = load_generator(path, runtime.device)
    weights = G.state_dict().items()
    portable.check_finite_weights(((k, v.detach().float().cpu().numpy()) for k, v in weights), path.name)
    predictor = make_predictor(G, runtime)

    def run(batch: np.ndarray) -> np.ndarray:
        return predictor(torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))).numpy()

    reference = source_reference_of(path, config, payload)
    info = ModelInfo(config=config, name=path.name, kind="pytorch", source_reference=reference,
                     provenance={"checkpoint": path.name, "epoch": payload.get("epoch"),
                                 "weights": "ema" if payload.get("ema") else "G"})  # fmt: skip
    return run, info


# --------------------------------------------------------------------------------------------
# Synthesis


def synthesise(run: Runner, prepared: portable.PreparedInput, batch_size: int) -> np.ndarray:
    """(n, 1, S, S) predictions in [0, 1]; slices without brain are not run and stay 0."""
    if batch_size < 1:
        raise ConfigError(f"--batch-size must be at least 1, got {batch_size}")
    out = np.zeros((prepared.slices.shape[0], 1, *prepared.slices.shape[2:]), dtype=np.float32)
    rows = np.flatnonzero(prepared.mask.reshape(prepared.mask.shape[0], -1).any(axis=1))
    for start in range(0, rows.size, batch_size):
        chunk = rows[start : start + batch_size]
        prediction = run(prepared.slices[chunk] * 2.0 - 1.0)  # [0, 1] -> the model's [-1, 1]
        prediction = np.asarray(prediction, dtype=np.float32)[:, :1]
        portable.check_finite_output(prediction)  # np.clip below would keep NaN as NaN
        out[chunk] = (prediction + 1.0) * 0.5
    return np.clip(out, 0.0, 1.0, out=out)


def _check_channels(prepared: portable.PreparedInput, info: ModelInfo, path: Path) -> None:
    if prepared.slices.shape[1] != info.config.model.in_channels:
        raise DataError(f"{path}: prepared {prepared.slices.shape[1]} input channels, the model "
                        f"{info.name} expects {info.config.model.in_channels}")  # fmt: skip


def _warn_contrast(prepared: portable.PreparedInput, info: ModelInfo, paths: Sequence[Path] = ()) -> None:
    """The contrast check; with several sources, once per input against that contrast's reference."""
    if len(info.sources) == 1:
        messages = [portable.check_source(prepared, info.source_reference)]
    else:
        per_source = prepared.slices.shape[1] // len(info.sources)
        references = (info.source_reference or {}).get("sources") or {}
        messages = [portable.check_source(prepared, references.get(contrast),
                                          channel=k * per_source + info.data.context_slices, name=str(path))
                    for k, (contrast, path) in enumerate(zip(info.sources, paths, strict=True))]  # fmt: skip
    for message in messages:
        if message:
            warnings.warn(message, ContrastWarning, stacklevel=3)


def synthesise_uncertainty(
    run: Runner, prepared: portable.PreparedInput, batch_size: int, passes: int
) -> np.ndarray:
    """(n, 1, S, S) voxelwise std over ``passes`` test-time passes (:mod:`mri2mri.uncertainty`)."""
    from mri2mri.uncertainty import tta_std

    out = np.zeros((prepared.slices.shape[0], 1, *prepared.slices.shape[2:]), dtype=np.float32)
    rows = np.flatnonzero(prepared.mask.reshape(prepared.mask.shape[0], -1).any(axis=1))
    for start in range(0, rows.size, batch_size):
        chunk = rows[start : start + batch_size]
        out[chunk] = tta_std(run, prepared.slices[chunk] * 2.0 - 1.0, passes)
    return out


def predict_volume(
    run: Runner, info: ModelInfo, path: Path, *, batch_size: int = 16
) -> tuple[np.ndarray, np.ndarray]:
    """``(data, affine)``: the synthetic volume on the grid of the file or DICOM folder ``path``."""
    data, _, affine = predict_volume_maps(run, info, path, batch_size=batch_size)
    return data, affine


def predict_volume_maps(
    run: Runner, info: ModelInfo, path: Path, *, batch_size: int = 16, uncertainty_passes: int = 0,
    others: Sequence[Path] = (), register: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """``(data, uncertainty, affine)`` on the grid of ``path``; the voxelwise uncertainty over
    ``uncertainty_passes`` test-time passes, or None when that is 0.

    ``others`` are the further inputs of a model of several sources, in its order: each is
    resampled onto ``path``'s grid (rigidly registered to it first with ``register``)."""
    volume = read_volume(path)
    aligned = [(_onto_grid(read_volume(other), volume, register), str(other)) for other in others]
    prepared = portable.prepare_volume(volume, info.data, aligned)
    _check_channels(prepared, info, path)
    _warn_contrast(prepared, info, (path, *others))
    data = _on_input_grid(synthesise(run, prepared, batch_size), prepared, volume, path)
    uncertainty = None
    if uncertainty_passes:
        spread = synthesise_uncertainty(run, prepared, batch_size, uncertainty_passes)
        uncertainty = _on_input_grid(spread, prepared, volume, path)
    return data, uncertainty, volume.original_affine


def _onto_grid(moving, reference, register: bool) -> np.ndarray:
    """``moving``'s canonical data on ``reference``'s grid: as is when the grids agree, else
    resampled in scanner coordinates, or after a rigid registration with ``register``."""
    from mri2mri.data.preprocess import register_rigid, resample_to, same_grid

    if register:
        transform, _ = register_rigid(reference, moving)
        return resample_to(moving, reference, transform)
    if same_grid(moving, reference):
        return moving.data
    return resample_to(moving, reference)


def _on_input_grid(slices: np.ndarray, prepared: portable.PreparedInput, volume, path: Path) -> np.ndarray:
    """Slices put back on the input file's own grid, zero outside its brain mask."""
    canonical = slices_to_volume(slices, prepared.geometry, prepared.slice_indices, original=False)
    canonical = portable.masked(canonical, prepared.full_mask)
    data = volume.to_original(canonical)
    if data.shape != tuple(volume.original_shape):  # a broken inverse must never be written
        raise RuntimeError(
            f"{path}: reassembled shape {data.shape} != input shape {volume.original_shape}"
        )
    return data.astype(np.float32)


def predict_image(run: Runner, info: ModelInfo, path: Path, *, batch_size: int = 16) -> np.ndarray:
    """The synthetic (H, W) image in [0, 1] for a PNG/TIFF source image."""
    prepared = portable.prepare_image(read_image_2d(path), info.data, str(path))
    _check_channels(prepared, info, path)
    _warn_contrast(prepared, info)
    predicted = synthesise(run, prepared, batch_size)
    return portable.masked(square_to_planes(predicted, prepared.geometry)[0, 0], prepared.full_mask)


# --------------------------------------------------------------------------------------------
# Inputs, outputs, the command


@dataclass(frozen=True)
class Job:
    source: Path
    output: Path
    kind: str  # "volume" or "image"
    output_format: str = "nifti"  # "nifti" (a volume's file or an image) or "dicom" (a series folder)
    uncertainty: Path | None = None  # where the uncertainty NIfTI goes, when asked for
    # A model of several sources: every input in the model's order (``source`` is the first).
    sources: tuple[Path, ...] = ()


OUTPUT_FORMATS = ("auto", "nifti", "dicom")


def predict_path(
    checkpoint: Path | str,
    source: Path | str,
    output: Path | str,
    *,
    device: str = "auto",
    batch_size: int = 16,
    overwrite: bool = False,
    precision: str = "auto",
    output_format: str = "auto",
    uncertainty: bool = False,
    uncertainty_passes: int = 8,
    inputs: dict[str, Path] | None = None,
    register: bool = False,
) -> list[Path]:
    """Synthesise every input and return the files written (see the module docstring).

    A model of several sources takes a subject folder as ``source`` (its contrasts found by the
    name rules of :mod:`mri2mri.data.discovery`), a folder of subject folders (batch mode), or
    ``inputs``, contrast -> file (``--input T1=a.nii.gz``); ``source`` is then None. The output
    lies on the grid of the first source; the others are resampled onto it (rigidly registered
    first with ``register``). A missing or extra contrast is a DataError naming those the model
    needs.

    ``output_format`` "auto" writes a DICOM series folder for a DICOM series input (unless
    ``output`` is named ``.nii``/``.nii.gz``) and NIfTI for a NIfTI input; "dicom" writes a
    series for every volume (see :mod:`mri2mri.data.dicom_out`). With ``uncertainty`` every
    volume also gets ``<output>_uncertainty.nii.gz``: the voxelwise standard deviation over
    ``uncertainty_passes`` test-time passes (:mod:`mri2mri.uncertainty`).

    ``source`` is a NIfTI file, a DICOM series folder, a PNG/TIFF image, or a folder of them
    (batch mode: one output each in the folder ``output``). Existing outputs are refused
    unless ``overwrite``; a file is written to a temporary name and renamed, so a failure
    never leaves a partial output. In batch mode a bad input is reported and skipped, and a
    :class:`DataError` at the end says how many failed.
    """
    check_int("--batch-size", batch_size, 1)
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown --output-format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    if uncertainty:
        from mri2mri.uncertainty import check_passes

        try:
            check_passes(uncertainty_passes)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    plan = dict(overwrite=overwrite, output_format=output_format, uncertainty=uncertainty)
    skipped: list[str] = []  # subjects of a batch left out before any work
    if inputs is None and not Path(source).is_dir():
        jobs = plan_jobs(Path(source), Path(output), **plan)
        run, info = load_model(checkpoint, device=device, precision=precision)
        if len(info.sources) > 1:
            raise DataError(f"{source}: {_needs(info)}; give a subject folder, or --input CONTRAST=FILE for each")
    else:  # what a folder holds depends on the model's sources
        run, info = load_model(checkpoint, device=device, precision=precision)
        if inputs is not None or len(info.sources) > 1:
            jobs = plan_subject_jobs(info, None if source is None else Path(source), Path(output),
                                     inputs=inputs, problems=skipped, **plan)  # fmt: skip
        else:
            jobs = plan_jobs(Path(source), Path(output), **plan)
    written: list[Path] = []
    failures: list[str] = list(skipped)
    for job in jobs:
        try:
            written.extend(_predict_one(run, info, job, batch_size, uncertainty_passes, overwrite, register))
        except DataError as error:
            if len(jobs) == 1 and not skipped:
                raise
            failures.append(str(error))
            print(f"error: {error}; skipped", file=sys.stderr, flush=True)
    if failures:
        raise DataError(
            f"{source}: {len(failures)} of {len(jobs) + len(skipped)} inputs failed (first: {failures[0]})"
        )
    return written


def _predict_one(
    run: Runner, info: ModelInfo, job: Job, batch_size: int, passes: int = 8, overwrite: bool = False,
    register: bool = False,
) -> list[Path]:
    if job.kind == "image":
        image01 = predict_image(run, info, job.source, batch_size=batch_size)
        return [write_image_16bit(job.output, image01, overwrite=overwrite)]
    data, spread, affine = predict_volume_maps(
        run, info, job.source, batch_size=batch_size, uncertainty_passes=passes if job.uncertainty else 0,
        others=job.sources[1:], register=register,
    )
    if job.output_format == "dicom":
        written = [write_synthetic_dicom(job.output, data, affine, info, source=job.source, overwrite=overwrite)]
    else:
        written = [write_synthetic_nifti(job.output, data, affine, info, source=job.source,
                                         overwrite=overwrite)]  # fmt: skip
    if job.uncertainty is not None and spread is not None:
        written.append(write_synthetic_nifti(job.uncertainty, spread, affine, info, source=job.source,
                                             uncertainty_passes=passes))  # fmt: skip
    return written


def write_synthetic_dicom(
    folder: Path, data: np.ndarray, affine: np.ndarray, info: ModelInfo, *, source: Path,
    overwrite: bool = False,
) -> Path:
    """The synthetic volume as a new DICOM MR series in ``folder`` (:mod:`mri2mri.data.dicom_out`):
    mirroring the input series slice for slice when ``source`` is a DICOM folder."""
    from mri2mri.data.dicom_out import SeriesInfo, write_dicom_series

    series = SeriesInfo(target=info.data.target, source=info.source_name,
                        model=f"{info.name} ({info.config.model.generator}, {info.kind})",
                        software_version=__version__)  # fmt: skip
    return write_dicom_series(folder, data, affine, series, overwrite=overwrite,
                              source_folder=source if Path(source).is_dir() else None)  # fmt: skip


def uncertainty_path(output: Path) -> Path:
    """``x_synth.nii.gz`` -> ``x_synth_uncertainty.nii.gz``; a DICOM folder ``x`` -> ``x_uncertainty.nii.gz``."""
    name = output.name
    for suffix in (".nii.gz", ".nii"):
        if name.lower().endswith(suffix):
            return output.with_name(f"{name[: -len(suffix)]}_uncertainty{name[-len(suffix):]}")
    return output.with_name(f"{name}_uncertainty.nii.gz")


def input_kind(path: Path) -> str | None:
    """ "volume" (NIfTI or DICOM folder), "image" (PNG/TIFF), "batch" (a folder of those) or None."""
    if path.is_file():
        return "volume" if is_nifti(path) else "image" if is_image_2d(path) else None
    if path.is_dir():
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        if any(p.is_dir() or is_nifti(p) or is_image_2d(p) for p in entries):
            return "batch"
        return "volume" if any(p.is_file() for p in entries) else None  # a DICOM series
    return None


def plan_jobs(
    source: Path, output: Path, *, overwrite: bool, output_format: str = "auto", uncertainty: bool = False
) -> list[Job]:
    """Pair every input with its output path and refuse existing outputs, before any work."""
    kind = input_kind(source)
    if kind is None:
        what = (
            "no such file or folder"
            if not source.exists()
            else "not a NIfTI, DICOM folder, PNG/TIFF or a folder of them"
        )
        raise DataError(f"{source}: {what}")
    if kind == "batch":
        # input_kind lists a DICOM folder's files: once per entry.
        kinds = {p: input_kind(p) for p in source.iterdir() if not p.name.startswith(".")}
        items = sorted(p for p, item_kind in kinds.items() if item_kind in ("volume", "image"))
        if output.exists() and not output.is_dir():
            raise DataError(
                f"{output}: exists and is not a folder; batch mode writes one file per input into a folder"
            )
        jobs = [_job(p, output / output_name(p, kinds[p], _format(p, kinds[p], None, output_format)),
                     kinds[p], _format(p, kinds[p], None, output_format), uncertainty)
                for p in items]  # fmt: skip
        if not jobs:
            raise DataError(f"{source}: no NIfTI, DICOM, PNG or TIFF input found")
        _check_batch_outputs(jobs)
    else:
        chosen = _format(source, kind, output, output_format)
        # A DICOM series is itself a folder: OUTPUT is the series when it is empty or one.
        is_folder = output.is_dir() and not (chosen == "dicom" and _is_series(output))
        target = output / output_name(source, kind, chosen) if is_folder else output
        jobs = [_job(source, target, kind, chosen, uncertainty)]
    for job in jobs:
        _check_output(job, overwrite)
    return jobs


def parse_inputs(items: Sequence[str]) -> dict[str, Path]:
    """``--input T1=a.nii.gz --input FLAIR=b.nii.gz`` -> {"T1": a.nii.gz, "FLAIR": b.nii.gz}
    (canonical contrast names); ConfigError for an item without ``=``, an unknown contrast or a
    contrast given twice."""
    inputs: dict[str, Path] = {}
    for item in items:
        name, equals, value = str(item).partition("=")
        if not equals or not name.strip() or not value.strip():
            raise ConfigError(f"--input {item!r}: expected CONTRAST=FILE, e.g. --input T1=t1.nii.gz")
        contrast = canonical_contrast(name)
        if contrast in inputs:
            raise ConfigError(f"--input gives {contrast} twice ({inputs[contrast]} and {value.strip()})")
        inputs[contrast] = Path(value.strip()).expanduser()
    return inputs


def _needs(info: ModelInfo) -> str:
    return f"the model {info.name} needs the contrasts {', '.join(info.sources)}"


def _choose_inputs(
    info: ModelInfo, found: dict[str, list[Path]], where: Path | str, *, ignore_target: bool = True
) -> tuple[Path, ...]:
    """The model's inputs in its own channel order, whatever order they were given in; one
    DataError naming what the model needs when a contrast is missing, extra or ambiguous (a
    subject folder may also hold the target contrast, ``ignore_target``)."""
    target = canonical_contrast(info.data.target)
    missing = [c for c in info.sources if not found.get(c)]
    extra = sorted(c for c in found if c not in info.sources and not (ignore_target and c == target))
    several = [c for c in info.sources if len(found.get(c, [])) > 1]
    if missing or extra or several:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"extra {', '.join(extra)}"] if extra else []) + (
            [f"several {c} inputs ({', '.join(p.name for p in found[c])})" for c in several])  # fmt: skip
        raise DataError(f"{where}: {_needs(info)} ({'; '.join(problems)})")
    for contrast in info.sources:
        path = found[contrast][0]
        if input_kind(path) != "volume":
            raise DataError(f"{path}: the {contrast} input is not a NIfTI file or DICOM series folder")
    return tuple(found[c][0] for c in info.sources)


def _is_subject_folder(folder: Path) -> bool:
    """A folder holding images (or DICOM series folders) named by contrast, not subject folders."""
    for entry in folder.iterdir():
        if entry.name.startswith(".") or not contrast_of(entry.name):
            continue
        if (entry.is_file() and is_nifti(entry)) or (entry.is_dir() and input_kind(entry) == "volume"):
            return True
    return False


def plan_subject_jobs(
    info: ModelInfo, source: Path | None, output: Path, *, inputs: dict[str, Path] | None,
    overwrite: bool, output_format: str = "auto", uncertainty: bool = False,
    problems: list[str] | None = None,
) -> list[Job]:
    """The jobs of a model of several sources: ``inputs`` (contrast -> file), one subject folder,
    or a folder of subject folders (one output each, named ``<subject>_synth...``, in ``output``).
    Subject folders of a batch that lack a contrast are reported, left out and added to ``problems``."""
    if inputs is not None:
        if source is not None:
            raise ConfigError("give either INPUT or --input CONTRAST=FILE, not both")
        for contrast, path in inputs.items():
            if not path.exists():
                raise DataError(f"{path}: no such file or folder (--input {contrast})")
        subjects = [(None, _choose_inputs(info, {c: [p] for c, p in inputs.items()}, "--input",
                                          ignore_target=False))]  # fmt: skip
    elif source is None or not source.is_dir():
        raise DataError(f"{source}: {_needs(info)}; give a subject folder, or --input CONTRAST=FILE for each")
    elif _is_subject_folder(source):
        subjects = [(source, _choose_inputs(info, subject_contrasts(source), source))]
    else:
        folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        subjects = []
        for folder in folders:
            found = subject_contrasts(folder)
            if not found:
                continue
            try:
                subjects.append((folder, _choose_inputs(info, found, folder)))
            except DataError as error:  # batch mode: reported and skipped, counted at the end
                if problems is not None:
                    problems.append(str(error))
                print(f"error: {error}; skipped", file=sys.stderr, flush=True)
        if not subjects:
            first = f" (first: {problems[0]})" if problems else f"; {_needs(info)}"
            raise DataError(f"{source}: no usable subject folder with images named by contrast{first}")
        if output.exists() and not output.is_dir():
            raise DataError(f"{output}: exists and is not a folder; batch mode writes one file per subject into a folder")
    batch = len(subjects) > 1 or (source is not None and not _is_subject_folder(source))
    jobs = []
    for folder, paths in subjects:
        first = paths[0]
        if batch or output.is_dir():
            chosen = _format(first, "volume", None, output_format)
            named = Path(folder.name if folder is not None else first.name)
            target = output / output_name(named, "volume", chosen)
        else:
            chosen = _format(first, "volume", output, output_format)
            target = output
        job = _job(first, target, "volume", chosen, uncertainty)
        jobs.append(dataclasses.replace(job, sources=paths))
    if batch:
        _check_batch_outputs(jobs)
    for job in jobs:
        _check_output(job, overwrite)
        inputs_of_job = {p.resolve() for p in job.sources}
        if job.output.resolve() in inputs_of_job:
            raise DataError(f"{job.output}: the output would replace one of its own inputs")
    return jobs


def _check_batch_outputs(jobs: list[Job]) -> None:
    """Refuse, before any work, a batch where two inputs would write one output (the first
    result would be lost) or an output would replace one of the batch's inputs (which would
    then be read as input after being overwritten)."""
    inputs = {job.source.resolve(): job.source for job in jobs}
    writers: dict[Path, Job] = {}
    for job in jobs:
        target = job.output.resolve()
        if target in inputs:
            raise DataError(
                f"{job.output}: the output of {job.source.name} would replace the batch input "
                f"{inputs[target].name}; choose another output folder"
            )
        if target in writers:
            raise DataError(
                f"{job.output}: both {writers[target].source.name} and {job.source.name} would "
                "be written here; rename one of them or predict them separately"
            )
        writers[target] = job


def _format(source: Path, kind: str, output: Path | None, output_format: str) -> str:
    """The output format of one volume: DICOM in gives DICOM out unless asked otherwise."""
    if kind != "volume" or output_format == "nifti":
        return "nifti"
    if output_format == "dicom":
        return "dicom"
    if output is not None and is_nifti(output):
        return "nifti"  # "auto" with a NIfTI name: the user said what they want
    return "dicom" if source.is_dir() else "nifti"


def _is_series(folder: Path) -> bool:
    """Whether ``folder`` is empty or holds only a series this program wrote."""
    entries = list(folder.iterdir())
    return all(p.is_file() and p.name.startswith("IM") and p.suffix == ".dcm" for p in entries)


def _job(source: Path, output: Path, kind: str, output_format: str, uncertainty: bool) -> Job:
    spread = uncertainty_path(output) if uncertainty and kind == "volume" else None
    return Job(source, output, kind, output_format, spread)


def output_name(path: Path, kind: str | None, output_format: str = "nifti") -> str:
    """``sub-01_T1.nii.gz`` -> ``sub-01_T1_synth.nii.gz``; a DICOM folder gives
    ``<folder>_synth.nii.gz``, or the series folder ``<folder>_synth`` for DICOM output."""
    name = path.name
    if output_format == "dicom":
        for suffix in (".nii.gz", ".nii"):
            if name.lower().endswith(suffix):
                return f"{name[: -len(suffix)]}_synth"
        return f"{name}_synth"
    for suffix in (".nii.gz", ".nii", ".png", ".tiff", ".tif"):
        if name.lower().endswith(suffix):
            return f"{name[: -len(suffix)]}_synth{name[-len(suffix) :]}"
    return f"{name}_synth.nii.gz" if kind == "volume" else f"{name}_synth.png"


def _check_output(job: Job, overwrite: bool) -> None:
    if job.output_format == "dicom":
        if is_nifti(job.output) or is_image_2d(job.output):
            raise DataError(f"{job.output}: DICOM output is a folder; give a folder name, not a file name")
        if job.output.exists() and not job.output.is_dir():
            raise DataError(f"{job.output}: exists and is not a folder; a DICOM series is written into a folder")
    elif job.kind == "volume" and not is_nifti(job.output):
        raise DataError(f"{job.output}: a volume's output must be a NIfTI file (.nii or .nii.gz)")
    if job.kind == "image" and not is_image_2d(job.output):
        raise DataError(f"{job.output}: an image's output must be a .png, .tif or .tiff file")
    if job.output.exists() and not overwrite and not (job.output.is_dir() and not any(job.output.iterdir())):
        raise DataError(f"{job.output}: exists; pass --overwrite to replace it")
    if job.uncertainty is not None and job.uncertainty.exists() and not overwrite:
        raise DataError(f"{job.uncertainty}: exists; pass --overwrite to replace it")
    if job.output.resolve() == job.source.resolve():
        raise DataError(f"{job.output}: the output would replace its own input")
    if job.output_format == "dicom":  # a series is a folder of files
        check_writable_folder(job.output.parent, "output", target=job.output)
    else:
        check_writable_output(job.output)  # now, not after the whole inference has run


def write_synthetic_nifti(
    path: Path, data: np.ndarray, affine: np.ndarray, info: ModelInfo, *, source: Path,
    uncertainty_passes: int = 0, overwrite: bool = True,
) -> Path:
    """float32 NIfTI marked synthetic (descrip, cal range, JSON provenance extension), atomically
    (never replacing a file that appeared meanwhile unless ``overwrite``)."""
    import nibabel as nib

    image = nib.Nifti1Image(
        np.asarray(data, dtype=np.float32), np.asarray(affine, dtype=np.float64)
    )
    header = image.header
    header["descrip"] = (
        f"mri2mri uncertainty (std of {uncertainty_passes} passes), synthetic {info.data.target}"
        if uncertainty_passes else info.description()
    )[:79].encode("ascii", "replace")
    header["cal_min"], header["cal_max"] = 0.0, 1.0
    header.set_xyzt_units("mm", "sec")
    image.set_qform(image.affine, code=1)
    image.set_sform(image.affine, code=1)
    provenance = {
        "software": f"mri2mri {__version__}",
        "synthetic": True,
        "source_contrast": info.source_name,
        "target_contrast": info.data.target,
        "generator": info.config.model.generator,
        "model_file": info.name,
        "model_format": info.kind,
        "input": str(source),
        "intensity_scale": INTENSITY_SCALE,
        **({"map": "voxelwise standard deviation over test-time passes (flips and shifts)",
            "passes": uncertainty_passes} if uncertainty_passes else {}),  # fmt: skip
        **{k: v for k, v in info.provenance.items() if k not in ("format",)},
    }
    header.extensions.append(
        nib.nifti1.Nifti1Extension(6, json.dumps(provenance, default=str).encode("utf-8"))
    )
    suffix = ".nii.gz" if str(path).lower().endswith(".gz") else ".nii"
    return save_atomically(Path(path), lambda tmp: nib.save(image, tmp), suffix=suffix, replace=overwrite)


def write_image_16bit(path: Path, image01: np.ndarray, *, overwrite: bool = True) -> Path:
    """A 16-bit grayscale PNG or TIFF of an image in [0, 1] (0..65535), atomically."""
    from PIL import Image

    values = np.round(np.clip(image01, 0.0, 1.0) * 65535.0).astype(np.uint16)
    path = Path(path)
    image_format = "PNG" if path.suffix.lower() == ".png" else "TIFF"
    return save_atomically(
        path, lambda tmp: Image.fromarray(values).save(tmp, format=image_format), suffix=path.suffix,
        replace=overwrite,
    )


def file_sha256(path: Path) -> str:
    """SHA-256 of a file, streamed (checkpoints can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
