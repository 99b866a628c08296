"""Writing a file whole: a reader sees the old file or the new one, never half of either.

Every file the program writes (checkpoints, run-folder JSON and CSV, volumes, exported models)
goes through :func:`save_atomically`: the content is written to a temporary file beside the
target, flushed to disk, given the permissions an ordinary write would give it, and renamed into
place; the folder is then synced so the rename itself survives a power cut.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mri2mri.errors import DataError


def default_file_mode() -> int:
    """The permissions an ordinary ``open(path, "w")`` would give a new file (0o666 less the
    umask); temporary files start at 0o600 and must be widened to this before the rename."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_atomically(path: Path | str, save: Callable[[str], Any], *, suffix: str = ".tmp",
                    replace: bool = True) -> Path:
    """Call ``save(tmp_name)`` on a temporary file beside ``path``, then rename it into place.

    ``suffix`` is the temporary file's ending, for writers that choose the format by it
    (``.nii.gz``, ``.png``). With ``replace=False`` the file is linked into place only if ``path``
    does not exist at that moment (an atomic create-exclusive): of two runs writing one output,
    the second is refused instead of both saying "wrote".
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(handle)
    try:
        save(tmp_name)
        with open(tmp_name, "rb+") as written:
            os.fsync(written.fileno())
        os.chmod(tmp_name, default_file_mode())  # mkstemp's 0600 is for the temporary file only
        if replace:
            os.replace(tmp_name, path)
        else:
            try:
                os.link(tmp_name, path)
            except FileExistsError:
                raise DataError(f"{path}: was created by another process meanwhile; pass --overwrite to replace it") from None
    finally:
        Path(tmp_name).unlink(missing_ok=True)
    fsync_folder(path.parent)
    return path


def write_bytes(path: Path | str, data: bytes) -> Path:
    """``data`` written whole to ``path``."""
    return save_atomically(path, lambda tmp: Path(tmp).write_bytes(data))


def write_text(path: Path | str, text: str) -> Path:
    """UTF-8 text written whole to ``path``."""
    return write_bytes(path, text.encode("utf-8"))


def write_json(path: Path | str, payload: Any) -> Path:
    """``payload`` as indented UTF-8 JSON (non-ASCII kept readable), written whole."""
    return write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


def fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (POSIX); harmless where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: Path | str) -> str:
    """SHA-256 of a file, streamed (checkpoints can be hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
