"""Batched augmentation on the training device: the transforms of ``augment.py``, a batch at once.

``augment.py`` runs TorchIO on one sample at a time in the data loader (1 to 15 ms per 256 x 256
slice on a CPU core): enough for a CPU run, far too slow to feed a GPU that trains on thousands
of slices per second. :class:`BatchAugmentation` applies the same families of change to a whole
batch already on the device, with a handful of tensor operations:

- geometric, identical for source, target and mask: left-right flip (columns), small in-plane
  rotation, scaling and translation through one ``affine_grid`` + ``grid_sample`` (bilinear for
  the images, padded with each image's minimum; nearest for the mask);
- acquisition, on the source only (a different scanner for the input; the target stays clean):
  smooth multiplicative bias field (exponential of a cubic polynomial), Gaussian noise, gamma,
  a random monotonic intensity curve, applied in the [0, 1] range and clamped there, as
  ``augment.py`` does.

Every random draw is made for the *global* batch from a seed (the training loop derives it from
the run's seed and the global step), and process ``rank`` of ``world_size`` keeps rows
``rank::world_size``, the rows it holds of the global batch: the result does not depend on the
number of processes, and a resumed run draws the same changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mri2mri.config import AugmentationConfig
from mri2mri.data.intensity_curves import apply_curves, curve_knots

# Exponents (i, j) of x**i * y**j for a polynomial bias field of order 3 (TorchIO's default).
_BIAS_TERMS = [(i, j) for i in range(4) for j in range(4 - i)]


@dataclass(frozen=True)
class BatchAugmentation(AugmentationConfig):
    """Random flips and small affine maps on the whole sample; bias, noise and gamma on the source."""

    def __call__(
        self,
        source: torch.Tensor,
        target: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Augment (B, C, H, W) source, (B, 1, H, W) target and mask, all in the model's [-1, 1]
        (the mask in {0, 1}); B is this process's share of a global batch of B * world_size."""
        draws = _Draws(seed, source.shape[0] * world_size, rank, world_size, source.device)
        source, target, mask = self._geometric(draws, source, target, mask)
        source = self._acquisition(draws, source)
        return source, target, mask

    def _geometric(self, draws: _Draws, source, target, mask):
        batch, channels, height, width = source.shape
        flip = draws.bernoulli(self.flip_probability)  # (B,)
        moved = draws.bernoulli(self.affine_probability)
        angle = draws.uniform(-self.degrees, self.degrees) * math.pi / 180 * moved
        scale_x = 1 + draws.uniform(-self.scale, self.scale) * moved
        scale_y = 1 + draws.uniform(-self.scale, self.scale) * moved
        shift_x = draws.uniform(-self.translation_pixels, self.translation_pixels) * moved * 2 / width
        shift_y = draws.uniform(-self.translation_pixels, self.translation_pixels) * moved * 2 / height
        if not bool((flip | (moved > 0)).any()):
            return source, target, mask
        # theta maps output coordinates (normalised to [-1, 1]) to where they are read in the input.
        cos, sin = torch.cos(angle), torch.sin(angle)
        mirror = 1 - 2 * flip.float()  # -1 flips the columns (x)
        theta = torch.stack(
            [
                torch.stack([cos / scale_x * mirror, -sin / scale_x, shift_x], dim=1),
                torch.stack([sin / scale_y * mirror, cos / scale_y, shift_y], dim=1),
            ],
            dim=1,
        ).to(source.device, torch.float32)  # (B, 2, 3)
        grid = F.affine_grid(theta, [batch, 1, height, width], align_corners=False)  # (B, H, W, 2)
        images = torch.cat([source, target], dim=1).float()  # (B, C + 1, H, W)
        floor = images.amin(dim=(2, 3), keepdim=True)  # pad with each image's minimum
        images = F.grid_sample(images - floor, grid, mode="bilinear", padding_mode="zeros", align_corners=False) + floor
        images = images.to(source.dtype)
        if mask is not None:
            mask = F.grid_sample(mask.float(), grid, mode="nearest", padding_mode="zeros", align_corners=False)
        return images[:, :channels], images[:, channels:], mask

    def _acquisition(self, draws: _Draws, source: torch.Tensor) -> torch.Tensor:
        batch, _, height, width = source.shape
        biased = draws.bernoulli(self.bias_probability)
        coefficients = draws.uniform(-self.bias_coefficients, self.bias_coefficients, len(_BIAS_TERMS))
        noisy = draws.bernoulli(self.noise_probability)
        noise_std = draws.uniform(0.0, self.noise_std)
        noise = draws.normal(source.shape[1:])  # (B, C, H, W), on the device
        gammas = draws.bernoulli(self.gamma_probability)
        gamma = torch.exp(draws.uniform(-self.log_gamma, self.log_gamma) * gammas)
        curved = draws.bernoulli(self.curve_probability)
        knots = curve_knots(draws.uniform(0.0, 1.0, self.curve_knots), self.curve_strength)
        device = source.device
        unit = (source.float() + 1) * 0.5  # [-1, 1] -> [0, 1]: bias and gamma act on intensities
        y = torch.linspace(-1, 1, height, device=device).view(1, height, 1)
        x = torch.linspace(-1, 1, width, device=device).view(1, 1, width)
        terms = torch.stack([(x**i) * (y**j) for i, j in _BIAS_TERMS], dim=1)  # (1, T, H, W)
        log_field = (coefficients.to(device).view(batch, -1, 1, 1) * terms).sum(dim=1, keepdim=True)
        unit = unit * torch.exp(log_field * biased.to(device).view(batch, 1, 1, 1))
        unit = unit + noise * (noise_std * noisy).to(device).view(batch, 1, 1, 1)
        unit = unit.clamp(0.0, 1.0) ** gamma.to(device).view(batch, 1, 1, 1)
        remapped = apply_curves(unit.clamp(0.0, 1.0), knots.to(device))
        unit = torch.where(curved.to(device).view(batch, 1, 1, 1), remapped, unit)
        unit = torch.where(source > -1, unit, 0.0)  # an empty background stays empty (see augment.py)
        return (unit.clamp(0.0, 1.0) * 2 - 1).to(source.dtype)


class _Draws:
    """Random numbers for the global batch, of which this rank keeps rows ``rank::world_size``.

    Parameters come from a CPU generator (identical on every device); image-sized noise from a
    generator on the batch's device, so that it is never made on the host and copied over.
    """

    def __init__(self, seed: int, global_batch: int, rank: int, world_size: int, device: torch.device):
        self.cpu = torch.Generator().manual_seed(seed)
        self.device_generator = torch.Generator(device=device).manual_seed(seed)
        self.global_batch, self.rows, self.device = global_batch, slice(rank, None, world_size), device

    def uniform(self, low: float, high: float, *shape: int) -> torch.Tensor:
        values = torch.rand(self.global_batch, *shape, generator=self.cpu)
        return (low + (high - low) * values)[self.rows]

    def bernoulli(self, probability: float) -> torch.Tensor:
        return (torch.rand(self.global_batch, generator=self.cpu) < probability)[self.rows]

    def normal(self, shape: torch.Size) -> torch.Tensor:
        values = torch.randn(self.global_batch, *shape, generator=self.device_generator, device=self.device)
        return values[self.rows]
