"""A grid file (``grids/<name>.toml``) parsed and checked into typed, frozen settings.

Layout (every key but ``[grid] models`` and the datasets has a default)::

    [grid]
    protocol = "midprobe"            # every choice of data, extraction and probing
    models = ["pixels", "vit_b_mae"] # registry names or timm:<name>
    seeds = [0]                      # one probe sweep per store and seed
    device = "cpu"                   # "cpu" or "cuda": extraction (and probes, unless probe_device)
    probe_device = "cpu"
    shards = 1                       # extraction shards per (model, dataset); several GPUs fill one store
    batch_size = 16                  # extraction batch size
    chunk_images = 16                # images per feature-store chunk (default: ~8 MiB chunks)
    precision = "fp16"               # the feature stores' value type: "fp16" or "int8" (<model>@int8.zarr)
    report = true
    disk_budget = "2TB"              # features on disk at once (decimal units); default: no limit
    augmented = "lockstep"           # augmented views: "lockstep" or "cached" (default: from disk_budget)
    keep_features = false            # with a budget: keep a model's features after its probes (no eviction)

    [weights]                        # local weights files, as WEIGHTS= for make extract
    rn50_swav = "~/checkpoints/swav_800ep_pretrain.pth.tar"

    [datasets.nyuv2]                 # one table per dataset loader
    tasks = ["depth", "normals"]
    options = { geonet = true }      # loader options, over the protocol's
    raw = "/shared/raw/nyuv2"        # default <data>/raw/<loader>
    shards = 4

    [tasks.depth]                    # probe settings of a task, on every dataset that lists it
    heads = ["linear", "mlp"]        # default: the protocol's
    lrs = [5e-4, 1e-3]
    layers = ["all", "last", "block2,block11"]   # layer sets
    overrides = { epochs = 5 }       # protocol choices (DenseChoices / CorrespondenceChoices fields)
    options = { bidirectional = true }           # zero-shot run options

Every error is one line naming the file, the line and the key: ``grids/x.toml:7: grid.seeds:
expected a list of integers >= 0``. ``tomllib`` gives no positions, so :class:`_Locator` finds
each key's line in the text.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

from cache import MidprobeError
from cache.quantize import PRECISIONS, check_precision

DEVICES = ("cpu", "cuda")
#: A layer set: every cached layer, the last one, or layer names joined by commas.
LAYER_TOKENS = ("all", "last")
ZERO_SHOT_OPTIONS = {"correspondence": {"bidirectional": bool}, "similarity": {}}


@dataclass(frozen=True)
class TaskSettings:
    """How one task is probed on every dataset that lists it. ``heads``/``lrs`` ``None``: the
    protocol's; ``layer_sets`` empty: the task's default layers."""

    task: str
    heads: tuple[str, ...] | None = None
    lrs: tuple[float, ...] | None = None
    layer_sets: tuple[str, ...] = ()
    overrides: Mapping[str, Any] = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class DatasetEntry:
    """One dataset: its loader, the tasks probed on it, loader options, raw folder, shards."""

    loader: str
    tasks: tuple[str, ...]
    options: Mapping[str, Any]
    raw: str | None
    shards: int


@dataclass(frozen=True)
class GridSpec:
    path: Path
    name: str
    protocol: str
    models: tuple[str, ...]
    seeds: tuple[int, ...]
    device: str
    probe_device: str
    shards: int
    batch_size: int
    chunk_images: int | None
    precision: str
    report: bool
    weights: Mapping[str, str]
    datasets: tuple[DatasetEntry, ...]
    tasks: Mapping[str, TaskSettings]
    #: bytes of features on disk at once (None: no limit; :mod:`grid.budget`)
    disk_budget: int | None = None
    #: "lockstep", "cached" or None (chosen per model and dataset from the budget)
    augmented: str | None = None
    keep_features: bool = False

    def with_disk_budget(self, text: str) -> "GridSpec":
        """The grid under a disk budget (``--disk-budget`` / ``DISK_BUDGET=``), e.g. ``2TB``."""
        from grid.budget import parse_disk

        return dataclasses.replace(self, disk_budget=parse_disk(text))

    def with_device(self, device: str) -> "GridSpec":
        """The grid with extraction and probes on ``device`` (``--device`` / ``DEVICE=``)."""
        if device not in DEVICES:
            raise MidprobeError(f"device {device!r}: expected {' or '.join(DEVICES)}")
        return dataclasses.replace(self, device=device, probe_device=device)

    def with_precision(self, precision: str) -> "GridSpec":
        """The grid extracting and probing ``precision`` stores (``--precision`` / ``PRECISION=``)."""
        return dataclasses.replace(self, precision=check_precision(precision))


_KEY = re.compile(r'"([^"]*)"|\'([^\']*)\'|([A-Za-z0-9_-]+)')


def _split_key(text: str) -> tuple[str, ...]:
    return tuple(next(g for g in m.groups() if g is not None) for m in _KEY.finditer(text))


def _strip_comment(line: str) -> str:
    """``line`` without a ``#`` comment outside quotes, stripped."""
    quote = ""
    for i, char in enumerate(line):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char == "#":
            return line[:i].strip()
    return line.strip()


class _Locator:
    """The line of every key, table header and inline-table key of a TOML text (1-based)."""

    def __init__(self, text: str) -> None:
        self.lines: dict[tuple, int] = {}
        header: tuple = ()
        arrays: dict[tuple, int] = {}
        for number, raw in enumerate(text.splitlines(), 1):
            line = _strip_comment(raw)
            if m := re.fullmatch(r"\[\[\s*(.+?)\s*\]\]", line):
                path = _split_key(m.group(1))
                arrays[path] = arrays.get(path, -1) + 1
                header = (*path, arrays[path])
                self.lines.setdefault(header, number)
            elif m := re.fullmatch(r"\[\s*(.+?)\s*\]", line):
                header = _split_key(m.group(1))
                self.lines.setdefault(header, number)
            elif m := re.match(r'((?:"[^"]*"|\'[^\']*\'|[A-Za-z0-9_.\s-])+?)\s*=(.*)', line):
                key = (*header, *_split_key(m.group(1)))
                self.lines.setdefault(key, number)
                for inner in re.finditer(r'(?:[{,]\s*)("[^"]*"|[A-Za-z0-9_-]+)\s*=', m.group(2)):
                    self.lines.setdefault((*key, *_split_key(inner.group(1))), number)

    def line(self, path: tuple) -> int | None:
        for end in range(len(path), 0, -1):
            if path[:end] in self.lines:
                return self.lines[path[:end]]
        return None


class _Checker:
    """Raises one-line errors ``file:line: key: problem``."""

    def __init__(self, path: Path, text: str) -> None:
        self.path, self.where = path, _Locator(text)

    def fail(self, key: tuple, problem: str) -> MidprobeError:
        line = self.where.line(key)
        dotted = ".".join(str(k) for k in key)
        return MidprobeError(f"{self.path}{f':{line}' if line else ''}: {dotted}: {problem}")

    def table(self, value: Any, key: tuple, known: Mapping[str, Any] | None = None) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, f"expected a table, got {_kind(value)}")
        if known is not None:
            for name in value:
                if name not in known:
                    raise self.fail((*key, name), f"unknown key; expected one of {', '.join(known)}")
        return value

    def integers(self, value: Any, key: tuple, *, least: int) -> tuple[int, ...]:
        if (not isinstance(value, list) or not value
                or not all(isinstance(v, int) and not isinstance(v, bool) and v >= least for v in value)):
            raise self.fail(key, f"expected a non-empty list of integers >= {least}, got {value!r}")
        return tuple(value)

    def integer(self, value: Any, key: tuple, *, least: int) -> int:
        if not isinstance(value, int) or isinstance(value, bool) or value < least:
            raise self.fail(key, f"expected an integer >= {least}, got {value!r}")
        return value

    def strings(self, value: Any, key: tuple) -> tuple[str, ...]:
        if not isinstance(value, list) or not value or not all(isinstance(v, str) and v for v in value):
            raise self.fail(key, f"expected a non-empty list of strings, got {value!r}")
        return tuple(value)

    def choice(self, value: Any, key: tuple, choices: tuple[str, ...]) -> str:
        if value not in choices:
            raise self.fail(key, f"expected {' or '.join(repr(c) for c in choices)}, got {value!r}")
        return value


def _kind(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean"}.get(type(value), type(value).__name__)


GRID_KEYS = {"name": "", "protocol": "midprobe", "models": None, "seeds": [0], "device": "cpu", "probe_device": None,
             "shards": 1, "batch_size": 16, "chunk_images": None, "precision": "fp16", "report": True,
             "disk_budget": None, "augmented": None, "keep_features": False}
DATASET_KEYS = {"tasks": None, "options": {}, "raw": None, "shards": None}
TASK_KEYS = {"heads": None, "lrs": None, "layers": [], "overrides": {}, "options": {}}


def load_grid(path: str | Path) -> GridSpec:
    """Read and check the grid file at ``path``; every problem is a one-line ``MidprobeError``."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise MidprobeError(f"cannot read grid file {path}: {exc.strerror}") from None
    except UnicodeDecodeError as exc:
        hint = " (it looks like UTF-16: save it as UTF-8)" if path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff") else ""
        raise MidprobeError(f"cannot read grid file {path}: byte {exc.start} is not UTF-8{hint}; TOML files are "
                            "UTF-8 text") from None
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        line = re.search(r"at line (\d+)", message)
        where = f"{path}:{line.group(1)}" if line else str(path)
        problem = re.sub(r" ?\(at line.*", "", message)
        raise MidprobeError(f"{where}: invalid TOML: {problem}") from None
    check = _Checker(path, text)
    check.table(data, (), {"grid": 0, "weights": 0, "datasets": 0, "tasks": 0})
    grid = {**GRID_KEYS, **check.table(data.get("grid", {}), ("grid",), GRID_KEYS)}
    protocol = _protocol(check, grid["protocol"])
    if grid["models"] is None:
        raise check.fail(("grid",), "missing key 'models' (a list of model names)")
    models = check.strings(grid["models"], ("grid", "models"))
    for model in models:
        _check_model(check, model, ("grid", "models"))
    device = check.choice(grid["device"], ("grid", "device"), DEVICES)
    probe_device = check.choice(grid["probe_device"] or device, ("grid", "probe_device"), DEVICES)
    shards = check.integer(grid["shards"], ("grid", "shards"), least=1)
    if not isinstance(grid["report"], bool):
        raise check.fail(("grid", "report"), f"expected true or false, got {grid['report']!r}")
    weights = check.table(data.get("weights", {}), ("weights",))
    for model, file in weights.items():
        if model not in models:
            raise check.fail(("weights", model), f"not a model of this grid ({', '.join(models)})")
        if not isinstance(file, str) or not file:
            raise check.fail(("weights", model), f"expected a file path, got {file!r}")
    for key in ("keep_features",):
        if not isinstance(grid[key], bool):
            raise check.fail(("grid", key), f"expected true or false, got {grid[key]!r}")
    budget = None
    if grid["disk_budget"] is not None:
        from grid.budget import parse_disk

        try:
            budget = parse_disk(grid["disk_budget"])
        except MidprobeError as exc:
            raise check.fail(("grid", "disk_budget"), str(exc).removeprefix("disk budget ")) from None
    augmented = None if grid["augmented"] is None else check.choice(grid["augmented"], ("grid", "augmented"),
                                                                     ("lockstep", "cached"))
    datasets = _datasets(check, data.get("datasets"), shards)
    tasks = _tasks(check, data.get("tasks", {}), datasets)
    return GridSpec(path=path, name=str(grid["name"] or path.stem), protocol=protocol.name, models=models,
                    seeds=check.integers(grid["seeds"], ("grid", "seeds"), least=0), device=device,
                    probe_device=probe_device, shards=shards,
                    batch_size=check.integer(grid["batch_size"], ("grid", "batch_size"), least=1),
                    chunk_images=None if grid["chunk_images"] is None else
                    check.integer(grid["chunk_images"], ("grid", "chunk_images"), least=1),
                    precision=check.choice(grid["precision"], ("grid", "precision"), PRECISIONS),
                    report=grid["report"], datasets=datasets, tasks=tasks, disk_budget=budget,
                    augmented=augmented, keep_features=grid["keep_features"],
                    weights={m: str(Path(f).expanduser().resolve()) for m, f in weights.items()})


def _protocol(check: _Checker, name: Any):
    from protocols import get_protocol

    if not isinstance(name, str):
        raise check.fail(("grid", "protocol"), f"expected a protocol name, got {name!r}")
    try:
        return get_protocol(name)
    except MidprobeError as exc:
        raise check.fail(("grid", "protocol"), str(exc)) from None


def _check_model(check: _Checker, model: str, key: tuple) -> None:
    if model.startswith("timm:"):
        import timm

        if not timm.is_model(model[len("timm:"):].split(".")[0]):
            raise check.fail(key, f"timm has no model {model[len('timm:'):]!r}")
        return
    from extract.backbones import get_spec

    try:
        get_spec(model)
    except MidprobeError as exc:
        raise check.fail(key, str(exc)) from None


def _datasets(check: _Checker, value: Any, shards: int) -> tuple[DatasetEntry, ...]:
    from extract.datasets import DATASETS, check_options
    from extract.sizing import PUBLISHED_TASKS, SYNTHETIC_TASKS
    from protocols import TASK_SPLITS

    if value is None:
        raise check.fail(("datasets",), "missing: at least one [datasets.<loader>] table")
    out = []
    for loader, entry in check.table(value, ("datasets",)).items():
        key = ("datasets", loader)
        if loader not in DATASETS:
            raise check.fail(key, f"unknown dataset loader; known: {', '.join(sorted(DATASETS))}")
        entry = {**DATASET_KEYS, **check.table(entry, key, DATASET_KEYS)}
        if entry["tasks"] is None:
            raise check.fail(key, "missing key 'tasks' (the tasks probed on this dataset)")
        tasks = check.strings(entry["tasks"], (*key, "tasks"))
        offered = {**PUBLISHED_TASKS, "synthetic": SYNTHETIC_TASKS}.get(loader, tuple(TASK_SPLITS))
        for task in tasks:
            if task not in offered:
                raise check.fail((*key, "tasks"), f"task {task!r} is not one of {loader}'s: {', '.join(offered)}")
        raw = entry["raw"]
        if raw is not None and (not isinstance(raw, str) or not raw):
            raise check.fail((*key, "raw"), f"expected a folder path, got {raw!r}")
        options = check.table(entry["options"], (*key, "options"))
        for name, setting in options.items():
            try:
                check_options(loader, {name: setting})
            except MidprobeError as exc:
                raise check.fail((*key, "options", name), str(exc)) from None
        out.append(DatasetEntry(loader, tasks, dict(options),
                                str(Path(raw).expanduser().resolve()) if raw else None,
                                shards if entry["shards"] is None else
                                check.integer(entry["shards"], (*key, "shards"), least=1)))
    if not out:
        raise check.fail(("datasets",), "empty: at least one [datasets.<loader>] table")
    return tuple(out)


def _tasks(check: _Checker, value: Any, datasets: tuple[DatasetEntry, ...]) -> dict[str, TaskSettings]:
    from probe.heads import check_head
    from probe.tasks import DenseTask, get_task

    listed = {t for d in datasets for t in d.tasks}
    out = {}
    for task, entry in check.table(value, ("tasks",)).items():
        key = ("tasks", task)
        if task not in listed:
            raise check.fail(key, f"no dataset lists this task (they list {', '.join(sorted(listed))})")
        entry = {**TASK_KEYS, **check.table(entry, key, TASK_KEYS)}
        dense = isinstance(get_task(task), DenseTask)
        heads = lrs = None
        if entry["heads"] is not None or entry["lrs"] is not None:
            if not dense:
                raise check.fail((*key, "heads" if entry["heads"] is not None else "lrs"),
                                 f"{task} is zero-shot: it trains no heads")
        if entry["heads"] is not None:
            heads = check.strings(entry["heads"], (*key, "heads"))
            for head in heads:
                try:
                    check_head(head)
                except MidprobeError as exc:
                    raise check.fail((*key, "heads"), str(exc)) from None
        if entry["lrs"] is not None:
            lrs = entry["lrs"]
            if (not isinstance(lrs, list) or not lrs
                    or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0 for v in lrs)):
                raise check.fail((*key, "lrs"), f"expected a non-empty list of positive numbers, got {lrs!r}")
            lrs = tuple(float(v) for v in lrs)
        layer_sets = _layer_sets(check, entry["layers"], (*key, "layers"), dense)
        out[task] = TaskSettings(task, heads, lrs, layer_sets, _overrides(check, task, entry["overrides"], key),
                                 _options(check, task, entry["options"], key, dense))
    return {task: out.get(task, TaskSettings(task)) for task in sorted(listed)}


def _layer_sets(check: _Checker, value: Any, key: tuple, dense: bool) -> tuple[str, ...]:
    if value == []:
        return ()
    sets = check.strings(value, key)
    for item in sets:
        names = [n.strip() for n in item.split(",")]
        if item not in LAYER_TOKENS and not all(re.fullmatch(r"[A-Za-z0-9_]+", n) for n in names):
            raise check.fail(key, f"layer set {item!r}: expected 'all', 'last' or layer names joined by commas")
    if not dense and len(sets) > 1:
        raise check.fail(key, "a zero-shot task reads one layer set")
    return tuple(",".join(n.strip() for n in s.split(",")) for s in sets)


def _overrides(check: _Checker, task: str, value: Any, key: tuple) -> dict[str, Any]:
    from protocols.overrides import OverrideError, check_overrides

    key = (*key, "overrides")
    try:
        return check_overrides(task, check.table(value, key))
    except OverrideError as exc:
        raise check.fail((*key, exc.name), exc.problem) from None


def _options(check: _Checker, task: str, value: Any, key: tuple, dense: bool) -> dict[str, Any]:
    key = (*key, "options")
    options = check.table(value, key)
    known = {} if dense else ZERO_SHOT_OPTIONS.get(task, {})
    for name, setting in options.items():
        if name not in known:
            raise check.fail((*key, name), f"unknown option; {task} takes {', '.join(known) or 'none'}")
        if not isinstance(setting, known[name]):
            raise check.fail((*key, name), f"expected {known[name].__name__}, got {setting!r}")
    return dict(options)
