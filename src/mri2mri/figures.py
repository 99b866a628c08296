"""Figures of a run: loss curves, validation curves, triptychs, slice grids, run comparisons.

Every figure function takes ``lang="en"`` or ``lang="zh"``; labels come from one dictionary
(:data:`mri2mri.text.FIGURE_LABELS`) so that English and Chinese figures say the same thing.
Chinese labels need a CJK font: the Noto Sans CJK SC font shipped inside the ``mplfonts``
package is registered with matplotlib, and any installed system CJK font (``fonts-noto-cjk``,
WenQuanYi, ...) is the fall-back.

Figures are built on :class:`matplotlib.figure.Figure` objects rendered by the Agg renderer and
never registered with ``pyplot``, so nothing is left open after saving and no GUI backend is
ever touched. Images share one look: gray colormap, ``vmin=0``, ``vmax=1``; error maps use
``magma`` on a fixed scale so that figures of different runs can be compared by eye.
"""

from __future__ import annotations

import contextlib
import csv
import functools
import importlib.resources
import math
from collections.abc import Iterator, Sequence
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib import font_manager, ft2font
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mri2mri import text
from mri2mri.errors import ConfigError, DataError

DPI = 120
IMAGE_CMAP = "gray"
ERROR_CMAP = "magma"
# Absolute error (images in [0, 1]) at which the error colour map saturates: fixed rather than
# per figure so that two figures' error maps mean the same thing.
DEFAULT_ERROR_VMAX = 0.25

# The labels of both languages live in mri2mri.text; these names stay importable from here.
LANGS = text.LANGS
LABELS = text.FIGURE_LABELS
check_lang = text.check_lang

# Columns of history.csv (written by the training loop).
LOSS_COLUMNS = ("loss_G", "loss_D", "loss_L1")
VALIDATION_COLUMNS = ("val_L1", "val_PSNR", "val_SSIM")

# Family names of CJK fonts worth trying when the mplfonts copy is missing.
_CJK_FAMILY_HINTS = (
    "Noto Sans CJK", "Noto Serif CJK", "Source Han Sans", "Source Han Serif", "WenQuanYi",
    "SimHei", "Microsoft YaHei", "PingFang", "Hiragino Sans GB", "AR PL", "Droid Sans Fallback",
)


# ---------------------------------------------------------------------------------------------
# Labels and language


def labels(lang: str = "en") -> dict[str, str]:
    """All label templates of one language (a copy; placeholders not yet filled in)."""
    return dict(LABELS[check_lang(lang)])


def t(key: str, lang: str = "en", **fmt: object) -> str:
    """One label with its placeholders filled, e.g. ``t("input", "zh", source="T1")``."""
    table = LABELS[check_lang(lang)]
    if key not in table:
        raise ConfigError(f"unknown figure label {key!r}; valid labels: {', '.join(sorted(table))}")
    return table[key].format(**fmt)


# ---------------------------------------------------------------------------------------------
# Fonts


def _covers(font_path: Path, text: str) -> bool:
    """True if the font file has a glyph for every character of ``text``."""
    try:
        font = ft2font.FT2Font(str(font_path))
    except (OSError, RuntimeError):
        return False
    return all(font.get_char_index(ord(char)) != 0 for char in text)


def _mplfonts_cjk_font() -> Path | None:
    try:
        candidate = importlib.resources.files("mplfonts") / "fonts" / "NotoSansCJKsc-Regular.otf"
    except ModuleNotFoundError:
        return None
    path = Path(str(candidate))
    return path if path.is_file() else None


@functools.lru_cache(maxsize=1)
def cjk_font_path() -> Path:
    """The font file used for Chinese labels, registered with matplotlib's font manager.

    Order: mplfonts' ``NotoSansCJKsc-Regular.otf`` (a declared dependency, so normally found),
    then any installed system font whose family looks CJK and which has the glyphs the labels
    need. Raises ConfigError when there is none, since Chinese figures would show empty boxes.
    """
    path = _mplfonts_cjk_font()
    if path is not None and _covers(path, text.CJK_PROBE):
        font_manager.fontManager.addfont(str(path))
        return path
    for entry in font_manager.fontManager.ttflist:
        if any(hint.lower() in entry.name.lower() for hint in _CJK_FAMILY_HINTS):
            system_path = Path(entry.fname)
            if _covers(system_path, text.CJK_PROBE):
                return system_path
    raise ConfigError(
        "no Chinese (CJK) font found for lang='zh': install the 'mplfonts' package or "
        "fonts-noto-cjk, or use lang='en'"
    )


def cjk_font_family() -> str:
    """The family name matplotlib knows the Chinese font by (e.g. 'Noto Sans CJK SC')."""
    return font_manager.FontProperties(fname=str(cjk_font_path())).get_name()


@contextlib.contextmanager
def figure_style(lang: str = "en") -> Iterator[None]:
    """rcParams shared by all figures; for ``zh`` the CJK font comes first in the font list.

    DejaVu Sans stays behind it as a per-glyph fall-back (matplotlib >= 3.6), and the Unicode
    minus is turned off because not every CJK font has U+2212.
    """
    check_lang(lang)
    params: dict[str, object] = {"axes.grid": False, "savefig.dpi": DPI, "figure.dpi": DPI}
    if lang == "zh":
        params.update({
            "font.family": "sans-serif",
            "font.sans-serif": [cjk_font_family(), "DejaVu Sans"],
            "axes.unicode_minus": False,
        })
    with matplotlib.rc_context(params):
        yield


def _plain(text: str) -> str:
    """User text (run names, subject ids) shown literally: '$' would start mathtext."""
    return str(text).replace("$", r"\$")


def save_figure(figure: Figure, out_png: str | Path, *, dpi: int = DPI) -> Path:
    """Write ``figure`` as a PNG on white (its folder made if missing) and free its artists.

    The figures of this module and of the benchmarks all go through here; the benchmarks pass a
    lower ``dpi`` for the pictures the README shows at column width.
    """
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(out, dpi=dpi, facecolor="white")
    # The Figure was never registered with pyplot; dropping the canvas's references is enough.
    figure.clear()
    return out


# ---------------------------------------------------------------------------------------------
# History curves


def read_history(history_csv: str | Path) -> dict[str, list[float]]:
    """Columns of ``history.csv`` as float lists; empty cells become NaN.

    Raises DataError when the file is missing, has no ``epoch`` column, or holds a cell that is
    not a number.
    """
    path = Path(history_csv)
    if not path.is_file():
        raise DataError(f"{path}: history file not found")
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        fieldnames = reader.fieldnames or []
        if "epoch" not in fieldnames:
            raise DataError(f"{path}: no 'epoch' column (columns: {', '.join(fieldnames)})")
        columns: dict[str, list[float]] = {name: [] for name in fieldnames}
        for line_number, row in enumerate(reader, start=2):
            for name in fieldnames:
                cell = (row.get(name) or "").strip()
                try:
                    columns[name].append(float(cell) if cell else math.nan)
                except ValueError:
                    raise DataError(
                        f"{path}: line {line_number}, column {name!r}: {cell!r} is not a number"
                    ) from None
    return columns


def _has_values(values: Sequence[float]) -> bool:
    return any(math.isfinite(value) for value in values)


def _curve_panels(
    history: dict[str, list[float]], columns: Sequence[str], title_key: str, out_png: str | Path,
    lang: str,
) -> Path:
    """One panel per column (the losses differ by orders of magnitude: lambda_L1 = 100)."""
    epochs = np.asarray(history["epoch"])
    colours = ("tab:blue", "tab:orange", "tab:green")
    figure = Figure(figsize=(4.2 * len(columns), 3.6), layout="constrained")
    axes = figure.subplots(1, len(columns), squeeze=False)[0]
    for index, (axis, column) in enumerate(zip(axes, columns, strict=True)):
        colour = colours[index % len(colours)]
        values = np.asarray(history[column], dtype=float)
        keep = np.isfinite(values)
        # Markers keep a one- or two-epoch history visible.
        marker = "o" if keep.sum() <= 30 else None
        axis.plot(epochs[keep], values[keep], color=colour, marker=marker, markersize=3,
                  linewidth=1.5, label=t(column, lang))
        axis.set_title(t(column, lang))
        axis.set_xlabel(t("epoch", lang))
        axis.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
        axis.set_ylabel(t("loss", lang) if column in LOSS_COLUMNS else column.removeprefix("val_"))
        axis.grid(True, alpha=0.4)
        axis.legend(loc="best")
    figure.suptitle(t(title_key, lang))
    return save_figure(figure, out_png)


def plot_loss_curve(history_csv: str | Path, out_png: str | Path, lang: str = "en") -> Path:
    """Loss_G, Loss_D and Loss_L1 per epoch, one titled, gridded panel each; returns ``out_png``."""
    with figure_style(lang):
        history = read_history(history_csv)
        missing = [column for column in LOSS_COLUMNS if column not in history]
        if missing:
            raise DataError(f"{history_csv}: missing loss columns {', '.join(missing)}")
        if not history["epoch"]:
            raise DataError(f"{history_csv}: no epochs recorded yet")
        return _curve_panels(history, LOSS_COLUMNS, "training_losses", out_png, lang)


def plot_validation_curves(
    history_csv: str | Path, out_png: str | Path, lang: str = "en"
) -> Path | None:
    """val_L1, val_PSNR and val_SSIM per epoch (those with values).

    Returns ``out_png``, or None without writing anything when the history holds no validation
    values (a run without a validation split).
    """
    with figure_style(lang):
        history = read_history(history_csv)
        present = [c for c in VALIDATION_COLUMNS if c in history and _has_values(history[c])]
        if not present:
            return None
        return _curve_panels(history, present, "validation_metrics", out_png, lang)


# ---------------------------------------------------------------------------------------------
# Image figures


def _as_image(array: object, name: str) -> np.ndarray:
    """A 2D float array clipped to [0, 1]; singleton axes (1, H, W) are squeezed away."""
    image = np.squeeze(np.asarray(array, dtype=np.float32))
    if image.ndim != 2:
        raise DataError(f"{name}: expected a 2D image, got shape {np.shape(array)}")
    return np.clip(np.nan_to_num(image, nan=0.0), 0.0, 1.0)


def _same_shape(images: dict[str, np.ndarray]) -> None:
    shapes = {name: image.shape for name, image in images.items()}
    if len(set(shapes.values())) > 1:
        listed = ", ".join(f"{name} {shape}" for name, shape in shapes.items())
        raise DataError(f"images of different shapes: {listed}")


def absolute_error(
    generated: np.ndarray, target: np.ndarray, mask: np.ndarray | None = None
) -> tuple[np.ma.MaskedArray, float]:
    """|generated - target| (masked outside ``mask`` when given) and its mean inside the mask."""
    error = np.abs(generated - target)
    if mask is None:
        return np.ma.masked_array(error), float(error.mean())
    inside = np.squeeze(np.asarray(mask)) > 0
    if inside.shape != error.shape:
        raise DataError(f"mask: shape {inside.shape} differs from the images' {error.shape}")
    mae = float(error[inside].mean()) if inside.any() else math.nan
    return np.ma.masked_array(error, mask=~inside), mae


def _show_image(axis, image: np.ndarray, title: str) -> None:
    axis.imshow(image, cmap=IMAGE_CMAP, vmin=0.0, vmax=1.0, interpolation="nearest")
    axis.set_title(title, fontsize=10)
    axis.set_axis_off()


def _show_error(axis, error: np.ma.MaskedArray, title: str, error_vmax: float):
    # Outside the mask reads as background, not as zero error.
    cmap = matplotlib.colormaps[ERROR_CMAP].with_extremes(bad="black")
    handle = axis.imshow(error, cmap=cmap, vmin=0.0, vmax=error_vmax, interpolation="nearest")
    axis.set_title(title, fontsize=10)
    axis.set_axis_off()
    return handle


def plot_triptych(
    source: np.ndarray,
    generated: np.ndarray,
    target: np.ndarray,
    out_png: str | Path,
    *,
    mask: np.ndarray | None = None,
    source_name: str = "T1",
    target_name: str = "T2",
    title: str | None = None,
    lang: str = "en",
    error_map: bool = True,
    error_vmax: float = DEFAULT_ERROR_VMAX,
    uncertainty: np.ndarray | None = None,
    uncertainty_passes: int = 0,
) -> Path:
    """Input | generated | real (| absolute error with a colour bar) (| uncertainty) for one slice.

    Images are 2D arrays in [0, 1]. With ``mask``, the error map and its MAE cover only the
    mask (the brain); outside it is drawn black. ``uncertainty`` (the voxelwise std over
    ``uncertainty_passes`` test-time passes) adds a fifth panel, masked like the error, with
    its own colour bar up to its 99th percentile (a spread is smaller than the error it
    predicts; what matters is whether the two maps are bright in the same places). Returns
    ``out_png``.
    """
    with figure_style(lang):
        images = {
            "source": _as_image(source, "source"),
            "generated": _as_image(generated, "generated"),
            "target": _as_image(target, "target"),
        }
        _same_shape(images)
        names = {"source": source_name, "target": target_name}
        panels = (4 if error_map else 3) + (uncertainty is not None)
        figure = Figure(figsize=(3.2 * panels + (0.6 if error_map else 0), 3.6),
                        layout="constrained")
        axes = figure.subplots(1, panels)
        _show_image(axes[0], images["source"], t("input", lang, **names))
        _show_image(axes[1], images["generated"], t("generated", lang, **names))
        _show_image(axes[2], images["target"], t("real", lang, **names))
        if error_map:
            error, mae = absolute_error(images["generated"], images["target"], mask)
            handle = _show_error(axes[3], error, t("abs_error_mae", lang, mae=mae), error_vmax)
            figure.colorbar(handle, ax=axes[3], fraction=0.046, pad=0.04, extend="max")
        if uncertainty is not None:
            spread = _as_image(uncertainty, "uncertainty")
            _same_shape({**images, "uncertainty": spread})
            shown = np.ma.masked_where(~(mask > 0), spread) if mask is not None else spread
            values = np.ma.compressed(np.ma.asarray(shown))
            vmax = max(float(np.percentile(values, 99)) if values.size else 0.0, 1e-3)
            handle = _show_error(axes[-1], shown, t("uncertainty", lang, passes=uncertainty_passes),
                                 vmax)  # fmt: skip
            figure.colorbar(handle, ax=axes[-1], fraction=0.046, pad=0.04, extend="max")
        figure.suptitle(_plain(title) if title else t("translation", lang, **names))
        return save_figure(figure, out_png)


def plot_slice_grid(
    rows: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
    out_png: str | Path,
    *,
    row_labels: Sequence[str] | None = None,
    masks: Sequence[np.ndarray | None] | None = None,
    source_name: str = "T1",
    target_name: str = "T2",
    title: str | None = None,
    lang: str = "en",
    error_map: bool = True,
    error_vmax: float = DEFAULT_ERROR_VMAX,
) -> Path:
    """Many slices, one row each: input | generated | real (| absolute error).

    ``rows`` holds (source, generated, target) 2D arrays in [0, 1]; ``row_labels`` (e.g.
    "sub-03 z=41") and ``masks`` are optional and parallel to ``rows``. Returns ``out_png``.
    """
    if not rows:
        raise DataError("plot_slice_grid: no slices given")
    if row_labels is not None and len(row_labels) != len(rows):
        raise DataError(f"plot_slice_grid: {len(row_labels)} row labels for {len(rows)} rows")
    if masks is not None and len(masks) != len(rows):
        raise DataError(f"plot_slice_grid: {len(masks)} masks for {len(rows)} rows")
    with figure_style(lang):
        names = {"source": source_name, "target": target_name}
        columns = 4 if error_map else 3
        figure = Figure(figsize=(2.6 * columns + (0.6 if error_map else 0), 2.6 * len(rows) + 0.6),
                        layout="constrained")
        axes = figure.subplots(len(rows), columns, squeeze=False)
        headers = [t("input", lang, **names), t("generated", lang, **names),
                   t("real", lang, **names), t("abs_error", lang)]
        handle = None
        for index, triple in enumerate(rows):
            if len(triple) != 3:
                raise DataError(f"plot_slice_grid: row {index} is not (source, generated, target)")
            named = {f"row {index} {kind}": _as_image(array, f"row {index} {kind}")
                     for kind, array in zip(("source", "generated", "target"), triple, strict=True)}
            _same_shape(named)
            images = list(named.values())
            for column, image in enumerate(images):
                _show_image(axes[index, column], image, headers[column] if index == 0 else "")
            if error_map:
                mask = masks[index] if masks is not None else None
                error, _ = absolute_error(images[1], images[2], mask)
                handle = _show_error(axes[index, 3], error, headers[3] if index == 0 else "",
                                     error_vmax)
            if row_labels is not None:
                # set_axis_off hides ylabel; a text box beside the first image does not.
                axes[index, 0].text(-0.04, 0.5, _plain(row_labels[index]), rotation=90,
                                    ha="right", va="center", fontsize=9,
                                    transform=axes[index, 0].transAxes)
        if handle is not None:
            figure.colorbar(handle, ax=axes[:, 3], fraction=0.046, pad=0.04, extend="max")
        figure.suptitle(_plain(title) if title else t("translation", lang, **names))
        return save_figure(figure, out_png)


def plot_comparison(
    panels: Sequence[tuple[str, np.ndarray]],
    source: np.ndarray,
    target: np.ndarray,
    out_png: str | Path,
    lang: str = "en",
    *,
    mask: np.ndarray | None = None,
    source_name: str = "T1",
    target_name: str = "T2",
    error_map: bool = True,
    error_vmax: float = DEFAULT_ERROR_VMAX,
) -> Path:
    """The same test slice from every run side by side: input | run 1 | ... | run N | real.

    ``panels`` holds (run label, generated image) pairs. With ``error_map`` a second row shows
    each run's absolute error under its image. Returns ``out_png``.
    """
    if not panels:
        raise DataError("plot_comparison: no runs given")
    with figure_style(lang):
        names = {"source": source_name, "target": target_name}
        source_image = _as_image(source, "source")
        target_image = _as_image(target, "target")
        generated = [(str(label), _as_image(image, f"run {label}")) for label, image in panels]
        _same_shape({"source": source_image, "target": target_image,
                     **{f"run {label}": image for label, image in generated}})
        columns = len(generated) + 2
        row_count = 2 if error_map else 1
        figure = Figure(figsize=(2.6 * columns + 0.6, 2.8 * row_count + 0.5),
                        layout="constrained")
        axes = figure.subplots(row_count, columns, squeeze=False)
        _show_image(axes[0, 0], source_image, t("input", lang, **names))
        for column, (label, image) in enumerate(generated, start=1):
            _show_image(axes[0, column], image, _plain(label))
        _show_image(axes[0, -1], target_image, t("real", lang, **names))
        if error_map:
            axes[1, 0].set_axis_off()
            axes[1, -1].set_axis_off()
            handle = None
            for column, (_, image) in enumerate(generated, start=1):
                error, mae = absolute_error(image, target_image, mask)
                handle = _show_error(axes[1, column], error, t("abs_error_mae", lang, mae=mae),
                                     error_vmax)
            figure.colorbar(handle, ax=axes[1, 1:-1], fraction=0.046, pad=0.04, extend="max")
        figure.suptitle(t("comparison", lang, **names))
        return save_figure(figure, out_png)
