"""The model card: what an exported model was trained on, how well it did, and what it must not do.

The card is written beside every exported model (``mri2mri export``), named after it
(``g.onnx`` -> ``g_MODEL_CARD.md``, one card for ``g.onnx`` and ``g.safetensors`` side by
side), so that several models can share a folder. It reads what the run
folder holds (:class:`~mri2mri.runfolder.RunFolder`), defensively: the subject split (the run's
or its cache's), the run summary and the test metrics (schema in :mod:`mri2mri.evaluation`) may
each be missing, unreadable or older than this code; a missing part is said to be missing,
never invented.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from mri2mri import __version__
from mri2mri.config import RunConfig
from mri2mri.errors import DataError
from mri2mri.metrics import CARD_METRICS
from mri2mri.pretrained import format_spread
from mri2mri.runfolder import RunFolder, read_json_object

CARD_SUFFIX = "_MODEL_CARD.md"
METRIC_COLUMNS = CARD_METRICS
SPLITS = ("train", "val", "test")

T = TypeVar("T")
_NAMES = RunFolder(Path())  # for the names of a run folder's files in the card's text


def _optional(read: Callable[[], T]) -> T | None:
    """What ``read`` returns, or None when the file it reads is missing or unreadable."""
    try:
        return read()
    except DataError:
        return None


def _split(folder: RunFolder | None) -> dict[str, list[str]] | None:
    split = _optional(folder.read_split) if folder else None
    if not split or not any(s in split for s in SPLITS):
        return None
    return {s: split.get(s, []) for s in SPLITS}


def _slice_counts(folder: RunFolder | None) -> dict[str, int] | None:
    """Slices per split from the index of the run's cache, when the cache is there."""
    meta = _optional(lambda: read_json_object(folder.cache_index, what="cache index")) if folder else None
    if not isinstance(meta, dict) or not isinstance(meta.get("subjects"), list):
        return None
    counts = dict.fromkeys(SPLITS, 0)
    for record in meta["subjects"]:
        try:
            start, stop = record["rows"]
            counts[record["split"]] += int(stop) - int(start)
        except (KeyError, TypeError, ValueError):
            continue
    return counts


def _number(value: Any, digits: int = 4) -> str:
    return (
        f"{value:.{digits}g}"
        if isinstance(value, int | float) and not isinstance(value, bool)
        else "n/a"
    )


def _metrics_section(metrics: Any) -> list[str]:
    if not isinstance(metrics, dict) or not isinstance(metrics.get("summary"), dict):
        return [f"No test metrics: the run folder has no readable {_NAMES.metrics.name}. "
                "Run `mri2mri test RUN_DIR` before sharing the model."]  # fmt: skip
    summary = metrics["summary"]
    methods = [m for m in metrics.get("methods", summary) if isinstance(summary.get(m), dict)]
    columns = [c for c in METRIC_COLUMNS if any(c in summary[m] for m in methods)]
    test_set = metrics.get("test_set") if isinstance(metrics.get("test_set"), dict) else {}
    subjects = test_set.get("subjects") if isinstance(test_set.get("subjects"), list) else []
    lines = [
        f"On the {metrics.get('split', 'test')} split ({len(subjects)} subjects, "
        f"{test_set.get('n_slices', 'n/a')} slices) with `mri2mri test`; means over slices "
        "(volume_psnr, histogram_w1: over subjects). Images in [0, 1]; `_mask` metrics use brain "
        "voxels only; `_window` metrics score each image after windowing it by its own 0.5-99.5th "
        "percentiles of the subject's brain voxels; histogram_w1 is the distance between the "
        "predicted and the real brain-intensity histograms (lower is better). "
        "`identity` copies the input, `intensity-map` is a per-intensity lookup table fitted on "
        "the training split: a model that does not beat it has learnt little beyond a grey-level mapping.",
        "",
        "| method | " + " | ".join(columns) + " |",
        "|---" * (len(columns) + 1) + "|",
    ]
    for method in methods:
        values = summary[method]
        lines.append(f"| {method} | " + " | ".join(_number(values.get(c)) for c in columns) + " |")
    if "beats_intensity_map" in metrics:
        lines += [
            "",
            f"Beats the intensity-map baseline: {'yes' if metrics['beats_intensity_map'] else 'no'}.",
        ]
    warnings = metrics.get("warnings")
    if isinstance(warnings, list) and warnings:
        lines += ["", "Evaluation warnings:", *[f"- {w}" for w in warnings[:10]]]
    return lines


def _split_lines(folder: RunFolder | None) -> list[str]:
    split, slices = _split(folder), _slice_counts(folder)
    if split is not None:
        counts = ", ".join(f"{len(split[s])} {s}" for s in SPLITS)
        lines = [f"- Subjects per split: {counts} (a subject is in one split only)."]
    else:
        lines = [f"- Subjects per split: unknown (no {_NAMES.split.name} in the run folder or its cache)."]
    if slices is not None:
        lines.append("- Slices per split: " + ", ".join(f"{slices[s]} {s}" for s in SPLITS) + ".")
    return lines


def _training_data_lines(config: RunConfig, subjects: list[str],
                         source_reference: dict[str, Any] | None) -> list[str]:  # fmt: skip
    """The training data section: ``subjects`` says who trained it, then how slices were made."""
    data, model = config.data, config.model
    source_name = ", ".join(data.sources)  # several sources: in channel order
    lines = ["## Training data", "", *subjects]
    lines += [
        f"- Contrasts: source {source_name}, target {data.target}.",
        f"- Axial slices resized to {data.image_size} x {data.image_size} px after cropping to the brain; "
        f"slices with at least {data.min_brain_fraction:.0%} brain were used for training.",
        f"- 2.5D context: {data.context_slices} neighbouring slice(s) on each side "
        f"({model.in_channels} input channels).",
        f"- Intensities: per-volume window [{data.percentiles[0]:g}, {data.percentiles[1]:g}] percentiles "
        "of brain voxels mapped to [0, 1]"
        + ("; each source's N4 bias field divided out first." if data.bias_correction == "n4" else "."),
    ]
    if source_reference:
        lines.append(
            f"- Source intensity reference: histogram of {source_reference.get('n_subjects')} training subjects' "
            f"normalised {source_name} brain voxels; `predict` warns when an input's distance to it exceeds "
            f"{source_reference.get('threshold')}"
            + (f" and the input lies closer to the training {data.target} histogram, or twice that far."
               if "target_histogram" in source_reference else ".")
        )  # fmt: skip
    return lines


def _network_lines(config: RunConfig, parameters: dict[str, int], summary: dict[str, Any]) -> list[str]:
    model, train = config.model, config.train
    return [
        "## Networks",
        "",
        f"- Generator `{model.generator}`: {parameters.get('generator', 0):,} parameters "
        f"(base_channels {model.base_channels}, norm {model.norm}, upsample {model.upsample})"
        + (f"; it adds a correction to the intensity-map table of its input, {model.correction_weight:g} "
           "of it at inference." if model.residual == "intensity-map" else "."),
        f"- Discriminator `{model.discriminator}` (training only, not exported): "
        f"{parameters.get('discriminator', 0):,} parameters.",
        f"- Training: {train.gan_loss} adversarial loss + {train.lambda_l1:g} x L1, lr {train.lr:g}, "
        f"batch {train.batch_size}, {summary.get('epochs', train.epochs)} epochs"
        + (f", {summary['steps']} steps" if "steps" in summary else "")
        + (f" on {summary['device']}" if "device" in summary else "")
        + ".",
    ]


def _limits_lines(config: RunConfig, *, same_source_metrics: bool = True) -> list[str]:
    data = config.data
    source_name = ", ".join(data.sources)
    return [
        "## Output",
        "",
        "`mri2mri predict` writes float32 NIfTI on the input's grid on a unit scale: 0 and 1 are the "
        "ends of the training target window, not scanner units (a weighted MR image has none that "
        "carry over). Voxels outside the input's brain mask are 0. The header's descrip field "
        "marks the image as synthetic.",
        "",
        "## Limits: what this model must not be used for",
        "",
        "- **Not for diagnosis** or any clinical decision. The output is a plausible "
        f"{data.target} image computed from the {source_name} image, not a measurement.",
        f"- It cannot show what the {source_name} image does not show: lesions, oedema or "
        f"other findings visible on a real {data.target} but not on {source_name} may be missing, "
        "and structures may be hallucinated. Never use a synthetic image to rule a finding in or out.",
        "- Only for data like the training data: other scanners, vendors, field strengths, "
        "sequences, resolutions, ages, pathologies or populations than those above are out of "
        "distribution and can fail silently. Skull-stripped and non-stripped data differ too.",
        *(["- Metrics above come from a small held-out split of the same source as the training "
           "data; they do not establish performance on any other data set."] if same_source_metrics else []),
        f"- Inputs must be {source_name}-weighted volumes; `predict` warns when the intensity "
        "distribution looks unlike the training source, but the check is coarse.",
        "- Quantitative use (volumetry, intensity-based segmentation, radiomics) of synthetic "
        "images has not been validated.",
        "",
    ]


def model_card_text(
    config: RunConfig,
    *,
    checkpoint: Path,
    run_dir: Path | None,
    parameters: dict[str, int],
    files: list[Path],
    source_reference: dict[str, Any] | None = None,
    exporter: str = "",
) -> str:
    """The card's Markdown."""
    data, model = config.data, config.model
    source_name = ", ".join(data.sources)  # several sources: in channel order
    folder = RunFolder(Path(run_dir)) if run_dir else None
    summary = (_optional(folder.read_summary) if folder else None) or {}
    metrics = _optional(folder.read_metrics) if folder else None
    lines = [
        f"# Model card: mri2mri {source_name} -> {data.target} ({model.generator})",
        "",
        f"Synthesises a **{data.target}-weighted** image from a **{source_name}-weighted** one. "
        f"Exported by mri2mri {__version__} from `{checkpoint.name}`.",
        "",
        "Files: " + ", ".join(f"`{f.name}`" for f in files) + ".",
    ]
    if exporter:
        lines += ["", f"ONNX exporter: {exporter}. Input `source` (B, {model.in_channels}, H, W) in [-1, 1], "
                      f"output `prediction` (B, {model.out_channels}, H, W) in [-1, 1]; B, H and W are dynamic "
                      "(H and W must suit the generator's stride)."]  # fmt: skip
    lines += ["", *_training_data_lines(config, _split_lines(folder), source_reference), ""]
    lines += [*_network_lines(config, parameters, summary), "", "## Test metrics", ""]
    lines += [*_metrics_section(metrics), "", *_limits_lines(config)]
    return "\n".join(lines)


def card_path(model: Path) -> Path:
    """The card of an exported model file: ``dir/g.onnx`` -> ``dir/g_MODEL_CARD.md``."""
    model = Path(model)
    return model.with_name(model.name.removesuffix(model.suffix) + CARD_SUFFIX)


def _ready_use_lines(entry: dict[str, Any], config: RunConfig) -> list[str]:
    data, name = config.data, entry["name"]
    example = ("t1.nii.gz t2_synthetic.nii.gz" if len(data.sources) == 1
               else "SUBJECT_FOLDER t2_synthetic.nii.gz   # a folder holding the " + ", ".join(data.sources))  # fmt: skip
    return [
        "## Use",
        "",
        "Research only: never for diagnosis or any clinical decision (see Limits).",
        "",
        "```",
        f"mri2mri predict {name} {example}",
        f"mri2mri predict {name} INPUT OUTPUT --uncertainty        # with a voxelwise uncertainty map",
        f"mri2mri export {name} --onnx {name}.onnx",
        "```",
        "",
        f"What a volume goes through: brain extraction when it is not skull-stripped "
        f"(`--brain-extraction {data.brain_extraction}`), "
        + ("N4 bias-field correction, " if data.bias_correction == "n4" else "")
        + f"reorientation to RAS, axial slices resampled to the training in-plane spacing and to "
        f"{data.image_size} x {data.image_size} px, intensities windowed per volume by the "
        f"{data.percentiles[0]:g}-{data.percentiles[1]:g}th percentiles of the brain; the output goes back onto "
        "the input's grid. Sources of several contrasts are resampled onto the first one's grid "
        "(`--register` aligns them rigidly first).",
    ]  # fmt: skip


def _ready_cv_lines(entry: dict[str, Any]) -> list[str]:
    name, cv = entry["name"], entry["cross_validation"]
    rows = [(f"`{name}` recipe", cv["model"]), (cv["baseline_name"], cv["baseline"])]
    return [
        "## Cross-validated quality: patients from a hospital the model never saw",
        "",
        f"{cv['protocol']} Pooled in-brain means ± std over {cv['runs']} runs; the baseline "
        f"`{cv['baseline_name']}` is fitted on each fold's training patients only. Windowed: each image "
        "windowed by its own 0.5-99.5th brain percentiles, as a viewer shows it. W1: distance between "
        "the synthetic and the real brain-intensity histograms (lower is better).",
        "",
        "| | PSNR brain (dB) | SSIM brain | PSNR windowed (dB) | SSIM windowed | W1 |",
        "| --- | --- | --- | --- | --- | --- |",
        *[f"| {label} | {format_spread(s, 'psnr_mask', 2)} | {format_spread(s, 'ssim_mask', 3)} | "
          f"{format_spread(s, 'psnr_mask_window', 2)} | {format_spread(s, 'ssim_mask_window', 3)} | "
          f"{format_spread(s, 'histogram_w1', 3)} |" for label, s in rows],
        "",
        f"Beats the intensity-map table's in-brain PSNR in {cv['beats_intensity_map']} runs. Made by:",
        "",
        "```",
        *cv["commands"],
        "```",
    ]  # fmt: skip


# What the cross-validation and the training data say about where a ready-made model fails.
_READY_FAILURES = [
    "## Where it fails",
    "",
    "- Lesions unlike the training tumours (gliomas): metastases, MS plaques, stroke, "
    "haemorrhage, and children's brains are out of distribution.",
    "- Other sites: the scores above are what a hospital the model never saw can expect, with "
    "the spread shown; single patients vary by several dB.",
    "- Raw studies: a volume with skull and neck must go through brain extraction (the default "
    "`auto` does it); thick slices stay thick, and the output is only as sharp as the input.",
    "- Bright structures of a T2 (CSF, oedema, cysts) come out less bright and less contrasted "
    "than on a real T2.",
]


def ready_model_card_text(entry: dict[str, Any], config: RunConfig, *, parameters: dict[str, int],
                          source_reference: dict[str, Any] | None = None) -> str:  # fmt: skip
    """The card of a ready-made model (:mod:`mri2mri.pretrained`), from its manifest ``entry``:
    who it was trained on, the cross-validated scores of its recipe, how to use it and where it
    fails."""
    data, name = config.data, entry["name"]
    training, storage = entry["training"], entry.get("storage", {})
    subjects = [f"- {training['patients']} patients with brain tumours, all used for training (no held-out split: "
                "the scores below come from the cross-validation of the same recipe):"]  # fmt: skip
    subjects += [f"  - {d['source']}: {d['patients']} ({d['sites']}). Cite: {d['cite']}. Licence: {d['licence']}."
                 for d in training["data"]]  # fmt: skip
    subjects.append("- Every volume skull-stripped, co-registered across its contrasts, 1 mm, SRI24 atlas space.")
    summary = {"epochs": training["epochs"], "steps": training["steps"],
               **({"device": training["device"]} if training.get("device") else {})}  # fmt: skip
    half = (f" (costs {storage['psnr_mask_change_db']:+.4f} dB of in-brain PSNR on {storage['slices']} training "
            f"slices; largest change of a voxel {storage['max_abs_change']:.1e})"
            if "psnr_mask_change_db" in storage else "")  # fmt: skip
    lines = [
        f"# Model card: mri2mri ready-made model `{name}` ({' + '.join(data.sources)} -> {data.target})",
        "",
        f"{entry['summary']}. Shipped with mri2mri {__version__}; weights `{entry['file']}` "
        f"(SHA-256 `{entry['sha256']}`, {storage.get('dtype', 'float32')}).",
        "",
        *_ready_use_lines(entry, config),
        "",
        *_training_data_lines(config, subjects, source_reference),
        "",
        *_network_lines(config, parameters, summary),
        f"- Seed {training['seed']}; weights: {training['weights']}{half}.",
        "",
        "Made by (`scripts/ready_models.py train` then `package`):",
        "",
        "```",
        *training["commands"],
        "```",
        "",
        *_ready_cv_lines(entry),
        "",
        *_READY_FAILURES,
        "",
        *_limits_lines(config, same_source_metrics=False),
    ]  # fmt: skip
    return "\n".join(lines)
