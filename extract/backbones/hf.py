"""``hf:<model id or local directory>``: a Hugging Face ``transformers`` vision model as a backbone.

The model is loaded with ``AutoModel`` from a local directory (``save_pretrained`` output) or the
Hugging Face cache; ``HF_HUB_OFFLINE=1`` is honoured by ``transformers`` itself, so an offline
machine only reads what is on disk. Every forward asks for ``output_hidden_states``:

- **ViT-like** models (hidden states ``(B, L, C)``): hidden state ``i + 1`` is the output of block
  ``i`` (``block<i>``, 0-based as in timm); its last ``h * w`` tokens are the patch grid and the
  tokens before them (CLS, registers, distillation) are dropped from the maps. The input is
  padded right/bottom to a multiple of the patch size, as timm's ``dynamic_img_pad`` does.
- **ConvNet-like** models (hidden states ``(B, C, h, w)``): hidden state ``i + 1`` is stage ``i``'s
  output (``stage<i>``); strides are read off the map sizes of a 224 px forward.

Normalisation is the model's own image processor's ``image_mean`` / ``image_std`` (ImageNet's
without a processor); ``INPUT_NORM`` overrides it like for any model. Images run at the dataset's
resolution, as for every model (the processor's resize is recorded, not applied).
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from cache import MidprobeError
from extract.backbones.spec import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
from extract.backbones.weights import state_sha256

PREFIX = "hf:"
#: The side of the square input the layer catalogue (token layout, strides) is read from.
PROBE_SIDE = 224


@dataclass
class HFModel:
    """A loaded ``transformers`` model and what was read off it once."""

    target: str
    model: nn.Module
    kind: str                     # "vit" | "cnn"
    depth: int                    # blocks or stages
    patch: int                    # ViT patch size (0 for a ConvNet)
    strides: tuple[int, ...]      # per block / stage, input pixels
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source_id: dict[str, Any]     # what the fingerprint records
    weights_id: str


def _quiet():
    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()


def _config_sha256(config) -> str:
    data = config.to_dict()
    data.pop("transformers_version", None)
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _location(target: str) -> str:
    """A local directory as an absolute path, else the hub id as given."""
    path = Path(target).expanduser()
    if path.is_dir():
        return str(path.resolve())
    if target.startswith((".", "/", "~")) or target.count("/") > 1 or not target:
        raise MidprobeError(f"hf:{target}: no such local directory, and not a hub id of the form <org>/<name>")
    return target


def load(target: str) -> HFModel:
    """Load ``hf:<target>`` once per process (frozen, eval mode) and read its layer catalogue; a
    local directory whose files change is loaded again."""
    path = Path(target).expanduser()
    stamp = tuple(sorted((f.name, f.stat().st_mtime_ns, f.stat().st_size) for f in path.iterdir() if f.is_file())) \
        if path.is_dir() else ()
    return _load(target, stamp)


@lru_cache(maxsize=8)
def _load(target: str, stamp: tuple) -> HFModel:
    try:
        import transformers
    except ImportError:
        raise MidprobeError("hf: models need the transformers package: pip install -e '.[hf]'") from None
    _quiet()
    where = _location(target)
    offline = any(os.environ.get(var, "").strip().lower() in ("1", "true", "yes", "on")
                  for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))
    try:
        # read here as well: huggingface_hub reads HF_HUB_OFFLINE only once, when first imported
        model = transformers.AutoModel.from_pretrained(where, local_files_only=offline)
    except (OSError, ValueError, KeyError) as exc:
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        hint = " (HF_HUB_OFFLINE is set: only local directories and the Hugging Face cache are read)" if offline else ""
        raise MidprobeError(f"hf:{target}: cannot load the model: {first}{hint}") from None
    model = model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    mean, std, size, processor = IMAGENET_MEAN, IMAGENET_STD, None, "none (ImageNet mean/std)"
    try:
        proc = transformers.AutoImageProcessor.from_pretrained(where, local_files_only=offline)
        if getattr(proc, "image_mean", None) is not None and getattr(proc, "image_std", None) is not None:
            mean = tuple(float(v) for v in proc.image_mean)
            std = tuple(float(v) for v in proc.image_std)
            processor = type(proc).__name__
        size = {k: v for k, v in dict(getattr(proc, "size", None) or {}).items() if v is not None}
    except (OSError, ValueError, KeyError, TypeError):
        pass
    kind, depth, patch, strides = _catalogue(target, model)
    source_id = {"route": "hf", "model": where, "class": type(model).__name__,
                 "config_sha256": _config_sha256(model.config), "transformers_version": transformers.__version__}
    info = HFModel(target, model, kind, depth, patch, strides, mean, std, source_id,
                   f"sha256-state:{state_sha256(model)}")
    info.source_id["processor"] = processor
    info.source_id["processor_size"] = size
    return info


def _hidden(model: nn.Module, x: torch.Tensor):
    out = model(pixel_values=x, output_hidden_states=True, return_dict=True)
    if getattr(out, "hidden_states", None) is None:
        raise MidprobeError(f"{type(model).__name__} returns no hidden_states; hf: takes vision models that do")
    return out


def _catalogue(target: str, model: nn.Module) -> tuple[str, int, int, tuple[int, ...]]:
    """``(kind, depth, patch, strides)`` from one forward at :data:`PROBE_SIDE` px."""
    config = model.config
    patch = getattr(config, "patch_size", 0)
    patch = int(patch[0] if isinstance(patch, (list, tuple)) else patch or 0)
    x = torch.zeros(1, 3, PROBE_SIDE, PROBE_SIDE)
    with torch.inference_mode():
        states = _hidden(model, _pad(x, patch) if patch else x).hidden_states[1:]
    if not states:
        raise MidprobeError(f"hf:{target}: the model returns no block or stage outputs")
    if all(s.dim() == 3 for s in states) and patch:
        grid = -(-PROBE_SIDE // patch)
        if any(s.shape[1] < grid * grid for s in states):
            raise MidprobeError(f"hf:{target}: hidden states of {[s.shape[1] for s in states]} tokens do not hold a "
                                f"{grid}x{grid} patch grid; hierarchical token models are not supported")
        return "vit", len(states), patch, (patch,) * len(states)
    if all(s.dim() == 4 for s in states):
        strides = []
        for s in states:
            h, w = s.shape[-2:]
            if PROBE_SIDE % h or PROBE_SIDE // h != PROBE_SIDE // max(w, 1):
                raise MidprobeError(f"hf:{target}: a stage map of {h}x{w} at {PROBE_SIDE} px has no whole stride")
            strides.append(PROBE_SIDE // h)
        return "cnn", len(states), 0, tuple(strides)
    shapes = ", ".join(str(tuple(s.shape)) for s in states)
    raise MidprobeError(f"hf:{target}: hidden states {shapes} are neither (B, L, C) tokens nor (B, C, h, w) maps")


def _pad(x: torch.Tensor, patch: int) -> torch.Tensor:
    H, W = x.shape[-2:]
    return F.pad(x, (0, -W % patch, 0, -H % patch))


def layer_names(kind: str, indices: tuple[int, ...]) -> tuple[str, ...]:
    return tuple(f"{'block' if kind == 'vit' else 'stage'}{i}" for i in indices)


def default_layers(kind: str, depth: int) -> tuple[int, ...]:
    """timm's choice: the last block of each quarter (ViT), the last four stages (ConvNet)."""
    if kind == "vit":
        return tuple(sorted({max(0, round(depth * k / 4) - 1) for k in range(1, 5)}))
    return tuple(range(max(0, depth - 4), depth))


def spec_for(target: str, layers: list[str] | None = None) -> BackboneSpec:
    """The :class:`BackboneSpec` of ``hf:<target>`` tapping ``layers`` (names or indices; default
    :func:`default_layers`)."""
    from extract.backbones.routes import pick_layers

    info = load(target)
    names = layer_names(info.kind, tuple(range(info.depth)))
    indices = pick_layers(f"{PREFIX}{target}", names, layers) if layers and layers != ["all"] else \
        default_layers(info.kind, info.depth)
    source = f"transformers {info.source_id['class']} from {info.source_id['model']}"
    return BackboneSpec(name=f"{PREFIX}{target}", arch=f"{PREFIX}{target}",
                        family="vit" if info.kind == "vit" else "hf-cnn", method="hf", source=source, weights="hf",
                        layers=indices, layer_names=tuple(names[i] for i in indices),
                        strides=tuple(info.strides[i] for i in indices), mean=info.mean, std=info.std,
                        notes=f"processor {info.source_id['processor']}, size {info.source_id['processor_size']} "
                              "not applied (runs at the dataset's resolution)")


class HFBackbone(nn.Module):
    """``forward(x (B, 3, H, W))`` -> ``({name: (B, C, h, w)}, (B, D))`` from a ``transformers`` model.

    The global vector (``spec.global_kind``): ``default`` is the final-norm CLS token of a ViT
    with one (its ``pooler_output`` otherwise, or the mean patch token) and a ConvNet's
    ``pooler_output``; ``cls-final-norm`` / ``cls-raw-last`` the CLS token after the final norm /
    of the last tapped block's raw output; ``gap`` the spatial mean of the last tapped map.
    """

    def __init__(self, spec: BackboneSpec, info: HFModel) -> None:
        super().__init__()
        self.spec, self.info, self.model = spec, info, info.model

    def with_spec(self, spec: BackboneSpec) -> "HFBackbone":
        return HFBackbone(spec, self.info)

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        info, kind = self.info, self.spec.global_kind
        if info.kind == "cnn":
            out = _hidden(self.model, x)
            maps = [out.hidden_states[i + 1] for i in self.spec.layers]
            pooled = getattr(out, "pooler_output", None)
            if kind == "gap" or pooled is None:
                pooled = maps[-1].mean(dim=(2, 3))
            return dict(zip(self.spec.layer_names, maps)), pooled.flatten(1)
        H, W = x.shape[-2:]
        h, w = -(-H // info.patch), -(-W // info.patch)
        out = _hidden(self.model, _pad(x, info.patch))
        maps, prefix = [], 0
        for i in self.spec.layers:
            tokens = out.hidden_states[i + 1]
            prefix = tokens.shape[1] - h * w
            if prefix < 0:
                raise MidprobeError(f"{self.spec.name}: block {i} has {tokens.shape[1]} tokens, fewer than its "
                                    f"{h}x{w} patch grid")
            maps.append(tokens[:, prefix:].transpose(1, 2).reshape(len(x), -1, h, w))
        if kind in ("cls-final-norm", "cls-raw-last") and prefix == 0:
            raise MidprobeError(f"global vector {kind!r} needs a CLS token; {self.spec.name} has none")
        if kind == "cls-raw-last":
            pooled = out.hidden_states[self.spec.layers[-1] + 1][:, 0]
        elif kind == "gap":
            pooled = maps[-1].mean(dim=(2, 3))
        elif prefix > 0:
            pooled = out.last_hidden_state[:, 0]
        elif getattr(out, "pooler_output", None) is not None:
            pooled = out.pooler_output.flatten(1)
        else:
            pooled = out.last_hidden_state.mean(dim=1)
        return dict(zip(self.spec.layer_names, maps)), pooled


def build(spec: BackboneSpec) -> tuple[nn.Module, str, dict[str, Any]]:
    """``(module, weights id, source id)`` of an ``hf:`` spec."""
    info = load(spec.name[len(PREFIX):])
    return HFBackbone(spec, info).eval(), info.weights_id, dict(info.source_id)

