"""Whether a registered model can give a layer, told without its weights.

The probe names a ``make extract … LAYERS=`` for a layer a store lacks only where that
command would work: a name the model's family does not use (``block99`` on ``pixels``), or a
block past the network's depth (``block12`` on a 12-block ViT-B), is said as such instead.
The depth comes from the architecture built on PyTorch's ``meta`` device (no weights, no memory,
~0.1 s).
"""

from __future__ import annotations

from typing import Sequence

from cache import MidprobeError


def network_depth(spec) -> int | None:
    """How many layers ``forward_intermediates`` can tap (ViT blocks, ResNet feature levels), or None
    where that is not known without building the model (hf:, py:, plugin and timm: models)."""
    import torch

    if spec.family not in ("vit", "resnet") or spec.weights in ("hf", "py", "plugin"):
        return None
    try:
        import timm

        with torch.device("meta"):
            return len(timm.create_model(spec.arch, pretrained=False, **spec.model_kwargs).feature_info)
    except Exception:               # an architecture timm cannot build on meta: say nothing rather than guess
        return None


def missing_layers(model: str, names: Sequence[str]) -> str | None:
    """Why ``model`` cannot give ``names`` (one clause for a message), or None where it can — or
    where that cannot be told without building it (models outside the registry)."""
    from extract.backbones import BACKBONES, get_spec, select_layers
    from extract.backbones.spec import layer_name

    if model.split("+")[0] not in BACKBONES:
        return None
    spec = get_spec(model)
    try:
        chosen = select_layers(spec, list(names))
    except MidprobeError as exc:
        return str(exc)
    depth = network_depth(spec)
    if depth is None:
        return None
    beyond = [name for name, index in zip(chosen.layer_names, chosen.layers) if not 0 <= index < depth]
    if beyond:
        return (f"model {model!r} has no layer {', '.join(beyond)}: its layers are "
                f"{layer_name(spec.family, 0)} to {layer_name(spec.family, depth - 1)}")
    return None
