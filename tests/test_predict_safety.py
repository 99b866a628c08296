"""`predict` never writes a wrong result: broken models, broken checkpoints and clashing outputs
are refused with one line, exit 2, and nothing written."""

from __future__ import annotations

import math
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import write_tiny_head

from mri2mri import portable
from mri2mri.checkpoint import CHECKSUM_KEY, _digest, save_checkpoint
from mri2mri.cli import main as cli_main
from mri2mri.config import DataConfig, ModelConfig, RunConfig
from mri2mri.errors import UserError
from mri2mri.models import build_generator
from mri2mri.predict import plan_jobs, synthesise

CONFIG = RunConfig(
    data=DataConfig(image_size=32),
    model=ModelConfig(generator="unet", base_channels=4, norm="none", dropout=0.0, residual="none"),
)


def _checkpoint(path: Path, *, poison: float | None = None, **changes) -> Path:
    torch.manual_seed(0)
    G = build_generator(CONFIG.model)
    state = G.state_dict()
    if poison is not None:
        first = next(k for k, v in state.items() if v.is_floating_point())
        state[first] = torch.full_like(state[first], poison)
    payload = {"G": state, "config": CONFIG.to_dict(), "epoch": 1, **changes}
    if poison is None:
        save_checkpoint(path, payload)
    else:  # save_checkpoint refuses non-finite weights: write the file as a diverged tool would
        torch.save({**payload, CHECKSUM_KEY: _digest(payload)}, path)
    return path


def _refused(argv: list[str], output: Path, capsys) -> str:
    code = cli_main(argv)
    err = capsys.readouterr().err
    assert code == 2, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert not output.exists()
    return err


@pytest.mark.parametrize("poison", [math.nan, math.inf])
def test_a_model_with_non_finite_weights_writes_nothing(tmp_path, capsys, poison):
    checkpoint = _checkpoint(tmp_path / "bad.pth", poison=poison)
    source = write_tiny_head(tmp_path / "T1.nii.gz")
    out = tmp_path / "o.nii.gz"
    err = _refused(["predict", str(checkpoint), str(source), str(out), "--device", "cpu"], out, capsys)
    assert "NaN or infinite" in err


def test_an_exported_model_with_non_finite_weights_writes_nothing(tmp_path, capsys):
    import onnx
    from onnx import numpy_helper

    from mri2mri.export import export_model

    checkpoint = _checkpoint(tmp_path / "run" / "checkpoints" / "good_best.pth")
    model_path = tmp_path / "export" / "m.onnx"
    export_model(checkpoint, onnx_path=model_path)
    model = onnx.load(str(model_path))
    first = next(i for i in model.graph.initializer if numpy_helper.to_array(i).dtype.kind == "f")
    first.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(first), np.nan), first.name))
    onnx.save(model, str(model_path))
    source = write_tiny_head(tmp_path / "T1.nii.gz")
    out = tmp_path / "o.nii.gz"
    err = _refused(["predict", str(model_path), str(source), str(out)], out, capsys)
    assert "NaN or infinite" in err


def test_a_non_finite_output_is_refused_before_anything_is_written():
    prepared = portable.PreparedInput(
        slices=np.full((2, 1, 8, 8), 0.5, np.float32), mask=np.ones((2, 1, 8, 8), bool),
        full_mask=np.ones((8, 8, 2), bool), slice_indices=np.arange(2), geometry={}, norm={},
    )  # fmt: skip
    with pytest.raises(UserError, match="NaN or infinite"):
        synthesise(lambda batch: np.full(batch.shape, np.nan, np.float32), prepared, batch_size=4)


def test_the_mask_leaves_the_background_exactly_zero_whatever_the_values():
    values = np.array([[np.nan, 0.5], [np.inf, 0.25]], dtype=np.float32)
    mask = np.array([[False, True], [False, True]])
    result = portable.masked(values, mask)
    assert np.array_equal(result, np.array([[0.0, 0.5], [0.0, 0.25]], dtype=np.float32))


def test_a_working_model_gives_a_finite_volume_zero_outside_the_head(tmp_path, capsys):
    checkpoint = _checkpoint(tmp_path / "good.pth")
    source = write_tiny_head(tmp_path / "T1.nii.gz")
    out = tmp_path / "o.nii.gz"
    assert cli_main(["predict", str(checkpoint), str(source), str(out), "--device", "cpu"]) == 0
    data = np.asarray(nib.load(out).dataobj)
    assert np.isfinite(data).all()
    assert (data[np.asarray(nib.load(source).dataobj) == 0] == 0).all()


def test_checkpoints_of_the_wrong_structure_are_one_line(tmp_path, capsys):
    source = write_tiny_head(tmp_path / "T1.nii.gz")
    out = tmp_path / "o.nii.gz"
    absurd = CONFIG.to_dict()
    absurd["data"]["image_size"] = 10**9
    wrong_shape = {k: torch.zeros(3, 3) for k in build_generator(CONFIG.model).state_dict()}
    cases = {
        "absurd.pth": {"G": build_generator(CONFIG.model).state_dict(), "config": absurd},
        "no_config.pth": {"G": build_generator(CONFIG.model).state_dict()},
        "missing_keys.pth": {"G": {"w": torch.zeros(1)}, "config": CONFIG.to_dict()},
        "wrong_shapes.pth": {"G": wrong_shape, "config": CONFIG.to_dict()},
    }
    for name, payload in cases.items():
        save_checkpoint(tmp_path / name, payload)
        _refused(["predict", str(tmp_path / name), str(source), str(out), "--device", "cpu"], out, capsys)


def test_random_bytes_and_missing_files_are_described_as_such(tmp_path, capsys):
    source = write_tiny_head(tmp_path / "T1.nii.gz")
    out = tmp_path / "o.nii.gz"
    junk = tmp_path / "junk.pth"
    junk.write_bytes(np.random.default_rng(0).bytes(4096))
    err = _refused(["predict", str(junk), str(source), str(out), "--device", "cpu"], out, capsys)
    assert "not a checkpoint" in err and "code" not in err
    missing = tmp_path / "nope.pth"
    err = _refused(["predict", str(missing), str(source), str(out), "--device", "cpu"], out, capsys)
    assert "does not exist" in err and "checkpoints" not in err


def test_batch_outputs_are_unique_and_never_an_input(tmp_path):
    folder = tmp_path / "in"
    write_tiny_head(folder / "sub1.nii.gz")
    dicom = folder / "sub1"
    dicom.mkdir()
    (dicom / "IM0001").write_bytes(b"\0" * 200)  # a DICOM series folder, as far as naming goes
    with pytest.raises(UserError, match="sub1.nii.gz.*sub1|sub1.*sub1.nii.gz"):
        plan_jobs(folder, tmp_path / "out", overwrite=False, output_format="nifti")
    dicom.rename(folder / "sub2")
    jobs = plan_jobs(folder, tmp_path / "out", overwrite=False, output_format="nifti")
    assert len({job.output for job in jobs}) == len(jobs) == 2

    write_tiny_head(folder / "a.nii.gz")
    write_tiny_head(folder / "a_synth.nii.gz")
    with pytest.raises(UserError, match="a_synth.nii.gz"):
        plan_jobs(folder, folder, overwrite=True)


def test_an_output_created_meanwhile_is_not_replaced(tmp_path):
    from mri2mri.atomic import save_atomically

    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"the other run's result")  # appeared after the up-front existence check
    with pytest.raises(UserError, match="another process"):
        save_atomically(out, lambda tmp: Path(tmp).write_bytes(b"ours"), suffix=".nii.gz", replace=False)
    assert out.read_bytes() == b"the other run's result"
    assert [p.name for p in tmp_path.iterdir()] == ["o.nii.gz"]
