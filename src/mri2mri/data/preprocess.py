"""From volumes on disk to a slice cache: grids, masks, normalisation, slices, split.

The steps, each a small function; the NumPy ones (2-4) live in :mod:`mri2mri.data.geometry`,
which prediction (:mod:`mri2mri.portable`) uses too, so that it treats one volume exactly as
training did, without PyTorch:

1. :func:`same_grid` / :func:`register_rigid` / :func:`resample_to`: the source is put on the
   target's voxel grid (SimpleITK; rigid Mattes mutual information registration on request).
2. :func:`~mri2mri.data.bias.n4_correct` (``--bias-correction n4``, the default): each source
   volume's N4 bias field divided out; then :func:`~mri2mri.data.geometry.brain_mask`: non-zero
   voxels when the background is exactly zero (skull-stripped data), else an Otsu head mask
   with holes filled.
3. :func:`~mri2mri.data.geometry.normalise`: clip to percentiles of brain voxels, scale to
   [0, 1]; ``low``/``high`` are kept so that :func:`~mri2mri.data.geometry.denormalise` maps
   outputs back.
4. :func:`~mri2mri.data.geometry.select_slices`, :func:`~mri2mri.data.geometry.plan_geometry`,
   :func:`~mri2mri.data.geometry.volume_to_slices`: axial slices with enough brain, cropped to
   the brain's bounding box, padded to a square, resized; and
   :func:`~mri2mri.data.geometry.slices_to_volume`, the exact inverse back onto the input
   file's grid.
5. :func:`split_subjects` and :func:`prepare`: split by subject, write the cache (or reuse it).

Steps 2-4 run in one function, :func:`~mri2mri.data.geometry.slice_volume`, which prediction
(:func:`mri2mri.portable.prepare_volume`) runs too; its docstring says where the two differ.

The geometry dict (``SubjectRecord.geometry``: grid file, original and canonical shape and
affine, crop, pad, sizes, registration) is documented at the top of
:mod:`mri2mri.data.geometry`, beside the code that writes and inverts it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np

from mri2mri import console
from mri2mri.config import DataConfig
from mri2mri.data import png
from mri2mri.data.cache import (
    CacheWriter,
    SliceCache,
    SubjectRecord,
    SubjectSlices,
    cleanup_on_terminate,
    is_cache,
)
from mri2mri.data.discovery import (
    Discovery,
    SubjectPair,
    canonical_contrast,
    canonical_sources,
    discover_pairs,
)
from mri2mri.data.geometry import (  # noqa: F401 (brain_mask ... volume_to_slices: re-exported)
    Sliced,
    brain_mask,
    check_not_constant,
    normalise,
    plan_geometry,
    select_slices,
    slice_volume,
    volume_to_slices,
)
from mri2mri.data.io import Volume, check_writable_folder, read_volume
from mri2mri.errors import DataError

# Bump when the slices a given input produces change, so old caches are not reused.
PREPROCESS_VERSION = 1
# DataConfig fields that change the slices or the split (augment does not).
SLICE_FIELDS = (
    "source",
    "target",
    "image_size",
    "context_slices",
    "min_brain_fraction",
    "val_fraction",
    "test_fraction",
    "split_seed",
    "percentiles",
    "register",
    "bias_correction",
    "brain_extraction",
)


def warn(message: str) -> None:
    """One warning line on stderr (bad subjects, odd inputs)."""
    console.note(f"warning: {message}")


def say(message: str) -> None:
    console.say(message)


# --------------------------------------------------------------------------------------------
# 1. Grids: same grid, rigid registration, resampling (SimpleITK)


def same_grid(a: Volume, b: Volume, *, tolerance_mm: float = 1e-3) -> bool:
    """True when both canonical volumes share shape and voxel-to-world affine."""
    return a.data.shape == b.data.shape and np.allclose(a.affine, b.affine, atol=tolerance_mm)


def describe_grid(volume: Volume) -> str:
    shape = "x".join(str(s) for s in volume.data.shape)
    spacing = "x".join(f"{s:.3g}" for s in volume.spacing)
    origin = ",".join(f"{o:.1f}" for o in volume.affine[:3, 3])
    return f"{shape} voxels of {spacing} mm at ({origin})"


def to_sitk(volume: Volume):
    """The canonical volume as a SimpleITK image (LPS physical space, index order i, j, k)."""
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(np.ascontiguousarray(volume.data.transpose(2, 1, 0)))
    affine_lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ volume.affine
    spacing = np.linalg.norm(affine_lps[:3, :3], axis=0)
    image.SetSpacing([float(s) for s in spacing])
    image.SetDirection([float(v) for v in (affine_lps[:3, :3] / spacing).flatten()])
    image.SetOrigin([float(v) for v in affine_lps[:3, 3]])
    return image


def resample_to(moving: Volume, reference: Volume, transform=None) -> np.ndarray:
    """``moving`` resampled (linear) onto ``reference``'s grid; outside its field of view is 0.

    ``transform`` maps reference physical points to moving physical points (SimpleITK's
    convention, what :func:`register_rigid` returns); None is the identity.
    """
    import SimpleITK as sitk

    result = sitk.Resample(
        to_sitk(moving),
        to_sitk(reference),
        transform if transform is not None else sitk.Transform(),
        sitk.sitkLinear,
        0.0,
        sitk.sitkFloat32,
    )
    return np.ascontiguousarray(sitk.GetArrayFromImage(result).transpose(2, 1, 0))


def _itk_reason(error: BaseException) -> str:
    """One line from a SimpleITK exception, whose text spans several (file, line, description)."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    for line in lines:
        if line.startswith("Description:"):
            return line[len("Description:"):].strip()
    return lines[-1] if lines else type(error).__name__


def register_rigid(fixed: Volume, moving: Volume, *, seed: int = 0, iterations: int = 100):
    """Rigid (Euler 3D) registration of ``moving`` onto ``fixed`` by Mattes mutual information.

    Starts from the identity (scanner coordinates are usually close already), multi-resolution.
    Returns ``(transform, info)`` where ``info`` holds the final metric value and the parameters.
    """
    import SimpleITK as sitk

    fixed_image, moving_image = to_sitk(fixed), to_sitk(moving)
    initial = sitk.Euler3DTransform()
    centre_index = [(s - 1) / 2.0 for s in fixed_image.GetSize()]
    initial.SetCenter(fixed_image.TransformContinuousIndexToPhysicalPoint(centre_index))

    # Shrink while the coarsest level keeps at least 16 voxels along the shortest axis.
    shrink = [1]
    while min(fixed_image.GetSize()) // (shrink[0] * 2) >= 16 and len(shrink) < 3:
        shrink.insert(0, shrink[0] * 2)
    method = sitk.ImageRegistrationMethod()
    method.SetMetricAsMattesMutualInformation(numberOfHistogramBins=32)
    method.SetMetricSamplingStrategy(method.RANDOM)
    # About 50k random samples per level (every voxel of a smaller level: half of a tiny level's
    # voxels let one seed in twelve end 3 degrees off): enough for a 6-parameter fit, fast on 240^3.
    voxels = [np.prod(fixed_image.GetSize()) / factor**3 for factor in shrink]
    # SimpleITK reads a seed of 0 as "seed from the wall clock" (sitkWallClock): shift by one so
    # that every seed, 0 included, gives the same samples, and the same registration, each time.
    method.SetMetricSamplingPercentagePerLevel([float(min(1.0, 5e4 / v)) for v in voxels], seed + 1)
    method.SetInterpolator(sitk.sitkLinear)
    method.SetOptimizerAsRegularStepGradientDescent(
        learningRate=2.0, minStep=1e-3, numberOfIterations=iterations, relaxationFactor=0.6
    )
    method.SetOptimizerScalesFromPhysicalShift()
    method.SetShrinkFactorsPerLevel(shrink)
    method.SetSmoothingSigmasPerLevel([float(s // 2) for s in shrink])
    method.SmoothingSigmasAreSpecifiedInPhysicalUnitsOff()
    method.SetInitialTransform(initial, inPlace=False)
    try:
        transform = method.Execute(fixed_image, moving_image)
    except RuntimeError as error:
        raise DataError(
            f"{moving.path}: rigid registration onto {fixed.path} failed ({_itk_reason(error)})"
        ) from None
    euler = sitk.Euler3DTransform(sitk.CompositeTransform(transform).GetNthTransform(0))
    parameters = np.array(euler.GetParameters())
    info = {
        "metric": "mattes_mutual_information",
        "final_metric_value": float(method.GetMetricValue()),
        "iterations": int(method.GetOptimizerIteration()),
        "stop": method.GetOptimizerStopConditionDescription(),
        "rotation_rad": [float(v) for v in parameters[:3]],
        "translation_mm_ras": [float(v) for v in parameters[3:] * np.array([-1.0, -1.0, 1.0])],
    }
    return transform, info


# --------------------------------------------------------------------------------------------
# 2-4. One subject for the cache: align, then mask, normalise and slice (data.geometry)


def prepare_subject(pair: SubjectPair, data_config: DataConfig) -> SubjectSlices:
    """Read, align, mask, normalise and slice one subject; :class:`DataError` names the file.

    With several sources each one is put on the target's grid (registered when asked),
    normalised on its own, and its slices (with their context) stacked after the previous
    source's: the contrast-major channel layout of the cache. Masking, normalising and slicing
    are :func:`~mri2mri.data.geometry.slice_volume`, which prediction runs too."""
    sources = [read_volume(path) for path in pair.source_paths]
    target = read_volume(pair.target)
    for source in sources:
        check_not_constant(source, "source")
    check_not_constant(target, "target")
    aligned, registrations = [], []
    for source in sources:
        data, registration = _onto_target(pair, source, target, data_config)
        aligned.append((data, str(source.path)))
        registrations.append(registration)
    sliced = slice_volume(aligned, target, data_config, target=(target.data, str(target.path)),
                          min_brain_fraction=data_config.min_brain_fraction)  # fmt: skip
    if sliced.slice_indices.size == 0:
        raise DataError(
            f"subject {pair.subject}: no axial slice of {pair.target} has "
            f"{data_config.min_brain_fraction:.0%} brain"
        )
    geometry = sliced.geometry
    geometry["registration"] = registrations[0]
    geometry["resampled"] = registrations[0] is not None
    geometry["brain_extraction"] = sliced.extraction
    several = len(aligned) > 1
    if several:
        geometry["source_registrations"] = registrations
    return SubjectSlices(
        record=_subject_record(pair, data_config, sliced),
        source=sliced.slices,
        target=sliced.target,
        mask=sliced.mask,
    )


def _subject_record(pair: SubjectPair, data_config: DataConfig, sliced: Sliced) -> SubjectRecord:
    """The cache's record of one prepared subject (its split is decided later, see prepare())."""
    (source_low, source_high), (target_low, target_high) = sliced.windows[0], sliced.target_window
    several = len(sliced.windows) > 1
    return SubjectRecord(
        subject=pair.subject,
        split="",  # decided once every subject is known, see prepare()
        source_file=str(pair.source),
        target_file=str(pair.target),
        slice_indices=[int(i) for i in sliced.slice_indices],
        norm={
            "source": {"low": source_low, "high": source_high},
            "target": {"low": target_low, "high": target_high},
            # Every source's own window, in channel order, when there are several.
            **({f"source:{contrast}": {"low": low, "high": high}
                for contrast, (low, high) in zip(canonical_sources(data_config.source), sliced.windows, strict=True)}
               if several else {}),
        },
        geometry=sliced.geometry,
        kind="volume",
        source_files=[str(p) for p in pair.sources],
    )


def _onto_target(pair: SubjectPair, source: Volume, target: Volume, data_config: DataConfig):
    """``(data, registration)``: one source on the target's grid, registered with --register."""
    if data_config.register:
        transform, registration = register_rigid(target, source, seed=data_config.split_seed)
        say(
            f"{pair.subject}: rigid registration of {Path(source.path).name} onto "
            f"{Path(pair.target).name}, final Mattes MI {registration['final_metric_value']:.4f}"
            f" after {registration['iterations']} iterations"
        )
        return resample_to(source, target, transform), registration
    if not same_grid(source, target):
        raise DataError(
            f"subject {pair.subject}: {source.path} ({describe_grid(source)}) is not on the grid of "
            f"{pair.target} ({describe_grid(target)}); pass --register to register and resample"
        )
    return source.data, None


# --------------------------------------------------------------------------------------------
# 5. Split, fingerprint, prepare


def split_subjects(
    subjects: list[str], val_fraction: float, test_fraction: float, seed: int
) -> dict[str, list[str]]:
    """Deterministic subject-level split; with few subjects each split that can get one does.

    Priority is train, then test, then val: 1 subject -> train; 2 -> train + test; 3 -> one each
    (when the fractions are non-zero). The same ids and seed always give the same split.
    """
    ids = sorted(set(subjects))
    count = len(ids)
    n_test = int(round(count * test_fraction))
    n_val = int(round(count * val_fraction))
    if test_fraction > 0 and count >= 2:
        n_test = max(n_test, 1)
    if val_fraction > 0 and count >= 3:
        n_val = max(n_val, 1)
    while n_test + n_val > max(count - 1, 0) and n_val > 0:
        n_val -= 1
    while n_test + n_val > max(count - 1, 0) and n_test > 0:
        n_test -= 1
    order = [ids[i] for i in np.random.default_rng(seed).permutation(count)]
    return {
        "train": sorted(order[n_test + n_val :]),
        "val": sorted(order[n_test : n_test + n_val]),
        "test": sorted(order[:n_test]),
    }


def slice_settings(data_config: DataConfig) -> dict[str, Any]:
    """The DataConfig fields that affect the cache, with contrast names made canonical."""
    settings = {name: getattr(data_config, name) for name in SLICE_FIELDS}
    sources = canonical_sources(data_config.source)
    settings["source"] = sources[0] if len(sources) == 1 else list(sources)
    settings["target"] = canonical_contrast(data_config.target)
    settings["percentiles"] = [float(p) for p in data_config.percentiles]
    return settings


def fingerprint(paths: list[Path], data_config: DataConfig) -> str:
    """Hash of every input file's path, size and mtime, plus the settings that shape slices."""
    entries = []
    for path in sorted({Path(p) for p in paths}):
        files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
        for file in files:
            stat = file.stat()
            entries.append([str(file.resolve()), stat.st_size, stat.st_mtime_ns])
    payload = {
        "version": PREPROCESS_VERSION,
        "files": entries,
        "settings": slice_settings(data_config),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode("utf-8")).hexdigest()


def prepare(
    data_path: Path | str, data_config: DataConfig, cache_dir: Path | str, *, progress: bool = True
) -> Path:
    """Make (or reuse) a slice cache at ``cache_dir`` from raw data and return its path.

    ``data_path`` is a folder of subjects (NIfTI / DICOM, any layout of
    :mod:`mri2mri.data.discovery`), a CSV manifest, or a PNG-pair root
    ``root/{train,val,test}/{T1,T2}/NAME.png``. When ``cache_dir`` already holds a cache with
    the same fingerprint (same files, sizes, mtimes and slice settings) it is reused as is.
    Bad subjects are skipped with one warning line each; :class:`DataError` only when nothing
    usable remains. A failure never leaves a half-written cache.
    """
    data_path, cache_dir = Path(data_path), Path(cache_dir)
    data_config.validate()  # a config built by hand is checked as the command line's is
    _check_cache_location(data_path, cache_dir)
    check_writable_folder(cache_dir.parent, "slice cache", target=cache_dir)
    sources = canonical_sources(data_config.source, data_config.target)
    if png.is_png_pair_root(data_path):
        return _prepare_image_pairs(data_path, data_config, cache_dir, sources, progress)
    discovery = _discover(data_path, data_config, sources)
    manifest = [data_path] if data_path.is_file() else []
    files = manifest + [p for pair in discovery.pairs for p in (*pair.source_paths, pair.target)]
    key = fingerprint(files, data_config)
    if _reusable(cache_dir, key):
        return cache_dir
    return _write_volume_cache(data_path, discovery, data_config, cache_dir, key, progress)


def _prepare_image_pairs(
    data_path: Path, data_config: DataConfig, cache_dir: Path, sources: tuple[str, ...], progress: bool
) -> Path:
    """:func:`prepare` for a PNG-pair root (:mod:`mri2mri.data.png`)."""
    if len(sources) > 1:
        raise DataError(
            f"{data_path}: PNG image pairs hold one source contrast; several sources "
            f"({', '.join(sources)}) need volumes in subject folders or a CSV manifest"
        )
    pairs = png.discover_image_pairs(data_path, data_config.source, data_config.target)
    files = [p for pair in pairs for p in (pair.source, pair.target)]
    key = fingerprint(files, data_config)
    if _reusable(cache_dir, key):
        return cache_dir
    return png.write_image_cache(pairs, data_config, cache_dir, fingerprint=key, progress=progress)


def _discover(data_path: Path, data_config: DataConfig, sources: tuple[str, ...]) -> Discovery:
    """The subjects under ``data_path``, each problem warned about; DataError when none is left."""
    discovery = discover_pairs(data_path, data_config.source, data_config.target)
    for problem in discovery.problems:
        warn(problem)
    if not discovery.pairs:
        detail = f"; first problem: {discovery.problems[0]}" if discovery.problems else ""
        raise DataError(
            f"{data_path}: no subject with {'both' if len(sources) == 1 else 'all of'} "
            f"{', '.join(sources)} and {data_config.target} images found{detail}"
        )
    return discovery


def _write_volume_cache(
    data_path: Path, discovery: Discovery, data_config: DataConfig, cache_dir: Path, key: str,
    progress: bool,
) -> Path:
    """Prepare every subject (a bad one is warned about and skipped), split, write the cache."""
    skipped = discovery.skipped  # subjects, not problem lines (one subject may have two)
    kept: list[SubjectRecord] = []
    n_slices = 0
    with cleanup_on_terminate(), CacheWriter(
        cache_dir, fingerprint=key, data_config=dataclasses.asdict(data_config)
    ) as writer:
        for pair in console.progress(discovery.pairs, desc="prepare", unit="subject", enabled=progress):
            try:
                item = prepare_subject(pair, data_config)
            except DataError as error:
                message = str(error)
                if not message.startswith(f"subject {pair.subject}"):
                    message = f"subject {pair.subject}: {message}"
                warn(f"{message}; skipped")
                skipped += 1
                continue
            writer.add(item)
            kept.append(item.record)
            n_slices += item.source.shape[0]
        if not kept:
            raise DataError(
                f"{data_path}: none of {len(discovery.pairs)} subjects could be used "
                f"(see the warnings above)"
            )
        split = split_subjects(
            [r.subject for r in kept],
            data_config.val_fraction,
            data_config.test_fraction,
            data_config.split_seed,
        )
        for record in kept:  # the writer holds these same records and writes them on commit
            record.split = next(name for name, ids in split.items() if record.subject in ids)
        path = writer.commit(split, data_config.split_seed)
    counts = ", ".join(f"{len(split[name])} {name}" for name in ("train", "val", "test"))
    say(f"prepared {len(kept)} subjects ({n_slices} slices; {counts}), skipped {skipped} -> {path}")
    return path


def ensure_cache(data_path: Path | str, data_config: DataConfig, cache_dir: Path | str) -> Path:
    """``data_path`` itself when it already is a slice cache, else :func:`prepare` into ``cache_dir``."""
    data_path = Path(data_path)
    if is_cache(data_path):
        cache = SliceCache(data_path)
        have_sources, wanted_sources = cache.sources, canonical_sources(data_config.source)
        if tuple(canonical_contrast(c) for c in have_sources) != wanted_sources:
            warn(f"{data_path}: cache was prepared with source {','.join(have_sources)}, not "
                 f"{','.join(wanted_sources)}; using it as is")  # fmt: skip
        wanted, have = canonical_contrast(data_config.target), cache.meta.get("data_config", {}).get("target")
        if have and canonical_contrast(have) != wanted:
            warn(f"{data_path}: cache was prepared with target {have}, not {wanted}; using it as is")
        return data_path
    return prepare(data_path, data_config, cache_dir)


def _reusable(cache_dir: Path, key: str) -> bool:
    if not is_cache(cache_dir):
        return False
    try:
        same = SliceCache(cache_dir).fingerprint == key
    except DataError:
        return False
    if same:
        say(
            f"reusing the slice cache at {cache_dir}: inputs and settings unchanged (fingerprint {key[:12]})"
        )
    return same


def _check_cache_location(data_path: Path, cache_dir: Path) -> None:
    """Never let writing the cache delete the inputs or an unrelated folder."""
    data, cache = data_path.resolve(), cache_dir.resolve()
    if data == cache or cache in data.parents:
        raise DataError(
            f"{cache_dir}: the cache folder would contain the input data {data_path}; choose another"
        )
    if cache.exists() and not is_cache(cache) and (cache.is_file() or any(cache.iterdir())):
        raise DataError(f"{cache_dir}: exists and is not a slice cache; refusing to overwrite it")
