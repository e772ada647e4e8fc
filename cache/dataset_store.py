"""The dataset store: a prepared dataset as Zarr v3, the input of extraction and probes.

Layout of ``stores/datasets/<name>.zarr``::

    attrs: {midprobe_format, kind: "dataset", name, fingerprint, source, complete, ...}
    <split>/                 one group per split (train, test, pairs, triplets, ...)
        attrs: {num_images, height, width, per_image: [...], relations: [...]}
        images     (N, H, W, 3) uint8           always present
        depth      (N, H, W) float32 metres     z-depth; 0 or NaN = invalid
        normals    (N, H, W, 3) float32         unit vectors, camera frame (x right, y down,
                                                z forward); all-zero = invalid
        foreground (N, H, W) uint8              1 object, 0 background, 255 ignore
        instance   (N, H, W) int32              0 = background
        K          (N, 3, 3) float32            pinhole intrinsics, pixel centres at integers
        pose       (N, 4, 4) float32            camera-to-world
        pairs      (P, 2) int32                 relation: image indices of this split
        triplets   (T, 3) int32                 relation: (reference, candidate 0, candidate 1)
        ...

Per-image arrays are chunked along N so one chunk holds whole images. Integer arrays
(images, masks, ids) are zstd-compressed; float targets are stored raw, because probes
read them every epoch and decompression costs more than the disk it saves.

A store is built in ``<name>.zarr.building`` (under the lock ``<name>.lock``), fsynced,
and only then renamed into place, so a killed, failed or disk-full preparation leaves the
previous store as it was. Each split's attributes record every chunk's ``[size, crc32c]``
(``checksums``) for ``python -m cache.verify``.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import zarr

from cache.chunks import CHECKSUMS, chunk_count, read_checked, record_chunks
from cache.durable import disk_errors, fsync_dir, fsync_file, fsync_tree
from cache.errors import MidprobeError, metadata_errors
from cache.fingerprint import FORMAT_VERSION
from cache.locks import FileLock
from cache.paths import DataRoot, data_root

#: Build locks this process holds, by store path: a preparation that failed in this process
#: leaves its lock to the next one here (it is released once no writer uses it).
_BUILD_LOCKS: "weakref.WeakValueDictionary[Path, FileLock]" = weakref.WeakValueDictionary()


def dataset_fingerprint(*, name: str, source: str, options: Mapping[str, Any]) -> str:
    """sha256 over the dataset's name, its raw-source fingerprint and preprocessing options."""
    payload = json.dumps({"name": name, "source": source, "options": dict(options), "format": FORMAT_VERSION},
                         sort_keys=True, default=str)
    return hashlib.sha256(payload.encode()).hexdigest()


class SplitWriter:
    """Writes one split's per-image arrays, range by range, and its relation arrays."""

    def __init__(self, group: zarr.Group, num_images: int, chunk_images: int) -> None:
        self.group = group
        self.num_images = num_images
        self.chunk_images = chunk_images
        self._pending: list[Mapping[str, np.ndarray]] = []
        self._written = 0
        self._sums: dict[str, dict[int, list[int]]] = {}
        self.where = "dataset store"

    def append(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Add the next image(s) in order; whole chunks are written as they fill.

        Writing chunk by chunk avoids re-encoding a chunk for every image added to it.
        """
        self._pending.append(arrays)
        buffered = sum(len(next(iter(a.values()))) for a in self._pending)
        if buffered >= self.chunk_images:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        block = {k: np.concatenate([np.asarray(a[k]) for a in self._pending]) for k in self._pending[0]}
        self._pending = []
        self.write(self._written, block)
        self._written += len(next(iter(block.values())))

    def write(self, start: int, arrays: Mapping[str, np.ndarray]) -> None:
        """Write images ``start:start+n`` of every given per-image array, recording each touched
        chunk's checksum (the last write of a chunk is the one that counts)."""
        for key, value in arrays.items():
            if key not in self.group:
                raise MidprobeError(f"split {self.group.name!r} has no per-image array {key!r}")
            value = np.asarray(value)
            with self._writing():
                target = self.group[key]
                if value.shape[1:] != target.shape[1:]:
                    raise MidprobeError(
                        f"array {key!r}: got images of shape {value.shape[1:]}, expected {target.shape[1:]}")
                if not len(value):
                    continue
                target[start:start + len(value)] = value.astype(target.dtype, copy=False)
                k = self.chunk_images
                touched = range(start // k, (start + len(value) - 1) // k + 1)
                self._sums.setdefault(key, {}).update(record_chunks(target, touched))

    def put_relation(self, key: str, value: np.ndarray, **attrs: Any) -> None:
        """Store a small relation array (pairs, triplets, answers) that indexes this split's images."""
        value = np.asarray(value)
        with self._writing():
            arr = self.group.create_array(key, shape=value.shape, dtype=value.dtype,
                                          chunks=value.shape or (1,), overwrite=True)
            arr[...] = value
            self._sums[key] = record_chunks(arr, range(chunk_count(arr)))
            relations = list(self.group.attrs.get("relations", []))
            if key not in relations:
                relations.append(key)
            self.group.attrs.update({"relations": relations, **{f"{key}.{k}": v for k, v in attrs.items()}})

    def seal(self) -> None:
        """Write any images never written as zeros and record every chunk's checksum in the split."""
        sums = {}
        with self._writing():
            for key in [*self.group.attrs["per_image"], *self.group.attrs.get("relations", [])]:
                arr, recorded = self.group[key], self._sums.setdefault(key, {})
                for index in range(chunk_count(arr)):
                    if index not in recorded:
                        lo, hi = index * self.chunk_images, min((index + 1) * self.chunk_images, self.num_images)
                        arr[lo:hi] = np.zeros((hi - lo, *arr.shape[1:]), arr.dtype)
                        recorded.update(record_chunks(arr, [index]))
                sums[key] = [recorded[i] for i in range(chunk_count(arr))]
            self.group.attrs[CHECKSUMS] = sums

    @contextlib.contextmanager
    def _writing(self) -> Iterator[None]:
        # all-zero chunks are written too (arrays opened inside: zarr fixes the setting at opening),
        # so every chunk has a file and a checksum; a full disk is one line
        with disk_errors(self.where, after="the previous store (if any) is untouched"), \
                zarr.config.set({"array.write_empty_chunks": True}):
            yield


class DatasetWriter:
    """Builds a dataset store beside ``path``; it replaces any earlier store only in :meth:`finish`."""

    def __init__(self, path: Path, *, name: str, source: str, options: Mapping[str, Any],
                 attrs: Mapping[str, Any]) -> None:
        self.path = path
        self.building = building_path(path)
        self.where = f"dataset store {path}"
        self._lock = _BUILD_LOCKS.get(path)
        if self._lock is None or not self._lock.held:
            self._lock = FileLock(path.with_suffix(".lock"), timeout=0,
                                  what=f"dataset store {path} (another preparation is writing it)").acquire()
            _BUILD_LOCKS[path] = self._lock
        self.fingerprint = dataset_fingerprint(name=name, source=source, options=options)
        self._splits: list[SplitWriter] = []
        with disk_errors(self.where, after="the previous store (if any) is untouched"):
            for leftover in (self.building, _old_path(path)):
                if leftover.exists():
                    shutil.rmtree(leftover)
            self.root = zarr.open_group(str(self.building), mode="w", zarr_format=3)
            self.root.attrs.update({
                "midprobe_format": FORMAT_VERSION, "kind": "dataset", "name": name,
                "fingerprint": self.fingerprint, "source": source, "options": dict(options),
                "complete": False, **dict(attrs),
            })

    def split(self, name: str, *, num_images: int, height: int, width: int,
              fields: Mapping[str, tuple[tuple[int, ...], str]], chunk_images: int = 16,
              attrs: Mapping[str, Any] | None = None) -> SplitWriter:
        """Create split ``name`` with per-image arrays ``fields = {key: (shape_after_N, dtype)}``.

        ``images`` of shape ``(H, W, 3) uint8`` must be among the fields; a split holds at
        least one image.
        """
        if fields.get("images") != ((height, width, 3), "uint8"):
            raise MidprobeError(f"split {name!r}: 'images' must be ((H, W, 3), 'uint8'), got {fields.get('images')}")
        if num_images < 1:
            raise MidprobeError(f"split {name!r} of dataset {self.root.attrs['name']!r} would hold no images; "
                                "expected at least one — check that the raw files list some for it")
        chunk = max(1, min(chunk_images, num_images))
        with disk_errors(self.where, after="the previous store (if any) is untouched"):
            group = self.root.create_group(name)
            for key, (tail, dtype) in fields.items():
                # uint8 images and masks compress well and are read once (extraction); float targets
                # are read every probe epoch, where decompression costs more than the disk it saves
                group.create_array(key, shape=(num_images, *tail), dtype=dtype, chunks=(chunk, *tail),
                                   fill_value=0, compressors="auto" if np.dtype(dtype).kind in "ui" else None)
            group.attrs.update({"num_images": num_images, "height": height, "width": width,
                                "per_image": list(fields), "relations": [], **dict(attrs or {})})
        writer = SplitWriter(group, num_images, chunk)
        writer.where = self.where
        self._splits.append(writer)
        return writer

    def finish(self) -> "DatasetStore":
        """Seal every split, fsync the store, mark it complete and move it into place."""
        for split in self._splits:
            split.flush()
            if split._written not in (0, split.num_images):
                raise MidprobeError(f"split {split.group.name!r}: {split._written} of {split.num_images} images written")
        with disk_errors(self.where, after="the previous store (if any) is untouched"):
            for split in self._splits:
                split.seal()
            fsync_tree(self.building)
            self.root.attrs["complete"] = True
            fsync_file(self.building / "zarr.json")
            old = _old_path(self.path)
            if self.path.exists():
                os.rename(self.path, old)
            os.rename(self.building, self.path)
            fsync_dir(self.path.parent)
            shutil.rmtree(old, ignore_errors=True)
        self._lock.release()
        return DatasetStore(self.path)


def building_path(path: Path) -> Path:
    """Where the store at ``path`` is built before it is complete."""
    return path.with_name(path.name + ".building")


def _old_path(path: Path) -> Path:
    return path.with_name(path.name + ".old")


def create_dataset_store(path: Path, *, name: str, source: str, options: Mapping[str, Any] | None = None,
                         attrs: Mapping[str, Any] | None = None) -> DatasetWriter:
    """Start a fresh dataset store at ``path``; it replaces any earlier one when it is finished."""
    return DatasetWriter(Path(path), name=name, source=source, options=options or {}, attrs=attrs or {})


@dataclass
class SplitView:
    """Read access to one split: lazy Zarr arrays plus the split's metadata."""

    name: str
    group: zarr.Group

    @property
    def num_images(self) -> int:
        return int(self.group.attrs["num_images"])

    @property
    def image_size(self) -> tuple[int, int]:
        return int(self.group.attrs["height"]), int(self.group.attrs["width"])

    @property
    def keys(self) -> list[str]:
        return list(self.group.attrs["per_image"])

    @property
    def relations(self) -> list[str]:
        return list(self.group.attrs.get("relations", []))

    @property
    def attrs(self) -> dict[str, Any]:
        return dict(self.group.attrs)

    def has(self, key: str) -> bool:
        return key in self.keys or key in self.relations

    def array(self, key: str) -> zarr.Array:
        """The lazy Zarr array ``key``; a one-line error if the split lacks it."""
        if not self.has(key):
            raise MidprobeError(
                f"split {self.name!r} has no array {key!r}; it has {', '.join(self.keys + self.relations)}")
        return self.group[key]

    def read(self, key: str, index: slice | np.ndarray | None = None) -> np.ndarray:
        """Images ``index`` (all if ``None``) of ``key``; a damaged chunk is a one-line error naming it."""
        return read_checked(self.array(key), index)


class DatasetStore:
    """A complete dataset store opened for reading."""

    @metadata_errors(lambda self, path: f"dataset store {path}")
    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        if not (self.path / "zarr.json").exists():
            if building_path(self.path).exists():
                raise MidprobeError(f"dataset store {self.path} is incomplete (its preparation was interrupted or "
                                    "is still running); rerun `make data`")
            raise MidprobeError(f"no dataset store at {self.path}; prepare it first with `make data DATASET=...`")
        self.root = zarr.open_group(str(self.path), mode="r")
        attrs = dict(self.root.attrs)
        if attrs.get("kind") != "dataset":
            raise MidprobeError(f"{self.path} is not a midprobe dataset store (kind={attrs.get('kind')!r})")
        if attrs.get("midprobe_format") != FORMAT_VERSION:
            raise MidprobeError(f"dataset store {self.path} has format {attrs.get('midprobe_format')}, "
                                f"expected {FORMAT_VERSION}; rebuild it with `make data`")
        if not attrs.get("complete"):
            raise MidprobeError(f"dataset store {self.path} is incomplete (its preparation was interrupted); "
                                "rerun `make data`")
        self.attrs = attrs

    @property
    def name(self) -> str:
        return self.attrs["name"]

    @property
    def fingerprint(self) -> str:
        return self.attrs["fingerprint"]

    @property
    def splits(self) -> list[str]:
        return sorted(name for name, _ in self.root.groups())

    def split(self, name: str) -> SplitView:
        if name not in self.splits:
            raise MidprobeError(f"dataset {self.name!r} has no split {name!r}; it has {', '.join(self.splits)}")
        return SplitView(name, self.root[name])


def open_dataset(name_or_path: str | Path, *, root: DataRoot | None = None) -> DatasetStore:
    """Open a dataset store by name (under the data root) or by a path ending in ``.zarr``."""
    candidate = Path(name_or_path)
    if candidate.suffix == ".zarr":
        return DatasetStore(candidate)
    root = root or data_root()
    return DatasetStore(root.dataset_store(str(name_or_path)))
