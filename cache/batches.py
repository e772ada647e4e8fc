"""A seeded, shuffled batch iterator over a feature store whose memory stays bounded.

Images are read chunk by chunk (a chunk is a contiguous range of whole images), so
reads are sequential on disk. Shuffling happens at two levels: the order of chunks,
and the order of images inside a window of ``window_chunks`` chunks. Batches are
gathered from the window by index, so at most two windows (the one being consumed and
the one read ahead) plus one batch are in memory, whatever the store's size, and every
image appears exactly once per epoch.
"""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import zarr

from cache.chunks import read_checked
from cache.feature_store import FeatureSplit
from cache.quantize import Quantized


@dataclass
class Batch:
    """One batch: image indices into the split, features per layer, targets per key."""

    index: np.ndarray                 # (B,) int64
    features: dict[str, np.ndarray | Quantized]   # layer -> (B, C, h, w) float16, or int8 + scales
    targets: dict[str, np.ndarray]    # key -> (B, ...) as stored


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


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
    targets = dict(targets or {})
    k, n = features.chunk_images, features.num_images
    lo_limit, hi_limit = images if images is not None else (0, n)
    if not 0 <= lo_limit < hi_limit <= n:
        raise ValueError(f"image range {images} is outside the split's {n} images")
    default_chunks = range(lo_limit // k, -(-hi_limit // k))
    members = None
    if subset is not None:
        members = np.unique(np.asarray(subset, dtype=np.int64))
        if not len(members) or members[0] < lo_limit or members[-1] >= hi_limit or chunks is not None:
            raise ValueError(f"subset of {len(members)} images must be non-empty, inside images {lo_limit}:{hi_limit} "
                             "and not combined with chunks")
        default_chunks = np.unique(members // k)
    chunk_order = np.asarray(list(chunks) if chunks is not None else default_chunks, dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    if shuffle:
        chunk_order = chunk_order[rng.permutation(len(chunk_order))]

    def read_window(window: np.ndarray) -> list[dict[str, np.ndarray]]:
        blocks = []
        target_chunks: dict[tuple[str, int], np.ndarray] = {}   # whole target chunks, read once per window
        for ci in window:
            lo, hi = max(int(ci) * k, lo_limit), min((int(ci) + 1) * k, hi_limit)
            rows = np.arange(lo, hi, dtype=np.int64)
            if members is not None:
                rows = members[(members >= lo) & (members < hi)]
                lo, hi = int(rows[0]), int(rows[-1]) + 1
            keep = None if len(rows) == hi - lo else rows - lo
            pick = (lambda a: a) if keep is None else (lambda a: np.take(a, keep, axis=0))
            block = {"__index__": rows}
            for layer in layers:
                stored = features.read_stored(layer, lo, hi)
                if isinstance(stored, Quantized):      # int8 and scales travel as stored, dequantised on use
                    block[f"f:{layer}"], block[f"s:{layer}"] = pick(stored.values), pick(stored.scale)
                else:
                    block[f"f:{layer}"] = pick(stored)
            for key, arr in targets.items():
                block[f"t:{key}"] = pick(_read_range(arr, lo - target_offset, hi - target_offset, key, target_chunks))
            blocks.append(block)
        return blocks

    def windows() -> Iterator[list[dict[str, np.ndarray]]]:
        for w in range(0, len(chunk_order), window_chunks):
            yield read_window(chunk_order[w:w + window_chunks])

    source: Iterator[list[dict[str, np.ndarray]]] = _prefetched(windows()) if prefetch else windows()
    carry: dict[str, np.ndarray] | None = None
    for blocks in source:
        offsets = np.cumsum([0] + [len(b["__index__"]) for b in blocks])
        m = int(offsets[-1])
        perm = rng.permutation(m) if shuffle else np.arange(m)
        start = 0
        if carry is not None:
            # complete the carried partial batch from this window first
            need = batch_size - len(carry["__index__"])
            merged = _concat([carry, _gather(blocks, offsets, perm[:need])])
            carry, start = None, min(need, m)
            if len(merged["__index__"]) < batch_size:
                carry = merged
                continue
            yield _as_batch(merged)
        full = start + ((m - start) // batch_size) * batch_size
        for s in range(start, full, batch_size):
            yield _as_batch(_gather(blocks, offsets, perm[s:s + batch_size]))
        if full < m:
            carry = _gather(blocks, offsets, perm[full:])
    if carry is not None and not drop_last:
        yield _as_batch(carry)


def _read_range(arr: Any, lo: int, hi: int, key: str, cache: dict[tuple[str, int], np.ndarray]) -> np.ndarray:
    """Images ``lo:hi`` of a per-image array. A zarr array is read in whole chunks, each
    at most once per window: the target store's chunks need not match the feature store's,
    and reading part of an uncompressed chunk still reads all of it. A damaged chunk is a
    one-line error naming it."""
    step = getattr(arr, "chunks", None)
    if step is None:
        return np.asarray(arr[lo:hi])
    step = step[0]
    parts = []
    for c in range(lo // step, (hi - 1) // step + 1):
        if (key, c) not in cache:
            cache[(key, c)] = read_checked(arr, slice(c * step, min((c + 1) * step, arr.shape[0])))
        parts.append(cache[(key, c)][max(lo - c * step, 0):hi - c * step])
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def _gather(blocks: list[dict[str, np.ndarray]], offsets: np.ndarray, positions: np.ndarray) -> dict[str, np.ndarray]:
    """The images at window ``positions`` from the window's chunk blocks, copied once.

    Positions are taken in ascending order (the batch's membership is what the shuffle
    chose; order within a batch does not matter to a summed loss), so each block fills a
    contiguous slice of the output.
    """
    positions = np.sort(positions)
    bounds = np.searchsorted(positions, offsets)
    out = {}
    for key, first in blocks[0].items():
        dest = np.empty((len(positions), *first.shape[1:]), dtype=first.dtype)
        for b, block in enumerate(blocks):
            lo, hi = bounds[b], bounds[b + 1]
            if hi > lo:
                # mode="clip" writes straight into out ("raise" buffers); the indices are in range
                np.take(block[key], positions[lo:hi] - offsets[b], axis=0, out=dest[lo:hi], mode="clip")
        out[key] = dest
    return out


def _as_batch(block: dict[str, np.ndarray]) -> Batch:
    return Batch(index=block["__index__"],
                 features={k[2:]: Quantized(v, block[f"s:{k[2:]}"]) if f"s:{k[2:]}" in block else v
                           for k, v in block.items() if k.startswith("f:")},
                 targets={k[2:]: v for k, v in block.items() if k.startswith("t:")})


def _prefetched(source: Iterator[dict[str, np.ndarray]], depth: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Read the next window in a background thread while the caller computes."""
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
