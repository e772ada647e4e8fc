"""Writers of tiny-valued but full-shaped fake checkpoints in each source's published layout.

Written from the sources' own saving code (key names, nesting, wrapper dicts, container
format), independently of the loader's conversion tables: renames here go *from* timm's
names *to* the source's. Values are whatever timm state dict is passed in; decoys (momentum
encoders, projectors, decoders) get other values, so a wrong mapping changes the features.
"""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
import torch

State = dict[str, torch.Tensor]


def _decoy(state: State, scale: float = 0.9) -> State:
    """Other values of the same shapes (scaled, so a random ResNet's activations stay finite)."""
    return {k: (v * scale if v.is_floating_point() else v.clone()) for k, v in state.items()}


def _mlp(prefix: str, sizes: list[int]) -> State:
    g = torch.Generator().manual_seed(1)
    out = {}
    for i, (a, b) in enumerate(zip(sizes, sizes[1:])):
        out[f"{prefix}{2 * i}.weight"] = torch.randn(b, a, generator=g)
        out[f"{prefix}{2 * i}.bias"] = torch.randn(b, generator=g)
    return out


class _HistoryBuffer:
    """Pickled under mmengine's name, as mmengine's message hub stores its logs."""


def _with_fake_mmengine(save):
    names = ["mmengine", "mmengine.logging", "mmengine.logging.history_buffer"]
    saved = {n: sys.modules.get(n) for n in names}
    module = types.ModuleType(names[-1])
    _HistoryBuffer.__module__, _HistoryBuffer.__qualname__ = names[-1], "HistoryBuffer"
    module.HistoryBuffer = _HistoryBuffer
    try:
        sys.modules.update({names[0]: types.ModuleType(names[0]), names[1]: types.ModuleType(names[1]), names[2]: module})
        save()
    finally:
        for n, m in saved.items():
            if m is None:
                sys.modules.pop(n, None)
            else:
                sys.modules[n] = m


def _history() -> _HistoryBuffer:
    buffer = _HistoryBuffer()
    buffer.__dict__.update({"_max_length": 1000000, "_log_history": np.array([0.5, 0.25]),
                            "_count_history": np.array([1.0, 1.0])})
    return buffer


def vissl(state: State, path: Path) -> None:
    """VISSL training checkpoint (vissl/hooks/log_hooks.py, utils/checkpoint.py)."""
    trunk = {f"_feature_blocks.{k}": v for k, v in state.items()}
    heads = _mlp("0.clf.", [2048, 100])
    torch.save({"phase_idx": 104, "iteration": 52000, "loss": {}, "iteration_num": 52000, "train_phase_idx": 104,
                "classy_state_dict": {"train": True, "base_model": {"model": {"trunk": trunk, "heads": heads},
                                                                     "meta": {}},
                                      "optimizer": {"name": "sgd", "num_updates": 1}}}, path)


def vissl_converted(state: State, path: Path) -> None:
    """VISSL's conversion of lemniscate NPID: numpy arrays under model_state_dict, an old
    (non-zip) file pickled under numpy 1.x names, and no BatchNorm step counters (PyTorch < 0.4.1)."""
    arrays = {f"_feature_blocks.{k}": v.numpy() for k, v in state.items() if not k.endswith("num_batches_tracked")}
    arrays.update({k: v.numpy() for k, v in _mlp("fc.", [2048, 128]).items() if k.startswith("fc.0")})
    torch.save({"model_state_dict": arrays}, path, _use_new_zipfile_serialization=False)
    data = path.read_bytes().replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")
    path.write_bytes(data)


def swav(state: State, path: Path) -> None:
    """SwAV / DeepCluster-v2 / SeLa-v2: a DataParallel state dict with projector and prototypes."""
    out = {f"module.{k}": v for k, v in state.items()}
    out.update({f"module.{k}": v for k, v in _mlp("projection_head.", [2048, 64, 16]).items()})
    out["module.prototypes.weight"] = torch.randn(30, 16)
    torch.save(out, path)


def moco_v2(state: State, path: Path) -> None:
    """main_moco.py: {epoch, arch, state_dict: module.encoder_q.* incl. its MLP head fc.0/fc.2, optimizer}."""
    sd = {f"module.encoder_q.{k}": v for k, v in state.items()}
    sd.update({f"module.encoder_q.{k}": v for k, v in _mlp("fc.", [2048, 2048, 128]).items()})
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": sd, "optimizer": {"state": {}, "param_groups": []}}, path)


def moco_v3(state: State, path: Path, *, head: str) -> State:
    """MoCo v3 main_moco.py: base and momentum encoders (projector at ``head``) and a predictor.
    Returns the momentum encoder's backbone (the decoy)."""
    momentum = _decoy(state)
    sd = {f"module.base_encoder.{k}": v for k, v in state.items()}
    sd.update({f"module.momentum_encoder.{k}": v for k, v in momentum.items()})
    for enc in ("base_encoder", "momentum_encoder"):
        sd.update({f"module.{enc}.{k}": v for k, v in _mlp(f"{head}.", [8, 8, 4]).items()})
    sd.update({f"module.{k}": v for k, v in _mlp("predictor.", [4, 8, 4]).items()})
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": sd, "optimizer": {}, "scaler": {"scale": 1.0}}, path)
    return momentum


def _mmengine(state_dict: State, path: Path) -> None:
    """publish_model.py output: meta, state_dict, message_hub (HistoryBuffer logs), old non-zip format."""
    ckpt = {"meta": {"epoch": 200, "mmengine_version": "0.1.0"}, "state_dict": state_dict,
            "message_hub": {"log_scalars": {"train/loss": _history()}, "runtime_info": {"epoch": 200}}}
    _with_fake_mmengine(lambda: torch.save(ckpt, path, _use_new_zipfile_serialization=False))


def mmselfsup_resnet(state: State, path: Path) -> None:
    sd = {f"backbone.{k}": v for k, v in state.items()}
    sd.update({f"neck.{k}": v for k, v in _mlp("projector.", [2048, 64]).items()})
    sd.update({f"head.{k}": v for k, v in _mlp("predictor.", [64, 64]).items()})
    _mmengine(sd, path)


def timm_to_mmcls_vit(key: str) -> str:
    """mmpretrain VisionTransformer names (the reverse of mmselfsup's mmcls2timm)."""
    key = key.replace("patch_embed.proj.", "patch_embed.projection.")
    key = re.sub(r"^norm\.", "ln1.", key)
    key = re.sub(r"^blocks\.(\d+)\.", r"layers.\1.", key)
    key = re.sub(r"^(layers\.\d+\.)norm1\.", r"\1ln1.", key)
    key = re.sub(r"^(layers\.\d+\.)norm2\.", r"\1ln2.", key)
    key = re.sub(r"^(layers\.\d+\.)mlp\.fc1\.", r"\1ffn.layers.0.0.", key)
    return re.sub(r"^(layers\.\d+\.)mlp\.fc2\.", r"\1ffn.layers.1.", key)


def mmselfsup_vit(state: State, path: Path) -> None:
    """MaskFeat: MaskFeatViT backbone (mmcls names + mask_token), neck, HOG target generator."""
    sd = {f"backbone.{timm_to_mmcls_vit(k)}": v for k, v in state.items()}
    sd["backbone.mask_token"] = torch.zeros(1, 1, state["cls_token"].shape[-1])
    sd.update({"neck.fc.weight": torch.randn(108, 768), "neck.fc.bias": torch.randn(108)})
    sd["target_generator.hog.gaussian_kernel"] = torch.ones(16, 16)
    _mmengine(sd, path)


def byol(state: State, path: Path) -> None:
    """The legacy BYOL-PyTorch file: online/target modules saved separately, module.-prefixed."""
    torch.save({"online_backbone": {f"module.{k}": v for k, v in state.items()},
                "online_projection": _mlp("module.net.", [2048, 256]),
                "predictor": _mlp("module.net.", [256, 256]),
                "target_backbone": {f"module.{k}": v for k, v in _decoy(state).items()}}, path)


def densecl(state: State, path: Path) -> None:
    torch.save({"state_dict": dict(state), "author": "DenseCL"}, path)


def plain(state: State, path: Path) -> None:
    torch.save(dict(state), path)


def ibot(state: State, path: Path) -> None:
    torch.save({"state_dict": dict(state)}, path)


def mae(state: State, path: Path) -> None:
    torch.save({"model": dict(state)}, path)


def hf_vitmae(state: State, path: Path) -> None:
    """transformers ViTMAEForPreTraining: vit.* (q, k, v separate) and decoder.*"""
    out = {"vit.embeddings.cls_token": state["cls_token"], "vit.embeddings.position_embeddings": state["pos_embed"],
           "vit.embeddings.patch_embeddings.projection.weight": state["patch_embed.proj.weight"],
           "vit.embeddings.patch_embeddings.projection.bias": state["patch_embed.proj.bias"],
           "vit.layernorm.weight": state["norm.weight"], "vit.layernorm.bias": state["norm.bias"]}
    names = {"norm1": "layernorm_before", "norm2": "layernorm_after", "attn.proj": "attention.output.dense",
             "mlp.fc1": "intermediate.dense", "mlp.fc2": "output.dense"}
    for key, value in state.items():
        m = re.match(r"^blocks\.(\d+)\.(.+)\.(weight|bias)$", key)
        if not m:
            continue
        block, inner, kind = m.groups()
        base = f"vit.encoder.layer.{block}."
        if inner == "attn.qkv":
            for part, chunk in zip(("query", "key", "value"), value.chunk(3)):
                out[f"{base}attention.attention.{part}.{kind}"] = chunk.clone()
        else:
            out[f"{base}{names[inner]}.{kind}"] = value
    out.update({"decoder.decoder_embed.weight": torch.randn(512, 768), "decoder.mask_token": torch.zeros(1, 1, 512)})
    torch.save(out, path)
