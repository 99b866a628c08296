"""The run folder: every file a run writes, its name, and how it is read and written.

::

    outputs/<run>/
      config.json  split.json  history.csv  run_summary.json  .lock      (train)
      metrics.json  test_metrics.csv  predictions_preview.npz  viewer/  (test)
      report.html                                                       (report)
      cache/  test_cache/                                               (slices prepared on the fly)
      checkpoints/<run>_last.pth  <run>_last_prev.pth  <run>_best.pth
      figures/loss_curve.png  validation_curves.png  test_visualization_NN.png  test_grid.png

No other module spells these names: they go through :class:`RunFolder`, whose readers raise one
:class:`~mri2mri.errors.DataError` naming the file for anything missing or unreadable.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mri2mri import atomic
from mri2mri.errors import DataError, UserError
from mri2mri.names import DEFAULT_RUN_NAME

# The run's copy of its cache's subject split (the cache's own is data.cache.SPLIT_FILE).
RUN_SPLIT_FILE = "split.json"

if TYPE_CHECKING:  # numpy loads only where previews are read or written: the command line
    import numpy as np  # imports this module before it chooses the thread policy

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")

# The columns of history.csv, one row per epoch; "lr" is G's learning rate at the epoch's last
# step. A resumed run rewrites the file with these columns (truncate_history), so a history from
# before a column was added gains it, empty for the old rows.
HISTORY_COLUMNS = (
    "epoch", "loss_G", "loss_D", "loss_L1", "val_L1", "val_PSNR", "val_SSIM",
    "seconds", "images_per_s", "skipped_steps", "lr",
)  # fmt: skip


def check_safe_name(name: str, what: str = "run name") -> str:
    """A name used as a file name: no separators, no '..', so it cannot escape its folder."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise UserError(f"{what} {name!r} is not a safe file name (letters, digits, '.', '_', '-')")
    return name


def read_json(path: Path | str, *, what: str = "JSON file") -> Any:
    """The content of a JSON file; DataError naming the file when it is missing or unreadable."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: {what} not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise DataError(f"{path}: unreadable {what} ({error})") from None


def read_json_object(path: Path | str, *, what: str = "JSON file") -> dict[str, Any]:
    """:func:`read_json` that also requires a JSON object."""
    payload = read_json(path, what=what)
    if not isinstance(payload, dict):
        raise DataError(f"{path}: not a {what} (expected a JSON object)")
    return payload


@dataclass(frozen=True)
class RunFolder:
    """The files of one run. ``run_name`` names the checkpoints (``<run>_best.pth``)."""

    root: Path
    run_name: str = DEFAULT_RUN_NAME

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root))
        check_safe_name(self.run_name)

    # -- what training writes ----------------------------------------------------------------
    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def split(self) -> Path:
        return self.root / RUN_SPLIT_FILE

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def summary(self) -> Path:
        return self.root / "run_summary.json"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / f"{self.run_name}_last.pth"

    @property
    def best(self) -> Path:
        return self.checkpoints / f"{self.run_name}_best.pth"

    def started_run(self) -> Path | None:
        """The last checkpoint of a run already in the folder, of this name or another (a run from
        before the default name followed the contrasts is ``gan_t1_to_t2`` whatever its sources)."""
        found = sorted(self.checkpoints.glob("*_last.pth")) if self.checkpoints.is_dir() else []
        return found[0] if found else None

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def loss_curve(self) -> Path:
        return self.figures / "loss_curve.png"

    @property
    def validation_curves(self) -> Path:
        return self.figures / "validation_curves.png"

    # -- slices prepared on the fly ----------------------------------------------------------
    @property
    def cache(self) -> Path:
        """The training slices when ``train`` was given raw data."""
        return self.root / "cache"

    @property
    def test_cache(self) -> Path:
        """Slices ``test`` prepared from other data (the run's own cache is never replaced)."""
        return self.root / "test_cache"

    # -- what test and report write ----------------------------------------------------------
    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def test_metrics(self) -> Path:
        return self.root / "test_metrics.csv"

    @property
    def preview(self) -> Path:
        return self.root / "predictions_preview.npz"

    @property
    def viewer(self) -> Path:
        return self.root / "viewer"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    def test_figure(self, number: int) -> Path:
        return self.figures / f"test_visualization_{number:02d}.png"

    def test_figures(self) -> list[Path]:
        return sorted(self.figures.glob("test_visualization_*.png"))

    @property
    def test_grid(self) -> Path:
        return self.figures / "test_grid.png"

    def make(self) -> RunFolder:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.figures.mkdir(parents=True, exist_ok=True)
        # Temporary files of a writer that was killed mid-write (SIGKILL, power loss): the
        # checkpoint it was replacing is intact, so they are garbage.
        for leftover in self.checkpoints.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        return self

    # -- JSON ----------------------------------------------------------------------------------
    def read_config(self) -> dict[str, Any]:
        """config.json as a dict (``RunConfig.from_dict`` makes it typed)."""
        return read_json_object(self.config, what="run configuration")

    def read_metrics(self) -> dict[str, Any]:
        return read_json_object(self.metrics, what="test metrics (run `mri2mri test` first)")

    def write_metrics(self, payload: Mapping[str, Any]) -> None:
        atomic.write_json(self.metrics, payload)

    def read_summary(self) -> dict[str, Any] | None:
        """run_summary.json, or None when training has not finished yet."""
        return read_json_object(self.summary, what="run summary") if self.summary.is_file() else None

    def write_summary(self, payload: Mapping[str, Any]) -> None:
        atomic.write_json(self.summary, payload)

    def read_split(self) -> dict[str, list[str]] | None:
        """The subject split the run trained with (its own copy, else its cache's); None if neither."""
        from mri2mri.data.cache import SPLIT_FILE  # here: data.cache loads numpy (see above)

        for candidate in (self.split, self.cache / SPLIT_FILE):
            if candidate.is_file():
                return read_split_file(candidate)
        return None

    def trained_subjects(self) -> list[str] | None:
        """The subjects the run trained on; None when it recorded no split."""
        split = self.read_split()
        return None if split is None else split.get("train", [])

    def keep_split_of(self, cache_dir: Path) -> None:
        """Keep the cache's subject split in the run folder, written when training starts (so a
        run stopped early has it too): ``test`` refuses to score the subjects a run trained on."""
        from mri2mri.data.cache import SPLIT_FILE

        source = Path(cache_dir) / SPLIT_FILE
        if source.is_file():
            atomic.write_bytes(self.split, source.read_bytes())

    # -- history.csv -----------------------------------------------------------------------------
    def start_history(self, rows: Iterable[Mapping[str, Any]] = ()) -> None:
        """A history with these rows only (whole or not at all: a crash here loses no row)."""
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        atomic.write_text(self.history, buffer.getvalue())

    def append_history(self, row: Mapping[str, Any]) -> None:
        with open(self.history, "a", newline="", encoding="utf-8") as handle:
            csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS, lineterminator="\n").writerow(
                {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
            )

    def truncate_history(self, epochs_done: int) -> None:
        """Drop rows of epochs after the checkpoint, so a resumed run's history has no duplicates."""
        rows = self.history_rows() if self.history.exists() else []
        self.start_history(r for r in rows if r.get("epoch") and int(r["epoch"]) <= epochs_done)

    def history_rows(self) -> list[dict[str, str]]:
        """history.csv as its rows of text."""
        return read_history_rows(self.history)

    # -- test outputs -----------------------------------------------------------------------------
    def write_test_metrics(self, columns: list[str], rows: Iterable[list[Any]]) -> None:
        """One row per slice and method: the first three cells as text, the rest as numbers."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\r\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([*row[:3], *(format(float(v), ".8g") for v in row[3:])])
        atomic.write_text(self.test_metrics, buffer.getvalue())

    def write_preview(self, arrays: Mapping[str, np.ndarray]) -> None:
        """A few test slices (source, target, prediction, baseline, mask), so ``compare`` needs
        no model."""
        import numpy as np

        def save(tmp: str) -> None:
            with open(tmp, "wb") as handle:
                np.savez_compressed(handle, **arrays)

        atomic.save_atomically(self.preview, save, suffix=".npz")

    def read_preview(self) -> dict[str, np.ndarray]:
        """The arrays of predictions_preview.npz: subject (k,), slice_index (k,) and images
        (k, H, W) in [0, 1]: source (central channel), target, prediction (the model's raw
        output), intensity_map (the baseline, zero outside the brain mask) and mask."""
        import numpy as np

        try:
            with np.load(self.preview) as data:
                return {name: data[name] for name in data.files}
        except (OSError, ValueError) as error:
            raise DataError(f"{self.preview}: unreadable predictions preview ({error})") from None

    @property
    def cache_index(self) -> Path:
        """The index of the run's own slice cache (its subjects and their rows, per split)."""
        return self.cache / "cache.json"


def read_split_file(path: Path) -> dict[str, list[str]]:
    """A split.json (a run's or a cache's): lists of subject ids per split."""
    payload = read_json_object(path, what="split")
    if not all(isinstance(payload.get(name, []), list) for name in ("train", "val", "test")):
        raise DataError(f"{path}: not a split (expected lists of subject ids)")
    # Other keys (the split's seed) are not lists of subjects.
    return {str(name): [str(s) for s in value] for name, value in payload.items() if isinstance(value, list)}


def read_history_rows(path: Path) -> list[dict[str, str]]:
    """A history.csv as its rows of text; DataError when it cannot be read."""
    try:
        with open(path, newline="", encoding="utf-8") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: unreadable history ({error})") from None


def write_split(cache_dir: Path, run_dir: Path) -> None:
    """:meth:`RunFolder.keep_split_of` for a run folder given by its path."""
    RunFolder(Path(run_dir)).keep_split_of(cache_dir)


def read_trained_subjects(split_file: Path) -> list[str] | None:
    """The train subjects of a split.json (a run's or a cache's); None when there is no file."""
    split_file = Path(split_file)
    if not split_file.is_file():
        return None
    return read_split_file(split_file).get("train", [])


def run_folder_of(checkpoint: Path) -> Path | None:
    """``run/`` for ``run/checkpoints/<name>.pth`` (or a run folder itself); None for a checkpoint
    kept elsewhere."""
    checkpoint = Path(checkpoint)
    if checkpoint.is_dir():
        return checkpoint
    return checkpoint.parent.parent if checkpoint.parent.name == RunFolder(checkpoint).checkpoints.name else None


def find_checkpoint(run_dir: Path, which: str = "best") -> Path:
    """The ``best`` (or ``last``) checkpoint of a run folder; any ``.pth`` path is returned as is."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    if not run_dir.exists():
        raise UserError(f"{run_dir}: does not exist (expected a checkpoint file or a run folder)")
    folder = RunFolder(run_dir).checkpoints
    for pattern in (f"*_{which}.pth", "*_best.pth", "*_last.pth"):
        found = sorted(folder.glob(pattern))
        if found:
            return found[0]
    raise UserError(f"{run_dir}: no checkpoint found (expected {folder}/<run>_best.pth or _last.pth)")


# Lock files this process holds: taking one again (the command line locks the folder before
# preparing data, then training locks it again) nests instead of refusing itself.
_HELD_BY_THIS_PROCESS: set[Path] = set()


# What a run folder of this program holds; a folder holding anything else is the user's.
RUN_FOLDER_ENTRIES = frozenset({
    "config.json", "history.csv", "run_summary.json", "metrics.json", "test_metrics.csv",
    "report.html", RUN_SPLIT_FILE, "checkpoints", "figures", "cache", "test_cache", ".lock",
})  # fmt: skip


def check_run_folder_location(run_dir: Path, data: Path) -> None:
    """Refuse an ``--out`` that is the data folder (or inside it), or that holds files no run
    of this program made: training writes config.json, split.json and history.csv there and
    must never replace a user's own files of those names."""
    run_dir, data = Path(run_dir), Path(data)
    out, source = run_dir.resolve(), data.resolve()
    if out == source or source in out.parents:
        raise UserError(f"{run_dir}: the run folder would be inside the training data {data}; choose another --out")
    if not run_dir.exists():
        return
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: exists and is not a folder; choose another --out")
    config = run_dir / "config.json"
    if config.exists():
        if _is_run_config(config):
            return  # a run of this program (its test outputs and all)
        raise UserError(f"{config}: not a run configuration of this program; choose an empty or new --out")
    foreign = sorted(p.name for p in run_dir.iterdir() if p.name not in RUN_FOLDER_ENTRIES)
    if foreign:
        raise UserError(
            f"{run_dir}: holds files this program did not write ({', '.join(foreign[:3])}); "
            "choose an empty or new --out"
        )


def _is_run_config(path: Path) -> bool:
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return False
    return isinstance(payload, dict) and {"data", "model", "train"} <= set(payload)


class RunLock:
    """A lock file holding the owner's pid; a lock whose process is gone is stale and replaced.
    Re-entrant within one process: an inner acquire/release leaves the outer lock in place."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._held = False

    def acquire(self) -> RunLock:
        if self.path.resolve() in _HELD_BY_THIS_PROCESS:
            return self  # nested: the outer holder releases it
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is not None and _alive(owner):
                    raise UserError(
                        f"{self.path.parent}: another training (pid {owner}) is running in this "
                        "folder; choose another --out or wait for it to finish"
                    ) from None
                self.path.unlink(missing_ok=True)  # stale: its process is gone
                continue
            with os.fdopen(fd, "w") as handle:
                handle.write(f"{os.getpid()}\n")
            self._held = True
            _HELD_BY_THIS_PROCESS.add(self.path.resolve())
            return self
        raise UserError(f"{self.path}: could not take the run lock")

    def release(self) -> None:
        if self._held:
            _HELD_BY_THIS_PROCESS.discard(self.path.resolve())
            self.path.unlink(missing_ok=True)
            self._held = False

    def _owner(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except OSError as error:
        return error.errno == errno.EPERM
    return True
