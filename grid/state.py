"""What is already done, read from the data root without loading anything heavy.

Only attributes and file names are read: a dataset store's ``complete`` flag and recorded
options, a feature split's ``complete`` flag, fingerprint and progress markers (in the store of
the grid's precision: ``<model>.zarr`` or ``<model>@int8.zarr``), the records' JSON (feature
fingerprint, which names the precision, and configuration), the eviction notes of splits a grid
under a disk budget deleted (:mod:`cache.evict`) and the report's modification time.
A grid task whose output passes these checks is skipped.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from cache import DataRoot

def _attrs(path: Path) -> dict[str, Any] | None:
    """The attributes of the Zarr group at ``path`` (``None`` if there is none)."""
    meta = path / "zarr.json"
    if not meta.is_file():
        return None
    try:
        return dict(json.loads(meta.read_text()).get("attributes") or {})
    except (OSError, json.JSONDecodeError):
        return None


def dataset_attrs(root: DataRoot, store: str) -> dict[str, Any] | None:
    """A complete dataset store's attributes plus ``splits`` (its split names); ``None`` otherwise."""
    path = root.dataset_store(store)
    attrs = _attrs(path)
    if not attrs or not attrs.get("complete"):
        return None
    splits = sorted(p.name for p in path.iterdir() if (p / "zarr.json").is_file())
    return {**attrs, "splits": splits}


def dataset_ready(root: DataRoot, store: str, options: Mapping[str, Any]) -> bool:
    """The store is complete and was prepared with every option the grid names (options the
    store does not record, such as worker counts, do not count)."""
    attrs = dataset_attrs(root, store)
    if attrs is None:
        return False
    stored = attrs.get("options") or {}
    return all(stored[k] == v for k, v in options.items() if k in stored)


def features_ready(root: DataRoot, store: str, model: str, split: str, expect: Mapping[str, Any],
                   shard: tuple[int, int] | None = None, precision: str = "fp16") -> bool:
    """Feature split ``split`` of ``model``'s ``precision`` store has the ``expect`` fingerprint
    values and is complete — or, with ``shard=(i, N)``, every chunk that shard owns is durable."""
    path = root.feature_store(store, model, precision)
    attrs = _attrs(path / split)
    if not attrs or any((attrs.get("fingerprint") or {}).get(k) != v for k, v in expect.items()):
        return False
    if attrs.get("complete"):
        return True
    if shard is None:
        return False
    i, n = shard
    chunks = -(-int(attrs["num_images"]) // int(attrs["chunk_images"]))
    progress = path.with_suffix(".progress") / split
    return all((progress / str(c)).exists() for c in range((chunks * i) // n, (chunks * (i + 1)) // n))


def feature_fingerprint(root: DataRoot, store: str, model: str, split: str,
                        precision: str = "fp16") -> dict[str, Any] | None:
    """The fingerprint of a complete feature split (``None`` if it is not complete); of a split the
    grid evicted (or streamed in lockstep), the one its eviction note records."""
    from cache.evict import note

    path = root.feature_store(store, model, precision)
    attrs = _attrs(path / split)
    if attrs is None:
        evicted = note(path, split)
        return dict(evicted["fingerprint"]) if evicted else None
    return dict(attrs["fingerprint"]) if attrs.get("complete") else None


def feature_layers(root: DataRoot, store: str, model: str, split: str, precision: str = "fp16") -> list[str]:
    from cache.evict import note

    path = root.feature_store(store, model, precision)
    attrs = _attrs(path / split) or note(path, split) or {}
    return list(attrs.get("layers") or [])


def missing_chunks(root: DataRoot, store: str, model: str, split: str,
                   precision: str = "fp16") -> list[int] | None:
    """Chunk indices of ``split`` without a durable marker (``None`` if the split does not exist)."""
    path = root.feature_store(store, model, precision)
    attrs = _attrs(path / split)
    if not attrs:
        return None
    if attrs.get("complete"):
        return []
    chunks = -(-int(attrs["num_images"]) // int(attrs["chunk_images"]))
    progress = path.with_suffix(".progress") / split
    return [c for c in range(chunks) if not (progress / str(c)).exists()]


def _plain(value: Any) -> Any:
    """``value`` as it reads back from a record's JSON (tuples become lists, ...)."""
    return json.loads(json.dumps(value, sort_keys=True, default=float))


def record_matches(path: Path, *, fingerprint: Mapping[str, Any], config: Mapping[str, Any]) -> bool:
    """The record at ``path`` exists, was computed from features with ``fingerprint`` and has
    every ``config`` entry (protocol, overrides, settings, ...)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return False
    stored = record.get("config") or {}
    return (record.get("feature_fingerprint") == _plain(dict(fingerprint))
            and all(stored.get(k) == _plain(v) for k, v in config.items()))


def records_ready(root: DataRoot, store: str, model: str, folder: Path, planned: Sequence[Any], *,
                  precision: str = "fp16") -> bool:
    """Every planned record (:class:`probe.plan.PlannedRecord`: its ``file``, ``split`` and
    ``config``) is in ``folder``, computed from the complete feature split it names (by
    fingerprint) and with every identifying ``config`` entry."""
    fingerprints: dict[str, dict[str, Any] | None] = {}
    for record in planned:
        if record.split not in fingerprints:
            fingerprints[record.split] = feature_fingerprint(root, store, model, record.split, precision)
        fingerprint = fingerprints[record.split]
        if fingerprint is None or not record_matches(folder / record.file, fingerprint=fingerprint,
                                                     config=record.config):
            return False
    return True


def report_current(root: DataRoot) -> bool:
    """``reports/report.md`` exists and is newer than every record."""
    page = root.reports() / "report.md"
    if not page.is_file():
        return False
    built = page.stat().st_mtime
    return all(p.stat().st_mtime <= built for p in root.results().rglob("*.json"))
