"""Writing a feature store (layout: :mod:`cache.feature_store`): splits created under the store's
lock, chunks written by whole images and made durable before their progress markers, layers
added to a complete split without rewriting the others, the split completed once every chunk is.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import zarr

from cache.chunks import CHECKSUMS, record_chunks
from cache.durable import disk_errors, fsync_dir, fsync_tree
from cache.errors import MidprobeError, metadata_errors
from cache.feature_store import FLOAT16_MAX, GLOBAL, choose_chunk_images, scale_array
from cache.fingerprint import FORMAT_VERSION, check_fingerprint
from cache.locks import FileLock
from cache.quantize import Quantized, check_precision, quantize


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


def _lock(store: Path) -> FileLock:
    """The lock serialising a store's creation and completion among live writers."""
    return FileLock(store.with_suffix(".lock"), what=f"feature store {store}")


def _drop_partials(folder: Path) -> None:
    """Remove Zarr's temporary ``*.partial`` files that a killed write left in ``folder``."""
    for leftover in folder.glob("*.partial"):
        leftover.unlink(missing_ok=True)


class FeatureWriter:
    """Writes one split of a feature store chunk by chunk; resumable and shardable.

    Each chunk index ``i`` covers images ``[i*k, min((i+1)*k, N))``. A chunk counts as
    done only after all its arrays are written, fsynced and its marker file exists.
    """

    def __init__(self, store: Path, split: str, group: zarr.Group) -> None:
        self.store, self.split, self.group = store, split, group
        self.num_images = int(group.attrs["num_images"])
        self.chunk_images = int(group.attrs["chunk_images"])
        self.precision = group.attrs.get("precision", "fp16")
        self.adding = list(group.attrs.get("adding") or [])
        # adding layers to a complete split writes only those; otherwise every layer and the global vectors
        self.layers = self.adding or list(group.attrs["layers"])
        self.progress = store.with_suffix(".progress") / (f"{split}+add" if self.adding else split)

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
        return (bool(self.group.attrs.get("complete")) and not self.adding) or (self.progress / str(index)).exists()

    def pending(self, shard: tuple[int, int] = (0, 1)) -> list[int]:
        return [i for i in self.shard_chunks(shard) if not self.is_done(i)]

    @property
    def writes_global(self) -> bool:
        return not self.adding

    @property
    def arrays(self) -> list[str]:
        scales = [scale_array(layer) for layer in self.layers] if self.precision == "int8" else []
        return [*self.layers, *scales, *([GLOBAL] if self.writes_global else [])]

    def write_chunk(self, index: int, layers: Mapping[str, np.ndarray | Quantized],
                    global_vectors: np.ndarray | None) -> None:
        """Write chunk ``index`` (the writer's layers plus, unless layers are being added, the
        global vectors), then mark it durable.

        Layers come as float arrays (cast to float16, or quantised at int8) or, at int8, as
        :class:`~cache.quantize.Quantized` (the extractor quantises on its device). The marker
        holds each array's ``[size, crc32c]`` of the chunk file as written. A full disk is a
        one-line error; the chunks already marked stay valid.
        """
        start, stop = self.chunk_range(index)
        values: dict[str, np.ndarray] = {}
        for name in self.layers:
            value = layers[name]
            shape = value.shape
            expected = (stop - start, *self.group[name].shape[1:])
            if tuple(shape) != expected:
                raise MidprobeError(f"layer {name!r}: chunk {index} has shape {tuple(shape)}, expected {expected}")
            if self.precision == "int8":
                packed = value if isinstance(value, Quantized) else quantize(value)
                values[name], values[scale_array(name)] = packed.values, packed.scale
            else:
                values[name] = to_float16(name, value.dequantize() if isinstance(value, Quantized) else value)
        if self.writes_global:
            values[GLOBAL] = to_float16(GLOBAL, global_vectors)

        def kept() -> str:
            return f"the {sum(1 for _ in self.progress.glob('*[0-9]'))} chunks already durable are kept"

        with disk_errors(f"chunk {index} of {self.store}/{self.split}", after=kept):
            # a pending chunk is rewritten whole: drop whatever a killed or failed write left
            for name in self.arrays:
                shutil.rmtree(self.store / self.split / name / "c" / str(index), ignore_errors=True)
            # every chunk is written, all-zero or not (zarr would otherwise compare each chunk with
            # the fill value first, a full pass in slow float16 arithmetic, and skip the file)
            with zarr.config.set({"array.write_empty_chunks": True}):
                for name, value in values.items():
                    self.group[name][start:stop] = value
            for name in self.arrays:
                fsync_tree(self.store / self.split / name / "c" / str(index))
            sums = {name: record_chunks(self.group[name], [index])[index] for name in self.arrays}
            self.progress.mkdir(parents=True, exist_ok=True)
            marker = self.progress / str(index)
            tmp = marker.with_suffix(".tmp")
            with open(tmp, "w") as handle:
                json.dump(sums, handle, sort_keys=True)
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(tmp, marker)
            fsync_dir(self.progress)

    def marker(self, index: int) -> dict[str, list[int]] | None:
        """The checksums a chunk's marker holds; ``{}`` for a marker without them; ``None`` if absent."""
        try:
            text = (self.progress / str(index)).read_text()
        except FileNotFoundError:
            return None
        try:
            return json.loads(text) if text else {}
        except ValueError:
            return {}

    def finalize(self) -> bool:
        """Mark the split complete if every chunk is durable; True when it is complete.

        The markers' checksums move into the split's attributes (:data:`CHECKSUMS`), then
        the markers are removed.
        """
        with _lock(self.store), disk_errors(f"{self.store}/{self.split}"):
            self.group = zarr.open_group(str(self.store), mode="r+")[self.split]
            adding = list(self.group.attrs.get("adding") or [])
            if not self.group.attrs.get("complete") or adding:
                markers = [self.marker(i) for i in range(self.num_chunks)]
                if any(m is None for m in markers):
                    return False
                sums: dict[str, list[list[int]]] = {name: [] for name in self.arrays}
                for index, marker in enumerate(markers):
                    for name in self.arrays:
                        entry = marker.get(name) or record_chunks(self.group[name], [index])[index]
                        sums[name].append(list(entry))
                _drop_partials(self.store / self.split)
                update: dict[str, Any] = {"complete": True, CHECKSUMS: {**self.group.attrs.get(CHECKSUMS, {}), **sums}}
                if adding:
                    layers = list(self.group.attrs["layers"]) + adding
                    update.update({"adding": [], "layers": layers,
                                   "fingerprint": {**self.group.attrs["fingerprint"], "layers": layers},
                                   "strides": {**self.group.attrs["strides"], **self.group.attrs["adding_strides"]}})
                self.group.attrs.update(update)
            shutil.rmtree(self.progress, ignore_errors=True)
            parent = self.progress.parent
            if parent.exists() and not any(parent.iterdir()):
                parent.rmdir()
        return True


def _check_chunk_files(store: Path, split: str, group: zarr.Group) -> None:
    """A split that claims to be complete has every chunk file (a stat each): one deleted since was
    otherwise a silent "wrote 0 images (complete)" and a read error later."""
    from cache.chunks import chunk_count, chunk_file

    if not group.attrs.get("complete"):
        return
    for name in [*group.attrs["layers"], GLOBAL]:
        if name not in group:
            continue
        arr = group[name]
        for index in range(chunk_count(arr)):
            if not chunk_file(arr, index).exists():
                raise MidprobeError(f"feature store {store}/{split} is marked complete but its chunk file "
                                    f"{chunk_file(arr, index).relative_to(store)} is missing; run `make verify "
                                    "REPAIR=1` to mark it for re-extraction, then rerun this `make extract`")


@metadata_errors(lambda store, **kw: f"feature store {store}")
def open_feature_writer(store: Path, *, split: str, fingerprint: Mapping[str, Any], num_images: int,
                        layer_shapes: Mapping[str, tuple[int, int, int]], strides: Mapping[str, int],
                        global_dim: int, chunk_images: int | None = None,
                        store_attrs: Mapping[str, Any] | None = None, precision: str = "fp16") -> FeatureWriter:
    """Create split ``split`` of the store at ``store``, or reopen it to resume or to add layers.

    Reopening checks the format, the precision, the fingerprint (but for its layers) and the
    array shapes; a mismatch is an error naming the differing field, never a silent
    overwrite. Layers of ``layer_shapes`` a complete split lacks are added to it (the writer
    then writes only those); a split still being extracted must be finished first. A split
    whose creation was killed half-way (its attributes, written last, are missing) is created
    afresh. ``store_attrs`` (facts about the model, e.g. the options it offers) are set on the
    store's root.
    """
    store = Path(store)
    check_precision(precision)
    chunk = chunk_images or (choose_chunk_images(layer_shapes, num_images) if layer_shapes else num_images)
    with _lock(store), disk_errors(store):
        root = zarr.open_group(str(store), mode="a", zarr_format=3)
        _drop_partials(store)
        if "kind" not in root.attrs:
            root.attrs.update({"midprobe_format": FORMAT_VERSION, "kind": "features", "precision": precision,
                               "model": fingerprint["model"], "dataset": fingerprint["dataset"]})
        elif root.attrs.get("precision", "fp16") != precision:
            raise MidprobeError(f"{store} holds {root.attrs.get('precision', 'fp16')} features, not {precision}")
        elif root.attrs.get("kind") != "features" or root.attrs.get("midprobe_format") != FORMAT_VERSION:
            raise MidprobeError(f"{store} is a {root.attrs.get('kind')} store of format "
                                f"{root.attrs.get('midprobe_format')}, not a feature store of format "
                                f"{FORMAT_VERSION}; extract into a fresh store (move this one away)")
        if split in root and "fingerprint" not in root[split].attrs:
            shutil.rmtree(store / split)
            root = zarr.open_group(str(store), mode="a", zarr_format=3)
        if store_attrs and any(root.attrs.get(k) != v for k, v in store_attrs.items()):
            root.attrs.update(dict(store_attrs))
        if split in root:
            group = root[split]
            _drop_partials(store / split)
            check_fingerprint(stored=group.attrs["fingerprint"],
                              expected={k: v for k, v in fingerprint.items() if k != "layers"}, where=f"{store}/{split}")
            if list(group.attrs["fingerprint"].get("layers", [])) != list(group.attrs["layers"]):
                raise MidprobeError(f"feature store {store}/{split} has layers={group.attrs['fingerprint'].get('layers')} "
                                    f"in its fingerprint but holds {group.attrs['layers']}: it was changed by hand; "
                                    "re-extract into a fresh store")
            if int(group.attrs["num_images"]) != num_images:
                raise MidprobeError(f"feature store {store}/{split} holds {group.attrs['num_images']} images, not "
                                    f"{num_images}; re-extract into a fresh store")
            _check_chunk_files(store, split, group)
            _add_layers(store, split, group, layer_shapes, strides)
            for name, shape in layer_shapes.items():
                if tuple(group[name].shape) != (num_images, *shape):
                    raise MidprobeError(f"feature store {store}/{split}: layer {name!r} does not match "
                                        f"the expected shape {(num_images, *shape)}; re-extract into a fresh store")
        else:
            # markers of an earlier store of this name (deleted by hand) must not vouch for new chunks
            shutil.rmtree(store.with_suffix(".progress") / split, ignore_errors=True)
            group = root.create_group(split)
            _create_layers(group, layer_shapes, num_images, chunk, precision)
            group.create_array(GLOBAL, shape=(num_images, global_dim), dtype="float16",
                               chunks=(chunk, global_dim), compressors=None, fill_value=0)
            # written last: a split with a fingerprint is a fully created split
            group.attrs.update({"fingerprint": {**fingerprint, "precision": precision}, "layers": list(layer_shapes),
                                "strides": dict(strides), "num_images": num_images, "precision": precision,
                                "chunk_images": chunk, "complete": False})
    return FeatureWriter(store, split, group)


def _create_layers(group: zarr.Group, layer_shapes: Mapping[str, tuple[int, int, int]], num_images: int,
                   chunk: int, precision: str) -> None:
    for name, shape in layer_shapes.items():
        group.create_array(name, shape=(num_images, *shape), dtype="int8" if precision == "int8" else "float16",
                           chunks=(chunk, *shape), compressors=None, fill_value=0, overwrite=True)
        if precision == "int8":
            group.create_array(scale_array(name), shape=(num_images, shape[0]), dtype="float16",
                               chunks=(chunk, shape[0]), compressors=None, fill_value=0, overwrite=True)


def _add_layers(store: Path, split: str, group: zarr.Group, layer_shapes: Mapping[str, tuple[int, int, int]],
                strides: Mapping[str, int]) -> None:
    """Start (or check a resumed) addition of the layers of ``layer_shapes`` that ``group`` lacks."""
    have = list(group.attrs["layers"])
    adding = list(group.attrs.get("adding") or [])
    wanted = [name for name in layer_shapes if name not in have]
    if not wanted and not adding:
        return
    if adding and sorted(adding) != sorted(wanted):
        raise MidprobeError(f"feature store {store}/{split} is being given layers {', '.join(adding)}; rerun that "
                            f"extraction to finish it before asking for {', '.join(wanted) or 'no new layer'}")
    if not group.attrs.get("complete"):
        raise MidprobeError(f"feature store {store}/{split} is still being extracted with layers {', '.join(have)}; "
                            f"rerun that `make extract` to finish it before adding {', '.join(wanted)}")
    if not adding:
        shutil.rmtree(store.with_suffix(".progress") / f"{split}+add", ignore_errors=True)
        _create_layers(group, {name: layer_shapes[name] for name in wanted}, int(group.attrs["num_images"]),
                       int(group.attrs["chunk_images"]), group.attrs.get("precision", "fp16"))
        group.attrs.update({"adding": wanted, "adding_strides": {name: strides[name] for name in wanted}})
