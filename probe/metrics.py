"""Evaluation metrics, accumulated image by image (or batch by batch where a protocol says so).

Every metric is computed per image over its valid pixels and averaged over images
(Probe3D's ``image_average``), except the pixel-pooled mean and median angular error and,
under the paper's protocol, segmentation (pooled per evaluation batch, averaged over
batches). Invalid target pixels (depth 0/NaN, zero normals, label 255) never count.
"""

from __future__ import annotations

from collections import defaultdict

import torch

from probe.losses import cosine
from probe.scores import Scored

F_BETA2 = 0.09   # the paper's code: beta = 0.3, so beta^2 = 0.09 (saliency papers often use 0.3)


class ImageAverage:
    """Accumulates per-image (per-``unit``) metric values and reports their means, with the values
    themselves (:class:`probe.scores.Scored`) for the report's intervals."""

    def __init__(self, unit: str = "image") -> None:
        self.sums: dict[str, float] = defaultdict(float)
        self.items: dict[str, list[torch.Tensor]] = defaultdict(list)
        self.count = 0
        self.unit = unit

    def add(self, values: dict[str, torch.Tensor]) -> None:
        n = None
        for key, v in values.items():
            v = v.detach().double().cpu().reshape(-1)
            self.sums[key] += float(v.sum())
            self.items[key].append(v)
            n = len(v)
        self.count += n or 0

    def result(self) -> Scored:
        return Scored({k: v / max(self.count, 1) for k, v in self.sums.items()}, unit=self.unit,
                      per_item={k: torch.cat(v).numpy() for k, v in self.items.items()})


#: A prediction whose spread over every valid test pixel is below this (relative to its magnitude)
#: is constant: the head collapsed.
CONSTANT = 1e-4
#: A segmentation head predicting the minority class at no more than this share of the valid test
#: pixels predicts one class everywhere (a few stray pixels do not make it a segmenter).
MINORITY = 1e-3


class Spread:
    """The range of a prediction over all valid test pixels, per channel, to flag a head that
    predicts one value (or one class) everywhere — a collapsed head, not a plain score."""

    def __init__(self) -> None:
        self.low: torch.Tensor | None = None
        self.high: torch.Tensor | None = None

    def add(self, values: torch.Tensor) -> None:
        """``values``: ``(P, C)`` predictions at the valid pixels."""
        if not len(values):
            return
        low, high = values.double().min(0).values.cpu(), values.double().max(0).values.cpu()
        self.low = low if self.low is None else torch.minimum(self.low, low)
        self.high = high if self.high is None else torch.maximum(self.high, high)

    def constant(self) -> bool:
        if self.low is None:
            return False
        scale = torch.maximum(self.low.abs(), self.high.abs()).clamp(min=1e-6)
        return bool(((self.high - self.low) <= CONSTANT * scale).all())


def match_scale_and_shift(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Per-image least-squares ``a * pred + b`` fitted to ``target`` over valid pixels (MiDaS / Probe3D).

    ``(B, H, W)`` inputs; a singular system (constant prediction, no valid pixel) leaves
    the image unchanged.
    """
    m = valid.double()
    p, t = pred.double(), target.double()
    a00, a01, a11 = (m * p * p).sum((1, 2)), (m * p).sum((1, 2)), m.sum((1, 2))
    b0, b1 = (m * p * t).sum((1, 2)), (m * t).sum((1, 2))
    det = a00 * a11 - a01 * a01
    ok = det.abs() > 1e-12
    safe = torch.where(ok, det, torch.ones_like(det))
    scale = torch.where(ok, (a11 * b0 - a01 * b1) / safe, torch.ones_like(det))
    shift = torch.where(ok, (-a01 * b0 + a00 * b1) / safe, torch.zeros_like(det))
    return (scale.view(-1, 1, 1) * p + shift.view(-1, 1, 1)).to(pred.dtype)


def depth_metrics(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *, prefix: str = "") -> dict[str, torch.Tensor]:
    """Per-image δ1, δ2, δ3 (max ratio < 1.25^k), AbsRel and RMSE (metres) over valid pixels."""
    m = valid.float()
    n = m.sum((1, 2)).clamp(min=1)
    p = pred.clamp(min=1e-9)
    t = torch.where(valid, target, torch.ones_like(target))
    ratio = torch.maximum(t / p, p / t)
    out = {f"{prefix}d{k}": ((ratio < 1.25 ** k).float() * m).sum((1, 2)) / n for k in (1, 2, 3)}
    out[f"{prefix}abs_rel"] = ((pred - t).abs() / t * m).sum((1, 2)) / n
    out[f"{prefix}rmse"] = (((pred - t) ** 2 * m).sum((1, 2)) / n).sqrt()
    return out


class DepthMetrics:
    """Scale-aware metrics and the same after per-image scale-and-shift alignment (``aligned_*``)."""

    def __init__(self) -> None:
        self.avg = ImageAverage()
        self.spread = Spread()

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        values = depth_metrics(pred, target, valid)
        values.update(depth_metrics(match_scale_and_shift(pred, target, valid), target, valid, prefix="aligned_"))
        self.avg.add(values)
        self.spread.add(pred[valid].reshape(-1, 1))

    def result(self) -> dict[str, float]:
        out = self.avg.result()
        out.flags = ["collapsed"] if self.spread.constant() else []
        return out


class NormalMetrics:
    """Angular error (degrees): per-image % within 11.25/22.5/30 and RMSE, image-averaged;
    mean and median over all valid pixels (median from a 0.01-degree histogram)."""

    bins = 18000

    def __init__(self) -> None:
        self.avg = ImageAverage()
        self.hist = torch.zeros(self.bins, dtype=torch.float64)
        self.total = 0.0
        self.spread = Spread()

    def update(self, pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        cos = cosine(pred[:, :3], target).clamp(-1, 1)
        err = torch.rad2deg(torch.acos(cos))
        m = valid.float()
        n = m.sum((1, 2)).clamp(min=1)
        values = {f"within_{t}": ((err < t).float() * m).sum((1, 2)) / n for t in (11.25, 22.5, 30.0)}
        values["rmse_deg"] = ((err ** 2 * m).sum((1, 2)) / n).sqrt()
        self.avg.add(values)
        unit = pred[:, :3] / pred[:, :3].norm(dim=1, keepdim=True).clamp(min=1e-12)
        self.spread.add(unit.permute(0, 2, 3, 1)[valid])
        e = err[valid].double()
        self.total += float(e.sum())
        # the histogram lives on the CPU whatever device the predictions are on
        self.hist += torch.bincount((e * 100).long().clamp(0, self.bins - 1), minlength=self.bins).double().cpu()

    def result(self) -> dict[str, float]:
        out = self.avg.result()
        count = float(self.hist.sum())
        out["mean_deg"] = self.total / max(count, 1)
        cdf = torch.cumsum(self.hist, 0)
        out["median_deg"] = float(torch.searchsorted(cdf, torch.tensor(count / 2, dtype=torch.float64))) / 100 + 0.005
        out.flags = ["collapsed"] if self.spread.constant() else []
        return out


def segmentation_metrics(score: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *,
                         beta2: float = F_BETA2, threshold: float = 0.0) -> dict[str, torch.Tensor]:
    """Per image: IoU, F-beta, pixel accuracy, CorLoc (IoU >= 0.5), with the paper's formulas.

    ``score > threshold`` is foreground (0 for a logit, i.e. sigmoid > 0.5; 0.5 for a probability);
    ``target`` {0, 1}; ``valid`` bool.
    F-beta = (1 + b2) P R / (b2 P + R) with P, R from per-image counts (1e-6 guards).
    """
    pred = (score > threshold) & valid
    gt = (target == 1) & valid
    tp = (pred & gt).sum((1, 2)).double()
    fp = (pred & ~gt).sum((1, 2)).double()
    fn = (~pred & gt & valid).sum((1, 2)).double()
    union = (pred | gt).sum((1, 2)).double()
    iou = tp / (union + 1e-6)
    precision, recall = tp / (tp + fp + 1e-6), tp / (tp + fn + 1e-6)
    f_beta = (1 + beta2) * precision * recall / (beta2 * precision + recall + 1e-6)
    correct = ((pred == gt) & valid).sum((1, 2)).double()
    accuracy = correct / valid.sum((1, 2)).double().clamp(min=1)
    return {"iou": iou, "f_beta": f_beta, "pixel_accuracy": accuracy, "corloc": (iou >= 0.5).double(),
            "precision": precision, "recall": recall}


def pooled_segmentation_metrics(score: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *,
                                beta2: float = F_BETA2, threshold: float = 0.0) -> dict[str, float]:
    """The metrics of one evaluation batch with its pixels pooled, as the paper's objectness code
    computes them: TP/FP/FN/union over the whole batch array, P and R (1e-6 guards), F-beta from
    them, IoU, accuracy over the batch's (valid) pixels, and CorLoc = 1 if the pooled IoU >= 0.5.
    """
    pred = (score > threshold) & valid
    gt = (target == 1) & valid
    tp, fp = float((pred & gt).sum()), float((pred & ~gt).sum())
    fn, union = float((~pred & gt).sum()), float((pred | gt).sum())
    precision, recall = tp / (tp + fp + 1e-6), tp / (tp + fn + 1e-6)
    iou = tp / (union + 1e-6)
    return {"iou": iou, "f_beta": (1 + beta2) * precision * recall / (beta2 * precision + recall + 1e-6),
            "pixel_accuracy": float(((pred == gt) & valid).sum()) / max(float(valid.sum()), 1.0),
            "corloc": float(iou >= 0.5), "precision": precision, "recall": recall}


class SegmentationMetrics:
    """Per-image metrics averaged over images (``aggregation="image"``), or the paper's per-batch
    pooling averaged over evaluation batches (``"batch"``: every update is one batch, the partial
    last one included with the same weight)."""

    def __init__(self, aggregation: str = "image", *, threshold: float = 0.0) -> None:
        if aggregation not in ("image", "batch"):
            raise ValueError(f"aggregation {aggregation!r}: expected image or batch")
        self.aggregation = aggregation
        self.threshold = threshold              # score > threshold is foreground (0 logit, 0.5 probability)
        self.avg = ImageAverage("image" if aggregation == "image" else "batch")
        self.classes = [0, 0]      # valid pixels predicted background, foreground

    def update(self, score: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> None:
        foreground = int(((score > self.threshold) & valid).sum())
        self.classes[0] += int(valid.sum()) - foreground
        self.classes[1] += foreground
        if self.aggregation == "image":
            self.avg.add(segmentation_metrics(score, target, valid, threshold=self.threshold))
        else:
            pooled = pooled_segmentation_metrics(score, target, valid, threshold=self.threshold)
            self.avg.add({k: torch.tensor([v]) for k, v in pooled.items()})

    def result(self) -> dict[str, float]:
        out = self.avg.result()
        out["f_beta_beta2"] = F_BETA2
        if self.aggregation == "batch":
            out["batches"] = float(self.avg.count)
        # one class at (nearly) every valid test pixel: a collapsed head (its IoU is ~0 or the foreground share)
        out.flags = ["collapsed"] if sum(self.classes) and min(self.classes) <= MINORITY * sum(self.classes) else []
        return out


