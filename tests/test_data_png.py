"""Paired PNG/TIFF folders root/{train,val,test}/{T1,T2}/NAME.png into a slice cache."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mri2mri.config import DataConfig
from mri2mri.data.cache import SliceCache
from mri2mri.data.geometry import slices_to_volume
from mri2mri.data.io import ImageWarning
from mri2mri.data.png import discover_image_pairs, is_png_pair_root
from mri2mri.data.preprocess import prepare
from mri2mri.errors import DataError


def disc(size=(40, 48), value=1000, bits=16) -> np.ndarray:
    rows, cols = np.mgrid[: size[0], : size[1]]
    inside = (rows - size[0] / 2) ** 2 + (cols - size[1] / 2) ** 2 < (min(size) / 2.5) ** 2
    image = np.where(inside, value * (0.5 + 0.5 * cols / size[1]), 0)
    return image.astype(np.uint16 if bits == 16 else np.uint8)


def write_pairs(root: Path, layout: dict[str, list[str]], source_dir="T1", target_dir="T2") -> None:
    for split, names in layout.items():
        for name in names:
            for folder, value, bits in ((source_dir, 40000, 16), (target_dir, 200, 8)):
                path = root / split / folder / f"{name}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(disc(value=value, bits=bits)).save(path)


def cfg(**changes) -> DataConfig:
    return DataConfig(**{"image_size": 32, **changes})


def test_png_pairs_become_image_subjects_with_the_folder_split(tmp_path):
    write_pairs(
        tmp_path / "pngs", {"train": ["a", "b", "c"], "val": ["a"], "test": ["d"]}, "t1", "T2w"
    )
    assert is_png_pair_root(tmp_path / "pngs")
    path = prepare(tmp_path / "pngs", cfg(context_slices=1), tmp_path / "cache", progress=False)
    cache = SliceCache(path)
    assert cache.split == {
        "train": ["train_a", "train_b", "train_c"],
        "val": ["val_a"],
        "test": ["test_d"],
    }
    assert cache.source.shape == (5, 3, 32, 32) and cache.target.shape == (5, 1, 32, 32)
    record = cache.record("train_a")
    assert record.kind == "image" and record.geometry["kind"] == "image"
    assert record.geometry["plane_shape"] == [40, 48] and record.geometry["pad"] == [[4, 4], [0, 0]]
    assert (
        record.norm["source"]["high"] > 10_000 and record.norm["target"]["high"] < 256
    )  # 16 and 8 bit
    assert cache.source.min() >= 0.0 and cache.source.max() <= 1.0
    # Zero background: the mask is the non-zero disc, not the whole image.
    assert 0.2 < float(np.asarray(cache.mask[0]).mean()) < 0.8
    # The three context channels of an image are the same image.
    np.testing.assert_array_equal(cache.source[0, 0], cache.source[0, 2])
    # The geometry undoes pad and resize back to the image's own size.
    back = slices_to_volume(
        np.asarray(cache.target[:1]),
        {**record.geometry, "canonical_shape": [48, 40, 1], "original_affine": np.eye(4).tolist()},
        [0],
        original=False,
    )
    assert back.shape == (48, 40, 1)


def test_png_mask_is_all_ones_without_zero_background(tmp_path):
    write_pairs(tmp_path / "pngs", {"train": ["a"]})
    for folder in ("T1", "T2"):
        path = tmp_path / "pngs/train" / folder / "a.png"
        Image.fromarray((np.asarray(Image.open(path)).astype(np.int64) + 5).astype(np.uint16)).save(
            path
        )
    cache = SliceCache(prepare(tmp_path / "pngs", cfg(), tmp_path / "cache", progress=False))
    mask = np.asarray(cache.mask[0, 0])
    # All ones on the image; only the rows added to make it square are outside (40 of 48 rows).
    assert (
        mask[4:28].all() and not mask[0].any() and mask.mean() == pytest.approx(40 / 48, abs=0.05)
    )


def test_rgb_png_is_converted_with_a_warning(tmp_path):
    write_pairs(tmp_path / "pngs", {"test": ["a"]})
    path = tmp_path / "pngs/test/T2/a.png"
    gray = np.asarray(Image.open(path))
    Image.fromarray(np.stack([gray] * 3, -1)).save(path)
    with pytest.warns(ImageWarning, match="a.png: RGB image converted to gray"):
        prepare(tmp_path / "pngs", cfg(), tmp_path / "cache", progress=False)


@pytest.mark.parametrize("problem", ["partner", "size", "empty", "unreadable", "folder"])
def test_broken_pairs_raise_one_data_error_naming_the_file(tmp_path, problem):
    root = tmp_path / "pngs"
    write_pairs(root, {"train": ["a", "b"]})
    if problem == "partner":
        (root / "train/T2/b.png").unlink()
        expected = r"T1/b.png: no partner named b"
    elif problem == "size":
        Image.fromarray(disc(size=(20, 20))).save(root / "train/T2/b.png")
        expected = r"T2/b.png: size 20x20 differs"
    elif problem == "empty":
        (root / "train/T1/a.png").write_bytes(b"")
        expected = r"T1/a.png: empty file"
    elif problem == "unreadable":
        (root / "train/T2/a.png").write_bytes(b"garbage bytes")
        expected = r"T2/a.png: unreadable image"
    else:
        (root / "train/T2/a.png").unlink()
        (root / "train/T2/b.png").unlink()
        (root / "train/T2").rmdir()
        (root / "train/PD").mkdir()
        Image.fromarray(disc()).save(root / "train/PD/a.png")
        expected = r"train: no T2 folder"
    with pytest.raises(DataError, match=expected):
        prepare(root, cfg(), tmp_path / "cache", progress=False)
    assert not (tmp_path / "cache").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["pngs"]  # no temporary cache left behind


def test_png_pairs_for_other_contrasts_and_no_pairs(tmp_path):
    write_pairs(tmp_path / "pngs", {"train": ["x"]}, "PD", "flair")
    pairs = discover_image_pairs(tmp_path / "pngs", "pd", "FLAIR")
    assert [(p.subject, p.source.parent.name, p.target.parent.name) for p in pairs] == [
        ("train_x", "PD", "flair")
    ]
    with pytest.raises(DataError, match="no T1/T2 image pairs"):
        discover_image_pairs(tmp_path / "pngs", "T1", "T2")
