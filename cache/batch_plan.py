"""Which images each batch of an epoch holds, and in which order: computed once, served by every reader.

The order is two-level: the order of chunks (a seeded permutation), then a permutation of the
images inside each window of ``window_chunks`` consecutive chunks of that order. A batch takes
consecutive positions of its window's permutation; a batch left short at a window's end is
completed from the next window ("carried"). Within the part a window gives a batch, images come
in window order (the positions sorted), so that each chunk fills a contiguous slice of the batch.

:func:`plan_batches` draws every random number in the order the streaming iterator always drew
them (one generator seeded with ``[seed, epoch]``: the chunk permutation, then one permutation per
window), so a streamed epoch and one served from memory hold the same images in the same order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np


@dataclass(frozen=True)
class Block:
    """One chunk's part of a window: feature images ``rows`` (ascending), all within ``[lo, hi)``."""

    chunk: int
    lo: int
    hi: int
    rows: np.ndarray                  # (n,) int64

    @property
    def whole(self) -> bool:
        """Whether the block is every image of ``[lo, hi)`` (read as one contiguous range)."""
        return len(self.rows) == self.hi - self.lo


@dataclass(frozen=True)
class Window:
    """The chunks read together, and the batch parts cut from them.

    ``rows`` is the feature image at each window position (the blocks' rows, concatenated);
    each piece is ``(batch number, ascending window positions)``.
    """

    blocks: tuple[Block, ...]
    rows: np.ndarray                                  # (m,) int64
    pieces: tuple[tuple[int, np.ndarray], ...]

    @property
    def offsets(self) -> np.ndarray:
        """``(len(blocks) + 1,)`` window position of each block's first image, then ``m``."""
        return np.cumsum([0] + [len(b.rows) for b in self.blocks])


@dataclass(frozen=True)
class BatchPlan:
    """An epoch's windows and the batches they make; ``batches[b]`` is batch ``b``'s feature images."""

    windows: tuple[Window, ...]
    batches: tuple[np.ndarray, ...]

    @property
    def images(self) -> int:
        return int(sum(len(b) for b in self.batches))


def plan_batches(*, num_images: int, chunk_images: int, batch_size: int, seed: int = 0, epoch: int = 0,
                 shuffle: bool = True, chunks: Sequence[int] | None = None, window_chunks: int = 4,
                 drop_last: bool = False, images: tuple[int, int] | None = None,
                 subset: np.ndarray | None = None) -> BatchPlan:
    """The plan of one epoch over a split of ``num_images`` images in chunks of ``chunk_images``.

    ``images = (lo, hi)`` keeps feature images ``lo:hi``; ``chunks`` reads only these chunks;
    ``subset`` keeps only these feature images (inside ``images``; not with ``chunks``): only the
    chunks holding one of them are read, and a subset of every image gives exactly the plan of no
    subset. The order depends only on ``(seed, epoch)``.
    """
    if batch_size < 1 or window_chunks < 1:
        raise ValueError(f"batch size {batch_size} and window of {window_chunks} chunks must be >= 1")
    k, n = chunk_images, num_images
    lo_limit, hi_limit = images if images is not None else (0, n)
    if not 0 <= lo_limit < hi_limit <= n:
        raise ValueError(f"image range {images} is outside the split's {n} images")
    default_chunks: Sequence[int] | np.ndarray = range(lo_limit // k, -(-hi_limit // k))
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

    def block(ci: int) -> Block:
        lo, hi = max(ci * k, lo_limit), min((ci + 1) * k, hi_limit)
        rows = np.arange(lo, hi, dtype=np.int64)
        if members is not None:
            rows = members[(members >= lo) & (members < hi)]
            lo, hi = int(rows[0]), int(rows[-1]) + 1
        return Block(ci, lo, hi, rows)

    windows: list[tuple[tuple[Block, ...], np.ndarray, list[tuple[int, np.ndarray]]]] = []
    sizes: list[int] = []                       # images of each batch so far
    open_batch: int | None = None               # the batch carried into the next window
    for w in range(0, len(chunk_order), window_chunks):
        blocks = tuple(block(int(ci)) for ci in chunk_order[w:w + window_chunks])
        rows = np.concatenate([b.rows for b in blocks])
        m = len(rows)
        perm = rng.permutation(m) if shuffle else np.arange(m)
        pieces: list[tuple[int, np.ndarray]] = []
        windows.append((blocks, rows, pieces))
        start = 0
        if open_batch is not None:
            need = batch_size - sizes[open_batch]
            pieces.append((open_batch, np.sort(perm[:need])))
            sizes[open_batch] += len(perm[:need])
            start = min(need, m)
            if sizes[open_batch] < batch_size:
                continue
            open_batch = None
        full = start + ((m - start) // batch_size) * batch_size
        for s in range(start, full, batch_size):
            pieces.append((len(sizes), np.sort(perm[s:s + batch_size])))
            sizes.append(batch_size)
        if full < m:
            open_batch = len(sizes)
            pieces.append((open_batch, np.sort(perm[full:])))
            sizes.append(m - full)
    dropped = open_batch if drop_last else None
    parts: list[list[np.ndarray]] = [[] for _ in sizes]
    done = []
    for blocks, rows, pieces in windows:
        kept = tuple((b, p) for b, p in pieces if b != dropped)
        for b, positions in kept:
            parts[b].append(rows[positions])
        done.append(Window(blocks, rows, kept))
    batches = tuple(np.concatenate(p) for b, p in enumerate(parts) if b != dropped)
    return BatchPlan(tuple(done), batches)
