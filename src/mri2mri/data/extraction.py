"""Brain extraction: the skull and neck of a raw study removed before the intensity window.

Every volume the models train on is skull-stripped; a study as it leaves the scanner is not, and
a network that has only seen brain reads scalp fat and neck muscle as tissue to translate. This
step removes them, as the first step of :func:`mri2mri.data.geometry.slice_volume`, so that the
training cache (:mod:`mri2mri.data.preprocess`) and prediction (:mod:`mri2mri.portable`, the
PyTorch and the ONNX routes alike) strip a volume identically. ``DataConfig.brain_extraction``:

* ``"auto"`` (the default): extract only when the first source is not already skull-stripped
  (:func:`is_skull_stripped`), so skull-stripped data behave exactly as before the step existed;
* ``"deepbet"``: always; ``"none"``: never.

2D images (PNG/TIFF pairs) are used as they are: a single slice is no input for a 3D extractor.

The extractor is deepbet (Fisch et al., "deepbet: Fast brain extraction of T1-weighted MRI using
Convolutional Neural Networks", Comput. Biol. Med. 2024; MIT licence): two 3D U-Nets, one finding
the brain's bounding box on a 128^3 copy and one segmenting it at 256^3 inside that box. Its
weights ship inside its wheel as TorchScript archives (``torch.jit.load``: code and tensors, not
pickled Python objects, so no ``weights_only=False`` load is involved) and are read from there;
nothing is downloaded. It needs PyTorch: an ONNX prediction imports it only when a volume must
be stripped. It runs on the CPU whatever the device of the model, so that a mask never depends
on where it was computed, and on the first source (a T1, the contrast deepbet was trained on);
the mask is carried onto the other sources, which are on the first source's grid by then.

deepbet answers every input with some mask (it found a third of a volume of uniform noise to
be brain), so :func:`check_brain` refuses a mask of implausible size or one whose inside looks
like its outside, and :func:`check_volume_shape` refuses a 2D localiser before it runs.
"""

from __future__ import annotations

import functools
import time
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from mri2mri.errors import ConfigError, DataError

# A volume whose voxels are exactly zero at least this often has a stripped (zero) background.
ZERO_BACKGROUND_FRACTION = 0.1
# A zero-background volume whose non-zero voxels fill more than this many millilitres holds more
# than a brain: the scanner zeroed the air around a head (the raw study: 58 % zeros, 2577 mL
# non-zero over 117 mm of coverage; the 27 skull-stripped patients: 1016-1639 mL).
MAX_STRIPPED_ML = 2200.0
# Past that size, ``auto`` asks deepbet: a zero-background volume whose non-zero voxels are at
# least this share brain is skull-stripped already (a large simulated brain of the built-in data:
# 94 %; the raw study's head: 52 %) and is used as it is.
STRIPPED_BRAIN_SHARE = 0.8
# The brain deepbet finds must lie in this range (an adult intracranial volume is 1.1-1.9 L; a
# scan may cover part of it), and its intensities must differ from those around it by at least
# this Kolmogorov-Smirnov distance (uniform noise: ~0.02; the raw study's T1: ~0.8).
MIN_BRAIN_ML, MAX_BRAIN_ML = 250.0, 2500.0
MIN_SEPARATION = 0.3
# A head volume has at least this many slices along each axis and this many mm of coverage; a 2D
# localiser (one slice, or three orthogonal ones) has not.
MIN_SLICES, MIN_EXTENT_MM = 8, 40.0
THRESHOLD = 0.5  # deepbet's own default cut of its brain probability


def has_zero_background(volume: np.ndarray) -> bool:
    """Skull-stripped data: a sizeable share of voxels is exactly zero."""
    return float(np.count_nonzero(volume == 0)) >= ZERO_BACKGROUND_FRACTION * volume.size


def is_skull_stripped(data: np.ndarray, spacing: Sequence[float]) -> bool:
    """A zero background (:func:`has_zero_background`) around no more non-zero tissue than a
    brain holds (:data:`MAX_STRIPPED_ML`)."""
    if not has_zero_background(data):
        return False
    return np.count_nonzero(data) * float(np.prod(spacing)) / 1000.0 <= MAX_STRIPPED_ML


def check_volume_shape(shape: Sequence[int], spacing: Sequence[float], where: str) -> None:
    """A :class:`DataError` for a volume too thin to hold a head (a 2D localiser)."""
    extent = [n * s for n, s in zip(shape, spacing, strict=True)]
    if min(shape) < MIN_SLICES or min(extent) < MIN_EXTENT_MM:
        dims = " x ".join(str(int(n)) for n in shape)
        raise DataError(f"{where}: {dims} voxels covering {min(extent):.0f} mm at most along one axis is a "
                        "2D image (a localiser?), not a volume of the head; brain extraction needs a 3D scan")  # fmt: skip


def check_brain(mask: np.ndarray, data: np.ndarray, spacing: Sequence[float], where: str) -> float:
    """The brain volume in mL; a :class:`DataError` naming ``where`` when no brain was found."""
    volume_ml = int(mask.sum()) * float(np.prod(spacing)) / 1000.0
    if not MIN_BRAIN_ML <= volume_ml <= MAX_BRAIN_ML:
        raise DataError(f"{where}: no brain found (the extracted region holds {volume_ml:.0f} mL, not "
                        f"{MIN_BRAIN_ML:.0f}-{MAX_BRAIN_ML:.0f} mL); is it a head MRI?")  # fmt: skip
    separation = _ks_distance(data[mask], data[~mask])
    if separation < MIN_SEPARATION:
        raise DataError(f"{where}: no brain found (the extracted region looks like its surroundings, "
                        f"separation {separation:.2f} < {MIN_SEPARATION}); is it a head MRI?")  # fmt: skip
    return volume_ml


def _ks_distance(a: np.ndarray, b: np.ndarray, samples: int = 200_000) -> float:
    """Kolmogorov-Smirnov distance of two samples (each thinned to at most ``samples`` values)."""
    if a.size == 0 or b.size == 0:
        return 0.0
    a = np.sort(a[:: max(1, a.size // samples)])
    b = np.sort(b[:: max(1, b.size // samples)])
    points = np.concatenate([a, b])
    cdf_a = np.searchsorted(a, points, side="right") / a.size
    cdf_b = np.searchsorted(b, points, side="right") / b.size
    return float(np.abs(cdf_a - cdf_b).max())


@functools.lru_cache(maxsize=1)
def _deepbet():
    """deepbet's extractor with its packaged weights, on the CPU (loaded once per process)."""
    try:
        from deepbet import BrainExtraction
    except ImportError as error:
        raise ConfigError(f"brain extraction needs the deepbet package and PyTorch ({error}); install "
                          "them, or give a skull-stripped volume, or pass --brain-extraction none") from None  # fmt: skip
    with warnings.catch_warnings():  # torch's notice that TorchScript is deprecated: not the user's concern
        warnings.simplefilter("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*torch.jit.load.*")
        return BrainExtraction(no_gpu=True)


def deepbet_mask(data: np.ndarray) -> np.ndarray:
    """deepbet's brain mask of a canonical (RAS) volume: its probability cut at :data:`THRESHOLD`,
    the largest component kept and its holes filled (deepbet's own post-processing)."""
    extractor = _deepbet()
    probability = extractor.run_model(np.array(data, dtype=np.float32))
    return np.asarray(extractor.postprocess(probability > THRESHOLD), dtype=bool)


def extraction_mask(
    data: np.ndarray, spacing: Sequence[float], method: str, where: str
) -> tuple[np.ndarray | None, dict[str, Any]]:
    """``(mask, record)``: the brain mask of the first source (None when nothing is extracted)
    and what was done, for the cache and every output's provenance."""
    if method not in ("auto", "deepbet", "none"):
        raise ValueError(f"unknown brain extraction {method!r}; choose one of auto, deepbet, none")
    if method == "none":
        return None, {"method": "none"}
    if method == "auto" and is_skull_stripped(data, spacing):
        return None, {"method": "none", "asked": "auto", "reason": "already skull-stripped (zero background)"}
    check_volume_shape(data.shape, spacing, where)
    start = time.perf_counter()
    mask = deepbet_mask(data)
    if method == "auto" and has_zero_background(data):
        share = float(np.count_nonzero(mask & (data != 0))) / max(int(np.count_nonzero(data)), 1)
        if share >= STRIPPED_BRAIN_SHARE:
            return None, {"method": "none", "asked": "auto",
                          "reason": f"already skull-stripped (deepbet's brain holds {share:.0%} of the non-zero voxels)"}  # fmt: skip
    volume_ml = check_brain(mask, data, spacing, where)
    from importlib.metadata import version

    return mask, {"method": "deepbet", "asked": method, "deepbet_version": version("deepbet"),
                  "threshold": THRESHOLD, "device": "cpu", "on": where,
                  "brain_ml": round(volume_ml, 1), "seconds": round(time.perf_counter() - start, 2)}  # fmt: skip


def strip(
    sources: Sequence[tuple[np.ndarray, str]], target: tuple[np.ndarray, str] | None,
    spacing: Sequence[float], method: str,
) -> tuple[list[tuple[np.ndarray, str]], tuple[np.ndarray, str] | None, dict[str, Any]]:
    """The sources (and a training target), all on one grid, set to 0 outside the brain mask
    of the first source; with the record of :func:`extraction_mask`."""
    mask, record = extraction_mask(sources[0][0], spacing, method, sources[0][1])
    if mask is None:
        return list(sources), target, record
    zero = np.float32(0.0)
    stripped = [(np.where(mask, data, zero).astype(np.float32), where) for data, where in sources]
    if target is not None:
        target = (np.where(mask, target[0], zero).astype(np.float32), target[1])
    return stripped, target, record
