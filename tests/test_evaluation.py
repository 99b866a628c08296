"""evaluate(), the baselines and the no-training-subject guarantee, on a tiny hand-built cache."""

from __future__ import annotations

import csv
import json
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity as sk_ssim

from mri2mri.baselines import IntensityMap, identity
from mri2mri.data.cache import CacheWriter, SliceCache, SubjectRecord, SubjectSlices
from mri2mri.data.dataset import to_model_range, to_unit_range
from mri2mri.errors import DataError
from mri2mri.evaluation import (
    CSV_COLUMNS,
    evaluate,
    evaluation_subjects,
    load_preview,
    metrics_table,
)
from mri2mri.metrics import METRIC_NAMES

SIZE = 32
N_SLICES = 4
SUBJECTS = ("sub-01", "sub-02", "sub-03")
SPLIT = {"train": ["sub-01"], "val": [], "test": ["sub-02", "sub-03"]}


def _contrast(source: np.ndarray) -> np.ndarray:
    """The 'physics' of the toy data: T2 brightness as a nonlinear function of T1."""
    return 0.9 - 0.7 * source**1.5


def _pattern() -> np.ndarray:
    """A spatial term no intensity lookup can know: what a model with context can learn."""
    y, x = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    return 0.08 * np.sin(6 * x) * np.cos(5 * y)


def build_cache(
    root: Path,
    split: dict[str, list[str]] | None = None,
    *,
    context: int = 1,
    kind: str = "volume",
    seed: int = 0,
) -> SliceCache:
    """3 subjects x 4 slices of 32x32; ``2 * context + 1`` source channels; disc brain masks."""
    split = split or SPLIT
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    brain = ((y - 15.5) ** 2 + (x - 15.5) ** 2) < 12**2
    writer = CacheWriter(root / "cache", fingerprint="toy", data_config={"source": "T1", "target": "T2"})
    for subject in SUBJECTS:
        channels = 2 * context + 1
        source = np.zeros((N_SLICES, channels, SIZE, SIZE), np.float32)
        target = np.zeros((N_SLICES, 1, SIZE, SIZE), np.float32)
        for i in range(N_SLICES):
            for c in range(channels):
                source[i, c][brain] = 0.2 + 0.6 * rng.random(brain.sum())
            central = source[i, context]
            noise = 0.01 * rng.standard_normal((SIZE, SIZE))
            target[i, 0] = np.where(brain, _contrast(central) + _pattern() + noise, 0.0).clip(0, 1)
        own_split = next((name for name, members in split.items() if subject in members), "val")
        record = SubjectRecord(
            subject=subject, split=own_split, source_file=f"{subject}/T1.nii.gz",
            target_file=f"{subject}/T2.nii.gz", slice_indices=[10 + 3 * i for i in range(N_SLICES)],
            kind=kind,
        )
        mask = np.broadcast_to(brain, (N_SLICES, 1, SIZE, SIZE)).astype(np.uint8)
        writer.add(SubjectSlices(record=record, source=source, target=target, mask=mask))
    return SliceCache(writer.commit(split, split_seed=0))


def good_predict(context: int = 1):
    """A fake generator that knows the contrast and the anatomy term."""

    def predict(batch: torch.Tensor) -> torch.Tensor:
        source = to_unit_range(batch[:, context : context + 1])
        inside = source > 0
        unit = torch.where(inside, _contrast(source) + torch.from_numpy(_pattern()).float(), 0.0)
        return to_model_range(unit.clamp(0, 1))

    return predict


def bad_predict(batch: torch.Tensor) -> torch.Tensor:
    return torch.full_like(batch[:, :1], -0.2)


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluated")
    cache = build_cache(root)
    result = evaluate(good_predict(), cache, root / "run", n_figure_positions=2, batch_size=3,
                      model_name="toy-gan", progress=False)
    return cache, root / "run", result


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_outputs_exist_with_the_documented_layout(evaluated):
    cache, run, result = evaluated
    on_disk = json.loads((run / "metrics.json").read_text(encoding="utf-8"))
    assert on_disk == json.loads(json.dumps(result))
    assert on_disk["test_set"]["subjects"] == ["sub-02", "sub-03"]
    assert on_disk["test_set"]["n_slices"] == 8
    methods = ["model", "identity", "intensity-map"]
    assert on_disk["methods"] == methods
    assert set(on_disk["per_subject"]) == {"sub-02", "sub-03"}
    assert all(s["n_slices"] == 4 for s in on_disk["per_subject"].values())
    for method in methods:
        assert set(on_disk["pooled"][method]) == set(METRIC_NAMES)
        assert set(on_disk["across_subjects"][method]) == set(METRIC_NAMES)
        assert on_disk["volume_psnr"][method]["n"] == 2
        assert on_disk["summary"][method]["psnr_mask"] == on_disk["pooled"][method]["psnr_mask"]["mean"]
        # The second scoring (each image in its own window) and the histogram distance.
        for name in ("psnr_mask_window", "ssim_mask_window"):
            assert isinstance(on_disk["pooled"][method][name]["mean"], float)
            assert on_disk["across_subjects"][method][name]["n"] == 2
        assert set(on_disk["histogram_w1"][method]) == {"mean", "std", "n"}
        assert on_disk["histogram_w1"][method]["n"] == 2
        assert on_disk["summary"][method]["histogram_w1"] == on_disk["histogram_w1"][method]["mean"]
        for subject in ("sub-02", "sub-03"):
            assert set(on_disk["per_subject"][subject][method]) == {*METRIC_NAMES, "volume_psnr", "histogram_w1"}
    assert "multiplied by the brain mask" in on_disk["caption"]
    assert on_disk["beats_intensity_map"] is True and on_disk["warnings"] == []
    start, stop = cache.record("sub-01").rows  # the one training subject
    assert on_disk["baselines"]["intensity-map"]["n_voxels"] == int(np.sum(cache.mask[start:stop]))

    # Two positions per subject, plus one grid.
    pngs = sorted(p.name for p in (run / "figures").glob("*.png"))
    assert pngs == ["test_grid.png", *(f"test_visualization_{n:02d}.png" for n in range(1, 5))]
    assert all((run / "figures" / name).stat().st_size > 5000 for name in pngs)

    preview = load_preview(run / "predictions_preview.npz")
    assert list(preview["subject"]) == ["sub-02", "sub-03"]
    assert preview["prediction"].shape == (2, SIZE, SIZE)
    assert preview["prediction"].min() >= 0.0 and preview["prediction"].max() <= 1.0


def test_csv_rows_agree_with_metrics_json(evaluated):
    _, run, result = evaluated
    rows = _read_csv(run / "test_metrics.csv")
    assert tuple(rows[0]) == CSV_COLUMNS
    assert len(rows) == 8 * 3
    for method in ("model", "identity", "intensity-map"):
        mine = [r for r in rows if r["method"] == method]
        assert [r["slice_index"] for r in mine[:4]] == ["10", "13", "16", "19"]
        for name in METRIC_NAMES:
            values = np.array([float(r[name]) for r in mine])
            pooled = result["pooled"][method][name]
            assert pooled["mean"] == pytest.approx(values.mean(), rel=1e-6)
            assert pooled["std"] == pytest.approx(values.std(), rel=1e-5, abs=1e-9)


def test_identity_row_matches_an_independent_computation(evaluated):
    """The identity baseline is the central source channel, scored with scikit-image."""
    cache, run, _ = evaluated
    rows = {(r["subject"], r["slice_index"], r["method"]): r for r in _read_csv(run / "test_metrics.csv")}
    row_index = cache.record("sub-03").rows[0] + 2
    source = np.asarray(cache.source[row_index, 1], dtype=np.float64)  # central of 3 channels
    target = np.asarray(cache.target[row_index, 0], dtype=np.float64)
    mask = np.asarray(cache.mask[row_index, 0]) > 0
    got = rows[("sub-03", "16", "identity")]
    masked = source * mask
    assert float(got["psnr"]) == pytest.approx(sk_psnr(target, masked, data_range=1.0), abs=1e-5)
    assert float(got["psnr_mask"]) == pytest.approx(
        sk_psnr(target[mask], source[mask], data_range=1.0), abs=1e-5
    )
    whole, local = sk_ssim(target, masked, gaussian_weights=True, sigma=1.5,
                           use_sample_covariance=False, data_range=1.0, full=True)
    assert float(got["ssim"]) == pytest.approx(whole, abs=1e-5)
    assert float(got["ssim_mask"]) == pytest.approx(local[mask].mean(), abs=1e-5)
    assert float(got["mae_mask"]) == pytest.approx(np.abs(source - target)[mask].mean(), abs=1e-6)


def test_volume_psnr_pools_brain_voxels_of_the_subject(evaluated):
    cache, run, result = evaluated
    start, stop = cache.record("sub-02").rows
    source = np.asarray(cache.source[start:stop, 1], dtype=np.float64)
    target = np.asarray(cache.target[start:stop, 0], dtype=np.float64)
    mask = np.asarray(cache.mask[start:stop, 0]) > 0
    expected = 10 * np.log10(1.0 / np.mean((source[mask] - target[mask]) ** 2))
    got = result["per_subject"]["sub-02"]["identity"]["volume_psnr"]
    assert got == pytest.approx(expected, abs=1e-6)


def _subject_volume(cache, subject: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The identity baseline's prediction, the target and the brain mask of a whole subject."""
    start, stop = cache.record(subject).rows
    source = np.asarray(cache.source[start:stop, 1], dtype=np.float64)
    target = np.asarray(cache.target[start:stop, 0], dtype=np.float64)
    return source, target, np.asarray(cache.mask[start:stop, 0]) > 0


def test_windows_are_the_subjects_own_percentiles(evaluated):
    """Windowed scores: each image in the window of its own brain voxels over the whole subject
    (all its slices, although the batches hold 3), scored in the brain; a NumPy formula."""
    cache, run, _ = evaluated
    source, target, mask = _subject_volume(cache, "sub-02")

    def windowed(image: np.ndarray) -> np.ndarray:
        low, high = np.percentile(image[mask], [0.5, 99.5])
        return np.clip((image - low) / (high - low), 0.0, 1.0)

    p, t = windowed(source), windowed(target)
    rows = [r for r in _read_csv(run / "test_metrics.csv") if r["subject"] == "sub-02" and r["method"] == "identity"]
    for k, row in enumerate(rows):
        m = mask[k]
        expected = 10 * np.log10(1.0 / np.mean((p[k][m] - t[k][m]) ** 2))
        assert float(row["psnr_mask_window"]) == pytest.approx(expected, abs=1e-6)
        _, local = sk_ssim(t[k] * m, p[k] * m, gaussian_weights=True, sigma=1.5,
                           use_sample_covariance=False, data_range=1.0, full=True)
        assert float(row["ssim_mask_window"]) == pytest.approx(local[m].mean(), abs=1e-6)


def test_histogram_w1_compares_the_subjects_brain_intensities(evaluated):
    from scipy.stats import wasserstein_distance

    cache, _, result = evaluated
    values = []
    for subject in ("sub-02", "sub-03"):
        source, target, mask = _subject_volume(cache, subject)
        expected = wasserstein_distance(source[mask], target[mask])
        assert result["per_subject"][subject]["identity"]["histogram_w1"] == pytest.approx(expected, abs=1e-9)
        values.append(expected)
    assert result["histogram_w1"]["identity"]["mean"] == pytest.approx(np.mean(values), abs=1e-9)
    assert result["histogram_w1"]["identity"]["std"] == pytest.approx(np.std(values), abs=1e-9)


def oracle_predict(cache, transform):
    """A fake generator that returns ``transform`` of the real target of each slice it is given
    (found by its source), so that a test can choose the prediction's intensities exactly."""
    sources = to_model_range(torch.from_numpy(np.asarray(cache.source, dtype=np.float32)))
    targets = np.asarray(cache.target, dtype=np.float64)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        gaps = (batch[:, None] - sources[None]).abs().flatten(2).amax(dim=2)  # (B, rows)
        rows = gaps.argmin(dim=1).numpy()
        assert float(gaps.min(dim=1).values.max()) < 1e-6  # every slice found
        return to_model_range(torch.from_numpy(transform(targets[rows])).float())

    return predict


def test_washed_out_and_rescaled_predictions_end_to_end(tmp_path):
    """What the two new scorings are for, through `evaluate`: a washed-out average is far from
    the real brain histogram, and a prediction of the right shape on the wrong scale (an affine
    rescaling of the target) is poor on the unit scale but perfect once windowed."""
    cache = build_cache(tmp_path)
    test_rows = [i for s in ("sub-02", "sub-03") for i in range(*cache.record(s).rows)]
    brain = np.asarray(cache.mask[test_rows]) > 0
    brain_mean = float(np.asarray(cache.target[test_rows], dtype=np.float64)[brain].mean())

    def run(name, transform):
        with warnings.catch_warnings():  # losing to the baseline; std of an infinite PSNR
            warnings.simplefilter("ignore", UserWarning)
            warnings.simplefilter("ignore", RuntimeWarning)
            return evaluate(oracle_predict(cache, transform), cache, tmp_path / name,
                            n_figure_positions=0, progress=False)  # fmt: skip

    real = run("real", lambda t: t)
    washed = run("washed", lambda t: brain_mean + 0.05 * (t - brain_mean))
    rescaled = run("rescaled", lambda t: 0.3 * t + 0.05)

    assert real["histogram_w1"]["model"]["mean"] < 1e-6
    assert washed["histogram_w1"]["model"]["mean"] > 0.05
    assert washed["histogram_w1"]["model"]["mean"] > 1000 * max(real["histogram_w1"]["model"]["mean"], 1e-7)
    assert set(rescaled["histogram_w1"]) == {"model", "identity", "intensity-map"}
    model = rescaled["pooled"]["model"]
    assert model["psnr_mask"]["mean"] < 15
    windowed = [float(r["psnr_mask_window"]) for r in _read_csv(tmp_path / "rescaled" / "test_metrics.csv")
                if r["method"] == "model"]  # fmt: skip
    assert len(windowed) == 8 and min(windowed) > 80  # inf (null in metrics.json) when exact
    assert model["ssim_mask_window"]["mean"] == pytest.approx(1.0, abs=1e-6)
    # The baselines are scored by the same rules, whatever the model: identical in all three runs.
    for method in ("identity", "intensity-map"):
        assert washed["pooled"][method] == rescaled["pooled"][method] == real["pooled"][method]


def test_the_tables_and_the_model_card_show_the_new_metrics(evaluated):
    """The console's summary, the Markdown table and the model card carry the windowed scores
    and the histogram distance of every method."""
    from mri2mri.config import RunConfig
    from mri2mri.modelcard import model_card_text

    _, run, result = evaluated
    header = metrics_table(result, "en").splitlines()[0]
    assert "PSNR in mask, windowed (dB)" in header and header.endswith("| Brain histogram W1 |")
    assert metrics_table(result, "zh").splitlines()[0].endswith("| 脑内直方图 W1 距离 |")
    assert all({"psnr_mask_window", "ssim_mask_window", "histogram_w1"} <= set(result["summary"][m])
               for m in result["methods"])  # fmt: skip
    card = model_card_text(RunConfig(), checkpoint=Path("G.pt"), run_dir=run, parameters={}, files=[])
    table = card.split("| method |", 1)[1].splitlines()
    assert "psnr_mask_window | ssim_mask_window | volume_psnr | histogram_w1 |" in table[0]
    w1 = result["histogram_w1"]["model"]["mean"]
    assert table[2].startswith("| model |") and table[2].endswith(f" | {w1:.4g} |")


def test_bad_model_is_flagged(tmp_path):
    cache = build_cache(tmp_path)
    with pytest.warns(UserWarning, match="does not beat the intensity-map baseline"):
        result = evaluate(bad_predict, cache, tmp_path / "run", n_figure_positions=0, progress=False)
    assert result["beats_intensity_map"] is False
    assert any("does not beat the intensity-map baseline" in w for w in result["warnings"])
    on_disk = json.loads((tmp_path / "run" / "metrics.json").read_text(encoding="utf-8"))
    assert on_disk["beats_intensity_map"] is False
    assert not (tmp_path / "run" / "figures").exists()


@pytest.mark.parametrize("leaked", ["sub-02", "sub-03"])
def test_a_training_subject_is_never_evaluated(tmp_path, leaked):
    """Whether the cache's split, the caller's training list or the split asked for puts a
    subject in training, evaluate() refuses before predicting anything."""
    calls = []

    def predict(batch):
        calls.append(len(batch))
        return bad_predict(batch)

    # 1. split.json lists the subject as both train and test.
    split = {"train": ["sub-01", leaked], "val": [], "test": ["sub-02", "sub-03"]}
    cache = build_cache(tmp_path / "both", split)
    with pytest.raises(DataError, match=f"{leaked}.*training split"):
        evaluate(predict, cache, tmp_path / "out1", progress=False)
    # 2. The run trained on it although this cache calls it a test subject.
    cache = build_cache(tmp_path / "clean")
    with pytest.raises(DataError, match=f"{leaked}.*training split"):
        evaluate(predict, cache, tmp_path / "out2", exclude_subjects=[leaked], progress=False)
    # 3. Asking to evaluate the training split itself.
    with pytest.raises(DataError, match="sub-01.*training split"):
        evaluate(predict, cache, tmp_path / "out3", split="train", progress=False)
    assert calls == []
    assert not any((tmp_path / f"out{n}").exists() for n in (1, 2, 3))


def test_evaluation_subjects_of_a_clean_split(tmp_path):
    cache = build_cache(tmp_path)
    assert [r.subject for r in evaluation_subjects(cache, "test")] == ["sub-02", "sub-03"]
    with pytest.raises(DataError, match="val split has no subjects"):
        evaluation_subjects(cache, "val")


def test_png_pairs_2d_input_and_chinese_output(tmp_path):
    cache = build_cache(tmp_path, context=0, kind="image")
    result = evaluate(good_predict(context=0), cache, tmp_path / "run", lang="zh",
                      n_figure_positions=1, progress=False)
    assert "volume_psnr" not in result and "volume_psnr" not in result["summary"]["model"]
    assert "histogram_w1" not in result and "psnr_mask_window" in result["summary"]["model"]
    assert "掩膜" in result["caption"]
    assert result["baselines"]["identity"]["channel"] == 0
    assert (tmp_path / "run" / "figures" / "test_visualization_02.png").is_file()
    table = metrics_table(result, "en")
    assert table.splitlines()[0].startswith("| Method | PSNR (dB) |")
    assert "| intensity-map |" in table and "multiplied by the brain mask" in table


def test_prediction_shape_mismatch_is_reported(tmp_path):
    cache = build_cache(tmp_path)
    with pytest.raises(ValueError, match="predict returned"):
        evaluate(lambda batch: batch, cache, tmp_path / "run", progress=False)  # 3 channels out


# ---------------------------------------------------------------------------------------------
# Baselines


def test_intensity_map_fit_is_the_conditional_mean_per_bin():
    rng = np.random.default_rng(1)
    source = rng.random(5000)
    target = rng.random(5000)
    fitted = IntensityMap.fit(source, target, n_bins=16)
    for k in range(16):
        inside = (source >= k / 16) & (source < (k + 1) / 16)
        assert fitted.table[k] == pytest.approx(target[inside].mean(), abs=1e-12)
        assert fitted.counts[k] == inside.sum()


def test_intensity_map_interpolates_empty_bins_and_between_centres():
    # Data only in bins 1 and 5 of 8: bins 2-4 interpolated, bins 0, 6, 7 held constant.
    source = np.array([1.5, 1.5, 5.5]) / 8
    target = np.array([0.2, 0.4, 0.9])
    fitted = IntensityMap.fit(source, target, n_bins=8)
    np.testing.assert_allclose(fitted.table, [0.3, 0.3, 0.45, 0.6, 0.75, 0.9, 0.9, 0.9])
    assert fitted.to_dict()["empty_bins"] == 6
    values = np.random.default_rng(2).random((2, 3, 9, 9))
    mapped = fitted(torch.from_numpy(values))
    assert mapped.shape == (2, 1, 9, 9)
    np.testing.assert_allclose(mapped.numpy()[:, 0], np.interp(values[:, 1], fitted.centres, fitted.table))


def test_intensity_map_from_cache_uses_training_brain_voxels_only(tmp_path):
    cache = build_cache(tmp_path)
    fitted = IntensityMap.fit_cache(cache, "train", chunk_rows=3)
    start, stop = cache.record("sub-01").rows
    brain = np.asarray(cache.mask[start:stop, 0]) > 0
    reference = IntensityMap.fit(np.asarray(cache.source[start:stop, 1])[brain],
                                 np.asarray(cache.target[start:stop, 0])[brain])
    np.testing.assert_allclose(fitted.table, reference.table)
    np.testing.assert_array_equal(fitted.counts, reference.counts)
    with pytest.raises(DataError, match="no val subjects"):
        IntensityMap.fit_cache(cache, "val")
    with pytest.raises(DataError, match="no brain voxels"):
        IntensityMap.fit(np.zeros(0), np.zeros(0))


def test_identity_takes_the_central_channel():
    batch = torch.arange(2 * 5 * 4).reshape(2, 5, 2, 2).float()
    torch.testing.assert_close(identity(batch), batch[:, 2:3])
