"""Loading a trained generator and running it on slices; the `test` command's pipeline."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mri2mri.checkpoint import CheckpointError, load_checkpoint
from mri2mri.config import RunConfig, check_int, replace
from mri2mri.errors import DataError, UserError, first_line
from mri2mri.models import build_generator
from mri2mri.runfolder import RunFolder, find_checkpoint, read_trained_subjects
from mri2mri.runtime import Runtime, setup_runtime

Predictor = Callable[[torch.Tensor], torch.Tensor]


def load_generator(
    checkpoint: Path, device: torch.device | str = "cpu", correction_weight: float | None = None
) -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """The generator of a checkpoint (its EMA weights when it has them), in eval mode, its run
    configuration and the checkpoint's payload.

    ``correction_weight`` makes a residual generator add that share of its learned correction
    instead of its configuration's (``--correction-weight`` of test, predict and export); the
    configuration returned then records it, for what writes it down (ONNX metadata, model card,
    a prediction's provenance). A generator that makes the whole image is refused."""
    payload = load_checkpoint(checkpoint, map_location="cpu")
    # A valid torch file of the wrong structure (keys missing, tensors of other shapes, values
    # out of range) is one line naming the file, not a traceback from deep inside torch.
    if not isinstance(payload.get("config"), dict):
        raise CheckpointError(f"{checkpoint}: not an mri2mri checkpoint (no run configuration)")
    try:
        config = RunConfig.from_dict(payload["config"])
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{checkpoint}: bad run configuration in the checkpoint ({first_line(error)})") from None
    G = build_generator(config.model)
    try:
        G.load_state_dict(payload.get("ema") or payload["G"])
    except (RuntimeError, TypeError, AttributeError) as error:
        raise CheckpointError(
            f"{checkpoint}: its weights do not fit its {config.model.generator!r} generator "
            f"({first_line(error)[:200]})"
        ) from None
    G.eval().to(device)
    if correction_weight is not None:
        config = _set_correction_weight(G, config, correction_weight, checkpoint)
    return G, config, payload


def _set_correction_weight(G: nn.Module, config: RunConfig, weight: float, checkpoint: Path) -> RunConfig:
    from mri2mri.models.residual import TableResidual

    model = replace(config.model, correction_weight=weight)  # ModelConfig checks the range, as for train
    if not isinstance(G, TableResidual):
        raise UserError(f"{checkpoint}: --correction-weight needs a residual generator; this one makes the whole image")
    G.correction_weight = float(weight)
    return replace(config, model=model)


def make_predictor(G: nn.Module, runtime: Runtime) -> Predictor:
    """``predict(source in [-1, 1], CPU) -> prediction in [-1, 1], CPU``: eval mode, no gradient."""

    G = runtime.prepare_module(G)

    @torch.inference_mode()
    def predict(source: torch.Tensor) -> torch.Tensor:
        with runtime.autocast():
            out = G(runtime.to_device(source))
        return out.float().cpu()

    return predict


def evaluate_run(
    run: Path,
    data: Path | None = None,
    *,
    cache_dir: Path | None = None,
    out_dir: Path | None = None,
    lang: str = "en",
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = True,
    uncertainty_passes: int = 0,
    trained_on: Path | str | None = None,
    correction_weight: float | None = None,
    tta_passes: int = 1,
) -> dict[str, Any]:
    """Score a run on its test split: metrics, baselines, figures and report.html.

    ``uncertainty_passes`` (K >= 2) also measures how well the test-time-augmentation
    uncertainty ranks the errors (:func:`mri2mri.evaluation.evaluate`).

    ``data`` may be the cache the run trained on (the default), another cache, or raw data that
    is prepared with the run's own data configuration. Subjects the run trained on are refused:
    they are read from the run's split.json, or from ``trained_on`` (a split.json, or the slice
    cache the run trained on) for a run that has none; other data is not scored without one.

    ``correction_weight`` scores a residual generator with that share of its correction instead
    of its configuration's (:func:`load_generator`). ``tta_passes`` (K > 1) scores the mean of
    K test-time passes instead of the plain prediction (``test --tta K``).
    """
    from mri2mri.data.cache import SliceCache, is_cache
    from mri2mri.data.preprocess import ensure_cache
    from mri2mri.evaluation import evaluate
    from mri2mri.options import check_tta
    from mri2mri.report import write_run_report

    if uncertainty_passes:
        from mri2mri.uncertainty import check_passes

        try:
            check_passes(uncertainty_passes)
        except ValueError as error:
            raise UserError(str(error)) from None
    check_int("--batch-size", batch_size, 1)
    check_tta(tta_passes)
    run = Path(run)
    checkpoint = find_checkpoint(run, "best")
    run_dir = run if run.is_dir() else checkpoint.parent.parent
    folder = RunFolder(run_dir)
    runtime = setup_runtime(device, channels_last=True)  # NHWC: faster convolutions, same outputs
    G, config, _ = load_generator(checkpoint, runtime.device, correction_weight)
    if data is None:
        data = folder.cache
        if not is_cache(data):
            raise UserError(f"{run_dir}: no cache in the run folder; pass the test data explicitly")
    trained = _trained_subjects(folder, trained_on)
    if trained is None and not (is_cache(data) and _same_folder(data, folder.cache)):
        # The run's own cache refuses its train split by itself; other data could hold them.
        raise UserError(
            f"{run_dir}: no split.json, so the subjects this run trained on are unknown and {data} "
            "may hold some of them; pass --trained-on with the run's split.json or training cache"
        )
    if is_cache(data):
        cache_path = Path(data)
    else:
        # Other data is prepared beside the run's own cache, never over it: the run's cache is
        # what it trained on and what `predict` takes its contrast reference from.
        target = Path(cache_dir) if cache_dir else folder.test_cache
        if target.resolve() == folder.cache.resolve():
            raise UserError(f"{target}: is the run's own training cache; choose another --cache")
        cache_path = ensure_cache(Path(data), config.data, target)
    cache = SliceCache(cache_path)
    check_cache_fits_model(cache, config, cache_path)
    out = Path(out_dir) if out_dir else run_dir
    result = evaluate(make_predictor(G, runtime), cache, out, split="test", lang=lang,
                      batch_size=batch_size, model_name=config.model.generator,
                      exclude_subjects=trained or [], progress=progress,
                      uncertainty_passes=uncertainty_passes, tta_passes=tta_passes)  # fmt: skip
    write_run_report(out if out_dir else run_dir, lang=lang)
    return result


def check_cache_fits_model(cache: Any, config: RunConfig, where: Path) -> None:
    """Refuse a slice cache prepared with other data settings than the model's: another image
    size or another number of input channels (context slices) gives meaningless scores."""
    size = config.data.image_size
    if tuple(cache.image_size) != (size, size):
        raise DataError(
            f"{where}: slices of {cache.image_size[0]}x{cache.image_size[1]} pixels, the model was "
            f"trained on {size}x{size}; prepare the data with --image-size {size}"
        )
    if cache.in_channels != config.model.in_channels:
        raise DataError(
            f"{where}: slices have {cache.in_channels} input channels, the model expects "
            f"{config.model.in_channels} (--context-slices {config.data.context_slices})"
        )


def _trained_subjects(folder: RunFolder, trained_on: Path | str | None) -> list[str] | None:
    """The subjects of the run's own training split (a run is never scored on them): from its
    split.json, else from ``trained_on`` (a split.json or a cache folder, which keeps its split
    under the same name); None when unknown."""
    trained = read_trained_subjects(folder.split)
    if trained is not None or trained_on is None:
        return trained
    split_file = RunFolder(trained_on).split if Path(trained_on).is_dir() else Path(trained_on)
    if not split_file.is_file():
        raise UserError(f"{trained_on}: --trained-on needs a split.json or the slice cache the run trained on")
    return read_trained_subjects(split_file)


def _same_folder(a: Path, b: Path) -> bool:
    return Path(a).resolve() == Path(b).resolve()
