"""Published pretraining checkpoints -> timm state dicts: safe reading and per-source key conversion.

Every source's file is described by a :class:`CheckpointFormat` (where the backbone sits
in the file, which prefix its keys carry, which other parts of the file are known and
left out, which head keys are dropped, and any renaming into timm's names). Everything
in the file must be accounted for: a key that is neither the backbone nor a named
leftover is an error that lists it, and the backbone must then load with ``strict=True``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import torch

from cache import MidprobeError
from extract.backbones.unpickle import describe, read_torch_file

StateDict = dict[str, torch.Tensor]


def load_checkpoint_file(path: Path) -> Any:
    """The object in a published checkpoint file, built without running any code from it.

    ``.safetensors`` files hold tensors only; ``torch.save`` files are read by
    :func:`~extract.backbones.unpickle.read_torch_file`, where training state next to the
    weights (optimizers, logs, pickled objects of absent packages) becomes inert placeholders.
    """
    path = Path(path)
    if not path.is_file():
        raise MidprobeError(f"weights file {path} does not exist; expected the published checkpoint file")
    with open(path, "rb") as handle:
        head = handle.read(256).lstrip().lower()
    if head.startswith((b"<!doctype html", b"<html")):
        raise MidprobeError(f"weights file {path} is an HTML page, not a checkpoint (a download behind a "
                            "confirmation page?); download it in a browser and pass WEIGHTS=<file>")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return read_torch_file(path)


@dataclass(frozen=True)
class CheckpointFormat:
    """How one source lays out its pretraining checkpoint.

    ``container``: keys from the file's top object down to the backbone's state dict.
    ``prefix``: the prefixes the backbone's keys carry (the longest that matches is
    stripped; ``""`` accepts bare keys). ``leftovers``: prefixes of other known parts of
    that state dict (momentum encoder, projector, decoder), left out before stripping.
    ``heads``: prefixes dropped after stripping (classifier / projection heads of the
    backbone itself). ``rename``: maps the stripped dict to timm's names.
    """

    name: str
    container: tuple[str, ...] = ()
    prefix: tuple[str, ...] = ("",)
    leftovers: tuple[str, ...] = ()
    heads: tuple[str, ...] = ()
    rename: Callable[[StateDict], StateDict] | None = None
    description: str = ""
    options: Mapping[str, Any] = field(default_factory=dict)


def _tensor(name: str, value: Any, source: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(np.ascontiguousarray(value))
    raise MidprobeError(f"{source}: {name!r} is {describe(value)}, expected a tensor")


def convert(obj: Any, fmt: CheckpointFormat, *, source: str) -> StateDict:
    """The backbone's state dict in timm's names, from a checkpoint object in ``fmt``."""
    node = obj
    for i, key in enumerate(fmt.container):
        if not isinstance(node, Mapping) or key not in node:
            where = "/".join(fmt.container[:i]) or "the top level"
            have = ", ".join(sorted(map(str, node))[:8]) if isinstance(node, Mapping) else describe(node)
            raise MidprobeError(f"{source} is not a {fmt.name} checkpoint: no {key!r} under {where} (has {have})")
        node = node[key]
    if not isinstance(node, Mapping):
        raise MidprobeError(f"{source}: expected a state dict at {'/'.join(fmt.container) or 'the top level'}, "
                            f"found {describe(node)}")
    prefixes = sorted(fmt.prefix, key=len, reverse=True)
    state: StateDict = {}
    stray = []
    for key, value in node.items():
        if fmt.leftovers and key.startswith(fmt.leftovers):
            continue
        match = next((p for p in prefixes if key.startswith(p)), None)
        if match is None:
            stray.append(key)
            continue
        short = key[len(match):]
        if fmt.heads and short.startswith(fmt.heads):
            continue
        state[short] = _tensor(key, value, source)
    if stray:
        listed = ", ".join(sorted(stray)[:8]) + (f" (+{len(stray) - 8} more)" if len(stray) > 8 else "")
        raise MidprobeError(f"{source}: unexpected keys for a {fmt.name} checkpoint [{listed}]; "
                            f"expected keys under {' or '.join(repr(p) for p in fmt.prefix)}")
    return fmt.rename(state) if fmt.rename else state


def mmcls_vit_to_timm(state: StateDict) -> StateDict:
    """mmcls / mmpretrain ``VisionTransformer`` names -> timm's (as mmselfsup's mmcls2timm maps them)."""
    out: StateDict = {}
    for key, value in state.items():
        new = key.replace("patch_embed.projection.", "patch_embed.proj.")
        new = re.sub(r"^layers\.(\d+)\.", r"blocks.\1.", new)
        new = re.sub(r"^(blocks\.\d+\.)ln1\.", r"\1norm1.", new)
        new = re.sub(r"^(blocks\.\d+\.)ln2\.", r"\1norm2.", new)
        new = re.sub(r"^(blocks\.\d+\.)ffn\.layers\.0\.0\.", r"\1mlp.fc1.", new)
        new = re.sub(r"^(blocks\.\d+\.)ffn\.layers\.1\.", r"\1mlp.fc2.", new)
        new = re.sub(r"^ln1\.", "norm.", new)
        out[new] = value
    return out


_HF_BLOCK = {"layernorm_before": "norm1", "layernorm_after": "norm2", "attention.output.dense": "attn.proj",
             "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}


def hf_vitmae_to_timm(state: StateDict) -> StateDict:
    """Hugging Face ``ViTMAEModel`` names -> timm's; query/key/value are stacked into ``qkv``."""
    out: StateDict = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    top = {"embeddings.cls_token": "cls_token", "embeddings.position_embeddings": "pos_embed",
           "embeddings.patch_embeddings.projection.weight": "patch_embed.proj.weight",
           "embeddings.patch_embeddings.projection.bias": "patch_embed.proj.bias",
           "layernorm.weight": "norm.weight", "layernorm.bias": "norm.bias"}
    for key, value in state.items():
        if key in top:
            out[top[key]] = value
            continue
        m = re.match(r"^encoder\.layer\.(\d+)\.(.+)\.(weight|bias)$", key)
        if not m:
            out[key] = value            # left for the strict load to report
            continue
        block, inner, kind = m.groups()
        part = re.match(r"^attention\.attention\.(query|key|value)$", inner)
        if part:
            qkv.setdefault((block, kind), {})[part.group(1)] = value
        elif inner in _HF_BLOCK:
            out[f"blocks.{block}.{_HF_BLOCK[inner]}.{kind}"] = value
        else:
            out[key] = value
    for (block, kind), parts in qkv.items():
        if set(parts) != {"query", "key", "value"}:
            raise MidprobeError(f"block {block}: attention {kind} has only {sorted(parts)}, expected query, key, value")
        out[f"blocks.{block}.attn.qkv.{kind}"] = torch.cat([parts["query"], parts["key"], parts["value"]])
    return out


# --- the sources' formats (docs/models.md says where each layout was checked) -------------

VISSL = CheckpointFormat(
    "VISSL", container=("classy_state_dict", "base_model", "model", "trunk"), prefix=("_feature_blocks.",),
    description="VISSL training checkpoint; trunk under classy_state_dict/base_model/model/trunk")
VISSL_CONVERTED = CheckpointFormat(
    "VISSL converted (numpy)", container=("model_state_dict",), prefix=("_feature_blocks.", ""), heads=("fc",),
    description="VISSL conversion of an older release: numpy arrays under model_state_dict")
SWAV = CheckpointFormat(
    "SwAV repository", prefix=("module.",), heads=("projection_head.", "prototypes."),
    description="plain DataParallel state dict; projection head and prototypes dropped")
MOCO_V2 = CheckpointFormat(
    "MoCo", container=("state_dict",), prefix=("module.encoder_q.",),
    leftovers=("module.encoder_k.", "module.queue"), heads=("fc.",),
    description="main_moco.py checkpoint; query encoder module.encoder_q., MLP head fc. dropped")
MOCO_V3_BASE = CheckpointFormat(
    "MoCo v3", container=("state_dict",), prefix=("module.base_encoder.",),
    leftovers=("module.momentum_encoder.", "module.predictor."), heads=("fc.", "head."),
    description="MoCo v3 checkpoint; base encoder module.base_encoder., projector dropped")
MOCO_V3_MOMENTUM = CheckpointFormat(
    "MoCo v3 (momentum encoder)", container=("state_dict",), prefix=("module.momentum_encoder.",),
    leftovers=("module.base_encoder.", "module.predictor."), heads=("fc.", "head."),
    description="MoCo v3 checkpoint; the momentum encoder (what the paper's code evaluated)")
MMSELFSUP_RESNET = CheckpointFormat(
    "MMSelfSup", container=("state_dict",), prefix=("backbone.",),
    leftovers=("neck.", "head.", "data_preprocessor.", "target_generator."),
    description="mmengine checkpoint; mmcls ResNet names under backbone.")
MMSELFSUP_VIT = CheckpointFormat(
    "MMSelfSup ViT", container=("state_dict",), prefix=("backbone.",),
    leftovers=("neck.", "head.", "data_preprocessor.", "target_generator."), heads=("mask_token",),
    rename=mmcls_vit_to_timm,
    description="mmengine checkpoint; mmcls ViT names under backbone., renamed to timm's")
BYOL = CheckpointFormat(
    "BYOL-PyTorch", container=("online_backbone",), prefix=("module.", ""), heads=("fc.", "head."),
    description="legacy checkpoint; online_backbone holds the torchvision-named ResNet")
PLAIN = CheckpointFormat(
    "plain state dict", prefix=("",), heads=("fc.", "head."),
    description="a bare state dict in torchvision / timm names")
DENSECL = CheckpointFormat(
    "DenseCL", container=("state_dict",), prefix=("",),
    description="extract_backbone_weights.py output: {'state_dict': ..., 'author': 'DenseCL'}")
IBOT = CheckpointFormat(
    "iBOT teacher", container=("state_dict",), prefix=("module.backbone.", "backbone.", "module.", ""),
    heads=("head.",), description="extract_backbone_weights.py output of the teacher: {'state_dict': ...}")
MAE = CheckpointFormat(
    "MAE", container=("model",), prefix=("",), leftovers=("decoder", "mask_token"),
    description="MAE repository pretrain checkpoint: {'model': encoder in timm names}")
HF_VITMAE = CheckpointFormat(
    "Hugging Face ViTMAE", prefix=("vit.",), leftovers=("decoder.",), rename=hf_vitmae_to_timm,
    description="transformers ViTMAEForPreTraining state dict; vit.* renamed, q/k/v stacked")
