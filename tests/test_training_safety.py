"""A diverged training saves no weights, and a run always knows which subjects it trained on, so
`test` never scores them: the split is in the run folder from the start, and a run without one
is not scored on other data unless told what it trained on."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import tiny_config, write_tiny_cache

from mri2mri.checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from mri2mri.cli import main as cli_main
from mri2mri.errors import DataError, UserError
from mri2mri.inference import evaluate_run
from mri2mri.models import build_generator
from mri2mri.training import train

TINY = ["--batch-size", "4", "--base-channels", "8", "--residual", "none", "--no-augment", "--device", "cpu",
        "--quiet"]  # fmt: skip


def test_a_diverged_training_writes_no_weights_and_says_so(tmp_path, capsys):
    """A finite but absurd learning rate makes the weights NaN within one epoch: training stops
    with one line instead of saving them as the best and last checkpoints."""
    cache = write_tiny_cache(tmp_path / "cache")
    run = tmp_path / "run"
    code = cli_main(["train", str(cache), "--out", str(run), "--epochs", "2", "--lr", "1e10", *TINY])
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    assert "NaN or infinite" in err
    for checkpoint in (run / "checkpoints").glob("*.pth"):  # whatever was saved is finite
        weights = load_checkpoint(checkpoint)["G"]
        assert all(torch.isfinite(v).all() for v in weights.values() if v.is_floating_point()), checkpoint


def test_save_checkpoint_refuses_non_finite_weights_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "run_last.pth"
    good = {"G": {"w": torch.ones(3)}, "config": {}}
    save_checkpoint(path, good)
    before = path.read_bytes()
    for key in ("G", "D", "ema"):
        with pytest.raises(CheckpointError, match=f"{key} weight w is NaN or infinite"):
            save_checkpoint(path, {**good, key: {"w": torch.tensor([1.0, float("nan")])}})
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run_last.pth"]


def _run_without_split(root: Path) -> Path:
    """A run folder as an interrupted or Python-driven training left it: cache, config and
    checkpoint, but no split.json."""
    config = tiny_config()
    run = root / "run"
    write_tiny_cache(run / "cache")
    config.save(run / "config.json")
    torch.manual_seed(0)
    payload = {"G": build_generator(config.model).state_dict(), "config": config.to_dict()}
    save_checkpoint(run / "checkpoints" / "gan_t1_to_t2_best.pth", payload)
    return run


def test_a_run_of_unknown_split_is_not_scored_on_other_data(tmp_path):
    run = _run_without_split(tmp_path)
    # Other data in which sub-00, a training subject of the run, is a test subject.
    other = write_tiny_cache(tmp_path / "other", splits=("test", "train", "train", "val", "test"), seed=1)
    with pytest.raises(UserError, match="--trained-on"):
        evaluate_run(run, other, out_dir=tmp_path / "eval", device="cpu", progress=False)
    assert not (tmp_path / "eval").exists()
    # Told what the run trained on, `test` refuses the leaked subject.
    for trained_on in (run / "cache", run / "cache" / "split.json"):
        with pytest.raises(DataError, match="sub-00"):
            evaluate_run(run, other, out_dir=tmp_path / "eval", device="cpu", progress=False, trained_on=trained_on)
    # The run's own cache needs nothing more: its split refuses its training subjects itself.
    result = evaluate_run(run, out_dir=tmp_path / "own", device="cpu", progress=False)
    assert result["test_set"]["subjects"] == ["sub-04"]


def test_the_command_line_refuses_it_too_with_one_line(tmp_path, capsys):
    run = _run_without_split(tmp_path)
    other = write_tiny_cache(tmp_path / "other", splits=("test", "train", "train", "val", "test"), seed=1)
    assert cli_main(["test", str(run), str(other), "--out", str(tmp_path / "eval"), "--device", "cpu", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "--trained-on" in err
    code = cli_main(["test", str(run), str(other), "--out", str(tmp_path / "eval"), "--device", "cpu", "--quiet",
                     "--trained-on", str(run / "cache")])  # fmt: skip
    assert code == 2 and "sub-00" in capsys.readouterr().err


def test_the_command_line_writes_the_split_before_the_first_step(tmp_path, monkeypatch):
    """The split is in the run folder while training runs, not only once it has returned."""
    from mri2mri import training

    cache = write_tiny_cache(tmp_path / "cache")
    run = tmp_path / "run"
    seen = {}

    def stopped_at_once(config, cache_dir, run_dir, **options):
        seen["split"] = (Path(run_dir) / "split.json").read_bytes()
        raise training.TrainingStopped("stopped", exit_code=130)

    monkeypatch.setattr(training, "train", stopped_at_once)
    assert cli_main(["train", str(cache), "--out", str(run), "--epochs", "1", *TINY]) == 130
    assert seen["split"] == (cache / "split.json").read_bytes()


def test_training_from_python_writes_the_split_when_it_starts(tmp_path):
    cache = write_tiny_cache(tmp_path / "cache")
    budget = tiny_config(epochs=1, time_budget=1e-9)  # stops after its first step
    train(budget, cache, tmp_path / "run", progress=False)
    assert (tmp_path / "run" / "split.json").read_bytes() == (cache / "split.json").read_bytes()


def test_a_fresh_run_is_refused_over_a_run_of_another_name(tmp_path):
    """A run started before checkpoints were named after the contrasts is gan_t1_to_t2 whatever
    its sources: a fresh run under the new name must not write its config over that run's."""
    cache = write_tiny_cache(tmp_path / "cache")
    run = tmp_path / "run"
    older = run / "checkpoints" / "gan_t1_to_t2_last.pth"
    older.parent.mkdir(parents=True)
    older.write_bytes(b"an older run's checkpoint")
    (run / "config.json").write_text("{}")
    with pytest.raises(UserError, match=r"gan_t1_to_t2_last\.pth exists: pass --resume"):
        train(tiny_config(run_name="gan_t1_to_flair"), cache, run, progress=False)
    assert (run / "config.json").read_text() == "{}" and older.read_bytes() == b"an older run's checkpoint"
