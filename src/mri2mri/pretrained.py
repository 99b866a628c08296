"""Ready-made models: trained weights shipped inside the package, found by name.

``mri2mri predict t1-to-t2 INPUT OUTPUT`` works where a checkpoint path works (volumes, DICOM,
BIDS, batches, ``--uncertainty``, ``mri2mri export``): :func:`resolve_model` turns a model's name
into the path of its weights file, after checking the file's SHA-256 against the manifest, and
passes any other value through as a path. A file or folder of that name in the working
directory wins over a ready-made model, as a path always does.

The weights live in ``mri2mri/weights/`` with ``manifest.json``, which lists for each model its
file, checksum, contrasts, training data and budget, the scores of its recipe under
cross-validation by site and the command that made each of them, and its model card
(``<name>_MODEL_CARD.md``). Nothing is downloaded: the files are package data, loaded offline
with ``weights_only=True`` like every checkpoint (:func:`mri2mri.checkpoint.load_checkpoint`).
``scripts/ready_models.py`` rebuilds them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mri2mri.atomic import file_sha256
from mri2mri.errors import DataError, UserError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"
MANIFEST = WEIGHTS_DIR / "manifest.json"  # read through WEIGHTS_DIR at each call (tests move it)


@dataclass(frozen=True)
class ReadyModel:
    """One entry of the manifest."""

    name: str
    file: str
    sha256: str
    sources: tuple[str, ...]
    target: str
    entry: dict[str, Any]  # the whole manifest entry: training data, scores, commands

    @property
    def path(self) -> Path:
        return WEIGHTS_DIR / self.file

    @property
    def card(self) -> Path:
        return WEIGHTS_DIR / f"{self.name}_MODEL_CARD.md"


def ready_models() -> dict[str, ReadyModel]:
    """Name -> model, in the manifest's order; empty when the package ships none."""
    manifest = WEIGHTS_DIR / MANIFEST.name
    if not manifest.is_file():
        return {}
    try:
        entries = json.loads(manifest.read_text(encoding="utf-8"))["models"]
        return {
            e["name"]: ReadyModel(e["name"], e["file"], e["sha256"], tuple(e["sources"]), e["target"], e)
            for e in entries
        }
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{manifest}: unreadable manifest of the ready-made models ({error})") from None


def verified_path(model: ReadyModel) -> Path:
    """The model's weights file, once its SHA-256 matches the manifest; one-line error if not."""
    path = model.path
    if not path.is_file():
        raise DataError(f"{path}: the weights of the ready-made model {model.name!r} are missing; "
                        "reinstall mri2mri")  # fmt: skip
    if file_sha256(path) != model.sha256:
        raise DataError(f"{path}: the weights of the ready-made model {model.name!r} do not match their "
                        "SHA-256 in the manifest (corrupt or replaced); reinstall mri2mri")  # fmt: skip
    return path


def resolve_model(model: Path | str) -> Path:
    """The path of a checkpoint, run folder or ONNX file: ``model`` itself when it exists, else
    the verified weights of the ready-made model of that name; a UserError listing the
    ready-made models when it is neither."""
    path = Path(model)
    if path.exists():
        return path
    models = ready_models()
    if str(model) in models:
        return verified_path(models[str(model)])
    names = ", ".join(models) or "none in this installation"
    raise UserError(f"{model}: does not exist (expected a checkpoint, run folder or .onnx file) and is no "
                    f"ready-made model's name (ready-made models: {names}; `mri2mri models` lists them)")  # fmt: skip


def model_card(name: str) -> str:
    """The Markdown card of the ready-made model ``name`` (``mri2mri models NAME``)."""
    models = ready_models()
    if name not in models:
        raise UserError(f"{name}: no ready-made model of that name (ready-made models: {', '.join(models) or 'none'})")
    card = models[name].card
    if not card.is_file():
        raise DataError(f"{card}: the model card of {name!r} is missing; reinstall mri2mri")
    return card.read_text(encoding="utf-8")


def ready_model_of(path: Path) -> ReadyModel | None:
    """The ready-made model whose weights ``path`` is, for a prediction's provenance."""
    for model in ready_models().values():
        if Path(path).resolve() == model.path:
            return model
    return None


def format_spread(scores: dict[str, Any], key: str, digits: int) -> str:
    """``scores[key]`` ({"mean", "std"}) as "mean ± std", or "n/a" (the table and the model cards)."""
    value = scores.get(key)
    if not isinstance(value, dict):
        return "n/a"
    return f"{value['mean']:.{digits}f} ± {value['std']:.{digits}f}"


def models_table(models: dict[str, ReadyModel] | None = None) -> str:
    """The Markdown table of ``mri2mri models``."""
    models = ready_models() if models is None else models
    if not models:
        return "No ready-made models in this installation."
    lines = [
        "| name | inputs | output | trained on | size | PSNR brain, dB (table) | SSIM brain (table) "
        "| PSNR windowed, dB (table) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for m in models.values():
        cv = m.entry.get("cross_validation", {})
        model, table = cv.get("model", {}), cv.get("baseline", {})
        size = m.path.stat().st_size / 1e6 if m.path.is_file() else float("nan")
        lines.append(
            f"| {m.name} | {' + '.join(m.sources)} | {m.target} | {m.entry.get('training', {}).get('summary', '')} "
            f"| {size:.1f} MB | {format_spread(model, 'psnr_mask', 2)} ({format_spread(table, 'psnr_mask', 2)}) "
            f"| {format_spread(model, 'ssim_mask', 3)} ({format_spread(table, 'ssim_mask', 3)}) "
            f"| {format_spread(model, 'psnr_mask_window', 2)} ({format_spread(table, 'psnr_mask_window', 2)}) |"
        )
    baselines = sorted({m.entry.get("cross_validation", {}).get("baseline_name", "") for m in models.values()} - {""})
    protocols = {m.name: m.entry.get("cross_validation", {}).get("protocol", "") for m in models.values()}
    protocols = {name: text for name, text in protocols.items() if text}
    if len(set(protocols.values())) > 1:  # say which model each protocol scored
        protocol_text = " ".join(f"`{name}`: {text}" for name, text in protocols.items())
    else:
        protocol_text = " ".join(set(protocols.values()))
    lines += [
        "",
        "Scores: mean ± std over the folds and seeds of a cross-validation by site (each fold's test "
        "patients from a site none of its training patients come from), each fold's model trained with "
        f"the shipped recipe; in brackets the {' / '.join(baselines) or 'baseline'} fitted on the same "
        "training patients. " + protocol_text,
        f"Model cards: {WEIGHTS_DIR}/<name>_MODEL_CARD.md",
    ]
    return "\n".join(lines)
