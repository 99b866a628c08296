"""Every test slice, small: the data behind report.html's slice viewer.

``mri2mri test`` keeps, for each test subject, every slice of input, generated, real and the
absolute error, downscaled to at most :data:`VIEWER_SIZE` pixels and stored as 8-bit JPEG
sprite sheets (one tall image per subject and panel, slice k at rows k*S..(k+1)*S), with the
model's in-brain metrics of each slice. The report embeds them, so the page stays one
self-contained file of a few hundred kB per subject; JPEG at this size keeps anatomy legible
and is five to ten times smaller than PNG.

Written by :func:`mri2mri.evaluation.evaluate` into ``viewer/``::

    viewer/viewer.json     {"size", "error_vmax", "panels", "metric_names", "omitted_subjects",
                            "subjects": [{"subject", "slices": [slice index...],
                                          "metrics": {name: [value per slice]},
                                          "sprites": {panel: "NNN_<panel>.jpg"}}]}
    viewer/NNN_<panel>.jpg sprite sheets, panel in source, prediction, target, error
"""

from __future__ import annotations

import io
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mri2mri.metrics import VIEWER_METRICS

VIEWER_SIZE = 128  # pixels, the largest side of a slice in the viewer
MAX_SUBJECTS = 12  # more would make report.html heavy; the rest are listed as omitted
MAX_SLICES = 511  # a JPEG is at most 65535 pixels tall: 511 slices of 128 px
JPEG_QUALITY = 85
PANELS = ("source", "prediction", "target", "error")
METRIC_NAMES = VIEWER_METRICS  # the model's per-slice metrics shown under the slices


@dataclass
class _Subject:
    subject: str
    slices: list[int] = field(default_factory=list)
    metrics: dict[str, list[float | None]] = field(default_factory=lambda: {m: [] for m in METRIC_NAMES})
    planes: dict[str, list[np.ndarray]] = field(default_factory=lambda: {p: [] for p in PANELS})


def to_8bit(image: np.ndarray, size: int) -> np.ndarray:
    """A [0, 1] image as uint8, shrunk (bilinear) so that its largest side is at most ``size``."""
    from PIL import Image

    image = np.clip(np.nan_to_num(np.asarray(image, dtype=np.float32)), 0.0, 1.0)
    height, width = image.shape
    scale = min(1.0, size / max(height, width))
    if scale < 1.0:
        shape = (max(1, round(width * scale)), max(1, round(height * scale)))
        image = np.asarray(Image.fromarray(image, mode="F").resize(shape, Image.Resampling.BILINEAR))
    return np.round(np.clip(image, 0.0, 1.0) * 255.0).astype(np.uint8)


class ViewerCollector:
    """Collects the slices of the first :data:`MAX_SUBJECTS` subjects and writes ``viewer/``."""

    def __init__(self, error_vmax: float, size: int = VIEWER_SIZE) -> None:
        self.error_vmax = error_vmax
        self.size = size
        self.subjects: list[_Subject] = []
        self.encoded: list[dict[str, bytes]] = []
        self.omitted: list[str] = []
        self.shape: list[int] = []  # (height, width) of one slice in the sprite sheets

    def add(self, subject: str, slice_index: int, source: np.ndarray, prediction: np.ndarray,
            target: np.ndarray, mask: np.ndarray, metrics: dict[str, float]) -> None:  # fmt: skip
        """One slice: 2D images in [0, 1], the brain mask and the model's metrics on it."""
        if not self.subjects or self.subjects[-1].subject != subject:
            self._finish_last()
            if len(self.subjects) >= MAX_SUBJECTS:
                if subject not in self.omitted:
                    self.omitted.append(subject)
                return
            self.subjects.append(_Subject(subject))
        current = self.subjects[-1]
        if len(current.slices) >= MAX_SLICES:
            return
        current.slices.append(int(slice_index))
        for name in METRIC_NAMES:
            value = float(metrics[name])
            current.metrics[name].append(value if math.isfinite(value) else None)
        error = np.abs(np.asarray(prediction, np.float32) - np.asarray(target, np.float32)) * (mask > 0)
        images = {"source": source, "prediction": prediction, "target": target,
                  "error": error / self.error_vmax}  # fmt: skip
        for panel, image in images.items():
            current.planes[panel].append(to_8bit(image, self.size))
        self.shape = list(current.planes["source"][-1].shape)

    def _finish_last(self) -> None:
        """Encode the last subject's sprite sheets and drop its raw planes (memory stays small)."""
        if len(self.encoded) < len(self.subjects):
            last = self.subjects[-1]
            self.encoded.append({panel: _sprite(planes, panel == "error") for panel, planes in last.planes.items()})
            last.planes = {p: [] for p in PANELS}

    def write(self, folder: Path) -> Path | None:
        """Write ``folder/viewer.json`` and the sprite sheets; None when nothing was collected."""
        self._finish_last()
        if not self.subjects:
            return None
        folder.mkdir(parents=True, exist_ok=True)
        entries: list[dict[str, Any]] = []
        for number, (subject, sprites) in enumerate(zip(self.subjects, self.encoded, strict=True)):
            names = {panel: f"{number:03d}_{panel}.jpg" for panel in PANELS}
            for panel, name in names.items():
                (folder / name).write_bytes(sprites[panel])
            entries.append({"subject": subject.subject, "slices": subject.slices,
                            "metrics": subject.metrics, "sprites": names})  # fmt: skip
        payload = {"size": self.shape, "error_vmax": self.error_vmax, "panels": list(PANELS),
                   "metric_names": list(METRIC_NAMES), "omitted_subjects": self.omitted,
                   "subjects": entries}  # fmt: skip
        path = folder / "viewer.json"
        path.write_text(json.dumps(payload, ensure_ascii=False) + "\n", encoding="utf-8")
        return path


def _sprite(planes: list[np.ndarray], colour: bool) -> bytes:
    """Slices stacked top to bottom as one JPEG; the error panel in the figures' colour map."""
    from PIL import Image

    sheet = np.concatenate(planes, axis=0)
    if colour:
        import matplotlib

        from mri2mri.figures import ERROR_CMAP

        rgb = matplotlib.colormaps[ERROR_CMAP](sheet, bytes=True)[..., :3]
        image = Image.fromarray(np.ascontiguousarray(rgb), mode="RGB")
    else:
        image = Image.fromarray(sheet, mode="L")
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY, optimize=True)
    return buffer.getvalue()


def load_viewer(folder: Path) -> dict[str, Any] | None:
    """``viewer.json`` with every sprite read in as bytes (key "data"); None when absent."""
    path = Path(folder) / "viewer.json"
    if not path.is_file():
        return None
    payload = json.loads(path.read_text(encoding="utf-8"))
    for entry in payload["subjects"]:
        entry["data"] = {panel: (Path(folder) / name).read_bytes() for panel, name in entry["sprites"].items()}
    return payload
