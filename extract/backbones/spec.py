"""One small spec per model: what to build, which weights, which layers, how to normalise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    ``weights`` is ``"timm"`` (timm's pretrained tag of ``arch``), ``"random:<seed>"``
    or ``"none"`` (weight-free). ``layers`` are the indices passed to timm's
    ``forward_intermediates`` (0-based ViT blocks; ResNet feature levels 1-4 = res2-res5);
    ``layer_names`` name them in the feature store; ``strides`` are in input pixels.
    """

    name: str
    arch: str
    family: str                     # "vit" | "resnet" | "handcrafted"
    method: str
    source: str
    weights: str
    layers: tuple[int, ...]
    layer_names: tuple[str, ...]
    strides: tuple[int, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    license: str = ""
    model_kwargs: dict[str, Any] = field(default_factory=dict)
    drop_prefixes: tuple[str, ...] = ("head.", "fc.")

    def with_layers(self, indices: tuple[int, ...]) -> "BackboneSpec":
        """The same model tapping other layers (names and strides follow the family)."""
        names = tuple(layer_name(self.family, i) for i in indices)
        strides = tuple(layer_stride(self.family, i, self.strides[0]) for i in indices)
        return BackboneSpec(**{**self.__dict__, "layers": indices, "layer_names": names, "strides": strides})


def layer_name(family: str, index: int) -> str:
    if family == "vit":
        return f"block{index}"
    if family == "resnet":
        return f"res{index + 1}"
    if family == "timm":
        return f"level{index}"
    return "patch"


def layer_stride(family: str, index: int, vit_stride: int = 16) -> int:
    if family == "resnet":
        return 2 ** (index + 1)
    return vit_stride
