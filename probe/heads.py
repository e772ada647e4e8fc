"""Probe heads: a registry of small modules trained on standardised cached features.

``concat`` heads take the chosen layers upsampled to a common grid and concatenated,
``(B, sum C, h, w)``; ``pyramid`` heads take the list of per-layer maps. Every head
returns logits ``(B, k, h', w')``; the task decodes them to the target resolution.
"""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from cache import MidprobeError
from protocols import DENSE_DEFAULTS, DPTChoices

HEADS: dict[str, Callable[..., nn.Module]] = {}


def register_head(name: str):
    def wrap(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        HEADS[name] = factory
        return factory
    return wrap


class LinearHead(nn.Module):
    """One 1x1 convolution over the concatenated layers."""

    input_kind = "concat"

    def __init__(self, *, in_channels: list[int], out_channels: int, **_: object) -> None:
        super().__init__()
        self.conv = nn.Conv2d(sum(in_channels), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class MLPHead(nn.Module):
    """1x1 conv -> GELU -> 1x1 conv (hidden width: the protocols' default, 512)."""

    input_kind = "concat"

    def __init__(self, *, in_channels: list[int], out_channels: int, hidden: int = DENSE_DEFAULTS.hidden,
                 **_: object) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(sum(in_channels), hidden, 1), nn.GELU(), nn.Conv2d(hidden, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualConvUnit(nn.Module):
    """Two 3x3 convolutions and a skip, in one of three forms (``kind``):

    - ``"pre-activation"``: ``conv2(relu(conv1(relu(x)))) + x`` (Probe3D's CNN unit as written);
    - ``"post-activation"``: ``relu(conv2(relu(conv1(x)))) + x`` (its ViT unit);
    - ``"inplace-relu"``: ``conv2(relu(conv1(relu(x)))) + relu(x)`` — what the paper's CNN unit
      computes: it is built with ``inplace_relu=True``, so its first ReLU rectifies ``x`` itself
      and the skip adds the rectified input (midvision-probe evals/models/probes.py L263-306).
    """

    KINDS = ("pre-activation", "post-activation", "inplace-relu")

    def __init__(self, channels: int, post_activation: bool = False, *, kind: str | None = None) -> None:
        super().__init__()
        kind = kind or ("post-activation" if post_activation else "pre-activation")
        if kind not in self.KINDS:
            raise MidprobeError(f"residual unit {kind!r}: expected one of {', '.join(self.KINDS)}")
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)
        self.kind = kind
        self.post_activation = kind == "post-activation"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "post-activation":
            return F.relu(self.conv2(F.relu(self.conv1(x)))) + x
        rectified = F.relu(x)
        # the skip of the paper's unit sees the input after its in-place ReLU
        skip = rectified if self.kind == "inplace-relu" else x
        return self.conv2(F.relu(self.conv1(rectified))) + skip


class FusionBlock(nn.Module):
    """DPT feature fusion: RCU(skip) + coarser path, then another RCU."""

    def __init__(self, channels: int, with_skip: bool = True, post_activation: bool = False, *,
                 kind: str | None = None) -> None:
        super().__init__()
        self.skip = ResidualConvUnit(channels, post_activation, kind=kind) if with_skip else None
        self.out = ResidualConvUnit(channels, post_activation, kind=kind)

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None = None) -> torch.Tensor:
        if coarser is not None and self.skip is not None:
            x = self.skip(x) + coarser
        return self.out(x)


class DPTHead(nn.Module):
    """Probe3D's DPT-style multi-layer fusion head, hidden 512.

    Each of the four layers is projected to ``hidden`` channels (1x1 for equal-resolution
    ViT maps, 3x3 without bias for a CNN pyramid); ViT maps are then upsampled x2 (nearest).
    Fusion runs from the deepest layer to the shallowest, resizing the running map to each
    layer's grid (bilinear, align_corners), then x4 (ViT; ``dpt.vit_upsample``) or x2 (CNN,
    bilinear) and a 3x3 -> ReLU -> 3x3 output block. ``dpt.final_upsample="nearest"`` adds
    the paper's last x2 (nearest) inside the head, so ViT outputs come out at 16x the token
    grid; with ``"task"`` they come out at 8x and the task's upsampling to the target does
    the rest. ``dpt.vit_residual`` and ``dpt.cnn_residual`` pick the residual unit of each path
    (see :class:`ResidualConvUnit`).
    """

    input_kind = "pyramid"

    def __init__(self, *, in_channels: list[int], out_channels: int, hidden: int = DENSE_DEFAULTS.hidden,
                 equal_grids: bool = True, dpt: DPTChoices = DPTChoices(), **_: object) -> None:
        super().__init__()
        if len(in_channels) not in (1, 4):
            raise MidprobeError(f"the dpt head fuses exactly 4 layers (or one, fed to all four inputs), got "
                                f"{len(in_channels)}; pass four LAYERS")
        # a single-layer model (pixels, HOG) feeds its one map to all four inputs
        self.replicate = len(in_channels) == 1
        in_channels = list(in_channels) * 4 if self.replicate else list(in_channels)
        kernel = 1 if equal_grids else 3
        self.equal_grids = equal_grids
        self.choices = dpt
        # ViT maps take dpt.vit_residual's unit, a CNN pyramid dpt.cnn_residual's
        kind = dpt.vit_residual if equal_grids else dpt.cnn_residual
        self.project = nn.ModuleList(nn.Conv2d(c, hidden, kernel, padding=kernel // 2, bias=equal_grids)
                                     for c in in_channels)
        self.fuse = nn.ModuleList([FusionBlock(hidden, kind=kind) for _ in range(3)]
                                  + [FusionBlock(hidden, with_skip=False, kind=kind)])
        self.out = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, out_channels, 3, padding=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        feats = list(feats) * 4 if self.replicate else feats
        x = [proj(f) for proj, f in zip(self.project, feats)]
        if self.equal_grids:
            x = [F.interpolate(f, scale_factor=2, mode="nearest") for f in x]
        out = self.fuse[3](x[3])
        for level in (2, 1, 0):
            coarser = F.interpolate(out, size=x[level].shape[-2:], mode="bilinear", align_corners=True)
            out = self.fuse[level](x[level], coarser)
        if self.equal_grids and self.choices.vit_upsample == "nearest":
            out = F.interpolate(out, scale_factor=4, mode="nearest")
        else:
            out = F.interpolate(out, scale_factor=4 if self.equal_grids else 2, mode="bilinear", align_corners=True)
        out = self.out(out)
        if self.choices.final_upsample == "nearest":
            out = F.interpolate(out, scale_factor=2, mode="nearest")
        return out


@register_head("linear")
def linear(**kwargs: object) -> nn.Module:
    return LinearHead(**kwargs)


@register_head("mlp")
def mlp(**kwargs: object) -> nn.Module:
    return MLPHead(**kwargs)


@register_head("dpt")
def dpt(**kwargs: object) -> nn.Module:
    return DPTHead(**kwargs)


#: Closed-form heads: solved in one streaming pass (``probe.ridge``), never by SGD.
CLOSED_FORM = ("ridge",)


def build_head(name: str, *, in_channels: list[int], out_channels: int, hidden: int = DENSE_DEFAULTS.hidden,
               equal_grids: bool = True, dpt: DPTChoices = DPTChoices()) -> nn.Module:
    check_head(name)
    return HEADS[name](in_channels=in_channels, out_channels=out_channels, hidden=hidden, equal_grids=equal_grids,
                       dpt=dpt)


def check_head(name: str) -> None:
    """A one-line error for a head name that is neither trained nor closed-form."""
    if name not in HEADS and name not in CLOSED_FORM:
        known = ", ".join(sorted([*HEADS, *CLOSED_FORM]))
        raise MidprobeError(f"unknown head {name!r}; known heads: {known}")


class Probe(nn.Module):
    """A trained head and, optionally, a BatchNorm on its logits (``logit_norm``).

    The logit BatchNorm is Probe3D's objectness output norm: its affine parameters train
    with the head, and it stays in train mode when the probe is evaluated, so test logits
    are normalised with the statistics of their own test batch.
    """

    def __init__(self, head: nn.Module, *, out_channels: int, logit_norm: str = "none") -> None:
        super().__init__()
        if logit_norm not in ("none", "batchnorm-train"):
            raise MidprobeError(f"logit_norm {logit_norm!r}: expected none or batchnorm-train")
        self.head = head
        self.logit_norm = nn.BatchNorm2d(out_channels) if logit_norm == "batchnorm-train" else None

    def normalise(self, logits: torch.Tensor) -> torch.Tensor:
        return logits if self.logit_norm is None else self.logit_norm(logits)

    def forward(self, x: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        return self.normalise(self.head(x))

    def evaluating(self) -> "Probe":
        """Eval mode, except a logit BatchNorm, which the paper's code leaves in train mode."""
        self.eval()
        if self.logit_norm is not None:
            self.logit_norm.train()
        return self
