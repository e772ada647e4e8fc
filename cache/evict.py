"""Removing a feature split whose readers are done, leaving a note of what it was.

A grid under a disk budget deletes a (model, dataset)'s feature splits once every probe that
reads them has its record. The records name the features they came from by fingerprint, so a
resumed grid must still be able to tell that they match: :func:`evict_split` first writes an
*eviction note* — ``<model>.evicted/<split>.json`` beside ``<model>.zarr``, holding the split's
fingerprint and layers — atomically, then deletes the split and its progress markers under the
store's lock (the split's metadata first, so a killed eviction leaves no split a reader would
open, and the note already vouches for the records). An augmented split streamed in lockstep (never cached) gets the same note
(:func:`write_note`). Extracting the split again makes the note moot: a split on disk is read,
never its note (:func:`note`).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Mapping, Sequence

from cache.durable import atomic_write, fsync_dir
from cache.errors import MidprobeError
from cache.feature_writer import _lock


def note_path(store: Path, split: str) -> Path:
    """Where the eviction note of ``split`` of the feature store at ``store`` lives."""
    return Path(store).with_suffix(".evicted") / f"{split}.json"


def write_note(store: Path, split: str, *, fingerprint: Mapping[str, Any], layers: Sequence[str], reason: str) -> Path:
    """Record (atomically) that ``split`` of ``store`` had ``fingerprint`` and ``layers`` and is gone for ``reason``."""
    path = note_path(store, split)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, json.dumps({"fingerprint": dict(fingerprint), "layers": list(layers), "reason": reason},
                                  sort_keys=True, indent=1))
    return path


def note(store: Path, split: str) -> dict[str, Any] | None:
    """The eviction note of ``split`` (``fingerprint``, ``layers``, ``reason``) while the split is not on disk."""
    path = note_path(store, split)
    if (Path(store) / split / "zarr.json").is_file() or not path.is_file():
        return None
    try:
        return dict(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError):
        return None


def evict_split(store: Path, split: str, *, reason: str) -> int:
    """Delete the complete feature split ``split`` of ``store`` after noting its fingerprint; returns
    the bytes freed (0 when it was not there). A split still being extracted is an error."""
    store = Path(store)
    folder = store / split
    if not (folder / "zarr.json").is_file():
        if folder.is_dir() and note_path(store, split).is_file():
            # what a killed eviction left: chunks of a split already noted and unreadable
            freed = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
            shutil.rmtree(folder, ignore_errors=True)
            return freed
        return 0
    with _lock(store):
        attrs = json.loads((folder / "zarr.json").read_text()).get("attributes") or {}
        if not attrs.get("complete"):
            raise MidprobeError(f"feature split {folder} is not complete; it is being extracted, not evictable")
        write_note(store, split, fingerprint=attrs["fingerprint"], layers=attrs.get("layers") or [], reason=reason)
        freed = sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())
        # metadata first: a split without zarr.json is no split to any reader, whatever chunks a kill leaves
        (folder / "zarr.json").unlink()
        fsync_dir(folder)
        shutil.rmtree(folder, ignore_errors=True)
        shutil.rmtree(store.with_suffix(".progress") / split, ignore_errors=True)
        fsync_dir(store)
    return freed
