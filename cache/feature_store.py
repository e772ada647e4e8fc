"""The feature store: frozen multi-layer features of one model over one dataset, in Zarr v3.

Layout of ``stores/features/<dataset>/<model>.zarr``::

    attrs: {midprobe_format, kind: "features", model, dataset}
    <split>/
        attrs: {fingerprint: {...}, layers: [...], strides: {...}, num_images,
                chunk_images, complete}
        <layer>   (N, C, h, w) float16   one array per tapped layer, chunks (k, C, h, w)
        global    (N, D) float16         CLS token (ViT) or global-average-pool (CNN)

Chunks hold whole images (``k`` images each) and are stored uncompressed: float16
activations gain little from zstd (see ``make bench``, ``store_zstd_ratio``) and
compression costs write bandwidth. Progress of an unfinished extraction is kept beside
the store in ``<model>.progress/<split>/<chunk>`` markers, one per durable chunk; they are
removed once every chunk is written and the split is marked complete.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr

from cache.errors import MidprobeError
from cache.fingerprint import FORMAT_VERSION, check_fingerprint
from cache.paths import DataRoot, data_root

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


def estimate_bytes(layer_shapes: Mapping[str, tuple[int, int, int]], global_dim: int, num_images: int) -> int:
    """Bytes the uncompressed float16 store will take on disk."""
    per_image = sum(c * h * w for c, h, w in layer_shapes.values()) + global_dim
    return int(per_image * 2 * num_images)


def check_float16_range(name: str, peak: float) -> None:
    """Refuse a layer whose largest magnitude ``peak`` float16 cannot hold (it would become inf)."""
    if not np.isfinite(peak) or peak > FLOAT16_MAX:
        raise MidprobeError(
            f"layer {name!r} has values up to {peak:g}, beyond float16's ±{FLOAT16_MAX:g}; "
            "enable feature normalisation or tap another layer")


def to_float16(name: str, values: np.ndarray) -> np.ndarray:
    """Cast to float16, refusing values float16 cannot hold instead of writing inf.

    Float16 input (the extractor casts on its device after checking the range there) is
    only checked for inf/NaN, on the bit pattern: numpy's float16 arithmetic is slow.
    """
    values = np.asarray(values)
    if values.dtype == np.float16:
        if values.size and ((values.view(np.uint16) & 0x7C00) == 0x7C00).any():
            check_float16_range(name, float("inf"))
        return values
    check_float16_range(name, float(np.max(np.abs(values))) if values.size else 0.0)
    return values.astype(np.float16)


class _Lock:
    """An exclusive lock file, so concurrent shard writers create a split exactly once."""

    def __init__(self, path: Path, timeout: float = 120.0) -> None:
        self.path, self.timeout = path, timeout

    def __enter__(self) -> "_Lock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                os.close(os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
                return self
            except FileExistsError:
                if time.monotonic() > deadline:
                    raise MidprobeError(f"lock {self.path} is held for over {self.timeout:.0f} s; "
                                        "remove it if no extraction is running") from None
                time.sleep(0.05)

    def __exit__(self, *exc: Any) -> None:
        self.path.unlink(missing_ok=True)


def _fsync_tree(path: Path) -> None:
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        fd = os.open(file, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


class FeatureWriter:
    """Writes one split of a feature store chunk by chunk; resumable and shardable.

    Each chunk index ``i`` covers images ``[i*k, min((i+1)*k, N))``. A chunk counts as
    done only after all its arrays are written, fsynced and its marker file exists.
    """

    def __init__(self, store: Path, split: str, group: zarr.Group) -> None:
        self.store, self.split, self.group = store, split, group
        self.num_images = int(group.attrs["num_images"])
        self.chunk_images = int(group.attrs["chunk_images"])
        self.layers = list(group.attrs["layers"])
        self.progress = store.with_suffix(".progress") / split

    @property
    def num_chunks(self) -> int:
        return -(-self.num_images // self.chunk_images)

    def chunk_range(self, index: int) -> tuple[int, int]:
        start = index * self.chunk_images
        return start, min(start + self.chunk_images, self.num_images)

    def shard_chunks(self, shard: tuple[int, int] = (0, 1)) -> list[int]:
        """The contiguous, chunk-aligned block of chunk indices shard ``i`` of ``n`` owns."""
        i, n = shard
        if not (n >= 1 and 0 <= i < n):
            raise MidprobeError(f"shard {i}/{n} is invalid; expected i/N with 0 <= i < N")
        lo, hi = (self.num_chunks * i) // n, (self.num_chunks * (i + 1)) // n
        return list(range(lo, hi))

    def is_done(self, index: int) -> bool:
        return bool(self.group.attrs.get("complete")) or (self.progress / str(index)).exists()

    def pending(self, shard: tuple[int, int] = (0, 1)) -> list[int]:
        return [i for i in self.shard_chunks(shard) if not self.is_done(i)]

    def write_chunk(self, index: int, layers: Mapping[str, np.ndarray], global_vectors: np.ndarray) -> None:
        """Write chunk ``index`` (every layer plus the global vectors), then mark it durable."""
        start, stop = self.chunk_range(index)
        # every chunk is written, all-zero or not (zarr would otherwise compare each chunk with
        # the fill value first, a full pass in slow float16 arithmetic, and skip the file)
        with zarr.config.set({"array.write_empty_chunks": True}):
            for name in self.layers:
                arr = self.group[name]
                values = to_float16(name, layers[name])
                if values.shape != (stop - start, *arr.shape[1:]):
                    raise MidprobeError(f"layer {name!r}: chunk {index} has shape {values.shape}, "
                                        f"expected {(stop - start, *arr.shape[1:])}")
                arr[start:stop] = values
            self.group[GLOBAL][start:stop] = to_float16(GLOBAL, global_vectors)
        for name in (*self.layers, GLOBAL):
            _fsync_tree(self.store / self.split / name / "c" / str(index))
        self.progress.mkdir(parents=True, exist_ok=True)
        marker = self.progress / str(index)
        tmp = marker.with_suffix(".tmp")
        with open(tmp, "wb") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, marker)

    def finalize(self) -> bool:
        """Mark the split complete if every chunk is durable; True when it is complete."""
        if self.group.attrs.get("complete"):
            return True
        with _Lock(self.store.with_suffix(".lock")):
            if all((self.progress / str(i)).exists() for i in range(self.num_chunks)):
                self.group.attrs["complete"] = True
                shutil.rmtree(self.progress, ignore_errors=True)
                parent = self.progress.parent
                if parent.exists() and not any(parent.iterdir()):
                    parent.rmdir()
                return True
        return False


def open_feature_writer(store: Path, *, split: str, fingerprint: Mapping[str, Any], num_images: int,
                        layer_shapes: Mapping[str, tuple[int, int, int]], strides: Mapping[str, int],
                        global_dim: int, chunk_images: int | None = None,
                        store_attrs: Mapping[str, Any] | None = None) -> FeatureWriter:
    """Create split ``split`` of the store at ``store``, or reopen it to resume.

    Reopening checks the fingerprint and the array shapes; a mismatch is an error naming
    the differing field, never a silent overwrite. ``store_attrs`` (facts about the model,
    e.g. the options it offers) are set on the store's root.
    """
    store = Path(store)
    chunk = chunk_images or choose_chunk_images(layer_shapes, num_images)
    with _Lock(store.with_suffix(".lock")):
        root = zarr.open_group(str(store), mode="a", zarr_format=3)
        if "kind" not in root.attrs:
            root.attrs.update({"midprobe_format": FORMAT_VERSION, "kind": "features",
                               "model": fingerprint["model"], "dataset": fingerprint["dataset"]})
        if store_attrs and any(root.attrs.get(k) != v for k, v in store_attrs.items()):
            root.attrs.update(dict(store_attrs))
        if split in root:
            group = root[split]
            check_fingerprint(stored=group.attrs["fingerprint"], expected=fingerprint, where=f"{store}/{split}")
            for name, shape in layer_shapes.items():
                if name not in group or tuple(group[name].shape) != (num_images, *shape):
                    raise MidprobeError(f"feature store {store}/{split}: layer {name!r} does not match "
                                        f"the expected shape {(num_images, *shape)}; re-extract into a fresh store")
        else:
            group = root.create_group(split)
            for name, shape in layer_shapes.items():
                group.create_array(name, shape=(num_images, *shape), dtype="float16",
                                   chunks=(chunk, *shape), compressors=None, fill_value=0)
            group.create_array(GLOBAL, shape=(num_images, global_dim), dtype="float16",
                               chunks=(chunk, global_dim), compressors=None, fill_value=0)
            group.attrs.update({"fingerprint": dict(fingerprint), "layers": list(layer_shapes),
                                "strides": dict(strides), "num_images": num_images,
                                "chunk_images": chunk, "complete": False})
    return FeatureWriter(store, split, group)


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
        """A lazy ``(N, C, h, w) float16`` dask array whose chunks are the store's chunks."""
        import dask.array as da

        arr = self.array(layer)
        return da.from_zarr(arr, chunks=arr.chunks)

    def read(self, layer: str, start: int, stop: int) -> np.ndarray:
        return self.array(layer)[start:stop]

    def global_vectors(self) -> np.ndarray:
        """``(N, D) float32`` global vectors (CLS or pooled)."""
        return self.group[GLOBAL][...].astype(np.float32)


def open_features(dataset: str, model: str, split: str, *, expect: Mapping[str, Any] | None = None,
                  root: DataRoot | None = None, store: Path | None = None) -> FeatureSplit:
    """Open a complete split of a feature store; ``expect`` pins fingerprint fields."""
    path = Path(store) if store is not None else (root or data_root()).feature_store(dataset, model)
    if not (path / "zarr.json").exists():
        raise MidprobeError(f"no features of model {model!r} for dataset {dataset!r} at {path}; "
                            f"run `make extract MODEL={model} DATASET={dataset}` first")
    group_root = zarr.open_group(str(path), mode="r")
    if group_root.attrs.get("midprobe_format") != FORMAT_VERSION:
        raise MidprobeError(f"feature store {path} has format {group_root.attrs.get('midprobe_format')}, "
                            f"expected {FORMAT_VERSION}; re-extract it")
    if split not in group_root:
        raise MidprobeError(f"feature store {path} has no split {split!r}; "
                            f"run `make extract MODEL={model} DATASET={dataset}` for it")
    group = group_root[split]
    if not group.attrs.get("complete"):
        raise MidprobeError(f"feature store {path}/{split} is incomplete (extraction was interrupted); "
                            "rerun the same `make extract` to resume it")
    if expect:
        check_fingerprint(stored=group.attrs["fingerprint"], expected=expect, where=f"{path}/{split}")
    return FeatureSplit(path, split, group)


def list_feature_stores(dataset: str, *, root: DataRoot | None = None) -> list[str]:
    """Names of the models with a feature store for ``dataset``."""
    folder = (root or data_root()).feature_dir(dataset)
    models = []
    for path in sorted(folder.glob("*.zarr")):
        try:
            models.append(zarr.open_group(str(path), mode="r").attrs["model"])
        except (KeyError, FileNotFoundError, ValueError):
            continue
    return models
