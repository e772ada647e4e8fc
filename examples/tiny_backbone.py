"""A tiny backbone to probe with ``MODEL=py:examples/tiny_backbone.py:build`` (offline, CPU, seconds).

The simplest form of the ``py:`` contract: a factory that returns an ``nn.Module`` whose
``forward`` takes ``(N, 3, H, W)`` normalised images and returns a dict of named ``(N, C, h, w)``
maps. midprobe reads the strides off the map sizes (8 and 16 here), normalises with the
module's ``mean`` / ``std`` and pools the last map for the global vector. ``build_tapped`` shows
the full contract (:class:`extract.backbones.factory.CustomBackbone`): submodules tapped with
hooks, declared strides and the model's own global vector.
"""

from __future__ import annotations

import torch
from torch import nn


class TinyConvNet(nn.Module):
    """Two conv stages: ``(N, 3, H, W)`` -> ``{"s8": (N, 16, H/8, W/8), "s16": (N, 32, H/16, W/16)}``."""

    mean = (0.5, 0.5, 0.5)      # the input normalisation, 0-1 pixel scale
    std = (0.25, 0.25, 0.25)

    def __init__(self, width: int = 16) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, width, 8, stride=8), nn.GELU())
        self.stage = nn.Sequential(nn.Conv2d(width, 2 * width, 2, stride=2), nn.GELU())

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        s8 = self.stem(x)
        return {"s8": s8, "s16": self.stage(s8)}


def build() -> nn.Module:
    """The factory ``py:examples/tiny_backbone.py:build`` calls (under ``torch.manual_seed(0)``)."""
    return TinyConvNet()


class _WithVector(TinyConvNet):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)["s16"].amax(dim=(2, 3))     # its own global vector: max-pooled


def build_tapped():
    """The whole contract: maps from two submodules, declared strides, the model's own global vector."""
    from extract.backbones.factory import CustomBackbone

    return CustomBackbone(_WithVector(), taps=("stem", "stage"), strides={"stem": 8, "stage": 16})
