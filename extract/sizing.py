"""Sizing an extraction before it is written: bytes per feature split, from shapes alone.

The feature splits come from the extraction plan (:func:`extract.plan.plan_extraction`: the
splits, views and layers the protocol's tasks read); each layer's ``(C, h, w)`` comes from a
forward pass of the model built on torch's ``meta`` device (no weights, no memory, no
arithmetic), at the dataset's image size; the split sizes from the prepared dataset store, or —
for a real dataset not prepared here — from :data:`PUBLISHED`, the datasets' published counts.
Bytes follow the store's own arithmetic (:func:`cache.feature_store.estimate_bytes`): float16 2
bytes a value, int8 1 plus a float16 scale per image and channel, the last chunk counted whole.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from cache import DataRoot, MidprobeError
from extract.plan import plan_extraction
from protocols import Protocol

@dataclass(frozen=True)
class SplitLayout:
    """One dataset split: ``images`` images of ``height`` x ``width`` pixels."""

    images: int
    height: int
    width: int


@dataclass(frozen=True)
class DatasetLayout:
    """A dataset store's name, loader, tasks and split sizes; ``source`` says where they came from."""

    name: str
    loader: str
    tasks: tuple[str, ...]
    splits: Mapping[str, SplitLayout]
    source: str


@dataclass(frozen=True)
class SplitSize:
    """One feature split to write: ``rows`` stored images (``images`` x ``views``), its layers'
    ``(C, h, w)``, the global vector's length and the bytes it takes at ``precision``."""

    feature_split: str
    source: str
    images: int
    views: int
    height: int
    width: int
    layers: Mapping[str, tuple[int, int, int]]
    global_dim: int
    precision: str
    bytes: int = field(default=0)

    @property
    def rows(self) -> int:
        return self.images * self.views


# --- published split sizes -------------------------------------------------------------------------

def _every(count: int, every: int) -> int:
    return -(-count // every)


def _nyuv2(options: Mapping[str, Any]) -> dict[str, SplitLayout]:
    train = 30_914 if _flag(options.get("geonet")) else 795
    return {"train": SplitLayout(train, 480, 480), "test": SplitLayout(654, 480, 480)}


def _navi(options: Mapping[str, Any]) -> dict[str, SplitLayout]:
    every = int(options.get("every", 4 if _flag(options.get("paper_cut")) else 1))
    train, test = _every(8_217, every), _every(2_298, every)
    return {"train": SplitLayout(train, 512, 512), "test": SplitLayout(test, 512, 512),
            "pairs": SplitLayout(2 * test, 512, 512)}


def _flag(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value.lower() == "true")


#: The real datasets' split sizes as published, for sizing a dataset that is not prepared here:
#: loader -> options -> {split: (images, height, width)} at the store's resolution.
#:
#: - ``nyuv2``: the labeled set's 795 train / 654 test frames (``splits.mat`` trainNdxs/testNdxs;
#:   FAIR's SN40 json has the same counts), 480x480 centre crops. With ``geonet=true`` the train
#:   split is GeoNet's 30,916 frames less the 2 unreadable ones: 30,914 (reference sheet
#:   ``datasets.md`` §1e, a third-party count of the released files).
#: - ``navi``: NAVI v1.0 (github.com/google/navi README): 8,217 multi-view and 2,298 in-the-wild
#:   object-to-image alignments; train = multi-view, test = in-the-wild, ``pairs`` = one pair of
#:   two images per in-the-wild image; 512x512. Objects lacking a collection are skipped, so these
#:   are upper bounds. ``every=k`` (the paper's cut: 4) keeps every k-th image of each split.
#: - ``voc``: VOC2007 segmentation trainval 422 / test 210 (the VOC2007 paper's table), 480x480.
#: - ``nights``: the test split with >= 6 votes, 2,120 triplets of three 224x224 images, from the
#:   DreamSim paper's split of NIGHTS' 20,019 triplets (the total is in DreamSim's dataset README;
#:   the test count is not checked against ``data.csv`` here).
#: - ``scannet1500``: the 1,500 SuperGlue/LoFTR test pairs (``test.npz``), two 480x640 images each.
PUBLISHED: dict[str, Any] = {
    "nyuv2": _nyuv2,
    "navi": _navi,
    "voc": lambda options: {"train": SplitLayout(422, 480, 480), "test": SplitLayout(210, 480, 480)},
    "nights": lambda options: {"triplets": SplitLayout(3 * 2_120, 224, 224)},
    "scannet1500": lambda options: {"pairs": SplitLayout(2 * 1_500, 480, 640)},
}
#: The tasks each real loader prepares its store for (its ``tasks`` attribute).
PUBLISHED_TASKS = {"nyuv2": ("depth", "normals"), "navi": ("depth", "normals", "correspondence"),
                   "voc": ("segmentation",), "nights": ("similarity",), "scannet1500": ("correspondence",)}
SYNTHETIC_TASKS = ("depth", "normals", "segmentation", "correspondence", "similarity")


def dataset_layout(loader: str, *, protocol: Protocol, options: Mapping[str, Any] | None = None,
                   root: DataRoot | None = None) -> DatasetLayout:
    """The split sizes of ``loader``'s store under ``protocol``: read from the prepared store when
    it is complete under ``root``, else from the published counts (the synthetic set: from its
    options)."""
    name = loader if "@" in loader else protocol.dataset_name(loader)
    base = loader.split("@")[0]
    options = {**protocol.data_options(base), **dict(options or {})}
    if root is not None and (root.dataset_store(name) / "zarr.json").exists():
        import zarr

        group = zarr.open_group(str(root.dataset_store(name)), mode="r")
        attrs = dict(group.attrs)
        if attrs.get("complete"):
            splits = {split: SplitLayout(int(g.attrs["num_images"]), int(g.attrs["height"]), int(g.attrs["width"]))
                      for split, g in group.groups()}
            return DatasetLayout(name, attrs.get("loader", base), tuple(attrs.get("tasks") or ()), splits,
                                 f"store {root.dataset_store(name)}")
    if base == "synthetic":
        from extract.datasets.synthetic import DEFAULTS

        o = {**DEFAULTS, **{k: int(v) for k, v in options.items() if k in DEFAULTS}}
        size = o["size"]
        # a pair stores its two views, a triplet its three images
        counts = {"train": o["train"], "test": o["test"], "pairs": 2 * o["pairs"], "triplets": 3 * o["triplets"]}
        splits = {name: SplitLayout(n, size, size) for name, n in counts.items()}
        return DatasetLayout(name, base, SYNTHETIC_TASKS, splits, "synthetic options")
    if base not in PUBLISHED:
        raise MidprobeError(f"dataset {name!r} is not prepared under {root.root if root else 'the data root'} and "
                            f"has no published size; known: {', '.join(['synthetic', *PUBLISHED])}")
    return DatasetLayout(name, base, PUBLISHED_TASKS[base], PUBLISHED[base](options), "published counts")


# --- layer shapes without compute --------------------------------------------------------------------

def layer_shapes_at(model: str, height: int, width: int,
                    layers: Sequence[str] | None = None) -> tuple[dict[str, tuple[int, int, int]], int]:
    """``({layer: (C, h, w)}, global dim)`` of registry or ``timm:`` model ``model`` (its
    ``layers`` only, as ``LAYERS=`` picks them) on a ``height`` x ``width`` input, from a forward
    pass on the ``meta`` device (``hf:``, ``py:`` and plugin models: one CPU forward of a zero image)."""
    return _shapes(model, tuple(layers) if layers else None, height, width)


@functools.lru_cache(maxsize=None)
def _shapes(model: str, layers: tuple[str, ...] | None, height: int,
            width: int) -> tuple[dict[str, tuple[int, int, int]], int]:
    import torch

    from extract.backbones import select_layers

    spec = select_layers(model_spec(model), list(layers) if layers else None)
    from extract.backbones.routes import ROUTE_WEIGHTS

    if spec.weights in ROUTE_WEIGHTS:
        # hf:/py:/plugin models: their own module (loaded once per process) on one zero image on the CPU
        from extract.backbones import build_backbone

        with torch.inference_mode():
            tapped, vector = build_backbone(spec.name, spec=spec)(torch.zeros(1, 3, height, width))
        return {k: tuple(int(s) for s in v.shape[1:]) for k, v in tapped.items()}, int(vector.shape[1])
    if spec.family == "handcrafted":
        # weight-free maps at stride 16 after padding; their width comes from one tiny CPU forward
        from extract.backbones import build_backbone

        tapped, vector = build_backbone(spec.name)(torch.zeros(1, 3, 16, 16))
        h, w = math.ceil(height / 16), math.ceil(width / 16)
        return {k: (int(v.shape[1]), h, w) for k, v in tapped.items()}, int(vector.shape[1])
    with torch.device("meta"):
        module = _meta_module(spec)
        with torch.inference_mode():
            tapped, vector = module(torch.zeros(1, 3, height, width))
    return {k: tuple(int(s) for s in v.shape[1:]) for k, v in tapped.items()}, int(vector.shape[1])


def _meta_module(spec):
    from extract.backbones.timm_models import TimmBackbone, create_timm_model

    return TimmBackbone(spec, create_timm_model(spec, pretrained=False)).eval()


@functools.lru_cache(maxsize=None)
def model_spec(model: str):
    """The :class:`BackboneSpec` of a registry name (with ``+options``) or a ``timm:`` name (built on
    the ``meta`` device to read its layers)."""
    from extract.backbones import _timm_spec, get_spec

    if not model.startswith("timm:"):
        return get_spec(model)
    import timm
    import torch

    arch = model[len("timm:"):]
    if not timm.is_model(arch.split(".")[0]):
        raise MidprobeError(f"timm has no model {arch!r}")
    with torch.device("meta"):
        probe = timm.create_model(arch, pretrained=False, num_classes=0)
    return _timm_spec(model, probe, None)


# --- sizes ------------------------------------------------------------------------------------------

def feature_model_name(model: str, protocol: Protocol) -> str:
    """The name ``model``'s feature store takes under ``protocol`` (``vit_b_mae`` under ``paper``:
    ``vit_b_mae+hf+paper-layers``, its options in canonical order)."""
    from extract.runner import protocol_model

    return model_spec(protocol_model(model, protocol)).name


def size_extraction(*, model: str, layout: DatasetLayout, protocol: Protocol, tasks: Sequence[str] | None = None,
                    only_splits: Sequence[str] | None = None, layers: Sequence[str] | None = None,
                    precision: str = "fp16") -> list[SplitSize]:
    """The feature splits ``extract(model=model, dataset=layout.name, ...)`` would write, with bytes.

    ``model`` is named as the protocol names it (``<model>+paper`` under ``paper``); ``layers``
    overrides the tapped layers as ``LAYERS=`` does.
    """
    from extract.backbones import select_layers
    from extract.runner import protocol_model

    from cache.feature_store import choose_chunk_images, estimate_bytes
    from cache.quantize import check_precision
    from extract.runner import GLOBAL_CHUNK

    check_precision(precision)
    name = protocol_model(model, protocol)
    spec = select_layers(model_spec(name), list(layers) if layers else None)
    jobs = plan_extraction(attrs={"name": layout.name, "loader": layout.loader, "tasks": list(layout.tasks)},
                           splits=list(layout.splits), protocol=protocol, tasks=tasks, only_splits=only_splits,
                           layers="all" if layers else None)
    out = []
    for job in jobs:
        split = layout.splits[job.source]
        shapes, global_dim = layer_shapes_at(name, split.height, split.width, layers)
        wanted = {"all": list(spec.layer_names), "last": list(spec.layer_names[-1:]), "global": []}[job.layers]
        kept = {k: shapes[k] for k in wanted}
        views = max(1, job.choices.augment_views) if job.training else 1
        num = split.images * views
        # the runner's chunking, whose last chunk Zarr writes whole
        chunk = choose_chunk_images(kept, num) if kept else min(GLOBAL_CHUNK, num)
        out.append(SplitSize(job.name, job.source, split.images, views, split.height, split.width, kept, global_dim,
                             precision, estimate_bytes(kept, global_dim, num, precision, chunk_images=chunk)))
    return out


def human_bytes(count: float) -> str:
    """``1234567`` -> ``"1.2 MB"`` (decimal units, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if abs(count) < 1000 or unit == "PB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def format_sizes(model: str, layout: DatasetLayout, sizes: Sequence[SplitSize]) -> str:
    """One line per feature split and the total, as ``make extract DRY=1`` prints them."""
    lines = [f"{model} on {layout.name} (split sizes from {layout.source}):"]
    for s in sizes:
        layers = ", ".join(f"{k}{list(v)}" for k, v in s.layers.items()) or "no maps"
        views = f" x {s.views} views" if s.views > 1 else ""
        lines.append(f"  {s.feature_split:<28} {s.images:>9,} images{views} at {s.height}x{s.width}: {layers} + "
                     f"global[{s.global_dim}], {s.precision}: {human_bytes(s.bytes)}")
    lines.append(f"  total {human_bytes(sum(s.bytes for s in sizes))}")
    return "\n".join(lines)
