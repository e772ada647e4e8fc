"""Result records: one JSON file per probe under ``results/<task>/<dataset>/<model>/<protocol>/``."""

from __future__ import annotations

import json
import platform
import re
import time
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from cache import DataRoot
from cache.durable import atomic_write, disk_errors

#: 2: records carry their protocol (name, resolved choices, overrides) and live under its folder.
RECORD_VERSION = 2


def versions() -> dict[str, str]:
    import numpy
    import timm
    import torch
    import zarr

    return {"python": platform.python_version(), "torch": torch.__version__, "timm": timm.__version__,
            "numpy": numpy.__version__, "zarr": zarr.__version__, "midprobe": _own_version()}


def _own_version() -> str:
    try:
        from importlib.metadata import version

        return version("midprobe")
    except Exception:
        return "unknown"


def overrides_text(overrides: Mapping[str, Any] | None, *, sep: str = ", ") -> str:
    """The protocol choices a run overrode, ``k=v`` sorted by name (``""`` for none)."""
    return sep.join(f"{k}={v}" for k, v in sorted((overrides or {}).items()))


def _variant(overrides: Mapping[str, Any] | None, precision: str, sep: str) -> str:
    return sep.join(part for part in (overrides_text(overrides, sep=sep), "" if precision == "fp16" else precision)
                    if part)


def record_name(probe: str, seed: int, overrides: Mapping[str, Any] | None = None, precision: str = "fp16") -> str:
    """``<probe>-seed<seed>[+k=v...][+int8].json``: a run that overrides protocol choices, or reads
    an int8 store, is another experiment, so it never replaces the protocol's own float16 record
    (``=`` is written ``_``)."""
    tag = _variant(overrides, precision, "+")
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", f"{probe}-seed{seed}" + (f"+{tag}" if tag else "")) + ".json"


def column_of(record: Mapping[str, Any]) -> str:
    """A record's leaderboard column: ``task (dataset)``, with ``[k=v ... int8]`` when it overrode
    protocol choices or read an int8 store — cells never mix runs of different choices."""
    config = record.get("config") or {}
    tag = _variant(config.get("overrides"), config.get("precision", "fp16"), " ")
    return f"{record['task']} ({record['dataset']})" + (f" [{tag}]" if tag else "")


def write_record(root: DataRoot, *, task: str, dataset: str, model: str, probe: str, config: Mapping[str, Any],
                 metrics: Mapping[str, float], headline: str, fingerprint: Mapping[str, Any],
                 wall_seconds: float, seed: int, protocol: str = "midprobe",
                 extra: Mapping[str, Any] | None = None, name: str | None = None) -> Path:
    """Write one record atomically and durably (a reader, or a rerun after a crash, sees the whole
    record or none; never half a file); returns its path. ``name``: its file name as planned
    (:func:`probe.plan.plan_records`; default :func:`record_name` of its key, seed and config)."""
    folder = root.ensure_writable(root.results(task, dataset, model, protocol))
    record = {
        "record_version": RECORD_VERSION, "task": task, "dataset": dataset, "model": model, "probe": probe,
        "protocol": protocol, "seed": seed, "config": dict(config), "headline_metric": headline,
        "headline": metrics.get(headline),
        "metrics": dict(metrics), "feature_fingerprint": dict(fingerprint), "wall_seconds": wall_seconds,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "versions": versions(), **dict(extra or {}),
    }
    path = folder / (name or record_name(probe, seed, config.get("overrides"), config.get("precision", "fp16")))
    with disk_errors(path):
        return atomic_write(path, json.dumps(record, indent=2, sort_keys=True, default=float))


def load_records(root: DataRoot) -> list[dict[str, Any]]:
    """Every record under the data root, each with its ``path``."""
    records = []
    for path in sorted(root.results().rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(record, dict) and record.get("record_version") == RECORD_VERSION:
            records.append({**record, "path": str(path)})
    return records


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str]) -> str:
    """A plain fixed-width table (floats with 4 decimals)."""
    def cell(value: Any) -> str:
        return f"{value:.4f}" if isinstance(value, float) else str(value)

    body = [[cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in body)) if body else len(c) for i, c in enumerate(columns)]
    lines = ["  ".join(c.ljust(w) for c, w in zip(columns, widths)), "  ".join("-" * w for w in widths)]
    lines += ["  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in body]
    return "\n".join(lines)


def headline_rows(records: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    return [{"task": r["task"], "dataset": r["dataset"], "model": r["model"], "probe": r["probe"],
             "metric": r["headline_metric"], "value": r["headline"]} for r in records]
