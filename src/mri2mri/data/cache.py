"""The slice cache: prepared 2D slices as memory-mapped arrays plus a JSON index.

Decoding a NIfTI volume costs tens of milliseconds; reading a slice of a memory-mapped array
costs microseconds. ``mri2mri prepare`` writes every usable slice once, and training, testing
and benchmarking read from here.

Layout of a cache folder::

    cache.json   format version, fingerprint of the inputs, data config, one record per subject
    split.json   {"seed": ..., "train": [...], "val": [...], "test": [...]}  (subject ids)
    index.csv    row, subject, split, slice_index
    source.npy   (N, C, S, S) float32 in [0, 1]   C = n_sources * (2 * context_slices + 1)
    target.npy   (N, 1, S, S) float32 in [0, 1]
    mask.npy     (N, 1, S, S) uint8 brain mask

With several source contrasts (``DataConfig.source`` a list) the channels are contrast-major:
the first source's ``2 * context_slices + 1`` channels, then the second's, and so on, in the order
``cache.json`` records (``sources``, ``channel_layout``).

A cache is written into a temporary sibling folder and renamed into place when complete, so a
failure never leaves a half-written cache behind.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from mri2mri import console
from mri2mri.config import DataConfig
from mri2mri.data.io import default_dir_mode
from mri2mri.errors import DataError

CACHE_FORMAT = 1
SPLITS = ("train", "val", "test")
# The files of a cache folder (the layout above); cache.json is written last and marks it complete.
INDEX_FILE = "cache.json"
SPLIT_FILE = "split.json"
ROWS_FILE = "index.csv"
ARRAY_FILES = {name: f"{name}.npy" for name in ("source", "target", "mask")}


class CacheError(DataError):
    """A cache folder is missing, incomplete or of another format."""


@dataclass
class SubjectRecord:
    """What the cache remembers of one subject (or one PNG pair).

    ``norm`` holds the intensity window of each contrast (``{"source": {"low": .., "high": ..},
    "target": {...}}``) so that outputs in [0, 1] can be mapped back to the input's scale;
    ``geometry`` holds what is needed to put a synthesised slice stack back on the input's grid.
    """

    subject: str
    split: str
    source_file: str
    target_file: str
    rows: tuple[int, int] = (0, 0)  # [start, stop) rows of this subject in the arrays
    slice_indices: list[int] = field(default_factory=list)
    norm: dict[str, dict[str, float]] = field(default_factory=dict)
    geometry: dict[str, Any] = field(default_factory=dict)
    kind: str = "volume"  # "volume" or "image"
    # Every source file in channel order when there are several (source_file is the first).
    source_files: list[str] = field(default_factory=list)


@dataclass
class SubjectSlices:
    """The prepared slices of one subject, ready to be appended to a cache."""

    record: SubjectRecord
    source: np.ndarray  # (n, C, S, S) float32 in [0, 1]
    target: np.ndarray  # (n, 1, S, S) float32 in [0, 1]
    mask: np.ndarray  # (n, 1, S, S) bool or uint8


@contextlib.contextmanager
def cleanup_on_terminate() -> Iterator[None]:
    """Inside, SIGTERM raises SystemExit instead of killing the process outright, so that a
    ``with CacheWriter(...)`` block removes its temporary folder (``.NAME.tmp-*``) on the way out."""
    if threading.current_thread() is not threading.main_thread():
        yield  # signal handlers can only be installed from the main thread
        return

    def terminate(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class CacheWriter:
    """Append subjects one at a time, then ``commit`` the cache atomically.

    Each subject's slices go to a temporary chunk file first, so memory holds one subject at a
    time however many subjects there are.
    """

    def __init__(self, out_dir: Path, *, fingerprint: str, data_config: dict[str, Any]):
        self.out_dir = Path(out_dir)
        self.out_dir.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = Path(tempfile.mkdtemp(prefix=f".{self.out_dir.name}.tmp-", dir=self.out_dir.parent))
        self._fingerprint = fingerprint
        self._data_config = data_config
        self._records: list[SubjectRecord] = []
        self._chunks: list[Path] = []
        self._rows = 0
        self._shape: tuple[int, ...] | None = None

    def add(self, item: SubjectSlices) -> None:
        n = item.source.shape[0]
        if not (item.target.shape[0] == item.mask.shape[0] == n):
            raise CacheError(f"{item.record.subject}: source, target and mask differ in slice count")
        if n == 0:
            return
        shape = item.source.shape[1:]
        if self._shape is None:
            self._shape = shape
        elif shape != self._shape:
            raise CacheError(f"{item.record.subject}: slices of shape {shape}, cache holds {self._shape}")
        chunk = self._tmp / f"chunk_{len(self._chunks):05d}.npz"
        np.savez(
            chunk,
            source=item.source.astype(np.float32, copy=False),
            target=item.target.astype(np.float32, copy=False),
            mask=item.mask.astype(np.uint8, copy=False),
        )
        self._chunks.append(chunk)
        item.record.rows = (self._rows, self._rows + n)
        self._rows += n
        self._records.append(item.record)

    def commit(self, split: dict[str, list[str]], split_seed: int) -> Path:
        """Concatenate the chunks into memory-mapped arrays and move the cache into place."""
        if self._shape is None:
            self.abort()
            raise CacheError(f"{self.out_dir}: no slices to write")
        channels, height, width = self._shape
        arrays = {
            "source": np.lib.format.open_memmap(
                self._tmp / ARRAY_FILES["source"], "w+", np.float32, (self._rows, channels, height, width)
            ),
            "target": np.lib.format.open_memmap(
                self._tmp / ARRAY_FILES["target"], "w+", np.float32, (self._rows, 1, height, width)
            ),
            "mask": np.lib.format.open_memmap(
                self._tmp / ARRAY_FILES["mask"], "w+", np.uint8, (self._rows, 1, height, width)
            ),
        }
        for record, chunk in zip(self._records, self._chunks, strict=True):
            start, stop = record.rows
            with np.load(chunk) as data:
                for name, array in arrays.items():
                    array[start:stop] = data[name]
            chunk.unlink()
        for array in arrays.values():
            array.flush()
        del arrays

        meta = {
            "format": CACHE_FORMAT,
            "fingerprint": self._fingerprint,
            "data_config": self._data_config,
            "n_slices": self._rows,
            "in_channels": channels,
            **_channel_layout(self._data_config),
            "image_size": [height, width],
            "subjects": [asdict(r) for r in self._records],
        }
        split_file = {"seed": split_seed, **{k: split.get(k, []) for k in SPLITS}}
        return _finish(self._tmp, self.out_dir, meta, split_file)

    def abort(self) -> None:
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> CacheWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()


def _finish(tmp: Path, out_dir: Path, meta: dict[str, Any], split_file: dict[str, Any]) -> Path:
    """Write the index, split and metadata beside the arrays in ``tmp``, then move it to ``out_dir``."""
    with open(tmp / ROWS_FILE, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(["row", "subject", "split", "slice_index"])
        for record in meta["subjects"]:
            for offset, slice_index in enumerate(record["slice_indices"]):
                writer.writerow([record["rows"][0] + offset, record["subject"], record["split"], slice_index])
    _write_json(tmp / SPLIT_FILE, split_file)
    _write_json(tmp / INDEX_FILE, meta)  # written last: its presence marks completion
    # mkdtemp makes a 0700 folder: give the cache what an ordinary mkdir would.
    os.chmod(tmp, default_dir_mode())
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return out_dir


def _channel_layout(data_config: dict[str, Any]) -> dict[str, Any]:
    """What each input channel holds: the sources in order, contrast-major."""
    source = data_config.get("source", "T1")
    sources = [source] if isinstance(source, str) else list(source)
    return {"sources": sources, "channel_layout": "contrast-major",
            "context_slices": int(data_config.get("context_slices", 0))}  # fmt: skip


def _write_json(path: Path, payload: Any) -> None:
    path.write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")


def is_cache(path: Path) -> bool:
    return (Path(path) / INDEX_FILE).is_file()


class SliceCache:
    """Read-only view of a prepared cache; arrays are memory-mapped, never loaded whole."""

    def __init__(self, path: Path):
        self.path = Path(path)
        meta_file = self.path / INDEX_FILE
        if not meta_file.is_file():
            raise CacheError(f"{self.path}: not a slice cache (no cache.json); run `mri2mri prepare`")
        try:
            self.meta = json.loads(meta_file.read_text(encoding="utf-8"))
            split = json.loads((self.path / SPLIT_FILE).read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise CacheError(f"{self.path}: unreadable cache index ({error})") from None
        if self.meta.get("format") != CACHE_FORMAT:
            raise CacheError(f"{self.path}: cache format {self.meta.get('format')}, expected {CACHE_FORMAT}")
        self.split: dict[str, list[str]] = {k: list(split.get(k, [])) for k in SPLITS}
        self.split_seed = split.get("seed")
        self.subjects = [SubjectRecord(**_tuple_rows(r)) for r in self.meta["subjects"]]
        try:
            self.source = np.load(self.path / ARRAY_FILES["source"], mmap_mode="r")
            self.target = np.load(self.path / ARRAY_FILES["target"], mmap_mode="r")
            self.mask = np.load(self.path / ARRAY_FILES["mask"], mmap_mode="r")
        except (OSError, ValueError) as error:
            raise CacheError(f"{self.path}: unreadable cache arrays ({error})") from None

    @property
    def fingerprint(self) -> str:
        return self.meta.get("fingerprint", "")

    @property
    def in_channels(self) -> int:
        return int(self.meta["in_channels"])

    @property
    def sources(self) -> tuple[str, ...]:
        """The source contrasts in channel order (caches written before several sources existed
        hold one, named in their data config)."""
        recorded = self.meta.get("sources") or self.meta.get("data_config", {}).get("source") or "T1"
        return (recorded,) if isinstance(recorded, str) else tuple(recorded)

    @property
    def source_option(self) -> str | tuple[str, ...] | None:
        """``DataConfig.source`` for this cache: a plain name for one source; None when the cache
        records none (one written by hand)."""
        if not (self.meta.get("sources") or self.meta.get("data_config", {}).get("source")):
            return None
        return self.sources[0] if len(self.sources) == 1 else self.sources

    @property
    def context_slices(self) -> int:
        return (self.in_channels // len(self.sources) - 1) // 2

    @property
    def table_channel(self) -> int:
        """The channel of the first source's own slice (contrast-major layout)."""
        return self.context_slices

    @property
    def image_size(self) -> tuple[int, int]:
        height, width = self.meta["image_size"]
        return int(height), int(width)

    def subjects_in(self, split: str) -> list[SubjectRecord]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
        return [r for r in self.subjects if r.split == split]

    def rows(self, split: str) -> np.ndarray:
        """Row indices of every slice whose subject belongs to ``split``."""
        parts = [np.arange(*r.rows) for r in self.subjects_in(split)]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def record(self, subject: str) -> SubjectRecord:
        for r in self.subjects:
            if r.subject == subject:
                return r
        raise KeyError(subject)

    def row_owner(self) -> np.ndarray:
        """For each row, the position of its subject in ``self.subjects``."""
        owner = np.empty(len(self.source), dtype=np.int64)
        for position, r in enumerate(self.subjects):
            owner[r.rows[0] : r.rows[1]] = position
        return owner


def _tuple_rows(record: dict[str, Any]) -> dict[str, Any]:
    return {**record, "rows": tuple(record.get("rows", (0, 0)))}


def resplit(cache_dir: Path, assignment: dict[str, str], out_dir: Path) -> Path:
    """A new cache with the same slices and another subject-level split.

    ``assignment`` maps subject id -> "train" | "val" | "test"; subjects left out are dropped
    from every split. The arrays are hard-linked (copied where links are impossible), so a
    cross-validation fold costs no disk space. Used to rotate the held-out patient.
    """
    cache = SliceCache(cache_dir)
    known = {r.subject for r in cache.subjects}
    unknown = sorted(set(assignment) - known)
    if unknown:
        raise CacheError(f"{cache_dir}: no subject {', '.join(unknown)} in this cache")
    bad = sorted({s for s in assignment.values() if s not in SPLITS})
    if bad:
        raise CacheError(f"unknown split {', '.join(bad)}; choose from {', '.join(SPLITS)}")
    out_dir = Path(out_dir)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        for name in ARRAY_FILES.values():
            try:
                os.link(cache.path / name, tmp / name)
            except OSError:
                shutil.copy2(cache.path / name, tmp / name)
        meta = dict(cache.meta)
        meta["subjects"] = [
            {**record, "split": assignment.get(record["subject"], "excluded")} for record in cache.meta["subjects"]
        ]
        split = {k: sorted(s for s, v in assignment.items() if v == k) for k in SPLITS}
        _finish(tmp, out_dir, meta, {"seed": None, **split})
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir


# How a cache's slices were made that prediction must repeat on a new volume. A model trained on
# a prepared cache saw the cache's choice, whatever the command line of `train` said.
PREDICTION_FIELDS = {"bias_correction": "none", "percentiles": (0.5, 99.5),
                     "brain_extraction": "none"}  # values before they were recorded


def in_plane_spacing(cache: SliceCache) -> tuple[float, float] | None:
    """The median in-plane voxel size (mm, canonical R and A axes) of the training subjects'
    volumes: what the model's slices were sampled at (None for image pairs: no spacing)."""
    spacings = [r.geometry["spacing"][:2] for r in cache.subjects_in("train") if "spacing" in r.geometry]
    if not spacings:
        return None
    return tuple(round(float(v), 4) for v in np.median(np.asarray(spacings, dtype=np.float64), axis=0))


def adopt_cache_preparation(cache: SliceCache, data_config: DataConfig) -> DataConfig:
    """``data_config`` with the preparation ``cache`` was made with, so that the run records (and
    ``predict`` repeats) what the model saw, its in-plane spacing included. A value that differs from both the cache's and the
    default was asked for, and the warning says it is not used."""
    recorded = cache.meta.get("data_config", {})
    defaults = DataConfig()
    changes = {}
    for name, before in PREDICTION_FIELDS.items():
        value = recorded.get(name, before)
        value = tuple(float(v) for v in value) if isinstance(value, list) else value
        if value == getattr(data_config, name):
            continue
        changes[name] = value
        if getattr(data_config, name) != getattr(defaults, name):
            shown = " ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else value
            console.note(f"warning: {cache.path}: cache was prepared with --{name.replace('_', '-')} {shown}; "
                         "the run uses that")
    changes["in_plane_spacing"] = in_plane_spacing(cache)
    return replace(data_config, **changes)
