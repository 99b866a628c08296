"""Batch normalisation over the global batch of all processes, on any device.

PyTorch's ``nn.SyncBatchNorm`` runs on GPUs only (its statistics kernels have no CPU version,
and DistributedDataParallel refuses it on CPU modules). Distributed training on CPUs with gloo,
used by the tests and by CPU clusters, needs the same thing: :class:`GlobalBatchNorm2d` computes
the mean and variance of the whole global batch with two differentiable all-reduces, so that N
processes with B / N images each normalise exactly like one process with B images.
:func:`convert_global_batchnorm` swaps it in for every ``BatchNorm2d`` of a network.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


def _world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes whose backward is the sum of the gradients over processes: every rank
    uses the summed statistics, so every rank's loss depends on every rank's input."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        total = tensor.clone()
        dist.all_reduce(total)
        return total

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        total = grad.clone()
        dist.all_reduce(total)
        return total


class GlobalBatchNorm2d(nn.BatchNorm2d):
    """``BatchNorm2d`` whose training statistics are those of the batch across all processes.

    Outside training, or in a single process, it is exactly ``nn.BatchNorm2d``. The statistics
    are computed in two passes (mean, then the mean of squared deviations) in float32, so they
    match a single process's to rounding; their all-reduces carry gradients back to every rank,
    as ``nn.SyncBatchNorm`` does.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or _world_size() == 1:
            return super().forward(x)
        channels = x.shape[1]
        values = x.float()
        count = torch.tensor([values.numel() / channels], device=x.device)  # this rank's pixels per channel
        # Pass 1: global mean.
        sums = _AllReduceSum.apply(torch.cat([values.sum(dim=(0, 2, 3)), count]))
        total = sums[-1]
        mean = sums[:channels] / total  # (C,)
        centred = values - mean.view(1, -1, 1, 1)
        # Pass 2: global biased variance, as BatchNorm normalises with.
        variance = _AllReduceSum.apply(centred.pow(2).sum(dim=(0, 2, 3))) / total  # (C,)
        if self.track_running_stats:
            self._update_running_stats(mean.detach(), variance.detach(), total.detach())
        scale = torch.rsqrt(variance + self.eps)
        if self.affine:
            scale = scale * self.weight
        out = centred * scale.view(1, -1, 1, 1)
        if self.affine:
            out = out + self.bias.view(1, -1, 1, 1)
        return out.to(x.dtype)

    @torch.no_grad()
    def _update_running_stats(self, mean: torch.Tensor, variance: torch.Tensor, total: torch.Tensor) -> None:
        self.num_batches_tracked.add_(1)
        momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
        unbiased = variance * total / (total - 1).clamp_min(1)  # running_var is unbiased, as in BatchNorm
        self.running_mean.lerp_(mean.to(self.running_mean.dtype), momentum)
        self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)


def convert_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every ``BatchNorm2d`` of ``module`` by :class:`GlobalBatchNorm2d`, keeping its
    parameters and running statistics; returns the converted module. Convert before moving the
    network to its device (the new layers are made on the CPU)."""
    if isinstance(module, nn.BatchNorm2d) and not isinstance(module, GlobalBatchNorm2d):
        converted = GlobalBatchNorm2d(
            module.num_features, module.eps, module.momentum, module.affine, module.track_running_stats
        )
        converted.load_state_dict(module.state_dict())
        return converted.train(module.training)
    for name, child in module.named_children():
        setattr(module, name, convert_global_batchnorm(child))
    return module
