"""``mri2mri predict``: a whole volume (or a 2D image) in, its synthetic target contrast out.

The model is a PyTorch checkpoint (a ``.pth`` file or a run folder) or an exported ``.onnx``
file. The ONNX route runs on onnxruntime and imports nothing from PyTorch, so a user can
synthesise on a machine without it: every preprocessing step here is NumPy
(:mod:`mri2mri.portable` and :mod:`mri2mri.data.geometry`, the functions training's
:mod:`mri2mri.data.preprocess` uses too).

A volume (NIfTI file or DICOM series folder) is processed exactly as training processed its
source: reoriented to canonical RAS, resampled in-plane to the spacing the model trained at when
it has another (:mod:`mri2mri.data.resolution`), its brain extracted when it still has its skull
(:mod:`mri2mri.data.extraction`), brain-masked, normalised to [0, 1] by the run's
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

The package: :mod:`~mri2mri.predict.model` loads a model, :mod:`~mri2mri.predict.jobs` plans
inputs and outputs before any work, :mod:`~mri2mri.predict.synthesis` runs the model and puts
the result back on the input's grid, :mod:`~mri2mri.predict.outputs` writes the files; this
module runs a whole command (:func:`predict_path`) and exports the names of all four.

A 2D PNG/TIFF image gives the same kind of file: a 16-bit image of the [0, 1] output
(0..65535), masked like the input's training pairs (non-zero pixels when the background is
exactly zero).
"""

from __future__ import annotations

from pathlib import Path

from mri2mri import console
from mri2mri.config import check_int
from mri2mri.errors import ConfigError, DataError
from mri2mri.options import PREDICT_PRECISION, check_tta, check_uncertainty
from mri2mri.predict.jobs import (
    OUTPUT_FORMATS,
    Job,
    check_batch_folder,
    check_output,
    input_kind,
    output_name,
    parse_inputs,
    plan_jobs,
    plan_subject_jobs,
    uncertainty_path,
    what_model_needs,
    with_masks,
)
from mri2mri.predict.model import (
    META_CHECKPOINT,
    META_CONFIG,
    META_PREFIX,
    META_REFERENCE,
    ContrastWarning,
    ModelInfo,
    Runner,
    load_model,
    load_onnx_model,
    load_torch_model,
)
from mri2mri.predict.outputs import (
    INTENSITY_SCALE,
    file_sha256,
    write_image_16bit,
    write_mask_nifti,
    write_synthetic_dicom,
    write_synthetic_nifti,
)
from mri2mri.predict.synthesis import (
    predict_image,
    predict_volume,
    predict_volume_full,
    predict_volume_maps,
    synthesise,
    synthesise_uncertainty,
)

__all__ = [
    "INTENSITY_SCALE", "META_CHECKPOINT", "META_CONFIG", "META_PREFIX", "META_REFERENCE",
    "OUTPUT_FORMATS", "ContrastWarning", "Job", "ModelInfo", "Runner", "check_batch_folder", "check_output",
    "file_sha256", "input_kind", "load_model", "load_onnx_model", "load_torch_model",
    "output_name", "parse_inputs", "plan_jobs", "plan_subject_jobs", "predict_image",
    "predict_job", "predict_path", "predict_volume", "predict_volume_full", "predict_volume_maps", "synthesise",
    "synthesise_uncertainty", "uncertainty_path", "write_image_16bit", "write_mask_nifti", "write_synthetic_dicom",
    "write_synthetic_nifti", "with_brain_extraction",
]  # fmt: skip


def predict_path(
    checkpoint: Path | str,
    source: Path | str,
    output: Path | str,
    *,
    device: str = "auto",
    batch_size: int = 16,
    overwrite: bool = False,
    precision: str = PREDICT_PRECISION,
    output_format: str = "auto",
    uncertainty: bool = False,
    uncertainty_passes: int | None = None,
    inputs: dict[str, Path] | None = None,
    register: bool = False,
    correction_weight: float | None = None,
    allow_synthetic_input: bool = False,
    brain_extraction: str | None = None, save_mask: bool = False, tta_passes: int = 1,
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
    ``uncertainty_passes`` test-time passes (default 8; :mod:`mri2mri.uncertainty`); passes
    without ``uncertainty``, and ``uncertainty`` for a 2D image, are a ConfigError. Each output
    is the mean of ``tta_passes`` such passes (1: the plain prediction), said in its provenance.

    An input marked synthetic is refused (left out of a batch, with a note) unless
    ``allow_synthetic_input``; so are two contrasts that are one file or hold identical voxels.
    ``correction_weight``: a residual checkpoint's share of its correction (:func:`load_model`).

    ``brain_extraction`` replaces the model's own (:mod:`mri2mri.data.extraction`); ``save_mask``
    adds ``<output>_mask.nii.gz``, the brain mask used; the provenance lists every preparation step.

    ``source`` is a NIfTI file, a DICOM series folder, a PNG/TIFF image, or a folder of them
    (batch mode: one output each in the folder ``output``). Existing outputs are refused
    unless ``overwrite``; a file is written to a temporary name and renamed, so a failure
    never leaves a partial output. In batch mode a bad input is reported and skipped, and a
    :class:`DataError` at the end says how many failed.
    """
    passes = _check_options(batch_size, output_format, uncertainty, uncertainty_passes, tta_passes)
    plan = dict(overwrite=overwrite, output_format=output_format, uncertainty=uncertainty,
                allow_synthetic=allow_synthetic_input)  # fmt: skip
    skipped: list[str] = []  # subjects of a batch left out before any work
    if inputs is None and not Path(source).is_dir():
        jobs = plan_jobs(Path(source), Path(output), **plan)
        run, info = load_model(checkpoint, device=device, precision=precision, correction_weight=correction_weight)
        if len(info.sources) > 1:
            raise DataError(f"{source}: {what_model_needs(info)}; give a subject folder, or --input CONTRAST=FILE for each")
    else:  # what a folder holds depends on the model's sources
        run, info = load_model(checkpoint, device=device, precision=precision, correction_weight=correction_weight)
        if inputs is not None or len(info.sources) > 1:
            jobs = plan_subject_jobs(info, None if source is None else Path(source), Path(output),
                                     inputs=inputs, problems=skipped, **plan)  # fmt: skip
        else:
            jobs = plan_jobs(Path(source), Path(output), **plan)
    info = with_tta(info if brain_extraction is None else with_brain_extraction(info, brain_extraction), tta_passes)
    jobs = with_masks(jobs, overwrite) if save_mask else jobs
    written: list[Path] = []
    failures: list[str] = list(skipped)
    for job in jobs:
        try:
            written.extend(predict_job(run, info, job, batch_size, passes, overwrite, register, tta_passes))
        except DataError as error:
            if len(jobs) == 1 and not skipped:
                raise
            failures.append(str(error))
            console.skipped(error)
    if failures:
        raise DataError(f"{source}: {len(failures)} of {len(jobs) + len(skipped)} inputs failed (first: {failures[0]})")
    return written


def _check_options(batch_size: int, output_format: str, uncertainty: bool, passes: int | None, tta: int) -> int:
    """The options of :func:`predict_path` checked before any file is read; the test-time
    passes the uncertainty runs (:func:`~mri2mri.options.check_uncertainty`)."""
    check_int("--batch-size", batch_size, 1)
    check_tta(tta)
    if output_format not in OUTPUT_FORMATS:
        raise ConfigError(f"unknown --output-format {output_format!r}; choose one of {', '.join(OUTPUT_FORMATS)}")
    return check_uncertainty(uncertainty, passes)


def predict_job(
    run: Runner, info: ModelInfo, job: Job, batch_size: int, passes: int = 8, overwrite: bool = False,
    register: bool = False, tta_passes: int = 1,
) -> list[Path]:
    """Synthesise one planned job and write its outputs; the files written. ``passes`` are the
    uncertainty's, ``tta_passes`` those the prediction averages."""
    if job.kind == "image":
        image01 = predict_image(run, info, job.source, batch_size=batch_size, tta_passes=tta_passes)
        return [write_image_16bit(job.output, image01, overwrite=overwrite)]
    result = predict_volume_full(
        run, info, job.source, batch_size=batch_size, uncertainty_passes=passes if job.uncertainty else 0,
        others=job.sources[1:], register=register, tta_passes=tta_passes,
    )
    data, affine, steps = result.data, result.affine, result.preparation
    if job.output_format == "dicom":
        written = [write_synthetic_dicom(job.output, data, affine, info, source=job.source, overwrite=overwrite)]
    else:
        written = [write_synthetic_nifti(job.output, data, affine, info, source=job.source,
                                         overwrite=overwrite, preparation=steps)]  # fmt: skip
    if job.uncertainty is not None and result.uncertainty is not None:
        written.append(write_synthetic_nifti(job.uncertainty, result.uncertainty, affine, info, source=job.source,
                                             uncertainty_passes=passes, preparation=steps))  # fmt: skip
    if job.mask is not None:
        written.append(write_mask_nifti(job.mask, result.mask, affine, info, source=job.source,
                                        preparation=steps, overwrite=overwrite))  # fmt: skip
    return written


def with_tta(info: ModelInfo, passes: int) -> ModelInfo:
    """``info`` whose provenance records the test-time passes each prediction averages (when
    more than one), so that every output says how it was made; ConfigError out of range."""
    from dataclasses import replace

    check_tta(passes)
    return info if passes == 1 else replace(info, provenance={**info.provenance, "test_time_passes": passes})


def with_brain_extraction(info: ModelInfo, method: str) -> ModelInfo:
    """``info`` with its ``DataConfig.brain_extraction`` replaced (``predict --brain-extraction``)."""
    from dataclasses import replace

    data = replace(info.config.data, brain_extraction=method)  # validated: ConfigError for a bad name
    return replace(info, config=replace(info.config, data=data))
