"""The contrast check's reference: what the training subjects' source (and target) intensities
looked like, so that ``predict`` can warn when an input looks unlike the contrast the model learnt.

Made once when training starts (:func:`reference_from_cache`, saved in the checkpoint and the
ONNX metadata); for older checkpoints without one it is rebuilt from the run's slice cache.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from mri2mri import portable
from mri2mri.config import RunConfig
from mri2mri.data.discovery import canonical_contrast
from mri2mri.errors import UserError
from mri2mri.runfolder import RunFolder, run_folder_of

# A sample of the training slices is enough for a histogram: at most this many subjects, and
# this many evenly spaced slices of each.
REFERENCE_SUBJECTS = 64
REFERENCE_SLICES = 24


def source_reference_of(checkpoint: Path, config: RunConfig, payload: dict[str, Any]) -> dict[str, Any] | None:
    """The contrast-check reference saved in the checkpoint, else one made from its run's cache."""
    reference = payload.get("source_reference")
    if isinstance(reference, dict):
        return reference
    return reference_from_run(run_folder_of(checkpoint), config)


def reference_from_run(run_dir: Path | None, config: RunConfig) -> dict[str, Any] | None:
    """The source reference from the run folder's slice cache (``run/cache``), when it is there."""
    from mri2mri.data.cache import SliceCache, is_cache

    if run_dir is None or not is_cache(RunFolder(run_dir).cache):
        return None
    try:
        return reference_from_cache(SliceCache(RunFolder(run_dir).cache), config.data.source, config.data.target)
    except (UserError, OSError, ValueError, KeyError):
        return None  # a damaged cache only costs the contrast check, never the prediction


def reference_from_cache(
    cache, contrast: str | tuple[str, ...], target_contrast: str | None = None, channel: int | None = None
) -> dict[str, Any] | None:
    """Histograms of the training subjects' normalised brain voxels (a sample of slices): the
    source's, and the target's too when ``target_contrast`` is given.

    For several source contrasts the reference is the first source's, with ``sources`` holding
    one reference per contrast (read from that contrast's own slice) for the check of each input."""
    if not isinstance(contrast, str) and len(contrast) == 1:
        contrast = contrast[0]
    if not isinstance(contrast, str):
        per_source = cache.in_channels // len(contrast)
        context = (per_source - 1) // 2
        references = {}
        for k, name in enumerate(contrast):
            reference = reference_from_cache(cache, name, target_contrast, channel=k * per_source + context)
            if reference is None:
                return None
            references[canonical_contrast(name)] = reference
        return {**references[canonical_contrast(contrast[0])], "sources": references}
    sources, targets = [], []
    for record in cache.subjects_in("train")[:REFERENCE_SUBJECTS]:
        start, stop = record.rows
        if stop <= start:
            continue
        rows = np.unique(
            np.linspace(start, stop - 1, min(REFERENCE_SLICES, stop - start)).astype(int)
        )
        mask = np.asarray(cache.mask[rows])
        histogram = portable.intensity_histogram(np.asarray(cache.source[rows]), mask, channel)
        if histogram.sum() > 0:
            sources.append(histogram)
            targets.append(portable.intensity_histogram(np.asarray(cache.target[rows]), mask))
    if not sources:
        return None
    return portable.source_reference(sources, contrast, targets if target_contrast else None, target_contrast)
