"""The entry point ``my_ssl_tiny = "my_ssl.backbones:build_tiny"`` of the group ``midprobe.backbones``."""

from __future__ import annotations

import torch
from torch import nn


class PatchEncoder(nn.Module):
    """A 16 px patch embedding and one residual MLP: ``(N, 3, H, W)`` -> ``[(N, 24, H/16, W/16)]``."""

    def __init__(self, dim: int = 24) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, 16, stride=16)
        self.mlp = nn.Sequential(nn.Conv2d(dim, 2 * dim, 1), nn.GELU(), nn.Conv2d(2 * dim, dim, 1))

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        tokens = self.patch(x)
        return [tokens, tokens + self.mlp(tokens)]        # maps named map0, map1 in the store


def build_tiny() -> nn.Module:
    """Random init (midprobe calls every factory under torch.manual_seed(0)); ImageNet mean/std."""
    return PatchEncoder()
