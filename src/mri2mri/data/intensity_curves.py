"""Random smooth monotonic intensity curves: another scanner's contrast for the source image.

Two scanners (or two sites' protocols) image the same tissues with different T1 contrast: after
per-volume normalisation their intensities still differ by a monotonic map that is neither
linear nor a gamma. Training on sources passed through random monotonic curves (the "random
intensity remapping" of synthetic-contrast training, as in SynthSeg, Billot et al. 2023, and the
random histogram-shift augmentations of nnU-Net and TorchIO) teaches the generator to read
anatomy rather than one site's exact grey levels. The target is never changed: the model must
still produce the real T2.

A curve is piecewise linear through ``n_knots + 1`` points at equal steps of the input; its
increments are ``1 + strength * u`` with ``u`` uniform in [-1, 1], normalised to end at 1, so
0 stays 0 (the background), 1 stays 1, and the map is strictly increasing for strength < 1.
"""

from __future__ import annotations

import torch


def curve_knots(uniform: torch.Tensor, strength: float) -> torch.Tensor:
    """Knot values (B, K + 1) from uniform draws (B, K) in [0, 1]: 0, increasing, ending at 1."""
    increments = 1 + strength * (2 * uniform - 1)  # (B, K), positive for strength < 1
    knots = torch.cumsum(increments, dim=1) / increments.sum(dim=1, keepdim=True)
    return torch.cat([torch.zeros_like(knots[:, :1]), knots], dim=1)


def apply_curves(unit: torch.Tensor, knots: torch.Tensor) -> torch.Tensor:
    """Map images (B, C, H, W) in [0, 1] through each row's curve (B, K + 1), by linear
    interpolation between the knots; every channel of a sample gets the same curve."""
    n_segments = knots.shape[1] - 1
    position = unit.clamp(0, 1) * n_segments
    low = position.floor().clamp(max=n_segments - 1)
    weight = position - low
    flat_low = low.long().flatten(1)  # (B, C*H*W)
    left = torch.gather(knots.to(unit.dtype), 1, flat_low).view_as(unit)
    right = torch.gather(knots.to(unit.dtype), 1, flat_low + 1).view_as(unit)
    return left + (right - left) * weight
