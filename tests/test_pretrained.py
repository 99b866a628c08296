"""The ready-made models shipped inside the package: found by name, checked, usable offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import REAL_DATA, link_real_files, requires_real_data

from mri2mri import pretrained
from mri2mri.cli import main
from mri2mri.errors import UserError
from mri2mri.export import export_model
from mri2mri.predict import predict_path

ROOT = Path(__file__).resolve().parents[1]
MODELS = pretrained.ready_models()
SHIPPED = ("t1-to-t2", "brasyn-t2")
# A real patient with the three naming conventions' first (t1n/t1c/t2f/t2w).
CASE = "BraTS-GLI-00001-000"
FILES = {"T1": f"{CASE}-t1n.nii.gz", "T1c": f"{CASE}-t1c.nii.gz", "FLAIR": f"{CASE}-t2f.nii.gz",
         "T2": f"{CASE}-t2w.nii.gz"}  # fmt: skip


def test_the_package_ships_the_models_the_readme_promises_within_40_mb():
    assert set(SHIPPED) <= set(MODELS)
    assert sum(m.path.stat().st_size for m in MODELS.values()) <= 40e6
    for model in MODELS.values():
        assert pretrained.verified_path(model) == model.path  # its SHA-256 matches the manifest
        assert model.card.is_file() and model.name in model.card.read_text()
        cv = model.entry["cross_validation"]
        assert cv["runs"] >= 12 and cv["commands"]  # six folds x two seeds, with the commands
        assert model.entry["training"]["commands"]


def test_models_lists_every_model_with_its_cross_validated_scores(capsys):
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    for model in MODELS.values():
        row = next(line for line in table.splitlines() if line.startswith(f"| {model.name} |"))
        psnr = model.entry["cross_validation"]["model"]["psnr_mask"]["mean"]
        table_psnr = model.entry["cross_validation"]["baseline"]["psnr_mask"]["mean"]
        assert f"{psnr:.2f} ±" in row and f"({table_psnr:.2f} ±" in row
        assert " + ".join(model.sources) in row


def test_models_name_prints_the_card_and_an_unknown_name_is_one_line(capsys):
    assert main(["models", "t1-to-t2"]) == 0
    assert capsys.readouterr().out.startswith("# Model card: mri2mri ready-made model `t1-to-t2`")
    assert main(["models", "t1-to-pd"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "t1-to-t2" in err and "brasyn-t2" in err


def test_a_name_that_is_neither_a_file_nor_a_model_lists_the_models(tmp_path, capsys):
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), tmp_path / "t1.nii.gz")
    assert main(["predict", "t1-to-t3", str(tmp_path / "t1.nii.gz"), str(tmp_path / "out.nii.gz")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "t1-to-t3: does not exist" in err and "t1-to-t2" in err and "brasyn-t2" in err
    with pytest.raises(UserError, match="ready-made models: t1-to-t2"):
        export_model("t1-to-t3", onnx_path=tmp_path / "x.onnx")


@pytest.fixture
def moved_weights(tmp_path, monkeypatch) -> Path:
    """A copy of the shipped weights folder, which the registry then reads (the files under test
    are the copies: corrupting them leaves the installation intact)."""
    copy = tmp_path / "weights"
    shutil.copytree(pretrained.WEIGHTS_DIR, copy)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", copy)
    return copy


def test_corrupt_or_missing_weights_are_one_line_exit_2_and_nothing_is_written(moved_weights, tmp_path, capsys):
    nib.save(nib.Nifti1Image(np.ones((8, 8, 4), np.float32), np.eye(4)), tmp_path / "t1.nii.gz")
    weights = moved_weights / "t1-to-t2.pth"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside the tensors
    weights.write_bytes(bytes(data))
    out = tmp_path / "out.nii.gz"
    assert main(["predict", "t1-to-t2", str(tmp_path / "t1.nii.gz"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "do not match their SHA-256" in err and "t1-to-t2.pth" in err
    weights.unlink()
    assert main(["export", "t1-to-t2", "--onnx", str(tmp_path / "t.onnx")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "are missing" in err
    assert not out.exists() and not (tmp_path / "t.onnx").exists()


def test_a_path_of_the_same_name_wins_over_the_ready_made_model(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("t1-to-t2").mkdir()
    assert pretrained.resolve_model("t1-to-t2") == Path("t1-to-t2")
    assert pretrained.resolve_model("brasyn-t2") == MODELS["brasyn-t2"].path


def test_the_shipped_weights_are_plain_tensors_loaded_with_weights_only():
    import torch

    for model in MODELS.values():
        payload = torch.load(model.path, weights_only=True)  # raises on any pickled object
        assert {"G", "config"} <= set(payload) and "D" not in payload and "opt_G" not in payload
        assert all(v.dtype == torch.float16 for v in payload["G"].values() if v.is_floating_point())


def test_t1_to_t2_predicts_the_built_in_phantom_and_its_onnx_export_agrees(tmp_path):
    """On the simulated T1: an image on the input's grid, brighter where the phantom's T2 is
    bright; the ONNX export of the shipped model gives the same volume to 1e-4 of its range."""
    from mri2mri.data.phantom import write_phantom

    subject = write_phantom(tmp_path / "phantom", n_subjects=1, seed=0)[0]
    predict_path("t1-to-t2", subject / "T1.nii.gz", tmp_path / "torch.nii.gz")
    export_model("t1-to-t2", onnx_path=tmp_path / "t1-to-t2.onnx")
    predict_path(tmp_path / "t1-to-t2.onnx", subject / "T1.nii.gz", tmp_path / "onnx.nii.gz")
    source = nib.load(subject / "T1.nii.gz")
    by_torch = nib.load(tmp_path / "torch.nii.gz")
    assert by_torch.shape == source.shape and np.allclose(by_torch.affine, source.affine)
    synthetic = by_torch.get_fdata(dtype=np.float32)
    by_onnx = nib.load(tmp_path / "onnx.nii.gz").get_fdata(dtype=np.float32)
    value_range = float(synthetic.max() - synthetic.min())
    assert value_range > 0.1 and np.isfinite(synthetic).all()
    assert float(np.abs(synthetic - by_onnx).max()) <= 1e-4 * value_range
    real = nib.load(subject / "T2.nii.gz").get_fdata(dtype=np.float32)
    brain = synthetic > 0
    assert np.corrcoef(synthetic[brain], real[brain])[0, 1] > 0.3
    provenance = json.loads(by_torch.header.extensions[0].get_content())
    assert provenance["ready_made_model"] == "t1-to-t2"


@requires_real_data
@pytest.mark.parametrize("name", SHIPPED)
def test_each_shipped_model_predicts_a_real_patient(name, tmp_path):
    """A real patient's volumes in, a synthetic T2 on the input's grid out, resembling the real T2
    in the brain far more than the T1 does (this patient, with a large tumour, was among the 27 the
    model learnt from: the check is that the shipped file works end to end; the cross-validation
    says how well it generalises)."""
    model = MODELS[name]
    subject = link_real_files(tmp_path / CASE, CASE, [FILES[c] for c in model.sources])
    source = subject / FILES["T1"] if len(model.sources) == 1 else subject
    predict_path(name, source, tmp_path / "out.nii.gz")
    synthetic = nib.load(tmp_path / "out.nii.gz")
    assert synthetic.shape == (240, 240, 155)
    values = synthetic.get_fdata(dtype=np.float32)
    real = nib.load(REAL_DATA / CASE / FILES["T2"]).get_fdata(dtype=np.float32)
    brain = (values > 0) & (real > 0)
    assert brain.sum() > 500_000 and np.isfinite(values).all()
    t1 = nib.load(REAL_DATA / CASE / FILES["T1"]).get_fdata(dtype=np.float32)
    resemblance = np.corrcoef(values[brain], real[brain])[0, 1]
    assert resemblance > 0.4 and resemblance > np.corrcoef(t1[brain], real[brain])[0, 1] + 0.5  # T1: -0.2


def test_the_wheel_contains_the_weights_manifest_and_cards(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(tmp_path)], check=True, capture_output=True)  # fmt: skip
    wheel = next(tmp_path.glob("mri2mri-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "mri2mri/weights/manifest.json" in names
    for model in MODELS.values():
        assert f"mri2mri/weights/{model.file}" in names
        assert f"mri2mri/weights/{model.name}_MODEL_CARD.md" in names
