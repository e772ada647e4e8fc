"""The extraction runner: a frozen backbone once over a dataset split, into a feature store."""

from __future__ import annotations

import contextlib
import queue
import shutil
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from cache import FORMAT_VERSION, MidprobeError, SplitView, data_root, open_dataset, open_feature_writer
from cache.feature_store import GLOBAL, check_float16_range, choose_chunk_images, estimate_bytes
from cache.paths import DataRoot
from extract.backbones import Backbone, build_backbone


def resolve_device(name: str) -> torch.device:
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise MidprobeError(f"device {name!r} was asked for but no CUDA GPU is visible; use DEVICE=cpu")
    try:
        return torch.device(name)
    except RuntimeError:
        raise MidprobeError(f"unknown device {name!r}; expected cpu, cuda or cuda:<i>") from None


def to_input(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...], device: torch.device) -> torch.Tensor:
    """``(B, H, W, 3) uint8`` images to the ``(B, 3, H, W) float32`` normalised input."""
    x = torch.from_numpy(np.ascontiguousarray(images)).to(device).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean, device=device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=device).view(1, 3, 1, 1)
    return (x - m) / s


def _as_float16(name: str, value: torch.Tensor) -> np.ndarray:
    check_float16_range(name, float(value.detach().abs().amax().float()) if value.numel() else 0.0)
    return value.half().cpu().numpy()


def forward_chunk(backbone: Backbone, images: np.ndarray, *, batch_size: int,
                  device: torch.device) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Run one chunk of images in batches; float16 numpy maps ``(n, C, h, w)`` and globals ``(n, D)``.

    The range check and the cast to float16 happen on the device, so half the bytes cross
    to the host and the host's (slow, single-threaded) numpy cast is skipped.

    Batches always start at the chunk's first image, so a resumed or sharded run sees the
    same batch composition as an uninterrupted one and writes the same bytes.
    """
    maps: dict[str, list[np.ndarray]] = {}
    pooled: list[np.ndarray] = []
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else contextlib.nullcontext()
    with torch.inference_mode(), autocast:
        for s in range(0, len(images), batch_size):
            x = to_input(images[s:s + batch_size], backbone.spec.mean, backbone.spec.std, device)
            layers, vector = backbone(x)
            for name, value in layers.items():
                maps.setdefault(name, []).append(_as_float16(name, value))
            pooled.append(_as_float16(GLOBAL, vector))
    return {k: np.concatenate(v) for k, v in maps.items()}, np.concatenate(pooled)


def fingerprint_of(backbone: Backbone, split: SplitView, dataset_name: str, dataset_fingerprint: str) -> dict[str, Any]:
    import timm

    spec = backbone.spec
    return {
        "format_version": FORMAT_VERSION, "model": spec.name, "weights": backbone.weights_id,
        "timm_version": timm.__version__, "layers": list(spec.layer_names), "input_size": list(split.image_size),
        "mean": list(spec.mean), "std": list(spec.std), "feature_norm": False,
        "dataset": dataset_name, "dataset_fingerprint": dataset_fingerprint, "split": split.name,
    }


def layer_shapes(backbone: Backbone, height: int, width: int, device: torch.device) -> tuple[dict[str, tuple[int, int, int]], int]:
    """Per-layer ``(C, h, w)`` and the global dimension at the given input size."""
    try:
        with torch.inference_mode():
            layers, vector = backbone(torch.zeros(1, 3, height, width, device=device))
    except (AssertionError, IndexError) as exc:     # timm refuses a block/stage index the model lacks
        raise MidprobeError(f"model {backbone.spec.name!r} has no layers {', '.join(backbone.spec.layer_names)} "
                            f"({exc}); pick layers it has (see the README's Layers)") from None
    return {k: tuple(v.shape[1:]) for k, v in layers.items()}, int(vector.shape[1])


def _free_bytes(path: Path) -> int:
    while not path.exists():
        path = path.parent
    return shutil.disk_usage(path).free


def _background(items: Iterator[Any], depth: int = 2) -> Iterator[Any]:
    """Produce ``items`` in a thread (image reads overlap compute)."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    end = object()

    def work() -> None:
        try:
            for item in items:
                slots.put(item)
            slots.put(end)
        except BaseException as exc:
            slots.put(exc)

    threading.Thread(target=work, daemon=True).start()
    while (item := slots.get()) is not end:
        if isinstance(item, BaseException):
            raise item
        yield item


class _Writer:
    """Writes chunks in a background thread so Zarr writes overlap the next forward pass."""

    def __init__(self, write: Callable[..., None], depth: int = 2) -> None:
        self.slots: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(write,), daemon=True)
        self.thread.start()

    def _run(self, write: Callable[..., None]) -> None:
        while (item := self.slots.get()) is not None:
            if self.error is None:
                try:
                    write(*item)
                except BaseException as exc:
                    self.error = exc

    def put(self, *item: Any) -> None:
        if self.error is not None:
            raise self.error
        self.slots.put(item)

    def close(self) -> None:
        self.slots.put(None)
        self.thread.join()
        if self.error is not None:
            raise self.error


@dataclass
class ExtractionReport:
    store: Path
    split: str
    images_written: int
    complete: bool
    seconds: float


def extract(*, model: str, dataset: str, splits: list[str] | None = None, layers: list[str] | None = None,
            batch_size: int = 16, device: str = "cpu", shard: tuple[int, int] = (0, 1),
            weights: str | None = None, chunk_images: int | None = None, root: DataRoot | None = None,
            backbone: Backbone | None = None, progress: bool = True) -> list[ExtractionReport]:
    """Extract ``model``'s features for ``dataset``'s splits (default: every split).

    Resumable (chunks already durable are skipped) and shardable (``shard=(i, n)`` writes
    only its chunk-aligned block). Returns one report per split.
    """
    root = root or data_root()
    if batch_size < 1:
        raise MidprobeError(f"batch size must be >= 1, got {batch_size}")
    store = open_dataset(dataset, root=root)
    torch_device = resolve_device(device)
    backbone = backbone or build_backbone(model, weights=weights, layers=layers)
    backbone.module.to(torch_device)
    path = root.feature_store(store.name, backbone.spec.name)
    root.ensure_writable(path.parent)
    reports = []
    for split_name in splits or store.splits:
        split = store.split(split_name)
        reports.append(_extract_split(backbone, split, store.name, store.fingerprint, path, batch_size=batch_size,
                                      device=torch_device, shard=shard, chunk_images=chunk_images,
                                      progress=progress))
    return reports


def _extract_split(backbone: Backbone, split: SplitView, dataset_name: str, dataset_fp: str, path: Path, *,
                   batch_size: int, device: torch.device, shard: tuple[int, int], chunk_images: int | None,
                   progress: bool) -> ExtractionReport:
    height, width = split.image_size
    shapes, global_dim = layer_shapes(backbone, height, width, device)
    chunk = chunk_images or choose_chunk_images(shapes, split.num_images)
    need = estimate_bytes(shapes, global_dim, split.num_images)
    free = _free_bytes(path)
    _say(progress, f"[extract] {backbone.spec.name} on {dataset_name}/{split.name}: {split.num_images} images "
                   f"{height}x{width}, layers {', '.join(f'{k}{list(v)}' for k, v in shapes.items())}, "
                   f"store ~{need / 2**20:.1f} MiB ({free / 2**30:.1f} GiB free)")
    if need > free:
        raise MidprobeError(f"not enough disk for the feature store at {path}: needs ~{need / 2**20:.0f} MiB, "
                            f"{free / 2**20:.0f} MiB free; free space or set DATA= to another disk")
    writer = open_feature_writer(path, split=split.name, fingerprint=fingerprint_of(backbone, split, dataset_name, dataset_fp),
                                 num_images=split.num_images, layer_shapes=shapes,
                                 strides=dict(zip(backbone.spec.layer_names, backbone.spec.strides)),
                                 global_dim=global_dim, chunk_images=chunk)
    pending = writer.pending(shard)
    todo = sum(hi - lo for lo, hi in map(writer.chunk_range, pending))
    started = time.perf_counter()

    def reads() -> Iterator[tuple[int, np.ndarray]]:
        for index in pending:
            lo, hi = writer.chunk_range(index)
            yield index, split.read("images", slice(lo, hi))     # a damaged chunk: one line naming it

    from tqdm import tqdm

    bar = tqdm(total=todo, unit="img", desc=f"{backbone.spec.name}/{split.name}", disable=not progress,
               file=sys.stderr, smoothing=0.1)
    sink = _Writer(writer.write_chunk)
    try:
        for index, batch in _background(reads()):
            maps, vectors = forward_chunk(backbone, batch, batch_size=batch_size, device=device)
            sink.put(index, maps, vectors)
            bar.update(len(batch))
    finally:
        bar.close()
        sink.close()
    complete = writer.finalize()
    seconds = time.perf_counter() - started
    state = "complete" if complete else "this shard done; other shards pending"
    _say(progress, f"[extract] wrote {todo} images in {seconds:.1f} s to {path}/{split.name} ({state})")
    return ExtractionReport(path, split.name, todo, complete, seconds)


def _say(enabled: bool, message: str) -> None:
    if enabled:
        print(message, file=sys.stderr)
