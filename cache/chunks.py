"""Chunk files of both stores: where each lives, its recorded checksum, and reads that name a damaged one.

Every per-image array is chunked along N only, so chunk ``i`` of an array is one file,
``<store>/<split>/<array>/c/<i>/0/...`` (Zarr v3's default key encoding). Writers record
``[size in bytes, crc32c]`` of each chunk file as stored, in the split's attributes under
:data:`CHECKSUMS` (``{array: [[size, crc32c], ...]}``, one entry per chunk).

Reads through :func:`read_checked` stat the chunk files they touch against the recorded
sizes (a missing or truncated chunk would otherwise read as zeros or fail deep in a codec)
and turn any decoding failure into one line naming the store, split, array and chunk.
Checksums are compared on reads only when ``MIDPROBE_VERIFY_READS=1``; ``python -m
cache.verify`` always compares them.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cache.durable import file_checksum
from cache.errors import MidprobeError

#: The split attribute holding each array's per-chunk ``[size, crc32c]``.
CHECKSUMS = "checksums"
REPAIR_HINT = ("run `make verify REPAIR=1` (python -m cache.verify --repair), then rerun the `make extract` "
               "or `make data` that wrote the store")


def verify_reads() -> bool:
    """Whether reads also compare checksums (``MIDPROBE_VERIFY_READS=1``; sizes are always checked)."""
    return os.environ.get("MIDPROBE_VERIFY_READS", "") == "1"


def store_root(arr: Any) -> Path:
    """The folder of the store holding the Zarr array ``arr``."""
    return Path(arr.store_path.store.root)


def chunk_count(arr: Any) -> int:
    if arr.ndim == 0:
        return 1
    return -(-arr.shape[0] // arr.chunks[0]) if arr.shape[0] else 0


def chunk_file(arr: Any, index: int) -> Path:
    """The file of chunk ``index`` (along N) of ``arr``."""
    coords = (index,) + (0,) * (arr.ndim - 1) if arr.ndim else ()
    return store_root(arr) / arr.path / arr.metadata.encode_chunk_key(coords)


def chunk_images(arr: Any, index: int) -> tuple[int, int]:
    """``(first, last + 1)`` image of chunk ``index``."""
    if arr.ndim == 0:
        return 0, 1
    k = arr.chunks[0]
    return index * k, min((index + 1) * k, arr.shape[0])


def raw_chunk_bytes(arr: Any) -> int | None:
    """Bytes of one chunk file of an uncompressed array; ``None`` when compressed (sizes vary)."""
    if arr.compressors or arr.filters:
        return None
    return int(np.prod(arr.chunks if arr.ndim else (1,))) * arr.dtype.itemsize


def record_chunks(arr: Any, indices: Sequence[int]) -> dict[int, list[int]]:
    """``{chunk: [size, crc32c]}`` of the given chunk files as they are now on disk."""
    return {int(i): list(file_checksum(chunk_file(arr, i))) for i in indices}


def check_chunk(arr: Any, index: int, recorded: Sequence[int] | None, *, content: bool = True) -> str | None:
    """What is wrong with chunk ``index`` (``None`` if nothing): missing, wrong size, wrong checksum."""
    path = chunk_file(arr, index)
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        return "missing (its file is gone)"
    expected = int(recorded[0]) if recorded else raw_chunk_bytes(arr)
    if expected is not None and size != expected:
        kind = "truncated" if size < expected else "too long"
        return f"{kind}: {size} bytes on disk, {expected} written"
    if content and recorded:
        if file_checksum(path)[1] != int(recorded[1]):
            return "corrupted: its crc32c differs from the one recorded when it was written"
    return None


@functools.lru_cache(maxsize=256)
def _split_checksums(group_json: str, mtime_ns: int, size: int) -> dict[str, list[list[int]]]:
    try:
        attrs = json.loads(Path(group_json).read_text()).get("attributes", {})
    except (OSError, ValueError):
        return {}
    return attrs.get(CHECKSUMS) or {}


def recorded_checksums(arr: Any) -> list[list[int]] | None:
    """The recorded ``[size, crc32c]`` of each chunk of ``arr``, or ``None`` (none recorded).

    Read from the split's metadata file, re-read only when that file changes.
    """
    parent = store_root(arr) / arr.path.rpartition("/")[0] / "zarr.json"
    try:
        stat = parent.stat()
    except OSError:
        return None
    return _split_checksums(str(parent), stat.st_mtime_ns, stat.st_size).get(arr.path.rpartition("/")[2])


def damaged(arr: Any, index: int | None, what: str) -> MidprobeError:
    """The one-line error for a damaged chunk of ``arr`` (``index=None``: somewhere in the read)."""
    split, _, name = arr.path.rpartition("/")
    if index is None:
        place = "one of the chunks read"
    else:
        lo, hi = chunk_images(arr, index)
        images = f"images {lo}-{hi - 1}" if hi - lo > 1 else f"image {lo}"
        place = f"chunk {index} ({images})"
    return MidprobeError(f"damaged store {store_root(arr)}: split {split!r}, array {name!r}, {place} — {what}; "
                         + REPAIR_HINT)


def _touched(arr: Any, selection: slice | np.ndarray | None) -> list[int]:
    if arr.ndim == 0:
        return [0]
    n, k = arr.shape[0], arr.chunks[0]
    if selection is None:
        return list(range(chunk_count(arr)))
    if isinstance(selection, slice):
        rows = range(*selection.indices(n))
        if rows.step == 1:
            return list(range(rows.start // k, (rows.stop - 1) // k + 1)) if len(rows) else []
        return sorted({i // k for i in rows})
    index = np.asarray(selection).reshape(-1)
    return np.unique(np.where(index < 0, index + n, index) // k).astype(int).tolist()


def _plain_read(arr: Any, selection: slice | np.ndarray | None) -> np.ndarray:
    if selection is None:
        return arr[...]
    if isinstance(selection, slice):
        return arr[selection]
    return arr.get_orthogonal_selection((np.asarray(selection),))


def read_checked(arr: Any, selection: slice | np.ndarray | None = None, *, out: np.ndarray | None = None) -> np.ndarray:
    """``arr[selection]`` along N (a slice, an index array, or ``None`` for all), with every chunk
    it touches checked first; a damaged chunk is a one-line :class:`MidprobeError`.

    ``out`` (an array of the selection's shape and dtype, e.g. a pinned host buffer) receives
    the values and is returned. Arrays not in a local store (in memory, say) are read as they are."""
    if out is not None:
        if out.dtype != arr.dtype:
            raise ValueError(f"read_checked: out has dtype {out.dtype}, the array {arr.dtype}")
        if not raw_read_into(arr, selection, out):
            out[...] = read_checked(arr, selection)
        return out
    if not hasattr(getattr(getattr(arr, "store_path", None), "store", None), "root"):
        return _plain_read(arr, selection)
    chunks = _touched(arr, selection)
    recorded = recorded_checksums(arr)
    if recorded is not None:
        _check_recorded(arr, chunks, recorded)
    rows = _rows(arr, selection) if recorded is not None else None
    if rows is not None and raw_layout(arr):
        result = np.empty((rows[1] - rows[0], *arr.shape[1:]), dtype=arr.dtype)
        _pread_rows(arr, rows, result)
        return result
    try:
        return _plain_read(arr, selection)
    except MidprobeError:
        raise
    except Exception as exc:
        for index in chunks:        # name the chunk if its size or checksum shows it
            entry = recorded[index] if recorded is not None and index < len(recorded) else None
            problem = check_chunk(arr, index, entry, content=True)
            if problem:
                raise damaged(arr, index, problem) from None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise damaged(arr, chunks[0] if len(chunks) == 1 else None, f"cannot be decoded ({reason})") from None


def raw_layout(arr: Any) -> bool:
    """Whether each chunk file of ``arr`` holds its images' values as raw bytes, in C order and this
    machine's byte order (uncompressed, no filters, chunked along N only), so that images can be
    read from it directly, without Zarr's decoding pipeline and its intermediate copies."""
    meta = getattr(arr, "metadata", None)
    if getattr(meta, "zarr_format", None) != 3 or arr.ndim == 0 or arr.compressors or arr.filters:
        return False
    endian = getattr(getattr(arr.serializer, "endian", None), "value", None)
    if type(arr.serializer).__name__ != "BytesCodec" or (arr.dtype.itemsize > 1 and endian != sys.byteorder):
        return False
    return tuple(arr.chunks[1:]) == tuple(arr.shape[1:]) and arr.dtype.isnative and not arr.dtype.hasobject


def _rows(arr: Any, selection: slice | np.ndarray | None) -> tuple[int, int] | None:
    """``(start, stop)`` of a contiguous selection along N, else ``None``."""
    if arr.ndim == 0:
        return None
    if selection is None:
        return 0, arr.shape[0]
    if isinstance(selection, slice):
        start, stop, step = selection.indices(arr.shape[0])
        return (start, max(start, stop)) if step == 1 else None
    return None


def raw_read_into(arr: Any, selection: slice | np.ndarray | None, out: np.ndarray) -> bool:
    """Read a contiguous selection of a raw-layout array (:func:`raw_layout`) of a complete store
    straight into ``out`` (one copy, from the page cache), after the same checks as
    :func:`read_checked`; ``False`` (nothing read) where that does not apply."""
    if not hasattr(getattr(getattr(arr, "store_path", None), "store", None), "root") or not raw_layout(arr):
        return False
    rows = _rows(arr, selection)
    recorded = recorded_checksums(arr)
    if rows is None or recorded is None:
        return False
    if out.shape != (rows[1] - rows[0], *arr.shape[1:]) or not out.flags.c_contiguous:
        raise ValueError(f"read_checked: out has shape {out.shape}, expected a C-contiguous "
                         f"{(rows[1] - rows[0], *arr.shape[1:])}")
    _check_recorded(arr, _touched(arr, slice(*rows)), recorded)
    _pread_rows(arr, rows, out)
    return True


def _check_recorded(arr: Any, indices: Sequence[int], recorded: Sequence[Sequence[int]]) -> None:
    content = verify_reads()
    for index in indices:
        entry = recorded[index] if index < len(recorded) else None
        if entry is None:
            raise damaged(arr, index, "no checksum recorded for it")
        problem = check_chunk(arr, index, entry, content=content)
        if problem:
            raise damaged(arr, index, problem)


def rows_readable(arr: Any) -> bool:
    """Whether :func:`read_rows_into` can read ``arr``: a raw-layout array of a complete local store."""
    return (hasattr(getattr(getattr(arr, "store_path", None), "store", None), "root") and raw_layout(arr)
            and recorded_checksums(arr) is not None)


def read_rows_into(arr: Any, rows: np.ndarray, out: np.ndarray) -> np.ndarray:
    """Images ``rows`` (ascending; any chunks) of a :func:`rows_readable` array straight into ``out``
    (``(len(rows), ...)``, C-contiguous), after the size checks of :func:`read_checked`: each run of
    consecutive images of one chunk is one ``preadv`` from the chunk file (an image is a contiguous
    byte range of it), so a shuffled batch is read without a window buffer or a gather copy."""
    rows = np.asarray(rows, dtype=np.int64)
    if out.shape != (len(rows), *arr.shape[1:]) or out.dtype != arr.dtype or not out.flags.c_contiguous:
        raise ValueError(f"read_rows_into: out is {out.dtype}{out.shape}, expected a C-contiguous "
                         f"{arr.dtype}{(len(rows), *arr.shape[1:])}")
    if not len(rows):
        return out
    k = arr.chunks[0]
    chunk = rows // k
    _check_recorded(arr, np.unique(chunk).tolist(), recorded_checksums(arr) or [])
    breaks = np.flatnonzero((np.diff(rows) != 1) | (np.diff(chunk) != 0)) + 1
    row_bytes = out[:1].nbytes
    flat = out.reshape(-1).view(np.uint8)
    fds: dict[int, int] = {}
    try:
        for start, stop in zip(np.r_[0, breaks].tolist(), np.r_[breaks, len(rows)].tolist()):
            index = int(chunk[start])
            if index not in fds:
                fds[index] = os.open(chunk_file(arr, index), os.O_RDONLY)
            _pread_into(fds[index], memoryview(flat[start * row_bytes:stop * row_bytes]),
                        (int(rows[start]) - index * k) * row_bytes, arr, index)
    finally:
        for fd in fds.values():
            os.close(fd)
    return out


def _pread_rows(arr: Any, rows: tuple[int, int], out: np.ndarray) -> None:
    """Images ``rows`` of a checked raw-layout array into ``out``: each chunk file's part of it in
    one ``preadv`` (which releases the GIL, so several threads read in parallel)."""
    start, stop = rows
    k = arr.chunks[0]
    row_bytes = out[:1].nbytes if len(out) else 0
    flat = out.reshape(-1).view(np.uint8) if out.size else out
    for index in range(start // k, (stop - 1) // k + 1) if stop > start else ():
        lo, hi = max(start, index * k), min(stop, (index + 1) * k)
        view = memoryview(flat[(lo - start) * row_bytes:(hi - start) * row_bytes])
        fd = os.open(chunk_file(arr, index), os.O_RDONLY)
        try:
            _pread_into(fd, view, (lo - index * k) * row_bytes, arr, index)
        finally:
            os.close(fd)


def _pread_into(fd: int, view: memoryview, offset: int, arr: Any, index: int) -> None:
    """Fill ``view`` from byte ``offset`` of chunk file ``fd`` (chunk ``index`` of ``arr``)."""
    done = 0
    while done < len(view):
        got = os.preadv(fd, [view[done:]], offset + done)
        if got <= 0:
            raise damaged(arr, index, f"truncated: the file ended {len(view) - done} bytes early while read")
        done += got
