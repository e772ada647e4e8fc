"""Writers of tiny-valued but full-shaped fake checkpoints in each source's published layout.

Written from the sources' own saving code (key names, nesting, wrapper dicts, container
format), independently of the loader's conversion tables: renames here go *from* timm's
names *to* the source's. Values are whatever timm state dict is passed in; decoys (momentum
encoders, projectors, decoders) get other values, so a wrong mapping changes the features.
Training state sits next to the weights where the sources' saving code puts it: optimizer
states of real ``torch.optim`` steps, counters, numpy scalars and arrays, and objects of the
sources' own classes, pickled under their packages' names and loaded where those packages are
absent. Which exact objects each published file holds was not checked (no download here).
"""

from __future__ import annotations

import re
import sys
import types
from collections import OrderedDict
from contextlib import contextmanager
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


class _Recorded:
    """Base of the stand-in classes: a plain object, pickled (protocol 2) as NEWOBJ + BUILD of its attributes."""

    def __init__(self, **attrs):
        self.__dict__.update(attrs)


@contextmanager
def _absent_packages(*names: str):
    """Classes under the dotted ``names`` while saving, in stand-in modules (replacing any real
    ones until the file is written); when the file is loaded the packages are not there."""
    saved: dict[str, types.ModuleType | None] = {}
    classes = {}
    try:
        for name in names:
            module_name, _, cls_name = name.rpartition(".")
            parts = module_name.split(".")
            for m in (".".join(parts[:i + 1]) for i in range(len(parts))):
                if m not in saved:
                    saved[m] = sys.modules.get(m)
                    sys.modules[m] = types.ModuleType(m)
            cls = type(cls_name, (_Recorded,), {"__module__": module_name, "__qualname__": cls_name})
            setattr(sys.modules[module_name], cls_name, cls)
            classes[name] = cls
        yield classes
    finally:
        for m, module in saved.items():
            if module is None:
                sys.modules.pop(m, None)
            else:
                sys.modules[m] = module


def optimizer_state(kind: str) -> dict:
    """A real ``torch.optim`` state dict after one step on two small parameters: SGD with
    momentum buffers, or AdamW with its moments and step counts."""
    g = torch.Generator().manual_seed(2)
    params = [torch.nn.Parameter(torch.randn(4, 8, generator=g)), torch.nn.Parameter(torch.randn(4, generator=g))]
    if kind == "sgd":
        opt = torch.optim.SGD(params, lr=0.05, momentum=0.9, weight_decay=1e-4)
    else:
        opt = torch.optim.AdamW(params, lr=1.5e-4, betas=(0.9, 0.95), weight_decay=0.05)
    sum((p * p).sum() for p in params).backward()
    opt.step()
    return opt.state_dict()


def _module_state(state: State) -> "OrderedDict[str, torch.Tensor]":
    """A state dict as ``nn.Module.state_dict()`` returns it: an OrderedDict carrying ``_metadata``."""
    out = OrderedDict(state)
    out._metadata = OrderedDict({"": {"version": 1}})
    return out


def vissl(state: State, path: Path) -> None:
    """VISSL training checkpoint (vissl/hooks/log_hooks.py ``checkpoint_content``, ClassyVision's task
    state): the trunk next to heads, the SGD state and the phase counters; the losses here are numpy
    scalars and the meter an object of a VISSL class (absent at load time), standing for whatever
    non-tensor objects the real files hold."""
    trunk = {f"_feature_blocks.{k}": v for k, v in state.items()}
    heads = _mlp("0.clf.", [2048, 100])
    meter_class = "vissl.meters.accuracy_list_meter.AccuracyListMeter"
    with _absent_packages(meter_class) as classes:
        meter = classes[meter_class](_num_meters=1, _topk_values=[1, 5], _total_sample_count=torch.tensor(1281167),
                                     _curr_sample_count=torch.tensor(0))
        classy = {"train": True, "base_model": {"model": {"trunk": trunk, "heads": heads}, "meta": {}},
                  "meters": [meter], "optimizer": {"optim": optimizer_state("sgd"), "param_schedulers": {"lr": 0.0}},
                  "phase_idx": 104, "train_phase_idx": 104, "num_updates": 13312000,
                  "losses": [np.float64(5.21), np.float64(5.19)], "hooks": {}, "loss": {}}
        torch.save({"phase_idx": 104, "iteration": 52000, "loss": OrderedDict(), "iteration_num": 52000,
                    "train_phase_idx": 104, "classy_state_dict": classy}, path)


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
    torch.save({"epoch": 800, "arch": "resnet50", "state_dict": sd, "optimizer": optimizer_state("sgd")}, path)


def moco_v3(state: State, path: Path, *, head: str) -> State:
    """MoCo v3 main_moco.py: base and momentum encoders (projector at ``head``) and a predictor.
    Returns the momentum encoder's backbone (the decoy)."""
    momentum = _decoy(state)
    sd = {f"module.base_encoder.{k}": v for k, v in state.items()}
    sd.update({f"module.momentum_encoder.{k}": v for k, v in momentum.items()})
    for enc in ("base_encoder", "momentum_encoder"):
        sd.update({f"module.{enc}.{k}": v for k, v in _mlp(f"{head}.", [8, 8, 4]).items()})
    sd.update({f"module.{k}": v for k, v in _mlp("predictor.", [4, 8, 4]).items()})
    scaler = {"scale": 65536.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 2000,
              "_growth_tracker": 0}
    torch.save({"epoch": 300, "arch": "vit_base", "state_dict": sd, "optimizer": optimizer_state("adamw"),
                "scaler": scaler}, path)
    return momentum


def _mmengine(state_dict: State, path: Path, *, optimizer: str) -> None:
    """mmengine Runner.save_checkpoint output (old non-zip format): meta, the model's state dict,
    the MessageHub object itself (early mmengine pickled it whole; log scalars in HistoryBuffers of
    numpy arrays, runtime info), the optimizer state and the parameter schedulers' states."""
    hub_class, buffer_class = "mmengine.logging.message_hub.MessageHub", "mmengine.logging.history_buffer.HistoryBuffer"
    with _absent_packages(hub_class, buffer_class) as classes:
        def history(values):
            return classes[buffer_class](_max_length=1000000, _log_history=np.array(values),
                                         _count_history=np.ones(len(values)))

        hub = classes[hub_class](
            _instance_name="mmselfsup",
            _log_scalars={"train/loss": history([0.5, 0.25]), "train/lr": history([0.05, 0.0])},
            _runtime_info={"epoch": 200, "iter": 250200, "max_epochs": 200, "seed": np.int64(0),
                           "loss_scale": np.float32(512.0)},
            _resumed_keys={"epoch": True, "iter": True})
        ckpt = {"meta": {"epoch": 200, "iter": 250200, "cfg": "model = dict(type='SimSiam')", "seed": 0,
                         "experiment_name": "pretrain_20220825", "time": "20220825_101010",
                         "mmengine_version": "0.1.0"},
                "state_dict": _module_state(state_dict), "message_hub": hub, "optimizer": optimizer_state(optimizer),
                "param_schedulers": [{"T_max": 200, "eta_min": 0.0, "begin": 0, "end": 200, "by_epoch": True,
                                      "last_step": 200, "base_values": [0.05], "_last_value": [0.0]}]}
        torch.save(ckpt, path, _use_new_zipfile_serialization=False)


def mmselfsup_resnet(state: State, path: Path) -> None:
    sd = {f"backbone.{k}": v for k, v in state.items()}
    sd.update({f"neck.{k}": v for k, v in _mlp("projector.", [2048, 64]).items()})
    sd.update({f"head.{k}": v for k, v in _mlp("predictor.", [64, 64]).items()})
    _mmengine(sd, path, optimizer="sgd")


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
    _mmengine(sd, path, optimizer="adamw")


def byol(state: State, path: Path) -> None:
    """The legacy BYOL-PyTorch file: online/target modules saved separately, module.-prefixed,
    next to the LARS (SGD-like) optimizer state, the epoch and step counters and apex amp's state."""
    torch.save({"online_backbone": {f"module.{k}": v for k, v in state.items()},
                "online_projection": _mlp("module.net.", [2048, 256]),
                "predictor": _mlp("module.net.", [256, 256]),
                "target_backbone": {f"module.{k}": v for k, v in _decoy(state).items()},
                "optimizer": optimizer_state("sgd"), "epoch": 300, "steps": 375300,
                "amp": OrderedDict(loss_scaler0={"loss_scale": 65536.0, "unskipped": 1250})}, path)


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
