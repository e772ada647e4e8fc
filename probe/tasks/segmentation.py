"""Generic object (figure-ground) segmentation: binary, BCE, IoU / F-beta / accuracy / CorLoc.

``DenseChoices.segmentation_output`` orders the sigmoid and the resize: ``"logit"`` resizes the
logit to the target (BCE with logits, foreground where the logit > 0); ``"probability"`` takes the
sigmoid on the head's grid, resizes the probability (``BCELoss`` on it, foreground where > 0.5), as
the paper's objectness code does. The two agree when the head already outputs the mask's size.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cache import MidprobeError
from probe.losses import masked_bce, masked_bce_probability
from probe.metrics import SegmentationMetrics
from probe.tasks import register_task
from probe.tasks.base import DenseTask, pool_to_grid, target_tensor, upsample

IGNORE = 255


@dataclass(frozen=True)
class SegmentationTask(DenseTask):
    def out_channels(self, attrs, choices):
        return 1

    def targets(self, raw, attrs, device, choices, training=False):
        labels = target_tensor(raw["foreground"], device)
        valid = labels != IGNORE
        return (labels == 1).float(), valid

    def decode(self, logits, size, attrs, choices, sample_stride=1):
        if _probability(choices):
            return upsample(torch.sigmoid(logits), size, sample_stride, choices.upsample)[:, 0]
        return upsample(logits, size, sample_stride, choices.upsample)[:, 0]

    def loss(self, prediction, target, valid, choices):
        if _probability(choices):
            return masked_bce_probability(prediction, target, valid)
        return masked_bce(prediction, target, valid)

    def new_metrics(self, choices):
        return SegmentationMetrics(choices.aggregation, threshold=0.5 if _probability(choices) else 0.0)

    def ridge_target(self, target, valid, grid):
        return pool_to_grid(target.unsqueeze(1), valid, grid)

    def ridge_decode(self, values, size, attrs, choices):
        # a regressed foreground share: above one half is foreground (as a logit above 0)
        return upsample(values, size)[:, 0] - (0.0 if _probability(choices) else 0.5)


def _probability(choices) -> bool:
    if choices.segmentation_output not in ("logit", "probability"):
        raise MidprobeError(f"segmentation_output {choices.segmentation_output!r}: expected logit or probability")
    return choices.segmentation_output == "probability"


register_task(SegmentationTask(name="segmentation", kind="dense", headline="iou", needs=("foreground",),
                               description="generic object segmentation (figure-ground): VOC objectness, synthetic"))
