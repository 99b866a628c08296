"""The alternating GAN step of the report, and the loop around it.

One step, in the report's order (and the pix2pix paper's algorithm):

1. generator forward: ``fake = G(source)``;
2. generator loss: adversarial loss of ``D(source, fake)`` against "real" plus
   ``lambda_L1 * L1(fake, target)`` (plus the optional SSIM, feature-matching and perceptual
   terms); generator update;
3. discriminator on the real pair and on the *detached* fake:
   ``loss_D = 0.5 * (loss(real, 1) + loss(fake, 0))``; discriminator update.

The loop around it adds what long runs need: deterministic data order and random streams that
depend only on (seed, step), so a resumed run ends with the same weights as an uninterrupted one;
checkpoints at the end of each epoch (and every ``checkpoint_every`` steps); a stop after
``time_budget`` seconds or on SIGINT/SIGTERM that still writes a checkpoint; skipped steps on
non-finite losses or gradients; DistributedDataParallel under torchrun.
"""

from __future__ import annotations

import csv
import io
import json
import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from mri2mri import losses
from mri2mri.atomic import write_text
from mri2mri.baselines import IntensityMap
from mri2mri.checkpoint import has_checkpoint, load_latest, save_checkpoint
from mri2mri.config import RunConfig, replace
from mri2mri.contrast import reference_from_cache
from mri2mri.data.cache import SliceCache
from mri2mri.data.dataset import Sample, SliceDataset, to_unit_range
from mri2mri.errors import ConfigError, UserError, first_line
from mri2mri.models import build_discriminator, build_generator, check_image_size, count_parameters
from mri2mri.models.residual import TABLE_BINS, TableResidual
from mri2mri.runfolder import RunFolder, RunLock, find_checkpoint, write_split
from mri2mri.runtime import (
    Runtime,
    barrier,
    cpu_has_fast_bf16,
    maybe_compile,
    seed_everything,
    setup_runtime,
    sync_batchnorm,
    teardown,
)

HISTORY_COLUMNS = (
    "epoch", "loss_G", "loss_D", "loss_L1", "val_L1", "val_PSNR", "val_SSIM",
    "seconds", "images_per_s", "skipped_steps",
)  # fmt: skip


class TrainingStopped(UserError):
    """Training stopped early (signal, numerical fault, write failure); a checkpoint was kept."""

    def __init__(self, message: str, exit_code: int = 1):
        super().__init__(message)
        self.exit_code = exit_code


# --------------------------------------------------------------------------------------------
# The networks of one run
# --------------------------------------------------------------------------------------------


class DiscriminatorObjective(nn.Module):
    """D on the real and the fake pair, and D's loss, as one module.

    Wrapping the whole objective in one module means one forward and one backward per update,
    which is what DistributedDataParallel expects. D's outputs are returned too: the generator's
    adversarial (and feature-matching) loss is taken from the same forward (see ``gan_step``).
    """

    def __init__(self, discriminator: nn.Module, gan_loss: str, lambda_gp: float):
        super().__init__()
        self.discriminator = discriminator
        self.gan_loss = gan_loss
        self.lambda_gp = lambda_gp

    def forward(
        self, source: torch.Tensor, target: torch.Tensor, fake: torch.Tensor
    ) -> tuple[torch.Tensor, list[list[torch.Tensor]], list[list[torch.Tensor]]]:
        real_out = self.discriminator(source, target)
        fake_out = self.discriminator(source, fake)
        loss = losses.discriminator_loss(self.gan_loss, _logits(real_out), _logits(fake_out))
        if self.gan_loss == "wgan-gp":
            loss = loss + self.lambda_gp * losses.gradient_penalty(self.discriminator, source, target, fake)
        return loss, real_out, fake_out


def _logits(outputs: list[list[torch.Tensor]]) -> list[torch.Tensor]:
    """The last map of each scale is the patch-logit map."""
    return [scale[-1] for scale in outputs]


def _features(outputs: list[list[torch.Tensor]]) -> list[list[torch.Tensor]]:
    return [scale[:-1] for scale in outputs]


@dataclass
class Networks:
    """G and D, their optimisers and schedulers, and the distributed wrappers."""

    G: nn.Module
    D: nn.Module
    opt_G: torch.optim.Optimizer
    opt_D: torch.optim.Optimizer
    sched_G: torch.optim.lr_scheduler.LRScheduler
    sched_D: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    G_train: nn.Module  # G itself, or its DDP/compiled wrapper
    D_objective: nn.Module  # DiscriminatorObjective, or its DDP wrapper
    ema: AveragedModel | None = None
    perceptual: nn.Module | None = None

    def inference_generator(self) -> nn.Module:
        """The weights used for validation and test: the EMA copy when there is one."""
        return self.ema.module if self.ema is not None else self.G


def build_networks(config: RunConfig, runtime: Runtime, table: torch.Tensor | None = None) -> Networks:
    """Networks, optimisers and schedulers as the configuration describes them. ``table`` is the
    intensity-map table of a residual generator (``ModelConfig.residual``), fitted on the
    training subjects (``train`` always passes it; without it the table is the identity map)."""
    model, train = config.model, config.train
    G = build_generator(model)
    if isinstance(G, TableResidual) and table is not None:
        G.set_table(table)
    D = build_discriminator(model)
    if model.norm == "batch":
        G, D = sync_batchnorm(G, runtime), sync_batchnorm(D, runtime)
    G, D = runtime.prepare_module(G), runtime.prepare_module(D)
    betas = (train.beta1, train.beta2)
    # Fused Adam updates every tensor in one kernel (a dozen small ones each otherwise).
    fused = runtime.device.type in ("cpu", "cuda")
    opt_G = torch.optim.Adam(G.parameters(), lr=train.lr, betas=betas, fused=fused)
    opt_D = torch.optim.Adam(D.parameters(), lr=train.lr, betas=betas, fused=fused)
    decay = _linear_decay(train.epochs, train.lr_decay_epochs)
    objective: nn.Module = DiscriminatorObjective(D, train.gan_loss, train.lambda_gp)
    G_train: nn.Module = G
    if runtime.distributed:
        device_ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        G_train = DistributedDataParallel(G, device_ids=device_ids)
        objective = DistributedDataParallel(objective, device_ids=device_ids)
    ema = None
    if train.ema_decay > 0:
        ema = AveragedModel(G, multi_avg_fn=get_ema_multi_avg_fn(train.ema_decay), use_buffers=True)
    perceptual = None
    if train.lambda_perceptual > 0:
        perceptual = runtime.prepare_module(losses.PerceptualLoss(train.perceptual_weights)).eval()
    return Networks(
        G=G,
        D=D,
        opt_G=opt_G,
        opt_D=opt_D,
        sched_G=torch.optim.lr_scheduler.LambdaLR(opt_G, decay),
        sched_D=torch.optim.lr_scheduler.LambdaLR(opt_D, decay),
        scaler=runtime.grad_scaler(),
        G_train=maybe_compile(G_train, train.compile),
        D_objective=objective,
        ema=ema,
        perceptual=perceptual,
    )


def _linear_decay(epochs: int, decay_epochs: int):
    """pix2pix's schedule: constant, then linearly to zero over the last ``decay_epochs``."""
    start = max(epochs - decay_epochs, 0)

    def factor(epoch: int) -> float:
        if decay_epochs <= 0 or epoch < start:
            return 1.0
        return max(0.0, 1.0 - (epoch - start + 1) / (decay_epochs + 1))

    return factor


# --------------------------------------------------------------------------------------------
# One step
# --------------------------------------------------------------------------------------------


@dataclass
class StepResult:
    loss_G: float
    loss_D: float
    loss_L1: float
    skipped: bool = False


def gan_step(
    nets: Networks, source: torch.Tensor, target: torch.Tensor, config: RunConfig, runtime: Runtime
) -> StepResult:
    """One generator update then ``d_steps`` discriminator updates on the same batch.

    In the report's order both updates see the networks as they were before the step: G's
    update uses D before D's update, and D's update uses the fake that G made before G's update.
    So one forward of D on the fake pair serves both, where the report's loop runs it twice:
    G's adversarial gradient is taken with respect to the fake image only (D's weights get
    none, as if D were frozen) and D's with respect to D's weights only. The weights after the
    step are those of the report's loop (``tests/test_training.py`` checks it against that loop
    written out); only D's batch-norm running statistics see the fake batch once, not twice.
    The price is memory: D's activations on the real pair are held during G's backward.
    """
    train = config.train
    with runtime.autocast():
        fake = nets.G_train(source)
        # A leaf between G and D: D's graph stops here, so G's update, which changes G's
        # weights in place, leaves that graph valid for D's backward after it.
        fake_leaf = fake.detach().requires_grad_(True)
        loss_D, real_out, fake_out = nets.D_objective(source, target, fake_leaf)
        loss_adv = losses.generator_adversarial_loss(train.gan_loss, _logits(fake_out))
        if train.lambda_feature_matching > 0:
            loss_adv = loss_adv + train.lambda_feature_matching * losses.feature_matching_loss(
                _features(real_out), _features(fake_out)
            )
        loss_l1 = F.l1_loss(fake.float(), target.float())
        loss_direct = train.lambda_l1 * loss_l1  # the terms that do not pass through D
        if train.lambda_l2 > 0:
            loss_direct = loss_direct + train.lambda_l2 * F.mse_loss(fake.float(), target.float())
        if train.lambda_ssim > 0:
            loss_direct = loss_direct + train.lambda_ssim * losses.ssim_loss(fake.float(), target.float())
        if nets.perceptual is not None:
            loss_direct = loss_direct + train.lambda_perceptual * nets.perceptual(fake.float(), target.float())
    loss_G = loss_adv + loss_direct
    scale = nets.scaler.scale

    def backward_G() -> None:
        # Through D to the fake image (D's graph kept for D's update), then through G.
        (grad_fake,) = torch.autograd.grad(scale(loss_adv), fake_leaf, retain_graph=True)
        torch.autograd.backward([scale(loss_direct), fake], [None, grad_fake])

    d_parameters = [p for p in nets.D.parameters() if p.requires_grad]
    g_ok = _update(nets.opt_G, loss_G, nets.G, nets.scaler, train.grad_clip, runtime, backward=backward_G)
    # inputs=: D's weights only, not the fake image's gradient, which G's backward already took.
    d_ok = _update(nets.opt_D, loss_D, nets.D, nets.scaler, train.grad_clip, runtime, inputs=d_parameters)
    for _ in range(train.d_steps - 1):  # further D updates need D's new weights: a new forward
        with runtime.autocast():
            loss_D = nets.D_objective(source, target, fake.detach())[0]
        d_ok = _update(nets.opt_D, loss_D, nets.D, nets.scaler, train.grad_clip, runtime) and d_ok
    if g_ok and nets.ema is not None:
        nets.ema.update_parameters(nets.G)
    return StepResult(
        loss_G=float(loss_G.detach()),
        loss_D=float(loss_D.detach()),
        loss_L1=float(loss_l1.detach()),
        skipped=not (g_ok and d_ok),
    )


def _update(
    optimizer: torch.optim.Optimizer,
    loss: torch.Tensor,
    module: nn.Module,
    scaler: torch.amp.GradScaler,
    grad_clip: float,
    runtime: Runtime,
    backward: Callable[[], None] | None = None,
    inputs: list[torch.Tensor] | None = None,
) -> bool:
    """Backward of the scaled ``loss`` (into ``inputs`` only, when given; or ``backward()``, a
    custom one) and a step, unless the loss or the gradient is not finite (then no step).

    The backward always runs, so that every process takes part in DDP's gradient all-reduce,
    and the processes agree on the skip, so their weights never drift apart. The decision costs
    one host sync per update (each sync stalls a GPU's queue of kernels).
    """
    optimizer.zero_grad(set_to_none=True)
    if backward is not None:
        backward()
    else:
        scaler.scale(loss).backward(inputs=inputs)
    scaler.unscale_(optimizer)
    max_norm = grad_clip if grad_clip > 0 else math.inf
    grad_norm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    finite = torch.isfinite(loss.detach())
    if not scaler.is_enabled():  # with fp16 loss scaling, the scaler itself skips inf/NaN steps
        finite = finite & torch.isfinite(grad_norm)
    if runtime.distributed:  # a non-finite loss on one process skips the step on all
        finite = finite.to(torch.int32)
        dist.all_reduce(finite, op=dist.ReduceOp.MIN)
    if not bool(finite):
        optimizer.zero_grad(set_to_none=True)
        scaler.update()
        return False
    scaler.step(optimizer)
    scaler.update()
    return True


# --------------------------------------------------------------------------------------------
# Data order that depends only on (seed, epoch, step)
# --------------------------------------------------------------------------------------------


def epoch_batches(
    n_samples: int, batch_size: int, seed: int, epoch: int, start_step: int = 0,
    rank: int = 0, world_size: int = 1,
) -> list[list[int]]:  # fmt: skip
    """This rank's batches of one epoch, from global step ``start_step`` on.

    The permutation depends only on (seed, epoch); each global batch is shared out across
    ranks by striding, so N processes see together exactly what one process sees, and a run
    resumed with another number of processes continues the same sequence of global batches.
    """
    generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(n_samples, generator=generator).tolist()
    steps = n_samples // batch_size
    offset = epoch * n_samples  # encodes the epoch in the index, for per-sample random seeds
    return [
        [offset + i for i in order[step * batch_size : (step + 1) * batch_size][rank::world_size]]
        for step in range(start_step, steps)
    ]


class EpochBatchSampler(Sampler[list[int]]):
    """This rank's :func:`epoch_batches`, for one DataLoader kept for the whole run.

    Call ``set_epoch(epoch, start_step)`` before each pass: a DataLoader asks its batch sampler
    for a new iterator at every pass, so persistent worker processes (started once, not once per
    epoch) still serve every epoch in its own deterministic order.
    """

    def __init__(self, n_samples: int, batch_size: int, seed: int, steps_per_epoch: int,
                 rank: int = 0, world_size: int = 1):  # fmt: skip
        self.n_samples, self.batch_size, self.seed = n_samples, batch_size, seed
        self.steps_per_epoch, self.rank, self.world_size = steps_per_epoch, rank, world_size
        self.epoch = self.start_step = 0

    def set_epoch(self, epoch: int, start_step: int = 0) -> None:
        self.epoch, self.start_step = epoch, start_step

    def __len__(self) -> int:
        return max(self.steps_per_epoch - self.start_step, 0)

    def __iter__(self) -> Iterator[list[int]]:
        batches = epoch_batches(self.n_samples, self.batch_size, self.seed, self.epoch,
                                self.start_step, self.rank, self.world_size)  # fmt: skip
        return iter(batches[: len(self)])


class EpochIndexed(Dataset[Sample]):
    """Serves ``epoch * n + i`` as sample ``i``, seeding its augmentation from (seed, epoch, i).

    Augmentation then depends on which sample and which epoch, never on which worker process
    or how far a previous run got, which keeps resumed and distributed runs exact.
    """

    def __init__(self, dataset: SliceDataset, seed: int):
        self.dataset = dataset
        self.seed = seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Sample:
        if self.dataset.transform is None:
            return self.dataset[index % len(self.dataset)]
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed((self.seed * 7_368_787 + index) % 2**63)
            return self.dataset[index % len(self.dataset)]


def _step_seed(seed: int, global_step: int, rank: int) -> int:
    return ((seed * 1_000_003 + global_step) * 1024 + rank) % 2**63


def _augment_seed(seed: int, global_step: int) -> int:
    """One seed for the whole global batch (every rank draws it, keeps its rows), distinct from
    every rank's step seed."""
    return _step_seed(seed, global_step, 1023)


# --------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------


@dataclass
class Progress:
    """Where training stands; saved in every checkpoint."""

    epoch: int = 0  # the epoch in progress (0-based)
    step_in_epoch: int = 0  # global steps of this epoch already done
    global_step: int = 0
    train_seconds: float = 0.0
    images_seen: int = 0
    best_val_l1: float = math.inf
    skipped_steps: int = 0
    sums: dict[str, float] = field(default_factory=lambda: {"loss_G": 0.0, "loss_D": 0.0, "loss_L1": 0.0, "n": 0.0})

    def state(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


@dataclass
class TrainResult:
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


def train(
    config: RunConfig,
    cache_dir: Path,
    run_dir: Path,
    *,
    resume: bool = False,
    progress: bool = True,
    checkpoint_every: int = 0,
) -> TrainResult:
    """Train a generator/discriminator pair on the cache's train split; see the module doc."""
    runtime = setup_runtime(config.train.device, config.train.precision, config.train.channels_last)
    try:
        return _train(config, Path(cache_dir), Path(run_dir), runtime, resume, progress, checkpoint_every)
    finally:
        teardown(runtime)


def _train(
    config: RunConfig, cache_dir: Path, run_dir: Path, runtime: Runtime,
    resume: bool, show_progress: bool, checkpoint_every: int,
) -> TrainResult:  # fmt: skip
    cache = SliceCache(cache_dir)
    config = _reconcile(config, cache)
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
        state = Progress()
        if resume:
            state = _restore(folder, nets, config, runtime)
        elif runtime.is_main and folder.last.exists():
            raise UserError(f"{folder.last} exists: pass --resume to continue that run, or choose another --out")
        elif config.train.init_from:
            _warm_start(nets, config, Path(config.train.init_from))
        if runtime.is_main:
            config.save(folder.config)
            if not resume or not folder.split.exists():
                write_split(cache_dir, folder.root)  # before the first step: `test` needs it
            if not resume:
                _start_history(folder.history)
        barrier(runtime)
        result = _loop(config, cache, train_set, val_set, batch_size, folder, nets, state, runtime,
                       show_progress, checkpoint_every)  # fmt: skip
        barrier(runtime)  # all ranks leave together, after rank 0 has written the run folder
        return result
    finally:
        lock.release()


def residual_table(config: RunConfig, cache: SliceCache) -> torch.Tensor | None:
    """The intensity-map table of a residual generator, fitted on the train split only (the
    subjects the run learns from; never its validation or test subjects)."""
    if config.model.residual != "intensity-map":
        return None
    table = IntensityMap.fit_cache(cache, "train", n_bins=TABLE_BINS, background_in_first_bin=True)
    return torch.as_tensor(table.table, dtype=torch.float32)


def _warm_start(nets: Networks, config: RunConfig, checkpoint: Path) -> None:
    """Start from another run's G and D weights (``--init-from``): same networks required;
    optimisers, schedule and progress start afresh, and a residual generator keeps the table
    fitted on this run's own training subjects."""
    payload, used = load_latest(find_checkpoint(checkpoint), map_location="cpu")
    saved = RunConfig.from_dict(payload.get("config", {})).model
    mine = config.model
    differences = [
        f"{name} {getattr(saved, name)!r} (this run: {getattr(mine, name)!r})"
        for name in ("generator", "discriminator", "in_channels", "out_channels", "base_channels", "norm",
                     "upsample", "disc_layers", "disc_scales", "spectral_norm", "residual")
        if getattr(saved, name) != getattr(mine, name)
    ]  # fmt: skip
    if differences:
        raise UserError(f"{used}: --init-from needs the same networks; the checkpoint has " + "; ".join(differences))
    weights = dict(payload.get("ema") or payload["G"])
    if isinstance(nets.G, TableResidual):
        weights["table"] = nets.G.table.detach().clone()  # this run's own training data
    try:
        nets.G.load_state_dict(weights)
        nets.D.load_state_dict(payload["D"])
    except (RuntimeError, KeyError) as error:
        raise UserError(f"{used}: --init-from could not load its weights ({first_line(error)})") from None
    if nets.ema is not None:
        nets.ema.module.load_state_dict(nets.G.state_dict())


def _reconcile(config: RunConfig, cache: SliceCache) -> RunConfig:
    """The cache decides channel count and image size; the model follows it."""
    size = cache.image_size[0]
    model = replace(config.model, in_channels=cache.in_channels, table_channel=cache.table_channel)
    data = replace(config.data, image_size=size, context_slices=cache.context_slices, source=cache.source_option or config.data.source)
    return replace(config, model=model, data=data)


def _device_augmentation(config: RunConfig):
    """The batched augmentation (``data/gpu_augment.py``), run on the training device, GPU or CPU.

    One path for every device: a run draws the same changes on a CPU and on a GPU, and no
    per-sample TorchIO work in the data loader starves a GPU (``data/augment.py`` remains for
    use outside training)."""
    if not config.data.augment:
        return None
    from mri2mri.data.gpu_augment import BatchAugmentation

    return BatchAugmentation()


def _effective_batch(batch_size: int, n_samples: int, world_size: int) -> int:
    if batch_size % world_size:
        raise ConfigError(f"--batch-size {batch_size} is not divisible by the {world_size} processes")
    if n_samples >= batch_size:
        return batch_size
    # Fewer slices than one batch: use them all, rounded down to a multiple of the processes.
    return max(world_size, n_samples - n_samples % world_size)


def _loop(
    config: RunConfig, cache: SliceCache, train_set: SliceDataset, val_set: SliceDataset,
    batch_size: int, folder: RunFolder, nets: Networks, state: Progress, runtime: Runtime,
    show_progress: bool, checkpoint_every: int,
) -> TrainResult:  # fmt: skip
    train = config.train
    indexed = EpochIndexed(train_set, train.seed)
    # Saved in every checkpoint: what `predict` needs to warn about an input of the wrong contrast.
    extras = {}
    if runtime.is_main:
        extras["source_reference"] = reference_from_cache(cache, config.data.source, config.data.target)
    steps_per_epoch = len(train_set) // batch_size
    if train.max_steps_per_epoch:
        steps_per_epoch = min(steps_per_epoch, train.max_steps_per_epoch)
    sampler = EpochBatchSampler(len(train_set), batch_size, train.seed, steps_per_epoch,
                                runtime.rank, runtime.world_size)  # fmt: skip
    loader = make_train_loader(indexed, sampler, train.num_workers, runtime)
    device_augmentation = _device_augmentation(config)
    history: list[dict[str, Any]] = []
    bad_in_a_row = 0
    if show_progress and runtime.is_main:
        tqdm.write(_start_line(config, nets, runtime, len(train_set), batch_size, steps_per_epoch))
    with _StopFlag() as stop:
        while state.epoch < train.epochs:
            sampler.set_epoch(state.epoch, state.step_in_epoch)
            bar = tqdm(
                total=steps_per_epoch, initial=state.step_in_epoch, unit="step", dynamic_ncols=True,
                desc=f"epoch {state.epoch + 1}/{train.epochs}", disable=not (show_progress and runtime.is_main),
            )  # fmt: skip
            nets.G.train()
            nets.D.train()
            epoch_start = time.perf_counter()
            epoch_images = 0
            over_budget = interrupted = False
            for batch in loader:
                step_start = time.perf_counter()
                torch.manual_seed(_step_seed(train.seed, state.global_step, runtime.rank))
                source = runtime.to_device(batch.source)
                target = runtime.to_device(batch.target)
                if device_augmentation is not None:
                    source, target, _ = device_augmentation(
                        source, target, seed=_augment_seed(train.seed, state.global_step),
                        rank=runtime.rank, world_size=runtime.world_size,
                    )  # fmt: skip
                    source, target = runtime.to_device(source), runtime.to_device(target)
                result = gan_step(nets, source, target, config, runtime)
                images = source.shape[0] * runtime.world_size
                _account(state, result, images, time.perf_counter() - step_start)
                epoch_images += images
                bad_in_a_row = bad_in_a_row + 1 if result.skipped else 0
                bar.update(1)
                bar.set_postfix(
                    loss_G=f"{result.loss_G:.3f}", loss_D=f"{result.loss_D:.3f}",
                    img_s=f"{epoch_images / max(time.perf_counter() - epoch_start, 1e-9):.1f}",
                )  # fmt: skip
                if bad_in_a_row >= train.max_bad_steps:  # skips are agreed: every rank stops here
                    bar.close()
                    barrier(runtime)
                    raise TrainingStopped(
                        f"training stopped: {bad_in_a_row} steps in a row had a non-finite loss or "
                        f"gradient (learning rate {train.lr:g} too high?); the last good checkpoint "
                        f"is {folder.last}"
                    )
                if checkpoint_every and state.global_step % checkpoint_every == 0:
                    _save(folder.last, nets, config, state, runtime, extras)
                over_budget, interrupted = _agreed(
                    train.time_budget is not None and state.train_seconds >= train.time_budget,
                    stop.signal_name is not None,
                    runtime=runtime,
                )
                if over_budget or interrupted:
                    break
            bar.close()
            if interrupted:
                _save(folder.last, nets, config, state, runtime, extras)
                _finish(folder, nets, config, state, runtime, steps_per_epoch)
                barrier(runtime)  # the stop is agreed: every rank leaves once rank 0 has written
                raise TrainingStopped(
                    f"training interrupted by {stop.signal_name or 'a signal'} at epoch "
                    f"{state.epoch + 1}, step {state.global_step}; checkpoint written to "
                    f"{folder.last}. Resume with the same command and --resume",
                    exit_code=130,
                )
            # A partial epoch (time budget) gets its row too; on resume, the row of the
            # completed epoch replaces it.
            row = _epoch_row(config, val_set, nets, state, runtime, epoch_start, epoch_images)
            history.append(row)
            if state.step_in_epoch >= steps_per_epoch:
                _advance_epoch(nets, state)
            _record(folder, row, nets, config, state, runtime, extras)
            _save(folder.last, nets, config, state, runtime, extras)
            if over_budget:
                _finish(folder, nets, config, state, runtime, steps_per_epoch)
                return TrainResult(folder.root, state.epoch, state.global_step, state.train_seconds,
                                   True, history)  # fmt: skip
    _finish(folder, nets, config, state, runtime, steps_per_epoch)
    return TrainResult(folder.root, state.epoch, state.global_step, state.train_seconds, False, history)


def _record(folder: RunFolder, row: dict[str, Any], nets: Networks, config: RunConfig,
            state: Progress, runtime: Runtime, extras: dict[str, Any]) -> None:  # fmt: skip
    """Append the history row; keep the best checkpoint by validation L1 (the last without one)."""
    if not runtime.is_main:
        return
    _append_history(folder.history, row)
    if row["val_L1"] == "" or row["val_L1"] < state.best_val_l1:
        if row["val_L1"] != "":
            state.best_val_l1 = row["val_L1"]
        _save(folder.best, nets, config, state, runtime, extras, keep_previous=False)


def _agreed(*flags: bool, runtime: Runtime) -> tuple[bool, ...]:
    """Each flag, true on every rank when it is true on any (one all-reduce for all of them), so
    every rank stops at the same step."""
    if not runtime.distributed:
        return flags
    values = torch.tensor([1.0 if flag else 0.0 for flag in flags], device=runtime.device)
    dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return tuple(bool(v > 0) for v in values.tolist())


def make_train_loader(
    dataset: Dataset, sampler: EpochBatchSampler, workers: int, runtime: Runtime
) -> DataLoader:
    """One loader for the whole run: its workers persist, the sampler sets each epoch's order."""
    return DataLoader(
        dataset,
        batch_sampler=sampler,
        num_workers=workers,
        pin_memory=runtime.device.type == "cuda",  # page-locked batches copy asynchronously
        persistent_workers=workers > 0,
        prefetch_factor=4 if workers > 0 else None,
    )


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


def _account(state: Progress, result: StepResult, images: int, seconds: float) -> None:
    state.global_step += 1
    state.step_in_epoch += 1
    state.train_seconds += seconds
    state.images_seen += images
    if result.skipped:
        state.skipped_steps += 1
        return
    for key in ("loss_G", "loss_D", "loss_L1"):
        state.sums[key] += getattr(result, key)
    state.sums["n"] += 1


def _epoch_row(
    config: RunConfig, val_set: SliceDataset, nets: Networks, state: Progress, runtime: Runtime,
    epoch_start: float, epoch_images: int,
) -> dict[str, Any]:  # fmt: skip
    """Averages of the epoch's losses (over all ranks) and, on rank 0, validation metrics."""
    sums = dict(state.sums)
    if runtime.distributed:
        packed = torch.tensor([sums["loss_G"], sums["loss_D"], sums["loss_L1"], sums["n"]],
                              device=runtime.device, dtype=torch.float64)  # fmt: skip
        dist.all_reduce(packed)
        sums = dict(zip(("loss_G", "loss_D", "loss_L1", "n"), packed.tolist(), strict=True))
    n = max(sums["n"], 1.0)
    seconds = time.perf_counter() - epoch_start
    row: dict[str, Any] = {
        "epoch": state.epoch + 1,
        "loss_G": sums["loss_G"] / n,
        "loss_D": sums["loss_D"] / n,
        "loss_L1": sums["loss_L1"] / n,
        "val_L1": "", "val_PSNR": "", "val_SSIM": "",
        "seconds": round(seconds, 3),
        "images_per_s": round(epoch_images / max(seconds, 1e-9), 2),
        "skipped_steps": state.skipped_steps,
    }  # fmt: skip
    if runtime.is_main and len(val_set):
        row.update(validate(nets.inference_generator(), val_set, runtime, config.train.batch_size))
    return row


def _advance_epoch(nets: Networks, state: Progress) -> None:
    nets.sched_G.step()
    nets.sched_D.step()
    state.epoch += 1
    state.step_in_epoch = 0
    state.sums = {"loss_G": 0.0, "loss_D": 0.0, "loss_L1": 0.0, "n": 0.0}


@torch.no_grad()
def validate(G: nn.Module, dataset: SliceDataset, runtime: Runtime, batch_size: int) -> dict[str, float]:
    """L1 in the model's [-1, 1] range (comparable with loss_L1), PSNR and SSIM in the brain."""
    from mri2mri import metrics

    was_training = G.training
    G.eval()
    totals = {"val_L1": 0.0, "val_PSNR": 0.0, "val_SSIM": 0.0}
    count = 0
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    for batch in loader:
        source = runtime.to_device(batch.source)
        target = batch.target.to(runtime.device)
        mask = batch.mask.to(runtime.device)
        with runtime.autocast():
            fake = G(source)
        fake = fake.float().contiguous()
        totals["val_L1"] += float((fake - target).abs().mean(dim=(1, 2, 3)).sum())
        pred01, target01 = to_unit_range(fake).clamp(0, 1) * mask, to_unit_range(target)
        totals["val_PSNR"] += float(metrics.psnr(pred01, target01, mask).sum())
        totals["val_SSIM"] += float(metrics.ssim(pred01, target01, mask).sum())
        count += source.shape[0]
    G.train(was_training)
    return {k: v / max(count, 1) for k, v in totals.items()}


# --------------------------------------------------------------------------------------------
# Checkpoints, history, summary
# --------------------------------------------------------------------------------------------




def _save(path: Path, nets: Networks, config: RunConfig, state: Progress, runtime: Runtime,
          extras: dict[str, Any], keep_previous: bool = True) -> None:  # fmt: skip
    if not runtime.is_main:
        return
    payload: dict[str, Any] = {
        "format": 1,
        "G": nets.G.state_dict(),
        "D": nets.D.state_dict(),
        "opt_G": nets.opt_G.state_dict(),
        "opt_D": nets.opt_D.state_dict(),
        "sched_G": nets.sched_G.state_dict(),
        "sched_D": nets.sched_D.state_dict(),
        "scaler": nets.scaler.state_dict(),
        "epoch": state.epoch,
        "progress": state.state(),
        "config": config.to_dict(),
        **extras,
    }
    if nets.ema is not None:
        payload["ema"] = nets.ema.module.state_dict()
        payload["ema_n_averaged"] = nets.ema.n_averaged  # else the first update after a resume copies G
    try:
        save_checkpoint(path, payload, keep_previous=keep_previous)
    except OSError as error:
        raise TrainingStopped(
            f"{path}: could not write the checkpoint ({error.strerror or error}); training stopped, "
            "the previous checkpoint is intact"
        ) from None


def _restore(folder: RunFolder, nets: Networks, config: RunConfig, runtime: Runtime) -> Progress:
    if not has_checkpoint(folder.last):
        raise UserError(f"{folder.last}: nothing to resume (no checkpoint in {folder.checkpoints})")
    payload, used = load_latest(folder.last, map_location=runtime.device)
    saved = RunConfig.from_dict(payload["config"])
    if (saved.model, saved.data.image_size) != (config.model, config.data.image_size):
        raise UserError(f"{used}: the checkpoint's model or image size differs from this run's configuration")
    nets.G.load_state_dict(payload["G"])
    nets.D.load_state_dict(payload["D"])
    nets.opt_G.load_state_dict(payload["opt_G"])
    nets.opt_D.load_state_dict(payload["opt_D"])
    _match_parameter_layouts(nets.opt_G)
    _match_parameter_layouts(nets.opt_D)
    nets.sched_G.load_state_dict(payload["sched_G"])
    nets.sched_D.load_state_dict(payload["sched_D"])
    nets.scaler.load_state_dict(payload["scaler"])
    if nets.ema is not None and "ema" in payload:
        nets.ema.module.load_state_dict(payload["ema"])
        if "ema_n_averaged" in payload:
            nets.ema.n_averaged.copy_(payload["ema_n_averaged"])
    state = Progress(**payload["progress"])
    if runtime.is_main:
        _truncate_history(folder.history, state.epoch)
    return state


def _match_parameter_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give every optimiser state tensor its parameter's memory layout (channels_last or not).

    Fused Adam silently computes wrong updates when a state tensor's strides differ from its
    parameter's (PyTorch 2.13), as after resuming with another memory format.
    """
    for group in optimizer.param_groups:
        for param in group["params"]:
            state = optimizer.state.get(param, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == param.shape and value.stride() != param.stride():
                    state[key] = torch.empty_like(param, dtype=value.dtype).copy_(value)


def _history_text(rows: list[dict[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=HISTORY_COLUMNS, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _start_history(path: Path) -> None:
    write_text(path, _history_text([]))


def _append_history(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a", newline="", encoding="utf-8") as handle:
        csv.DictWriter(handle, fieldnames=HISTORY_COLUMNS).writerow(
            {k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()}
        )


def _truncate_history(path: Path, epochs_done: int) -> None:
    """Drop rows of epochs after the checkpoint, so a resumed run's history has no duplicates."""
    if not path.exists():
        _start_history(path)
        return
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [r for r in csv.DictReader(handle) if r.get("epoch") and int(r["epoch"]) <= epochs_done]
    write_text(path, _history_text(rows))  # whole or not at all: a crash here loses no row


def read_history(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _finish(folder: RunFolder, nets: Networks, config: RunConfig, state: Progress, runtime: Runtime,
            steps_per_epoch: int) -> None:  # fmt: skip
    """Run summary and loss-curve figure (rank 0)."""
    if not runtime.is_main:
        return
    summary = {
        "parameters_G": count_parameters(nets.G),
        "parameters_D": count_parameters(nets.D),
        "train_seconds": round(state.train_seconds, 2),
        "images_per_s": round(state.images_seen / max(state.train_seconds, 1e-9), 2),
        "epochs": state.epoch,
        "steps": state.global_step,
        "steps_per_epoch": steps_per_epoch,
        "skipped_steps": state.skipped_steps,
        "device": _device_name(runtime),
        "world_size": runtime.world_size,
        "precision": runtime.precision,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    folder.summary.write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")
    from mri2mri import figures

    if not read_history(folder.history):
        return  # stopped before the first history row: no curve to draw yet
    try:
        figures.plot_loss_curve(folder.history, folder.figures / "loss_curve.png", lang=config.train.lang)
        figures.plot_validation_curves(folder.history, folder.figures / "validation_curves.png", lang=config.train.lang)
    except OSError as error:
        raise TrainingStopped(f"{folder.figures}: could not write a figure ({error}); checkpoints are intact") from None


def _device_name(runtime: Runtime) -> str:
    if runtime.device.type == "cuda":
        return torch.cuda.get_device_name(runtime.device)
    return runtime.device.type
