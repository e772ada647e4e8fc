"""timm architectures behind one contract: dense maps per tapped layer plus a global vector."""

from __future__ import annotations

import torch
from torch import nn

from extract.backbones.spec import BackboneSpec


class TimmBackbone(nn.Module):
    """Wraps a timm model; taps layers with ``forward_intermediates`` (no hooks).

    ``forward(x (B, 3, H, W) normalised float)`` returns ``({name: (B, C, h, w)}, (B, D))``:
    raw block / stage outputs (no final norm, as the paper probes them) and the global
    vector — timm's pre-logits head: the normed CLS token for a ViT, the global-average-
    pooled last stage for a CNN.
    """

    def __init__(self, spec: BackboneSpec, model: nn.Module) -> None:
        super().__init__()
        self.spec = spec
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        extra = {"return_prefix_tokens": True} if self.spec.dense_cls else {}
        final, intermediates = self.model.forward_intermediates(
            x, indices=list(self.spec.layers), norm=False, output_fmt="NCHW", intermediates_only=False, **extra)
        if self.spec.dense_cls:
            # the paper's "dense-cls": every patch token followed by the CLS token -> (B, 2C, h, w)
            intermediates = [torch.cat([maps, prefix[:, 0, :, None, None].expand_as(maps)], dim=1)
                             for maps, prefix in intermediates]
        pooled = self.model.forward_head(final, pre_logits=True)
        return dict(zip(self.spec.layer_names, intermediates)), pooled


def create_timm_model(spec: BackboneSpec, *, pretrained: bool) -> nn.Module:
    """Build ``spec.arch`` with no classifier; ViTs run at native resolution.

    ``dynamic_img_size`` interpolates the position embeddings to the input's grid and
    ``dynamic_img_pad`` pads right/bottom to a multiple of the patch size, so no input is
    ever squashed to 224.
    """
    import timm

    kwargs = dict(spec.model_kwargs)
    if spec.family == "vit":
        kwargs.update(dynamic_img_size=True, dynamic_img_pad=True)
    return timm.create_model(spec.arch, pretrained=pretrained, num_classes=0, **kwargs)


def family_of(model: nn.Module) -> str:
    from timm.models.resnet import ResNet
    from timm.models.vision_transformer import VisionTransformer

    if isinstance(model, VisionTransformer):
        return "vit"
    if isinstance(model, ResNet):
        return "resnet"
    return "timm"
