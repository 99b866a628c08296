"""Metrics against independent references: scikit-image and NumPy formulas, random images and masks."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import mean_squared_error as sk_mse
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from mri2mri import metrics

TOL = 1e-6


def _random_batch(seed: int, batch: int = 3, height: int = 32, width: int = 40):
    """Float64 images in [0, 1], a correlated prediction, and blobby random masks."""
    rng = np.random.default_rng(seed)
    target = rng.random((batch, 1, height, width))
    pred = np.clip(target + 0.2 * rng.standard_normal(target.shape), 0.0, 1.0)
    mask = rng.random((batch, 1, height, width)) < 0.6
    return pred, target, mask


def _t(array: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(array))


def _sk_ssim_full(pred: np.ndarray, target: np.ndarray) -> tuple[float, np.ndarray]:
    return sk_ssim(
        target, pred, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
        data_range=1.0, full=True,
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_whole_image_metrics_match_scikit_image_and_numpy(seed):
    pred, target, _ = _random_batch(seed)
    got_psnr = metrics.psnr(_t(pred), _t(target)).numpy()
    got_mae = metrics.mae(_t(pred), _t(target)).numpy()
    got_nmse = metrics.nmse(_t(pred), _t(target)).numpy()
    got_ssim = metrics.ssim(_t(pred), _t(target)).numpy()
    for i in range(len(pred)):
        p, t = pred[i, 0], target[i, 0]
        assert got_psnr[i] == pytest.approx(sk_psnr(t, p, data_range=1.0), abs=TOL)
        assert got_psnr[i] == pytest.approx(10 * np.log10(1.0 / np.mean((p - t) ** 2)), abs=TOL)
        assert got_mae[i] == pytest.approx(np.mean(np.abs(p - t)), abs=TOL)
        assert got_nmse[i] == pytest.approx(np.sum((p - t) ** 2) / np.sum(t**2), abs=TOL)
        assert got_nmse[i] == pytest.approx(sk_mse(t, p) / np.mean(t**2), abs=TOL)
        assert got_ssim[i] == pytest.approx(_sk_ssim_full(p, t)[0], abs=TOL)


@pytest.mark.parametrize("shape", [(32, 32), (23, 41), (11, 17)])
def test_ssim_map_matches_scikit_image_everywhere_including_borders(shape):
    rng = np.random.default_rng(7)
    target = rng.random((2, 1, *shape))
    pred = rng.random((2, 1, *shape))
    local = metrics.ssim_map(_t(pred), _t(target)).numpy()
    assert local.shape == pred.shape
    for i in range(2):
        _, reference = _sk_ssim_full(pred[i, 0], target[i, 0])
        np.testing.assert_allclose(local[i, 0], reference, atol=TOL, rtol=0)


@pytest.mark.parametrize("seed", [3, 4])
def test_masked_metrics_match_numpy_on_random_masks(seed):
    pred, target, mask = _random_batch(seed)
    got = {
        "psnr": metrics.psnr(_t(pred), _t(target), _t(mask)).numpy(),
        "mae": metrics.mae(_t(pred), _t(target), _t(mask)).numpy(),
        "nmse": metrics.nmse(_t(pred), _t(target), _t(mask)).numpy(),
        "ssim": metrics.ssim(_t(pred), _t(target), _t(mask)).numpy(),
    }
    for i in range(len(pred)):
        p, t, m = pred[i, 0][mask[i, 0]], target[i, 0][mask[i, 0]], mask[i, 0]
        assert got["psnr"][i] == pytest.approx(10 * np.log10(1.0 / np.mean((p - t) ** 2)), abs=TOL)
        assert got["psnr"][i] == pytest.approx(sk_psnr(t, p, data_range=1.0), abs=TOL)
        assert got["mae"][i] == pytest.approx(np.mean(np.abs(p - t)), abs=TOL)
        assert got["nmse"][i] == pytest.approx(np.sum((p - t) ** 2) / np.sum(t**2), abs=TOL)
        _, reference_map = _sk_ssim_full(pred[i, 0], target[i, 0])
        assert got["ssim"][i] == pytest.approx(reference_map[m].mean(), abs=TOL)


def test_mask_of_any_dtype_and_empty_mask_gives_nan():
    pred, target, mask = _random_batch(5, batch=2)
    as_float = metrics.psnr(_t(pred), _t(target), _t(mask.astype(np.float32)))
    as_uint8 = metrics.psnr(_t(pred), _t(target), _t(mask.astype(np.uint8)))
    torch.testing.assert_close(as_float, as_uint8)
    empty = np.zeros_like(mask)
    for name in ("psnr", "mae", "nmse", "ssim"):
        values = getattr(metrics, name)(_t(pred), _t(target), _t(empty))
        assert torch.isnan(values).all(), name


def test_perfect_prediction():
    _, target, mask = _random_batch(6, batch=2)
    assert torch.isinf(metrics.psnr(_t(target), _t(target))).all()
    assert metrics.mae(_t(target), _t(target), _t(mask)).abs().max() == 0
    torch.testing.assert_close(metrics.ssim(_t(target), _t(target), _t(mask)), torch.ones(2, dtype=torch.float64))


def test_float32_matches_float64_closely():
    pred, target, mask = _random_batch(8)
    low = metrics.image_metrics(_t(pred).float(), _t(target).float(), _t(mask))
    high = metrics.image_metrics(_t(pred), _t(target), _t(mask))
    for name in metrics.METRIC_NAMES:
        np.testing.assert_allclose(low[name].double().numpy(), high[name].numpy(), rtol=1e-4, atol=1e-4)


def test_image_metrics_follow_the_masked_prediction_protocol():
    pred, target, mask = _random_batch(9)
    target = target * mask  # skull-stripped: the real background is exactly zero
    values = metrics.image_metrics(_t(pred), _t(target), _t(mask))
    assert set(values) == set(metrics.METRIC_NAMES)
    for i in range(len(pred)):
        p, t, m = pred[i, 0] * mask[i, 0], target[i, 0], mask[i, 0]
        assert values["psnr"][i] == pytest.approx(sk_psnr(t, p, data_range=1.0), abs=TOL)
        assert values["mae"][i] == pytest.approx(np.mean(np.abs(p - t)), abs=TOL)
        assert values["nmse"][i] == pytest.approx(np.sum((p - t) ** 2) / np.sum(t**2), abs=TOL)
        whole, reference_map = _sk_ssim_full(p, t)
        assert values["ssim"][i] == pytest.approx(whole, abs=TOL)
        assert values["ssim_mask"][i] == pytest.approx(reference_map[m].mean(), abs=TOL)
        assert values["psnr_mask"][i] == pytest.approx(
            10 * np.log10(1.0 / np.mean((pred[i, 0][m] - t[m]) ** 2)), abs=TOL
        )
        assert values["mae_mask"][i] == pytest.approx(np.mean(np.abs(pred[i, 0][m] - t[m])), abs=TOL)


def test_volume_psnr_pools_voxels_not_slices():
    pred, target, mask = _random_batch(11, batch=4)
    got = metrics.volume_psnr(_t(pred), _t(target), _t(mask))
    expected = 10 * np.log10(1.0 / np.mean((pred[mask] - target[mask]) ** 2))
    assert got == pytest.approx(expected, abs=TOL)
    assert got == pytest.approx(sk_psnr(target[mask], pred[mask], data_range=1.0), abs=TOL)
    assert math.isnan(metrics.volume_psnr(_t(pred), _t(target), _t(np.zeros_like(mask))))


def test_shape_errors_are_reported():
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.psnr(torch.zeros(1, 1, 16, 16), torch.zeros(1, 1, 16, 15))
    with pytest.raises(ValueError, match="at least 11x11"):
        metrics.ssim(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8))
    with pytest.raises(ValueError, match=r"\(B, C, H, W\)"):
        metrics.mae(torch.zeros(16, 16), torch.zeros(16, 16))


@pytest.mark.parametrize("shape", [(32, 32), (13, 40), (3, 20)])
def test_both_gaussian_filters_equal_scipy(shape):
    """The CPU path (scipy) and the GPU / autograd path (matrix products) are the same filter."""
    from scipy import ndimage

    images = torch.rand(2, 1, *shape, dtype=torch.float64)
    reference = ndimage.gaussian_filter(images.numpy(), sigma=(0, 0, 1.5, 1.5), mode="reflect", truncate=3.5)
    np.testing.assert_allclose(metrics._gaussian_filter_matmul(images).numpy(), reference, atol=1e-12)
    np.testing.assert_allclose(metrics._gaussian_filter_scipy(images).numpy(), reference, atol=1e-12)


def test_ssim_is_differentiable_and_matches_without_gradients():
    pred, target, mask = _random_batch(12)
    leaf = _t(pred).clone().requires_grad_(True)
    with_grad = metrics.ssim(leaf, _t(target), _t(mask))
    with_grad.sum().backward()
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all() and leaf.grad.abs().sum() > 0
    torch.testing.assert_close(with_grad.detach(), metrics.ssim(_t(pred), _t(target), _t(mask)))


# ---------------------------------------------------------------------------------------------
# The registry: a metric is declared once, and everything else follows it.


def test_every_metric_is_declared_once_with_labels_in_both_languages():
    from mri2mri import text

    names = [metric.name for metric in metrics.METRICS]
    assert len(set(names)) == len(names) and tuple(names) == metrics.METRIC_NAMES
    for lang in text.LANGS:
        assert set(text.METRIC_LABELS[lang]) == {*names, *metrics.VOLUME_METRICS}
    assert set(metrics.DIGITS) == set(metrics.HIGHER_IS_BETTER) == {*names, *metrics.VOLUME_METRICS}
    for selection in (metrics.COMPARISON_METRICS, metrics.CARD_METRICS, metrics.VIEWER_METRICS):
        assert set(selection) <= set(metrics.DIGITS)


def test_image_metrics_computes_every_registered_metric():
    pred, target, mask = _random_batch(7)
    values = metrics.image_metrics(_t(pred), _t(target), _t(mask))
    assert tuple(values) == metrics.METRIC_NAMES
    assert all(value.shape == (3,) for value in values.values())
    # The registry's direction agrees with the values: a perfect prediction is never worse.
    perfect = metrics.image_metrics(_t(target), _t(target), _t(mask))
    for metric in metrics.METRICS:
        better = perfect[metric.name] >= values[metric.name] if metric.higher_is_better else \
            perfect[metric.name] <= values[metric.name]
        assert bool(better.all()), metric.name


# ---------------------------------------------------------------------------------------------
# The second scoring (each image in its own window) and the histogram distance.


@pytest.mark.parametrize("seed", [0, 1])
def test_histogram_distance_matches_scipy(seed):
    from scipy.stats import wasserstein_distance

    pred, target, mask = _random_batch(seed, batch=4)
    got = metrics.histogram_distance(_t(pred), _t(target), _t(mask))
    assert got == pytest.approx(wasserstein_distance(pred[mask], target[mask]), abs=1e-12)
    # Without a mask: every voxel; and voxels already picked (1D) are accepted as they are.
    assert metrics.histogram_distance(_t(pred), _t(target)) == pytest.approx(
        wasserstein_distance(pred.ravel(), target.ravel()), abs=1e-12)
    assert metrics.histogram_distance(_t(pred[mask]), _t(target[mask])) == pytest.approx(got, abs=1e-15)


def test_histogram_distance_sees_the_intensity_distribution_not_the_voxels():
    _, target, mask = _random_batch(3)
    shuffled = np.random.default_rng(4).permutation(target.ravel()).reshape(target.shape)
    assert metrics.histogram_distance(_t(shuffled), _t(target)) == pytest.approx(0.0, abs=1e-15)
    assert metrics.histogram_distance(_t(target + 0.1), _t(target), _t(mask)) == pytest.approx(0.1, abs=1e-12)
    # A washed-out average: the right mean, a narrow spread.
    mean = target[mask].mean()
    washed = mean + 0.1 * (target - mean)
    assert metrics.histogram_distance(_t(washed), _t(target), _t(mask)) > 0.2
    assert math.isnan(metrics.histogram_distance(_t(target), _t(target), _t(np.zeros_like(mask))))
    with pytest.raises(ValueError, match="differ in shape"):
        metrics.histogram_distance(_t(target), _t(target[:1]))


def test_window_is_the_percentile_formula():
    pred, _, mask = _random_batch(5, batch=2)
    window = metrics.Window.of(_t(pred), _t(mask))
    low, high = np.percentile(pred[mask], [0.5, 99.5])
    assert (window.low, window.high) == pytest.approx((low, high), abs=1e-15)
    np.testing.assert_allclose(window(_t(pred)).numpy(), np.clip((pred - low) / (high - low), 0, 1), atol=1e-15)
    # The window of all voxels, and the identity window when there are none.
    assert metrics.Window.of(_t(pred)).high == pytest.approx(np.percentile(pred, 99.5), abs=1e-15)
    assert metrics.Window.of(_t(pred), _t(np.zeros_like(mask))) == metrics.Window(0.0, 1.0)
    # A flat image has a flat window: a step at its value.
    flat = metrics.Window(0.4, 0.4)
    np.testing.assert_array_equal(flat(torch.tensor([0.3, 0.4, 0.5])).numpy(), [0.0, 0.0, 1.0])


def test_windowed_metrics_score_each_image_in_its_own_window():
    pred, target, mask = _random_batch(6)
    target_window = metrics.Window(0.1, 0.8)
    pred_window = metrics.Window(0.2, 0.7)
    values = metrics.image_metrics(_t(pred), _t(target), _t(mask), (pred_window, target_window))
    p = np.clip((pred - 0.2) / 0.5, 0, 1)
    t = np.clip((target - 0.1) / 0.7, 0, 1)
    for i in range(len(pred)):
        m = mask[i, 0]
        assert values["psnr_mask_window"][i] == pytest.approx(
            10 * np.log10(1.0 / np.mean((p[i, 0][m] - t[i, 0][m]) ** 2)), abs=TOL)
        _, reference_map = _sk_ssim_full(p[i, 0] * m, t[i, 0] * m)
        assert values["ssim_mask_window"][i] == pytest.approx(reference_map[m].mean(), abs=TOL)
    # Without windows, each image stack is windowed by its own percentiles over the batch's mask.
    default = metrics.image_metrics(_t(pred), _t(target), _t(mask))
    own = (metrics.Window.of(_t(pred), _t(mask)), metrics.Window.of(_t(target), _t(mask)))
    explicit = metrics.image_metrics(_t(pred), _t(target), _t(mask), own)
    torch.testing.assert_close(default["psnr_mask_window"], explicit["psnr_mask_window"])


def test_windowing_forgives_the_scale_but_not_the_shape():
    """A prediction with the right contrast on the wrong intensity scale (an affine rescaling of
    the target) is poor on the unit scale and perfect once each image is in its own window."""
    _, target, mask = _random_batch(8)
    rescaled = 0.4 * target + 0.35
    values = metrics.image_metrics(_t(rescaled), _t(target), _t(mask))
    assert float(values["psnr_mask"].max()) < 20
    assert float(values["psnr_mask_window"].min()) > 100
    torch.testing.assert_close(values["ssim_mask_window"], torch.ones(3, dtype=torch.float64))
    # The window does not forgive a wrong shape: an inverted contrast stays bad.
    inverted = metrics.image_metrics(_t(1 - target), _t(target), _t(mask))
    assert float(inverted["psnr_mask_window"].max()) < 10
