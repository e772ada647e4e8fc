"""The feature store: frozen multi-layer features of one model over one dataset, in Zarr v3.

Layout of ``stores/features/<dataset>/<model>.zarr`` (``<model>@int8.zarr`` at int8)::

    attrs: {midprobe_format, kind: "features", model, dataset, precision}
    <split>/
        attrs: {fingerprint: {...}, layers: [...], strides: {...}, num_images,
                chunk_images, complete, precision, checksums: {array: [[bytes, crc32c], ...]},
                adding: [...] while layers are being added}
        <layer>   (N, C, h, w) float16   one array per tapped layer, chunks (k, C, h, w)
                  (N, C, h, w) int8      at int8, with
        <layer>.scale (N, C) float16     its per-image, per-channel scales (cache.quantize)
        global    (N, D) float16         CLS token (ViT) or global-average-pool (CNN)

A complete split can gain layers: ``adding`` names the layers being written (their chunks'
markers live in ``<model>.progress/<split>+add/``); the others are never rewritten, and once
every chunk of the new ones is durable they join ``layers``.

Chunks hold whole images (``k`` images each) and are stored uncompressed: float16
activations gain little from zstd (see ``make bench``, ``store_zstd_ratio``) and
compression costs write bandwidth. Progress of an unfinished extraction is kept beside
the store in ``<model>.progress/<split>/<chunk>`` markers, one per durable chunk, each
holding the size and crc32c of that chunk's files; once every chunk is written the
checksums move into the split's attributes, the split is marked complete and the markers
are removed. ``<model>.lock`` serialises creating and completing a split among live
writers (``cache.locks``: the lock dies with its holder). Writing is :mod:`cache.feature_writer`;
this module holds the layout and the readers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr

from cache.chunks import read_checked
from cache.errors import MidprobeError, metadata_errors
from cache.fingerprint import FORMAT_VERSION, check_fingerprint
from cache.paths import DataRoot, data_root
from cache.quantize import Quantized, bytes_per_value

FLOAT16_MAX = 65504.0
GLOBAL = "global"
#: Target size of one chunk of the largest layer. A chunk is the unit of resumption and of
#: reading: probes hold a few chunks of every layer in memory, so chunks stay small.
CHUNK_BYTES = 8 * 2**20


def choose_chunk_images(layer_shapes: Mapping[str, tuple[int, int, int]], num_images: int,
                        max_images: int = 64) -> int:
    """Images per chunk so the largest layer's chunk stays near :data:`CHUNK_BYTES`."""
    largest = max(c * h * w * 2 for c, h, w in layer_shapes.values())
    return int(max(1, min(max_images, num_images, CHUNK_BYTES // largest)))


def estimate_bytes(layer_shapes: Mapping[str, tuple[int, int, int]], global_dim: int, num_images: int,
                   precision: str = "fp16", chunk_images: int | None = None) -> int:
    """Bytes the uncompressed store will take on disk (int8: one byte a value plus a float16
    scale per image and channel; the global vectors stay float16). With ``chunk_images``, the
    last chunk counts whole, as Zarr writes it."""
    values = sum(c * h * w for c, h, w in layer_shapes.values())
    scales = sum(c for c, _, _ in layer_shapes.values()) if precision == "int8" else 0
    slots = -(-num_images // chunk_images) * chunk_images if chunk_images else num_images
    return int((values * bytes_per_value(precision) + 2 * scales + 2 * global_dim) * slots)


def scale_array(layer: str) -> str:
    """The array holding ``layer``'s int8 scales."""
    return f"{layer}.scale"


def split_arrays(attrs: Mapping[str, Any]) -> list[str]:
    """Every array of a split with these attributes: its layers, their scales at int8, the global vectors."""
    layers = list(attrs["layers"])
    scales = [scale_array(layer) for layer in layers] if attrs.get("precision", "fp16") == "int8" else []
    return [*layers, *scales, GLOBAL]


@dataclass
class FeatureSplit:
    """Read access to one complete split of a feature store."""

    store: Path
    split: str
    group: zarr.Group

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    @property
    def fingerprint(self) -> dict[str, Any]:
        return dict(self.group.attrs["fingerprint"])

    @property
    def model(self) -> str:
        return self.fingerprint["model"]

    @property
    def layers(self) -> list[str]:
        return list(self.group.attrs["layers"])

    @property
    def num_images(self) -> int:
        return int(self.group.attrs["num_images"])

    @property
    def chunk_images(self) -> int:
        return int(self.group.attrs["chunk_images"])

    @property
    def precision(self) -> str:
        return self.group.attrs.get("precision", "fp16")

    def stride(self, layer: str) -> int:
        return int(self.group.attrs["strides"][layer])

    def shape(self, layer: str) -> tuple[int, int, int]:
        """``(C, h, w)`` of one image's map of ``layer``."""
        return tuple(self.array(layer).shape[1:])  # type: ignore[return-value]

    def array(self, layer: str) -> zarr.Array:
        if layer != GLOBAL and layer not in self.layers:
            raise MidprobeError(f"feature store {self.store} has no layer {layer!r}; it has {', '.join(self.layers)}")
        return self.group[layer]

    def dask(self, layer: str):
        """A lazy ``(N, C, h, w)`` dask array (float16; float32 dequantised at int8) whose chunks
        are the store's chunks. Each chunk is read through :meth:`read`, so a damaged one is a
        one-line error.
        """
        import dask.array as da

        arr = self.array(layer)
        dtype = np.dtype(np.float32 if self.precision == "int8" else arr.dtype)
        name = f"midprobe-{self.store}-{self.split}-{layer}-{self.num_images}-{self.chunk_images}"
        return da.from_array(_ChunkReader(self, layer, arr.shape, dtype), chunks=arr.chunks, name=name,
                             asarray=False, fancy=False, lock=False, meta=np.empty((0,) * arr.ndim, dtype))

    def read(self, layer: str, start: int, stop: int) -> np.ndarray:
        """Images ``start:stop`` of ``layer``: ``(n, C, h, w) float16``, or float32 dequantised at int8;
        a damaged chunk is a one-line error."""
        stored = self.read_stored(layer, start, stop)
        return stored.dequantize() if isinstance(stored, Quantized) else stored

    def read_stored(self, layer: str, start: int, stop: int) -> np.ndarray | Quantized:
        """Images ``start:stop`` of ``layer`` as stored: float16, or :class:`Quantized` (int8 + scales)
        for dequantisation where they are used (on the probe's device)."""
        values = read_checked(self.array(layer), slice(start, stop))
        if self.precision != "int8":
            return values
        return Quantized(values, read_checked(self.group[scale_array(layer)], slice(start, stop)))

    def global_vectors(self) -> np.ndarray:
        """``(N, D) float32`` global vectors (CLS or pooled)."""
        return read_checked(self.group[GLOBAL]).astype(np.float32)


@dataclass
class _ChunkReader:
    """What dask slices for :meth:`FeatureSplit.dask`: checked reads of whole images, then the rest."""

    split: FeatureSplit
    layer: str
    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        return len(self.shape)

    def __getitem__(self, key: tuple[slice, ...]) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        lo, hi, _ = key[0].indices(self.shape[0])
        return self.split.read(self.layer, lo, hi)[(slice(None), *key[1:])]


@metadata_errors(lambda dataset, model, split, **kw: f"the feature store of model {model!r} for dataset {dataset!r}")
def open_features(dataset: str, model: str, split: str, *, expect: Mapping[str, Any] | None = None,
                  root: DataRoot | None = None, store: Path | None = None, precision: str = "fp16") -> FeatureSplit:
    """Open a complete split of a feature store; ``expect`` pins fingerprint fields."""
    path = Path(store) if store is not None else (root or data_root()).feature_store(dataset, model, precision)
    if not (path / "zarr.json").exists():
        extra = "" if precision == "fp16" else f" PRECISION={precision}"
        raise MidprobeError(f"no {precision} features of model {model!r} for dataset {dataset!r} at {path}; "
                            f"run `make extract MODEL={model} DATASET={dataset}{extra}` first")
    group_root = zarr.open_group(str(path), mode="r")
    if group_root.attrs.get("midprobe_format") != FORMAT_VERSION:
        raise MidprobeError(f"feature store {path} has format {group_root.attrs.get('midprobe_format')}, "
                            f"expected {FORMAT_VERSION}; re-extract it")
    if split not in group_root:
        raise MidprobeError(f"feature store {path} has no split {split!r}; "
                            f"run `make extract MODEL={model} DATASET={dataset}` for it")
    group = group_root[split]
    if not group.attrs.get("complete"):
        # a shard's run, a running extraction and an interrupted one leave the same state: say all three
        total = -(-int(group.attrs["num_images"]) // int(group.attrs["chunk_images"]))
        progress = path.with_suffix(".progress") / split
        done = sum(1 for _ in progress.iterdir()) if progress.is_dir() else 0
        extra = "" if precision == "fp16" else f" PRECISION={precision}"
        raise MidprobeError(f"feature store {path}/{split} is incomplete: {done} of {total} chunks written (other "
                            "shards or a running extraction may still be writing it, or one was interrupted); wait "
                            f"for them, or run `make extract MODEL={model} DATASET={dataset}{extra}` without SHARD= "
                            "to write the missing chunks")
    if expect:
        check_fingerprint(stored=group.attrs["fingerprint"], expected=expect, where=f"{path}/{split}")
    return FeatureSplit(path, split, group)


def list_feature_stores(dataset: str, *, root: DataRoot | None = None, precision: str = "fp16") -> list[str]:
    """Names of the models with a feature store of ``precision`` for ``dataset``."""
    folder = (root or data_root()).feature_dir(dataset)
    models = []
    for path in sorted(folder.glob("*.zarr")):
        try:
            attrs = zarr.open_group(str(path), mode="r").attrs
            if attrs.get("precision", "fp16") == precision:
                models.append(attrs["model"])
        except (KeyError, FileNotFoundError, ValueError):
            continue
    return models
