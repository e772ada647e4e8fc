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
    """1x1 conv -> GELU -> 1x1 conv (hidden 512 by default)."""

    input_kind = "concat"

    def __init__(self, *, in_channels: list[int], out_channels: int, hidden: int = 512, **_: object) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Conv2d(sum(in_channels), hidden, 1), nn.GELU(), nn.Conv2d(hidden, out_channels, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class ResidualConvUnit(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv2(F.relu(self.conv1(F.relu(x)))) + x


class FusionBlock(nn.Module):
    """DPT feature fusion: RCU(skip) + coarser path, then another RCU."""

    def __init__(self, channels: int, with_skip: bool = True) -> None:
        super().__init__()
        self.skip = ResidualConvUnit(channels) if with_skip else None
        self.out = ResidualConvUnit(channels)

    def forward(self, x: torch.Tensor, coarser: torch.Tensor | None = None) -> torch.Tensor:
        if coarser is not None and self.skip is not None:
            x = self.skip(x) + coarser
        return self.out(x)


class DPTHead(nn.Module):
    """The paper's DPT-style multi-layer fusion head (Probe3D ``DPT``), hidden 512.

    Each of the four layers is projected to ``hidden`` channels (1x1 for equal-resolution
    ViT maps, 3x3 for a CNN pyramid); ViT maps are first upsampled x2. Fusion runs from the
    deepest layer to the shallowest, resizing the running map to each layer's grid, then a
    3x3 -> ReLU -> 3x3 output block. ViT outputs come out at 8x the token grid (the
    paper's x2, x4 and final x2 make 16x; the last x2 is left to the task's upsampling to
    the target, which is the same bilinear step).
    """

    input_kind = "pyramid"

    def __init__(self, *, in_channels: list[int], out_channels: int, hidden: int = 512,
                 equal_grids: bool = True, **_: object) -> None:
        super().__init__()
        if len(in_channels) != 4:
            raise MidprobeError(f"the dpt head fuses exactly 4 layers, got {len(in_channels)}; pass four LAYERS")
        kernel = 1 if equal_grids else 3
        self.equal_grids = equal_grids
        self.project = nn.ModuleList(nn.Conv2d(c, hidden, kernel, padding=kernel // 2, bias=equal_grids)
                                     for c in in_channels)
        self.fuse = nn.ModuleList([FusionBlock(hidden), FusionBlock(hidden), FusionBlock(hidden),
                                   FusionBlock(hidden, with_skip=False)])
        self.out = nn.Sequential(nn.Conv2d(hidden, hidden, 3, padding=1), nn.ReLU(),
                                 nn.Conv2d(hidden, out_channels, 3, padding=1))

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        x = [proj(f) for proj, f in zip(self.project, feats)]
        if self.equal_grids:
            x = [F.interpolate(f, scale_factor=2, mode="nearest") for f in x]
        out = self.fuse[3](x[3])
        for level in (2, 1, 0):
            coarser = F.interpolate(out, size=x[level].shape[-2:], mode="bilinear", align_corners=True)
            out = self.fuse[level](x[level], coarser)
        scale = 4 if self.equal_grids else 2
        out = F.interpolate(out, scale_factor=scale, mode="bilinear", align_corners=True)
        return self.out(out)


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


def build_head(name: str, *, in_channels: list[int], out_channels: int, hidden: int = 512,
               equal_grids: bool = True) -> nn.Module:
    if name not in HEADS:
        known = ", ".join(sorted([*HEADS, *CLOSED_FORM]))
        raise MidprobeError(f"unknown head {name!r}; known heads: {known}")
    return HEADS[name](in_channels=in_channels, out_channels=out_channels, hidden=hidden, equal_grids=equal_grids)
