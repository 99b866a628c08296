"""Checkpoints: dicts of state_dicts plus config and progress, written atomically, checksummed.

A checkpoint is never a pickled module: it is a plain dict of tensors, numbers and strings,
loaded with ``torch.load(weights_only=True)``, which refuses to unpickle anything else, so a
checkpoint downloaded from a stranger cannot run code.

Writing goes to a temporary file in the same folder, is flushed to disk, and renamed over the
old file; the previous checkpoint is kept as ``*_prev.pth`` so that a file damaged later (a
truncated copy, a bad disk) still leaves a good one to fall back to. A SHA-256 digest of every
tensor and value is stored inside the checkpoint and verified on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from mri2mri import atomic
from mri2mri.errors import UserError, first_line

CHECKSUM_KEY = "sha256"


class CheckpointError(UserError):
    """A checkpoint file is missing, truncated, corrupt or unsafe."""


def _digest(payload: Mapping[str, Any]) -> str:
    """SHA-256 over the payload's tensors (raw bytes) and other values (JSON), in key order."""
    hasher = hashlib.sha256()

    def feed(key: str, value: Any) -> None:
        hasher.update(key.encode())
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous().reshape(-1)
            hasher.update(str(value.dtype).encode() + str(tuple(value.shape)).encode())
            hasher.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
        elif isinstance(value, Mapping):
            for sub_key in sorted(value, key=str):
                feed(f"{key}.{sub_key}", value[sub_key])
        elif isinstance(value, list | tuple):
            for index, item in enumerate(value):
                feed(f"{key}[{index}]", item)
        else:
            hasher.update(json.dumps(value, sort_keys=True, default=str).encode())

    for key in sorted(payload):
        if key != CHECKSUM_KEY:
            feed(key, payload[key])
    return hasher.hexdigest()


# The networks' weights: a checkpoint never holds a NaN or an infinity in any of them.
WEIGHT_KEYS = ("G", "D", "ema")


def save_checkpoint(path: Path, payload: dict[str, Any], *, keep_previous: bool = True) -> None:
    """Write ``payload`` (with its checksum) atomically; the old file becomes ``*_prev.pth``.

    Non-finite weights are refused (CheckpointError) before anything is written: a diverged
    network must not replace the last good checkpoint, nor become the best one.
    """
    path = Path(path)
    for key in WEIGHT_KEYS:
        bad = _non_finite_tensor(payload.get(key))
        if bad is not None:
            raise CheckpointError(
                f"{path}: not written: {key} weight {bad} is NaN or infinite (training diverged; "
                "learning rate too high?); the previous checkpoint is intact"
            )
    body = dict(payload)
    body[CHECKSUM_KEY] = _digest(body)
    buffer = io.BytesIO()
    torch.save(body, buffer)
    if keep_previous and path.exists():
        # Link first, so that the current file stays in place until the new one replaces it.
        previous = previous_path(path)
        tmp_link = previous.with_name(previous.name + ".tmp")
        with contextlib.suppress(OSError):
            os.unlink(tmp_link)
        os.link(path, tmp_link)
        os.replace(tmp_link, previous)
    atomic.write_bytes(path, buffer.getvalue())


def _non_finite_tensor(weights: Any) -> str | None:
    """The name of the first floating-point tensor of a state_dict holding a NaN or an infinity."""
    if not isinstance(weights, Mapping):
        return None
    for name, value in weights.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point() and not bool(torch.isfinite(value).all()):
            return str(name)
    return None


def previous_path(path: Path) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}_prev{path.suffix}")


def has_checkpoint(path: Path) -> bool:
    """Whether ``path`` or the previous checkpoint kept beside it exists (what resuming needs)."""
    return Path(path).is_file() or previous_path(path).is_file()


def load_checkpoint(path: Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load and verify one checkpoint file; every failure is a one-line ``CheckpointError``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint not found")
    if not _looks_like_torch_file(path):
        raise CheckpointError(f"{path}: not a checkpoint (not a file saved by PyTorch)")
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:
        reason = first_line(error)
        if "weights_only" in str(error) or "Unsupported global" in str(error):
            raise CheckpointError(
                f"{path}: refused to load: the file contains Python objects other than tensors "
                f"and plain values, which could run code ({reason[:160]})"
            ) from None
        raise CheckpointError(f"{path}: unreadable or truncated checkpoint ({reason[:160]})") from None
    if not isinstance(payload, dict) or "G" not in payload:
        raise CheckpointError(f"{path}: not an mri2mri checkpoint (no generator weights)")
    stored = payload.get(CHECKSUM_KEY)
    if stored is None:
        warnings.warn(f"{path}: checkpoint has no checksum; cannot verify its integrity", stacklevel=2)
    elif stored != _digest(payload):
        raise CheckpointError(f"{path}: checksum mismatch, the checkpoint is corrupt")
    return payload


def _looks_like_torch_file(path: Path) -> bool:
    """A zip archive (torch.save's format since 1.6) or a pickle stream (the legacy format);
    anything else is not a checkpoint, and must not be reported as unsafe code."""
    with open(path, "rb") as handle:
        head = handle.read(4)
    if head == b"PK\x03\x04":  # a zip archive, maybe truncated: torch.load says which
        return True
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5  # pickle PROTO opcode


def load_latest(path: Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, Any], Path]:
    """Load ``path`` or, when it is damaged or missing, the previous good checkpoint beside it."""
    path = Path(path)
    try:
        return load_checkpoint(path, map_location), path
    except CheckpointError as error:
        previous = previous_path(path)
        if not previous.is_file():
            raise
        warnings.warn(f"{error}; falling back to {previous.name}", stacklevel=2)
        return load_checkpoint(previous, map_location), previous
