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


#: what every record holds, by type (a record missing one, or of another type, is skipped and named)
RECORD_FIELDS = {"task": str, "dataset": str, "model": str, "probe": str, "protocol": str, "seed": int,
                 "config": dict, "headline_metric": str, "headline": (int, float), "metrics": dict,
                 "feature_fingerprint": dict}


def record_problem(record: Any) -> str | None:
    """Why ``record`` (parsed JSON) cannot be reported, or ``None`` when it can."""
    import math

    if not isinstance(record, dict):
        return f"holds {type(record).__name__ if record is not None else 'null'}, not a record object"
    if record.get("record_version") != RECORD_VERSION:
        return f"record_version {record.get('record_version')!r}, expected {RECORD_VERSION}"
    for key, kind in RECORD_FIELDS.items():
        if key not in record:
            return f"no {key!r}"
        if not isinstance(record[key], kind) or isinstance(record[key], bool):
            return f"{key!r} is {type(record[key]).__name__} {record[key]!r}"
    if not math.isfinite(record["headline"]):
        return f"headline {record['headline_metric']} is {record['headline']} (the probe diverged?)"
    return None


def read_records(root: DataRoot) -> tuple[list[dict[str, Any]], list[tuple[Path, str]]]:
    """Every reportable record under the data root (each with its ``path``), and every other
    ``.json`` file there with the reason it was skipped (unreadable, truncated, empty, missing keys)."""
    records, skipped = [], []
    for path in sorted(root.results().rglob("*.json")):
        try:
            record = json.loads(path.read_text())
        except OSError as exc:
            skipped.append((path, f"unreadable: {exc.strerror}"))
            continue
        except (json.JSONDecodeError, UnicodeDecodeError):
            skipped.append((path, "empty" if not path.stat().st_size else "truncated or not JSON"))
            continue
        problem = record_problem(record)
        if problem:
            skipped.append((path, problem))
        else:
            records.append({**record, "path": str(path)})
    return records, skipped


def load_records(root: DataRoot) -> list[dict[str, Any]]:
    """Every reportable record under the data root, each with its ``path`` (see :func:`read_records`)."""
    return read_records(root)[0]


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
