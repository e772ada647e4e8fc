"""The extraction runner: a frozen backbone once over a dataset split, into a feature store."""

from __future__ import annotations

import dataclasses
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from cache import FORMAT_VERSION, MidprobeError, SplitView, data_root, open_dataset, open_feature_writer
from cache.augment import augment_pixels, view_params
from cache.chunk_reader import reader_threads
from cache.quantize import Quantized, check_precision
from cache.feature_store import choose_chunk_images, estimate_bytes
from cache.paths import DataRoot
from extract.backbones import Backbone, build_backbone, get_spec
from extract.backbones.timm_models import TimmBackbone
from extract.corruptions import MIN_SIDE, corrupt_images, parse_corruption, parse_list
from extract.pipeline import WriterPool, host_images, normalise, read_ahead, run_chunk, writer_threads
from extract.plan import SplitJob, plan_extraction
from protocols import ExtractionChoices, Protocol, get_protocol

#: Input normalisation choices -> (mean, std), ``None`` meaning the backbone's own.
INPUT_NORMS = {"model": None, "none": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0)), "half": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}
#: Images per chunk of a split that holds only global vectors.
GLOBAL_CHUNK = 256
#: The seed of every augmented view (a view is a pure function of policy, seed, image and view).
AUGMENT_SEED = 0


def _bytes(n: float) -> str:
    """A size in the largest unit that keeps it >= 1 (``~0 MiB`` told a user nothing)."""
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{n:.0f} bytes"


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MidprobeError(f"device {name!r} was asked for but no CUDA GPU is visible; use DEVICE=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise MidprobeError(f"unknown device {name!r}; expected cpu, cuda or cuda:<i>") from None


def to_input(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """``(B, H, W, 3)`` images — uint8, or float pixels with 1 = white (augmented views) — to the
    ``(B, 3, H, W) float32`` normalised input."""
    return normalise(torch.from_numpy(np.ascontiguousarray(images)).to(device), mean, std)


def input_stats(backbone: Backbone, choices: ExtractionChoices) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The ``(mean, std)`` images are normalised with under ``choices.input_norm``."""
    if choices.input_norm not in INPUT_NORMS:
        raise MidprobeError(f"input normalisation {choices.input_norm!r}: expected {', '.join(INPUT_NORMS)}")
    return INPUT_NORMS[choices.input_norm] or (backbone.spec.mean, backbone.spec.std)


def forward_chunk(backbone: Backbone, images: np.ndarray, *, batch_size: int, device: torch.device,
                  layers: list[str] | None = None, norm: tuple[tuple[float, ...], tuple[float, ...]] | None = None,
                  precision: str = "fp16") -> tuple[dict[str, np.ndarray | Quantized], np.ndarray]:
    """Run one chunk of images in batches; maps ``(n, C, h, w)`` — float16, or at int8
    :class:`~cache.quantize.Quantized` — and float16 globals ``(n, D)``.

    The range check and the cast to float16 (or the quantisation to int8) happen on the
    device, so half (a quarter) of the float32 bytes cross to the host and the host's slow,
    single-threaded numpy casts are skipped (:func:`extract.pipeline.run_chunk`, which the
    extraction runs without waiting for the device).

    Batches always start at the chunk's first image, so a resumed or sharded run sees the
    same batch composition as an uninterrupted one and writes the same bytes. ``layers``
    keeps only those maps (default: all); ``norm`` is the ``(mean, std)`` of the input.
    """
    mean, std = norm or (backbone.spec.mean, backbone.spec.std)
    stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    return run_chunk(backbone, host_images(images, device), batch_size=batch_size, device=device, layers=layers,
                     mean=mean, std=std, precision=precision, copy_stream=stream).ready()


def fingerprint_of(backbone: Backbone, split: SplitView, dataset_name: str, dataset_fingerprint: str, *,
                   job: SplitJob | None = None, layers: list[str] | None = None) -> dict[str, Any]:
    """What a feature split was computed from; ``split`` is its name (``<source>@<tag>`` for choices
    other than the defaults), ``source_split`` the dataset split it was computed from."""
    import timm

    spec = backbone.spec
    choices = job.choices if job else ExtractionChoices()
    mean, std = input_stats(backbone, choices)
    return {
        "format_version": FORMAT_VERSION, "model": spec.name, "weights": backbone.weights_id,
        "timm_version": timm.__version__, "layers": list(spec.layer_names if layers is None else layers),
        "input_size": list(split.image_size), "mean": list(mean), "std": list(std), "feature_norm": False,
        "dataset": dataset_name, "dataset_fingerprint": dataset_fingerprint,
        "split": job.name if job else split.name, "source_split": split.name,
        "input_norm": choices.input_norm, "global_kind": spec.global_kind,
        "augment": ({"views": choices.augment_views, "policy": choices.augment_policy, "seed": AUGMENT_SEED}
                    if job and job.training and choices.augment_views else None),
        # only on corrupted splits, so clean splits keep the fingerprint they always had
        **({"corruption": parse_corruption(choices.corruption).fingerprint()} if choices.corruption else {}),
        # hf:/py:/plugin models: the factory's file digest and version, or the HF config's digest
        **({"model_source": backbone.source_id} if backbone.source_id else {}),
    }


def layer_shapes(backbone: Backbone, height: int, width: int, device: torch.device) -> tuple[dict[str, tuple[int, int, int]], int]:
    """Per-layer ``(C, h, w)`` and the global dimension at the given input size."""
    try:
        with torch.inference_mode():
            layers, vector = backbone(torch.zeros(1, 3, height, width, device=device))
    except (AssertionError, IndexError) as exc:     # timm refuses a block/stage index the model lacks
        raise MidprobeError(f"model {backbone.spec.name!r} has no layers {', '.join(backbone.spec.layer_names)} "
                            f"({exc}); pick layers it has (see docs/models.md, Layers)") from None
    return {k: tuple(v.shape[1:]) for k, v in layers.items()}, int(vector.shape[1])


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


@dataclass
class ExtractionReport:
    store: Path
    split: str
    images_written: int
    complete: bool
    seconds: float


def protocol_model(model: str, protocol: Protocol) -> str:
    """``model`` as ``protocol`` names it (its ``model_option``, e.g. ``<model>+paper``, for a model
    that offers it: :meth:`protocols.Protocol.model_name`)."""
    if "+" in model or model.startswith("timm:") or not protocol.model_option:
        return model
    return protocol.model_name(model, get_spec(model).offered_options)


def extract(*, model: str, dataset: str, splits: list[str] | None = None, layers: list[str] | None = None,
            protocol: str | Protocol = "midprobe", tasks: list[str] | None = None, precision: str = "fp16",
            batch_size: int = 16, device: str = "cpu", shard: tuple[int, int] = (0, 1),
            weights: str | None = None, chunk_images: int | None = None, root: DataRoot | None = None,
            backbone: Backbone | None = None, progress: bool = True,
            corruptions: Sequence[str] | str | None = None) -> list[ExtractionReport]:
    """Extract ``model``'s features for the feature splits ``protocol``'s tasks read from ``dataset``.

    The plan (:func:`extract.plan.plan_extraction`) picks, per task of the dataset store
    (``tasks`` to narrow it), the dataset splits, the extraction choices and the layers;
    ``splits`` keeps only those dataset splits; ``layers`` (names or indices) overrides the
    layers. Resumable (chunks already durable are skipped) and shardable (``shard=(i, n)``
    writes only its chunk-aligned block). ``precision`` ``"int8"`` writes the int8 store
    (``<model>@int8.zarr``) instead of the float16 one. A complete split that lacks a planned
    layer gains it (only the new layers are written). ``corruptions`` (``["fog:3", ...]`` or
    ``"fog:3,contrast:2"``) extracts instead, for each, the corrupted copies of the evaluation
    splits (:mod:`extract.corruptions`). Returns one report per feature split.
    """
    root = root or data_root()
    if batch_size < 1:
        raise MidprobeError(f"batch size must be >= 1, got {batch_size}")
    protocol = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
    check_precision(precision)
    store = open_dataset(dataset if "@" in dataset else protocol.dataset_name(dataset), root=root)
    torch_device = resolve_device(device)
    corrupted = parse_list(corruptions if isinstance(corruptions, str) else ",".join(corruptions or ()))
    jobs = [job for corruption in corrupted or [""]
            for job in plan_extraction(attrs=store.attrs, splits=store.splits, protocol=protocol, tasks=tasks,
                                       only_splits=splits, layers="all" if layers else None, corruption=corruption)]
    backbone = backbone or build_backbone(protocol_model(model, protocol), weights=weights, layers=layers)
    backbone.module.to(torch_device)
    path = root.feature_store(store.name, backbone.spec.name, precision)
    root.ensure_writable(path.parent)
    reports = []
    for job in jobs:
        split = store.split(job.source)
        reports.append(_extract_split(backbone, split, job, store.name, store.fingerprint, path,
                                      batch_size=batch_size, device=torch_device, shard=shard,
                                      chunk_images=chunk_images, progress=progress, precision=precision))
    return reports


def with_global_kind(backbone: Backbone, kind: str) -> Backbone:
    """The same network giving global vector ``kind`` (the family's default where ``kind`` does not
    apply: a CNN's pooled last stage is the paper's NIGHTS vector for a CNN)."""
    from extract.backbones.timm_models import GLOBAL_KINDS

    family = backbone.spec.family
    kind = kind if kind in GLOBAL_KINDS.get(family, ("default",)) else "default"
    if kind == backbone.spec.global_kind:
        return backbone
    spec = dataclasses.replace(backbone.spec, global_kind=kind)
    module = backbone.module
    if isinstance(module, TimmBackbone):
        module = TimmBackbone(spec, module.model).eval()
    elif hasattr(module, "with_spec"):      # hf:, py: and plugin modules
        module = module.with_spec(spec).eval()
    return Backbone(spec, module, backbone.weights_id, backbone.source_id)


def view_source(index: np.ndarray, num_images: int) -> tuple[np.ndarray, np.ndarray]:
    """Feature images of a view-major augmented split -> (view, dataset image) of each."""
    return index // num_images, index % num_images


def model_attrs(spec) -> dict[str, Any]:
    """What a feature store records about its model's variant: its base model, the ``+options``
    applied, the options ``+paper`` stands for, and whether this store is that paper variant (so a
    probe under ``PROTOCOL=paper`` finds ``vit_b_mae+hf+paper-layers+sincos`` for ``vit_b_mae``)."""
    base, *options = spec.name.split("+")
    paper = list(spec.paper_options)
    return {"paper_options": paper, "base_model": base, "options": options,
            "paper_variant": bool(paper) and sorted(options) == sorted(paper)}


def _job_layers(backbone: Backbone, job: SplitJob) -> list[str]:
    names = list(backbone.spec.layer_names)
    return {"all": names, "last": names[-1:], "global": []}[job.layers]


def _extract_split(backbone: Backbone, split: SplitView, job: SplitJob, dataset_name: str, dataset_fp: str,
                   path: Path, *, batch_size: int, device: torch.device, shard: tuple[int, int],
                   chunk_images: int | None, progress: bool, precision: str = "fp16",
                   chunks: Sequence[int] | None = None) -> ExtractionReport:
    """Extract one feature split into the store at ``path``; ``chunks`` writes only those chunks
    (:mod:`probe.lockstep`: one augmented view at a time) and leaves the split unfinalised."""
    backbone = with_global_kind(backbone, job.choices.global_kind)
    views = job.choices.augment_views if job.training else 0
    num = split.num_images * max(views, 1)
    height, width = split.image_size
    if job.choices.corruption and min(height, width) < MIN_SIDE:
        raise MidprobeError(f"corruption {job.choices.corruption!r} needs images of at least {MIN_SIDE}x{MIN_SIDE} "
                            f"px; {dataset_name}/{split.name} has {height}x{width}")
    wanted = _job_layers(backbone, job)
    all_shapes, global_dim = layer_shapes(backbone, height, width, device)
    shapes = {name: all_shapes[name] for name in wanted}
    norm = input_stats(backbone, job.choices)
    chunk = chunk_images or (choose_chunk_images(shapes, num) if shapes else min(GLOBAL_CHUNK, num))
    need = estimate_bytes(shapes, global_dim, num, precision, chunk_images=chunk)
    if chunks is not None:
        need = need * len(chunks) // max(-(-num // chunk), 1)
    free = _free_bytes(path)
    _say(progress, f"[extract] {backbone.spec.name} on {dataset_name}/{job.name}: {num} images "
                   f"{height}x{width}, layers {', '.join(f'{k}{list(v)}' for k, v in shapes.items()) or 'none'} "
                   f"+ global, store ~{need / 2**20:.1f} MiB ({free / 2**30:.1f} GiB free)")
    if need > free:
        raise MidprobeError(f"not enough disk for the feature store at {path}: needs ~{_bytes(need)}, "
                            f"{_bytes(free)} free; free space or set DATA= to another disk")
    strides = dict(zip(backbone.spec.layer_names, backbone.spec.strides))
    writer = open_feature_writer(path, split=job.name,
                                 fingerprint=fingerprint_of(backbone, split, dataset_name, dataset_fp, job=job,
                                                            layers=wanted),
                                 num_images=num, layer_shapes=shapes,
                                 strides={name: strides[name] for name in wanted},
                                 global_dim=global_dim, chunk_images=chunk, precision=precision,
                                 store_attrs=model_attrs(backbone.spec))
    missing = [name for name in writer.layers if name not in all_shapes]
    if missing and writer.group.attrs.get("complete") and not writer.adding:
        missing = []            # every layer asked for is already in this complete split: nothing to write
    if missing:
        raise MidprobeError(f"{path}/{job.name} is being extracted with layers {', '.join(writer.layers)}; this "
                            f"run computes {', '.join(all_shapes)}; rerun the same `make extract` to finish it")
    wanted = list(writer.layers)
    pending = writer.pending(shard) if chunks is None else [i for i in chunks if not writer.is_done(i)]
    todo = sum(hi - lo for lo, hi in map(writer.chunk_range, pending))
    started = time.perf_counter()

    def read(index: int) -> torch.Tensor:
        """Chunk ``index``'s images (augmented views: float pixels; corrupted copies: corrupted) as a
        host tensor, pinned on CUDA."""
        lo, hi = writer.chunk_range(index)
        if not views:
            images = split.read("images", slice(lo, hi))       # a damaged chunk: one line naming it
            if job.choices.corruption:
                images = corrupt_images(images, job.choices.corruption, np.arange(lo, hi))
            return host_images(images, device)
        view, source = view_source(np.arange(lo, hi), split.num_images)
        pixels = split.read("images", source)
        return host_images(np.stack([augment_pixels(pixels[j], view_params(job.choices.augment_policy,
                                                                           seed=AUGMENT_SEED, index=int(i),
                                                                           view=int(v)))
                                     for j, (v, i) in enumerate(zip(view, source))]), device)

    from cache.progress import tqdm_like as tqdm

    bar = tqdm(total=todo, unit="img", desc=f"{backbone.spec.name}/{job.name}", disable=not progress,
               file=sys.stderr, smoothing=0.1)
    # image reads run ahead in the reader pool; the forward pass only enqueues work on the device;
    # chunks are written (and fsynced, then marked) by several threads
    sink = WriterPool(lambda index, out: writer.write_chunk(index, *out.ready()), threads=writer_threads(device))
    copy_stream = torch.cuda.Stream(device) if device.type == "cuda" else None
    try:
        for index, images in read_ahead(pending, read, depth=reader_threads()):
            sink.put(index, run_chunk(backbone, images, batch_size=batch_size, device=device, layers=wanted,
                                      mean=norm[0], std=norm[1], precision=precision, copy_stream=copy_stream))
            bar.update(len(images))
    finally:
        bar.close()
        sink.close()
    complete = writer.finalize() if chunks is None else False
    seconds = time.perf_counter() - started
    state = ("complete" if complete else "this shard done; other shards pending" if chunks is None
             else f"chunks {chunks[0]}-{chunks[-1]}" if chunks else "no chunk")
    _say(progress, f"[extract] wrote {todo} images in {seconds:.1f} s to {path}/{job.name} ({state})")
    return ExtractionReport(path, job.name, todo, complete, seconds)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr)
