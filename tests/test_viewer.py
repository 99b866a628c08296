"""report.html's slice viewer: every test slice, small, embedded, and driven in a real browser."""

from __future__ import annotations

import html
import json
import re
import subprocess
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import write_tiny_cache
from PIL import Image
from test_report import chromium

from mri2mri import report
from mri2mri.data.cache import SliceCache
from mri2mri.evaluation import evaluate
from mri2mri.viewer import PANELS, to_8bit

SLICES = 6


def negated(source: torch.Tensor) -> torch.Tensor:
    """A stand-in model: the target of the tiny cache is a decreasing map of the source."""
    return -source[:, :1]


def make_tested_run(root: Path) -> Path:
    cache = write_tiny_cache(root / "cache", slices=SLICES, splits=("train", "train", "val", "test", "test"))
    out = root / "run"
    with warnings.catch_warnings():  # the stand-in model is not meant to beat the baseline
        warnings.filterwarnings("ignore", "model does not beat", UserWarning)
        evaluate(negated, cache, out, progress=False)
    report.write_run_report(out)
    return out


def test_viewer_keeps_every_test_slice_small(tmp_path):
    out = make_tested_run(tmp_path)
    cache = SliceCache(tmp_path / "cache")
    viewer = json.loads((out / "viewer" / "viewer.json").read_text())
    tested = cache.subjects_in("test")
    assert [s["subject"] for s in viewer["subjects"]] == [r.subject for r in tested]
    for entry, record in zip(viewer["subjects"], tested, strict=True):
        assert entry["slices"] == list(record.slice_indices)
        assert all(len(values) == SLICES for values in entry["metrics"].values())
        for panel in PANELS:
            with Image.open(out / "viewer" / entry["sprites"][panel]) as sheet:
                assert sheet.format == "JPEG" and sheet.size == (32, 32 * SLICES)
    page = (out / "report.html").read_text("utf-8")
    assert page.count('class="viewer"') == len(tested)
    assert page.count('id="viewer"') == 1  # report.html#viewer scrolls to it
    assert "http://" not in page and "https://" not in page  # nothing fetched from the network
    blob = re.search(r'id="viewer-data">(.*?)</script>', page, re.S).group(1)
    assert len(blob) < 2 * SLICES * len(PANELS) * 1500  # 8-bit JPEG: well under 1.5 kB per 32 px slice


def test_large_slices_are_downscaled_to_8_bit():
    image = np.linspace(0, 1, 256 * 200, dtype=np.float32).reshape(256, 200)
    small = to_8bit(image, 128)
    assert small.shape == (128, 100) and small.dtype == np.uint8
    assert small[0, 0] < 5 and small[-1, -1] > 250


DRIVE_SCRIPT = """<script>
(function () {
  function checksum(canvas) {
    const pixels = canvas.getContext('2d').getImageData(0, 0, canvas.width, canvas.height).data;
    let sum = 0;
    for (let i = 0; i < pixels.length; i += 1) { sum = (sum * 31 + pixels[i]) % 1000000007; }
    return sum;
  }
  function report(result) {
    const marker = document.createElement('div');
    marker.id = 'viewer-check';
    marker.textContent = JSON.stringify(result);
    document.body.appendChild(marker);
  }
  function drive() {
    const viewers = Array.from(document.querySelectorAll('.viewer'));
    if (!viewers.length || viewers.some(v => v.dataset.ready !== '1')) { setTimeout(drive, 50); return; }
    const root = viewers[0];
    const slider = root.querySelector('input[type=range]');
    const canvases = Array.from(root.querySelectorAll('canvas'));
    const text = () => root.querySelector('.slice-metrics').textContent;
    const sums = () => Object.fromEntries(canvases.map(c => [c.dataset.panel, checksum(c)]));
    const result = {initial: root.dataset.slice, panels: canvases.map(c => c.dataset.panel), states: []};
    const record = () => result.states.push({slice: root.dataset.slice, sums: sums(), text: text()});
    record();
    slider.value = '0'; slider.dispatchEvent(new Event('input')); record();
    slider.value = '3'; slider.dispatchEvent(new Event('input')); record();
    root.focus();
    root.dispatchEvent(new KeyboardEvent('keydown', {key: 'ArrowRight', bubbles: true})); record();
    report(result);
  }
  window.addEventListener('load', drive);
})();
</script>"""


def drive_viewer(page: Path, profile: Path, query: str = "") -> dict:
    probe = page.with_name(page.stem + "_viewer_probe.html")
    probe.write_text(page.read_text("utf-8").replace("</body>", DRIVE_SCRIPT + "</body>"), "utf-8")
    command = [
        chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
        "--no-first-run", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", f"--user-data-dir={profile}", "--virtual-time-budget=10000",
        "--dump-dom", probe.as_uri() + query,
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    found = re.search(r'<div id="viewer-check">(.*?)</div>', result.stdout)
    assert found, f"no marker in the DOM; stderr: {result.stderr[-2000:]}"
    return json.loads(html.unescape(found.group(1)))


def test_slider_and_arrow_keys_change_the_images_in_headless_chromium(tmp_path):
    browser = chromium()  # skips when there is none
    assert browser
    out = make_tested_run(tmp_path)
    result = drive_viewer(out / "report.html", tmp_path / "profile", "?slice=2")
    assert result["initial"] == "2"  # ?slice=2 opened the viewer there
    assert result["panels"] == list(PANELS)  # input / generated / real / error side by side
    slices = [state["slice"] for state in result["states"]]
    assert slices == ["2", "0", "3", "4"]  # opened at 2; slider to 0, to 3, then the right arrow key
    for panel in PANELS:  # every move showed another image in every panel
        sums = [state["sums"][panel] for state in result["states"]]
        assert len(set(sums)) == len(sums), (panel, sums)
    texts = [state["text"] for state in result["states"]]
    assert len(set(texts)) == len(texts)  # and that slice's own metrics
    assert all(text.startswith("slice ") and "psnr_mask" in text for text in texts)


def test_viewer_follows_the_mouse_and_the_keyboard_over_the_devtools_protocol(tmp_path):
    """Playwright drives Debian's Chromium over CDP with real input: a click on the slider, keys."""
    sync_api = pytest.importorskip("playwright.sync_api")
    browser_path = chromium()  # skips when there is none
    out = make_tested_run(tmp_path)
    show = """root => ({slice: root.dataset.slice,
                       text: root.querySelector('.slice-metrics').textContent,
                       images: Array.from(root.querySelectorAll('canvas')).map(c => c.toDataURL())})"""
    with sync_api.sync_playwright() as driver:
        browser = driver.chromium.launch(executable_path=browser_path, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page()
            requested: list[str] = []
            page.on("request", lambda request: requested.append(request.url))
            page.goto((out / "report.html").as_uri())
            page.wait_for_selector('.viewer[data-ready="1"]')
            root = page.locator(".viewer").first
            slider = root.locator("input[type=range]")
            states = [root.evaluate(show)]  # opens at the middle slice
            slider.scroll_into_view_if_needed()
            box = slider.bounding_box()  # in the viewport, where the mouse clicks
            page.mouse.click(box["x"] + 1, box["y"] + box["height"] / 2)  # the slider's left end
            states.append(root.evaluate(show))
            slider.press("End")  # the slider's own keys
            states.append(root.evaluate(show))
            root.focus()
            page.keyboard.press("ArrowLeft")  # the viewer's keys
            states.append(root.evaluate(show))
        finally:
            browser.close()
    assert [state["slice"] for state in states] == [str(SLICES // 2), "0", str(SLICES - 1), str(SLICES - 2)]
    for i, panel in enumerate(PANELS):  # every panel showed another image at every step
        assert len({state["images"][i] for state in states}) == len(states), panel
    assert len({state["text"] for state in states}) == len(states)
    assert requested and all(url.startswith(("file:", "data:")) for url in requested)  # no network
