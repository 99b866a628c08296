"""Several source contrasts (``--source T1,T1c,FLAIR``): prepare, train, test, predict, ONNX."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from test_data_preprocess import head, save

from mri2mri.baselines import IntensityMap, LinearRegression
from mri2mri.cli import main as cli_main
from mri2mri.config import DataConfig, ModelConfig, RunConfig, parse_sources, replace
from mri2mri.data.cache import SliceCache
from mri2mri.data.preprocess import prepare
from mri2mri.errors import ConfigError
from mri2mri.models import build_generator
from mri2mri.predict import (
    ContrastWarning,
    ModelInfo,
    load_model,
    plan_subject_jobs,
    predict_volume_maps,
)

SOURCES = ("T1", "T1c", "FLAIR")


def write_subjects(root: Path, count: int = 5, *, without_flair: tuple[int, ...] = ()) -> Path:
    """Subject folders with T1, T1c, FLAIR and T2 of one tiny head on one grid."""
    for index in range(count):
        t1, t2 = head(seed=index)
        folder = root / f"sub-{index:02d}"
        save(folder / "T1.nii.gz", t1)
        save(folder / "T2.nii.gz", t2)
        save(folder / "T1c.nii.gz", t1 * 1.5 + 300.0 * (t2 > 800))  # an enhancing "lesion"
        if index not in without_flair:
            save(folder / "FLAIR.nii.gz", np.where(t2 > 1000, 0.3 * t2, t2) + 0.2 * t1)
    return root


def data_config(**changes) -> DataConfig:
    return DataConfig(**{"source": SOURCES, "image_size": 32, "context_slices": 1, "augment": False, **changes})


@pytest.fixture(scope="module")
def subjects(tmp_path_factory) -> Path:
    return write_subjects(tmp_path_factory.mktemp("multi") / "data")


@pytest.fixture(scope="module")
def run_dir(subjects, tmp_path_factory) -> Path:
    """A tiny multi-source run trained for a few steps through the command line."""
    run = tmp_path_factory.mktemp("multi_run") / "run"
    code = cli_main(["train", str(subjects), "--source", "T1,T1c,FLAIR", "--target", "T2", "--out", str(run),
                     "--epochs", "1", "--image-size", "32", "--context-slices", "1", "--base-channels", "8",
                     "--device", "cpu", "--precision", "fp32", "--max-steps-per-epoch", "3"])  # fmt: skip
    assert code == 0
    return run


# ------------------------------------------------------------------------------- configuration


def test_sources_option_and_config_round_trip(tmp_path):
    assert parse_sources("T1") == "T1"
    assert parse_sources("T1, T1c,FLAIR") == SOURCES
    config = RunConfig(data=data_config())
    assert config.data.sources == SOURCES and config.data.in_channels == 9 and config.data.table_channel == 1
    config.save(tmp_path / "config.json")
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["data"]["source"] == list(SOURCES)
    assert RunConfig.load(tmp_path / "config.json").data.source == SOURCES
    # One source stays a plain name, so configurations from before several sources load as they were.
    RunConfig(data=DataConfig(source="T1")).save(tmp_path / "single.json")
    assert json.loads((tmp_path / "single.json").read_text())["data"]["source"] == "T1"
    old = {"data": {"source": "T1", "context_slices": 1}, "model": {"in_channels": 3}}
    loaded = RunConfig.from_dict(old)
    assert loaded.data.sources == ("T1",) and loaded.model.table_channel is None
    with pytest.raises(ConfigError, match="more than once"):
        DataConfig(source=("T1", "T1"))


def test_residual_table_reads_the_first_source_and_a_single_source_the_centre():
    several = build_generator(ModelConfig(base_channels=8, in_channels=9, table_channel=1, dropout=0.0))
    single = build_generator(ModelConfig(base_channels=8, in_channels=3, dropout=0.0))  # an old checkpoint's
    x = torch.rand(2, 9, 16, 16) * 1.8 - 0.9  # inside the first and last bin centres
    torch.testing.assert_close(several.lookup(x), x[:, 1:2], atol=1e-5, rtol=0)  # identity table
    torch.testing.assert_close(single.lookup(x[:, :3]), x[:, 1:2], atol=1e-5, rtol=0)


# ------------------------------------------------------------------------------------ prepare


def test_prepare_stacks_each_source_contrast_major_and_skips_a_subject_missing_one(tmp_path, capsys):
    root = write_subjects(tmp_path / "data", 4, without_flair=(2,))
    cache = SliceCache(prepare(root, data_config(), tmp_path / "cache", progress=False))
    assert "subject sub-02: no FLAIR image" in capsys.readouterr().err
    assert [r.subject for r in cache.subjects] == ["sub-00", "sub-01", "sub-03"]
    assert cache.sources == SOURCES and cache.meta["channel_layout"] == "contrast-major"
    assert cache.in_channels == 9 and cache.context_slices == 1 and cache.table_channel == 1
    assert "source:T1c" in cache.subjects[0].norm and len(cache.subjects[0].source_files) == 3
    # Each block of three channels is that contrast alone, prepared as a single-source cache would.
    for k, contrast in enumerate(SOURCES):
        alone = SliceCache(prepare(root, data_config(source=contrast), tmp_path / f"cache_{contrast}", progress=False))
        for record in cache.subjects:  # the single-source cache also holds sub-02
            mine, theirs = slice(*record.rows), slice(*alone.record(record.subject).rows)
            np.testing.assert_array_equal(cache.source[mine, 3 * k : 3 * k + 3], alone.source[theirs])


def test_manifest_with_a_column_per_contrast(tmp_path):
    root = write_subjects(tmp_path / "data", 2)
    rows = ["subject,T1,T1c,FLAIR,T2"] + [
        f"{s},{s}/T1.nii.gz,{s}/T1c.nii.gz,{s}/FLAIR.nii.gz,{s}/T2.nii.gz" for s in ("sub-00", "sub-01")
    ]
    (root / "manifest.csv").write_text("\n".join(rows) + "\n")
    cache = SliceCache(prepare(root / "manifest.csv", data_config(), tmp_path / "cache", progress=False))
    assert cache.in_channels == 9 and len(cache.subjects) == 2


# ---------------------------------------------------------------------------------- baselines


def test_linear_regression_recovers_a_linear_target():
    rng = np.random.default_rng(0)
    features = rng.uniform(0, 1, size=(5000, 3))
    target = 0.2 * features[:, 0] + 0.5 * features[:, 2] + 0.1
    fitted = LinearRegression.fit(features, target, channels=(1, 4, 7))
    np.testing.assert_allclose(fitted.weights, [0.2, 0.0, 0.5], atol=1e-9)
    assert abs(fitted.intercept - 0.1) < 1e-9
    batch = torch.zeros(1, 9, 2, 2, dtype=torch.float64)
    batch[:, 1], batch[:, 7] = 0.5, 1.0
    torch.testing.assert_close(fitted(batch), torch.full((1, 1, 2, 2), 0.7, dtype=torch.float64))


def test_test_scores_both_baselines_for_several_sources(run_dir, subjects, tmp_path):
    assert cli_main(["test", str(run_dir), str(run_dir / "cache"), "--device", "cpu"]) == 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["methods"] == ["model", "identity", "intensity-map", "linear-regression"]
    for method in metrics["methods"]:  # both scorings and the histogram distance, baselines included
        assert metrics["pooled"][method]["psnr_mask_window"]["n"] == metrics["pooled"][method]["psnr_mask"]["n"]
        assert metrics["histogram_w1"][method]["mean"] >= 0
    assert metrics["source"] == "T1,T1c,FLAIR"
    assert metrics["baselines"]["linear-regression"]["channels"] == [1, 4, 7]
    assert metrics["baselines"]["intensity-map"]["channel"] == 1
    assert IntensityMap.fit_cache(SliceCache(run_dir / "cache")).channel == 1


# ------------------------------------------------------------------------------------ predict


def test_run_records_the_sources_and_the_table_channel(run_dir):
    config = RunConfig.load(run_dir / "config.json")
    assert config.data.sources == SOURCES and config.data.context_slices == 1
    assert config.model.in_channels == 9 and config.model.table_channel == 1


def test_checkpoints_and_outputs_are_named_after_the_sources(run_dir, subjects, tmp_path):
    assert sorted(p.name for p in (run_dir / "checkpoints").glob("*_best.pth")) == ["gan_t1_t1c_flair_to_t2_best.pth"]
    out = tmp_path / "o.nii.gz"
    assert cli_main(["predict", str(run_dir), str(subjects / "sub-00"), str(out)]) == 0
    assert "gan_t1_t1c_flair_to_t2_best.pth" in nib.load(out).header["descrip"].tobytes().decode()


def test_channel_order_follows_the_recorded_sources_whatever_order_the_inputs_come_in(run_dir, subjects, tmp_path):
    _, info = load_model(run_dir, device="cpu", precision="fp32")
    folder = subjects / "sub-00"
    given = {"FLAIR": folder / "FLAIR.nii.gz", "T1": folder / "T1.nii.gz", "T1c": folder / "T1c.nii.gz"}
    (job,) = plan_subject_jobs(info, None, tmp_path / "out.nii.gz", inputs=given, overwrite=False)
    assert job.sources == (folder / "T1.nii.gz", folder / "T1c.nii.gz", folder / "FLAIR.nii.gz")

    def channel(k: int):  # a "model" that returns one input channel
        return lambda batch: batch[:, k : k + 1]

    # Channel block k is contrast k prepared on its own, exactly as a single-source model sees it.
    for k, contrast in enumerate(SOURCES):
        out, _, _ = predict_volume_maps(channel(3 * k + 1), info, job.source, others=job.sources[1:])
        alone = replace(info.config, data=replace(info.data, source=contrast),
                        model=replace(info.config.model, in_channels=3, table_channel=1))  # fmt: skip
        expected, _, _ = predict_volume_maps(channel(1), ModelInfo(alone, "alone", "pytorch"),
                                             folder / f"{contrast}.nii.gz")  # fmt: skip
        assert out.max() > 0
        np.testing.assert_array_equal(out, expected)

    # The command line: a subject folder and the same files by contrast, shuffled, agree exactly.
    assert cli_main(["predict", str(run_dir), str(folder), str(tmp_path / "a.nii.gz"), "--precision", "fp32"]) == 0
    shuffled = [f"--input={c}={p}" for c, p in given.items()]
    assert cli_main(["predict", str(run_dir), *shuffled, str(tmp_path / "b.nii.gz"), "--precision", "fp32"]) == 0
    a, b = (nib.load(tmp_path / name) for name in ("a.nii.gz", "b.nii.gz"))
    np.testing.assert_array_equal(a.get_fdata(), b.get_fdata())
    np.testing.assert_array_equal(a.affine, nib.load(folder / "T1.nii.gz").affine)


def test_other_inputs_are_resampled_onto_the_first_sources_grid(run_dir, subjects, tmp_path):
    folder = subjects / "sub-01"
    flair = nib.load(folder / "FLAIR.nii.gz")
    coarse = nib.Nifti1Image(flair.get_fdata()[::2, ::2, ::2].astype(np.float32), flair.affine @ np.diag([2, 2, 2, 1]))
    nib.save(coarse, tmp_path / "flair_coarse.nii.gz")
    args = ["predict", str(run_dir), f"--input=T1={folder / 'T1.nii.gz'}", f"--input=T1c={folder / 'T1c.nii.gz'}",
            f"--input=FLAIR={tmp_path / 'flair_coarse.nii.gz'}", str(tmp_path / "out.nii.gz")]  # fmt: skip
    assert cli_main(args) == 0
    assert nib.load(tmp_path / "out.nii.gz").shape == nib.load(folder / "T1.nii.gz").shape


@pytest.mark.parametrize(
    "inputs, problem",
    [
        ({"T1": "T1", "FLAIR": "FLAIR"}, "missing T1c"),
        ({"T1": "T1", "T1c": "T1c", "FLAIR": "FLAIR", "PD": "T2"}, "extra PD"),
    ],
)
def test_a_wrong_set_of_contrasts_is_refused_with_the_list_the_model_needs(run_dir, subjects, tmp_path, capsys,
                                                                            inputs, problem):  # fmt: skip
    folder = subjects / "sub-00"
    args = [f"--input={c}={folder / f'{name}.nii.gz'}" for c, name in inputs.items()]
    assert cli_main(["predict", str(run_dir), *args, str(tmp_path / "out.nii.gz")]) == 2
    err = capsys.readouterr().err
    assert "needs the contrasts T1, T1c, FLAIR" in err and problem in err and "Traceback" not in err
    assert not (tmp_path / "out.nii.gz").exists()


def test_a_single_file_or_an_incomplete_subject_folder_is_refused(run_dir, subjects, tmp_path, capsys):
    assert cli_main(["predict", str(run_dir), str(subjects / "sub-00" / "T1.nii.gz"), str(tmp_path / "o.nii.gz")]) == 2
    assert "needs the contrasts T1, T1c, FLAIR" in capsys.readouterr().err
    partial = write_subjects(tmp_path / "partial", 1, without_flair=(0,)) / "sub-00"
    assert cli_main(["predict", str(run_dir), str(partial), str(tmp_path / "o.nii.gz")]) == 2
    assert "missing FLAIR" in capsys.readouterr().err


def test_batch_mode_writes_one_output_per_subject_folder(run_dir, subjects, tmp_path):
    assert cli_main(["predict", str(run_dir), str(subjects), str(tmp_path / "out")]) == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [f"sub-{i:02d}_synth.nii.gz" for i in range(5)]


def test_the_contrast_check_runs_per_input(run_dir, subjects, tmp_path):
    _, info = load_model(run_dir, device="cpu", precision="fp32")
    assert set(info.source_reference["sources"]) == set(SOURCES)
    folder = subjects / "sub-00"
    paths = (folder / "T2.nii.gz", folder / "T1c.nii.gz", folder / "FLAIR.nii.gz")  # a T2 given as the T1

    def zeros(batch):
        return batch[:, :1] * 0

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        predict_volume_maps(zeros, info, paths[0], others=paths[1:])
    flagged = [str(w.message) for w in caught if issubclass(w.category, ContrastWarning)]
    assert len(flagged) == 1 and "T2.nii.gz" in flagged[0] and "T1 images" in flagged[0], flagged


def test_multi_source_checkpoint_onnx_predict_agree(run_dir, subjects, tmp_path):
    onnx_file = tmp_path / "model.onnx"
    assert cli_main(["export", str(run_dir), "--onnx", str(onnx_file)]) == 0
    folder = subjects / "sub-03"
    outputs = {}
    for name, model in (("torch", run_dir), ("onnx", onnx_file)):
        out = tmp_path / f"{name}.nii.gz"
        args = [f"--input={c}={folder / f'{c}.nii.gz'}" for c in ("FLAIR", "T1c", "T1")]
        assert cli_main(["predict", str(model), *args, str(out), "--precision", "fp32", "--device", "cpu"]) == 0
        outputs[name] = nib.load(out).get_fdata()
    assert np.abs(outputs["torch"]).max() > 0
    np.testing.assert_allclose(outputs["onnx"], outputs["torch"], atol=1e-4, rtol=0)
