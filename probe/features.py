"""Turning cached float16 maps into head inputs: per-channel standardisation and a common grid."""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cache import FeatureSplit
from cache.quantize import Quantized, dequantize_torch


def chunk_moments(split: FeatureSplit, layers: Sequence[str], chunk: int) -> dict[str, np.ndarray]:
    """``{layer: (2, C) float64}``: the per-channel sum and sum of squares of one chunk of the split
    over its images and positions (float64: float16 sums overflow)."""
    lo = chunk * split.chunk_images
    hi = min(lo + split.chunk_images, split.num_images)
    out = {}
    for layer in layers:
        x = split.read(layer, lo, hi).astype(np.float64)
        out[layer] = np.stack([x.sum(axis=(0, 2, 3)), (x * x).sum(axis=(0, 2, 3))])
    return out


def stats_from_moments(split: FeatureSplit, layers: Sequence[str],
                       moments: Sequence[Mapping[str, np.ndarray]]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and std ``(C,) float64`` from every chunk's :func:`chunk_moments`, summed in
    chunk order: the same numbers whether the chunks were read at once or one augmented view at a time."""
    stats = {}
    for layer in layers:
        _, h, w = split.shape(layer)
        total = np.zeros_like(moments[0][layer])
        for m in moments:
            total = total + m[layer]
        mean, sq = total / (split.num_images * h * w)
        std = np.sqrt(np.maximum(sq - mean * mean, 0.0))
        stats[layer] = (mean, np.where(std > 1e-6, std, 1.0))
    return stats


def channel_stats(split: FeatureSplit, layers: Sequence[str]) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel mean and std ``(C,) float64`` of each layer over the split (all images, all positions).

    Accumulated in float64 chunk by chunk (read by the reader pool), summed in chunk order.
    """
    from cache.chunk_reader import results, submit

    chunks = range(-(-split.num_images // split.chunk_images))
    return stats_from_moments(split, layers, results([submit(chunk_moments, split, layers, c) for c in chunks]))


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
