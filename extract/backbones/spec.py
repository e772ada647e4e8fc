"""One small spec per model: what to build, which weights, which layers, how to normalise."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class BackboneSpec:
    """A registered backbone.

    ``weights`` is ``"timm"`` (timm's pretrained tag of ``arch``), ``"url"`` (the source's
    published checkpoint at ``url``, read in ``checkpoint``'s format), ``"random:<seed>"``
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
    checkpoint: Any = None          # a CheckpointFormat when weights == "url"
    url: str = ""
    filename: str = ""              # the name it is cached under in torch hub's checkpoints folder
    checksum: tuple[str, str] | None = None   # (algorithm, published hex digest or prefix)
    variant: str = ""               # which checkpoint variant of the method (epochs, negatives, ...)
    dense_cls: bool = False         # ViT maps are [patch token, CLS token] concatenated: (B, 2C, h, w)
    global_kind: str = "default"    # the global vector: see timm_models.GLOBAL_KINDS
    pos_embed: str = "resample"     # ViT position table off its grid: "resample" (timm bicubic) | "sincos"
    layer_norm_eps: float | None = None   # LayerNorm eps of a ViT (None: timm's, 1e-6)
    options: dict[str, dict[str, Any]] = field(default_factory=dict)   # +option -> field overrides
    paper_options: tuple[str, ...] = ()       # the options that reproduce the paper's code
    notes: str = ""                 # where the paper's code differs

    @property
    def offered_options(self) -> tuple[str, ...]:
        """The ``+option`` names this model takes: ``paper`` (its paper options at once) when it has
        paper options, then each of its own."""
        return (("paper",) if self.paper_options else ()) + tuple(self.options)

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
