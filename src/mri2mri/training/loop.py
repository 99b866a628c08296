"""The loop around the GAN step: epochs, validation, checkpoints, stops, the run folder.

What long runs need: checkpoints at the end of each epoch (and every ``checkpoint_every``
steps); a stop after ``time_budget`` seconds or on SIGINT/SIGTERM that still writes a
checkpoint; skipped steps on non-finite losses or gradients, and a stop after
``max_bad_steps`` of them in a row; DistributedDataParallel under torchrun. The helpers share
one record, :class:`_Run`, instead of passing a dozen arguments to each other.
"""

from __future__ import annotations

import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader

from mri2mri import console
from mri2mri.config import RunConfig, check_int, replace
from mri2mri.contrast import reference_from_cache
from mri2mri.data.cache import SliceCache, adopt_cache_preparation
from mri2mri.data.dataset import Sample, SliceDataset
from mri2mri.errors import UserError
from mri2mri.models import check_image_size, count_parameters
from mri2mri.options import check_run
from mri2mri.runfolder import RunFolder, RunLock
from mri2mri.runtime import (
    Runtime,
    barrier,
    cpu_has_fast_bf16,
    seed_everything,
    setup_runtime,
    teardown,
)
from mri2mri.training.networks import Networks, _warm_start, build_networks, residual_table
from mri2mri.training.sampling import (
    EpochBatchSampler,
    EpochIndexed,
    _augment_seed,
    _device_augmentation,
    _effective_batch,
    _step_seed,
    _steps_per_epoch,
    make_train_loader,
)
from mri2mri.training.schedule import set_learning_rate, whole_run_factor
from mri2mri.training.state import Progress, TrainingStopped, _restore, _save
from mri2mri.training.step import StepResult, gan_step
from mri2mri.training.validation import validate


@dataclass
class TrainResult:
    """Where a run ended: its folder, how far it got, whether the time budget stopped it, and
    the history rows of this call."""

    run_dir: Path
    epochs_done: int
    global_step: int
    train_seconds: float
    stopped_by_budget: bool
    history: list[dict[str, Any]]


class _StopFlag:
    """Set by SIGINT/SIGTERM; the loop stops at the end of the current step."""

    def __init__(self) -> None:
        self.signal_name: str | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.signal_name is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal_name = signal.Signals(signum).name

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


@dataclass(frozen=True)
class _Options:
    """How :func:`train` was asked to run (its keyword arguments)."""

    resume: bool
    show_progress: bool
    checkpoint_every: int


@dataclass
class _Run:
    """One run as the loop's helpers share it: networks, data, run folder and progress.

    ``bar``, ``epoch_start`` and ``epoch_images`` describe the epoch in progress."""

    config: RunConfig
    runtime: Runtime
    options: _Options
    folder: RunFolder
    nets: Networks
    progress: Progress
    train_set: SliceDataset
    val_set: SliceDataset
    batch_size: int  # global, over all ranks
    steps_per_epoch: int
    extras: dict[str, Any]  # saved in every checkpoint beside the weights
    augmentation: Any = None  # the batched augmentation, or None
    stop: _StopFlag = field(default_factory=_StopFlag)
    history: list[dict[str, Any]] = field(default_factory=list)
    bad_in_a_row: int = 0  # consecutive skipped steps, over epochs
    bar: Any = None
    epoch_start: float = 0.0
    epoch_images: int = 0

    @property
    def shows_progress(self) -> bool:
        return self.options.show_progress and self.runtime.is_main


def train(
    config: RunConfig,
    cache_dir: Path,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    checkpoint_every: int = 0,
) -> TrainResult:
    """Train a generator/discriminator pair on the cache's train split; see the package doc."""
    check_int("--checkpoint-every", checkpoint_every, 0)
    runtime = setup_runtime(config.train.device, config.train.precision, config.train.channels_last)
    try:
        options = _Options(resume=resume, show_progress=progress, checkpoint_every=checkpoint_every)
        return _train(config, Path(cache_dir), Path(run_dir), runtime, options)
    finally:
        teardown(runtime)


def _train(
    config: RunConfig, cache_dir: Path, run_dir: Path, runtime: Runtime, options: _Options
) -> TrainResult:
    cache = SliceCache(cache_dir)
    config = _reconcile(config, cache)
    check_run(config)  # the command line's checks, for Python callers too
    check_image_size(config.model, cache.image_size[0])
    train_set = SliceDataset(cache, "train")
    val_set = SliceDataset(cache, "val")
    if len(train_set) == 0:
        raise UserError(f"{cache_dir}: the train split has no slices")
    batch_size = _effective_batch(config.train.batch_size, len(train_set), runtime.world_size)

    folder = RunFolder(run_dir, config.train.run_name)
    lock = RunLock(folder.lock)
    if runtime.is_main:
        lock.acquire()  # first: make() clears leftovers, which must not be an active run's
        folder.make()
    try:
        seed_everything(config.train.seed)  # same initial weights on every rank and every run
        nets = build_networks(config, runtime, table=residual_table(config, cache))
        progress = _starting_point(folder, nets, config, runtime, options.resume)
        if runtime.is_main:
            _write_run_start(folder, config, cache_dir, options.resume)
        barrier(runtime)
        run = _Run(
            config=config, runtime=runtime, options=options, folder=folder, nets=nets, progress=progress,
            train_set=train_set, val_set=val_set, batch_size=batch_size,
            steps_per_epoch=_steps_per_epoch(config, len(train_set), batch_size),
            extras=_checkpoint_extras(config, cache, runtime),
        )  # fmt: skip
        result = _loop(run)
        barrier(runtime)  # all ranks leave together, after rank 0 has written the run folder
        return result
    finally:
        lock.release()


def _reconcile(config: RunConfig, cache: SliceCache) -> RunConfig:
    """The cache decides channel count, image size and how its slices were prepared (what
    `predict` must repeat); the model follows it."""
    size = cache.image_size[0]
    model = replace(config.model, in_channels=cache.in_channels, table_channel=cache.table_channel)
    data = replace(adopt_cache_preparation(cache, config.data), image_size=size,
                   context_slices=cache.context_slices, source=cache.source_option or config.data.source)  # fmt: skip
    return replace(config, model=model, data=data)


def _starting_point(
    folder: RunFolder, nets: Networks, config: RunConfig, runtime: Runtime, resume: bool
) -> Progress:
    """Where the run starts: its last checkpoint (``resume``), another run's weights
    (``init_from``) or afresh; never over a run already in the folder."""
    if resume:
        return _restore(folder, nets, config, runtime)
    if runtime.is_main and (started := folder.started_run()) is not None:
        raise UserError(f"{started} exists: pass --resume to continue that run, or choose another --out")
    if config.train.init_from:
        _warm_start(nets, config, Path(config.train.init_from))
    return Progress()


def _write_run_start(folder: RunFolder, config: RunConfig, cache_dir: Path, resume: bool) -> None:
    """What the run folder holds before the first step (rank 0)."""
    config.save(folder.config)
    if not resume or not folder.split.exists():
        folder.keep_split_of(cache_dir)  # before the first step: `test` needs it
    if not resume:
        folder.start_history()


def _checkpoint_extras(config: RunConfig, cache: SliceCache, runtime: Runtime) -> dict[str, Any]:
    """Saved in every checkpoint: what `predict` needs to warn about an input of the wrong contrast."""
    if not runtime.is_main:
        return {}
    return {"source_reference": reference_from_cache(cache, config.data.source, config.data.target)}


def _loop(run: _Run) -> TrainResult:
    train, runtime = run.config.train, run.runtime
    sampler = EpochBatchSampler(len(run.train_set), run.batch_size, train.seed, run.steps_per_epoch,
                                runtime.rank, runtime.world_size)  # fmt: skip
    loader = make_train_loader(EpochIndexed(run.train_set, train.seed), sampler, train.num_workers, runtime)
    run.augmentation = _device_augmentation(run.config)
    if run.shows_progress:
        console.say(_start_line(run.config, run.nets, runtime, len(run.train_set), run.batch_size,
                                run.steps_per_epoch))  # fmt: skip
    with run.stop:
        while run.progress.epoch < train.epochs:
            sampler.set_epoch(run.progress.epoch, run.progress.step_in_epoch)
            if _epoch(run, loader):  # the time budget ran out
                _finish(run)
                return _result(run, stopped_by_budget=True)
    _finish(run)
    return _result(run, stopped_by_budget=False)


def _epoch(run: _Run, loader: DataLoader) -> bool:
    """The rest of the epoch in progress; its history row and the last checkpoint. True when
    the time budget ran out (a signal raises :class:`TrainingStopped`)."""
    progress, train = run.progress, run.config.train
    run.bar = console.progress(
        total=run.steps_per_epoch, initial=progress.step_in_epoch, unit="step", dynamic_ncols=True,
        desc=f"epoch {progress.epoch + 1}/{train.epochs}", enabled=run.shows_progress,
    )  # fmt: skip
    run.nets.G.train()
    run.nets.D.train()
    run.epoch_start = time.perf_counter()
    run.epoch_images = 0
    over_budget = interrupted = False
    for batch in loader:
        _step(run, batch)
        over_budget, interrupted = _agreed(
            train.time_budget is not None and progress.train_seconds >= train.time_budget,
            run.stop.signal_name is not None,
            runtime=run.runtime,
        )
        if over_budget or interrupted:
            break
    run.bar.close()
    if interrupted:
        _stop_on_signal(run)
    # A partial epoch (time budget) gets its row too; on resume, the row of the completed
    # epoch replaces it.
    row = _epoch_row(run)
    run.history.append(row)
    if progress.step_in_epoch >= run.steps_per_epoch:
        _advance_epoch(run.nets, progress)
    _record(run, row)
    _checkpoint(run, run.folder.last)
    return over_budget


def _step(run: _Run, batch: Sample) -> None:
    """One GAN step on this rank's share of a global batch, counted and shown on the bar."""
    config, runtime, progress = run.config, run.runtime, run.progress
    step_start = time.perf_counter()
    torch.manual_seed(_step_seed(config.train.seed, progress.global_step, runtime.rank))
    source, target = _on_device(run, batch)
    if config.train.lr_schedule != "constant":
        set_learning_rate((run.nets.opt_G, run.nets.opt_D), config.train.lr * _rate_factor(run))
    result = gan_step(run.nets, source, target, config, runtime)
    images = source.shape[0] * runtime.world_size
    _account(progress, result, images, time.perf_counter() - step_start)
    run.epoch_images += images
    run.bad_in_a_row = run.bad_in_a_row + 1 if result.skipped else 0
    run.bar.update(1)
    run.bar.set_postfix(
        loss_G=f"{result.loss_G:.3f}", loss_D=f"{result.loss_D:.3f}",
        img_s=f"{run.epoch_images / max(time.perf_counter() - run.epoch_start, 1e-9):.1f}",
    )  # fmt: skip
    if run.bad_in_a_row >= config.train.max_bad_steps:  # skips are agreed: every rank stops here
        _stop_on_bad_steps(run)
    every = run.options.checkpoint_every
    if every and progress.global_step % every == 0:
        _checkpoint(run, run.folder.last)


def _on_device(run: _Run, batch: Sample) -> tuple[torch.Tensor, torch.Tensor]:
    """The batch's source and target on the training device, augmented there when asked."""
    runtime = run.runtime
    source = runtime.to_device(batch.source)
    target = runtime.to_device(batch.target)
    if run.augmentation is not None:
        source, target, _ = run.augmentation(
            source, target, seed=_augment_seed(run.config.train.seed, run.progress.global_step),
            rank=runtime.rank, world_size=runtime.world_size,
        )  # fmt: skip
        source, target = runtime.to_device(source), runtime.to_device(target)
    return source, target


def _stop_on_bad_steps(run: _Run) -> None:
    run.bar.close()
    barrier(run.runtime)
    raise TrainingStopped(
        f"training stopped: {run.bad_in_a_row} steps in a row had a non-finite loss or "
        f"gradient (learning rate {run.config.train.lr:g} too high?); the last good checkpoint "
        f"is {run.folder.last}"
    )


def _stop_on_signal(run: _Run) -> None:
    _checkpoint(run, run.folder.last)
    _finish(run)
    barrier(run.runtime)  # the stop is agreed: every rank leaves once rank 0 has written
    raise TrainingStopped(
        f"training interrupted by {run.stop.signal_name or 'a signal'} at epoch "
        f"{run.progress.epoch + 1}, step {run.progress.global_step}; checkpoint written to "
        f"{run.folder.last}. Resume with the same command and --resume",
        exit_code=130,
    )


def _checkpoint(run: _Run, path: Path, *, keep_previous: bool = True) -> None:
    """A checkpoint of the run as it stands, written by rank 0."""
    if run.runtime.is_main:
        _save(path, run.nets, run.config, run.progress, run.extras, keep_previous=keep_previous)


def _record(run: _Run, row: dict[str, Any]) -> None:
    """Append the history row; keep the best checkpoint by validation L1 (the last without one)."""
    if not run.runtime.is_main:
        return
    run.folder.append_history(row)
    progress = run.progress
    if row["val_L1"] == "" or row["val_L1"] < progress.best_val_l1:
        if row["val_L1"] != "":
            progress.best_val_l1 = row["val_L1"]
        _checkpoint(run, run.folder.best, keep_previous=False)


def _rate_factor(run: _Run) -> float:
    """The share of ``--lr`` for the next step of a whole-run schedule. Its time part is the
    slowest rank's training time (one all-reduce), so every rank steps with the same rate and
    the replicas stay equal."""
    progress, runtime, train = run.progress, run.runtime, run.config.train
    seconds = progress.train_seconds
    if runtime.distributed and train.time_budget is not None:
        value = torch.tensor([seconds], device=runtime.device, dtype=torch.float64)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        seconds = float(value.item())
    return whole_run_factor(train, progress.global_step, seconds, train.epochs * run.steps_per_epoch)


def _agreed(*flags: bool, runtime: Runtime) -> tuple[bool, ...]:
    """Each flag, true on every rank when it is true on any (one all-reduce for all of them), so
    every rank stops at the same step."""
    if not runtime.distributed:
        return flags
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=runtime.device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in values.tolist())


def _start_line(config: RunConfig, nets: Networks, runtime: Runtime, n_slices: int, batch_size: int,
                steps_per_epoch: int) -> str:  # fmt: skip
    """What is trained, where and how: one line before the first progress bar."""
    model, train = config.model, config.train
    where = runtime.device.type + (f" x{runtime.world_size}" if runtime.world_size > 1 else "")
    if runtime.device.type == "cpu":
        from mri2mri.threads import thread_policy

        where += f", {torch.get_num_threads()} threads ({thread_policy().describe()})"
    line = (
        f"training {model.generator} G ({count_parameters(nets.G) / 1e6:.2f} M) + "
        f"{model.discriminator} D ({count_parameters(nets.D) / 1e6:.2f} M), {train.gan_loss}; "
        f"{where}, {runtime.describe_precision()}{' + channels_last' if runtime.channels_last else ''}; "
        f"{n_slices} slices, batch {batch_size}, {steps_per_epoch} steps/epoch"
    )
    if runtime.device.type == "cpu" and runtime.precision == "fp32" and cpu_has_fast_bf16():
        line += "\n(this CPU has native bf16: --precision bf16 trains about 2x faster, with bf16 rounding)"
    return line


def _account(progress: Progress, result: StepResult, images: int, seconds: float) -> None:
    progress.global_step += 1
    progress.step_in_epoch += 1
    progress.train_seconds += seconds
    progress.images_seen += images
    if result.skipped:
        progress.skipped_steps += 1
        return
    for key in ("loss_G", "loss_D", "loss_L1"):
        progress.sums[key] += getattr(result, key)
    progress.sums["n"] += 1


def _epoch_row(run: _Run) -> dict[str, Any]:
    """Averages of the epoch's losses (over all ranks) and, on rank 0, validation metrics."""
    progress, runtime = run.progress, run.runtime
    sums = dict(progress.sums)
    if runtime.distributed:
        packed = torch.tensor([sums["loss_G"], sums["loss_D"], sums["loss_L1"], sums["n"]],
                              device=runtime.device, dtype=torch.float64)  # fmt: skip
        dist.all_reduce(packed)
        sums = dict(zip(("loss_G", "loss_D", "loss_L1", "n"), packed.tolist(), strict=True))
    n = max(sums["n"], 1.0)
    seconds = time.perf_counter() - run.epoch_start
    row: dict[str, Any] = {
        "epoch": progress.epoch + 1,
        "loss_G": sums["loss_G"] / n,
        "loss_D": sums["loss_D"] / n,
        "loss_L1": sums["loss_L1"] / n,
        "val_L1": "", "val_PSNR": "", "val_SSIM": "",
        "seconds": round(seconds, 3),
        "images_per_s": round(run.epoch_images / max(seconds, 1e-9), 2),
        "skipped_steps": progress.skipped_steps,
        "lr": run.nets.opt_G.param_groups[0]["lr"],
    }  # fmt: skip
    if runtime.is_main and len(run.val_set):
        row.update(validate(run.nets.inference_generator(), run.val_set, runtime, run.config.train.batch_size))
    return row


def _advance_epoch(nets: Networks, progress: Progress) -> None:
    nets.sched_G.step()
    nets.sched_D.step()
    progress.epoch += 1
    progress.step_in_epoch = 0
    progress.sums = {"loss_G": 0.0, "loss_D": 0.0, "loss_L1": 0.0, "n": 0.0}


def _finish(run: _Run) -> None:
    """Run summary and loss-curve figure (rank 0)."""
    if not run.runtime.is_main:
        return
    folder, lang = run.folder, run.config.train.lang
    folder.write_summary(_summary(run))
    from mri2mri import figures

    if not folder.history_rows():
        return  # stopped before the first history row: no curve to draw yet
    try:
        figures.plot_loss_curve(folder.history, folder.loss_curve, lang=lang)
        figures.plot_validation_curves(folder.history, folder.validation_curves, lang=lang)
    except OSError as error:
        raise TrainingStopped(f"{folder.figures}: could not write a figure ({error}); checkpoints are intact") from None


def _summary(run: _Run) -> dict[str, Any]:
    """run_summary.json: the run's size, speed and where it ran."""
    progress, runtime = run.progress, run.runtime
    return {
        "parameters_G": count_parameters(run.nets.G),
        "parameters_D": count_parameters(run.nets.D),
        "train_seconds": round(progress.train_seconds, 2),
        "images_per_s": round(progress.images_seen / max(progress.train_seconds, 1e-9), 2),
        "epochs": progress.epoch,
        "steps": progress.global_step,
        "steps_per_epoch": run.steps_per_epoch,
        "skipped_steps": progress.skipped_steps,
        "device": _device_name(runtime),
        "world_size": runtime.world_size,
        "precision": runtime.precision,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def _result(run: _Run, *, stopped_by_budget: bool) -> TrainResult:
    progress = run.progress
    return TrainResult(run.folder.root, progress.epoch, progress.global_step, progress.train_seconds,
                       stopped_by_budget, run.history)  # fmt: skip


def _device_name(runtime: Runtime) -> str:
    if runtime.device.type == "cuda":
        return torch.cuda.get_device_name(runtime.device)
    return runtime.device.type
