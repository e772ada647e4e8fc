"""Surface normals: angular loss (optionally uncertainty-aware), angular-error metrics."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from probe.losses import angular_loss
from probe.metrics import NormalMetrics
from probe.tasks import register_task
from probe.tasks.base import DenseTask, pool_to_grid, upsample


@dataclass(frozen=True)
class NormalsTask(DenseTask):
    def out_channels(self, attrs, options):
        return 4 if options.get("uncertainty_aware") else 3

    def targets(self, raw, attrs, device):
        normals = torch.from_numpy(np.asarray(raw["normals"], dtype=np.float32)).to(device).permute(0, 3, 1, 2)
        norm = normals.norm(dim=1, keepdim=True)
        valid = (torch.isfinite(norm) & (norm > 0.5))[:, 0]
        # unit once per batch, shared by every head's loss
        unit = normals / norm.clamp(min=1e-8)
        return torch.where(valid.unsqueeze(1), unit, torch.zeros_like(unit)), valid

    def decode(self, logits, size, attrs, options):
        return upsample(logits, size, options.get("sample_stride", 1))

    def loss(self, prediction, target, valid, options):
        return angular_loss(prediction, target, valid, uncertainty_aware=bool(options.get("uncertainty_aware")))

    def new_metrics(self):
        return NormalMetrics()

    def ridge_target(self, target, valid, grid):
        return pool_to_grid(target, valid, grid)

    def ridge_decode(self, values, size, attrs):
        return upsample(values, size)


register_task(NormalsTask(name="normals", kind="dense", headline="within_11.25", needs=("normals",),
                          description="surface normals in the camera frame: scene (NYUv2, synthetic) or object (NAVI)"))
