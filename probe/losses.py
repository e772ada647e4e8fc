"""Training losses, following the paper's code (Probe3D lineage)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def sig_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *, sigma: float = 0.85,
             eps: float = 1e-3) -> torch.Tensor:
    """Scale-invariant log loss (AdaBins / DINOv2 form), pooled over every valid pixel of the batch.

    ``pred``, ``target`` ``(B, H, W)`` metres; ``valid`` ``(B, H, W)`` bool.
    """
    g = torch.log(pred[valid] + eps) - torch.log(target[valid] + eps)
    if g.numel() == 0:
        return pred.sum() * 0
    return torch.sqrt(torch.clamp(g.pow(2).mean() - sigma * g.mean().pow(2), min=1e-12))


def gradient_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *, eps: float = 1e-3) -> torch.Tensor:
    """Multi-scale log-depth gradient matching (MegaDepth), scales 1, 2, 4, 6 as in Probe3D.

    Probe3D slices ``[::s, ::s]`` on its input's leading axes, which for a batched tensor
    subsamples the batch and channel axes; here the slicing is over the spatial axes, as
    intended. ``(B, H, W)`` inputs.
    """
    total = pred.new_zeros(())
    for step in (1, 2, 4, 6):
        p, t, v = pred[:, ::step, ::step], target[:, ::step, ::step], valid[:, ::step, ::step].float()
        n = v.sum()
        if n == 0:
            continue
        diff = (torch.log(p + eps) - torch.log(t + eps)) * v
        v_grad = (diff[:, :-2, :] - diff[:, 2:, :]).abs() * v[:, :-2, :] * v[:, 2:, :]
        h_grad = (diff[:, :, :-2] - diff[:, :, 2:]).abs() * v[:, :, :-2] * v[:, :, 2:]
        total = total + (v_grad.sum() + h_grad.sum()) / n
    return total


def gradient_loss_across_batch(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *,
                               eps: float = 1e-3) -> torch.Tensor:
    """The paper's "gradient" term exactly as its indexing computes it (a bug, reproduced by ``paper``).

    The paper's code slices ``(B, 1, H, W)`` tensors as if they were ``(H, W)``: ``[::s, ::s]``
    subsamples the *batch* (and the size-1 channel axis), ``d[0:-2, :] - d[2:, :]`` compares the
    log residual of image b with that of image b+2, and the "horizontal" ``d[:, 0:-2]`` slices the
    channel axis and is empty. So at steps 1, 2, 4, 6 this is the L1 difference of log residuals
    between images two apart (of the subsampled batch), over pixels valid in both, divided by the
    valid pixels of that sub-batch. ``(B, H, W)`` inputs.
    """
    total = pred.new_zeros(())
    for step in (1, 2, 4, 6):
        p, t, v = pred[::step], target[::step], valid[::step].float()
        n = v.sum()
        if n == 0:
            continue
        diff = (torch.log(p + eps) - torch.log(t + eps)) * v
        across = (diff[:-2] - diff[2:]).abs() * v[:-2] * v[2:]
        total = total + across.sum() / n
    return total


GRADIENT_LOSSES = {"spatial": gradient_loss, "across-batch": gradient_loss_across_batch}


def depth_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *,
               gradient: str = "spatial") -> torch.Tensor:
    """Probe3D's ``DepthLoss``: 10 x scale-invariant log loss + 0.5 x gradient loss (``gradient``:
    ``"spatial"`` or the paper's ``"across-batch"`` indexing)."""
    return 10.0 * sig_loss(pred, target, valid) + 0.5 * GRADIENT_LOSSES[gradient](pred, target, valid)


def cosine(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Cosine similarity over dim 1 of ``(B, 3, H, W)`` maps, as ``F.cosine_similarity``.

    Written out because ``F.cosine_similarity`` over a strided channel axis is ~30x slower
    on the CPU, and the angular loss runs once per head per batch at target resolution.
    """
    dot = (a * b).sum(dim=1)
    return dot / ((a * a).sum(dim=1).sqrt() * (b * b).sum(dim=1).sqrt()).clamp(min=eps)


class _MeanAngle(torch.autograd.Function):
    """Weighted sum of angles between ``pred (B, 3, H, W)`` and unit ``target``, with a written-out backward.

    The same value and gradient as autograd through cosine, clamp and acos, in a third of
    the full-resolution passes: this loss runs once per head per batch at target resolution.
    """

    @staticmethod
    def forward(ctx, pred: torch.Tensor, target: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        norm = (pred * pred).sum(dim=1).sqrt_().clamp_(min=1e-8)
        cos = (pred * target).sum(dim=1).div_(norm)
        inside = (cos > -1 + eps) & (cos < 1 - eps)
        angle = torch.acos(cos.clamp(-1 + eps, 1 - eps))
        ctx.save_for_backward(pred, target, weight, cos, norm, inside)
        return (angle * weight).sum()

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        pred, target, weight, cos, norm, inside = ctx.saved_tensors
        # d angle / d cos = -1 / sqrt(1 - cos^2) where unclamped; d cos / d pred = (t - cos p / |p|) / |p|
        scale = torch.where(inside, -torch.rsqrt((1 - cos * cos).clamp_(min=1e-12)), torch.zeros_like(cos))
        scale = scale.mul_(weight).div_(norm).mul_(grad)
        grad_pred = target * scale.unsqueeze(1) - pred * (scale * cos / norm).unsqueeze(1)
        return grad_pred, None, None, None


def angular_loss(pred: torch.Tensor, target: torch.Tensor, valid: torch.Tensor, *,
                 uncertainty_aware: bool = False, eps: float = 1e-4) -> torch.Tensor:
    """Mean angle (radians) between predicted and true normals over valid pixels.

    ``pred`` ``(B, 3 or 4, H, W)``, ``target`` ``(B, 3, H, W)`` unit vectors (the normals
    task normalises them once per batch), ``valid`` ``(B, H, W)``. With ``uncertainty_aware``
    the 4th channel is a concentration kappa (Bae et al.):
    loss = kappa * angle + log(1 + exp(-kappa pi)) - log(1 + kappa^2).
    """
    count = valid.sum()
    if count == 0:
        return pred.sum() * 0
    if not uncertainty_aware:
        return _MeanAngle.apply(pred[:, :3], target, valid.float() / count, eps)
    angle = torch.acos(cosine(pred[:, :3], target).clamp(-1 + eps, 1 - eps))
    kappa = F.elu(pred[:, 3]) + 1.01
    loss = torch.log1p(torch.exp(-kappa * torch.pi)) - torch.log1p(kappa.pow(2)) + kappa * angle
    return loss[valid].mean()


def masked_bce(logits: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy on logits ``(B, H, W)`` against {0, 1} targets, ignoring invalid pixels."""
    if not valid.any():
        return logits.sum() * 0
    return F.binary_cross_entropy_with_logits(logits[valid], target[valid].float())


def masked_bce_probability(prob: torch.Tensor, target: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """``nn.BCELoss`` on probabilities ``(B, H, W)`` in [0, 1] against {0, 1} targets over valid
    pixels (its log terms clamped at -100), computed in float32."""
    if not valid.any():
        return prob.sum() * 0
    return F.binary_cross_entropy(prob[valid].float(), target[valid].float())
