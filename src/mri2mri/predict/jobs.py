"""Planning a prediction before any work: every input paired with its output path and format,
and every output refused that exists, cannot be written, would replace an input or would be
read back as one; inputs that are plainly wrong (synthetic, one file for two contrasts) too."""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from mri2mri import console
from mri2mri.data.dicom_out import holds_only_written_series
from mri2mri.data.discovery import canonical_contrast, contrast_of, subject_contrasts
from mri2mri.data.formats import file_format, is_image_2d, is_nifti, is_volume_file, split_suffix
from mri2mri.data.io import check_writable_folder, check_writable_output
from mri2mri.errors import ConfigError, DataError
from mri2mri.predict.model import ModelInfo
from mri2mri.predict.provenance import synthetic_marker


@dataclass(frozen=True)
class Job:
    """One input, where its output goes and in which format: planned before any work."""

    source: Path
    output: Path
    kind: str  # "volume" or "image"
    output_format: str = "nifti"  # "nifti" (a volume's file or an image) or "dicom" (a series folder)
    uncertainty: Path | None = None  # where the uncertainty NIfTI goes, when asked for
    # A model of several sources: every input in the model's order (``source`` is the first).
    sources: tuple[Path, ...] = ()
    mask: Path | None = None  # where the brain mask used goes (--save-mask), when asked for


OUTPUT_FORMATS = ("auto", "nifti", "dicom")


def uncertainty_path(output: Path) -> Path:
    """``x_synth.nii.gz`` -> ``x_synth_uncertainty.nii.gz``; a DICOM folder ``x`` -> ``x_uncertainty.nii.gz``."""
    if is_nifti(output):
        stem, suffix = split_suffix(output.name)
        return output.with_name(f"{stem}_uncertainty{suffix}")
    return output.with_name(f"{output.name}_uncertainty.nii.gz")


def mask_path(output: Path) -> Path:
    """``x_synth.nii.gz`` -> ``x_synth_mask.nii.gz``; a DICOM folder ``x`` -> ``x_mask.nii.gz``."""
    if is_nifti(output):
        stem, suffix = split_suffix(output.name)
        return output.with_name(f"{stem}_mask{suffix}")
    return output.with_name(f"{output.name}_mask.nii.gz")


def input_kind(path: Path) -> str | None:
    """ "volume" (a volume file or DICOM folder), "image" (PNG/TIFF), "batch" (a folder of those) or None."""
    if path.is_file():
        found = file_format(path)
        return None if found is None else found.kind
    if path.is_dir():
        entries = [p for p in path.iterdir() if not p.name.startswith(".")]
        if any(p.is_dir() or file_format(p) is not None for p in entries):
            return "batch"
        return "volume" if any(p.is_file() for p in entries) else None  # a DICOM series
    return None


def plan_jobs(
    source: Path, output: Path, *, overwrite: bool, output_format: str = "auto", uncertainty: bool = False,
    allow_synthetic: bool = False,
) -> list[Job]:
    """Pair every input with its output path and refuse existing outputs, before any work.

    A synthetic input (:func:`~mri2mri.predict.provenance.synthetic_marker`) is refused, or in
    batch mode left out with a note, unless ``allow_synthetic``."""
    kind = input_kind(source)
    if kind is None:
        what = (
            "no such file or folder"
            if not source.exists()
            else "not a NIfTI, DICOM folder, PNG/TIFF or a folder of them"
        )
        raise DataError(f"{source}: {what}")
    if kind == "batch":
        check_batch_folder(output, "input")
        # input_kind lists a DICOM folder's files: once per entry.
        kinds = {p: input_kind(p) for p in source.iterdir() if not p.name.startswith(".")}
        items = sorted(p for p, item_kind in kinds.items() if item_kind in ("volume", "image"))
        items = [p for p in items if allow_synthetic or not _skipped_as_synthetic(p)]
        jobs = [_job(p, output / output_name(p, kinds[p], _format(p, kinds[p], None, output_format)),
                     kinds[p], _format(p, kinds[p], None, output_format), uncertainty)
                for p in items]  # fmt: skip
        if not jobs:
            raise DataError(f"{source}: no NIfTI, DICOM, PNG or TIFF input found")
        _check_batch_outputs(jobs)
        _refuse_input_folder(source, output)
        images = sum(job.kind == "image" for job in jobs)
        if uncertainty and images:
            console.note(f"note: --uncertainty maps volumes only; the {images} 2D image(s) in {source} get none")
    else:
        if uncertainty and kind == "image":
            raise ConfigError(f"{source}: --uncertainty maps volumes (NIfTI, DICOM) only, not a 2D image")
        if not allow_synthetic:
            refuse_synthetic(source)
        chosen = _format(source, kind, output, output_format)
        # A DICOM series is itself a folder: OUTPUT is the series when it is empty or one.
        is_folder = output.is_dir() and not (chosen == "dicom" and holds_only_written_series(output))
        target = output / output_name(source, kind, chosen) if is_folder else output
        jobs = [_job(source, target, kind, chosen, uncertainty)]
    for job in jobs:
        check_output(job, overwrite)
    return jobs


def check_batch_folder(output: Path, what: str) -> None:
    """Refuse, before any work, a batch output that cannot be the folder it writes into: a
    file, or a name like a file's (it would become a folder of that name)."""
    if output.exists() and not output.is_dir():
        raise DataError(f"{output}: exists and is not a folder; batch mode writes one file per {what} into a folder")
    if not output.is_dir() and (is_nifti(output) or is_image_2d(output)):
        raise DataError(f"{output}: batch mode writes one file per {what} into a folder; give a folder "
                        "name, not a file name")  # fmt: skip


def _refuse_input_folder(source: Path, output: Path) -> None:
    """A batch's outputs written among its inputs would be read back as inputs the next time."""
    if output.resolve() == source.resolve():
        raise DataError(f"{output}: is the input folder; outputs written there would be read as inputs "
                        "next time; choose another output folder")  # fmt: skip


def refuse_synthetic(path: Path, contrast: str | None = None) -> None:
    """DataError when ``path`` is marked synthetic: a synthetic image of a synthetic image
    compounds the model's errors and passes the contrast check unnoticed."""
    marker = synthetic_marker(path)
    if marker:
        what = f"the {contrast} input" if contrast else "the input"
        raise DataError(f"{path}: {what} is synthetic ({marker}); predict from an acquired image, "
                        "or pass --allow-synthetic-input")  # fmt: skip


def _skipped_as_synthetic(path: Path) -> bool:
    """Whether a batch leaves ``path`` out as synthetic (most likely an earlier output), saying so."""
    marker = synthetic_marker(path)
    if marker:
        console.note(f"note: {path}: skipped, it is synthetic ({marker}); --allow-synthetic-input uses it")
    return marker is not None


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


def what_model_needs(info: ModelInfo) -> str:
    """The end of an error message about a model of several sources' inputs."""
    return f"the model {info.name} needs the contrasts {', '.join(info.sources)}"


def _choose_inputs(
    info: ModelInfo, found: dict[str, list[Path]], where: Path | str, *, ignore_target: bool = True,
    allow_synthetic: bool = False,
) -> tuple[Path, ...]:
    """The model's inputs in its own channel order, whatever order they were given in; one
    DataError naming what the model needs when a contrast is missing, extra or ambiguous (a
    subject folder may also hold the target contrast, ``ignore_target``), when two contrasts
    are one file, or when an input is synthetic (unless ``allow_synthetic``)."""
    found = {contrast: _distinct(paths) for contrast, paths in found.items()}  # a link back is one file
    target = canonical_contrast(info.data.target)
    missing = [c for c in info.sources if not found.get(c)]
    extra = sorted(c for c in found if c not in info.sources and not (ignore_target and c == target))
    several = [c for c in info.sources if len(found.get(c, [])) > 1]
    if missing or extra or several:
        problems = ([f"missing {', '.join(missing)}"] if missing else []) + (
            [f"extra {', '.join(extra)}"] if extra else []) + (
            [f"several {c} inputs ({', '.join(_shown(p, where) for p in found[c])})" for c in several])  # fmt: skip
        raise DataError(f"{where}: {what_model_needs(info)} ({'; '.join(problems)})")
    for contrast in info.sources:
        path = found[contrast][0]
        if input_kind(path) != "volume":
            raise DataError(f"{path}: the {contrast} input is not a NIfTI file or DICOM series folder")
    chosen = tuple(found[c][0] for c in info.sources)
    for (first, a), (second, b) in combinations(zip(info.sources, chosen, strict=True), 2):
        if _same_file(a, b):
            raise DataError(f"{a} and {b}: the {first} and {second} inputs are one file; give each "
                            "contrast its own image")  # fmt: skip
    if not allow_synthetic:
        for contrast, path in zip(info.sources, chosen, strict=True):
            refuse_synthetic(path, contrast)
    return chosen


def _distinct(paths: list[Path]) -> list[Path]:
    """``paths`` without a second way to one file (a symbolic link back into the folder)."""
    seen: dict[Path, Path] = {}
    for path in paths:
        seen.setdefault(path.resolve(), path)
    return list(seen.values())


def _same_file(a: Path, b: Path) -> bool:
    """The same path, or two names (hard or symbolic links) of one file or folder."""
    try:
        return a.resolve() == b.resolve() or os.path.samefile(a, b)
    except OSError:
        return False


def _shown(path: Path, where: Path | str) -> str:
    """``path`` as an error names it: relative to the folder searched, so two files of one name
    in different subfolders read as two."""
    if isinstance(where, Path) and where in path.parents:
        return path.relative_to(where).as_posix()
    return path.name


def _is_subject_folder(folder: Path) -> bool:
    """A folder holding images (or DICOM series folders) named by contrast, not subject folders."""
    for entry in folder.iterdir():
        if entry.name.startswith(".") or not contrast_of(entry.name):
            continue
        if (entry.is_file() and is_volume_file(entry)) or (entry.is_dir() and input_kind(entry) == "volume"):
            return True
    return False


def plan_subject_jobs(
    info: ModelInfo, source: Path | None, output: Path, *, inputs: dict[str, Path] | None,
    overwrite: bool, output_format: str = "auto", uncertainty: bool = False,
    problems: list[str] | None = None, allow_synthetic: bool = False,
) -> list[Job]:
    """The jobs of a model of several sources: ``inputs`` (contrast -> file), one subject folder,
    or a folder of subject folders (one output each, named ``<subject>_synth...``, in ``output``).
    Subject folders of a batch that lack a contrast (or whose inputs :func:`_choose_inputs`
    refuses) are reported, left out and added to ``problems``."""
    if inputs is not None:
        if source is not None:
            raise ConfigError("give either INPUT or --input CONTRAST=FILE, not both")
        for contrast, path in inputs.items():
            if not path.exists():
                raise DataError(f"{path}: no such file or folder (--input {contrast})")
        subjects = [(None, _choose_inputs(info, {c: [p] for c, p in inputs.items()}, "--input",
                                          ignore_target=False, allow_synthetic=allow_synthetic))]  # fmt: skip
    elif source is None or not source.is_dir():
        raise DataError(f"{source}: {what_model_needs(info)}; give a subject folder, or --input CONTRAST=FILE for each")
    elif _is_subject_folder(source):
        subjects = [(source, _choose_inputs(info, subject_contrasts(source), source, allow_synthetic=allow_synthetic))]
    else:
        check_batch_folder(output, "subject")
        folders = sorted(p for p in source.iterdir() if p.is_dir() and not p.name.startswith("."))
        subjects = []
        for folder in folders:
            found = subject_contrasts(folder)
            if not found:
                continue
            try:
                subjects.append((folder, _choose_inputs(info, found, folder, allow_synthetic=allow_synthetic)))
            except DataError as error:  # batch mode: reported and skipped, counted at the end
                if problems is not None:
                    problems.append(str(error))
                console.skipped(error)
        if not subjects:
            first = f" (first: {problems[0]})" if problems else f"; {what_model_needs(info)}"
            raise DataError(f"{source}: no usable subject folder with images named by contrast{first}")
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
        if source is not None:
            _refuse_input_folder(source, output)
    for job in jobs:
        check_output(job, overwrite)
    return jobs


def with_masks(jobs: list[Job], overwrite: bool) -> list[Job]:
    """The volume jobs given where their brain mask goes (``--save-mask``, :func:`mask_path`);
    an existing mask is refused before any work unless ``overwrite``."""
    planned = [dataclasses.replace(job, mask=mask_path(job.output)) if job.kind == "volume" else job
               for job in jobs]  # fmt: skip
    for job in planned:
        if job.mask is not None and job.mask.exists() and not overwrite:
            raise DataError(f"{job.mask}: exists; pass --overwrite to replace it")
    return planned


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


def _job(source: Path, output: Path, kind: str, output_format: str, uncertainty: bool) -> Job:
    spread = uncertainty_path(output) if uncertainty and kind == "volume" else None
    return Job(source, output, kind, output_format, spread)


def output_name(path: Path, kind: str | None, output_format: str = "nifti") -> str:
    """``sub-01_T1.nii.gz`` -> ``sub-01_T1_synth.nii.gz``; a DICOM folder gives
    ``<folder>_synth.nii.gz``, or the series folder ``<folder>_synth`` for DICOM output. A file
    of a format the program reads but does not write gives ``<name>_synth.nii.gz``."""
    name = path.name
    stem, suffix = split_suffix(name)
    found = file_format(name)
    if output_format == "dicom":
        return f"{stem if found is not None and found.kind == 'volume' else name}_synth"
    if found is not None and found.write is not None:
        return f"{stem}_synth{suffix}"
    if found is not None:  # read only: its prediction is a NIfTI file
        return f"{stem}_synth.nii.gz"
    return f"{name}_synth.nii.gz" if kind == "volume" else f"{name}_synth.png"


def check_output(job: Job, overwrite: bool) -> None:
    """Refuse, before any work, an output of the wrong kind, one that exists (unless
    ``overwrite``), one that would replace its input, or one that cannot be written."""
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
    for source in job.sources or (job.source,):
        if job.output.resolve() == source.resolve():
            raise DataError(f"{job.output}: the output would replace its own input {source}")
        if source.is_dir() and source.resolve() in job.output.resolve().parents:
            # Read back next time: as a slice of the series, or as a batch instead of it.
            raise DataError(f"{job.output}: inside the input series folder {source}; it would be read "
                            "as part of that input next time; write it outside")  # fmt: skip
    if job.output_format == "dicom":  # a series is a folder of files
        check_writable_folder(job.output.parent, "output", target=job.output)
    else:
        check_writable_output(job.output)  # now, not after the whole inference has run
