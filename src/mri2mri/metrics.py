"""Image-quality metrics: PSNR, SSIM, MAE and NMSE, over the whole image or the brain mask.

Every function takes torch tensors of images scaled to [0, 1], shaped (B, C, H, W) (C is 1 for
the contrasts this project translates), and returns one value per image, shape (B,), on the
inputs' device, so the same code scores validation batches on a GPU and test slices on a CPU.
An optional ``mask`` of the same shape (any dtype; non-zero means brain) restricts a metric to the
brain voxels; an image whose mask is empty scores NaN.

SSIM reproduces ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
use_sample_covariance=False, data_range=1.0, full=True)`` exactly (Wang et al. 2004): an 11-tap
Gaussian window (sigma 1.5, truncated at 3.5 sigma), K1 = 0.01, K2 = 0.03, and a same-size map
whose borders come from half-sample symmetric padding (``scipy.ndimage`` mode "reflect").
Whole-image SSIM is the mean of that map with a 5-pixel border cropped, as scikit-image does;
masked SSIM is the mean of the map over the mask.

Two scorings: on the unit scale the images are stored in, and *windowed* (:class:`Window`):
each image first rescaled by its own 0.5-99.5th percentiles of the brain voxels, as a viewer
and most downstream tools show it, so that a prediction with the right contrast but a compressed
or shifted intensity range is not rewarded or punished for the scale alone (``_window`` metrics).
:func:`histogram_distance` compares the brain-intensity distributions of whole volumes: a smooth,
narrow-range prediction (an average) scores well on unit-scale PSNR but far from the real one here.

The evaluation protocol for skull-stripped data lives in :func:`image_metrics`. Each test metric
is declared once, in :data:`METRICS` (name, formula, table digits, direction); everything that
scores, summarises, tabulates or plots test metrics iterates over it, and the metric's English
and Chinese labels are in :data:`mri2mri.text.METRIC_LABELS` under the same name.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage

SSIM_SIGMA = 1.5
SSIM_TRUNCATE = 3.5  # scikit-image's choice: gives the 11-tap window of Wang et al.
SSIM_RADIUS = int(SSIM_TRUNCATE * SSIM_SIGMA + 0.5)  # 5, as scipy.ndimage rounds it
SSIM_WINDOW = 2 * SSIM_RADIUS + 1  # 11
SSIM_K1 = 0.01
SSIM_K2 = 0.03

# The percentiles of an image's brain voxels that a window maps to 0 and 1.
WINDOW_PERCENTILES = (0.5, 99.5)


def _check_pair(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None) -> None:
    if pred.dim() != 4:
        raise ValueError(f"expected images shaped (B, C, H, W), got {tuple(pred.shape)}")
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if mask is not None and mask.shape != pred.shape:
        raise ValueError(f"mask {tuple(mask.shape)} and images {tuple(pred.shape)} differ in shape")


def _weights(pred: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """The mask as 0/1 weights in the images' dtype; all ones when there is no mask."""
    if mask is None:
        return torch.ones_like(pred)
    return (mask > 0).to(pred.dtype)


def _mean_per_image(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Weighted mean over (C, H, W) of each image; 0 / 0 = NaN for an empty mask."""
    # torch.where rather than a product so that a non-finite value outside the mask cannot leak in.
    kept = torch.where(weights > 0, values, torch.zeros_like(values))
    return kept.sum(dim=(1, 2, 3)) / weights.sum(dim=(1, 2, 3))


def psnr_from_mse(mean_squared_error: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """10 log10(data_range^2 / MSE); +inf for a perfect prediction."""
    return 10.0 * torch.log10(data_range**2 / mean_squared_error)


def psnr_value(mean_squared_error: float, data_range: float = 1.0) -> float:
    """PSNR of a float MSE (streamed sums); +inf when it is zero."""
    if mean_squared_error == 0:
        return math.inf
    return 10.0 * math.log10(data_range**2 / mean_squared_error)


def mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean squared error of each image (over the mask when given)."""
    _check_pair(pred, target, mask)
    return _mean_per_image((pred - target) ** 2, _weights(pred, mask))


def psnr(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0
) -> torch.Tensor:
    """Peak signal-to-noise ratio in dB of each image (over the mask when given)."""
    return psnr_from_mse(mse(pred, target, mask), data_range)


def mae(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Mean absolute error of each image (over the mask when given)."""
    _check_pair(pred, target, mask)
    return _mean_per_image((pred - target).abs(), _weights(pred, mask))


def nmse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Normalised MSE ||pred - target||^2 / ||target||^2 of each image (over the mask when given)."""
    _check_pair(pred, target, mask)
    weights = _weights(pred, mask)
    error = torch.where(weights > 0, (pred - target) ** 2, torch.zeros_like(pred)).sum(dim=(1, 2, 3))
    energy = torch.where(weights > 0, target**2, torch.zeros_like(target)).sum(dim=(1, 2, 3))
    return error / energy


def _gaussian_kernel(dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """scipy.ndimage's normalised 1D Gaussian, (11,)."""
    offsets = torch.arange(-SSIM_RADIUS, SSIM_RADIUS + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (offsets / SSIM_SIGMA) ** 2)
    return (kernel / kernel.sum()).to(dtype=dtype, device=device)


def _symmetric_index(length: int, radius: int, device: torch.device) -> torch.Tensor:
    """Indices that pad an axis by ``radius`` with half-sample symmetry (d c b a | a b c d | d c b a).

    torch's "reflect" padding is scipy's "mirror" (the edge sample is not repeated); scipy's
    "reflect", which scikit-image uses, repeats it. Folding the index with period 2 * length
    also covers axes shorter than the radius.
    """
    index = torch.arange(-radius, length + radius, device=device) % (2 * length)
    return torch.where(index >= length, 2 * length - 1 - index, index)


@functools.lru_cache(maxsize=16)
def _gaussian_matrix(length: int, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    """(length, length) matrix that Gaussian-filters one axis, boundary handling included.

    Row i holds the 11 kernel weights at the (reflected) columns i - 5 ... i + 5; a weight whose
    reflected column repeats is accumulated. A matrix product is exact and, on CPU and GPU alike,
    far faster than a single-channel convolution.
    """
    # A normal tensor even when first built under inference mode: the cached matrix may later
    # filter an SSIM loss that is differentiated (mri2mri.losses.ssim_loss).
    with torch.inference_mode(False):
        kernel = _gaussian_kernel(dtype, device)
        index = _symmetric_index(length, SSIM_RADIUS, device)
        taps = torch.arange(length, device=device)[:, None] + torch.arange(SSIM_WINDOW, device=device)[None, :]
        rows = torch.arange(length, device=device)[:, None].expand(length, SSIM_WINDOW)
        matrix = torch.zeros(length, length, dtype=dtype, device=device)
        matrix.index_put_((rows.reshape(-1), index[taps].reshape(-1)), kernel.repeat(length), accumulate=True)
    return matrix


def _gaussian_filter_matmul(images: torch.Tensor) -> torch.Tensor:
    """Filter (..., H, W) as two matrix products: any device, differentiable."""
    height, width = images.shape[-2:]
    along_height = _gaussian_matrix(height, images.dtype, images.device)
    along_width = _gaussian_matrix(width, images.dtype, images.device)
    return along_height @ images @ along_width.T


def _gaussian_filter_scipy(images: torch.Tensor) -> torch.Tensor:
    """Filter (..., H, W) with scipy.ndimage, the very filter scikit-image calls."""
    array = images.numpy()
    for axis in (-2, -1):
        array = ndimage.gaussian_filter1d(array, SSIM_SIGMA, axis=axis, mode="reflect", truncate=SSIM_TRUNCATE)
    return torch.from_numpy(array)


def _gaussian_filter(images: torch.Tensor) -> torch.Tensor:
    """Same-size separable Gaussian filtering of (..., H, W), boundaries as scipy "reflect".

    On the CPU without gradients scipy's direct 11-tap filter is several times faster than a
    (mostly zero) banded matrix product; on a GPU, or when SSIM is differentiated (as a loss),
    the matrix product is the fast or the only way.
    """
    if images.device.type == "cpu" and not images.requires_grad:
        return _gaussian_filter_scipy(images)
    return _gaussian_filter_matmul(images)


def ssim_map(pred: torch.Tensor, target: torch.Tensor, data_range: float = 1.0) -> torch.Tensor:
    """The local SSIM of every pixel, same shape as the inputs (scikit-image's ``full=True`` map)."""
    _check_pair(pred, target, None)
    batch, channels, height, width = pred.shape
    if height < SSIM_WINDOW or width < SSIM_WINDOW:
        raise ValueError(f"SSIM needs images of at least {SSIM_WINDOW}x{SSIM_WINDOW}, got {height}x{width}")
    x = pred.reshape(batch * channels, 1, height, width)
    y = target.reshape(batch * channels, 1, height, width)
    # One filtering pass over the five local statistics stacked along the batch axis.
    moments = _gaussian_filter(torch.cat([x, y, x * x, y * y, x * y], dim=0))
    ux, uy, uxx, uyy, uxy = moments.chunk(5, dim=0)
    # Population (not sample) covariances: use_sample_covariance=False.
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (SSIM_K1 * data_range) ** 2
    c2 = (SSIM_K2 * data_range) ** 2
    numerator = (2 * ux * uy + c1) * (2 * vxy + c2)
    denominator = (ux * ux + uy * uy + c1) * (vx + vy + c2)
    return (numerator / denominator).reshape(batch, channels, height, width)


def ssim(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None, data_range: float = 1.0
) -> torch.Tensor:
    """SSIM of each image.

    Without a mask: the SSIM map's mean with a border of the window radius cropped
    (scikit-image's ``structural_similarity`` value). With a mask: the map's mean over the mask.
    """
    _check_pair(pred, target, mask)
    return _ssim_from_map(ssim_map(pred, target, data_range), mask)


def _ssim_from_map(local: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        r = SSIM_RADIUS
        return local[..., r:-r, r:-r].mean(dim=(1, 2, 3))
    return _mean_per_image(local, _weights(local, mask))


def squared_error_sum(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor
) -> tuple[float, int]:
    """(sum of squared errors, number of voxels) over the mask of a whole batch.

    Streaming these over a subject's slices gives its 3D PSNR without holding the volume.
    """
    _check_pair(pred, target, mask)
    weights = _weights(pred, mask)
    error = torch.where(weights > 0, (pred - target) ** 2, torch.zeros_like(pred)).sum()
    return float(error), int(weights.sum())


def volume_psnr(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, data_range: float = 1.0
) -> float:
    """PSNR of a whole volume over its brain voxels: one MSE over every masked voxel of the
    stack (D, 1, H, W), not the mean of per-slice PSNRs."""
    error, count = squared_error_sum(pred, target, mask)
    if count == 0:
        return math.nan
    return psnr_value(error / count, data_range)


def histogram_distance(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
) -> float:
    """The 1-Wasserstein distance between the intensity distributions of ``pred`` and ``target``
    over the mask (all voxels without one): how far the prediction's histogram is from the real
    one, in intensity units; lower is better, 0 for the same histogram. NaN for an empty mask.

    Any shape (a whole volume (D, 1, H, W), or voxels already picked); both images are sampled
    at the same voxels, so the distance is the mean gap between their sorted values.
    """
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    if mask is not None:
        if mask.shape != pred.shape:
            raise ValueError(f"mask {tuple(mask.shape)} and images {tuple(pred.shape)} differ in shape")
        inside = mask > 0
        pred, target = pred[inside], target[inside]
    if pred.numel() == 0:
        return math.nan
    # Equal-weight samples of equal size: the optimal transport pairs the i-th smallest values.
    gaps = torch.sort(pred.reshape(-1).double()).values - torch.sort(target.reshape(-1).double()).values
    return float(gaps.abs().mean())


@dataclass(frozen=True)
class Window:
    """An intensity window: ``low`` maps to 0 and ``high`` to 1, values beyond are clipped.

    :meth:`of` takes an image's own 0.5th and 99.5th percentiles of its brain voxels, which is
    what a viewer's automatic window and most downstream tools do with an MRI volume.
    """

    low: float
    high: float

    @classmethod
    def of(cls, image: torch.Tensor, mask: torch.Tensor | None = None) -> Window:
        """The window of ``image``'s voxels inside ``mask`` (all of them without one), over the
        whole tensor: for a subject, pass all its slices (or their brain voxels) at once.
        An image with no voxels gets the identity window (0, 1)."""
        values = image if mask is None else image[mask > 0]
        if values.numel() == 0:
            return cls(0.0, 1.0)
        # NumPy rather than torch.quantile, which refuses tensors of over 2**24 values (a volume).
        low, high = np.percentile(values.detach().to("cpu", torch.float64).numpy(), WINDOW_PERCENTILES)
        return cls(float(low), float(high))

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        """clip((image - low) / (high - low), 0, 1); a flat window (high == low) is a step at low,
        the limit of a narrowing window."""
        if self.high > self.low:
            return ((image - self.low) / (self.high - self.low)).clamp(0.0, 1.0)
        return (image > self.low).to(image.dtype)


class ProtocolPair:
    """A batch under the skull-stripped evaluation protocol, and the sums its metrics share.

    Whole-image values compare ``pred * mask`` with ``target * mask``: the background of a
    skull-stripped target is exactly zero while a generator's is not, so published protocols
    mask the prediction; the target is masked too, which changes nothing on skull-stripped data
    and keeps the comparison fair where the mask was computed instead. In-mask values use the
    brain voxels only. Both images are zero outside the mask, so the whole-image and in-mask
    error sums are the same sums divided by different voxel counts (and NMSE is the same
    either way). Each sum is computed on first use, once, shape (B,).

    ``windows`` (the prediction's and the target's :class:`Window`) are those of the whole
    volume the batch comes from; without them each image stack is windowed by its own
    percentiles over the batch's brain voxels. :attr:`windowed` is the pair after windowing.
    """

    def __init__(self, pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor,
                 windows: tuple[Window, Window] | None = None):  # fmt: skip
        _check_pair(pred, target, mask)
        self.mask = mask
        self.windows = windows
        self.weights = _weights(pred, mask)
        inside = self.weights > 0
        zero = torch.zeros_like(pred)
        self.pred = torch.where(inside, pred, zero)  # pred * mask
        self.target = torch.where(inside, target, zero)  # target * mask
        self.difference = self.pred - self.target
        self.all_voxels = pred[0].numel()

    @functools.cached_property
    def squared_error(self) -> torch.Tensor:
        return (self.difference * self.difference).sum(dim=(1, 2, 3))

    @functools.cached_property
    def absolute_error(self) -> torch.Tensor:
        return self.difference.abs().sum(dim=(1, 2, 3))

    @functools.cached_property
    def energy(self) -> torch.Tensor:
        return (self.target * self.target).sum(dim=(1, 2, 3))

    @functools.cached_property
    def brain_voxels(self) -> torch.Tensor:
        return self.weights.sum(dim=(1, 2, 3))

    @functools.cached_property
    def ssim_map(self) -> torch.Tensor:
        """The SSIM map of the masked images (B, C, H, W)."""
        return ssim_map(self.pred, self.target)

    @functools.cached_property
    def windowed(self) -> ProtocolPair:
        """The same pair with the prediction and the target each in its own window."""
        pred_window, target_window = self.windows or (Window.of(self.pred, self.mask),
                                                      Window.of(self.target, self.mask))  # fmt: skip
        return ProtocolPair(pred_window(self.pred), target_window(self.target), self.mask)


@dataclass(frozen=True)
class Metric:
    """One test metric: its name (a key of the test metrics and a column of the per-slice
    table), its value per image of a :class:`ProtocolPair` (shape (B,)), the decimals tables
    show, and its direction. Its labels are ``mri2mri.text.METRIC_LABELS[lang][name]``."""

    name: str
    compute: Callable[[ProtocolPair], torch.Tensor]
    digits: int
    higher_is_better: bool


# The test metrics, in table order: whole image (masked prediction vs masked target), then
# in-mask; ``ssim_mask`` is the mean over the mask of the same SSIM map; then the in-mask PSNR
# and SSIM of the windowed images (each image in its own window, ProtocolPair.windowed).
METRICS: tuple[Metric, ...] = (
    Metric("psnr", lambda p: psnr_from_mse(p.squared_error / p.all_voxels), 2, True),
    Metric("ssim", lambda p: _ssim_from_map(p.ssim_map, None), 4, True),
    Metric("mae", lambda p: p.absolute_error / p.all_voxels, 4, False),
    Metric("nmse", lambda p: p.squared_error / p.energy, 4, False),
    Metric("psnr_mask", lambda p: psnr_from_mse(p.squared_error / p.brain_voxels), 2, True),
    Metric("ssim_mask", lambda p: _ssim_from_map(p.ssim_map, p.weights), 4, True),
    Metric("mae_mask", lambda p: p.absolute_error / p.brain_voxels, 4, False),
    Metric("nmse_mask", lambda p: p.squared_error / p.energy, 4, False),
    Metric("psnr_mask_window", lambda p: psnr_from_mse(p.windowed.squared_error / p.brain_voxels), 2, True),
    Metric("ssim_mask_window", lambda p: _ssim_from_map(p.windowed.ssim_map, p.weights), 4, True),
)
METRIC_NAMES = tuple(metric.name for metric in METRICS)

# The metrics of a whole volume, one value per subject, beside them: its 3D PSNR over the brain
# (streamed error sums, :func:`volume_psnr`) and its brain-intensity histogram distance
# (:func:`histogram_distance`, unit scale).
VOLUME_METRIC = "volume_psnr"
HISTOGRAM_METRIC = "histogram_w1"
VOLUME_METRICS = (VOLUME_METRIC, HISTOGRAM_METRIC)
DIGITS = {**{metric.name: metric.digits for metric in METRICS}, VOLUME_METRIC: 2, HISTOGRAM_METRIC: 4}
HIGHER_IS_BETTER = {**{metric.name: metric.higher_is_better for metric in METRICS},
                    VOLUME_METRIC: True, HISTOGRAM_METRIC: False}  # fmt: skip

# The metrics a short summary shows, in its order (all are names above).
COMPARISON_METRICS = ("psnr_mask", "ssim_mask", "mae_mask", "psnr", "ssim",
                      "psnr_mask_window", "ssim_mask_window", HISTOGRAM_METRIC)  # mri2mri compare
CARD_METRICS = ("psnr", "ssim", "mae", "nmse", "psnr_mask", "ssim_mask", "psnr_mask_window",
                "ssim_mask_window", VOLUME_METRIC, HISTOGRAM_METRIC)  # model card
VIEWER_METRICS = ("psnr_mask", "ssim_mask", "mae_mask")  # the report's slice viewer, per slice


def image_metrics(
    pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, windows: tuple[Window, Window] | None = None
) -> dict[str, torch.Tensor]:
    """Every metric of :data:`METRICS` for each image under the skull-stripped evaluation
    protocol (:class:`ProtocolPair`). ``windows``: the prediction's and the target's windows of
    the whole volume (default: of the batch). Returns name -> (B,) tensor, in table order."""
    pair = ProtocolPair(pred, target, mask, windows)
    return {metric.name: metric.compute(pair) for metric in METRICS}
