"""What a task is: dense tasks train heads on feature maps; zero-shot tasks compare features."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F

from cache import MidprobeError, SplitView
from protocols import DenseChoices


@dataclass(frozen=True)
class Task:
    """A registered task.

    ``kind`` is ``"dense"`` (a head is trained on the train split, scored on test) or
    ``"zero_shot"`` (cached features are compared directly, nothing is trained).
    ``headline`` names the metric the leaderboard shows.
    """

    name: str
    kind: str
    headline: str
    needs: tuple[str, ...]            # arrays the dataset split must provide
    description: str

    def check_dataset(self, split: SplitView, keys: tuple[str, ...] | None = None,
                      absent: Mapping[str, str] | None = None) -> None:
        """A one-line error naming the arrays ``split`` lacks (and, from the store's
        ``absent_targets``, why its preparation left them out)."""
        missing = [key for key in (keys or self.needs) if not split.has(key)]
        if missing:
            why = "; ".join(f"{key}: {absent[key]}" for key in missing if absent and key in absent)
            raise MidprobeError(f"task {self.name!r} needs {', '.join(missing)} in split {split.name!r}, "
                                f"which has {', '.join(split.keys + split.relations)}" + (f" ({why})" if why else ""))


def upsample(x: torch.Tensor, size: tuple[int, int], stride: int = 1, mode: str = "bilinear") -> torch.Tensor:
    """Resize ``(B, C, h, w)`` to ``size`` (``mode`` bilinear or bicubic; identity when already there).

    With ``stride > 1``, only the output pixels ``(stride * i + stride // 2, ...)`` of that
    resize are computed — the same values, on a subsampled grid.
    """
    if stride == 1:
        if tuple(x.shape[-2:]) == tuple(size):
            return x
        return F.interpolate(x, size=size, mode=mode, align_corners=False)
    height, width = size
    ys = torch.arange(stride // 2, height, stride, dtype=x.dtype, device=x.device)
    xs = torch.arange(stride // 2, width, stride, dtype=x.dtype, device=x.device)
    gy, gx = torch.meshgrid((2 * ys + 1) / height - 1, (2 * xs + 1) / width - 1, indexing="ij")
    grid = torch.stack([gx, gy], dim=-1).expand(x.shape[0], -1, -1, -1)
    return F.grid_sample(x, grid, mode=mode, padding_mode="border", align_corners=False)


def subsample(x: torch.Tensor, stride: int) -> torch.Tensor:
    """The target pixels :func:`upsample` computes with the same stride (last two axes)."""
    return x if stride == 1 else x[..., stride // 2::stride, stride // 2::stride]


def subsample_raw(raw: Mapping[str, np.ndarray], stride: int) -> dict[str, np.ndarray]:
    """Stored per-image targets ``(B, H, W, ...)`` (numpy, or tensors) at the pixels :func:`subsample` keeps.

    Taking them before a task builds its targets keeps the per-pixel target work at the
    subsampled size (every task's targets are per-pixel functions of the stored arrays).
    """
    if stride == 1:
        return dict(raw)
    return {key: (value if isinstance(value, torch.Tensor) else np.asarray(value))[:, stride // 2::stride,
                                                                                  stride // 2::stride]
            for key, value in raw.items()}


def target_tensor(value: np.ndarray | torch.Tensor, device: torch.device,
                  dtype: torch.dtype | None = None) -> torch.Tensor:
    """A batch's stored target (numpy, or a tensor already on a device) as a tensor on ``device``
    (of ``dtype`` if given)."""
    tensor = value if isinstance(value, torch.Tensor) else torch.from_numpy(np.asarray(value))
    return tensor.to(device) if dtype is None else tensor.to(device=device, dtype=dtype)


def pool_to_grid(values: torch.Tensor, valid: torch.Tensor, grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """Area-average ``values (B, k, H, W)`` over valid pixels into ``grid`` cells.

    Returns the pooled values ``(B, k, h, w)`` and the cells where over half the pixels are valid.
    """
    weight = valid.unsqueeze(1).float()
    total = F.adaptive_avg_pool2d(values * weight, grid)
    share = F.adaptive_avg_pool2d(weight, grid)
    return total / share.clamp(min=1e-6), share[:, 0] > 0.5


@dataclass(frozen=True)
class DenseTask(Task, ABC):
    """A per-pixel prediction task. Subclasses define targets, decoding, loss and metrics;
    every method that a protocol can change takes the resolved :class:`DenseChoices`."""

    def target_keys(self, choices: DenseChoices) -> tuple[str, ...]:
        """The dataset arrays a batch must carry under ``choices``."""
        return self.needs

    @abstractmethod
    def out_channels(self, attrs: Mapping[str, Any], choices: DenseChoices) -> int:
        ...

    def no_data(self, attrs: Mapping[str, Any]) -> str:
        """What makes a target pixel "no data", for messages."""
        return "every pixel is marked no data"

    def check_valid(self, split: SplitView, attrs: Mapping[str, Any], choices: DenseChoices, *,
                    training: bool) -> None:
        """A one-line error when no pixel of ``split`` holds a valid target: a head would train on
        nothing, or a score (δ1 = 0 over zero pixels) would describe nothing. Reads chunk by chunk
        up to the first valid pixel: one chunk for any usable split."""
        keys = self.target_keys(choices) if training else self.needs
        arrays = {key: split.array(key) for key in keys}
        step = max(1, int(arrays[keys[0]].chunks[0]))
        for lo in range(0, split.num_images, step):
            raw = {key: array[lo:lo + step] for key, array in arrays.items()}
            if bool(self.targets(raw, attrs, torch.device("cpu"), choices, training=training)[1].any()):
                return
        raise MidprobeError(f"no pixel of the {split.num_images} images of split {split.name!r} holds a valid "
                            f"{self.name} target ({self.no_data(attrs)}); a probe would "
                            f"{'train on' if training else 'be scored over'} nothing: rebuild the dataset store "
                            "with measured targets")

    @abstractmethod
    def targets(self, raw: Mapping[str, np.ndarray], attrs: Mapping[str, Any], device: torch.device,
                choices: DenseChoices, training: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(target, valid)`` tensors from the dataset arrays of one batch (``training``: the
        training mask, which a protocol may define differently from the evaluation mask)."""
        ...

    @abstractmethod
    def decode(self, logits: torch.Tensor, size: tuple[int, int], attrs: Mapping[str, Any],
               choices: DenseChoices, sample_stride: int = 1) -> torch.Tensor:
        """Head output ``(B, k, h, w)`` -> the prediction at target resolution (every
        ``sample_stride``-th target pixel)."""
        ...

    @abstractmethod
    def loss(self, prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
             choices: DenseChoices) -> torch.Tensor:
        ...

    @abstractmethod
    def new_metrics(self, choices: DenseChoices) -> Any:
        ...

    @abstractmethod
    def ridge_target(self, target: torch.Tensor, valid: torch.Tensor,
                     grid: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Regression targets ``(B, k, h, w)`` at feature resolution and their validity ``(B, h, w)``."""
        ...

    @abstractmethod
    def ridge_decode(self, values: torch.Tensor, size: tuple[int, int], attrs: Mapping[str, Any],
                     choices: DenseChoices) -> torch.Tensor:
        """Ridge outputs ``(B, k, h, w)`` -> the prediction at target resolution."""
        ...


@dataclass(frozen=True)
class ZeroShotTask(Task, ABC):
    """A task scored by comparing cached features directly (no training)."""

    split: str = "test"

    @abstractmethod
    def evaluate(self, **kwargs: Any) -> dict[str, float]:
        ...
