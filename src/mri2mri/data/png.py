"""Paired 2D images: ``root/{train,val,test}/{T1,T2}/NAME.png`` (or .tif / .tiff).

Pairs are matched by file name (without extension) inside one split folder; contrast folders are
recognised by the same names as volumes (``T1``, ``t1``, ``t1n``, ``T2w`` ...; see
:mod:`mri2mri.data.discovery`). The split is the folder's: nothing is re-split. Each pair becomes
one cache "subject" of kind ``"image"`` with id ``<split>_<NAME>``.

Unlike volumes, a broken pair is an error, not a skipped subject: a missing partner, two sizes
inside a pair, or an unreadable or empty file raises one :class:`DataError` naming the file.
The mask is ``source > 0 | target > 0`` when the background is exactly zero, else all ones.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from mri2mri import console
from mri2mri.config import DataConfig
from mri2mri.data.cache import SPLITS, CacheWriter, SubjectRecord, SubjectSlices
from mri2mri.data.discovery import canonical_contrast, contrast_of
from mri2mri.data.formats import is_image_2d
from mri2mri.data.geometry import square_image
from mri2mri.data.images import read_image_2d
from mri2mri.errors import DataError


@dataclass(frozen=True)
class ImagePair:
    """One source/target image pair and the split its folder names."""

    subject: str
    split: str
    source: Path
    target: Path


def is_png_pair_root(path: Path | str) -> bool:
    """True when ``path`` has a train/val/test folder holding at least one contrast folder of images."""
    path = Path(path)
    if not path.is_dir():
        return False
    for split in SPLITS:
        split_dir = path / split
        if split_dir.is_dir() and any(
            contrast_of(d.name) and any(is_image_2d(f) for f in d.iterdir())
            for d in split_dir.iterdir()
            if d.is_dir()
        ):
            return True
    return False


def discover_image_pairs(root: Path | str, source: str, target: str) -> list[ImagePair]:
    """Every ``(source, target)`` image pair under ``root``; raises :class:`DataError` on any gap."""
    root = Path(root)
    source, target = canonical_contrast(source), canonical_contrast(target)
    pairs: list[ImagePair] = []
    for split in SPLITS:
        split_dir = root / split
        if not split_dir.is_dir():
            continue
        folders = _contrast_folders(split_dir)
        if source not in folders and target not in folders:
            continue
        for needed in (source, target):
            if needed not in folders:
                raise DataError(
                    f"{split_dir}: no {needed} folder beside {', '.join(sorted(folders))}"
                )
        source_files = _images_by_name(folders[source])
        target_files = _images_by_name(folders[target])
        for name, file in sorted(source_files.items()):
            if name not in target_files:
                raise DataError(f"{file}: no partner named {name}.* in {folders[target]}")
        for name, file in sorted(target_files.items()):
            if name not in source_files:
                raise DataError(f"{file}: no partner named {name}.* in {folders[source]}")
        pairs += [
            ImagePair(f"{split}_{name}", split, source_files[name], target_files[name])
            for name in sorted(source_files)
        ]
    if not pairs:
        raise DataError(f"{root}: no {source}/{target} image pairs in {'/'.join(SPLITS)} folders")
    return pairs


def _contrast_folders(split_dir: Path) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for folder in sorted(p for p in split_dir.iterdir() if p.is_dir()):
        contrast = contrast_of(folder.name)
        if contrast is None:
            continue
        if contrast in folders:
            raise DataError(f"{folder}: a second {contrast} folder beside {folders[contrast]}")
        folders[contrast] = folder
    return folders


def _images_by_name(folder: Path) -> dict[str, Path]:
    images: dict[str, Path] = {}
    for file in sorted(folder.iterdir()):
        if not (file.is_file() and is_image_2d(file)) or file.name.startswith("."):
            continue
        name = file.name[: -len(file.suffix)]
        if name in images:
            raise DataError(f"{file}: two images named {name} in {folder}")
        images[name] = file
    return images


def image_pair_slices(pair: ImagePair, data_config: DataConfig) -> SubjectSlices:
    """Read, mask, normalise and square one pair; the source is repeated over context channels."""
    source = read_image_2d(pair.source)
    target = read_image_2d(pair.target)
    if source.shape != target.shape:
        raise DataError(
            f"{pair.target}: size {target.shape[1]}x{target.shape[0]} differs from its partner "
            f"{pair.source} ({source.shape[1]}x{source.shape[0]})"
        )
    sliced = square_image((source, str(pair.source)), data_config, str(pair.target),
                          target=(target, str(pair.target)))  # fmt: skip
    record = SubjectRecord(
        subject=pair.subject,
        split=pair.split,
        source_file=str(pair.source),
        target_file=str(pair.target),
        slice_indices=[0],
        norm={role: {"low": low, "high": high}
              for role, (low, high) in (("source", sliced.windows[0]), ("target", sliced.target_window))},
        geometry=sliced.geometry,
        kind="image",
    )
    return SubjectSlices(
        record=record,
        source=sliced.slices,
        target=sliced.target,
        mask=sliced.mask,
    )


def write_image_cache(
    pairs: list[ImagePair],
    data_config: DataConfig,
    cache_dir: Path,
    *,
    fingerprint: str,
    progress: bool = True,
) -> Path:
    """Write a slice cache of image pairs; the split is the folders'."""
    split: dict[str, list[str]] = {name: [] for name in SPLITS}
    with CacheWriter(
        cache_dir, fingerprint=fingerprint, data_config=dataclasses.asdict(data_config)
    ) as writer:
        for pair in console.progress(pairs, desc="prepare", unit="pair", enabled=progress):
            writer.add(image_pair_slices(pair, data_config))
            split[pair.split].append(pair.subject)
        path = writer.commit(split, data_config.split_seed)
    counts = ", ".join(f"{len(split[name])} {name}" for name in SPLITS)
    console.say(f"prepared {len(pairs)} image pairs ({counts}) -> {path}")
    return path
