"""Reading many chunks at once: a shared pool of reader threads, and per-image reads of targets.

Chunk reads spend their time in the kernel (``preadv`` from the page cache, or Zarr's
decompression), which releases the GIL, so a window's chunks — every layer, every target — are
read in parallel threads. The pool is shared by the batch iterator, the device loader and the
extraction runner; a task running in it never waits on another task of it (only the threads
that submit wait), so it cannot deadlock.
"""

from __future__ import annotations

import os
import threading
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

import numpy as np

from cache.chunks import read_checked

_POOL: ThreadPoolExecutor | None = None
_POOL_LOCK = threading.Lock()


def reader_threads() -> int:
    """Threads of the shared reader pool: ``MIDPROBE_READ_THREADS``, else one per core up to 8."""
    text = os.environ.get("MIDPROBE_READ_THREADS", "")
    if text.strip():
        try:
            value = int(text)
        except ValueError:
            value = 0
        if value >= 1:
            return value
        from cache.errors import MidprobeError

        raise MidprobeError(f"MIDPROBE_READ_THREADS={text!r}: expected a whole number >= 1")
    return max(2, min(8, os.cpu_count() or 1))


def reader_pool() -> ThreadPoolExecutor:
    """The process's shared pool of reader threads (created on first use)."""
    global _POOL
    with _POOL_LOCK:
        if _POOL is None:
            _POOL = ThreadPoolExecutor(max_workers=reader_threads(), thread_name_prefix="midprobe-read")
        return _POOL


def _forget_pool() -> None:
    """In a forked child: the parent's pool object came along but none of its threads did (work
    submitted to it would never run), so the child makes its own pool on first use."""
    global _POOL, _POOL_LOCK
    _POOL, _POOL_LOCK = None, threading.Lock()


os.register_at_fork(after_in_child=_forget_pool)


def submit(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Future:
    return reader_pool().submit(fn, *args, **kwargs)


def results(futures: list[Future]) -> list[Any]:
    """The futures' results in order; the first failure is raised once every read has ended (no
    read is left writing into a buffer its caller is about to reuse)."""
    for future in futures:
        future.exception()
    return [future.result() for future in futures]


def target_chunks(arr: Any, lo: int, hi: int) -> range:
    """The chunks (along N) of a per-image array holding images ``lo:hi``; ``range(0)`` for an
    array that is not chunked (in memory)."""
    step = getattr(arr, "chunks", None)
    if step is None or hi <= lo:
        return range(0)
    return range(lo // step[0], (hi - 1) // step[0] + 1)


def read_target_chunk(arr: Any, index: int) -> np.ndarray:
    """Chunk ``index`` of a per-image Zarr array, whole (a damaged chunk is a one-line error)."""
    step = arr.chunks[0]
    return read_checked(arr, slice(index * step, min((index + 1) * step, arr.shape[0])))


def slice_rows(arr: Any, lo: int, hi: int, chunks: dict[int, np.ndarray], out: np.ndarray | None = None) -> np.ndarray:
    """Images ``lo:hi`` of a per-image array from its whole chunks (``chunks``, read once per
    window: a compressed chunk is decoded whole whatever part of it is read), or straight from
    the array when it is not chunked. With ``out``, written there."""
    spans = target_chunks(arr, lo, hi)
    if not len(spans):
        value = np.asarray(arr[lo:hi])
        if out is None:
            return value
        out[...] = value
        return out
    step = arr.chunks[0]
    parts = [chunks[c][max(lo - c * step, 0):hi - c * step] for c in spans]
    if out is None:
        return parts[0] if len(parts) == 1 else np.concatenate(parts)
    at = 0
    for part in parts:
        out[at:at + len(part)] = part
        at += len(part)
    return out
