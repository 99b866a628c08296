"""The embedded default dataset: physics-simulated T1-, T2- and PD-weighted brain volumes.

``mri2mri demo`` needs data that nobody has to download, so we simulate it from the real
anatomy that ships inside nilearn's wheel: the MNI ICBM152 2009c (nonlinear, symmetric) grey- and
white-matter probability maps and the T1 template, whose non-zero voxels give the brain mask.
CSF is what remains of the brain once grey and white matter are taken away (ventricles,
sulci, cisterns), plus a 2 mm shell of subarachnoid CSF around the brain surface.

Each subject is one anatomy seen by three spin-echo sequences,

    S = PD * (1 - exp(-TR / T1)) * exp(-TE / T2)

evaluated per tissue and mixed by partial volume. Subjects differ so that the T1 -> T2 mapping
is not a lookup table:

* a small random affine (rotation, scaling) and a smooth random displacement field of a few mm;
* per-subject relaxation times (a few per cent per tissue) with smooth spatial variation;
* a smooth multiplicative bias field (receive-coil sensitivity), mostly shared by the contrasts;
* Rician noise (magnitude of complex Gaussian noise);
* in some subjects a small ellipsoidal lesion with long T2 that T1 only barely shows.

Everything outside the head (brain) mask is exactly zero, as in skull-stripped data.
"""

from __future__ import annotations

import functools
import importlib.resources
import json
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from mri2mri.errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------
# Physics


@dataclass(frozen=True)
class Tissue:
    """Relaxation times (ms) and relative proton density of one tissue at 1.5 T."""

    t1_ms: float
    t2_ms: float
    proton_density: float


# Relaxation parameters at 1.5 T. GM/WM proton densities are those of the BrainWeb simulator
# (Kwan, Evans & Pike 1999, IEEE TMI 18(11):1085; Collins et al. 1998, IEEE TMI 17(3):463).
# T1/T2 are chosen inside the range of published in-vivo values: WM T1 560-790 ms, T2 70-80 ms;
# GM T1 830-1300 ms, T2 100-110 ms (the upper ends are the 3 T values of Wansapura et al. 1999,
# JMRI 9(4):531); free CSF T1 2500-4000+ ms, T2 1400-2000 ms. The lesion is illustrative
# (oedema / demyelination-like: long T2, moderately long T1), not a literature value.
TISSUES: dict[str, Tissue] = {
    "wm": Tissue(t1_ms=700.0, t2_ms=75.0, proton_density=0.77),
    "gm": Tissue(t1_ms=1050.0, t2_ms=100.0, proton_density=0.86),
    "csf": Tissue(t1_ms=3500.0, t2_ms=1800.0, proton_density=1.0),
    "lesion": Tissue(t1_ms=1200.0, t2_ms=250.0, proton_density=0.88),
}


@dataclass(frozen=True)
class SpinEcho:
    """Repetition and echo time (ms) of a spin-echo sequence."""

    tr_ms: float
    te_ms: float


SEQUENCES: dict[str, SpinEcho] = {
    "T1": SpinEcho(tr_ms=500.0, te_ms=15.0),  # short TR, short TE: T1-weighted
    "T2": SpinEcho(tr_ms=4000.0, te_ms=100.0),  # long TR, long TE: T2-weighted
    "PD": SpinEcho(tr_ms=4000.0, te_ms=15.0),  # long TR, short TE: proton-density-weighted
}


def spin_echo_signal(
    proton_density: np.ndarray | float,
    t1_ms: np.ndarray | float,
    t2_ms: np.ndarray | float,
    sequence: SpinEcho,
) -> np.ndarray:
    """S = PD (1 - exp(-TR/T1)) exp(-TE/T2), the spin-echo signal for TR >> TE."""
    return (
        np.asarray(proton_density)
        * (1.0 - np.exp(-sequence.tr_ms / np.asarray(t1_ms)))
        * np.exp(-sequence.te_ms / np.asarray(t2_ms))
    )


# ---------------------------------------------------------------------------------------------
# Anatomy

_TEMPLATE = "mni_icbm152_{}_tal_nlin_sym_09a_converted.nii.gz"
# Margin (mm) kept around the brain so that deformations never push it out of the grid.
_MARGIN_MM = 8
_CSF_SHELL_MM = 2


@dataclass(frozen=True)
class Anatomy:
    """Tissue fractions on a 1 mm grid cropped around the brain, and that grid's affine."""

    gm: np.ndarray
    wm: np.ndarray
    brain: np.ndarray
    affine: np.ndarray


def _template_path(kind: str) -> Path:
    folder = importlib.resources.files("nilearn") / "datasets" / "data"
    path = Path(str(folder / _TEMPLATE.format(kind)))
    if not path.is_file():
        raise DataError(f"{path}: MNI ICBM152 template missing from the nilearn installation")
    return path


@functools.lru_cache(maxsize=1)
def load_anatomy() -> Anatomy:
    """The ICBM152 2009 GM/WM maps and brain mask from nilearn's package folder (no download)."""
    images = {kind: nib.load(_template_path(kind)) for kind in ("gm", "wm", "t1")}
    gm = np.asarray(images["gm"].dataobj, dtype=np.float32) / 255.0
    wm = np.asarray(images["wm"].dataobj, dtype=np.float32) / 255.0
    brain = ndimage.binary_fill_holes(np.asarray(images["t1"].dataobj) > 0)
    # The template is cut at the brain surface; a thin shell of subarachnoid CSF around it
    # gives T2 images their bright rim.
    brain = ndimage.binary_dilation(brain, iterations=_CSF_SHELL_MM)
    # Fractions are only meaningful inside the brain, and must not exceed one voxel in total.
    gm *= brain
    wm *= brain
    total = gm + wm
    over = total > 1.0
    gm[over] /= total[over]
    wm[over] /= total[over]
    low = np.maximum(np.argwhere(brain).min(axis=0) - _MARGIN_MM, 0)
    high = np.minimum(np.argwhere(brain).max(axis=0) + 1 + _MARGIN_MM, brain.shape)
    crop = tuple(slice(a, b) for a, b in zip(low, high, strict=True))
    affine = images["t1"].affine.copy()
    affine[:3, 3] = affine[:3, :3] @ low + affine[:3, 3]
    return Anatomy(gm=gm[crop], wm=wm[crop], brain=brain[crop].astype(np.float32), affine=affine)


@functools.lru_cache(maxsize=4)
def _prefiltered(voxel_size: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """GM, WM, brain maps low-passed for sampling at ``voxel_size`` mm (avoids aliasing)."""
    anatomy = load_anatomy()
    sigma = 0.4 * voxel_size if voxel_size > 1.0 else 0.0
    return tuple(  # type: ignore[return-value]
        ndimage.gaussian_filter(volume, sigma) if sigma else volume
        for volume in (anatomy.gm, anatomy.wm, anatomy.brain)
    )


# ---------------------------------------------------------------------------------------------
# Random smooth fields


@functools.lru_cache(maxsize=32)
def _cubic_upsampling(size: int, nodes: int) -> np.ndarray:
    """(size, nodes) matrix doing what ``ndimage.zoom(order=3)`` does along one axis."""
    matrix = ndimage.zoom(np.eye(nodes), (size / nodes, 1.0), order=3, mode="nearest")
    return matrix[:size]


def smooth_field(rng: np.random.Generator, shape: tuple[int, ...], nodes: int = 4) -> np.ndarray:
    """A smooth random field in [-1, 1]: Gaussian values on a coarse grid, cubic-interpolated.

    The cubic B-spline zoom is separable, so it is applied one axis at a time as a small matrix
    product: the same field as a 3D ``ndimage.zoom``, about twenty times faster.
    """
    field = rng.standard_normal((nodes,) * len(shape))
    for axis, size in enumerate(shape):
        field = np.moveaxis(np.tensordot(_cubic_upsampling(size, nodes), field, axes=(1, axis)),
                            0, axis)
    return (field / max(float(np.abs(field).max()), 1e-6)).astype(np.float32)


def _rotation(angles_rad: np.ndarray) -> np.ndarray:
    cx, cy, cz = np.cos(angles_rad)
    sx, sy, sz = np.sin(angles_rad)
    rx = np.array([[1, 0, 0], [0, cx, -sx], [0, sx, cx]])
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rz = np.array([[cz, -sz, 0], [sz, cz, 0], [0, 0, 1]])
    return rz @ ry @ rx


def _ellipsoid(
    rng: np.random.Generator, candidates: np.ndarray, shape: tuple[int, ...], voxel_size: float
) -> np.ndarray:
    """A soft-edged ellipsoid (fraction in [0, 1]) centred on a random candidate voxel."""
    centre = candidates[rng.integers(len(candidates))]
    semi_axes_vox = rng.uniform(3.0, 8.0, size=3) / voxel_size  # 3-8 mm semi-axes
    grid = np.indices(shape, dtype=np.float32)
    radius = np.sqrt(sum(((grid[i] - centre[i]) / semi_axes_vox[i]) ** 2 for i in range(3)))
    return np.clip((1.15 - radius) / 0.3, 0.0, 1.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# One subject


@dataclass
class PhantomSubject:
    """One simulated subject: images per contrast, true tissue fractions, mask and affine."""

    images: dict[str, np.ndarray]
    fractions: dict[str, np.ndarray]
    mask: np.ndarray
    affine: np.ndarray
    has_lesion: bool


def simulate_subject(
    rng: np.random.Generator,
    *,
    voxel_size: float = 2.0,
    noise: float = 0.02,
    deformation_mm: float = 3.0,
    lesion_probability: float = 0.5,
    contrasts: tuple[str, ...] = ("T1", "T2", "PD"),
) -> PhantomSubject:
    """Simulate one subject; all randomness comes from ``rng``.

    ``noise`` is the Rician noise level as a fraction of each contrast's bright-brain intensity
    (99th percentile); ``deformation_mm`` the largest displacement of the smooth warp.
    The steps draw from ``rng`` in a fixed order (anatomy, lesion, tissue, then each contrast),
    so one seed always gives one subject.
    """
    anatomy = load_anatomy()
    # Output grid: voxel_size mm voxels covering the cropped template.
    shape = tuple(int(np.ceil(s / voxel_size)) for s in anatomy.brain.shape)
    offset = (voxel_size - 1.0) / 2.0  # output voxel centre in template voxel units
    coords = _warped_grid(rng, anatomy, shape, voxel_size, offset, deformation_mm)
    fractions, mask, has_lesion = _tissue_fractions(rng, coords, shape, voxel_size, lesion_probability)
    tissue = _subject_tissue(rng, shape)
    images = {contrast: _acquire(rng, SEQUENCES[contrast], fractions, tissue, mask, noise)
              for contrast in contrasts}  # fmt: skip
    affine = anatomy.affine @ np.array([
        [voxel_size, 0, 0, offset], [0, voxel_size, 0, offset], [0, 0, voxel_size, offset],
        [0, 0, 0, 1],
    ])
    return PhantomSubject(images=images, fractions=fractions, mask=mask, affine=affine,
                          has_lesion=has_lesion)


def _warped_grid(
    rng: np.random.Generator, anatomy: Anatomy, shape: tuple[int, ...], voxel_size: float,
    offset: float, deformation_mm: float,
) -> np.ndarray:
    """(3, N) template coordinates of the output voxels: a small random affine about the brain
    centre, then a smooth random warp of at most ``deformation_mm``."""
    grid = np.indices(shape, dtype=np.float32).reshape(3, -1) * voxel_size + offset  # (3, N)
    centre = (np.asarray(anatomy.brain.shape, dtype=np.float32) - 1.0) / 2.0
    linear = _rotation(np.deg2rad(rng.uniform(-4.0, 4.0, size=3))) * rng.uniform(0.95, 1.05)
    coords = linear @ (grid - centre[:, None]) + centre[:, None]
    for axis in range(3):
        coords[axis] += deformation_mm * smooth_field(rng, shape, nodes=5).ravel()
    return coords


def _tissue_fractions(
    rng: np.random.Generator, coords: np.ndarray, shape: tuple[int, ...], voxel_size: float,
    lesion_probability: float,
) -> tuple[dict[str, np.ndarray], np.ndarray, bool]:
    """``(fractions, mask, has_lesion)``: the template's tissue maps sampled at ``coords``, CSF
    as what remains of the brain, and (with ``lesion_probability``) a lesion in deep white matter."""
    gm_map, wm_map, brain_map = _prefiltered(voxel_size)

    def sample(volume: np.ndarray) -> np.ndarray:
        values = ndimage.map_coordinates(volume, coords, order=1, mode="constant", cval=0.0)
        return np.clip(values, 0.0, 1.0).reshape(shape).astype(np.float32)

    brain = sample(brain_map)
    gm = np.minimum(sample(gm_map), brain)
    wm = np.minimum(sample(wm_map), brain - gm)
    mask = brain > 0.05

    has_lesion = bool(rng.random() < lesion_probability)
    lesion = np.zeros(shape, np.float32)
    if has_lesion:
        deep_white = np.argwhere(wm > 0.9)
        if len(deep_white):
            # The lesion replaces parenchyma, not CSF.
            lesion = _ellipsoid(rng, deep_white, shape, voxel_size) * (gm + wm)
            shrink = 1.0 - lesion / np.maximum(gm + wm, 1e-6)
            gm, wm = gm * shrink, wm * shrink
    csf = np.clip(brain - gm - wm - lesion, 0.0, 1.0)
    return {"wm": wm, "gm": gm, "csf": csf, "lesion": lesion}, mask, has_lesion


@dataclass(frozen=True)
class _SubjectTissue:
    """One subject's tissue parameters, their smooth variation across the brain, and its coil."""

    params: dict[str, Tissue]
    t1_variation: np.ndarray
    t2_variation: np.ndarray
    coil_bias: np.ndarray


def _subject_tissue(rng: np.random.Generator, shape: tuple[int, ...]) -> _SubjectTissue:
    """This subject's tissue parameters (a few per cent per tissue) and their smooth variation
    across the brain (a few per cent), so intensity is not a function of tissue class alone."""
    params = {
        name: Tissue(
            t1_ms=tissue.t1_ms * (1.0 + 0.03 * rng.standard_normal()),
            t2_ms=tissue.t2_ms * (1.0 + 0.03 * rng.standard_normal()),
            proton_density=tissue.proton_density * (1.0 + 0.02 * rng.standard_normal()),
        )
        for name, tissue in TISSUES.items()
    }
    t1_variation = 1.0 + 0.04 * smooth_field(rng, shape)
    t2_variation = 1.0 + 0.04 * smooth_field(rng, shape)
    coil_bias = np.exp(0.12 * smooth_field(rng, shape, nodes=3))
    return _SubjectTissue(params, t1_variation, t2_variation, coil_bias)


def _acquire(
    rng: np.random.Generator, sequence: SpinEcho, fractions: dict[str, np.ndarray],
    tissue: _SubjectTissue, mask: np.ndarray, noise: float,
) -> np.ndarray:
    """One contrast: the spin-echo signal mixed by partial volume, the coil's bias, Rician noise."""
    shape = mask.shape
    signal = np.zeros(shape, np.float32)
    for name, fraction in fractions.items():
        params = tissue.params[name]
        signal += fraction * spin_echo_signal(
            params.proton_density, params.t1_ms * tissue.t1_variation, params.t2_ms * tissue.t2_variation,
            sequence,
        )
    # Mostly the coil's sensitivity (shared), plus a little per sequence.
    signal *= tissue.coil_bias * np.exp(0.03 * smooth_field(rng, shape, nodes=3))
    sigma = noise * float(np.percentile(signal[mask], 99)) if mask.any() else 0.0
    real = signal + sigma * rng.standard_normal(shape, dtype=np.float32)
    imaginary = sigma * rng.standard_normal(shape, dtype=np.float32)
    magnitude = np.sqrt(real**2 + imaginary**2)  # Rician
    return np.where(mask, magnitude * 1000.0, 0.0).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# The dataset on disk


def write_phantom(
    out_dir: str | Path,
    n_subjects: int = 8,
    seed: int = 0,
    *,
    voxel_size: float = 2.0,
    noise: float = 0.02,
    deformation_mm: float = 3.0,
    lesion_probability: float = 0.5,
    contrasts: tuple[str, ...] = ("T1", "T2", "PD"),
) -> list[Path]:
    """Write ``n_subjects`` simulated subjects as ``out_dir/sub-XX/{T1,T2,PD}.nii.gz``.

    Volumes are float32 in RAS orientation on a ``voxel_size`` mm grid (MNI coordinates).
    Subject ``k`` depends only on ``(seed, k)``, so asking for more subjects keeps the first
    ones unchanged. ``out_dir/phantom.json`` records the parameters and which subjects have a
    lesion. Returns the subject folders.
    """
    if n_subjects < 1:
        raise ConfigError(f"n_subjects must be at least 1, got {n_subjects}")
    if not 0.5 <= voxel_size <= 8.0:
        raise ConfigError(f"voxel_size must be between 0.5 and 8 mm, got {voxel_size}")
    if noise < 0 or deformation_mm < 0 or not 0.0 <= lesion_probability <= 1.0:
        raise ConfigError("noise and deformation_mm must be >= 0, lesion_probability in [0, 1]")
    unknown = [name for name in contrasts if name not in SEQUENCES]
    if unknown or not contrasts:
        raise ConfigError(f"unknown contrast(s) {unknown}; valid contrasts: {', '.join(SEQUENCES)}")

    out = Path(out_dir)
    width = max(2, len(str(n_subjects)))
    folders: list[Path] = []
    lesions: dict[str, bool] = {}
    for index in range(n_subjects):
        subject = simulate_subject(
            np.random.default_rng([seed, index]), voxel_size=voxel_size, noise=noise,
            deformation_mm=deformation_mm, lesion_probability=lesion_probability,
            contrasts=tuple(contrasts),
        )
        folder = out / f"sub-{index + 1:0{width}d}"
        folder.mkdir(parents=True, exist_ok=True)
        for contrast, volume in subject.images.items():
            image = nib.Nifti1Image(volume, subject.affine)
            image.header.set_xyzt_units("mm")
            image.set_qform(subject.affine, code=1)
            image.set_sform(subject.affine, code=1)
            nib.save(image, folder / f"{contrast}.nii.gz")
        folders.append(folder)
        lesions[folder.name] = subject.has_lesion
    description = {
        "generator": "mri2mri.data.phantom",
        "anatomy": "MNI ICBM152 2009c nonlinear symmetric GM/WM maps (nilearn)",
        "seed": seed, "n_subjects": n_subjects, "voxel_size_mm": voxel_size, "noise": noise,
        "deformation_mm": deformation_mm, "lesion_probability": lesion_probability,
        "tissues": {name: asdict(tissue) for name, tissue in TISSUES.items()},
        "sequences": {name: asdict(sequence) for name, sequence in SEQUENCES.items()
                      if name in contrasts},
        "has_lesion": lesions,
    }
    (out / "phantom.json").write_text(json.dumps(description, indent=2) + "\n", encoding="utf-8")
    return folders
