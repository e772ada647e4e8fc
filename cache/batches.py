"""A seeded, shuffled batch iterator over a feature store whose memory stays bounded.

Images are read chunk by chunk (a chunk is a contiguous range of whole images), so
reads stay within a few chunk files at a time. Shuffling happens at two levels: the order of
chunks, and the order of images inside a window of ``window_chunks`` chunks (:mod:`cache.batch_plan`
fixes both). float16 maps in raw chunk files are read image by image straight into each batch
(:func:`cache.chunks.read_rows_into`: a run of consecutive images is one ``preadv``); int8 maps,
compressed arrays and targets are read as whole window blocks, in parallel threads
(:mod:`cache.chunk_reader`), and gathered by index. Batches are built in a background thread two
ahead of the caller, so at most a window of blocks plus four batches (two queued, one being
built, the caller's) are in memory, whatever the store's size, and every image appears exactly
once per epoch.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence, TypeVar

import numpy as np
import zarr

from cache.batch_plan import BatchPlan, Window, plan_batches
from cache.chunk_reader import read_target_chunk, results, slice_rows, submit, target_chunks
from cache.chunks import read_rows_into, rows_readable
from cache.feature_store import FeatureSplit
from cache.quantize import Quantized

T = TypeVar("T")


@dataclass
class Batch:
    """One batch: image indices into the split, features per layer, targets per key.

    From :func:`iterate_batches` the values are numpy arrays as stored; from
    :class:`cache.loader.FeatureLoader` they are tensors on its device.
    """

    index: np.ndarray                 # (B,) int64
    features: dict[str, Any]          # layer -> (B, C, h, w) float16, or int8 + scales (Quantized)
    targets: dict[str, Any]           # key -> (B, ...) as stored


def iterate_batches(features: FeatureSplit, *, layers: Sequence[str], batch_size: int, seed: int = 0,
                    epoch: int = 0, shuffle: bool = True, targets: Mapping[str, zarr.Array] | None = None,
                    chunks: Sequence[int] | None = None, window_chunks: int = 4,
                    drop_last: bool = False, prefetch: bool = True,
                    images: tuple[int, int] | None = None, target_offset: int = 0,
                    subset: np.ndarray | None = None) -> Iterator[Batch]:
    """Yield :class:`Batch` es covering the chosen chunks' images once each.

    ``targets`` are per-image arrays of the dataset store; feature image ``f`` reads target
    ``f - target_offset`` (0: the same N and order as the features). ``images = (lo, hi)``
    keeps only feature images ``lo:hi`` (one augmented view of a view-major split).
    ``subset`` keeps only these feature images (inside ``images``), still read chunk by chunk
    in windows: only the chunks holding one of them are read, and a subset of every image
    gives exactly the batches of no subset. The order depends only on ``(seed, epoch)``.
    """
    plan = plan_batches(num_images=features.num_images, chunk_images=features.chunk_images, batch_size=batch_size,
                        seed=seed, epoch=epoch, shuffle=shuffle, chunks=chunks, window_chunks=window_chunks,
                        drop_last=drop_last, images=images, subset=subset)
    targets = dict(targets or {})
    # float16 maps in raw chunk files are read image by image straight into each batch; int8 maps
    # (with their scales), compressed arrays and targets come through window blocks and a gather
    direct = {f"f:{layer}": features.array(layer) for layer in layers
              if features.precision != "int8" and rows_readable(features.array(layer))}
    windowed = [layer for layer in layers if f"f:{layer}" not in direct]

    def start(blocks: list[dict[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
        return {**{key: np.empty((size, *arr.shape[1:]), dtype=arr.dtype) for key, arr in direct.items()},
                **_empty_batch(blocks, size)}

    def fill(out: dict[str, np.ndarray], at: int, blocks: list[dict[str, np.ndarray]], window: Window,
             positions: np.ndarray) -> None:
        rows = window.rows[positions]
        reads = [submit(read_rows_into, arr, rows, out[key][at:at + len(rows)]) for key, arr in direct.items()]
        _gather_into(out, at, blocks, window, positions)
        results(reads)

    def batches() -> Iterator[Batch]:
        windows = (read_window(features, window, windowed, targets, target_offset) for window in plan.windows)
        for b, block in assemble(plan, windows, start=start, fill=fill, done=lambda block: block):
            yield _as_batch(plan.batches[b], block)

    # batches are read and cut in a background thread (and the reader pool) while the caller computes
    yield from _prefetched(batches(), depth=2) if prefetch else batches()


def assemble(plan: BatchPlan, windows: Iterable[T], *, start: Callable[[T, int], Any],
             fill: Callable[[Any, int, T, Window, np.ndarray], None],
             done: Callable[[Any], dict[str, Any]]) -> Iterator[tuple[int, dict[str, Any]]]:
    """``(batch number, values)`` of every batch of ``plan``, in order, from each window's data.

    A batch's buffer is made by ``start(data, size)`` when its first piece is cut;
    ``fill(buffer, at, data, window, positions)`` puts the window ``positions``' images at
    ``at``; ``done(buffer)`` gives the batch. A batch carried into the next window is completed
    there, so a window's data is let go as soon as its pieces are cut, whatever holds it (host
    blocks, device tensors).
    """
    sizes = [len(b) for b in plan.batches]
    open_batches: dict[int, tuple[Any, int]] = {}
    for window, data in zip(plan.windows, windows):
        for b, positions in window.pieces:
            buffer, at = open_batches.pop(b) if b in open_batches else (start(data, sizes[b]), 0)
            fill(buffer, at, data, window, positions)
            at += len(positions)
            if at == sizes[b]:
                yield b, done(buffer)
            else:
                open_batches[b] = (buffer, at)


def read_window(features: FeatureSplit, window: Window, layers: Sequence[str], targets: Mapping[str, Any],
                target_offset: int) -> list[dict[str, np.ndarray]]:
    """Each block's features (``f:<layer>``, ``s:<layer>`` for int8 scales) and targets (``t:<key>``),
    every chunk read in parallel; a target chunk shared by several blocks is read once."""
    reads = [[submit(features.read_stored, layer, b.lo, b.hi) for layer in layers] for b in window.blocks]
    needed = {key: sorted({c for b in window.blocks
                           for c in target_chunks(arr, b.lo - target_offset, b.hi - target_offset)})
              for key, arr in targets.items()}
    chunk_reads = {key: [submit(read_target_chunk, targets[key], c) for c in cs] for key, cs in needed.items()}
    stored = [results(r) for r in reads]
    whole = {key: dict(zip(needed[key], results(fs))) for key, fs in chunk_reads.items()}
    blocks = []
    for b, values in zip(window.blocks, stored):
        keep = None if b.whole else b.rows - b.lo
        pick = (lambda a: a) if keep is None else (lambda a: np.take(a, keep, axis=0))
        block: dict[str, np.ndarray] = {}
        for layer, value in zip(layers, values):
            if isinstance(value, Quantized):      # int8 and scales travel as stored, dequantised on use
                block[f"f:{layer}"], block[f"s:{layer}"] = pick(value.values), pick(value.scale)
            else:
                block[f"f:{layer}"] = pick(value)
        for key, arr in targets.items():
            block[f"t:{key}"] = pick(slice_rows(arr, b.lo - target_offset, b.hi - target_offset, whole[key]))
        blocks.append(block)
    return blocks


def _empty_batch(blocks: list[dict[str, np.ndarray]], size: int) -> dict[str, np.ndarray]:
    return {key: np.empty((size, *first.shape[1:]), dtype=first.dtype) for key, first in blocks[0].items()}


def _gather_into(out: dict[str, np.ndarray], at: int, blocks: list[dict[str, np.ndarray]], window: Window,
                 positions: np.ndarray) -> None:
    """The images at window ``positions`` (ascending) from the window's chunk blocks into ``out`` from
    row ``at``, copied once: each block fills a contiguous slice of the output."""
    offsets = window.offsets
    bounds = np.searchsorted(positions, offsets) + at
    for key in blocks[0] if blocks else ():
        dest = out[key]
        for b, block in enumerate(blocks):
            lo, hi = bounds[b], bounds[b + 1]
            if hi > lo:
                # mode="clip" writes straight into out ("raise" buffers); the indices are in range
                np.take(block[key], positions[lo - at:hi - at] - offsets[b], axis=0, out=dest[lo:hi], mode="clip")


def _as_batch(index: np.ndarray, block: dict[str, np.ndarray]) -> Batch:
    return Batch(index=index,
                 features={k[2:]: Quantized(v, block[f"s:{k[2:]}"]) if f"s:{k[2:]}" in block else v
                           for k, v in block.items() if k.startswith("f:")},
                 targets={k[2:]: v for k, v in block.items() if k.startswith("t:")})


def _prefetched(source: Iterator[T], depth: int = 1) -> Iterator[T]:
    """Produce the next ``depth`` items in a background thread while the caller computes."""
    slots: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def worker() -> None:
        try:
            for item in source:
                while not stop.is_set():
                    try:
                        slots.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
                if stop.is_set():
                    return
            slots.put(done)
        except BaseException as exc:  # surfaced in the consumer
            slots.put(exc)

    thread = threading.Thread(target=worker, daemon=True)
    thread.start()
    try:
        while True:
            item = slots.get()
            if item is done:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
