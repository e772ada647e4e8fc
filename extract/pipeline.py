"""Extraction as a pipeline: images read ahead, a forward pass that never waits on the host, several writers.

- **Reads**: the chunks' images are decoded (and augmented) by the reader pool
  (:mod:`cache.chunk_reader`), several chunks ahead, into pinned host memory on CUDA.
- **Forward**: each batch crosses to the device on a side stream (non-blocking, from pinned
  memory), the compute stream waits on its event; outputs are checked (float16 range), cast or
  quantised on the device and copied into pinned host buffers without a host-side wait. The host
  only waits, in a writer thread, on the event recorded after a chunk's last copy.
- **Writes**: on CUDA :data:`WRITER_THREADS` threads write chunks (independent files)
  concurrently; each writes its chunk's arrays, fsyncs them and only then its marker, so the
  durability rule holds per chunk while the file system commits the fsyncs of several chunks
  together. On a CPU the forward pass is the bottleneck and one writer thread keeps up, so chunks
  are written, and made durable, in order.

On a CPU the same code runs without pinned memory, streams or events. The bytes written do not
depend on any of this: batches always start at a chunk's first image, and each chunk is computed
whole on the device before it is written.
"""

from __future__ import annotations

import contextlib
import os
import queue
import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from cache.chunk_reader import submit
from cache.feature_store import GLOBAL
from cache.feature_writer import check_float16_range
from cache.quantize import Quantized, quantize_torch

#: Chunks written at once on CUDA (each by its own thread).
WRITER_THREADS = 4


def writer_threads(device: torch.device) -> int:
    """``MIDPROBE_WRITE_THREADS`` if set, else :data:`WRITER_THREADS` on CUDA and 1 on a CPU."""
    text = os.environ.get("MIDPROBE_WRITE_THREADS", "").strip()
    if text:
        if not text.isdigit() or int(text) < 1:
            from cache.errors import MidprobeError

            raise MidprobeError(f"MIDPROBE_WRITE_THREADS={text!r}: expected a whole number >= 1")
        return int(text)
    return WRITER_THREADS if device.type == "cuda" else 1


def read_ahead(items: Iterable[Any], read: Callable[[Any], Any], depth: int) -> Iterator[tuple[Any, Any]]:
    """``(item, read(item))`` in order, with up to ``depth`` reads running in the reader pool."""
    running: deque = deque()
    source = iter(items)
    try:
        for item in source:
            running.append((item, submit(read, item)))
            if len(running) >= depth:
                item, future = running.popleft()
                yield item, future.result()
        while running:
            item, future = running.popleft()
            yield item, future.result()
    finally:
        for _, future in running:
            future.cancel()


def normalise(x: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """``(B, H, W, 3)`` images on their device — uint8, or float pixels with 1 = white — to the
    ``(B, 3, H, W) float32`` normalised input."""
    uint8 = x.dtype == torch.uint8
    x = x.permute(0, 3, 1, 2).float()
    if uint8:
        x = x.div_(255.0)
    m = torch.tensor(mean, device=x.device).view(1, 3, 1, 1)
    s = torch.tensor(std, device=x.device).view(1, 3, 1, 1)
    return (x - m) / s


def host_images(images: np.ndarray, device: torch.device) -> torch.Tensor:
    """A chunk's images as a host tensor, in pinned memory when they will cross to a CUDA device."""
    tensor = torch.from_numpy(np.ascontiguousarray(images))
    return tensor.pin_memory() if device.type == "cuda" else tensor


@dataclass
class ChunkOutput:
    """One chunk's outputs, in host buffers that a device may still be filling until :meth:`ready`.

    ``maps`` (``layer -> (n, C, h, w) float16``, or int8 values with ``(n, C) float16`` scales),
    ``vectors`` ``(n, D) float16``; ``peaks`` the largest magnitude of each float16 output, checked
    once the copies are done.
    """

    maps: dict[str, Any]
    vectors: torch.Tensor
    peaks: dict[str, torch.Tensor] = field(default_factory=dict)
    event: Any = None
    inputs: Any = None            # the pinned images, kept until the device has read them

    def ready(self) -> tuple[dict[str, np.ndarray | Quantized], np.ndarray]:
        """Wait for the device, refuse values float16 cannot hold (one line naming the layer), and
        return the maps and global vectors as numpy arrays (views of the host buffers)."""
        if self.event is not None:
            self.event.synchronize()
        for name, peak in self.peaks.items():
            check_float16_range(name, float(peak))
        maps = {name: Quantized(v[0].numpy(), v[1].numpy()) if isinstance(v, tuple) else v.numpy()
                for name, v in self.maps.items()}
        return maps, self.vectors.numpy()


def run_chunk(backbone: Any, images: torch.Tensor, *, batch_size: int, device: torch.device,
              layers: list[str] | None, mean: tuple[float, ...], std: tuple[float, ...], precision: str = "fp16",
              copy_stream: Any = None) -> ChunkOutput:
    """Run one chunk of host ``images`` ``(n, H, W, 3)`` through ``backbone`` in batches starting at
    the chunk's first image; the outputs land in host buffers (:class:`ChunkOutput`).

    On CUDA nothing here waits for the device: inputs cross on ``copy_stream`` from pinned memory,
    outputs are checked, cast (or quantised) and copied back on the compute stream.
    """
    cuda = device.type == "cuda"
    n = len(images)
    compute = torch.cuda.current_stream(device) if cuda else None
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
    maps: dict[str, Any] = {}
    peaks: dict[str, list[torch.Tensor]] = {}
    vectors: torch.Tensor | None = None

    def host(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
        return torch.empty(shape, dtype=dtype, pin_memory=cuda)

    def put(out: torch.Tensor, s: int, value: torch.Tensor) -> None:
        out[s:s + len(value)].copy_(value, non_blocking=cuda)

    with torch.inference_mode(), autocast:
        for s in range(0, n, batch_size):
            if cuda:
                with torch.cuda.stream(copy_stream):
                    x = images[s:s + batch_size].to(device, non_blocking=True)
                compute.wait_stream(copy_stream)
                x.record_stream(compute)
            else:
                x = images[s:s + batch_size]
            tapped, vector = backbone(normalise(x, mean, std))
            for name, value in tapped.items():
                if layers is not None and name not in layers:
                    continue
                if precision == "int8":
                    q, scale = quantize_torch(value)
                    if name not in maps:
                        maps[name] = (host((n, *q.shape[1:]), torch.int8), host((n, scale.shape[1]), torch.float16))
                    put(maps[name][0], s, q)
                    put(maps[name][1], s, scale)
                else:
                    peaks.setdefault(name, []).append(value.detach().abs().amax().float())
                    if name not in maps:
                        maps[name] = host((n, *value.shape[1:]), torch.float16)
                    put(maps[name], s, value.half())
            peaks.setdefault(GLOBAL, []).append(vector.detach().abs().amax().float())
            if vectors is None:
                vectors = host((n, vector.shape[1]), torch.float16)
            put(vectors, s, vector.half())
        stacked = torch.stack([torch.stack(p).amax() for p in peaks.values()])
        peak_host = host(tuple(stacked.shape), torch.float32)
        peak_host.copy_(stacked, non_blocking=cuda)
    event = None
    if cuda:
        event = torch.cuda.Event()
        event.record(compute)
    return ChunkOutput(maps, vectors, dict(zip(peaks, peak_host)), event, images)


class WriterPool:
    """Writes chunks in ``threads`` background threads so writes (and their fsyncs) overlap each
    other and the next forward passes. The first failure stops the writing; it is raised by the
    next :meth:`put` or by :meth:`close`."""

    def __init__(self, write: Callable[..., None], threads: int = WRITER_THREADS) -> None:
        self.slots: queue.Queue = queue.Queue(maxsize=threads)
        self.error: BaseException | None = None
        self.threads = [threading.Thread(target=self._run, args=(write,), daemon=True, name=f"midprobe-write-{i}")
                        for i in range(threads)]
        for thread in self.threads:
            thread.start()

    def _run(self, write: Callable[..., None]) -> None:
        while (item := self.slots.get()) is not None:
            if self.error is None:
                try:
                    write(*item)
                except BaseException as exc:
                    self.error = self.error or exc

    def put(self, *item: Any) -> None:
        if self.error is not None:
            raise self.error
        self.slots.put(item)

    def close(self) -> None:
        for _ in self.threads:
            self.slots.put(None)
        for thread in self.threads:
            thread.join()
        if self.error is not None:
            raise self.error
