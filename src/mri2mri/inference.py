"""Loading a trained generator and running it on slices; the `test` command's pipeline."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mri2mri.checkpoint import load_checkpoint
from mri2mri.config import RunConfig
from mri2mri.errors import DataError, UserError
from mri2mri.models import build_generator
from mri2mri.runfolder import find_checkpoint
from mri2mri.runtime import Runtime, setup_runtime

Predictor = Callable[[torch.Tensor], torch.Tensor]


def load_generator(checkpoint: Path, device: torch.device | str = "cpu") -> tuple[nn.Module, RunConfig, dict[str, Any]]:
    """The generator of a checkpoint (its EMA weights when it has them), in eval mode."""
    payload = load_checkpoint(checkpoint, map_location="cpu")
    config = RunConfig.from_dict(payload["config"])
    G = build_generator(config.model)
    G.load_state_dict(payload.get("ema") or payload["G"])
    G.eval().to(device)
    return G, config, payload


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
) -> dict[str, Any]:
    """Score a run on its test split: metrics, baselines, figures and report.html.

    ``data`` may be the cache the run trained on (the default), another cache, or raw data that
    is prepared with the run's own data configuration. Subjects the run trained on are refused.
    """
    from mri2mri.data.cache import SliceCache, is_cache
    from mri2mri.data.preprocess import ensure_cache
    from mri2mri.evaluation import evaluate
    from mri2mri.report import write_run_report

    run = Path(run)
    checkpoint = find_checkpoint(run, "best")
    run_dir = run if run.is_dir() else checkpoint.parent.parent
    runtime = setup_runtime(device, channels_last=True)  # NHWC: faster convolutions, same outputs
    G, config, _ = load_generator(checkpoint, runtime.device)
    if data is None:
        data = run_dir / "cache"
        if not is_cache(data):
            raise UserError(f"{run_dir}: no cache in the run folder; pass the test data explicitly")
    cache_path = Path(data) if is_cache(data) else ensure_cache(Path(data), config.data, cache_dir or run_dir / "cache")
    cache = SliceCache(cache_path)
    if cache.in_channels != config.model.in_channels:
        raise DataError(f"{cache_path}: slices have {cache.in_channels} channels, the model expects {config.model.in_channels}")
    out = Path(out_dir) if out_dir else run_dir
    result = evaluate(make_predictor(G, runtime), cache, out, split="test", lang=lang,
                      batch_size=batch_size, model_name=config.model.generator,
                      exclude_subjects=_trained_subjects(run_dir), progress=progress)  # fmt: skip
    write_run_report(out if out_dir else run_dir, lang=lang)
    return result


def _trained_subjects(run_dir: Path) -> list[str]:
    """The subjects of the run's own training split: a run is never scored on them."""
    split_file = run_dir / "split.json"
    if not split_file.is_file():
        return []
    return list(json.loads(split_file.read_text(encoding="utf-8")).get("train", []))
