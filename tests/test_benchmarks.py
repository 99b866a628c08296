"""The benchmarks run end to end (``--quick``) and write JSON whose numbers agree with each other.

No timing is asserted (the machine may be shared): what is checked is that each summary is
computed from the measurements it reports, that every variant asked for was timed, and that
the contention benchmark applies mri2mri's thread policy in each measurement and leaves no
competing process behind.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(script: str, *options: str) -> subprocess.CompletedProcess:
    command = [sys.executable, str(BENCHMARKS / f"{script}.py"), "--quick", *options]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.mark.parametrize("benchmark", ["bench_train", "bench_predict"])
def test_benchmark_writes_json_with_the_ratio_to_the_plain_loop(benchmark, tmp_path):
    out = tmp_path / f"{benchmark}.json"
    result = _run(benchmark, "--device", "cpu", "--generators", "basic,unet", "--variants", "fp32,fp32+cl",
                  "--out", str(out))  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert payload["machine"]["device"] == "cpu" and payload["machine"]["threads"] >= 1
    assert payload["variants"] == ["fp32", "fp32+cl"]
    assert [row["generator"] for row in payload["rows"]] == ["basic", "unet"]
    key = "images_per_s" if benchmark == "bench_train" else "slices_per_s"
    for row, table_row in zip(payload["rows"], payload["table"], strict=True):
        rates = row[key]
        assert set(rates) == {"plain", "fp32", "fp32+cl"}, "every variant asked for is timed"
        assert rates["plain"]["speedup"] == 1.0  # the baseline against itself
        for variant, summary in rates.items():
            assert 0 < summary["min"] <= summary["median"] <= summary["max"], variant
        # One round in --quick: the speed-up is the ratio of the two medians.
        ratio = rates["fp32+cl"]["median"] / rates["plain"]["median"]
        assert rates["fp32+cl"]["speedup"] == pytest.approx(ratio, rel=0.01, abs=0.002)
        unit = "img/s" if benchmark == "bench_train" else "slices/s"
        assert table_row[f"fp32+cl {unit}"] == rates["fp32+cl"]["median"]
        assert table_row["fp32+cl / plain"] == rates["fp32+cl"]["speedup"]
    assert "| generator |" in result.stdout


def test_the_default_variant_resolves_precision_auto():
    """`--precision auto` is the training default; the benchmarks time what it resolves to."""
    sys.path.insert(0, str(BENCHMARKS))
    import torch
    from _common import default_variant

    from mri2mri.runtime import cpu_has_fast_bf16

    expected = "bf16" if cpu_has_fast_bf16() else "fp32"
    assert default_variant(torch.device("cpu"), compile_model=False) == f"{expected}+cl"


def _leftover_competitors(benchmark_pid: int) -> list[int]:
    """Processes still running with the marker of the benchmark process ``benchmark_pid``."""
    marker = f"competitor-of-{benchmark_pid}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if marker in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:  # the process ended while we looked
                continue
    return found


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="looks for leftover processes in /proc")
def test_contention_benchmark_measures_alone_and_beside_busy_processes(tmp_path):
    out = tmp_path / "bench_contention.json"
    environment = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    command = [sys.executable, str(BENCHMARKS / "bench_contention.py"), "--quick", "--out", str(out)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=environment)
    stdout, stderr = process.communicate(timeout=600)
    assert process.returncode == 0, stderr[-2000:]
    assert _leftover_competitors(process.pid) == [], "every competing process is stopped"

    payload = json.loads(out.read_text())
    measurements = payload["measurements"]
    cells = {(m["workload"], m["competitors"]) for m in measurements}
    assert cells == {("train", 0), ("train", 1), ("predict", 0), ("predict", 1)}
    for measurement in measurements:
        # Each measurement ran in its own process, with the policy the mri2mri command applies.
        assert "(mri2mri's choice" in measurement["policy_line"]
        assert measurement["rate"] > 0
    rate = {(m["workload"], m["competitors"]): m["rate"] for m in measurements}
    for row in payload["rows"]:
        expected = rate[row["workload"], row["competitors"]] / rate[row["workload"], 0]
        assert row["ratio_to_alone"] == pytest.approx(expected, rel=0.01)
        assert row["median"] == pytest.approx(rate[row["workload"], row["competitors"]], rel=0.01)
    assert "| workload |" in stdout


def test_run_all_picks_up_the_contention_benchmark():
    """`make bench` runs every benchmarks/bench_*.py script, in quick mode with --out when asked."""
    sys.path.insert(0, str(BENCHMARKS))
    from run_all import accepted_options

    script = BENCHMARKS / "bench_contention.py"
    assert script in sorted(BENCHMARKS.glob("bench_*.py"))
    options = accepted_options(script)
    assert "--quick" in options and "--out" in options


@pytest.fixture(scope="module")
def finished_fold(tmp_path_factory) -> tuple[Path, str, dict]:
    """An ablation output's layout with one finished leave-one-out run (``default-s0``), a
    copy of it under another configuration's name (``default-ssim-s0``, which the scripts must
    not take for a seed of ``default``), and the metrics `mri2mri test` wrote for it."""
    import shutil

    from conftest import tiny_config, write_tiny_cache

    from mri2mri.cli import main as cli_main
    from mri2mri.config import replace
    from mri2mri.data.cache import SliceCache
    from mri2mri.training import train

    root = tmp_path_factory.mktemp("real")
    held_out = "sub-04"  # the tiny cache's test subject
    fold = write_tiny_cache(root / f"fold-{held_out}")
    assert SliceCache(fold).subjects[-1].subject == held_out
    # Noise in the target keeps PSNR near 25 dB, where `test`'s bf16 autocast (on CPUs that have
    # it) and this script's fp32 agree to a few hundredths of a dB; near-perfect tiny data would not.
    target = np.load(fold / "target.npy", mmap_mode="r+")
    target[:] = np.clip(target + np.random.default_rng(0).normal(0, 0.05, target.shape), 0, 1)
    target.flush()
    del target
    run = root / f"runs-{held_out}" / "default-s0"
    config = tiny_config(epochs=1, max_steps_per_epoch=2, precision="fp32")
    train(replace(config, model=replace(config.model, residual="intensity-map")), fold, run, progress=False)
    assert cli_main(["test", str(run), str(fold), "--quiet"]) == 0
    shutil.copytree(run, run.with_name("default-ssim-s0"))
    return root, held_out, json.loads((run / "metrics.json").read_text())


def test_correction_weight_rescoring_agrees_with_test(finished_fold, tmp_path):
    """benchmarks/correction_weight.py scores a finished leave-one-out run at several weights
    without retraining; at the run's own weight it must give what `mri2mri test` wrote."""
    root, held_out, metrics = finished_fold
    scored = metrics["per_subject"][held_out]["model"]["psnr_mask"]["mean"]
    command = [sys.executable, str(BENCHMARKS / "correction_weight.py"), "--runs", str(root),
               "--weights", "0", "0.5", "1", "--out", str(tmp_path / "results"), "--tag", "cw"]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    by_run = json.loads((tmp_path / "results" / "cw.json").read_text())["folds"][held_out]
    assert set(by_run) == {"default-s0"}  # not the other configuration's run
    scores = by_run["default-s0"]
    assert scores["0.5"]["psnr_mask"] == pytest.approx(scored, abs=0.05)
    assert set(scores) == {"0", "0.5", "1", "intensity-map"}
    assert "w = 0.5" in (tmp_path / "results" / "cw.md").read_text()


def test_test_time_averaging_benchmark_rescores_with_test_and_pairs_each_run(finished_fold, tmp_path):
    """benchmarks/tta.py scores each finished run with `test --tta K`; its K = 1 is what `test`
    wrote, and each change it reports is the run's own K minus its K = 1."""
    root, held_out, metrics = finished_fold
    command = [sys.executable, str(BENCHMARKS / "tta.py"), "--runs", str(root), "--configs", "default",
               "--passes", "4", "--out", str(tmp_path / "results"), "--tag", "tta",
               "--scratch", str(tmp_path / "scratch")]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    payload = json.loads((tmp_path / "results" / "tta.json").read_text())
    assert payload["passes"] == [1, 4] and [r["run"] for r in payload["results"]] == ["default-s0"]
    scores = payload["results"][0]["scores"]
    assert scores["1"]["psnr_mask"] == pytest.approx(metrics["pooled"]["model"]["psnr_mask"]["mean"], abs=0.05)
    assert scores["4"]["psnr_mask"] != scores["1"]["psnr_mask"]  # a trained net is not flip-invariant
    change = payload["changes"]["4"]["ssim_mask"]
    assert change["mean"] == pytest.approx(scores["4"]["ssim_mask"] - scores["1"]["ssim_mask"])
    assert change["runs"] == 1 and change["improved"] == int(change["mean"] > 0)
    saved = json.loads((tmp_path / "scratch" / "tta" / held_out / "default-s0" / "k4" / "metrics.json").read_text())
    assert saved["protocol"]["test_time_passes"] == 4
    assert "K = 4" in (tmp_path / "results" / "tta.md").read_text()


def test_ablation_rows_keep_the_precision_and_the_weight_each_run_was_tested_at(finished_fold):
    """A 600 s budget means nothing without the steps and precision it bought, and a re-packaged
    model card must know the weight its runs were scored at."""
    sys.path.insert(0, str(BENCHMARKS))
    from ablation import fold_scores

    root, held_out, _ = finished_fold
    run = root / f"runs-{held_out}" / "default-s0"
    model = fold_scores(run)["model"]
    assert model["precision"] == "fp32" and model["steps"] == 2
    assert model["correction_weight"] == json.loads((run / "config.json").read_text())["model"]["correction_weight"]


def _fake_bysite_result() -> dict:
    """Rows as benchmarks/ablation.py writes them: two folds, two seeds, the table's scores beside."""
    rows = []
    for f, fold in enumerate(("brats2013", "tcia01")):
        for seed in (0, 1):
            rows.append({"fold": fold, "method": "default", "seed": seed, "psnr_mask": 16.0 + f + seed / 4,
                         "psnr_mask_window": 15.0 + f, "ssim_mask": 0.58, "table_psnr_mask": 15.0 + f,
                         "table_psnr_mask_window": 12.0 + f, "table_ssim_mask": 0.50})  # fmt: skip
        rows.append({"fold": fold, "method": "intensity-map", "seed": None, "psnr_mask": 15.0 + f})
    return {"datasets": {"real": {"rows": rows}}}


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_quality_figures_draw_the_bysite_result_and_the_curves(tmp_path, lang):
    (tmp_path / "bysite.json").write_text(json.dumps(_fake_bysite_result()))
    curves = {"rows": [{"fold": fold, "patients": n, "steps": s, "seed": 0, "psnr_mask": 14 + n / 10,
                        "table_psnr_mask": 13.0, "psnr_mask_window": 11.0, "table_psnr_mask_window": 8.0}
                       for fold in ("brats2013", "tcia01") for n, s in ((3, 100), (9, 100), (23, 100), (23, 300))]}  # fmt: skip
    (tmp_path / "curves.json").write_text(json.dumps(curves))
    script = [sys.executable, str(BENCHMARKS / "quality_figures.py")]
    for figure in ("bysite", "curves"):
        out = tmp_path / f"{figure}-{lang}.png"
        done = subprocess.run([*script, figure, "--results", str(tmp_path / f"{figure}.json"), "--out", str(out),
                               "--lang", lang], capture_output=True, text=True, timeout=300)  # fmt: skip
        assert done.returncode == 0, done.stderr
        assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20_000


def test_quality_figures_refuse_a_configuration_the_result_does_not_hold(tmp_path):
    (tmp_path / "bysite.json").write_text(json.dumps(_fake_bysite_result()))
    done = subprocess.run([sys.executable, str(BENCHMARKS / "quality_figures.py"), "bysite", "--results",
                           str(tmp_path / "bysite.json"), "--config", "hinge", "--out", str(tmp_path / "x.png")],
                          capture_output=True, text=True, timeout=300)  # fmt: skip
    assert done.returncode == 2 and not (tmp_path / "x.png").exists()
    assert done.stderr.strip().splitlines() == ["error: no run of 'hinge' in the result (methods: default, intensity-map)"]


def test_the_curves_share_ticks_across_folds():
    """Each fold's x values stay on the axis: a fold with fewer budget points (or 24 patients where
    another has 23) must not wipe the other folds' ticks."""
    sys.path.insert(0, str(BENCHMARKS))
    from quality_figures import draw_curves, shared_ticks

    assert shared_ticks({3, 9, 23, 24}) == ([3, 9, 23.5], ["3", "9", "23/24"])
    rows = [{"fold": fold, "patients": n, "steps": s, "seed": 0, "psnr_mask": 15.0, "table_psnr_mask": 13.0,
             "psnr_mask_window": 12.0, "table_psnr_mask_window": 9.0}
            for fold, everyone, budgets in (("brats2013", 23, (100, 300)), ("tcia01", 24, (100,)))
            for n, s in ((3, 100), (9, 100), *((everyone, b) for b in budgets))]  # fmt: skip
    figure = draw_curves({"rows": rows}, "en")
    patients_axis, steps_axis = figure.axes[0], figure.axes[1]
    assert [t.get_text() for t in patients_axis.get_xticklabels()] == ["3", "9", "23/24"]
    assert [t.get_text() for t in steps_axis.get_xticklabels()] == ["100", "300"]
