"""Writing: the test outputs of a run folder, every one through :class:`~mri2mri.runfolder.RunFolder`.

:class:`Keeper` keeps from the scored batches what the files need (the per-slice metric rows,
a few slices for the figures and the preview, every slice small for the viewer);
:func:`write_outputs` writes the metrics payload, the per-slice table, the preview, the test
figures and the viewer.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from mri2mri import figures, text
from mri2mri.data.cache import SubjectRecord
from mri2mri.errors import DataError
from mri2mri.evaluation.scoring import ScoredBatch
from mri2mri.metrics import METRIC_NAMES, VIEWER_METRICS
from mri2mri.runfolder import RunFolder
from mri2mri.viewer import ViewerCollector

# The columns of the per-slice table: one row per slice and method.
CSV_COLUMNS = ("subject", "slice_index", "method", *METRIC_NAMES)
MAX_PREVIEW_SLICES = 4
MAX_GRID_ROWS = 8


@dataclass
class FigureSlice:
    subject: str
    slice_index: int
    source: np.ndarray  # (H, W) central channel, [0, 1]
    target: np.ndarray
    prediction: np.ndarray
    intensity_map: np.ndarray
    mask: np.ndarray
    uncertainty: np.ndarray | None = None  # (H, W) std over test-time passes, when asked for


def positions(n_slices: int, count: int) -> list[int]:
    """``count`` evenly spread offsets inside a subject's n slices (away from its ends)."""
    if count <= 0:
        return []
    return sorted({min(n_slices - 1, (k + 1) * n_slices // (count + 1)) for k in range(count)})


class Keeper:
    """What the output files need from the scored batches, kept as they stream by."""

    def __init__(self, n_figure_positions: int):
        self.n_figure_positions = n_figure_positions
        self.csv_rows: list[list[Any]] = []
        self.figure_slices: list[FigureSlice] = []
        self.preview_slices: list[FigureSlice] = []
        self.viewer = ViewerCollector(error_vmax=figures.DEFAULT_ERROR_VMAX)  # every slice, for the report
        self._subject: str | None = None
        self._wanted: set[int] = set()
        self._preview_offset: int | None = None

    def _start(self, record: SubjectRecord) -> None:
        """A new subject: which of its slices become figures, and which one the preview."""
        n_slices = record.rows[1] - record.rows[0]
        self._subject = record.subject
        self._wanted = set(positions(n_slices, self.n_figure_positions))
        self._preview_offset = n_slices // 2 if len(self.preview_slices) < MAX_PREVIEW_SLICES else None

    def add(self, batch: ScoredBatch) -> None:
        if batch.record.subject != self._subject:
            self._start(batch.record)
        self.csv_rows.extend(batch.rows())
        model, model_values = batch.outputs["model"], batch.values["model"]
        for i, slice_index in enumerate(batch.slice_indices):
            self.viewer.add(batch.record.subject, slice_index, batch.source[i], model[i, 0].numpy(),
                            batch.target[i, 0], batch.mask[i, 0],
                            {name: model_values[name][i] for name in VIEWER_METRICS})  # fmt: skip
        brain = torch.from_numpy(batch.mask > 0)
        for i, offset in enumerate(batch.offsets):
            if offset not in self._wanted and offset != self._preview_offset:
                continue
            kept = FigureSlice(
                subject=batch.record.subject,
                slice_index=batch.slice_indices[i],
                source=batch.source[i].copy(),
                target=batch.target[i, 0].copy(),
                prediction=model[i, 0].float().numpy().copy(),
                # The map is fitted on brain voxels only; its background value means nothing.
                intensity_map=(batch.outputs["intensity-map"][i, 0] * brain[i, 0]).float().numpy(),
                mask=batch.mask[i, 0].astype(np.float32),
                uncertainty=None if batch.spread is None else batch.spread[i, 0].copy(),
            )
            if offset in self._wanted:
                self.figure_slices.append(kept)
            if offset == self._preview_offset:
                self.preview_slices.append(kept)


def write_outputs(folder: RunFolder, result: dict[str, Any], kept: Keeper, names: dict[str, str],
                  lang: str, uncertainty_passes: int = 0) -> None:  # fmt: skip
    """Every test output of the run folder: per-slice table, metrics, preview, figures, viewer."""
    folder.root.mkdir(parents=True, exist_ok=True)
    folder.write_test_metrics(list(CSV_COLUMNS), kept.csv_rows)
    folder.write_metrics(result)
    folder.write_preview(_preview_arrays(kept.preview_slices))
    _write_figures(folder, kept.figure_slices, names, lang, uncertainty_passes)
    kept.viewer.write(folder.viewer)


def _preview_arrays(kept: Sequence[FigureSlice]) -> dict[str, np.ndarray]:
    return {
        "subject": np.array([k.subject for k in kept], dtype=str),
        "slice_index": np.array([k.slice_index for k in kept], dtype=np.int64),
        "source": np.stack([k.source for k in kept]).astype(np.float32),
        "target": np.stack([k.target for k in kept]).astype(np.float32),
        "prediction": np.stack([k.prediction for k in kept]).astype(np.float32),
        "intensity_map": np.stack([k.intensity_map for k in kept]).astype(np.float32),
        "mask": np.stack([k.mask for k in kept]).astype(np.float32),
    }


def _write_figures(folder: RunFolder, kept: Sequence[FigureSlice], names: dict[str, str], lang: str,
                   uncertainty_passes: int = 0) -> None:  # fmt: skip
    if not kept:
        return
    folder.figures.mkdir(parents=True, exist_ok=True)
    titles = [text.SLICE_TITLE[lang].format(subject=k.subject, slice_index=k.slice_index) for k in kept]
    for number, (item, title) in enumerate(zip(kept, titles, strict=True), start=1):
        figures.plot_triptych(
            item.source, item.prediction, item.target, folder.test_figure(number),
            mask=item.mask, source_name=names["source"], target_name=names["target"], title=title,
            lang=lang, uncertainty=item.uncertainty, uncertainty_passes=uncertainty_passes,
        )
    chosen = np.unique(np.linspace(0, len(kept) - 1, min(MAX_GRID_ROWS, len(kept))).round().astype(int))
    figures.plot_slice_grid(
        [(kept[i].source, kept[i].prediction, kept[i].target) for i in chosen],
        folder.test_grid,
        row_labels=[titles[i] for i in chosen],
        masks=[kept[i].mask for i in chosen],
        source_name=names["source"],
        target_name=names["target"],
        lang=lang,
    )


def load_preview(path: Path | str) -> dict[str, np.ndarray]:
    """The preview arrays of a run folder (:meth:`RunFolder.read_preview`); ``path`` is the run
    folder or its preview file."""
    path = Path(path)
    folder = RunFolder(path if path.is_dir() else path.parent)
    if folder.preview != path and folder.root != path:
        raise DataError(f"{path}: not the predictions preview of a run folder (expected {folder.preview})")
    return folder.read_preview()
