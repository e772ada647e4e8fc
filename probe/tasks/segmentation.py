"""Generic object (figure-ground) segmentation: binary, BCE, IoU / F-beta / accuracy / CorLoc."""

from __future__ import annotations

from dataclasses import dataclass


from probe.losses import masked_bce
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
        return upsample(logits, size, sample_stride, choices.upsample)[:, 0]

    def loss(self, prediction, target, valid, choices):
        return masked_bce(prediction, target, valid)

    def new_metrics(self, choices):
        return SegmentationMetrics(choices.aggregation)

    def ridge_target(self, target, valid, grid):
        return pool_to_grid(target.unsqueeze(1), valid, grid)

    def ridge_decode(self, values, size, attrs, choices):
        # a regressed foreground share: above one half is foreground, as a logit above 0
        return upsample(values, size)[:, 0] - 0.5


register_task(SegmentationTask(name="segmentation", kind="dense", headline="iou", needs=("foreground",),
                               description="generic object segmentation (figure-ground): VOC objectness, synthetic"))
