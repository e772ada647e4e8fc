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
from typing import Iterator, Mapping, Sequence

import numpy as np
import zarr

from cache.feature_store import FeatureSplit


@dataclass
class Batch:
    """One batch: image indices into the split, features per layer, targets per key."""

    index: np.ndarray                 # (B,) int64
    features: dict[str, np.ndarray]   # layer -> (B, C, h, w) float16
    targets: dict[str, np.ndarray]    # key -> (B, ...) as stored


def _concat(parts: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _take(block: dict[str, np.ndarray], sel: np.ndarray | slice) -> dict[str, np.ndarray]:
    return {k: v[sel] for k, v in block.items()}


def iterate_batches(features: FeatureSplit, *, layers: Sequence[str], batch_size: int, seed: int = 0,
                    epoch: int = 0, shuffle: bool = True, targets: Mapping[str, zarr.Array] | None = None,
                    chunks: Sequence[int] | None = None, window_chunks: int = 4,
                    drop_last: bool = False, prefetch: bool = True) -> Iterator[Batch]:
    """Yield :class:`Batch` es covering the chosen chunks' images once each.

    ``targets`` are per-image arrays of the dataset store (same N and image order as the
    features); they are read for exactly the same images. The order depends only on
    ``(seed, epoch)``.
    """
    targets = dict(targets or {})
    k, n = features.chunk_images, features.num_images
    chunk_order = np.asarray(list(chunks) if chunks is not None else range(-(-n // k)), dtype=np.int64)
    rng = np.random.default_rng([seed, epoch])
    if shuffle:
        chunk_order = chunk_order[rng.permutation(len(chunk_order))]

    def read_chunk(ci: int) -> dict[str, np.ndarray]:
        lo, hi = int(ci) * k, min((int(ci) + 1) * k, n)
        block = {"__index__": np.arange(lo, hi, dtype=np.int64)}
        for layer in layers:
            block[f"f:{layer}"] = features.read(layer, lo, hi)
        for key, arr in targets.items():
            block[f"t:{key}"] = arr[lo:hi]
        return block

    def windows() -> Iterator[dict[str, np.ndarray]]:
        for w in range(0, len(chunk_order), window_chunks):
            yield _concat([read_chunk(ci) for ci in chunk_order[w:w + window_chunks]])

    source: Iterator[dict[str, np.ndarray]] = _prefetched(windows()) if prefetch else windows()
    carry: dict[str, np.ndarray] | None = None
    for block in source:
        m = len(block["__index__"])
        perm = rng.permutation(m) if shuffle else np.arange(m)
        start = 0
        if carry is not None:
            # complete the carried partial batch from this window first
            need = batch_size - len(carry["__index__"])
            merged = _concat([carry, _take(block, perm[:need])])
            carry, start = None, min(need, m)
            if len(merged["__index__"]) < batch_size:
                carry = merged
                continue
            yield _as_batch(merged)
        full = start + ((m - start) // batch_size) * batch_size
        for s in range(start, full, batch_size):
            yield _as_batch(_take(block, perm[s:s + batch_size]))
        if full < m:
            carry = _take(block, perm[full:])
    if carry is not None and not drop_last:
        yield _as_batch(carry)


def _as_batch(block: dict[str, np.ndarray]) -> Batch:
    return Batch(index=block["__index__"],
                 features={k[2:]: v for k, v in block.items() if k.startswith("f:")},
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
