"""The residual generator over the intensity-map table, and warm starts (``--init-from``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import tiny_config, write_tiny_cache

from mri2mri.baselines import IntensityMap
from mri2mri.checkpoint import load_checkpoint, save_checkpoint
from mri2mri.cli import main as cli_main
from mri2mri.config import ModelConfig, RunConfig, replace
from mri2mri.data.cache import SliceCache
from mri2mri.errors import UserError
from mri2mri.models import build_generator
from mri2mri.models.residual import TABLE_BINS, TableResidual
from mri2mri.runfolder import find_checkpoint
from mri2mri.runtime import Runtime
from mri2mri.training import build_networks, train
from mri2mri.training.networks import _warm_start


def residual_config(**train_changes) -> RunConfig:
    config = tiny_config(epochs=1, max_steps_per_epoch=2, **train_changes)
    return replace(config, model=replace(config.model, residual="intensity-map"))


def test_an_untrained_residual_generator_is_the_intensity_map_baseline():
    rng = np.random.default_rng(0)
    source = rng.uniform(0, 1, 20_000)
    table = IntensityMap.fit(source, np.cos(3 * source) ** 2, n_bins=TABLE_BINS)
    G = build_generator(ModelConfig(generator="unet", base_channels=4, residual="intensity-map"))
    G.set_table(torch.as_tensor(table.table))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        got = (G.eval()(x * 2 - 1) + 1) / 2
    torch.testing.assert_close(got, table(x).float(), atol=1e-5, rtol=0)


def test_the_correction_moves_the_output_away_from_the_table():
    G = build_generator(ModelConfig(generator="basic", base_channels=4, residual="intensity-map"))
    x = torch.rand(2, 1, 16, 16) * 2 - 1
    optimiser = torch.optim.Adam(G.parameters(), lr=1e-2)
    target = torch.full_like(x, 0.3)
    for _ in range(20):
        optimiser.zero_grad()
        loss = (G(x) - target).abs().mean()
        loss.backward()
        optimiser.step()
    assert (G(x) - G.lookup(x)).abs().mean() > 0.05  # the correction learnt something


def test_inference_adds_its_share_of_the_correction_and_training_all_of_it():
    # No batch norm or dropout, so that train and eval mode differ only by the weight.
    G = build_generator(ModelConfig(generator="unet", base_channels=4, norm="none", dropout=0.0,
                                    residual="intensity-map", correction_weight=0.3))  # fmt: skip
    last = [m for m in G.correction.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    torch.nn.init.normal_(last.weight, std=0.05, generator=torch.Generator().manual_seed(0))
    x = torch.rand(2, 1, 32, 32, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.no_grad():
        table, whole, shrunk = G.lookup(x), G.train()(x), G.eval()(x)
    assert (whole - table).abs().max() > 0.05
    torch.testing.assert_close(shrunk - table, 0.3 * (whole - table), atol=1e-6, rtol=0)


def test_correction_weight_defaults_to_three_quarters_and_old_runs_keep_their_whole_correction(tmp_path, capsys):
    assert RunConfig().model.correction_weight == 0.75
    saved = RunConfig().to_dict()
    del saved["model"]["correction_weight"]
    old = RunConfig.from_dict(saved)
    assert old.model.correction_weight == 1.0
    assert build_generator(old.model).correction_weight == 1.0
    cache_dir = write_tiny_cache(tmp_path / "cache")
    code = cli_main(["train", str(cache_dir), "--out", str(tmp_path / "run"), "--correction-weight", "1.5",
                     "--epochs", "1", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "--correction-weight" in err and "Traceback" not in err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_test_scores_another_correction_weight(tmp_path, capsys):
    """`test --correction-weight 0` scores the table alone: its preview prediction is the
    model's own table of the source; with 1 it is not. A plain generator has no correction."""
    from mri2mri.inference import load_generator

    cache_dir = write_tiny_cache(tmp_path / "cache")
    train(residual_config(), cache_dir, tmp_path / "run", progress=False)
    # Two steps leave the correction near zero: give it a visible size in the checkpoint.
    checkpoint = find_checkpoint(tmp_path / "run")
    payload = load_checkpoint(checkpoint)
    weights = payload.get("ema") or payload["G"]
    last = [k for k in weights if k.startswith("correction.") and k.endswith(".weight") and weights[k].ndim == 4][-1]
    weights[last] = torch.randn(weights[last].shape, generator=torch.Generator().manual_seed(0)) * 0.05
    save_checkpoint(checkpoint, payload)
    previews = {}
    for weight in ("0", "1"):
        out = tmp_path / f"w{weight}"
        assert cli_main(["test", str(tmp_path / "run"), str(cache_dir), "--out", str(out),
                         "--correction-weight", weight, "--quiet"]) == 0  # fmt: skip
        previews[weight] = np.load(out / "predictions_preview.npz")
    capsys.readouterr()
    G = load_generator(find_checkpoint(tmp_path / "run"))[0]
    preview = previews["0"]
    source = torch.from_numpy(preview["source"][:, None]) * 2 - 1
    with torch.no_grad():
        table = ((G.lookup(source)[:, 0].clamp(-1, 1) + 1) / 2).numpy()
    inside = preview["mask"] > 0
    # atol: the test may run in bf16 autocast (about 3 significant digits).
    np.testing.assert_allclose(preview["prediction"][inside], table[inside], atol=3e-3)
    assert np.abs(previews["1"]["prediction"][inside] - table[inside]).max() > 2e-2
    plain = tiny_config(epochs=1, max_steps_per_epoch=2)
    train(replace(plain, model=replace(plain.model, residual="none")), cache_dir, tmp_path / "plain", progress=False)
    code = cli_main(["test", str(tmp_path / "plain"), str(cache_dir), "--out", str(tmp_path / "p"),
                     "--correction-weight", "0.5", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "needs a residual generator" in err and "Traceback" not in err


def test_the_table_is_fitted_on_training_subjects_only(tmp_path):
    cache_dir = write_tiny_cache(tmp_path / "cache")
    cache = SliceCache(cache_dir)
    # The validation and test subjects get a target no training subject has: were any of their
    # slices in the fit, the table would move towards 1.
    others = np.concatenate([cache.rows("val"), cache.rows("test")])
    target = np.load(cache_dir / "target.npy", mmap_mode="r+")
    target[others] = 1.0
    target.flush()
    del target
    train(residual_config(), cache_dir, tmp_path / "run", progress=False)
    payload = load_checkpoint(find_checkpoint(tmp_path / "run", "last"))
    expected = IntensityMap.fit_cache(SliceCache(cache_dir), "train", n_bins=TABLE_BINS,
                                     background_in_first_bin=True).table
    np.testing.assert_allclose(payload["G"]["table"].numpy(), expected, atol=1e-6)
    assert expected.max() < 0.9


def test_init_from_starts_from_another_runs_weights(tmp_path):
    cache_dir = write_tiny_cache(tmp_path / "cache")
    train(residual_config(), cache_dir, tmp_path / "first", progress=False)
    first = load_checkpoint(find_checkpoint(tmp_path / "first", "last"))
    config = residual_config(seed=11, init_from=str(tmp_path / "first"))
    runtime = Runtime(device=torch.device("cpu"))
    table = torch.linspace(1, 0, TABLE_BINS)  # this run's own table is kept
    nets = build_networks(config, runtime, table=table)
    _warm_start(nets, config, tmp_path / "first")
    for name, value in nets.G.state_dict().items():
        expected = table if name == "table" else first["G"][name]
        torch.testing.assert_close(value, expected)
    for name, value in nets.D.state_dict().items():
        torch.testing.assert_close(value, first["D"][name])


def test_init_from_refuses_other_networks(tmp_path, capsys):
    cache_dir = write_tiny_cache(tmp_path / "cache")
    train(residual_config(), cache_dir, tmp_path / "first", progress=False)
    config = residual_config(init_from=str(tmp_path / "first"))
    wider = replace(config, model=replace(config.model, base_channels=16))
    with pytest.raises(UserError, match=r"base_channels 8 \(this run: 16\)"):
        _warm_start(build_networks(wider, Runtime(device=torch.device("cpu"))), wider, tmp_path / "first")
    code = cli_main(["train", str(cache_dir), "--out", str(tmp_path / "second"), "--init-from",
                     str(tmp_path / "first"), "--generator", "basic", "--epochs", "1", "--quiet"])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2
    assert "--init-from needs the same networks" in err and "generator 'unet'" in err
    assert "Traceback" not in err


def test_a_configuration_saved_before_the_residual_option_builds_a_plain_generator():
    saved = RunConfig().to_dict()
    del saved["model"]["residual"]
    config = RunConfig.from_dict(saved)
    assert config.model.residual == "none"
    assert not isinstance(build_generator(config.model), TableResidual)
    assert RunConfig.from_dict(RunConfig().to_dict()).model.residual == "intensity-map"


def test_the_residual_table_sends_the_empty_background_to_zero(tmp_path):
    cache_dir = write_tiny_cache(tmp_path / "cache", splits=("train", "train"))
    source = np.load(cache_dir / "source.npy", mmap_mode="r+")
    target = np.load(cache_dir / "target.npy", mmap_mode="r+")
    mask = np.load(cache_dir / "mask.npy", mmap_mode="r+")
    source[..., :10], target[..., :10], mask[..., :10] = 0, 0, 0  # background beside the brain
    source[..., 10:12], target[..., 10:12] = 0, 1  # the darkest brain tissue, bright in the target
    for array in (source, target, mask):
        array.flush()
    del source, target, mask
    cache = SliceCache(cache_dir)
    assert IntensityMap.fit_cache(cache, "train").table[0] == pytest.approx(1.0)  # the baseline: brain only
    whole_slice = IntensityMap.fit_cache(cache, "train", background_in_first_bin=True).table
    assert whole_slice[0] < 0.2
    np.testing.assert_allclose(whole_slice[30:], IntensityMap.fit_cache(cache, "train").table[30:])  # brain bins
