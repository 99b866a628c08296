"""The ready-made models shipped inside the package: found by name, checked, usable offline."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from dataclasses import replace
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
        card = model.card.read_text()  # the card quotes the manifest's scores and their protocol
        assert cv["protocol"] in card and f"{cv['model']['psnr_mask']['mean']:.2f} ±" in card


def test_models_lists_every_model_with_its_cross_validated_scores(capsys):
    assert main(["models"]) == 0
    table = capsys.readouterr().out
    for model in MODELS.values():
        row = next(line for line in table.splitlines() if line.startswith(f"| {model.name} |"))
        psnr = model.entry["cross_validation"]["model"]["psnr_mask"]["mean"]
        table_psnr = model.entry["cross_validation"]["baseline"]["psnr_mask"]["mean"]
        assert f"{psnr:.2f} ±" in row and f"({table_psnr:.2f} ±" in row
        assert " + ".join(model.sources) in row


def test_the_models_table_says_which_protocol_scored_which_model():
    entries = {name: dict(MODELS[name].entry) for name in SHIPPED}
    for name, text in zip(SHIPPED, ("600 s per fold.", "3000 steps per fold."), strict=True):
        entries[name]["cross_validation"] = {**entries[name]["cross_validation"], "protocol": text}
    table = pretrained.models_table({n: replace(MODELS[n], entry=entries[n]) for n in SHIPPED})
    assert "`t1-to-t2`: 600 s per fold. `brasyn-t2`: 3000 steps per fold." in table
    entries["brasyn-t2"]["cross_validation"]["protocol"] = "600 s per fold."
    same = pretrained.models_table({n: replace(MODELS[n], entry=entries[n]) for n in SHIPPED})
    assert same.count("600 s per fold.") == 1 and "`t1-to-t2`:" not in same


def _ready_models_script(tmp_path, monkeypatch):
    """scripts/ready_models.py, reading its results from ``tmp_path``."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("ready_models", ROOT / "scripts" / "ready_models.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "RESULTS", tmp_path)
    return script


def _write_600s_result(where: Path, weight_of_run_3: float = 0.75) -> None:
    """A cross-validation at 600 s as benchmarks/ablation.py writes it: six folds x two seeds."""
    folds = ("brats2013", "cbica-1", "cbica-2", "tcia01", "tcia02-03-10", "original")
    scores = {"psnr_mask": 17.0, "ssim_mask": 0.6, "psnr_mask_window": 16.0, "ssim_mask_window": 0.57,
              "histogram_w1": 0.08}  # fmt: skip
    rows = [{"fold": fold, "method": "default", "seed": seed, **scores, "psnr_mask": 17.0 + seed,
             "steps": 9700 + 100 * seed, "precision": "fp32", "correction_weight": 0.75, "table_psnr_mask": 15.5}
            for fold in folds for seed in (0, 1)]  # fmt: skip
    rows[3]["correction_weight"] = weight_of_run_3
    rows += [{"fold": fold, "method": "intensity-map", "seed": None, **scores, "psnr_mask": 15.5} for fold in folds]
    result = {"budget_s": 600.0, "steps": None, "image_size": 128, "datasets": {"real": {"rows": rows}},
              "machine": {"device": "cpu", "device_name": "Some Xeon", "cpu_count": 2}}  # fmt: skip
    (where / "quality_bysite_600s.json").write_text(json.dumps(result))


def test_a_card_from_a_600_s_cross_validation_names_the_steps_and_the_machine(tmp_path, monkeypatch):
    script = _ready_models_script(tmp_path, monkeypatch)
    _write_600s_result(tmp_path)
    cv = script.cross_validation("t1-to-t2")
    assert "600 s of training per fold (9,700-9,800 steps; fp32 on Some Xeon, 2 cores)" in cv["protocol"]
    assert cv["runs"] == 12 and cv["beats_intensity_map"] == "12/12"
    assert cv["model"]["psnr_mask"] == {"mean": 17.5, "std": 0.5}
    _write_600s_result(tmp_path, weight_of_run_3=0.5)  # a run scored at another weight than the shipped one
    with pytest.raises(SystemExit, match=r"quality_bysite_600s\.json: runs tested at correction weight"):
        script.cross_validation("t1-to-t2")


def test_card_rewrites_a_model_s_scores_and_card_and_leaves_its_weights(moved_weights, tmp_path, monkeypatch):
    script = _ready_models_script(tmp_path, monkeypatch)
    _write_600s_result(tmp_path)
    weights = {p.name: p.read_bytes() for p in moved_weights.glob("*.pth")}
    other = (moved_weights / "brasyn-t2_MODEL_CARD.md").read_text(), pretrained.ready_models()["brasyn-t2"].entry
    script.card("t1-to-t2")
    models = pretrained.ready_models()
    card = models["t1-to-t2"].card.read_text()
    assert "Some Xeon" in card and "| `t1-to-t2` recipe | 17.50 ± 0.50 |" in card
    assert models["t1-to-t2"].entry["cross_validation"]["runs"] == 12
    assert {p.name: p.read_bytes() for p in moved_weights.glob("*.pth")} == weights
    assert ((moved_weights / "brasyn-t2_MODEL_CARD.md").read_text(), models["brasyn-t2"].entry) == other
    data = bytearray((moved_weights / "t1-to-t2.pth").read_bytes())
    data[len(data) // 2] ^= 0xFF  # the card must describe the very weights it sits beside
    (moved_weights / "t1-to-t2.pth").write_bytes(bytes(data))
    with pytest.raises(SystemExit, match=r"t1-to-t2\.pth"):
        script.card("t1-to-t2")


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
