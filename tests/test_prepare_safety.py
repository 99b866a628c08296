"""`prepare` leaves nothing half-made behind on SIGTERM, and refuses a manifest that lists one
scan under two subjects (it would leak across the split)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

import mri2mri
from mri2mri.data.discovery import discover_pairs
from mri2mri.errors import DataError


def _subjects(root: Path, n: int, shape=(48, 48, 32)) -> Path:
    rng = np.random.default_rng(0)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in shape], indexing="ij"))
    inside = (grid**2).sum(0) < 0.8
    for index in range(n):
        folder = root / f"sub-{index:02d}"
        folder.mkdir(parents=True)
        t1 = np.where(inside, rng.uniform(200, 1000, shape), 0).astype(np.float32)
        for name, array in (("T1", t1), ("T2", np.where(inside, 1200 - t1, 0).astype(np.float32))):
            nib.save(nib.Nifti1Image(array, np.eye(4)), folder / f"{name}.nii.gz")
    return root


def test_a_manifest_listing_one_scan_under_two_subjects_is_refused(tmp_path):
    _subjects(tmp_path, 2, shape=(4, 4, 4))
    manifest = tmp_path / "pairs.csv"
    manifest.write_text("subject,source,target\n"
                        "a,sub-00/T1.nii.gz,sub-00/T2.nii.gz\n"
                        "b,sub-01/T1.nii.gz,sub-00/T2.nii.gz\n")  # fmt: skip
    with pytest.raises(DataError, match="subjects a and b"):
        discover_pairs(manifest, "T1", "T2")


def test_sigterm_during_prepare_leaves_no_temporary_folder(tmp_path):
    data = _subjects(tmp_path / "data", 40)
    out = tmp_path / "cache"
    # The child imports the same mri2mri as this test (the tree under test, not another install).
    src = str(Path(mri2mri.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [src, os.environ.get("PYTHONPATH")]))}
    process = subprocess.Popen(
        [sys.executable, "-m", "mri2mri", "prepare", str(data), "--out", str(out), "--quiet",
         "--image-size", "64"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
    )  # fmt: skip
    try:
        while process.poll() is None and not list(tmp_path.glob(".cache.tmp-*/chunk_*")):
            time.sleep(0.05)
        if process.poll() is not None:
            pytest.skip("prepare finished before it could be interrupted")
        process.send_signal(signal.SIGTERM)
        _, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
    assert process.returncode != 0
    assert b"Traceback" not in err
    assert not list(tmp_path.glob(".cache.tmp-*"))
    assert not out.exists()


def test_a_failed_registration_is_one_line():
    from mri2mri.data.io import Volume
    from mri2mri.data.preprocess import register_rigid

    rng = np.random.default_rng(0)

    def tiny(name: str) -> Volume:  # too small for the registration's smoothing: ITK refuses
        return Volume(data=rng.uniform(1, 10, (3, 3, 3)).astype(np.float32), affine=np.eye(4),
                      original_affine=np.eye(4), original_shape=(3, 3, 3),
                      original_orientation=("R", "A", "S"), path=name)  # fmt: skip

    with pytest.raises(DataError) as info:
        register_rigid(tiny("T2.nii.gz"), tiny("T1.nii.gz"))
    assert "\n" not in str(info.value) and "T1.nii.gz" in str(info.value)


def test_skipped_counts_subjects_not_problem_lines(tmp_path, capsys):
    from mri2mri.config import DataConfig
    from mri2mri.data.preprocess import prepare

    data = _subjects(tmp_path / "data", 3, shape=(24, 24, 8))
    for old, new in (("T1", "PD"), ("T2", "FLAIR")):  # no T1 and no T2: two problems, one subject
        (data / "sub-02" / f"{old}.nii.gz").rename(data / "sub-02" / f"{new}.nii.gz")
    prepare(data, DataConfig(image_size=32, val_fraction=0.0, test_fraction=0.0), tmp_path / "c", progress=False)
    captured = capsys.readouterr()
    assert "prepared 2 subjects" in captured.out + captured.err
    assert "skipped 1 " in captured.out + captured.err
