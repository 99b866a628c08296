"""MODEL_CARD.md: what an exported model was trained on, how well it did, and what it must not do.

The card is written beside every exported model (``mri2mri export``). It reads what the run
folder holds, defensively: ``split.json`` (or the run's cache), ``run_summary.json`` and
``metrics.json`` (schema in :mod:`mri2mri.evaluation`) may each be missing or older than this
code; a missing part is said to be missing, never invented.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mri2mri import __version__
from mri2mri.config import RunConfig

CARD_NAME = "MODEL_CARD.md"
METRIC_COLUMNS = ("psnr", "ssim", "mae", "nmse", "psnr_mask", "ssim_mask", "volume_psnr")
SPLITS = ("train", "val", "test")


def _read_json(path: Path | None) -> Any:
    """The JSON content of ``path``, or None when it is absent or unreadable."""
    if path is None or not path.is_file():
        return None
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _split(run_dir: Path | None) -> dict[str, list[str]] | None:
    if run_dir is None:
        return None
    for candidate in (run_dir / "split.json", run_dir / "cache" / "split.json"):
        payload = _read_json(candidate)
        if isinstance(payload, dict) and any(isinstance(payload.get(s), list) for s in SPLITS):
            return {
                s: [str(x) for x in payload.get(s, []) if isinstance(payload.get(s), list)]
                for s in SPLITS
            }
    return None


def _slice_counts(run_dir: Path | None) -> dict[str, int] | None:
    """Slices per split from the run's cache index (cache.json), when the cache is there."""
    meta = _read_json(run_dir / "cache" / "cache.json") if run_dir else None
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
        return ["No test metrics: the run folder has no readable metrics.json. "
                "Run `mri2mri test RUN_DIR` before sharing the model."]  # fmt: skip
    summary = metrics["summary"]
    methods = [m for m in metrics.get("methods", summary) if isinstance(summary.get(m), dict)]
    columns = [c for c in METRIC_COLUMNS if any(c in summary[m] for m in methods)]
    test_set = metrics.get("test_set") if isinstance(metrics.get("test_set"), dict) else {}
    subjects = test_set.get("subjects") if isinstance(test_set.get("subjects"), list) else []
    lines = [
        f"On the {metrics.get('split', 'test')} split ({len(subjects)} subjects, "
        f"{test_set.get('n_slices', 'n/a')} slices) with `mri2mri test`; means over slices "
        "(volume_psnr: over subjects). Images in [0, 1]; `_mask` metrics use brain voxels only. "
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
    data, model, train = config.data, config.model, config.train
    source_name = ", ".join(data.sources)  # several sources: in channel order
    split = _split(run_dir)
    slices = _slice_counts(run_dir)
    summary = _read_json(run_dir / "run_summary.json") if run_dir else None
    summary = summary if isinstance(summary, dict) else {}
    metrics = _read_json(run_dir / "metrics.json") if run_dir else None

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
    lines += ["", "## Training data", ""]
    if split is not None:
        counts = ", ".join(f"{len(split[s])} {s}" for s in SPLITS)
        lines.append(f"- Subjects per split: {counts} (a subject is in one split only).")
    else:
        lines.append(
            "- Subjects per split: unknown (no split.json in the run folder or its cache)."
        )
    if slices is not None:
        lines.append("- Slices per split: " + ", ".join(f"{slices[s]} {s}" for s in SPLITS) + ".")
    lines += [
        f"- Contrasts: source {source_name}, target {data.target}.",
        f"- Axial slices resized to {data.image_size} x {data.image_size} px after cropping to the brain; "
        f"slices with at least {data.min_brain_fraction:.0%} brain were used for training.",
        f"- 2.5D context: {data.context_slices} neighbouring slice(s) on each side "
        f"({model.in_channels} input channels).",
        f"- Intensities: per-volume window [{data.percentiles[0]:g}, {data.percentiles[1]:g}] percentiles "
        "of brain voxels mapped to [0, 1].",
    ]
    if source_reference:
        lines.append(
            f"- Source intensity reference: histogram of {source_reference.get('n_subjects')} training subjects' "
            f"normalised {source_name} brain voxels; `predict` warns when an input's distance to it exceeds "
            f"{source_reference.get('threshold')}"
            + (f" and the input lies closer to the training {data.target} histogram, or twice that far."
               if "target_histogram" in source_reference else ".")
        )  # fmt: skip
    lines += [
        "",
        "## Networks",
        "",
        f"- Generator `{model.generator}`: {parameters.get('generator', 0):,} parameters "
        f"(base_channels {model.base_channels}, norm {model.norm}, upsample {model.upsample}).",
        f"- Discriminator `{model.discriminator}` (training only, not exported): "
        f"{parameters.get('discriminator', 0):,} parameters.",
        f"- Training: {train.gan_loss} adversarial loss + {train.lambda_l1:g} x L1, lr {train.lr:g}, "
        f"batch {train.batch_size}, {summary.get('epochs', train.epochs)} epochs"
        + (f", {summary['steps']} steps" if "steps" in summary else "")
        + (f" on {summary['device']}" if "device" in summary else "")
        + ".",
        "",
        "## Test metrics",
        "",
        *_metrics_section(metrics),
        "",
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
        "- Metrics above come from a small held-out split of the same source as the training "
        "data; they do not establish performance on any other data set.",
        f"- Inputs must be {source_name}-weighted volumes; `predict` warns when the intensity "
        "distribution looks unlike the training source, but the check is coarse.",
        "- Quantitative use (volumetry, intensity-based segmentation, radiomics) of synthetic "
        "images has not been validated.",
        "",
    ]
    return "\n".join(lines)


def card_path(folder: Path) -> Path:
    return Path(folder) / CARD_NAME
