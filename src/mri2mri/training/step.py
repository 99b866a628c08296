"""One GAN step, in the report's order (and the pix2pix paper's algorithm):

1. generator forward: ``fake = G(source)``;
2. generator loss: adversarial loss of ``D(source, fake)`` against "real" plus
   ``lambda_L1 * L1(fake, target)`` (plus the optional SSIM, feature-matching and perceptual
   terms); generator update;
3. discriminator on the real pair and on the *detached* fake:
   ``loss_D = 0.5 * (loss(real, 1) + loss(fake, 0))``; discriminator update.

Kept apart from the loop so the step reads like the paper and can be run (and tested) alone.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from mri2mri import losses
from mri2mri.config import RunConfig
from mri2mri.runtime import Runtime
from mri2mri.training.networks import Networks, _features, _logits


@dataclass
class StepResult:
    """The losses of one step, and whether a non-finite loss or gradient skipped an update."""

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
