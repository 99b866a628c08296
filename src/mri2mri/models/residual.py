"""A generator that learns a correction to the intensity-map baseline instead of the whole image.

The intensity-map baseline (``mri2mri.baselines.IntensityMap``) maps each source intensity to the
mean target intensity of the training voxels with that source intensity. It already gets most of
a T2's contrast right and none of its context. ``TableResidual`` adds a network's output to that
table's image, so the network learns only what a voxel-wise lookup gets wrong (tissue borders,
partial volume, lesions): the residual learning of He et al. 2016 applied to a fixed, fitted
first guess. The last layer of the correction starts at zero, so an untrained model *is* the
table, and every step can only move it away from the table where the training pairs say so.

The table is a buffer of the module: it is fitted on the training subjects when training starts
(``set_table``), saved in every checkpoint with the weights, and applied by the same forward in
``test``, ``predict`` and the exported ONNX graph (a Gather and a linear interpolation), so
every path uses the same table.

At inference the module adds only ``correction_weight`` of the correction (0.75 by default): the
prediction is then a weighted average of the network's image and the table's, two estimates of
the T2 whose errors differ, the classic robust way to combine forecasts (Bates & Granger 1969;
Clemen 1989). On patients from another site the full correction, learnt with an adversarial loss,
over-shoots. On three training patients half of it was closest to the real T2 (README, "Half the
correction"); on 27, cross-validated by site, three quarters are the closest on the unit scale and
keep more of the real T2's contrast (README, "Quality at another hospital"). Training always uses
the whole correction, as dropout trains with its mask and predicts without it; the weight is a
plain attribute set from the run configuration, so the checkpoint's tensors are unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

RESIDUALS = ("none", "intensity-map")
TABLE_BINS = 256
CORRECTION_RANGE = 2.0


class TableResidual(nn.Module):
    """``G(x) = table(x) + correction(x)`` in the model's [-1, 1] range.

    ``table`` holds target intensities in [0, 1] at the centres of ``len(table)`` equal bins of
    the source intensity in [0, 1], applied by linear interpolation between bin centres
    (constant beyond the first and last): ``IntensityMap.__call__`` written for [-1, 1] tensors.
    It looks at the central channel of the input (the slice itself when the input carries 2.5D
    context). The correction network ends in Tanh; it is scaled by ``CORRECTION_RANGE`` = 2, so
    that it can move any voxel anywhere in [-1, 1] (oedema that a T1 shows mid-grey and a T2
    bright needs more than half the range). The sum may leave [-1, 1]; every consumer clamps to
    the unit range before use. In eval mode the correction is multiplied by ``correction_weight``
    (in [0, 1]); in train mode it is added whole.
    """

    def __init__(
        self,
        correction: nn.Module,
        n_bins: int = TABLE_BINS,
        table_channel: int | None = None,
        correction_weight: float = 1.0,
    ):
        super().__init__()
        if not 0.0 <= correction_weight <= 1.0:
            raise ValueError(f"correction_weight must be in [0, 1], got {correction_weight}")
        self.correction = correction
        self.correction_weight = float(correction_weight)
        # The input channel the table reads: the first source's own slice when the input stacks
        # several contrasts; None (runs before several sources existed) reads the centre channel.
        self.table_channel = table_channel
        # Until fitted: the identity map, a harmless table for a network built only to load weights.
        self.register_buffer("table", (torch.arange(n_bins, dtype=torch.float32) + 0.5) / n_bins)
        zero_last_layer(correction)

    @torch.no_grad()
    def set_table(self, table: torch.Tensor) -> None:
        """Copy a fitted table (target intensity in [0, 1] per source bin) into the buffer."""
        table = torch.as_tensor(table, dtype=self.table.dtype)
        if table.shape != self.table.shape:
            raise ValueError(f"table of {tuple(table.shape)} bins for a model of {tuple(self.table.shape)}")
        self.table.copy_(table)

    def lookup(self, x: torch.Tensor) -> torch.Tensor:
        """The table's image of ``table_channel`` of ``x`` (the centre by default): (B, C, H, W) -> (B, 1, H, W)."""
        centre = x.shape[1] // 2 if self.table_channel is None else self.table_channel
        unit = (x[:, centre : centre + 1].float() + 1) / 2
        n_bins = self.table.shape[0]
        # Position on the axis of bin centres: centre k sits at k (as np.interp over the centres).
        position = (unit * n_bins - 0.5).clamp(0, n_bins - 1)
        low = position.floor()
        weight = position - low
        low = low.long()
        high = (low + 1).clamp(max=n_bins - 1)
        value = self.table[low] * (1 - weight) + self.table[high] * weight
        return value * 2 - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = CORRECTION_RANGE if self.training else CORRECTION_RANGE * self.correction_weight
        correction = scale * self.correction(x)
        return self.lookup(x).to(correction.dtype) + correction


def zero_last_layer(network: nn.Module) -> None:
    """Zero the weights and bias of the last convolution of ``network``, so that its output is
    Tanh(0) = 0 at the start: the zero-initialised output layer of residual branches (Goyal et
    al. 2017; ControlNet's zero convolutions). Its own gradient is not zero, so it learns at once."""
    convolutions = [m for m in network.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    if not convolutions:
        raise ValueError("the correction network has no convolution to zero")
    last = convolutions[-1]
    nn.init.zeros_(last.weight)
    if last.bias is not None:
        nn.init.zeros_(last.bias)
