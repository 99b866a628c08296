"""2D images (PNG, TIFF): the reader of paired training images and 2D prediction inputs, and the
16-bit writer of 2D predictions."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from mri2mri.atomic import save_atomically
from mri2mri.errors import DataError, first_line


class ImageWarning(UserWarning):
    """An input was usable but needed a silent-looking fix (for example RGB turned gray)."""


def read_image_2d(path: Path | str) -> np.ndarray:
    """Read a PNG or TIFF (8- or 16-bit, or float) as a float32 2D array in its own units.

    RGB or RGBA images are converted to gray (ITU-R 601 luma) with an :class:`ImageWarning`.
    Raises :class:`DataError` naming the file for empty, unreadable or multi-page files.
    """
    from PIL import Image

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise DataError(f"{path}: empty file")
    try:
        with Image.open(path) as image:
            if getattr(image, "n_frames", 1) > 1:
                raise DataError(f"{path}: multi-page image; give volumes as NIfTI or DICOM")
            image.load()
            mode = image.mode
            if mode in ("RGB", "RGBA", "P", "LA", "CMYK", "YCbCr"):
                warnings.warn(f"{path}: {mode} image converted to gray", ImageWarning, stacklevel=2)
                array = np.asarray(image.convert("RGB"), dtype=np.float32)
                array = array @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
            else:
                array = np.asarray(image)
    except DataError:
        raise
    except Exception as error:  # a damaged file can fail anywhere inside Pillow's decoders
        raise DataError(f"{path}: unreadable image ({first_line(error)})") from None
    array = np.asarray(array)
    if array.dtype.byteorder == ">":  # 16-bit big-endian PNG modes
        array = array.astype(array.dtype.newbyteorder("="))
    array = array.astype(np.float32)
    if array.ndim != 2 or array.size == 0:
        raise DataError(f"{path}: image of shape {array.shape}; expected a 2D grayscale image")
    if not np.isfinite(array).all():
        raise DataError(f"{path}: NaN or infinite pixels")
    return array


def write_image_16bit(path: Path, image01: np.ndarray, *, overwrite: bool = True) -> Path:
    """A 16-bit grayscale PNG or TIFF of an image in [0, 1] (0..65535), atomically."""
    from PIL import Image

    values = np.round(np.clip(image01, 0.0, 1.0) * 65535.0).astype(np.uint16)
    path = Path(path)
    image_format = "PNG" if path.suffix.lower() == ".png" else "TIFF"
    return save_atomically(
        path, lambda tmp: Image.fromarray(values).save(tmp, format=image_format), suffix=path.suffix,
        replace=overwrite,
    )
