"""The backbone registry: one :class:`BackboneSpec` per model name, one extraction path for all."""

from __future__ import annotations

import difflib
from dataclasses import dataclass, replace
from pathlib import Path

import torch
from torch import nn

from cache import MidprobeError
from extract.backbones import zoo
from extract.backbones.checkpoints import convert, load_checkpoint_file
from extract.backbones.download import cached_path, fetch
from extract.backbones.handcrafted import DenseHOG, PixelPatches
from extract.backbones.spec import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec, layer_name, layer_stride
from extract.backbones.timm_models import TimmBackbone, check_global_kind, create_timm_model, family_of
from extract.backbones.weights import file_sha256, load_strict, read_state_dict, state_sha256

BACKBONES: dict[str, BackboneSpec] = {}
VIT_B_LAYERS = (2, 5, 8, 11)     # the paper's protocol, 0-based blocks
RESNET_LAYERS = (1, 2, 3, 4)     # timm feature levels of res2..res5


def register(spec: BackboneSpec) -> BackboneSpec:
    """Add ``spec`` to the registry (a later spec of the same name replaces it)."""
    BACKBONES[spec.name] = spec
    return spec


def _vit(name: str, arch: str, *, method: str, source: str, weights: str, license: str = "",
         **kwargs) -> BackboneSpec:
    return register(BackboneSpec(
        name=name, arch=arch, family="vit", method=method, source=source, weights=weights,
        layers=VIT_B_LAYERS, layer_names=tuple(layer_name("vit", i) for i in VIT_B_LAYERS),
        strides=(16,) * 4, license=license, **kwargs))


def _resnet(name: str, arch: str, *, method: str, source: str, weights: str, license: str = "",
            **kwargs) -> BackboneSpec:
    return register(BackboneSpec(
        name=name, arch=arch, family="resnet", method=method, source=source, weights=weights,
        layers=RESNET_LAYERS, layer_names=tuple(layer_name("resnet", i) for i in RESNET_LAYERS),
        strides=tuple(layer_stride("resnet", i) for i in RESNET_LAYERS), license=license, **kwargs))


for _rows, _add, _arch in ((zoo.RESNETS, _resnet, "resnet50"), (zoo.VITS, _vit, "vit_base_patch16_224")):
    for _name, _method, _source, _fmt, _url, _file, _variant, _license, _checksum in _rows:
        _add(_name, _arch, method=_method, source=_source, weights="url", license=_license, checkpoint=_fmt,
             url=_url, filename=_file, variant=_variant, checksum=_checksum, options=zoo.OPTIONS.get(_name, {}),
             paper_options=zoo.PAPER_OPTIONS.get(_name, ()), notes=zoo.NOTES.get(_name, ""))
_vit("vit_b_sup", "vit_base_patch16_224.augreg_in1k", method="supervised", weights="timm",
     source="timm vit_base_patch16_224.augreg_in1k (ImageNet-1k only)", license="apache-2.0",
     variant="supervised reference, AugReg on ImageNet-1k")
_resnet("rn50_sup", "resnet50.tv_in1k", method="supervised", weights="timm",
        source="timm resnet50.tv_in1k (torchvision's original weights)", license="bsd-3-clause",
        variant="supervised reference")
_vit("vit_b_random", "vit_base_patch16_224", method="random init", weights="random:0",
     source="timm vit_base_patch16_224, random init (seed 0)")
_resnet("rn50_random", "resnet50", method="random init", weights="random:0",
        source="timm resnet50, random init (seed 0)")
for _name, _method in (("pixels", "raw RGB patches"), ("hog", "dense HOG (MaskFeat target)")):
    register(BackboneSpec(
        name=_name, arch=_name, family="handcrafted", method=_method, source="built in, weight-free",
        weights="none", layers=(0,), layer_names=("patch",), strides=(16,),
        mean=IMAGENET_MEAN if _name == "pixels" else (0.0, 0.0, 0.0),
        std=IMAGENET_STD if _name == "pixels" else (1.0, 1.0, 1.0)))


@dataclass
class Backbone:
    """A built backbone: the module, its spec and the identity of its weights."""

    spec: BackboneSpec
    module: nn.Module
    weights_id: str      # "sha256:<hex>", "random:<seed>" or "none"
    source_id: dict | None = None   # hf:/py:/plugin models: what built them (extract.backbones.routes)

    def __call__(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        return self.module(x)


def _default_indices(family: str, model: nn.Module) -> tuple[int, ...]:
    if family == "vit":
        depth = len(model.blocks)
        return tuple(sorted({max(0, round(depth * k / 4) - 1) for k in range(1, 5)}))
    if family == "resnet":
        return RESNET_LAYERS
    levels = len(model.feature_info)
    return tuple(range(max(0, levels - 4), levels))


def _timm_spec(name: str, model: nn.Module, layers: list[str] | None) -> BackboneSpec:
    arch = name[len("timm:"):]
    family = family_of(model)
    indices = _layer_indices(family, layers, ()) if layers else _default_indices(family, model)
    cfg = model.pretrained_cfg
    if family == "timm":
        info = model.feature_info
        names = tuple(layer_name(family, i) for i in indices)
        strides = tuple(int(info[i]["reduction"]) for i in indices)
    else:
        patch = model.patch_embed.patch_size[0] if family == "vit" else 16
        names = tuple(layer_name(family, i) for i in indices)
        strides = tuple(layer_stride(family, i, patch) for i in indices)
    return BackboneSpec(name=name, arch=arch, family=family, method="timm", source=f"timm {arch}",
                        weights="timm", layers=indices, layer_names=names, strides=strides,
                        mean=tuple(cfg.get("mean", IMAGENET_MEAN)), std=tuple(cfg.get("std", IMAGENET_STD)),
                        license=str(cfg.get("license", "")))


def get_spec(name: str) -> BackboneSpec:
    """The registered spec for ``name``; an unknown name suggests close ones.

    ``name+option+...`` applies the model's options (``+paper``: every choice of the
    paper's code); the result is named canonically, so each choice gets its own store.
    """
    base, *chosen = name.split("+")
    if chosen and base in BACKBONES:
        return with_options(BACKBONES[base], chosen)
    if name in BACKBONES:
        return BACKBONES[name]
    from extract.backbones.routes import route_of, route_spec

    if route_of(name):
        return route_spec(name)
    close = difflib.get_close_matches(name, list(BACKBONES), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    raise MidprobeError(f"unknown model {name!r}{hint} (see `python -m extract --list`, "
                        "or use timm:<timm name>, hf:<model id or dir>, py:<module or file.py>:<factory>)")


def with_options(spec: BackboneSpec, chosen: list[str]) -> BackboneSpec:
    """``spec`` with its named options applied, named ``<name>+<option>...`` in the options' order."""
    wanted: list[str] = []
    for option in chosen:
        wanted.extend(spec.paper_options if option == "paper" else [option])
    unknown = [o for o in wanted if o not in spec.options]
    if unknown or not wanted:
        have = ", ".join(["paper", *spec.options]) if spec.options else "none"
        raise MidprobeError(f"model {spec.name!r} has no option {'+'.join(unknown) or '(empty)'!r}; its options: {have}")
    ordered = [o for o in spec.options if o in wanted]
    fields: dict = {}
    for option in ordered:
        fields.update(spec.options[option])
    layers = fields.pop("layers", None)
    out = replace(spec, name="+".join([spec.name, *ordered]), **fields)
    return out.with_layers(tuple(layers)) if layers else out


def _layer_indices(family: str, layers: list[str], known: tuple[str, ...]) -> tuple[int, ...]:
    names = {layer_name(family, i): i for i in range(64)}
    indices = []
    for item in layers:
        if item.isdigit():
            indices.append(int(item))
        elif item in names:
            indices.append(names[item])
        else:
            raise MidprobeError(f"unknown layer {item!r}; expected names like {', '.join(known)} "
                                "or block/stage indices")
    return tuple(indices)


def select_layers(spec: BackboneSpec, layers: list[str] | None) -> BackboneSpec:
    """Restrict ``spec`` to ``layers`` given as store names (``block5``) or indices (``5``);
    ``["all"]`` keeps every layer the model taps by default (``LAYERS=all``), ``["last"]`` the deepest."""
    if not layers or layers == ["all"]:
        return spec
    if layers == ["last"]:                  # as in grid files: the deepest of the default layers
        layers = list(spec.layer_names[-1:])
    from extract.backbones.routes import ROUTE_WEIGHTS, select

    if spec.weights in ROUTE_WEIGHTS:
        return select(spec, layers)
    if spec.family == "handcrafted":
        if layers != ["patch"]:
            raise MidprobeError(f"model {spec.name!r} has one layer, 'patch'; got {layers}")
        return spec
    return spec.with_layers(_layer_indices(spec.family, layers, spec.layer_names))


def build_backbone(name: str, *, weights: str | Path | None = None, layers: list[str] | None = None,
                   spec: BackboneSpec | None = None, global_kind: str = "default") -> Backbone:
    """Build a frozen backbone in eval mode.

    ``weights`` is a local ``.safetensors``/``.pth`` file loaded strictly instead of the
    spec's own source (for machines without internet). ``global_kind`` picks the global
    vector (``extract.backbones.timm_models.GLOBAL_KINDS``; recorded as ``spec.global_kind``).
    """
    if name.startswith("timm:") and spec is None:
        return _build_timm_name(name, weights=weights, layers=layers, global_kind=global_kind)
    spec = select_layers(spec or get_spec(name), layers)
    if global_kind != spec.global_kind:
        spec = replace(spec, global_kind=global_kind)
    check_global_kind(spec)
    from extract.backbones import routes

    if spec.weights in routes.ROUTE_WEIGHTS:
        return Backbone(spec, *routes.build(spec, weights))
    if spec.family == "handcrafted":
        if weights:
            raise MidprobeError(f"model {spec.name!r} is weight-free; WEIGHTS= does not apply")
        module = PixelPatches(spec) if spec.arch == "pixels" else DenseHOG(spec)
        return Backbone(spec, module.eval(), "none")
    if spec.weights == "url":
        # a local WEIGHTS= file is the user's (perhaps re-saved) copy: it is identified by its own
        # sha256 in the store's fingerprint rather than checked against the published digest
        path = Path(weights) if weights else fetch(spec.url, spec.filename, checksum=spec.checksum)
        state = convert(load_checkpoint_file(path), spec.checkpoint, source=str(path))
        model = create_timm_model(spec, pretrained=False)
        load_strict(model, state, source=f"{path} ({spec.checkpoint.name})")
        weights_id = f"sha256:{file_sha256(path)}"
    elif weights:
        model = create_timm_model(spec, pretrained=False)
        load_strict(model, read_state_dict(Path(weights)), source=str(weights), drop_prefixes=spec.drop_prefixes)
        weights_id = f"sha256:{file_sha256(Path(weights))}"
    elif spec.weights.startswith("random:"):
        seed = int(spec.weights.split(":", 1)[1])
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_timm_model(spec, pretrained=False)
        weights_id = spec.weights
    else:
        model = _pretrained(spec)
        weights_id = f"sha256-state:{state_sha256(model)}"
    for p in model.parameters():
        p.requires_grad_(False)
    return Backbone(spec, TimmBackbone(spec, model).eval(), weights_id)


def _pretrained(spec: BackboneSpec) -> nn.Module:
    try:
        return create_timm_model(spec, pretrained=True)
    except Exception as exc:  # offline, hub unreachable, missing tag
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise MidprobeError(f"cannot load pretrained weights of {spec.name!r} ({spec.arch}): {first}; "
                            "on a machine without internet pass WEIGHTS=<local file>") from None


def _build_timm_name(name: str, *, weights: str | Path | None, layers: list[str] | None,
                     global_kind: str = "default") -> Backbone:
    import timm

    arch = name[len("timm:"):]
    if not timm.is_model(arch.split(".")[0]):
        close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
        hint = f"; did you mean {', '.join('timm:' + c for c in close)}?" if close else ""
        raise MidprobeError(f"timm has no model {arch!r}{hint}")
    probe = timm.create_model(arch, pretrained=False, num_classes=0)
    spec = replace(_timm_spec(name, probe, layers), weights=("file" if weights else "timm"))
    return build_backbone(name, weights=weights, layers=None, spec=spec, global_kind=global_kind)


def weights_available(spec: BackboneSpec) -> str:
    """'weight-free', 'random init', 'cached' or 'not downloaded' — for ``--list``."""
    if spec.family == "handcrafted":
        return "weight-free"
    if spec.weights.startswith("random:"):
        return "random init"
    if spec.weights == "url":
        return "cached" if cached_path(spec.filename).is_file() else "not downloaded"
    try:
        import timm
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(spec.arch)
        repo = getattr(cfg, "hf_hub_id", None) if cfg else None
        if repo:
            for filename in ("model.safetensors", "pytorch_model.bin"):
                if isinstance(try_to_load_from_cache(repo, filename), str):
                    return "cached"
    except Exception:
        pass
    return "not downloaded"
