"""Turning cached float16 maps into head inputs: per-channel standardisation and a common grid."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cache import FeatureSplit
from cache.quantize import Quantized, dequantize_torch


def channel_stats(split: FeatureSplit, layers: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and std ``(C,) float64`` of each layer over the split (all images, all positions).

    Accumulated in float64 with dask, chunk by chunk: float16 sums overflow.
    """
    import dask

    lazy = {}
    for layer in layers:
        x = split.dask(layer).astype(np.float64)
        lazy[layer] = (x.mean(axis=(0, 2, 3)), (x * x).mean(axis=(0, 2, 3)))
    (computed,) = dask.compute(lazy, scheduler="threads")
    stats = {}
    for layer, (mean, sq) in computed.items():
        std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
        stats[layer] = (mean, np.where(std > 1e-6, std, 1.0))
    return stats


class Standardizer:
    """Applies train-split statistics (the paper's BatchNorm on features, with fixed statistics)."""

    def __init__(self, stats: Mapping[str, tuple[np.ndarray, np.ndarray]], device: torch.device) -> None:
        self.mean = {k: torch.tensor(m, dtype=torch.float32, device=device).view(1, -1, 1, 1) for k, (m, _) in stats.items()}
        self.inv_std = {k: (1.0 / torch.tensor(s, dtype=torch.float32, device=device)).view(1, -1, 1, 1)
                        for k, (_, s) in stats.items()}
        self.device = device

    def __call__(self, features: Mapping[str, np.ndarray | Quantized], layers: Sequence[str]) -> dict[str, torch.Tensor]:
        return {layer: (to_device(features[layer], self.device) - self.mean[layer]) * self.inv_std[layer]
                for layer in layers}


def to_device(x: np.ndarray | Quantized | torch.Tensor, device: torch.device) -> torch.Tensor:
    """Cached maps as float32 on ``device``: float16 moved then cast; int8 moved with its scales
    and dequantised there (half the bytes cross to the device)."""
    if isinstance(x, Quantized):
        return dequantize_torch(torch.from_numpy(x.values).to(device), torch.from_numpy(x.scale).to(device))
    x = x if isinstance(x, torch.Tensor) else torch.from_numpy(np.asarray(x))
    return x.to(device).float()


class BatchInputs:
    """One batch's features as head inputs, each form built at most once per batch.

    ``features`` maps layer -> ``(B, C, h, w)`` (float16 numpy or int8 :class:`Quantized` as
    cached, or a tensor).
    :meth:`raw` is the layer as float32; :meth:`standardized` applies the train-split
    statistics; :meth:`for_head` is what a head takes (the concatenation on the finest grid,
    or the list of maps), shared by every head on the same layers.
    """

    def __init__(self, features: Mapping[str, np.ndarray | torch.Tensor], standardizer: Standardizer) -> None:
        self.features = features
        self.standardizer = standardizer
        self._raw: dict[str, torch.Tensor] = {}
        self._standardized: dict[str, torch.Tensor] = {}
        self._heads: dict[tuple, torch.Tensor | list[torch.Tensor]] = {}

    def _tensor(self, layer: str) -> torch.Tensor:
        return to_device(self.features[layer], self.standardizer.device)

    def raw(self, layer: str) -> torch.Tensor:
        if layer not in self._raw:
            self._raw[layer] = self._tensor(layer)
        return self._raw[layer]

    def standardized(self, layer: str) -> torch.Tensor:
        if layer not in self._standardized:
            x = self._raw.get(layer)
            x = self._tensor(layer) if x is None else x
            self._standardized[layer] = (x - self.standardizer.mean[layer]).mul_(self.standardizer.inv_std[layer])
        return self._standardized[layer]

    def grid(self, layers: Sequence[str]) -> tuple[int, int]:
        shapes = [tuple(self.features[layer].shape[-2:]) for layer in layers]
        return max(h for h, _ in shapes), max(w for _, w in shapes)

    def for_head(self, kind: str, layers: Sequence[str]) -> torch.Tensor | list[torch.Tensor]:
        key = (kind, tuple(layers))
        if key not in self._heads:
            maps = [self.standardized(layer) for layer in layers]
            self._heads[key] = concat_on_grid(maps) if kind == "concat" else maps
        value = self._heads[key]
        return list(value) if isinstance(value, list) else value


def common_grid(maps: Sequence[torch.Tensor]) -> tuple[int, int]:
    """The finest grid among the maps."""
    return max(m.shape[-2] for m in maps), max(m.shape[-1] for m in maps)


def concat_on_grid(maps: Sequence[torch.Tensor]) -> torch.Tensor:
    """Bilinearly upsample every map to the finest grid and concatenate channels."""
    grid = common_grid(maps)
    return torch.cat([m if tuple(m.shape[-2:]) == grid else
                      F.interpolate(m, size=grid, mode="bilinear", align_corners=False) for m in maps], dim=1)
