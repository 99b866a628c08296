"""`mri2mri export`: ONNX (dynamic sizes, metadata, parity), safetensors, model card, torch-free predict."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import REAL_DATA, requires_real_data, write_tiny_cache
from safetensors import safe_open
from safetensors.torch import load_file

from mri2mri.checkpoint import save_checkpoint
from mri2mri.cli import main as cli_main
from mri2mri.config import DataConfig, ModelConfig, RunConfig
from mri2mri.errors import ConfigError, DataError
from mri2mri.export import export_model
from mri2mri.models import build_generator, count_parameters
from mri2mri.models.residual import TABLE_BINS, TableResidual
from mri2mri.predict import predict_path

CONFIG = RunConfig(
    data=DataConfig(image_size=32, context_slices=1),
    model=ModelConfig(generator="unet", base_channels=8, in_channels=3, dropout=0.0),
)
METRICS = {
    "schema": 1, "split": "test", "methods": ["model", "identity", "intensity-map"],
    "test_set": {"subjects": ["sub-04"], "n_slices": 4},
    "summary": {"model": {"psnr": 24.5, "ssim": 0.81}, "identity": {"psnr": 11.0, "ssim": 0.3},
                "intensity-map": {"psnr": 20.1, "ssim": 0.7}},
    "beats_intensity_map": True,
}  # fmt: skip


def make_run(root: Path) -> Path:
    """A run folder: a 2.5D checkpoint with non-trivial BatchNorm statistics, cache, split, metrics."""
    run = root / "run"
    cache = write_tiny_cache(run / "cache", size=32)
    source = np.load(cache / "source.npy")  # (n, 1, 32, 32): make it 3 channels for the model
    np.save(cache / "source.npy", np.repeat(source, 3, axis=1))
    meta = json.loads((cache / "cache.json").read_text())
    meta["in_channels"] = 3
    (cache / "cache.json").write_text(json.dumps(meta))
    (run / "split.json").write_text((cache / "split.json").read_text())
    (run / "metrics.json").write_text(json.dumps(METRICS))
    torch.manual_seed(0)
    G = build_generator(CONFIG.model)
    give_residual_a_fitted_look(G)
    with torch.no_grad():  # a few training-mode passes give BatchNorm real running statistics
        for _ in range(3):
            G(torch.rand(4, 3, 32, 32) * 2 - 1)
    G.eval()
    save_checkpoint(
        run / "checkpoints" / "tiny_best.pth",
        {"G": G.state_dict(), "config": CONFIG.to_dict(), "epoch": 7},
    )
    return run


def give_residual_a_fitted_look(G: torch.nn.Module) -> None:
    """The default generator is a correction over the intensity-map table, which starts as the
    identity map with a zero correction: give it a curved table and a non-zero correction, so
    that every comparison below exercises both halves."""
    assert isinstance(G, TableResidual)
    with torch.no_grad():
        G.set_table(1 - torch.linspace(0, 1, TABLE_BINS) ** 2)
        last = [m for m in G.correction.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
        torch.nn.init.normal_(last.weight, std=0.05)


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("export")
    run = make_run(root)
    written = export_model(
        run, onnx_path=root / "model" / "g.onnx", safetensors_path=root / "model" / "g.safetensors"
    )
    return {"run": run, "root": root, "written": written, "onnx": root / "model" / "g.onnx",
            "safetensors": root / "model" / "g.safetensors", "card": root / "model" / "g_MODEL_CARD.md"}  # fmt: skip


def generator(run: Path) -> torch.nn.Module:
    from mri2mri.inference import load_generator

    return load_generator(run / "checkpoints" / "tiny_best.pth")[0]


def test_export_writes_models_and_one_card(exported):
    assert exported["written"] == [exported["onnx"], exported["safetensors"], exported["card"]]
    assert sorted(p.name for p in exported["onnx"].parent.iterdir()) == [
        "g.onnx",
        "g.safetensors",
        "g_MODEL_CARD.md",
    ]


@pytest.mark.parametrize("shape", [(1, 3, 32, 32), (3, 3, 64, 48)])
def test_onnx_runs_at_two_sizes_and_matches_pytorch(exported, shape):
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    source = torch.rand(*shape, generator=torch.Generator().manual_seed(1)) * 2 - 1
    with torch.inference_mode():
        expected = generator(exported["run"])(source).numpy()
    got = session.run(None, {"source": source.numpy()})[0]
    assert got.shape == (shape[0], 1, *shape[2:])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_onnx_adds_the_checkpoints_share_of_the_correction(exported):
    """The exported graph is the eval forward: the table plus correction_weight (0.75 by default)
    of the correction, not the whole correction that training adds."""
    session = ort.InferenceSession(str(exported["onnx"]), providers=["CPUExecutionProvider"])
    source = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(2)) * 2 - 1
    G = generator(exported["run"])
    assert G.correction_weight == 0.75
    with torch.inference_mode():
        table = G.lookup(source).numpy()
        G.correction_weight = 1.0
        whole = G(source).numpy()
    got = session.run(None, {"source": source.numpy()})[0]
    np.testing.assert_allclose(got - table, 0.75 * (whole - table), atol=1e-4)
    assert np.abs(whole - table).max() > 0.05  # the correction is not trivially zero


def test_onnx_metadata_carries_what_predict_needs(exported):
    model = onnx.load(str(exported["onnx"]))
    meta = {p.key: p.value for p in model.metadata_props}
    assert RunConfig.from_dict(json.loads(meta["mri2mri.config"])) == CONFIG
    assert (meta["mri2mri.source"], meta["mri2mri.target"], meta["mri2mri.generator"]) == (
        "T1",
        "T2",
        "unet",
    )
    assert meta["mri2mri.checkpoint"] == "tiny_best.pth" and meta["mri2mri.epoch"] == "7"
    reference = json.loads(meta["mri2mri.source_reference"])  # from the run folder's cache
    assert reference["n_subjects"] == 3 and abs(sum(reference["histogram"]) - 1) < 1e-4
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert [bool(d.dim_param) for d in dims] == [True, False, True, True]  # B, C fixed, H, W


def test_safetensors_holds_the_state_dict_and_config(exported):
    tensors = load_file(str(exported["safetensors"]))
    with safe_open(str(exported["safetensors"]), framework="pt") as handle:
        config = RunConfig.from_dict(json.loads(handle.metadata()["mri2mri.config"]))
    G = build_generator(config.model).eval()
    G.load_state_dict(tensors)
    source = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.inference_mode():
        torch.testing.assert_close(G(source), generator(exported["run"])(source))


def test_model_card_describes_data_networks_metrics_and_limits(exported):
    card = exported["card"].read_text()
    assert "Subjects per split: 3 train, 1 val, 1 test" in card
    assert "Slices per split: 12 train, 4 val, 4 test" in card
    assert "2.5D context: 1 neighbouring slice(s)" in card
    parameters = count_parameters(build_generator(CONFIG.model))
    assert f"Generator `unet`: {parameters:,} parameters" in card
    assert (
        "| intensity-map | 20.1 | 0.7 |" in card and "Beats the intensity-map baseline: yes" in card
    )
    assert "Not for diagnosis" in card and "field strengths" in card
    assert "`g.onnx`, `g.safetensors`" in card


def test_export_refuses_existing_files_and_bad_requests(exported, tmp_path):
    with pytest.raises(DataError, match=r"g\.onnx: exists; pass --overwrite"):
        export_model(exported["run"], onnx_path=exported["onnx"])
    with pytest.raises(DataError, match=r"model\.bin: expected a \.onnx"):
        export_model(exported["run"], onnx_path=tmp_path / "model.bin")
    with pytest.raises(ConfigError, match="nothing to export"):
        export_model(exported["run"])
    assert cli_main(["export", str(exported["run"])]) == 2
    assert list(tmp_path.iterdir()) == []


def test_two_models_share_a_folder_each_with_its_own_card(exported, tmp_path):
    first = export_model(exported["run"], safetensors_path=tmp_path / "g.safetensors")
    second = export_model(exported["run"], safetensors_path=tmp_path / "other.safetensors")
    assert first[1] == tmp_path / "g_MODEL_CARD.md" and second[1] == tmp_path / "other_MODEL_CARD.md"
    assert "`other.safetensors`" in second[1].read_text() and "`g.safetensors`" in first[1].read_text()
    (tmp_path / "h_MODEL_CARD.md").write_text("a card of its own")  # one of the same name is kept
    with pytest.raises(DataError, match=r"h_MODEL_CARD\.md: exists; pass --overwrite"):
        export_model(exported["run"], safetensors_path=tmp_path / "h.safetensors")
    assert not (tmp_path / "h.safetensors").exists()


def test_predict_with_onnx_without_torch(exported, tmp_path):
    """The ONNX route of predict runs in a process where importing torch fails, and agrees with PyTorch."""
    rng = np.random.default_rng(0)
    volume = np.zeros((30, 26, 12), np.float32)
    volume[4:26, 3:23, 2:10] = rng.uniform(100, 900, (22, 20, 8))
    affine = np.array([[0, 0, -2.0, 10], [0.9, 0.1, 0, -20], [0, -1.2, 0.3, 5], [0, 0, 0, 1]])
    nib.save(nib.Nifti1Image(volume, affine), tmp_path / "in.nii.gz")
    predict_path(exported["run"], tmp_path / "in.nii.gz", tmp_path / "torch.nii.gz", device="cpu", precision="fp32")

    script = (
        "import sys\n"
        "sys.modules['torch'] = None  # any `import torch` now raises ImportError\n"
        "from mri2mri.predict import predict_path\n"
        f"predict_path({str(exported['onnx'])!r}, {str(tmp_path / 'in.nii.gz')!r}, "
        f"{str(tmp_path / 'onnx.nii.gz')!r}, device='cpu')\n"
        "assert sys.modules['torch'] is None\n"
        "print('no torch:', sorted(m for m in sys.modules if m.startswith('torch')))\n"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert "no torch: ['torch']" in done.stdout
    by_torch, by_onnx = nib.load(tmp_path / "torch.nii.gz"), nib.load(tmp_path / "onnx.nii.gz")
    np.testing.assert_array_equal(by_onnx.affine, nib.load(tmp_path / "in.nii.gz").affine)
    np.testing.assert_allclose(by_onnx.get_fdata(), by_torch.get_fdata(), atol=1e-4)
    assert by_onnx.header["descrip"].item().decode() == "mri2mri synthetic T2 from T1, unet, g.onnx"


@pytest.mark.realdata
@requires_real_data
def test_onnx_and_pytorch_agree_on_a_real_multi_source_subject(tmp_path):
    """A T1 + T1c + FLAIR -> T2 model on a real subject folder holding only t1n/t1c/t2f: `predict`
    with the checkpoint and with its ONNX export, both with predict's default options (N4,
    resampling, the table, half the correction, the default precision), give the same volume to
    1e-4 of the output's range. (On a CPU with native bf16 the checkpoint once ran in bf16 by
    default and the ONNX graph in fp32: 3e-3 of the range apart.) A 40-slice axial slab of the
    patient, not the whole head, halves the time of the N4 of three volumes, run twice."""
    config = RunConfig(
        data=DataConfig(source=("T1", "T1c", "FLAIR"), image_size=32, context_slices=1),
        model=ModelConfig(generator="unet", base_channels=8, in_channels=9, table_channel=1, dropout=0.0),
    )
    torch.manual_seed(0)
    G = build_generator(config.model)
    give_residual_a_fitted_look(G)
    with torch.no_grad():  # real BatchNorm running statistics
        for _ in range(3):
            G(torch.rand(4, 9, 32, 32) * 2 - 1)
    checkpoint = tmp_path / "run" / "checkpoints" / "multi_best.pth"
    save_checkpoint(checkpoint, {"G": G.state_dict(), "config": config.to_dict(), "epoch": 1})
    export_model(checkpoint, onnx_path=tmp_path / "export" / "multi.onnx")
    case = "BraTS-GLI-00001-000"
    subject = tmp_path / case
    subject.mkdir()
    for contrast in ("t1n", "t1c", "t2f"):
        name = f"{case}-{contrast}.nii.gz"
        nib.save(nib.load(REAL_DATA / case / name).slicer[:, :, 50:90], subject / name)  # affine kept

    predict_path(checkpoint, subject, tmp_path / "torch.nii.gz")
    predict_path(tmp_path / "export" / "multi.onnx", subject, tmp_path / "onnx.nii.gz")
    by_torch = nib.load(tmp_path / "torch.nii.gz").get_fdata(dtype=np.float32)
    by_onnx = nib.load(tmp_path / "onnx.nii.gz").get_fdata(dtype=np.float32)
    value_range = float(by_torch.max() - by_torch.min())
    assert by_torch.shape == (240, 240, 40) and value_range > 0.1
    assert float(np.abs(by_torch - by_onnx).max()) <= 1e-4 * value_range


def test_onnx_without_mri2mri_metadata_is_refused(tmp_path):
    from onnx import TensorProto, helper

    node = helper.make_node("Neg", ["source"], ["prediction"])
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("source", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("prediction", TensorProto.FLOAT, [1, 1, 4, 4])])  # fmt: skip
    onnx.save(
        helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]),
        tmp_path / "plain.onnx",
    )
    nib.save(nib.Nifti1Image(np.ones((4, 4, 4), np.float32), np.eye(4)), tmp_path / "in.nii")
    with pytest.raises(DataError, match=r"plain\.onnx: not an mri2mri model"):
        predict_path(tmp_path / "plain.onnx", tmp_path / "in.nii", tmp_path / "out.nii")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(DataError, match=r"junk\.onnx: unreadable ONNX model"):
        predict_path(tmp_path / "junk.onnx", tmp_path / "in.nii", tmp_path / "out.nii")
    assert not (tmp_path / "out.nii").exists()


def test_another_correction_weight_reaches_predict_and_the_onnx_graph(exported, tmp_path, capsys):
    """`predict --correction-weight 1` on the checkpoint and an ONNX file exported with
    `--correction-weight 1` give the same volume, unlike the default three quarters; both record the weight.
    An ONNX file (whose weight is built in) and a weight out of range are refused in one line."""
    rng = np.random.default_rng(3)
    volume = np.zeros((30, 26, 12), np.float32)
    volume[4:26, 3:23, 2:10] = rng.uniform(100, 900, (22, 20, 8))
    nib.save(nib.Nifti1Image(volume, np.diag([1.0, 1.0, 2.0, 1.0])), tmp_path / "in.nii.gz")
    whole_onnx = tmp_path / "whole" / "g.onnx"
    export_model(exported["run"], onnx_path=whole_onnx, correction_weight=1.0)
    meta = {p.key: p.value for p in onnx.load(str(whole_onnx)).metadata_props}
    assert json.loads(meta["mri2mri.config"])["model"]["correction_weight"] == 1.0
    assert "table of its input, 1 of it at inference" in (whole_onnx.parent / "g_MODEL_CARD.md").read_text()

    options = dict(device="cpu", precision="fp32")
    predict_path(exported["run"], tmp_path / "in.nii.gz", tmp_path / "default.nii.gz", **options)
    predict_path(exported["run"], tmp_path / "in.nii.gz", tmp_path / "whole.nii.gz", correction_weight=1.0, **options)
    predict_path(whole_onnx, tmp_path / "in.nii.gz", tmp_path / "whole_onnx.nii.gz", device="cpu")
    default, whole, by_onnx = (nib.load(tmp_path / f"{n}.nii.gz") for n in ("default", "whole", "whole_onnx"))
    np.testing.assert_allclose(by_onnx.get_fdata(), whole.get_fdata(), atol=1e-4)
    assert np.abs(whole.get_fdata() - default.get_fdata()).max() > 0.01  # the weight matters (output in [0, 1])
    for image, weight in ((default, 0.75), (whole, 1.0), (by_onnx, 1.0)):
        provenance = json.loads(image.header.extensions[0].get_content())
        assert provenance["correction_weight"] == weight

    for args, message in (([str(exported["onnx"]), "--correction-weight", "0.3"], "has its weight built in"),
                          ([str(exported["run"]), "--correction-weight", "2"], "--correction-weight")):  # fmt: skip
        out = tmp_path / "refused.nii.gz"
        assert cli_main(["predict", *args[:1], str(tmp_path / "in.nii.gz"), str(out), *args[1:]]) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
        assert not out.exists()
