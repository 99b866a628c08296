"""BIDS in, BIDS derivative out: ``mri2mri predict CHECKPOINT BIDS_ROOT OUT --bids``.

Every anatomical image of the model's source contrast in a BIDS dataset
(``sub-XX/[ses-YY/]anat/sub-XX[_ses-YY][_acq-..][_run-..]_T1w.nii.gz``) gets a synthetic
image of the target contrast in a derivative dataset::

    OUT/dataset_description.json   DatasetType "derivative", GeneratedBy mri2mri, DatasetLinks
    OUT/sub-XX/[ses-YY/]anat/sub-XX[_ses-YY][_acq-..][_run-..]_desc-synthetic_T2w.nii.gz
    OUT/sub-XX/[ses-YY/]anat/sub-XX[_ses-YY][_acq-..][_run-..]_desc-synthetic_T2w.json

Contrasts map to BIDS suffixes as follows (:data:`SUFFIXES`): T1 -> ``T1w``, T2 -> ``T2w``,
FLAIR -> ``FLAIR``, PD -> ``PDw``, and T1c (contrast-enhanced T1) -> ``T1w`` with the entity
``ce-gadolinium``, since BIDS has no suffix of its own for a post-contrast T1. A T1 source
never picks up a ``ce-`` image, and a T1c source picks up only those. The input's ``acq``,
``rec`` and ``run`` entities are kept, so two acquisitions of one session give two outputs.

The sidecar's ``Sources`` is a BIDS URI (``bids:raw:sub-01/anat/sub-01_T1w.nii.gz``), with
``raw`` declared in ``DatasetLinks`` of dataset_description.json as the input dataset; it
also records the model file, its SHA-256, the software version and the intensity scale.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mri2mri import __version__, atomic, console
from mri2mri.data.formats import NIFTI_SUFFIXES
from mri2mri.errors import DataError
from mri2mri.options import check_uncertainty

BIDS_VERSION = "1.9.0"
DESCRIPTION = "dataset_description.json"
DATASET_LINK = "raw"  # the name of the input dataset in DatasetLinks and in Sources URIs
# contrast -> (suffix, ce entity or None)
SUFFIXES: dict[str, tuple[str, str | None]] = {
    "T1": ("T1w", None),
    "T2": ("T2w", None),
    "FLAIR": ("FLAIR", None),
    "PD": ("PDw", None),
    "T1C": ("T1w", "gadolinium"),
}
KEPT_ENTITIES = ("acq", "rec", "run")  # of the input, carried into the output name
_ENTITY = re.compile(r"([a-zA-Z0-9]+)-([a-zA-Z0-9]+)")


@dataclass(frozen=True)
class BidsInput:
    """One source image of a BIDS dataset and where its synthetic image goes."""

    path: Path
    relative: str  # the path inside the dataset, with forward slashes
    entities: dict[str, str]  # "sub", "ses", "acq", ... of the input file name
    output: Path
    sidecar: Path


def is_bids_dataset(path: Path | str) -> bool:
    """A folder holding ``dataset_description.json``."""
    return Path(path).is_dir() and (Path(path) / DESCRIPTION).is_file()


def suffix_of(contrast: str) -> tuple[str, str | None]:
    """The BIDS suffix and ``ce`` entity of a contrast name (see the module docstring)."""
    try:
        return SUFFIXES[contrast.upper()]
    except KeyError:
        raise DataError(f"no BIDS suffix for the contrast {contrast!r}; known: {', '.join(SUFFIXES)}") from None


def parse_name(name: str) -> tuple[dict[str, str], str, str] | None:
    """``sub-01_ses-1_T1w.nii.gz`` -> ({"sub": "01", "ses": "1"}, "T1w", ".nii.gz"); None when not BIDS."""
    for extension in sorted(NIFTI_SUFFIXES, key=len, reverse=True):
        if name.endswith(extension):
            stem = name[: -len(extension)]
            break
    else:
        return None
    *parts, suffix = stem.split("_")
    entities = {}
    for part in parts:
        match = _ENTITY.fullmatch(part)
        if not match:
            return None
        entities[match.group(1)] = match.group(2)
    if "sub" not in entities:
        return None
    return entities, suffix, extension


def output_name(entities: dict[str, str], target: str) -> str:
    """The derivative's file stem for an input's entities and the target contrast."""
    suffix, ce = suffix_of(target)
    parts = [f"sub-{entities['sub']}"]
    if "ses" in entities:
        parts.append(f"ses-{entities['ses']}")
    if "acq" in entities:
        parts.append(f"acq-{entities['acq']}")
    if ce:
        parts.append(f"ce-{ce}")
    parts += [f"{key}-{entities[key]}" for key in ("rec", "run") if key in entities]
    parts += ["desc-synthetic", suffix]
    return "_".join(parts)


def find_inputs(root: Path, source: str, target: str, out: Path, problems: list[str] | None = None) -> list[BidsInput]:
    """Every image of the ``source`` contrast under ``root``'s ``sub-*/[ses-*/]anat`` folders.

    An image that ends like one of the source contrast but whose name is not valid BIDS (a
    label with ``_``, a space...) is left out, and named with the reason in ``problems``."""
    suffix, ce = suffix_of(source)
    found = []
    for path in sorted(root.glob("sub-*/anat/*.nii*")) + sorted(root.glob("sub-*/ses-*/anat/*.nii*")):
        parsed = parse_name(path.name)
        if parsed is None:
            if problems is not None and _looks_like(path.name, suffix, ce):
                problems.append(f"{path}: not a valid BIDS name (entity labels are letters and digits "
                                "only); rename it to be synthesised")  # fmt: skip
            continue
        entities, file_suffix, _ = parsed
        if file_suffix != suffix or entities.get("ce") != ce or "desc" in entities:
            continue
        relative = path.relative_to(root).as_posix()
        folder = out / relative.rsplit("/", 1)[0]
        stem = output_name(entities, target)
        found.append(BidsInput(path, relative, entities, folder / f"{stem}.nii.gz", folder / f"{stem}.json"))
    return found


def _looks_like(name: str, suffix: str, ce: str | None) -> bool:
    """Whether a file name that is not valid BIDS still reads as an image of ``suffix`` (and ``ce``)."""
    stem = name.split(".", 1)[0]
    return stem.endswith(f"_{suffix}") and (f"_ce-{ce}_" in stem if ce else "_ce-" not in stem)


def dataset_description(root: Path, target: str) -> dict[str, Any]:
    """The derivative's dataset_description.json."""
    suffix, _ = suffix_of(target)
    return {
        "Name": f"mri2mri synthetic {suffix} images",
        "BIDSVersion": BIDS_VERSION,
        "DatasetType": "derivative",
        "GeneratedBy": [{
            "Name": "mri2mri",
            "Version": __version__,
            "Description": "MRI contrast translation with a conditional GAN; images are synthetic, "
                           "not acquired, and not for diagnosis",
        }],  # fmt: skip
        "SourceDatasets": [{"URL": root.resolve().as_uri()}],
        "DatasetLinks": {DATASET_LINK: root.resolve().as_uri()},
    }


def sidecar(item: BidsInput, info: Any, checkpoint_sha256: str, uncertainty: str | None) -> dict[str, Any]:
    """The JSON sidecar of one synthetic image."""
    from mri2mri.predict.outputs import INTENSITY_SCALE

    payload = {
        "Description": f"synthetic {info.data.target} image synthesised from the {info.data.source} "
                       f"image in Sources by mri2mri; not acquired, not for diagnosis",
        "Sources": [f"bids:{DATASET_LINK}:{item.relative}"],
        "SyntheticData": True,
        "SourceContrast": info.data.source,
        "TargetContrast": info.data.target,
        "Model": info.name,
        "ModelFormat": info.kind,
        "Generator": info.config.model.generator,
        "CheckpointSHA256": checkpoint_sha256,
        "SoftwareName": "mri2mri",
        "SoftwareVersion": __version__,
        "IntensityScale": INTENSITY_SCALE,
    }  # fmt: skip
    if "correction_weight" in info.provenance:  # a residual model: how much of its correction it added
        payload["CorrectionWeight"] = info.provenance["correction_weight"]
    if "test_time_passes" in info.provenance:  # the mean of that many passes (predict --tta)
        payload["TestTimePasses"] = info.provenance["test_time_passes"]
    if uncertainty:
        payload["UncertaintyMap"] = uncertainty
    return payload


def model_file(checkpoint: Path) -> Path:
    """The file whose SHA-256 the sidecars record (a run folder's best checkpoint)."""
    checkpoint = Path(checkpoint)
    if checkpoint.suffix.lower() == ".onnx":
        return checkpoint
    from mri2mri.runfolder import find_checkpoint

    return find_checkpoint(checkpoint, "best")


def predict_bids(
    checkpoint: Path | str,
    root: Path | str,
    out: Path | str,
    *,
    device: str = "auto",
    batch_size: int = 16,
    overwrite: bool = False,
    precision: str = "fp32",
    uncertainty: bool = False,
    uncertainty_passes: int | None = None,
    correction_weight: float | None = None,
    allow_synthetic_input: bool = False, tta_passes: int = 1,
) -> list[Path]:
    """Synthesise the target contrast of every source image of the BIDS dataset ``root`` into
    the derivative dataset ``out``; returns the files written (images, sidecars, description).
    ``tta_passes`` (K > 1): each image is the mean of K test-time passes (``predict --tta``).

    Existing outputs are refused unless ``overwrite``, before any work; a bad input is reported
    and skipped, and a :class:`DataError` at the end says how many failed.
    """
    from mri2mri.predict import (
        Job,
        check_batch_folder,
        check_output,
        file_sha256,
        load_model,
        predict_job,
        uncertainty_path,
        with_tta,
    )
    from mri2mri.pretrained import resolve_model

    root, out = Path(root), Path(out)
    if not is_bids_dataset(root):
        raise DataError(f"{root}: not a BIDS dataset (no {DESCRIPTION})")
    inside = out.resolve() == root.resolve() or root.resolve() in out.resolve().parents
    if inside and "derivatives" not in out.resolve().relative_to(root.resolve()).parts:
        raise DataError(f"{out}: a derivative goes into its own folder (e.g. {root}/derivatives/mri2mri)")
    check_batch_folder(out, "image")
    passes = check_uncertainty(uncertainty, uncertainty_passes)
    checkpoint = resolve_model(checkpoint)  # a ready-made model's name -> its verified weights
    weights = model_file(checkpoint)
    run, info = load_model(checkpoint, device=device, precision=precision, correction_weight=correction_weight)
    info = with_tta(info, tta_passes)  # refuses a --tta out of range before any image is read
    if len(info.sources) > 1:
        raise DataError(f"{checkpoint}: a model of several sources ({info.source_name}) does not take a BIDS "
                        "dataset yet; give each subject folder, or --input CONTRAST=FILE for each")  # fmt: skip
    skipped: list[str] = []  # images left out before any work, each named with its reason
    items = [item for item in find_inputs(root, info.data.source, info.data.target, out, skipped)
             if allow_synthetic_input or _acquired(item.path, skipped)]  # fmt: skip
    for problem in skipped:
        console.skipped(problem)
    if not items:
        suffix, ce = suffix_of(info.data.source)
        what = f"*_{suffix}.nii[.gz]" + (f" with ce-{ce}" if ce else "")
        first = f" (first left out: {skipped[0]})" if skipped else ""
        raise DataError(f"{root}: no sub-*/[ses-*/]anat/{what} image of the model's source contrast{first}")
    jobs = [Job(i.path, i.output, "volume", "nifti", uncertainty_path(i.output) if uncertainty else None)
            for i in items]  # fmt: skip
    for job, item in zip(jobs, items, strict=True):
        check_output(job, overwrite)
        if item.sidecar.exists() and not overwrite:
            raise DataError(f"{item.sidecar}: exists; pass --overwrite to replace it")
    written = [write_description(out, root, info.data.target, overwrite)]
    digest = file_sha256(weights)
    failures = list(skipped)
    for job, item in zip(jobs, items, strict=True):
        try:
            files = predict_job(run, info, job, batch_size, passes, overwrite, tta_passes=tta_passes)
        except DataError as error:
            failures.append(str(error))
            console.skipped(error)
            continue
        spread = job.uncertainty.name if job.uncertainty is not None else None
        atomic.write_text(item.sidecar, json.dumps(sidecar(item, info, digest, spread), indent=2) + "\n")
        written += [*files, item.sidecar]
    if failures:
        raise DataError(f"{root}: {len(failures)} of {len(jobs) + len(skipped)} inputs failed (first: {failures[0]})")
    return written


def _acquired(path: Path, problems: list[str]) -> bool:
    """Whether ``path`` is not marked synthetic; a synthetic one is added to ``problems``."""
    from mri2mri.predict.jobs import refuse_synthetic

    try:
        refuse_synthetic(path)
    except DataError as error:
        problems.append(str(error))
        return False
    return True


def write_description(out: Path, root: Path, target: str, overwrite: bool) -> Path:
    """Write ``out/dataset_description.json``; one of another dataset is never replaced silently."""
    path = out / DESCRIPTION
    if path.is_file() and not overwrite:
        try:
            existing = json.loads(path.read_text("utf-8"))
        except (OSError, ValueError):
            existing = {}
        names = [g.get("Name") for g in existing.get("GeneratedBy", []) if isinstance(g, dict)]
        if "mri2mri" not in names:
            raise DataError(f"{path}: exists and was not made by mri2mri; pass --overwrite to replace it")
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(path, json.dumps(dataset_description(root, target), indent=2) + "\n")
    return path
