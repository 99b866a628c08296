"""Figures: label dictionary, Chinese glyphs that really render, and every figure function."""

from __future__ import annotations

import warnings
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.font_manager import FontProperties
from matplotlib.ft2font import FT2Font
from PIL import Image

from mri2mri import figures
from mri2mri.errors import ConfigError, DataError

HEADER = "epoch,loss_G,loss_D,loss_L1,val_L1,val_PSNR,val_SSIM,seconds,images_per_s\n"


def write_history(path: Path, *, validation: bool = True, epochs: int = 4) -> Path:
    lines = [HEADER]
    for epoch in range(1, epochs + 1):
        val = f"{0.2 / epoch},{20 + epoch},{0.5 + 0.05 * epoch}" if validation else ",,"
        lines.append(f"{epoch},{30 / epoch},{0.6 - 0.05 * epoch},{25 / epoch},{val},2.5,40\n")
    path.write_text("".join(lines), encoding="utf-8")
    return path


def phantom_slices(size: int = 32, seed: int = 0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[-1:1:size * 1j, -1:1:size * 1j]
    head = (xx**2 + yy**2 < 0.8).astype(np.float32)
    source = head * (0.5 + 0.3 * np.cos(4 * xx))
    target = head * (0.6 - 0.3 * np.cos(4 * xx))
    generated = np.clip(target + 0.05 * rng.standard_normal(target.shape) * head, 0, 1)
    return source, generated, target, head


def png_size(path: Path) -> tuple[int, int]:
    with Image.open(path) as image:
        assert image.format == "PNG"
        return image.size


# --- labels -----------------------------------------------------------------------------------


def test_labels_substitute_contrast_names_in_both_languages():
    assert figures.t("input", "zh", source="FLAIR") == "输入 FLAIR"
    assert figures.t("generated", "zh", target="PD") == "生成 PD"
    assert figures.t("real", "en", target="T2") == "Real T2"
    assert figures.t("loss_G", "zh") == "生成器总损失 Loss_G"
    assert figures.t("epoch", "zh") == "轮次 Epoch"
    assert set(figures.labels("en")) == set(figures.labels("zh"))


def test_unknown_language_or_label_raises_config_error_listing_choices():
    with pytest.raises(ConfigError, match="en, zh"):
        figures.labels("fr")
    with pytest.raises(ConfigError, match="valid labels"):
        figures.t("no_such_label", "en")


# --- Chinese font -----------------------------------------------------------------------------


def all_zh_text() -> str:
    fields = {"source": "T1", "target": "T2", "mae": 0.1, "passes": 8}
    return "".join(template.format(**fields) for template in figures.labels("zh").values())


def test_cjk_font_has_a_glyph_for_every_character_of_the_chinese_labels():
    font = FT2Font(str(figures.cjk_font_path()))
    missing = {char for char in set(all_zh_text()) if font.get_char_index(ord(char)) == 0}
    assert not missing, f"no glyph for {sorted(missing)}"


def render_text(text: str, family: str | None = None, fname: str | None = None) -> np.ndarray:
    figure = Figure(figsize=(1.5, 0.6), dpi=100)
    canvas = FigureCanvasAgg(figure)
    font = FontProperties(fname=fname) if fname else FontProperties(family=family)
    figure.text(0.05, 0.2, text, fontproperties=font, fontsize=24)
    canvas.draw()
    return np.asarray(canvas.buffer_rgba())[..., 0].astype(np.int16)


def test_chinese_text_renders_as_distinct_glyphs_not_tofu():
    cjk = str(figures.cjk_font_path())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # DejaVu Sans warns about the missing glyphs
        tofu_sheng = render_text("生", "DejaVu Sans")
        tofu_cheng = render_text("成", "DejaVu Sans")
        tofu_pair = render_text("生成", "DejaVu Sans")
    sheng, cheng = render_text("生", fname=cjk), render_text("成", fname=cjk)
    pair = render_text("生成", fname=cjk)
    # Tofu boxes are all the same box; real glyphs differ from each other and from the box.
    assert np.array_equal(tofu_sheng, tofu_cheng)
    assert not np.array_equal(sheng, cheng)
    assert (pair < 128).sum() > 50  # ink on white
    assert not np.array_equal(pair, tofu_pair)


def test_zh_figure_uses_the_cjk_font_without_missing_glyph_warnings(tmp_path):
    history = write_history(tmp_path / "history.csv")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        figures.plot_loss_curve(history, tmp_path / "loss_zh.png", lang="zh")
        source, generated, target, mask = phantom_slices()
        figures.plot_triptych(source, generated, target, tmp_path / "tri_zh.png", mask=mask,
                              source_name="FLAIR", lang="zh")
    glyph_warnings = [str(w.message) for w in caught if "missing from" in str(w.message)]
    assert not glyph_warnings


# --- curves -----------------------------------------------------------------------------------


@pytest.mark.parametrize("lang", ["en", "zh"])
def test_loss_and_validation_curves_are_written(tmp_path, lang):
    history = write_history(tmp_path / "history.csv")
    loss = figures.plot_loss_curve(history, tmp_path / "figs" / "loss.png", lang)
    validation = figures.plot_validation_curves(history, tmp_path / "val.png", lang)
    width, height = png_size(loss)
    assert width > 1000 and height > 300  # three panels at dpi 120
    assert validation is not None and png_size(validation)[0] > 1000
    assert plt.get_fignums() == []  # nothing left open in pyplot


def test_validation_curves_skip_a_history_without_validation(tmp_path):
    history = write_history(tmp_path / "history.csv", validation=False)
    assert figures.plot_validation_curves(history, tmp_path / "val.png") is None
    assert not (tmp_path / "val.png").exists()
    figures.plot_loss_curve(history, tmp_path / "loss.png")  # empty val cells are fine here
    assert (tmp_path / "loss.png").is_file()


def test_read_history_reports_bad_files(tmp_path):
    with pytest.raises(DataError, match="not found"):
        figures.read_history(tmp_path / "absent.csv")
    bad = tmp_path / "bad.csv"
    bad.write_text(HEADER + "1,abc,0.5,1,,,,1,1\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2, column 'loss_G'"):
        figures.read_history(bad)
    history = figures.read_history(write_history(tmp_path / "ok.csv", validation=False))
    assert history["epoch"] == [1.0, 2.0, 3.0, 4.0] and np.isnan(history["val_PSNR"]).all()


# --- image figures ----------------------------------------------------------------------------


def test_triptych_has_four_panels_and_the_house_dpi(tmp_path):
    source, generated, target, mask = phantom_slices()
    out = figures.plot_triptych(source, generated, target, tmp_path / "t.png", mask=mask)
    with Image.open(out) as image:
        assert image.size[0] > 3 * image.size[1]  # a wide strip of four panels
        assert round(image.info["dpi"][0]) == figures.DPI
    narrow = figures.plot_triptych(source, generated, target, tmp_path / "n.png",
                                   error_map=False, title="run $1")
    assert png_size(narrow)[0] < png_size(out)[0]


def test_triptych_rejects_bad_arrays(tmp_path):
    source, generated, target, _ = phantom_slices()
    with pytest.raises(DataError, match="different shapes"):
        figures.plot_triptych(source, generated[:16], target, tmp_path / "x.png")
    with pytest.raises(DataError, match="expected a 2D image"):
        figures.plot_triptych(np.zeros((2, 32, 32)), generated, target, tmp_path / "x.png")


def test_absolute_error_is_masked_and_averaged_inside_the_mask():
    generated = np.array([[0.5, 1.0], [0.0, 0.0]])
    target = np.array([[0.0, 0.0], [0.0, 0.25]])
    mask = np.array([[1, 0], [1, 1]])
    error, mae = figures.absolute_error(generated, target, mask)
    assert error.mask.tolist() == [[False, True], [False, False]]
    assert mae == pytest.approx((0.5 + 0.0 + 0.25) / 3)


def test_slice_grid_and_comparison(tmp_path):
    source, generated, target, mask = phantom_slices()
    grid = figures.plot_slice_grid([(source, generated, target)] * 3, tmp_path / "grid.png",
                                   row_labels=["sub-01 z=3", "sub-01 z=4", "sub-02 z=$1"],
                                   masks=[mask] * 3, lang="zh")
    width, height = png_size(grid)
    assert height > width * 0.6  # three rows
    comparison = figures.plot_comparison([("unet", generated), ("resnet", target * 0.9)],
                                         source, target, tmp_path / "cmp.png", "en", mask=mask)
    assert png_size(comparison)[0] > 4 * 2.6 * figures.DPI
    with pytest.raises(DataError):
        figures.plot_slice_grid([], tmp_path / "empty.png")
    with pytest.raises(DataError):
        figures.plot_comparison([], source, target, tmp_path / "empty.png")
    assert plt.get_fignums() == []
