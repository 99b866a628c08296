"""Find paired subjects and their contrasts by name, across the layouts people actually have.

Contrasts are recognised by *tokens* of a file or folder name (split at ``-``, ``_``, ``.`` and
spaces), case-insensitively, so ``t1`` never matches ``t1c`` and ``t2`` never matches ``t2f``:

===========  =====================================
contrast     names
===========  =====================================
``T1``       t1, t1n, t1w
``T2``       t2, t2w
``FLAIR``    flair, fla, t2f
``T1c``      t1c, t1ce, t1gd
``PD``       pd, pdw
===========  =====================================

Layouts (any mix inside one root folder):

- subject folders, one per subject, files named by contrast at any depth:
  ``BraTS-GLI-00001-000/BraTS-GLI-00001-000-t1n.nii.gz``, ``sub-01/T1.nii.gz``,
  ``TCGA-DU-7294/TCGA-DU-7294_t1_bet_normalized.nii.gz``, ``case/t1n.nii.gz``;
- DICOM series as folders named by contrast inside a subject folder: ``sub-01/T1/*.dcm``;
- flat folders of files named subject + contrast (IXI): ``IXI002-Guys-0828-T1.nii.gz`` beside
  ``IXI002-Guys-0828-T2.nii.gz``; the subject is the name without its contrast token;
- a root that is itself one subject (``case/t1n.nii.gz``, ``case/T1/*.dcm``);
- a CSV manifest with columns ``subject, source, target`` (or one column per contrast name);
  relative paths are resolved against the CSV's folder. Paths may point outside that folder:
  they are only ever read, and nothing is written next to them.

Discovery never raises for one bad subject: it returns the pairs it found and one line per
subject it had to skip; the caller decides what to do when nothing is left.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mri2mri.data.cache import is_cache
from mri2mri.data.formats import DICOM, is_volume_file, split_suffix
from mri2mri.errors import ConfigError, DataError

CONTRAST_ALIASES: dict[str, tuple[str, ...]] = {
    "T1": ("t1", "t1n", "t1w"),
    "T2": ("t2", "t2w"),
    "FLAIR": ("flair", "fla", "t2f"),
    "T1c": ("t1c", "t1ce", "t1gd"),
    "PD": ("pd", "pdw"),
}
_ALIAS_TO_CONTRAST = {
    alias: name for name, aliases in CONTRAST_ALIASES.items() for alias in aliases
}
_ALIAS_TO_CONTRAST.update({name.lower(): name for name in CONTRAST_ALIASES})
# Files that carry a contrast token but are not images of it (BraTS "-seg", brain masks...).
_IGNORED_TOKENS = {"seg", "mask", "label", "labels", "brainmask"}
_TOKEN = re.compile(r"[^-_.\s]+")
_MAX_DEPTH = 3


def canonical_contrast(name: str) -> str:
    """``"t1n"`` -> ``"T1"``; an unknown name raises :class:`ConfigError` listing the valid ones."""
    contrast = _ALIAS_TO_CONTRAST.get(str(name).strip().lower())
    if contrast is None:
        valid = ", ".join(f"{c} ({'/'.join(a)})" for c, a in CONTRAST_ALIASES.items())
        raise ConfigError(f"unknown contrast {name!r}; choose one of {valid}")
    return contrast


def contrast_of(name: str) -> str | None:
    """The contrast named by a file or folder name, or None; the last contrast token wins."""
    match = _contrast_token(name)
    return match[0] if match else None


def _strip_suffix(name: str) -> str:
    return split_suffix(name, folders=True)[0]


def _contrast_token(name: str) -> tuple[str, int, int] | None:
    """(contrast, start, stop) of the last contrast token in ``name`` without its suffix."""
    stem = _strip_suffix(name)
    tokens = list(_TOKEN.finditer(stem))
    if any(t.group().lower() in _IGNORED_TOKENS for t in tokens):
        return None
    for token in reversed(tokens):
        contrast = _ALIAS_TO_CONTRAST.get(token.group().lower())
        if contrast is not None:
            return contrast, token.start(), token.end()
    return None


def subject_key(name: str) -> str:
    """The name without its suffix and contrast token: ``IXI002-Guys-0828-T1.nii.gz`` -> ``IXI002-Guys-0828``."""
    stem = _strip_suffix(name)
    match = _contrast_token(name)
    if match is None:
        return stem
    _, start, stop = match
    joined = (
        stem[:start].rstrip("-_. ")
        + (stem[start - 1] if start > 0 else "")
        + stem[stop:].lstrip("-_. ")
    )
    return joined.strip("-_. ")


@dataclass(frozen=True)
class SubjectPair:
    """One subject's source and target: a NIfTI file or a DICOM series folder each.

    With several source contrasts ``sources`` holds every source in channel order and
    ``source`` is its first; with one it is empty and ``source`` is all there is."""

    subject: str
    source: Path
    target: Path
    layout: str  # "folders", "flat", "dicom" or "manifest"
    sources: tuple[Path, ...] = ()

    @property
    def source_paths(self) -> tuple[Path, ...]:
        return self.sources or (self.source,)


@dataclass
class Discovery:
    """Pairs found under a root, and one line for every subject that had to be skipped."""

    pairs: list[SubjectPair] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    # Subjects (or manifest rows) skipped: one may have several problems (both contrasts missing).
    skipped: int = 0


def canonical_sources(source: str | Sequence[str], target: str | None = None) -> tuple[str, ...]:
    """The canonical source contrasts of ``--source`` (a name or several); ConfigError for an
    unknown name, a contrast named twice, or a source that is also the target."""
    names = (source,) if isinstance(source, str) else tuple(source)
    contrasts = tuple(canonical_contrast(name) for name in names)
    repeated = sorted({c for c in contrasts if contrasts.count(c) > 1})
    if repeated:
        raise ConfigError(f"--source names {', '.join(repeated)} more than once")
    if target is not None and canonical_contrast(target) in contrasts:
        raise ConfigError(
            f"source and target are both {canonical_contrast(target)}; choose two different contrasts"
        )
    return contrasts


def subject_contrasts(folder: Path) -> dict[str, list[Path]]:
    """Contrast -> NIfTI files or DICOM series folders of one subject folder (or a folder that
    holds DICOM series folders named by contrast), by the same name rules as :func:`discover_pairs`."""
    return _contrasts_in_subject_folder(Path(folder))


def discover_pairs(root: Path | str, source: str | Sequence[str], target: str) -> Discovery:
    """Find every subject under ``root`` (a folder or a CSV manifest) with both contrasts.

    ``source`` may name several contrasts: a subject needs all of them, and the pairs' ``sources``
    hold them in that order."""
    root = Path(root)
    sources = canonical_sources(source, target)
    target = canonical_contrast(target)
    if root.is_file() and root.suffix.lower() == ".csv":
        return read_manifest(root, sources if len(sources) > 1 else sources[0], target)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder or CSV manifest")

    found: dict[str, dict[str, list[Path]]] = {}
    layouts: dict[str, str] = {}
    for entry in sorted(root.iterdir()):
        if entry.name.startswith(".") or is_cache(entry):
            continue
        contrast = contrast_of(entry.name)
        if entry.is_file() and is_volume_file(entry) and contrast:
            subject = subject_key(entry.name) or root.name
            found.setdefault(subject, {}).setdefault(contrast, []).append(entry)
            layouts.setdefault(subject, "flat")
        elif entry.is_dir() and contrast and _is_series_folder(entry):
            # The root is itself one subject holding DICOM series folders (case/T1/*.dcm).
            found.setdefault(root.name, {}).setdefault(contrast, []).append(entry)
            layouts[root.name] = "dicom"
        elif entry.is_dir():
            contrasts = _contrasts_in_subject_folder(entry)
            if contrasts:
                subject = entry.name
                for name, paths in contrasts.items():
                    found.setdefault(subject, {}).setdefault(name, []).extend(paths)
                is_dicom = any(p.is_dir() for paths in contrasts.values() for p in paths)
                layouts[subject] = "dicom" if is_dicom else "folders"

    discovery = Discovery()
    wanted = (*sources, target)
    for subject in sorted(found):
        contrasts = found[subject]
        chosen = []
        missing = [contrast for contrast in wanted if not contrasts.get(contrast)]
        if missing and len(sources) > 1:  # one line naming everything the subject lacks
            present = ", ".join(sorted(contrasts)) or "none"
            where = _subject_location(root, contrasts)
            discovery.problems.append(
                f"subject {subject}: no {' or '.join(missing)} image in {where} (found {present}); skipped"
            )
        for contrast in wanted:
            paths = contrasts.get(contrast, [])
            if len(paths) == 1:
                chosen.append(paths[0])
            elif not paths:
                if len(sources) > 1:
                    continue
                present = ", ".join(sorted(contrasts)) or "none"
                where = _subject_location(root, contrasts)
                discovery.problems.append(
                    f"subject {subject}: no {contrast} image in {where} (found {present}); skipped"
                )
            else:
                names = ", ".join(str(p.relative_to(root)) for p in sorted(paths))
                discovery.problems.append(
                    f"subject {subject}: several {contrast} images ({names}); skipped"
                )
        if len(chosen) == len(wanted):
            extra = tuple(chosen[:-1]) if len(sources) > 1 else ()
            discovery.pairs.append(SubjectPair(subject, chosen[0], chosen[-1], layouts[subject], extra))
        else:
            discovery.skipped += 1
    return discovery


def _subject_location(root: Path, contrasts: dict[str, list[Path]]) -> str:
    paths = [p for ps in contrasts.values() for p in ps]
    return str(paths[0].parent) if paths else str(root)


def _contrasts_in_subject_folder(folder: Path) -> dict[str, list[Path]]:
    """Contrast -> NIfTI files or DICOM series folders found inside one subject folder."""
    result: dict[str, list[Path]] = {}
    stack = [(folder, 0)]
    while stack:
        current, depth = stack.pop()
        for entry in sorted(current.iterdir()):
            if entry.name.startswith("."):
                continue
            contrast = contrast_of(entry.name)
            if (
                entry.is_file()
                and is_volume_file(entry)
                and contrast
                or entry.is_dir()
                and contrast
                and _is_series_folder(entry)
            ):
                result.setdefault(contrast, []).append(entry)
            elif entry.is_dir() and depth + 1 < _MAX_DEPTH and not is_cache(entry):
                stack.append((entry, depth + 1))
    return result


def _is_series_folder(folder: Path) -> bool:
    """A folder of DICOM slices: ``.dcm`` files, or extension-less files with the DICM marker."""
    for entry in folder.iterdir():
        if not entry.is_file() or entry.name.startswith("."):
            continue
        if entry.suffix.lower() in DICOM.suffixes:
            return True
        if entry.suffix == "" and _has_dicom_marker(entry):
            return True
    return False


def _has_dicom_marker(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            handle.seek(128)
            return handle.read(4) == b"DICM"
    except OSError:
        return False


def read_manifest(csv_path: Path, source: str | Sequence[str], target: str) -> Discovery:
    """Pairs listed in a CSV: columns ``subject, source, target`` or one column per contrast
    (the only form for several sources: one column for each)."""
    sources = canonical_sources(source, target)
    if len(sources) > 1:
        return _read_multi_manifest(csv_path, sources, canonical_contrast(target))
    source, target = sources[0], canonical_contrast(target)
    rows = _manifest_rows(csv_path)
    columns = [c for c in (rows[0].keys() if rows else [])]
    by_name = {str(c).strip().lower(): c for c in columns if c is not None}
    subject_column = by_name.get("subject")
    source_column = by_name.get("source") or _contrast_column(by_name, source)
    target_column = by_name.get("target") or _contrast_column(by_name, target)
    if not rows:
        raise DataError(f"{csv_path}: empty CSV manifest")
    if subject_column is None or source_column is None or target_column is None:
        raise DataError(
            f"{csv_path}: manifest needs columns subject, source, target (or {source} and {target});"
            f" found {', '.join(map(str, columns))}"
        )

    discovery = Discovery()
    seen: set[str] = set()
    base = csv_path.resolve().parent
    for line, row in enumerate(rows, start=2):
        subject = _new_subject(row.get(subject_column), seen, f"{csv_path}:{line}", discovery)
        if subject is None:
            continue
        paths = []
        for column in (source_column, target_column):
            value, path = _manifest_file(row.get(column), base)
            if path is None:
                discovery.problems.append(
                    f"subject {subject}: {column} file {value or '(empty)'} not found ({csv_path}:{line}); skipped"
                )
                break
            paths.append(path)
        if len(paths) == 2:
            discovery.pairs.append(SubjectPair(subject, paths[0], paths[1], "manifest"))
        else:
            discovery.skipped += 1
    _refuse_shared_files(csv_path, discovery.pairs)
    return discovery


def _read_multi_manifest(csv_path: Path, sources: tuple[str, ...], target: str) -> Discovery:
    """A manifest with a column per contrast, for a model of several sources."""
    rows = _manifest_rows(csv_path)
    if not rows:
        raise DataError(f"{csv_path}: empty CSV manifest")
    columns = [c for c in rows[0] if c is not None]
    by_name = {str(c).strip().lower(): c for c in columns}
    wanted = (*sources, target)
    chosen = {contrast: _contrast_column(by_name, contrast) for contrast in wanted}
    absent = [contrast for contrast, column in chosen.items() if column is None]
    if "subject" not in by_name or absent:
        raise DataError(
            f"{csv_path}: a manifest for several sources needs columns subject, "
            f"{', '.join(wanted)}; found {', '.join(map(str, columns))}"
        )
    discovery = Discovery()
    seen: set[str] = set()
    base = csv_path.resolve().parent
    for line, row in enumerate(rows, start=2):
        subject = _new_subject(row.get(by_name["subject"]), seen, f"{csv_path}:{line}", discovery)
        if subject is None:
            continue
        paths, missing = [], []
        for contrast in wanted:
            value, path = _manifest_file(row.get(chosen[contrast]), base)
            if path is None:
                missing.append(f"{contrast} ({value or 'empty'})")
            paths.append(path)
        if missing:
            discovery.problems.append(
                f"subject {subject}: no {' or '.join(missing)} file found ({csv_path}:{line}); skipped"
            )
            discovery.skipped += 1
            continue
        discovery.pairs.append(SubjectPair(subject, paths[0], paths[-1], "manifest", tuple(paths[:-1])))
    _refuse_shared_files(csv_path, discovery.pairs)
    return discovery


def _manifest_rows(csv_path: Path) -> list[dict[str, str]]:
    """The rows of a CSV manifest (a byte-order mark allowed), or one DataError naming it."""
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            return list(csv.DictReader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{csv_path}: unreadable CSV manifest ({error})") from None


def _new_subject(value: str | None, seen: set[str], where: str, discovery: Discovery) -> str | None:
    """The row's subject id, or None (recorded as skipped) when it is empty or listed before."""
    subject = (value or "").strip()
    if not subject or subject in seen:
        why = "no subject name" if not subject else f"subject {subject} listed twice"
        discovery.problems.append(f"{where}: {why}; skipped")
        discovery.skipped += 1
        return None
    seen.add(subject)
    return subject


def _manifest_file(value: str | None, base: Path) -> tuple[str, Path | None]:
    """A manifest cell and the file it names (relative to the manifest's folder), None if absent."""
    value = (value or "").strip()
    path = Path(value).expanduser()
    path = path if path.is_absolute() else base / path
    return value, path if value and path.exists() else None


def _refuse_shared_files(csv_path: Path, pairs: list[SubjectPair]) -> None:
    """One file under two subject ids would put the same images in two splits (a leak from
    training into testing): refuse the manifest, naming the file and both subjects."""
    owner: dict[Path, str] = {}
    for pair in pairs:
        for path in (*pair.source_paths, pair.target):
            key = Path(path).resolve()
            other = owner.setdefault(key, pair.subject)
            if other != pair.subject:
                raise DataError(
                    f"{csv_path}: {path} is listed under subjects {other} and {pair.subject}; one "
                    "scan must belong to one subject, or it leaks across the train/val/test split"
                )


def _contrast_column(by_name: dict[str, str], contrast: str) -> str | None:
    for lower, column in by_name.items():
        if _ALIAS_TO_CONTRAST.get(lower) == contrast:
            return column
    return None
