"""Streaming windows of a feature split to a device: parallel reads into host buffers, copies that overlap compute.

A producer thread reads each window of a :class:`~cache.batch_plan.BatchPlan` — every block of
every array (features as stored, int8 scales, targets) — through the reader pool straight into
a host slot (pinned memory on CUDA), then copies the slot to the device on a side CUDA stream
and records an event; the consumer's stream waits on that event, so the copy of window ``w + 1``
runs while window ``w``'s batches are computed. Batches are cut out of the device window by a
row gather (:func:`take_rows`). On a CPU the same code runs with plain buffers and no copy.

Memory: three host slots (two on CUDA, where the device copy frees a slot as soon as it ends)
and at most three windows on the device (the one consumed, one queued, one being copied).
"""

from __future__ import annotations

import queue
import threading
from typing import Any, Iterator, Mapping

import numpy as np
import torch

from cache.batch_plan import BatchPlan, Block, Window
from cache.batches import assemble
from cache.chunk_reader import read_target_chunk, results, slice_rows, submit, target_chunks
from cache.chunks import raw_layout, read_checked

_END = object()


def torch_dtype(dtype: Any) -> torch.dtype:
    """The torch dtype of a numpy dtype (float16, int8, uint8, float32, ...)."""
    return torch.from_numpy(np.empty(0, dtype=np.dtype(dtype))).dtype


def _direct(arr: Any) -> bool:
    """Whether ``arr`` is read block by block straight into a buffer (a raw chunk file, read in part);
    otherwise its chunks are decoded whole, once per window, and sliced."""
    return not hasattr(arr, "chunks") or raw_layout(arr)


def _read_block(arr: Any, lo: int, hi: int, keep: np.ndarray | None, out: np.ndarray) -> None:
    """Images ``lo:hi`` of ``arr`` (``keep``: only these of them) into ``out``."""
    if not hasattr(arr, "chunks"):
        value = np.asarray(arr[lo:hi])
    elif keep is None:
        read_checked(arr, slice(lo, hi), out=out)
        return
    else:
        value = read_checked(arr, slice(lo, hi))
    out[...] = value if keep is None else np.take(value, keep, axis=0)


def take_rows(value: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """``value[rows]`` along the first axis: on a device one row gather of a 2-D view; on a CPU by
    numpy (torch's CPU gather of float16 maps is slow, and its worker threads contend with the
    reader threads' on a busy machine)."""
    if value.device.type == "cpu":
        return torch.from_numpy(np.take(value.numpy(), rows.numpy(), axis=0))
    return value.reshape(len(value), -1).index_select(0, rows).reshape(len(rows), *value.shape[1:])


class _Arrived:
    """A window on the device: its arrays and the window positions of its pieces, cut in order."""

    def __init__(self, values: dict[str, torch.Tensor], positions: torch.Tensor) -> None:
        self.values, self.positions, self.cursor = values, positions, 0

    def cut(self, count: int) -> dict[str, torch.Tensor]:
        rows = self.positions[self.cursor:self.cursor + count]
        self.cursor += count
        return {name: take_rows(value, rows) for name, value in self.values.items()}


class WindowStream:
    """Host slots for windows of up to ``capacity`` images of ``arrays`` (``f:``/``s:`` feature
    arrays, ``t:`` targets), reused across epochs, and the side stream that copies them."""

    def __init__(self, arrays: Mapping[str, Any], device: torch.device, *, capacity: int, window_chunks: int) -> None:
        self.arrays, self.device, self.window_chunks = dict(arrays), device, window_chunks
        cuda = device.type == "cuda"
        self.copy_stream = torch.cuda.Stream(device) if cuda else None
        self.slots = []
        for _ in range(2 if cuda else 3):
            slot = {name: torch.empty((capacity, *arr.shape[1:]), dtype=torch_dtype(arr.dtype), pin_memory=cuda)
                    for name, arr in self.arrays.items()}
            slot["__positions__"] = torch.empty(capacity, dtype=torch.int64, pin_memory=cuda)
            self.slots.append(slot)
        self.copied: list[torch.cuda.Event | None] = [None] * len(self.slots)

    def _fill(self, slot: dict[str, torch.Tensor], window: Window, target_offset: int) -> int:
        """Read ``window`` into ``slot`` (every block of every array in parallel); its image count."""
        offsets = window.offsets
        jobs = []
        decoded: dict[str, dict[int, Any]] = {}
        for name, arr in self.arrays.items():
            shift = target_offset if name.startswith("t:") else 0
            out = slot[name].numpy()
            if _direct(arr):
                for block, at in zip(window.blocks, offsets):
                    jobs.append(submit(_read_block, arr, block.lo - shift, block.hi - shift,
                                       None if block.whole else block.rows - block.lo, out[at:at + len(block.rows)]))
            else:
                needed = sorted({c for b in window.blocks for c in target_chunks(arr, b.lo - shift, b.hi - shift)})
                decoded[name] = {c: submit(read_target_chunk, arr, c) for c in needed}
        results(jobs)
        for name, futures in decoded.items():
            arr, shift, out = self.arrays[name], (target_offset if name.startswith("t:") else 0), slot[name].numpy()
            whole = dict(zip(futures, results(list(futures.values()))))
            for block, at in zip(window.blocks, offsets):
                _slice_block(arr, block, shift, whole, out[at:at + len(block.rows)])
        positions = np.concatenate([p for _, p in window.pieces]) if window.pieces else np.zeros(0, np.int64)
        slot["__positions__"].numpy()[:len(positions)] = positions
        return int(offsets[-1])

    def _load(self, index: int, window: Window, target_offset: int) -> tuple[dict[str, torch.Tensor], Any]:
        """Window ``window`` into slot ``index`` and onto the device: ``(values + positions, event)``."""
        slot = self.slots[index]
        if self.copied[index] is not None:
            self.copied[index].synchronize()          # the slot's previous copy has left it
        m = self._fill(slot, window, target_offset)
        p = sum(len(positions) for _, positions in window.pieces)
        sizes = {name: (p if name == "__positions__" else m) for name in slot}
        if self.copy_stream is None:
            return {name: value[:sizes[name]] for name, value in slot.items()}, None
        with torch.cuda.stream(self.copy_stream):
            values = {name: value[:sizes[name]].to(self.device, non_blocking=True) for name, value in slot.items()}
            event = torch.cuda.Event()
            event.record(self.copy_stream)
        self.copied[index] = event
        return values, event

    def _arrive(self, values: dict[str, torch.Tensor], event: Any) -> _Arrived:
        if event is not None:
            stream = torch.cuda.current_stream(self.device)
            stream.wait_event(event)
            for value in values.values():
                value.record_stream(stream)      # allocated on the copy stream, used on this one
        positions = values.pop("__positions__")
        return _Arrived(values, positions)

    def batches(self, plan: BatchPlan, target_offset: int = 0) -> Iterator[tuple[int, dict[str, torch.Tensor]]]:
        """``(batch number, {name: (B, ...) tensor})`` of every batch of ``plan``, in order."""
        slots: queue.Queue = queue.Queue(maxsize=1)
        stop = threading.Event()

        def put(item: Any) -> None:
            while not stop.is_set():
                try:
                    slots.put(item, timeout=0.1)
                    return
                except queue.Full:
                    continue

        def produce() -> None:
            try:
                for w, window in enumerate(plan.windows):
                    if stop.is_set():
                        return
                    put(self._load(w % len(self.slots), window, target_offset))
                put(_END)
            except BaseException as exc:         # surfaced in the consumer
                put(exc)

        def arrived() -> Iterator[_Arrived]:
            while (item := slots.get()) is not _END:
                if isinstance(item, BaseException):
                    raise item
                yield self._arrive(*item)

        thread = threading.Thread(target=produce, daemon=True, name="midprobe-window")
        thread.start()
        try:
            yield from assemble(plan, arrived(), start=lambda data, size: [],
                                fill=lambda parts, at, data, window, positions: parts.append(data.cut(len(positions))),
                                done=lambda parts: parts[0] if len(parts) == 1 else
                                {k: torch.cat([p[k] for p in parts]) for k in parts[0]})
        finally:
            stop.set()
            thread.join()          # its slot is not refilled by the next epoch while it still writes


def _slice_block(arr: Any, block: Block, shift: int, whole: dict[int, Any], out: np.ndarray) -> None:
    lo, hi = block.lo - shift, block.hi - shift
    if block.whole:
        slice_rows(arr, lo, hi, whole, out=out)
    else:
        out[...] = np.take(slice_rows(arr, lo, hi, whole), block.rows - block.lo, axis=0)


class PinnedPieces:
    """Pinned host buffers through which pieces of an array are read and copied to a CUDA device
    on a side stream, several pieces in flight (used by the reader pool's threads at once)."""

    def __init__(self, device: torch.device, *, piece_bytes: int, slots: int = 4) -> None:
        self.stream = torch.cuda.Stream(device)
        # the destination was allocated on the compute stream: its memory may still be in use by work
        # queued there before, so the copies wait for that work
        self.stream.wait_stream(torch.cuda.current_stream(device))
        self.free: queue.Queue = queue.Queue()
        for _ in range(slots):
            self.free.put([torch.empty(piece_bytes, dtype=torch.uint8, pin_memory=True), None])

    def upload(self, arr: Any, lo: int, hi: int, dest: torch.Tensor) -> None:
        """Images ``lo:hi`` of ``arr`` into ``dest[lo:hi]`` (a device tensor of its dtype)."""
        slot = self.free.get()
        try:
            buffer, copied = slot
            if copied is not None:
                copied.synchronize()
            part = dest[lo:hi]
            view = buffer[:part.numel() * part.element_size()].view(part.dtype).view(part.shape)
            read_checked(arr, slice(lo, hi), out=view.numpy())
            with torch.cuda.stream(self.stream):
                part.copy_(view, non_blocking=True)
                slot[1] = torch.cuda.Event()
                slot[1].record(self.stream)
        finally:
            self.free.put(slot)

    def __enter__(self) -> "PinnedPieces":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stream.synchronize()
