"""The training and inference benchmarks run end to end (``--quick``) and write their JSON."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


@pytest.mark.parametrize("benchmark", ["bench_train", "bench_predict"])
def test_benchmark_writes_json_with_the_ratio_to_the_plain_loop(benchmark, tmp_path):
    out = tmp_path / f"{benchmark}.json"
    command = [sys.executable, str(BENCHMARKS / f"{benchmark}.py"), "--quick", "--device", "cpu",
               "--generators", "basic,unet", "--out", str(out)]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert payload["machine"]["device"] == "cpu" and payload["machine"]["torch"]
    assert [row["generator"] for row in payload["rows"]] == ["basic", "unet"]
    key = "images_per_s" if benchmark == "bench_train" else "slices_per_s"
    for row in payload["rows"]:
        assert row[key]["plain"]["median"] > 0
        assert row[key][payload["optimised"]]["speedup"] > 0
    if benchmark == "bench_train":
        # The library's step saves one D forward and D's weight gradients in G's backward.
        for row in payload["rows"]:
            assert row["gflop"]["library_step"] < row["gflop"]["plain_step"]
    assert "| generator |" in result.stdout
