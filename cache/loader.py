"""Serving a feature split's batches on the probe's device: from device memory when it fits, else streamed.

A sweep reads the same split every epoch. When the layers it uses and the targets fit a memory
budget, :class:`FeatureLoader` loads them once, as stored (float16, or int8 with its float16
scales: half the memory), onto the device, and serves every epoch's batches by indexing there.
Otherwise it streams: the reader pool reads each window's chunks straight into (pinned, on CUDA)
host buffers, which are copied to the device on a side stream while the previous window's batches
are computed (:mod:`cache.device_stream`). Both follow one :func:`~cache.batch_plan.plan_batches`,
so the batches — which images, in which order — and hence the numbers do not depend on the
budget. int8 maps are dequantised on the device, per batch.

The budget: ``CACHE_BUDGET=`` (``--cache-budget``) in bytes with a k/M/G suffix (powers of 1024);
``0`` always streams; by default :data:`DEFAULT_FRACTION` of the free GPU memory on CUDA, of the
available RAM on a CPU, measured when the loader is made.
"""

from __future__ import annotations

import os
import re
from typing import Any, Callable, Iterator, Mapping, Sequence

import numpy as np
import torch

from cache.batch_plan import plan_batches
from cache.batches import Batch
from cache.chunk_reader import results, submit
from cache.chunks import read_checked
from cache.device_stream import WindowStream, take_rows, torch_dtype
from cache.errors import MidprobeError
from cache.feature_store import FeatureSplit, scale_array
from cache.quantize import dequantize_torch

#: Share of the free device memory (CUDA) or available RAM (CPU) a split may take when no budget is given.
DEFAULT_FRACTION = 0.5
#: Bytes read and copied to the device at a time while loading a split.
LOAD_PIECE_BYTES = 32 * 2**20
_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def parse_bytes(text: str | int) -> int:
    """``"0"``, ``"512M"``, ``"8G"``, ``"1.5g"``, ``"100k"`` or a plain number -> bytes (powers of 1024)."""
    if isinstance(text, int) and not isinstance(text, bool) and text >= 0:
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgGtT]?)(?:i?[bB])?\s*", str(text))
    if not match:
        raise MidprobeError(f"cache budget {text!r}: expected bytes with an optional k/M/G suffix, e.g. 0, 512M or 8G")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


def format_bytes(value: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if value >= size:
            return f"{value / size:.1f} {unit}"
    return f"{int(value)} B"


def available_memory(device: torch.device) -> tuple[int, str]:
    """``(bytes, what they are)``: the free memory of a CUDA device, or this machine's available RAM
    (``MemAvailable`` of ``/proc/meminfo``; the free physical pages where that file is missing)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free), f"free memory of {device}"
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024, "available RAM"
    except OSError:
        pass
    return int(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")), "free RAM"


def default_budget(device: torch.device) -> tuple[int, str]:
    """``(bytes, how they were chosen)`` when no budget is given."""
    free, what = available_memory(device)
    return int(free * DEFAULT_FRACTION), f"{DEFAULT_FRACTION:.0%} of the {what}"


def _feature_arrays(split: FeatureSplit, layers: Sequence[str]) -> dict[str, Any]:
    """The stored arrays of ``layers``: ``f:<layer>`` values, ``s:<layer>`` int8 scales."""
    arrays = {}
    for layer in layers:
        arrays[f"f:{layer}"] = split.array(layer)
        if split.precision == "int8":
            arrays[f"s:{layer}"] = split.group[scale_array(layer)]
    return arrays


def _nbytes(arr: Any) -> int:
    return int(np.prod(arr.shape)) * np.dtype(arr.dtype).itemsize


class FeatureLoader:
    """Batches of one feature split (``layers``) and its ``targets`` as tensors on ``device``.

    ``budget`` in bytes (``None``: :func:`default_budget`; 0: always stream). Whether the split
    is resident, and how many bytes that takes, is said once through ``say`` (``what`` names the
    split in it). :meth:`batches` takes :func:`cache.iterate_batches`' arguments and yields the
    same batches: features ``(B, C, h, w)`` float16 as stored (int8 maps dequantised to float32),
    targets as stored, on the device; ``index`` stays a numpy array.
    """

    def __init__(self, split: FeatureSplit, *, layers: Sequence[str], targets: Mapping[str, Any] | None = None,
                 device: str | torch.device = "cpu", budget: int | None = None,
                 say: Callable[[str], None] | None = None, what: str = "") -> None:
        self.split, self.layers = split, list(layers)
        self.targets = dict(targets or {})
        self.device = torch.device(device)
        self.arrays = {**_feature_arrays(split, self.layers), **{f"t:{k}": v for k, v in self.targets.items()}}
        self.need = sum(_nbytes(arr) for arr in self.arrays.values())
        if budget is None:
            self.budget, how = default_budget(self.device)
        else:
            self.budget, how = budget, "CACHE_BUDGET"
        self.resident = 0 < self.need <= self.budget
        name = what or f"{split.store.name}/{split.split}"
        if self.resident:
            message = (f"{name}: {format_bytes(self.need)} of features and targets held on {self.device} "
                       f"(budget {format_bytes(self.budget)}: {how})")
        elif self.budget == 0:
            message = f"{name}: streamed from the store every epoch ({how}=0)"
        else:
            message = (f"{name}: streamed from the store every epoch: it needs {format_bytes(self.need)}, over the "
                       f"budget of {format_bytes(self.budget)} ({how})")
        if say is not None:
            say(message)
        self.message = message
        self._stream: WindowStream | None = None
        self.tensors: dict[str, torch.Tensor] = {}
        if self.resident:
            self.tensors = {name: load_array(arr, self.device) for name, arr in self.arrays.items()}

    @property
    def resident_bytes(self) -> int:
        """Bytes the loader holds on its device for the whole split (0 when streaming)."""
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def batches(self, *, batch_size: int, seed: int = 0, epoch: int = 0, shuffle: bool = True,
                chunks: Sequence[int] | None = None, window_chunks: int = 4, drop_last: bool = False,
                images: tuple[int, int] | None = None, target_offset: int = 0,
                subset: np.ndarray | None = None) -> Iterator[Batch]:
        """The batches :func:`cache.iterate_batches` yields for the same arguments, on the device."""
        plan = plan_batches(num_images=self.split.num_images, chunk_images=self.split.chunk_images,
                            batch_size=batch_size, seed=seed, epoch=epoch, shuffle=shuffle, chunks=chunks,
                            window_chunks=window_chunks, drop_last=drop_last, images=images, subset=subset)
        if not plan.batches:
            return
        if self.resident:
            yield from self._resident(plan.batches, target_offset)
            return
        if self._stream is None or self._stream.window_chunks < window_chunks:
            self._stream = WindowStream(self.arrays, self.device, capacity=window_chunks * self.split.chunk_images,
                                        window_chunks=window_chunks)
        for b, values in self._stream.batches(plan, target_offset):
            yield self._batch(plan.batches[b], values)

    def _resident(self, batches: Sequence[np.ndarray], target_offset: int) -> Iterator[Batch]:
        # the epoch's indices cross to the device once
        every = torch.from_numpy(np.concatenate(batches)).to(self.device)
        at = 0
        for index in batches:
            rows = every[at:at + len(index)]
            at += len(index)
            values = {name: take_rows(t, rows - target_offset if name.startswith("t:") else rows)
                      for name, t in self.tensors.items()}
            yield self._batch(index, values)

    def _batch(self, index: np.ndarray, values: Mapping[str, torch.Tensor]) -> Batch:
        features = {}
        for layer in self.layers:
            scale = values.get(f"s:{layer}")
            value = values[f"f:{layer}"]
            features[layer] = value if scale is None else dequantize_torch(value, scale)
        return Batch(index=index, features=features, targets={k: values[f"t:{k}"] for k in self.targets})


def load_array(arr: Any, device: torch.device) -> torch.Tensor:
    """A whole per-image array (a Zarr array of a store, or an array in memory) as a tensor of its
    dtype on ``device``, read in pieces of whole chunks by the reader pool (checked reads).

    On a CPU each piece is read straight into the tensor; on CUDA through pinned buffers copied
    on a side stream while the next pieces are read.
    """
    dtype = torch_dtype(arr.dtype)
    if not hasattr(arr, "chunks"):                       # in memory
        return torch.from_numpy(np.ascontiguousarray(arr)).to(device)
    n = arr.shape[0]
    per_image = max(1, _nbytes(arr) // max(n, 1))
    step = arr.chunks[0] * max(1, LOAD_PIECE_BYTES // max(per_image * arr.chunks[0], 1))
    pieces = [(lo, min(lo + step, n)) for lo in range(0, n, step)]
    if device.type != "cuda":
        dest = torch.empty(tuple(arr.shape), dtype=dtype)
        out = dest.numpy()
        results([submit(read_checked, arr, slice(lo, hi), out=out[lo:hi]) for lo, hi in pieces])
        return dest
    from cache.device_stream import PinnedPieces

    dest = torch.empty(tuple(arr.shape), dtype=dtype, device=device)
    with PinnedPieces(device, piece_bytes=step * per_image) as staging:
        results([submit(staging.upload, arr, lo, hi, dest) for lo, hi in pieces])
    return dest
