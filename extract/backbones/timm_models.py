"""timm architectures behind one contract: dense maps per tapped layer plus a global vector."""

from __future__ import annotations

from functools import partial

import numpy as np
import torch
from torch import nn

from cache import MidprobeError
from extract.backbones.spec import BackboneSpec

#: the global vector, per family: "default" is timm's pre-logits head (the final-LayerNorm CLS
#: token for a ViT, the global-average-pooled last stage for a CNN); "cls-final-norm" the CLS
#: token after the final LayerNorm; "cls-raw-last" the CLS token of the last tapped block's
#: output, before any norm (the paper's NIGHTS vector: dino.py:208, mae.py:216-219); "gap" the
#: spatial mean of the last tapped layer's map (patch tokens only for a ViT).
GLOBAL_KINDS = {"vit": ("default", "cls-final-norm", "cls-raw-last", "gap"),
                "resnet": ("default", "gap"), "timm": ("default", "gap"), "handcrafted": ("default",),
                "hf-cnn": ("default", "gap"), "custom": ("default", "gap")}


def check_global_kind(spec: BackboneSpec) -> None:
    allowed = GLOBAL_KINDS.get(spec.family, ("default",))
    if spec.global_kind not in allowed:
        raise MidprobeError(f"global vector {spec.global_kind!r} does not apply to {spec.name} ({spec.family}); "
                            f"expected one of {', '.join(allowed)}")


class TimmBackbone(nn.Module):
    """Wraps a timm model; taps layers with ``forward_intermediates`` (no hooks).

    ``forward(x (B, 3, H, W) normalised float)`` returns ``({name: (B, C, h, w)}, (B, D))``:
    raw block / stage outputs (no final norm, as the paper probes them) and the global
    vector chosen by ``spec.global_kind`` (:data:`GLOBAL_KINDS`).
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module) -> None:
        super().__init__()
        check_global_kind(spec)
        if spec.global_kind.startswith("cls") and getattr(model, "cls_token", None) is None:
            raise MidprobeError(f"global vector {spec.global_kind!r} needs a CLS token; {spec.name} has none")
        self.spec = spec
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        kind = self.spec.global_kind
        prefixed = self.spec.dense_cls or kind == "cls-raw-last"
        extra = {"return_prefix_tokens": True} if prefixed else {}
        final, intermediates = self.model.forward_intermediates(
            x, indices=list(self.spec.layers), norm=False, output_fmt="NCHW", intermediates_only=False, **extra)
        prefixes = [prefix for _, prefix in intermediates] if prefixed else []
        maps = [m for m, _ in intermediates] if prefixed else list(intermediates)
        if kind == "cls-final-norm":
            pooled = final[:, 0]
        elif kind == "cls-raw-last":
            pooled = prefixes[-1][:, 0]
        elif kind == "gap":
            pooled = maps[-1].mean(dim=(2, 3))
        else:
            pooled = self.model.forward_head(final, pre_logits=True)
        if self.spec.dense_cls:
            # the paper's "dense-cls": every patch token followed by the CLS token -> (B, 2C, h, w)
            maps = [torch.cat([m, prefix[:, 0, :, None, None].expand_as(m)], dim=1) for m, prefix in zip(maps, prefixes)]
        return dict(zip(self.spec.layer_names, maps)), pooled


def sincos_table(dim: int, height: int, width: int) -> np.ndarray:
    """MAE's fixed 2-D sin-cos position table ``(1 + height * width, dim) float64``, CLS row zero.

    As the paper builds it for any grid (midvision-probe evals/models/utils.py:75-102 with
    transformers' ``get_2d_sincos_pos_embed_from_grid``): the first half of the channels
    encodes the column, the second the row, each as ``[sin(p w_k), cos(p w_k)]`` with
    ``w_k = 10000^(-k / (dim / 4))``, ``k < dim / 4``; tokens in raster order.
    """
    if dim % 4:
        raise MidprobeError(f"a 2-D sin-cos table needs a width divisible by 4, got {dim}")
    omega = 1.0 / 10000 ** (np.arange(dim // 4, dtype=np.float64) / (dim / 4))
    rows, cols = np.meshgrid(np.arange(height, dtype=np.float64), np.arange(width, dtype=np.float64), indexing="ij")
    halves = []
    for pos in (cols.ravel(), rows.ravel()):
        out = np.outer(pos, omega)
        halves.append(np.concatenate([np.sin(out), np.cos(out)], axis=1))
    return np.concatenate([np.zeros((1, dim)), np.concatenate(halves, axis=1)], axis=0)


def _sincos_pos_embed(model: nn.Module, original, x: torch.Tensor) -> torch.Tensor:
    """``model._pos_embed`` for ``(B, h, w, C)`` patch tokens: the stored table on its own grid,
    the exact sin-cos table elsewhere (the paper's MAE, mae.py:74-104, 195-198)."""
    B, h, w, C = x.shape
    if (h, w) == tuple(model.patch_embed.grid_size):
        return original(x)
    table = torch.from_numpy(sincos_table(C, h, w)).to(dtype=x.dtype, device=x.device)
    tokens = x.reshape(B, h * w, C) + table[1:]
    cls = (model.cls_token + table[:1]).expand(B, -1, -1)
    return model.pos_drop(torch.cat([cls, tokens], dim=1))


def create_timm_model(spec: BackboneSpec, *, pretrained: bool) -> nn.Module:
    """Build ``spec.arch`` with no classifier; ViTs run at native resolution.

    ``dynamic_img_size`` interpolates the position embeddings to the input's grid (or, with
    ``spec.pos_embed == "sincos"``, uses the exact sin-cos table) and ``dynamic_img_pad``
    pads right/bottom to a multiple of the patch size, so no input is ever squashed to 224.
    """
    import timm

    kwargs = dict(spec.model_kwargs)
    if spec.family == "vit":
        kwargs.update(dynamic_img_size=True, dynamic_img_pad=True)
        if spec.layer_norm_eps is not None:
            kwargs["norm_layer"] = partial(nn.LayerNorm, eps=spec.layer_norm_eps)
    model = timm.create_model(spec.arch, pretrained=pretrained, num_classes=0, **kwargs)
    if spec.pos_embed == "sincos":
        if spec.family != "vit" or model.cls_token is None or model.reg_token is not None or model.no_embed_class:
            raise MidprobeError(f"{spec.name}: the sin-cos position table applies to a ViT with one CLS token "
                                "inside its table (MAE's layout)")
        model._pos_embed = partial(_sincos_pos_embed, model, model._pos_embed)
    return model


def family_of(model: nn.Module) -> str:
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, ResNet):
        return "resnet"
    return "timm"
