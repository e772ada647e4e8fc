"""Weight-free baselines: raw pixel patches and dense HOG, both at stride 16."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from extract.backbones.spec import BackboneSpec

PATCH = 16


def _pad_to_patch(x: torch.Tensor, patch: int = PATCH) -> torch.Tensor:
    """Pad right/bottom to a multiple of ``patch`` (as timm's dynamic_img_pad does)."""
    h, w = x.shape[-2:]
    return F.pad(x, (0, (-w) % patch, 0, (-h) % patch))


class PixelPatches(nn.Module):
    """Each 16x16 patch of the normalised image, flattened: ``(B, 3*16*16, H/16, W/16)``."""

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.spec = spec

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = _pad_to_patch(x)
        b, _, h, w = x.shape
        patches = F.unfold(x, kernel_size=PATCH, stride=PATCH).view(b, 3 * PATCH * PATCH, h // PATCH, w // PATCH)
        return {"patch": patches}, patches.mean(dim=(2, 3))


class DenseHOG(nn.Module):
    """Dense HOG cells at stride 16, after MaskFeat's HOG target.

    Per RGB channel: Sobel gradients, 9 unsigned orientation bins over [0, pi) with
    magnitude-weighted linear interpolation between neighbouring bins, 8x8-pixel cells;
    the 2x2 cells of each 16x16 patch are concatenated (3 x 9 x 4 = 108 values) and
    L2-normalised per patch. MaskFeat's Gaussian spatial window is not applied.
    Input: images in [0, 1] (mean 0, std 1 in the spec). Output ``(B, 108, H/16, W/16)``.
    """

    bins = 9
    cell = 8

    def __init__(self, spec: BackboneSpec) -> None:
        super().__init__()
        self.spec = spec
        sobel = torch.tensor([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])
        self.register_buffer("kx", sobel.view(1, 1, 3, 3).repeat(3, 1, 1, 1), persistent=False)
        self.register_buffer("ky", sobel.t().contiguous().view(1, 1, 3, 3).repeat(3, 1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        # a fixed filter bank, computed in float32 whatever autocast the extractor runs under
        # (bf16 on a GPU would make the Sobel conv's output a different dtype from the histogram)
        with torch.autocast(device_type=x.device.type, enabled=False):
            return self._hog(x.float())

    def _hog(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        x = _pad_to_patch(x)
        b, c, h, w = x.shape
        padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
        gx = F.conv2d(padded, self.kx, groups=c)
        gy = F.conv2d(padded, self.ky, groups=c)
        magnitude = torch.sqrt(gx * gx + gy * gy)
        angle = torch.atan2(gy, gx) % math.pi                          # unsigned orientation
        position = angle / math.pi * self.bins - 0.5                   # bin centres at (k + 0.5) pi / 9
        lower = torch.floor(position)
        frac = position - lower
        lower_bin = lower.long() % self.bins
        upper_bin = (lower_bin + 1) % self.bins
        hist = torch.zeros(b, c, self.bins, h, w, dtype=x.dtype, device=x.device)
        hist.scatter_add_(2, lower_bin.unsqueeze(2), (magnitude * (1 - frac)).unsqueeze(2))
        hist.scatter_add_(2, upper_bin.unsqueeze(2), (magnitude * frac).unsqueeze(2))
        cells = F.avg_pool2d(hist.view(b, c * self.bins, h, w), self.cell) * self.cell ** 2
        hc, wc = cells.shape[-2:]
        per_patch = PATCH // self.cell
        patches = F.unfold(cells, kernel_size=per_patch, stride=per_patch)
        patches = patches.view(b, c * self.bins * per_patch ** 2, hc // per_patch, wc // per_patch)
        patches = F.normalize(patches, dim=1)
        return {"patch": patches}, patches.mean(dim=(2, 3))
