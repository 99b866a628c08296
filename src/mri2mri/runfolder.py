"""The paths of a run folder, and the lock that keeps two trainings out of one folder.

::

    outputs/<run>/
      config.json  history.csv  run_summary.json  metrics.json  test_metrics.csv  report.html
      checkpoints/<run>_last.pth  <run>_last_prev.pth  <run>_best.pth
      figures/loss_curve.png  figures/validation_curves.png  figures/test_visualization_NN.png
"""

from __future__ import annotations

import errno
import os
import re
from dataclasses import dataclass
from pathlib import Path

from mri2mri.errors import UserError

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_safe_name(name: str, what: str = "run name") -> str:
    """A name used as a file name: no separators, no '..', so it cannot escape its folder."""
    if not _SAFE_NAME.match(name) or ".." in name:
        raise UserError(f"{what} {name!r} is not a safe file name (letters, digits, '.', '_', '-')")
    return name


@dataclass(frozen=True)
class RunFolder:
    root: Path
    run_name: str

    def __post_init__(self) -> None:
        check_safe_name(self.run_name)

    @property
    def config(self) -> Path:
        return self.root / "config.json"

    @property
    def history(self) -> Path:
        return self.root / "history.csv"

    @property
    def summary(self) -> Path:
        return self.root / "run_summary.json"

    @property
    def checkpoints(self) -> Path:
        return self.root / "checkpoints"

    @property
    def last(self) -> Path:
        return self.checkpoints / f"{self.run_name}_last.pth"

    @property
    def best(self) -> Path:
        return self.checkpoints / f"{self.run_name}_best.pth"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    @property
    def metrics(self) -> Path:
        return self.root / "metrics.json"

    @property
    def report(self) -> Path:
        return self.root / "report.html"

    @property
    def lock(self) -> Path:
        return self.root / ".lock"

    @property
    def split(self) -> Path:
        return self.root / "split.json"

    def make(self) -> RunFolder:
        self.checkpoints.mkdir(parents=True, exist_ok=True)
        self.figures.mkdir(parents=True, exist_ok=True)
        # Temporary files of a writer that was killed mid-write (SIGKILL, power loss): the
        # checkpoint it was replacing is intact, so they are garbage.
        for leftover in self.checkpoints.glob(".*.tmp"):
            leftover.unlink(missing_ok=True)
        return self


def write_split(cache_dir: Path, run_dir: Path) -> None:
    """Keep the cache's subject split in the run folder, written when training starts (so a run
    stopped early has it too): `test` refuses to score the subjects a run trained on."""
    from mri2mri.data.io import atomic_write_bytes

    source = Path(cache_dir) / "split.json"
    if source.is_file():
        atomic_write_bytes(Path(run_dir) / "split.json", source.read_bytes())


def read_trained_subjects(split_file: Path) -> list[str] | None:
    """The train subjects of a split.json (a run's or a cache's); None when there is no file."""
    import json

    split_file = Path(split_file)
    if not split_file.is_file():
        return None
    try:
        payload = json.loads(split_file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as error:
        raise UserError(f"{split_file}: not a readable split ({error})") from None
    if not isinstance(payload, dict) or not isinstance(payload.get("train", []), list):
        raise UserError(f"{split_file}: not a split (expected lists of subject ids)")
    return [str(subject) for subject in payload.get("train", [])]


def find_checkpoint(run_dir: Path, which: str = "best") -> Path:
    """The ``best`` (or ``last``) checkpoint of a run folder; any ``.pth`` path is returned as is."""
    run_dir = Path(run_dir)
    if run_dir.is_file():
        return run_dir
    if not run_dir.exists():
        raise UserError(f"{run_dir}: does not exist (expected a checkpoint file or a run folder)")
    folder = run_dir / "checkpoints"
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
    "report.html", "split.json", "checkpoints", "figures", "cache", "test_cache", ".lock",
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
    import json

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
