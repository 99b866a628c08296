"""Test-time augmentation: the voxelwise uncertainty of a synthetic image, and its average.

The model is run K times on transformed copies of each slice (pass k: a horizontal flip when k
is odd, and a shift by a pixel or two that grows with k; pass 0 is the plain input), every
output is transformed back, and the uncertainty is the voxelwise standard deviation of the K
outputs on the unit scale. A model that is sure of a voxel gives it the same value whatever
side of the head it sees it on and wherever it sits in the field of view; disagreement marks
voxels the model guesses at, which is where its errors concentrate (``mri2mri test
--uncertainty`` measures how well it ranks them: the Spearman correlation between uncertainty
and absolute error inside the brain).

The mean of the same passes is a prediction of its own (``--tta K`` of ``test`` and ``predict``):
averaging a model's views of one slice removes what it invents differently on each, which
raised in-brain SSIM on every fold of the by-site benchmark (README, *Test-time averaging*), at K
times the inference cost.

Test-time augmentation needs nothing from the network, so it works the same for PyTorch
checkpoints and exported ONNX models, and it is deterministic: the same input gives the same
map. (MC dropout would need the network's dropout layers switched on, which an ONNX model
does not allow, and would make the map random.) NumPy only, like :mod:`mri2mri.predict`'s
ONNX route.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import numpy as np

# (B, C, S, S) in [-1, 1] -> (B, 1, S, S) in [-1, 1]: the model's own range.
Runner = Callable[[np.ndarray], np.ndarray]

DEFAULT_PASSES = 8
# (rows, columns) shifts in pixels; pass k uses SHIFTS[k // 2], flipped when k is odd.
SHIFTS = ((0, 0), (1, 0), (0, 1), (-1, 0), (0, -1), (1, 1), (-1, -1), (1, -1), (-1, 1),
          (2, 0), (0, 2), (-2, 0), (0, -2), (2, 2), (-2, -2), (2, -2), (-2, 2))  # fmt: skip
MAX_PASSES = 2 * len(SHIFTS)


def check_passes(passes: int, option: str = "--uncertainty-passes", minimum: int = 2) -> int:
    """``passes`` when it is a usable number of test-time passes for ``option`` (a spread needs
    two; an average may be of one), else ValueError naming the option."""
    if not minimum <= passes <= MAX_PASSES:
        raise ValueError(f"{option} must be between {minimum} and {MAX_PASSES}, got {passes}")
    return passes


def transform(batch: np.ndarray, k: int) -> np.ndarray:
    """Pass ``k``'s view of a (B, C, H, W) batch: shifted, then flipped left-right when k is odd."""
    shifted = np.roll(batch, SHIFTS[k // 2], axis=(-2, -1))
    return shifted[..., ::-1] if k % 2 else shifted


def untransform(batch: np.ndarray, k: int) -> np.ndarray:
    """Undo :func:`transform` on the outputs of pass ``k``."""
    unflipped = batch[..., ::-1] if k % 2 else batch
    dy, dx = SHIFTS[k // 2]
    return np.roll(unflipped, (-dy, -dx), axis=(-2, -1))


def tta_outputs(run: Runner, batch: np.ndarray, passes: int) -> Iterator[np.ndarray]:
    """The (B, 1, H, W) float64 output of each of ``passes`` test-time passes over ``batch`` (in
    the model's range [-1, 1]), transformed back and clipped to [-1, 1] as the prediction itself
    is. Infinity becomes NaN first and NaN stays NaN, so that clipping never hides a broken
    output from the caller's finiteness check."""
    for k in range(passes):
        view = np.ascontiguousarray(transform(batch, k), dtype=np.float32)
        out = np.asarray(run(view), dtype=np.float64)[:, :1]
        yield np.clip(untransform(np.where(np.isinf(out), np.nan, out), k), -1.0, 1.0)


def tta_mean(run: Runner, batch: np.ndarray, passes: int) -> np.ndarray:
    """(B, 1, H, W) float32 mean over ``passes`` test-time passes, in the model's range [-1, 1]
    (``passes`` 1 is the plain prediction, clipped)."""
    return tta_mean_std(run, batch, passes)[0]


def tta_std(run: Runner, batch: np.ndarray, passes: int = DEFAULT_PASSES) -> np.ndarray:
    """(B, 1, H, W) standard deviation over ``passes`` test-time passes, on the unit scale.

    ``batch`` is in the model's range [-1, 1]; each pass's output is clipped to [0, 1] first,
    as the prediction itself is.
    """
    check_passes(passes)
    return tta_mean_std(run, batch, 1, passes)[1]


def tta_mean_std(run: Runner, batch: np.ndarray, mean_passes: int,
                 std_passes: int = 0) -> tuple[np.ndarray, np.ndarray | None]:  # fmt: skip
    """``(mean, std)``: :func:`tta_mean` over the first ``mean_passes`` passes and :func:`tta_std`
    over the first ``std_passes`` (None when 0), from one run of as many passes as the larger
    asks for. Pass k is the same view for both, so ``--tta 8 --uncertainty`` runs the network 8
    times a slice, not 16."""
    check_passes(mean_passes, "--tta", minimum=1)
    if std_passes:
        check_passes(std_passes)
    total = total_unit = total_sq = None
    for k, out in enumerate(tta_outputs(run, batch, max(mean_passes, std_passes))):
        if k < mean_passes:
            total = out if total is None else total + out
        if k < std_passes:
            unit = (out + 1.0) * 0.5
            total_unit = unit if total_unit is None else total_unit + unit
            total_sq = unit * unit if total_sq is None else total_sq + unit * unit
    mean = (total / mean_passes).astype(np.float32)
    if not std_passes:
        return mean, None
    unit_mean = total_unit / std_passes
    variance = np.maximum(total_sq / std_passes - unit_mean * unit_mean, 0.0)
    return mean, np.sqrt(variance).astype(np.float32)


def spearman(uncertainty: np.ndarray, error: np.ndarray) -> float:
    """Spearman rank correlation of two equally long 1D arrays (NaN when either is constant)."""
    from scipy.stats import spearmanr

    uncertainty = np.asarray(uncertainty, dtype=np.float64).ravel()
    error = np.asarray(error, dtype=np.float64).ravel()
    if uncertainty.size < 3 or np.ptp(uncertainty) == 0 or np.ptp(error) == 0:
        return float("nan")
    return float(spearmanr(uncertainty, error).statistic)
