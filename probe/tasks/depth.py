"""Depth: 256 uniform bins, scale-invariant log + gradient loss; metric or relative by dataset."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

import torch

from probe.losses import depth_loss
from probe.metrics import DepthMetrics
from protocols import DenseChoices
from probe.tasks import register_task
from probe.tasks.base import DenseTask, pool_to_grid, subsample, target_tensor, upsample

#: Dataset ``depth_kind`` -> bin range in metres (metric scenes) or relative units (objects).
DEPTH_RANGES = {"metric": (0.001, 10.0), "relative": (0.01, 1.0)}
N_BINS = 256


def depth_range(attrs: Mapping[str, Any], choices: DenseChoices | None = None) -> tuple[float, float]:
    """The bins' range: the store's ``depth_range`` (or its kind's); relative depth starts at the
    protocol's ``depth_relative_min``."""
    lo, hi = attrs.get("depth_range") or DEPTH_RANGES[attrs.get("depth_kind", "metric")]
    if choices is not None and attrs.get("depth_kind") == "relative":
        lo = choices.depth_relative_min
    return float(lo), float(hi)


def bins_to_depth(logits: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    """Probe3D's bin prediction: ReLU + 0.1, normalise over bins, expectation over uniform bin centres.

    ``(B, 256, h, w)`` -> ``(B, 1, h, w)``.
    """
    prob = torch.relu(logits) + 0.1
    prob = prob / prob.sum(dim=1, keepdim=True)
    bins = torch.linspace(lo, hi, logits.shape[1], device=logits.device, dtype=logits.dtype)
    return torch.einsum("bkhw,k->bhw", prob, bins).unsqueeze(1)


@dataclass(frozen=True)
class DepthTask(DenseTask):
    def out_channels(self, attrs, choices):
        return N_BINS

    def no_data(self, attrs):
        unit = "m" if attrs.get("depth_kind", "metric") == "metric" else "(relative units)"
        return f"depth 0, NaN or beyond the bins' {depth_range(attrs)[1]:g} {unit}"

    def targets(self, raw, attrs, device, choices, training=False):
        depth = target_tensor(raw["depth"], device, torch.float32)
        _, hi = depth_range(attrs)
        valid = torch.isfinite(depth) & (depth > 0) & (depth <= hi)
        return torch.where(valid, depth, torch.zeros_like(depth)), valid

    def decode(self, logits, size, attrs, choices, sample_stride=1):
        # "quarter" (default, the paper's): bins are resolved at 1/4 of the target resolution
        # (its x4 upsampling of a ViT-B/16 grid) or at the head's output if finer; "grid": at the
        # feature grid, 16x cheaper on a CPU. Then the depth map goes to the target (bilinear).
        if choices.depth_bins == "grid":
            grid = tuple(logits.shape[-2:])
        else:
            quarter = (max(1, size[0] // 4), max(1, size[1] // 4))
            grid = (max(logits.shape[-2], quarter[0]), max(logits.shape[-1], quarter[1]))
        if grid == tuple(size) and sample_stride > 1:
            # the head already predicts at the target's size: the bins of the pixels the loss
            # reads are all it needs (the decode is per pixel; 256 channels at full size dominate)
            return bins_to_depth(subsample(logits, sample_stride), *depth_range(attrs, choices))[:, 0]
        depth = bins_to_depth(upsample(logits, grid), *depth_range(attrs, choices))
        return upsample(depth, size, sample_stride, choices.upsample)[:, 0]

    def loss(self, prediction, target, valid, choices):
        return depth_loss(prediction, target, valid, gradient=choices.depth_gradient)

    def new_metrics(self, choices):
        return DepthMetrics()

    def ridge_target(self, target, valid, grid):
        return pool_to_grid(target.unsqueeze(1), valid, grid)

    def ridge_decode(self, values, size, attrs, choices):
        lo, hi = depth_range(attrs, choices)
        return upsample(values, size)[:, 0].clamp(lo, hi)


register_task(DepthTask(name="depth", kind="dense", headline="d1", needs=("depth",),
                        description="monocular depth: scene (NYUv2, synthetic) or object (NAVI, relative)"))
