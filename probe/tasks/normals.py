"""Surface normals: angular loss (optionally uncertainty-aware), angular-error metrics."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probe.losses import angular_loss
from probe.metrics import NormalMetrics
from probe.tasks import register_task
from probe.tasks.base import DenseTask, pool_to_grid, target_tensor, upsample


@dataclass(frozen=True)
class NormalsTask(DenseTask):
    def target_keys(self, choices):
        # the paper's training mask is "pixels with depth", so its batches carry depth too
        return ("normals", "depth") if choices.normals_mask == "depth" else ("normals",)

    def out_channels(self, attrs, choices):
        return 4 if choices.normals_loss == "uncertainty-aware" else 3

    def targets(self, raw, attrs, device, choices, training=False):
        normals = target_tensor(raw["normals"], device, torch.float32).permute(0, 3, 1, 2)
        norm = normals.norm(dim=1, keepdim=True)
        valid = (torch.isfinite(norm) & (norm > 0.5))[:, 0]
        # unit once per batch, shared by every head's loss
        unit = torch.where(valid.unsqueeze(1), normals / norm.clamp(min=1e-8), torch.zeros_like(normals))
        if training and choices.normals_mask == "depth":
            depth = target_tensor(raw["depth"], device, torch.float32)
            # pixels with depth but no normal keep a zero target: a constant pi/2 in the loss, as in the paper
            valid = torch.isfinite(depth) & (depth > 0)
        return unit, valid

    def decode(self, logits, size, attrs, choices, sample_stride=1):
        return upsample(logits, size, sample_stride, choices.upsample)

    def loss(self, prediction, target, valid, choices):
        return angular_loss(prediction, target, valid, uncertainty_aware=choices.normals_loss == "uncertainty-aware")

    def new_metrics(self, choices):
        return NormalMetrics()

    def ridge_target(self, target, valid, grid):
        return pool_to_grid(target, valid, grid)

    def ridge_decode(self, values, size, attrs, choices):
        return upsample(values, size)


register_task(NormalsTask(name="normals", kind="dense", headline="within_11.25", needs=("normals",),
                          description="surface normals in the camera frame: scene (NYUv2, synthetic) or object (NAVI)"))
