"""The validation scores of each epoch: what picks the best checkpoint and fills history.csv.

Scored in the brain mask, on the validation split only, with the weights ``test`` will use
(the EMA copy when there is one: see ``Networks.inference_generator``).
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader

from mri2mri.data.dataset import SliceDataset, to_unit_range
from mri2mri.runtime import Runtime


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
