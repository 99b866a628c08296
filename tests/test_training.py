"""The GAN step and the loop: real steps on tiny data, exact resume, stops that keep checkpoints."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import tiny_config

from mri2mri.checkpoint import load_checkpoint
from mri2mri.config import replace
from mri2mri.errors import UserError
from mri2mri.runfolder import RunLock, read_history_rows
from mri2mri.runtime import Runtime
from mri2mri.training import (
    TrainingStopped,
    build_networks,
    epoch_batches,
    gan_step,
    train,
)


def _batch(size: int = 32, n: int = 4):
    torch.manual_seed(0)
    source = torch.rand(n, 1, size, size) * 2 - 1
    return source, -source.clone()


def test_one_step_updates_both_networks_and_overfitting_lowers_l1():
    config = tiny_config()
    runtime = Runtime(device=torch.device("cpu"))
    torch.manual_seed(0)  # the initial weights, independent of the tests that ran before
    nets = build_networks(config, runtime)
    g_before = copy.deepcopy(nets.G.state_dict())
    d_before = copy.deepcopy(nets.D.state_dict())
    source, target = _batch()
    first = gan_step(nets, source, target, config, runtime)
    assert not first.skipped
    assert any(not torch.equal(g_before[k], v) for k, v in nets.G.state_dict().items())
    assert any(not torch.equal(d_before[k], v) for k, v in nets.D.state_dict().items())
    for _ in range(40):
        last = gan_step(nets, source, target, config, runtime)
    assert last.loss_L1 < 0.7 * first.loss_L1


def _report_loop_step(G, D, opt_G, opt_D, source, target, d_steps=1) -> None:
    """One step as the lab report writes it: BCE on sigmoid outputs, three D forwards, D left
    trainable during G's step (its gradients are then zeroed before D's own update); then
    ``d_steps - 1`` more D updates on the same detached fake."""
    bce, l1 = torch.nn.BCELoss(), torch.nn.L1Loss()
    opt_G.zero_grad()
    fake = G(source)
    pred_fake = torch.sigmoid(D(source, fake)[0][-1])
    loss_G = bce(pred_fake, torch.ones_like(pred_fake)) + 100 * l1(fake, target)
    loss_G.backward()
    opt_G.step()
    for _ in range(d_steps):
        opt_D.zero_grad()
        pred_real = torch.sigmoid(D(source, target)[0][-1])
        pred_fake = torch.sigmoid(D(source, fake.detach())[0][-1])
        loss_D = 0.5 * (bce(pred_real, torch.ones_like(pred_real)) + bce(pred_fake, torch.zeros_like(pred_fake)))
        loss_D.backward()
        opt_D.step()


@pytest.mark.parametrize("d_steps", [1, 2])
def test_gan_step_gives_the_weights_of_the_report_loop(d_steps):
    """gan_step shares one D forward between G's and D's update; the weights must not change."""
    config = tiny_config(gan_loss="bce", d_steps=d_steps)
    runtime = Runtime(device=torch.device("cpu"), channels_last=False)
    torch.manual_seed(0)
    nets = build_networks(config, runtime)
    G, D = copy.deepcopy(nets.G), copy.deepcopy(nets.D)
    opt_G = torch.optim.Adam(G.parameters(), lr=config.train.lr, betas=(0.5, 0.999))
    opt_D = torch.optim.Adam(D.parameters(), lr=config.train.lr, betas=(0.5, 0.999))
    source, target = _batch()
    for _ in range(3):
        gan_step(nets, source, target, config, runtime)
        _report_loop_step(G, D, opt_G, opt_D, source, target, d_steps)
    # Compared as functions, in training mode: a convolution's bias just before batch norm has
    # a zero gradient, so Adam turns rounding noise into lr-sized steps of random sign there,
    # which batch norm then cancels.
    with torch.no_grad():
        torch.testing.assert_close(nets.G(source), G(source), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(nets.D(source, target), D(source, target), rtol=1e-4, atol=1e-5)
    theirs = dict(G.named_parameters())
    for key, value in nets.G.named_parameters():
        if key.endswith("weight"):
            torch.testing.assert_close(value, theirs[key], rtol=1e-4, atol=1e-5, msg=key)


def test_loss_scaling_leaves_the_step_unchanged():
    """fp16 training scales both of G's backward passes and D's; on the CPU the same scaler in
    fp32 must give the weights of an unscaled step (the fp16 path itself needs a GPU)."""
    config = tiny_config(gan_loss="lsgan", lambda_feature_matching=5.0, lambda_ssim=1.0)
    runtime = Runtime(device=torch.device("cpu"), channels_last=False)
    torch.manual_seed(0)
    plain = build_networks(config, runtime)
    scaled = copy.deepcopy(plain)
    scaled.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    source, target = _batch()
    for _ in range(3):
        gan_step(plain, source, target, config, runtime)
        gan_step(scaled, source, target, config, runtime)
    assert scaled.scaler.get_scale() == 2.0**12  # no step was skipped for an overflow
    with torch.no_grad():
        torch.testing.assert_close(scaled.G(source), plain.G(source), rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(scaled.D(source, target), plain.D(source, target), rtol=1e-4, atol=1e-5)


def test_loss_d_is_half_the_sum_of_real_and_fake_terms():
    from mri2mri.losses import discriminator_loss

    real, fake = [torch.full((2, 1, 3, 3), 2.0)], [torch.full((2, 1, 3, 3), -1.0)]
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    expected = 0.5 * (bce(real[0], torch.ones_like(real[0])) + bce(fake[0], torch.zeros_like(fake[0])))
    assert torch.allclose(discriminator_loss("bce", real, fake), expected)


def test_epoch_batches_shard_one_global_batch_across_ranks():
    single = epoch_batches(20, 4, seed=1, epoch=2)
    ranks = [epoch_batches(20, 4, seed=1, epoch=2, rank=r, world_size=2) for r in range(2)]
    for step, batch in enumerate(single):
        assert sorted(batch) == sorted(ranks[0][step] + ranks[1][step])
    assert epoch_batches(20, 4, seed=1, epoch=2, start_step=3) == single[3:]
    assert epoch_batches(20, 4, seed=1, epoch=3) != single


def test_training_writes_the_run_folder(tiny_cache, tmp_path):
    run = tmp_path / "run"
    result = train(tiny_config(), tiny_cache, run, progress=False)
    assert result.epochs_done == 2
    history = read_history_rows(run / "history.csv")
    assert [int(r["epoch"]) for r in history] == [1, 2]
    assert {"loss_G", "loss_D", "loss_L1", "val_L1", "val_PSNR", "val_SSIM"} <= set(history[0])
    assert float(history[0]["val_PSNR"]) > 0
    for name in ("config.json", "run_summary.json", "figures/loss_curve.png",
                 "checkpoints/gan_t1_to_t2_last.pth", "checkpoints/gan_t1_to_t2_best.pth"):  # fmt: skip
        assert (run / name).is_file(), name
    payload = load_checkpoint(run / "checkpoints" / "gan_t1_to_t2_last.pth")
    assert {"G", "D", "opt_G", "opt_D", "epoch", "config"} <= set(payload)
    assert payload["epoch"] == 2
    assert not (run / ".lock").exists()


def _weights(run):
    return load_checkpoint(run / "checkpoints" / "gan_t1_to_t2_last.pth")["G"]


def test_resume_at_an_epoch_boundary_equals_an_uninterrupted_run(tiny_cache, tmp_path):
    config = tiny_config(epochs=3)
    train(config, tiny_cache, tmp_path / "straight", progress=False)
    train(replace(config, train=replace(config.train, epochs=1)), tiny_cache, tmp_path / "split", progress=False)
    train(config, tiny_cache, tmp_path / "split", resume=True, progress=False)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key
    assert [r["epoch"] for r in read_history_rows(tmp_path / "split" / "history.csv")] == ["1", "2", "3"]


def test_time_budget_stops_mid_epoch_and_resume_is_exact(tiny_cache, tmp_path):
    config = tiny_config(epochs=2)
    train(config, tiny_cache, tmp_path / "straight", progress=False)
    budget = replace(config, train=replace(config.train, time_budget=1e-9))
    result = train(budget, tiny_cache, tmp_path / "split", progress=False)
    assert result.stopped_by_budget and result.global_step == 1
    train(config, tiny_cache, tmp_path / "split", resume=True, progress=False)
    straight, resumed = _weights(tmp_path / "straight"), _weights(tmp_path / "split")
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_training_into_an_existing_run_without_resume_is_refused(tiny_cache, tmp_path):
    train(tiny_config(epochs=1), tiny_cache, tmp_path / "run", progress=False)
    with pytest.raises(UserError, match="--resume"):
        train(tiny_config(epochs=1), tiny_cache, tmp_path / "run", progress=False)


def test_a_second_training_in_a_locked_folder_is_refused(tiny_cache, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".lock").write_text("1\n")  # pid 1 is alive in any container or machine
    with pytest.raises(UserError, match="another training"):
        train(tiny_config(epochs=1), tiny_cache, run, progress=False)
    (run / ".lock").write_text("999999999\n")  # no such process: a stale lock is replaced
    train(tiny_config(epochs=1), tiny_cache, run, progress=False)


def test_run_lock_is_exclusive(tmp_path):
    with RunLock(tmp_path / ".lock"):
        assert (tmp_path / ".lock").read_text().strip().isdigit()
    assert not (tmp_path / ".lock").exists()


def test_absurd_learning_rate_stops_with_a_clear_message(tiny_cache, tmp_path):
    config = tiny_config(epochs=5, lr=1e30, max_bad_steps=2)
    with pytest.raises(TrainingStopped, match="non-finite"):
        train(config, tiny_cache, tmp_path / "run", progress=False)


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "/abs", ""])
def test_a_run_name_cannot_write_outside_the_run_folder(tiny_cache, tmp_path, name):
    with pytest.raises(UserError, match="safe file name"):
        train(tiny_config(epochs=1, run_name=name), tiny_cache, tmp_path / "run", progress=False)
    assert not any(tmp_path.parent.glob("escape*"))


@pytest.mark.parametrize("fast_bf16", [False, True])
def test_the_start_line_says_what_trains_where(monkeypatch, fast_bf16):
    from mri2mri.training import loop as training_module

    monkeypatch.setattr(training_module, "cpu_has_fast_bf16", lambda: fast_bf16)
    config = tiny_config()
    runtime = Runtime(device=torch.device("cpu"), channels_last=True)
    line = training_module._start_line(config, build_networks(config, runtime), runtime, 12, 4, 3)
    assert line.startswith("training unet G (")
    assert "basic D (" in line and "cpu, " in line and "fp32 + channels_last" in line
    assert "12 slices, batch 4, 3 steps/epoch" in line
    assert ("--precision bf16" in line) == fast_bf16  # a hint only where bf16 is native


def test_the_squared_error_term_adds_lambda_l2_times_the_mse_to_the_generator_loss():
    """--lambda-l2 adds exactly lambda * MSE(fake, target) to loss_G, and with L1 off it alone
    drives G towards the target."""
    runtime = Runtime(device=torch.device("cpu"))
    source, target = _batch()
    results = {}
    for lambda_l2 in (0.0, 50.0):
        config = tiny_config(lambda_l2=lambda_l2)
        torch.manual_seed(0)
        nets = build_networks(config, runtime)
        nets.G.eval()  # the same fake in both runs' step (no dropout, batch statistics frozen)
        with torch.no_grad():
            mse = float(torch.nn.functional.mse_loss(nets.G(source), target))
        results[lambda_l2] = (gan_step(nets, source, target, config, runtime).loss_G, mse)
    (without, mse), (with_l2, _) = results[0.0], results[50.0]
    assert with_l2 - without == pytest.approx(50.0 * mse, rel=1e-4)

    config = tiny_config(lambda_l1=0.0, lambda_l2=100.0)
    torch.manual_seed(0)
    nets = build_networks(config, runtime)
    first = gan_step(nets, source, target, config, runtime)
    for _ in range(40):
        last = gan_step(nets, source, target, config, runtime)
    assert last.loss_L1 < 0.7 * first.loss_L1
