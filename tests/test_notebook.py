"""The companion notebook runs from top to bottom on tiny settings."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "t1_to_t2_gan.ipynb"

pytestmark = pytest.mark.slow


def test_notebook_executes_in_quick_mode(tmp_path, monkeypatch):
    monkeypatch.setenv("MRI2MRI_NOTEBOOK_QUICK", "1")
    monkeypatch.setenv("MRI2MRI_NOTEBOOK_DIR", str(tmp_path / "work"))
    monkeypatch.setenv("OMP_NUM_THREADS", os.environ.get("OMP_NUM_THREADS", "2"))
    notebook = nbformat.read(NOTEBOOK, as_version=4)
    NotebookClient(notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}).execute()
    outputs = "".join(
        output.get("text", "") for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs
    )
    assert "generator" in outputs and "patch map" in outputs
    assert (tmp_path / "work" / "gan_t1_to_t2" / "metrics.json").is_file()
