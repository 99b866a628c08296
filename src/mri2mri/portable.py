"""A prediction input prepared as training prepared its source, and the input contrast check.

``mri2mri predict model.onnx ...`` must run where PyTorch is not installed, so this module and
everything it imports is NumPy/SciPy: the steps themselves (brain extraction, which alone
imports PyTorch, and only for a volume with its skull on; brain mask, percentile
normalisation, crop / pad / resize geometry, 2.5D slicing and its inverse) are those of
:mod:`mri2mri.data.geometry`, run in their order by the very functions
(:func:`~mri2mri.data.geometry.slice_volume`, :func:`~mri2mri.data.geometry.square_image`) that
:mod:`mri2mri.data.preprocess` and :mod:`mri2mri.data.png` build the training cache with.
``tests/test_export.py`` runs the ONNX route with ``import torch`` made to fail.

It also holds the *source reference*: a histogram of the normalised intensities of the brain
voxels the model was trained on, stored in exported models, against which the input of a
prediction is compared to warn about a volume of the wrong contrast.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mri2mri.config import DataConfig
from mri2mri.data.geometry import Sliced, check_not_constant, slice_volume, square_image
from mri2mri.data.volume import Volume
from mri2mri.errors import UserError

# --------------------------------------------------------------------------------------------
# One input, prepared as training prepared its source


@dataclass
class PreparedInput:
    """A volume or 2D image prepared as the model's input."""

    slices: np.ndarray  # (n, C, S, S) float32 in [0, 1]
    mask: np.ndarray  # (n, 1, S, S) bool, the brain mask on the slices
    full_mask: np.ndarray  # the brain mask on the input's own (canonical or image) grid
    slice_indices: np.ndarray  # (n,) axial indices of the canonical volume ([0] for an image)
    geometry: dict[str, Any]
    norm: dict[str, float]  # {"low", "high"}: the (first) source window mapped to [0, 1]
    extraction: dict[str, Any] | None = None  # what brain extraction did (data/extraction.py)


def prepare_volume(
    volume: Volume, data_config: DataConfig, others: Sequence[tuple[np.ndarray, str]] = ()
) -> PreparedInput:
    """Every axial slice of a source volume, masked, normalised and sliced by the function that
    makes training's cache (:func:`~mri2mri.data.geometry.slice_volume`, which says where the
    two differ), for :func:`~mri2mri.data.geometry.slices_to_volume`.

    ``others`` are the further sources of a model of several, in its order, each ``(data, where)``
    already on ``volume``'s canonical grid: each is normalised on its own (inside ``volume``'s
    brain mask) and its slices stacked after the previous source's (contrast-major)."""
    check_not_constant(volume)
    return _prepared(slice_volume([(volume.data, str(volume.path)), *others], volume, data_config))


def prepare_image(image: np.ndarray, data_config: DataConfig, path: str = "") -> PreparedInput:
    """A 2D source image as data.png prepares one: the source repeated over the context channels."""
    return _prepared(square_image((image, path), data_config, path))


def _prepared(sliced: Sliced) -> PreparedInput:
    low, high = sliced.windows[0]
    return PreparedInput(slices=sliced.slices, mask=sliced.mask, full_mask=sliced.full_mask,
                         slice_indices=sliced.slice_indices, geometry=sliced.geometry,
                         norm={"low": low, "high": high}, extraction=sliced.extraction)  # fmt: skip


# --------------------------------------------------------------------------------------------
# Source reference: does the input look like what the model was trained on?

HISTOGRAM_BINS = 20
# The input is suspect when its distance from the training source's mean histogram exceeds
# max(MIN_THRESHOLD, FACTOR x the largest distance of a training subject from that mean): the
# spread of the training data sets the scale, and the floor keeps a small, homogeneous training
# set from making it hair-trigger. A suspect input is flagged when it also lies closer to the
# training *target* histogram than to the source's (a T2 given to a T1 -> T2 model), or more
# than FAR x the threshold from the source (unlike anything seen in training). The second
# reference matters on real data: a true T1 from another site can sit just past the threshold.
# Calibration on the three real cases of ../shared/data/real-mri (128 px, references = the other
# two cases; distances to the T1 / T2 reference): held-out T1s at 0.068/0.33, 0.056/0.35 and
# 0.100/0.24 (none flagged; the last one was flagged before the target reference was used);
# T2s at 0.28-0.34/0.02-0.05 (all flagged); FLAIRs at 0.18/0.11, 0.19/0.10, 0.079/0.26 and
# T1c at 0.26/0.08, 0.15/0.15, 0.10/0.23 (two of three flagged each; the others look like T1).
MIN_THRESHOLD = 0.1
FACTOR = 2.0
FAR = 2.0


def intensity_histogram(slices01: np.ndarray, mask: np.ndarray, channel: int | None = None) -> np.ndarray:
    """Normalised histogram (sums to 1) of one channel's brain voxels on [0, 1] (by default the
    centre channel; with several sources, each source's own slice)."""
    centre = slices01[:, slices01.shape[1] // 2 if channel is None else channel]
    values = centre[np.asarray(mask)[:, 0].astype(bool)]
    counts, _ = np.histogram(values, bins=HISTOGRAM_BINS, range=(0.0, 1.0))
    return counts / max(int(counts.sum()), 1)


def histogram_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Wasserstein-1 (earth mover's) distance of two histograms on [0, 1], in intensity units."""
    return float(np.abs(np.cumsum(a) - np.cumsum(b)).sum() / HISTOGRAM_BINS)


def source_reference(
    per_subject: list[np.ndarray],
    contrast: str,
    target_per_subject: list[np.ndarray] | None = None,
    target_contrast: str | None = None,
) -> dict[str, Any]:
    """The reference stored with a model: the training source's mean histogram and the warning
    threshold, and the training target's mean histogram when given."""
    histograms = np.asarray(per_subject, dtype=np.float64)
    mean = histograms.mean(axis=0)
    spread = max(histogram_distance(h, mean) for h in histograms)
    reference = {
        "contrast": contrast,
        "bins": HISTOGRAM_BINS,
        "histogram": [round(float(v), 6) for v in mean],
        "n_subjects": len(histograms),
        "max_subject_distance": round(spread, 6),
        "threshold": round(max(MIN_THRESHOLD, FACTOR * spread), 6),
    }
    if target_per_subject:
        target_mean = np.asarray(target_per_subject, dtype=np.float64).mean(axis=0)
        reference["target_contrast"] = target_contrast or "target"
        reference["target_histogram"] = [round(float(v), 6) for v in target_mean]
    return reference


def check_source(
    prepared: PreparedInput, reference: dict[str, Any] | None, *, channel: int | None = None,
    name: str | None = None,
) -> str | None:
    """A one-line warning when the input's intensities look unlike the training source, else None.

    With several sources it runs once per input: ``channel`` is that source's own slice,
    ``reference`` its entry of the stored reference's ``sources`` and ``name`` its file."""
    if not reference:
        return None
    expected = np.asarray(reference["histogram"], dtype=np.float64)
    if expected.size != HISTOGRAM_BINS:
        return None
    observed = intensity_histogram(prepared.slices, prepared.mask, channel)
    distance = histogram_distance(observed, expected)
    threshold = float(reference["threshold"])
    if distance <= threshold:
        return None
    name = name or prepared.geometry.get("grid_file", "input")
    contrast = reference.get("contrast", "source")
    question = f"is it really a {contrast} image?"
    target = np.asarray(reference.get("target_histogram", []), dtype=np.float64)
    if target.size == HISTOGRAM_BINS:  # older references have no target histogram
        target_distance = histogram_distance(observed, target)
        target_contrast = reference.get("target_contrast", "target")
        if target_distance < distance:
            return (f"{name}: its normalised brain intensities look more like the training "
                    f"{target_contrast} images (distance {target_distance:.3f}) than the training "
                    f"{contrast} images ({distance:.3f}); {question}")  # fmt: skip
        if distance <= FAR * threshold:
            return None  # a little off the source, far from the target: another site's scanner
    return (
        f"{name}: its normalised brain intensities differ from the training {contrast} images "
        f"(distance {distance:.3f} > {threshold:.3f}); {question}"
    )


def reference_from_json(text: str | None) -> dict[str, Any] | None:
    """Parse a stored reference; anything malformed counts as absent."""
    if not text:
        return None
    try:
        value = json.loads(text)
    except (TypeError, ValueError):
        return None
    return (
        value if isinstance(value, dict) and "histogram" in value and "threshold" in value else None
    )


# --------------------------------------------------------------------------------------------
# A broken model never writes an output


def check_finite_output(prediction: np.ndarray) -> None:
    """Refuse a model output holding NaN or infinity (a diverged model, an fp16 overflow): a
    synthetic image of NaN must never be written as if it were a result."""
    if not np.isfinite(prediction).all():
        raise UserError(
            "the model produced NaN or infinite values; nothing was written "
            "(the model is broken, or its precision overflows: try --precision fp32)"
        )


def check_finite_weights(arrays: Any, model_name: str) -> None:
    """Refuse a model whose weights (an iterable of ``(name, array)``) hold NaN or infinity,
    before any input is read: a run that diverged saves such weights."""
    for name, array in arrays:
        values = np.asarray(array)
        if values.dtype.kind in "fc" and not np.isfinite(values).all():
            raise UserError(
                f"{model_name}: weight {name} holds NaN or infinite values; the model is broken "
                "(its training diverged) and cannot synthesise anything"
            )


def onnx_initializers(path: str) -> list[tuple[str, np.ndarray]]:
    """The weights stored in an ONNX file (empty when the ``onnx`` package is absent: onnxruntime
    alone cannot list them, and the output check still catches a broken model)."""
    try:
        import onnx
        from onnx import numpy_helper
    except ImportError:
        return []
    model = onnx.load(path)
    return [(init.name, numpy_helper.to_array(init)) for init in model.graph.initializer]


def masked(values: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``values`` inside ``mask`` and exactly 0 outside (a product would keep NaN * 0 = NaN)."""
    return np.where(np.asarray(mask, dtype=bool), values, np.float32(0.0)).astype(values.dtype, copy=False)
