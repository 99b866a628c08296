"""The networks of one run: G and D with their optimisers, schedules and wrappers.

Everything that decides which weights a run starts from lives here (the residual generator's
table fitted on the train split, a warm start from another run), so the step and the loop only
use networks, never assemble them.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

from mri2mri import losses
from mri2mri.baselines import IntensityMap
from mri2mri.checkpoint import load_latest
from mri2mri.config import RunConfig
from mri2mri.data.cache import SliceCache
from mri2mri.errors import UserError, first_line
from mri2mri.models import build_discriminator, build_generator
from mri2mri.models.residual import TABLE_BINS, TableResidual
from mri2mri.runfolder import find_checkpoint
from mri2mri.runtime import Runtime, maybe_compile, sync_batchnorm
from mri2mri.training.schedule import epoch_decay


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
    """The maps before each scale's logits, for the feature-matching loss."""
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
    decay = epoch_decay(train.epochs, train.lr_decay_epochs)
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


def residual_table(config: RunConfig, cache: SliceCache) -> torch.Tensor | None:
    """The intensity-map table of a residual generator, fitted on the train split only (the
    subjects the run learns from; never its validation or test subjects)."""
    if config.model.residual != "intensity-map":
        return None
    table = IntensityMap.fit_cache(cache, "train", n_bins=TABLE_BINS, background_in_first_bin=True)
    return torch.as_tensor(table.table, dtype=torch.float32)


# What must match for another run's weights to load into this run's networks.
_ARCHITECTURE_FIELDS = (
    "generator", "discriminator", "in_channels", "out_channels", "base_channels", "norm",
    "upsample", "disc_layers", "disc_scales", "spectral_norm", "residual",
)  # fmt: skip


def _warm_start(nets: Networks, config: RunConfig, checkpoint: Path) -> None:
    """Start from another run's G and D weights (``--init-from``): same networks required;
    optimisers, schedule and progress start afresh, and a residual generator keeps the table
    fitted on this run's own training subjects."""
    payload, used = load_latest(find_checkpoint(checkpoint), map_location="cpu")
    saved = RunConfig.from_dict(payload.get("config", {})).model
    mine = config.model
    differences = [
        f"{name} {getattr(saved, name)!r} (this run: {getattr(mine, name)!r})"
        for name in _ARCHITECTURE_FIELDS
        if getattr(saved, name) != getattr(mine, name)
    ]
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
