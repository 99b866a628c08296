"""The HTML reports: self-contained, escaped, defensive about metrics.json, and really viewable."""

from __future__ import annotations

import base64
import html
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from fontTools.ttLib import TTFont

from mri2mri import figures, report
from mri2mri.config import RunConfig, TrainConfig
from mri2mri.errors import DataError

HISTORY = (
    "epoch,loss_G,loss_D,loss_L1,val_L1,val_PSNR,val_SSIM,seconds,images_per_s\n"
    "1,30.5,0.69,29.1,0.12,18.2,0.61,3.1,41\n"
    "2,21.0,0.61,19.8,0.09,20.5,0.70,3.0,42\n"
)
# The schema of mri2mri.evaluation's metrics.json, abridged.
METRICS = {
    "schema": 1, "model_name": "unet", "source": "T1", "target": "T2",
    "caption": "Test split <2 subjects> & 8 slices",
    "beats_intensity_map": True,
    "warnings": ["unet produced 3 non-finite output values"],
    "pooled": {
        "model": {"psnr_mask": {"mean": 27.3, "std": 2.1, "n": 8},
                  "ssim_mask": {"mean": 0.91, "std": 0.03, "n": 8},
                  "mae_mask": {"mean": 0.031, "std": 0.01, "n": 8}},
        "intensity-map": {"psnr_mask": {"mean": 22.0, "std": 1.5, "n": 8},
                          "ssim_mask": {"mean": 0.8, "std": 0.04, "n": 8},
                          "mae_mask": {"mean": 0.06, "std": 0.02, "n": 8}},
    },
    "across_subjects": {"model": {"psnr_mask": {"mean": 27.0, "std": 0.3, "n": 2}}},
    "volume_psnr": {"model": {"mean": 26.5, "std": 0.4, "n": 2}},
    "per_subject": {
        "sub-07": {"n_slices": 4, "model": {"psnr_mask": {"mean": 27.1, "std": 1.0, "n": 4}}},
        "sub-08": {"n_slices": 4, "model": {"psnr_mask": {"mean": 27.5, "std": 1.1, "n": 4}}},
    },
    "protocol": {"range": "images scaled to [0, 1]"},
    "baselines": {"intensity-map": {"fitted_on": "train", "n_bins": 64}},
}
IMG_SRC = re.compile(r'<img src="([^"]*)"')


def make_run(root: Path, *, lang: str = "en") -> Path:
    run = root / "run"
    (run / "figures").mkdir(parents=True)
    RunConfig(train=TrainConfig(run_name="tiny<run>", epochs=2)).save(run / "config.json")
    (run / "history.csv").write_text(HISTORY, encoding="utf-8")
    (run / "metrics.json").write_text(json.dumps(METRICS), encoding="utf-8")
    (run / "run_summary.json").write_text(json.dumps({"best_epoch": 2, "device": "cpu"}))
    yy, xx = np.mgrid[-1:1:32j, -1:1:32j]
    head = (xx**2 + yy**2 < 0.8).astype(np.float32)
    source, target = head * (0.5 + 0.3 * xx), head * (0.6 - 0.3 * xx)
    figures.plot_triptych(source, target * 0.9, target,
                          run / "figures" / "test_visualization_01.png", mask=head, lang=lang)
    return run


@pytest.fixture(scope="module")
def run_report(tmp_path_factory) -> Path:
    return report.write_run_report(make_run(tmp_path_factory.mktemp("report")))


def test_run_report_is_self_contained(run_report):
    page = run_report.read_text(encoding="utf-8")
    sources = IMG_SRC.findall(page)
    assert len(sources) == 3  # loss curves, validation curves, one example
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    for external in ("http://", "https://", "<link", "<script", "src=\"/", "url("):
        assert external not in page
    assert "@font-face" not in page  # no Chinese text, no embedded font
    assert (run_report.parent / "figures" / "loss_curve.png").is_file()


def test_run_report_shows_config_metrics_and_summary_escaped(run_report):
    page = run_report.read_text(encoding="utf-8")
    assert "tiny&lt;run&gt;" in page and "tiny<run>" not in page
    assert html.escape(METRICS["caption"]) in page and METRICS["caption"] not in page
    assert "beats the intensity-mapping baseline" in page
    assert "<li>unet produced 3 non-finite output values</li>" in page
    # Model and baseline side by side; the better mean of each metric in bold.
    assert "<td>intensity-map</td>" in page and "<th>ssim_mask</th>" in page
    assert "<strong>27.3 ± 2.1</strong>" in page and "<strong>0.031 ± 0.01</strong>" in page
    assert "<strong>22 ± 1.5</strong>" not in page
    assert "Across subjects" in page and "26.5 ± 0.4" in page
    # Per subject: one row per (subject, method).
    assert re.search(r"<td>sub-07</td><td class=\"num\">4</td><td>model</td>"
                     r"<td class=\"num\">27.1 ± 1</td>", page)
    assert "images scaled to [0, 1]" in page and "n_bins" in page  # protocol, other entries
    assert "best_epoch" in page  # run_summary.json
    assert "lambda_l1" in page  # the configuration table


def test_run_report_in_chinese_embeds_the_glyphs_it_uses(tmp_path):
    page = report.write_run_report(make_run(tmp_path, lang="zh"), lang="zh").read_text("utf-8")
    assert '<html lang="zh-CN">' in page
    assert "运行配置" in page and "测试集指标" in page
    # Readers without a CJK font still see the text: a subset font travels inside the page.
    urls = re.findall(r"url\(([^)]*)\)", page)
    assert len(urls) == 1 and urls[0].startswith("data:font/otf;base64,")
    font = TTFont(io.BytesIO(base64.b64decode(urls[0].split(",", 1)[1])))
    cmap = font.getBestCmap()
    used = {char for char in page if ord(char) >= 0x2E80}
    assert used and all(ord(char) in cmap for char in used)
    assert len(urls[0]) < 200_000  # a subset, not the 16 MB font


def test_run_report_tolerates_partial_folders_and_unknown_metrics(tmp_path):
    run = tmp_path / "partial"
    run.mkdir()
    (run / "metrics.json").write_text(json.dumps({"pooled": {"model": {"NEW": 1.5}},
                                                  "beats_intensity_map": False,
                                                  "per_subject": [{"subject": "s1", "x": 2}]}))
    page = report.write_run_report(run).read_text(encoding="utf-8")
    assert "config.json not found" in page and "history.csv not found" in page
    assert "NEW" in page and "does NOT beat" in page and "s1" in page
    assert IMG_SRC.findall(page) == []


def test_run_report_shows_the_histogram_distance_in_both_languages(tmp_path):
    """metrics.json of this version: the windowed scores among the pooled metrics and the
    brain-intensity histogram distance per method, the lower in bold; METRICS above, without
    them (an older run folder), is shown by the other tests."""
    run = make_run(tmp_path)
    metrics = json.loads(json.dumps(METRICS))
    metrics["pooled"]["model"]["psnr_mask_window"] = {"mean": 24.2, "std": 1.9, "n": 8}
    metrics["pooled"]["intensity-map"]["psnr_mask_window"] = {"mean": 21.5, "std": 1.1, "n": 8}
    metrics["histogram_w1"] = {"model": {"mean": 0.052, "std": 0.01, "n": 2},
                               "intensity-map": {"mean": 0.071, "std": 0.02, "n": 2}}  # fmt: skip
    (run / "metrics.json").write_text(json.dumps(metrics), encoding="utf-8")
    page = report.write_run_report(run).read_text(encoding="utf-8")
    assert "<th>psnr_mask_window</th>" in page and "<strong>24.2 ± 1.9</strong>" in page
    assert "Brain-intensity histogram distance" in page and "<th>Brain histogram W1</th>" in page
    assert "<strong>0.052 ± 0.01</strong>" in page and "<strong>0.071 ± 0.02</strong>" not in page
    assert "Other entries" not in page.split("histogram distance", 1)[1].split("Per subject", 1)[0]
    chinese = report.write_run_report(run, lang="zh").read_text(encoding="utf-8")
    assert "脑内强度直方图距离" in chinese and "脑内直方图 W1 距离" in chinese


def test_run_report_errors(tmp_path):
    with pytest.raises(DataError, match="run folder not found"):
        report.write_run_report(tmp_path / "absent")
    (tmp_path / "metrics.json").write_text("{not json")
    with pytest.raises(DataError, match="metrics.json: unreadable test metrics"):
        report.write_run_report(tmp_path)


def test_comparison_report(tmp_path):
    figure = figures.plot_comparison([("a", np.full((16, 16), 0.4))], np.zeros((16, 16)),
                                     np.full((16, 16), 0.5), tmp_path / "cmp.png")
    table = "| run | PSNR |\n|---|---:|\n| unet<b> | 27.1 |\n| pipe \\| run | 25.0 |\n"
    page = report.write_comparison_report(tmp_path / "out", table, figure).read_text("utf-8")
    assert "<td>unet&lt;b&gt;</td>" in page and "<td>pipe | run</td>" in page
    assert len(IMG_SRC.findall(page)) == 1
    fallback = report.markdown_table_to_html("no table here <x>")
    assert fallback == "<pre>no table here &lt;x&gt;</pre>"


SOURCE = Path(__file__).resolve().parents[1] / "src" / "mri2mri"


def test_run_folder_file_names_are_spelled_by_the_run_folder_only():
    names = ("metrics.json", "history.csv", "predictions_preview.npz", "run_summary.json", "config.json",
             "split.json", "test_metrics.csv", "report.html", "cache.json", '/ "figures"', '/ "viewer"')
    modules = [*(SOURCE / "evaluation").glob("*.py"), *(SOURCE / "report").glob("*.py"),
               SOURCE / "compare.py", SOURCE / "modelcard.py"]
    for module in modules:
        source = module.read_text("utf-8")
        assert not [name for name in names if name in source], module.name


# --- a real browser ---------------------------------------------------------------------------

CHECK_SCRIPT = """<script>
window.addEventListener('load', () => {
  const images = Array.from(document.images);
  const broken = images.filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt);
  const marker = document.createElement('div');
  marker.id = 'image-check';
  marker.textContent = JSON.stringify({count: images.length, broken: broken});
  document.body.appendChild(marker);
});
</script>"""


def chromium() -> str:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        found = shutil.which(name)
        if found:
            return found
    pytest.skip("Chromium is not installed")


def image_check(page: Path, profile: Path) -> dict:
    """Load a copy of ``page`` with the check script in headless Chromium; return its result."""
    probe = page.with_name(page.stem + "_probe.html")
    probe.write_text(page.read_text("utf-8").replace("</body>", CHECK_SCRIPT + "</body>"), "utf-8")
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=5000",
        "--dump-dom", probe.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'<div id="image-check">(.*?)</div>', result.stdout)
    assert found, f"no marker in the DOM; stderr: {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_every_image_loads_in_headless_chromium(run_report, tmp_path):
    check = image_check(run_report, tmp_path / "profile")
    assert check == {"count": 3, "broken": []}
    # The check can fail: a corrupted data URI is reported as broken.
    broken = tmp_path / "broken.html"
    page = run_report.read_text("utf-8")
    broken.write_text(page.replace("data:image/png;base64,iVBOR", "data:image/png;base64,AAAA", 1))
    assert len(image_check(broken, tmp_path / "profile")["broken"]) == 1
