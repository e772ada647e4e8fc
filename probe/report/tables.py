"""The leaderboard: models x tasks, each task's headline metric, mean ± std over seeds."""

from __future__ import annotations

import csv
from collections import defaultdict
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np

from cache import MidprobeError
from probe.records import column_of
from probe.report.intervals import Runs, interval, runs_of, separable


@dataclass
class Leaderboard:
    """Cells keyed by (model, column); a column is ``task (dataset)``. One protocol, one head type:
    numbers of two protocols never share a leaderboard."""

    head: str
    columns: list[str]
    models: list[str]
    mean: dict[tuple[str, str], float] = field(default_factory=dict)
    std: dict[tuple[str, str], float] = field(default_factory=dict)
    seeds: dict[tuple[str, str], int] = field(default_factory=dict)
    probe: dict[tuple[str, str], str] = field(default_factory=dict)
    metric: dict[str, str] = field(default_factory=dict)
    protocol: str = "midprobe"
    #: per cell: its seeds' item scores, 95 % interval (None: none computable), flags, training steps
    runs: dict[tuple[str, str], Runs] = field(default_factory=dict)
    interval: dict[tuple[str, str], tuple[float, float] | None] = field(default_factory=dict)
    flags: dict[tuple[str, str], list[str]] = field(default_factory=dict)
    steps: dict[tuple[str, str], int | None] = field(default_factory=dict)
    #: per cell: ``≠`` / ``≈`` against the next measured model below it in its column (paired bootstrap)
    mark: dict[tuple[str, str], str] = field(default_factory=dict)
    #: per column: (task, dataset store, whether it overrode protocol choices)
    column_info: dict[str, tuple[str, str, bool]] = field(default_factory=dict)
    #: a row's source: ``measured`` (default) or ``published``
    source: dict[str, str] = field(default_factory=dict)
    #: why published points are not in this board (one line; empty when they are, or none apply)
    published_note: str = ""

    @property
    def label(self) -> str:
        return f"{self.protocol} protocol, {self.head} heads"

    @property
    def slug(self) -> str:
        return f"{self.protocol}_{self.head}"

    def column(self, name: str) -> np.ndarray:
        return np.array([self.mean.get((m, name), np.nan) for m in self.models])

    def is_published(self, model: str) -> bool:
        return self.source.get(model) == "published"

    def cell(self, model: str, column: str) -> str:
        """``mean ± std [low, high]`` (%, std over seeds where several ran, the 95 % interval where
        computable), the neighbour mark, and ``collapsed`` where the head collapsed; a published
        point is its value alone."""
        if (model, column) not in self.mean:
            return "–"
        mean, std, n = self.mean[model, column], self.std[model, column], self.seeds[model, column]
        if self.is_published(model):
            return f"{100 * mean:.1f}"
        text = f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"
        bounds = self.interval.get((model, column))
        if bounds is not None:
            text += f" [{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"
        if self.mark.get((model, column)):
            text += f" {self.mark[model, column]}"
        if "collapsed" in self.flags.get((model, column), []):
            text += " collapsed"
        return text

    def source_of(self, model: str) -> str:
        return "published (read off figures, ±0.3)" if self.is_published(model) else "measured"

    def markdown(self) -> str:
        sourced = bool(self.source)
        header = ("| model | " + ("source | " if sourced else "")
                  + " | ".join(f"{c}<br>{self.metric[c]}" for c in self.columns) + " |")
        rule = "|---|" + ("---|" if sourced else "") + "---|" * len(self.columns)
        rows = [f"| {m} | " + (f"{self.source_of(m)} | " if sourced else "")
                + " | ".join(self.cell(m, c) for c in self.columns) + " |" for m in self.models]
        return "\n".join([header, rule, *rows])

    def text(self) -> str:
        cells = [["model", *self.columns]] + [[m, *(self.cell(m, c) for c in self.columns)] for m in self.models]
        widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells)

    def write_csv(self, path: Path) -> Path:
        """One row per cell: its mean, std over seeds (population), 95 % interval, source, flags,
        training steps and the mark against its next measured neighbour."""
        with open(path, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["model", "column", "metric", "mean", "std", "seeds", "probe", "ci_low", "ci_high", "source",
                          "flags", "steps", "vs_next"])
            for (model, column), mean in sorted(self.mean.items()):
                bounds = self.interval.get((model, column)) or ("", "")
                steps = self.steps.get((model, column))
                out.writerow([model, column, self.metric[column], mean, self.std[model, column],
                              self.seeds[model, column], self.probe[model, column], *bounds,
                              "published" if self.is_published(model) else "measured",
                              " ".join(self.flags.get((model, column), [])), "" if steps is None else steps,
                              self.mark.get((model, column), "")])
        return path


def _head_of(record: Mapping[str, Any]) -> str | None:
    return record.get("config", {}).get("head")


def build_leaderboards(records: Iterable[Mapping[str, Any]]) -> dict[tuple[str, str], Leaderboard]:
    """One leaderboard per protocol and trained head type, keyed ``(protocol, head)`` (a protocol's
    zero-shot tasks appear in each of its boards; two protocols never share one).

    For a head with several configurations (learning rates, layer sets), a cell shows the
    configuration with the best mean headline metric — the best learning rate, as probing
    papers report it — and says which in the CSV.
    """
    records = list(records)
    if not records:
        raise MidprobeError("no result records under the data root; run `make probe TASK=...` first")
    grouped: dict[tuple, list[Mapping[str, Any]]] = defaultdict(list)
    metric_of: dict[str, str] = {}
    info: dict[str, tuple[str, str, bool]] = {}
    for r in records:
        column = column_of(r)
        metric_of[column] = r["headline_metric"]
        info[column] = (r["task"], r["dataset"], bool((r.get("config") or {}).get("overrides")))
        value = r.get("headline")
        if value is None or not np.isfinite(value):
            continue
        grouped[(r.get("protocol", "midprobe"), _head_of(r), column, r["model"], r["probe"])].append(r)
    boards = {}
    for protocol in sorted({p for p, *_ in grouped}):
        heads = sorted({h for p, h, *_ in grouped if p == protocol and h is not None}) or ["zero-shot"]
        for head in heads:
            boards[protocol, head] = _board(protocol, head, grouped, metric_of)
            boards[protocol, head].column_info = {c: info[c] for c in boards[protocol, head].columns}
    return boards


def _board(protocol: str, head: str, grouped: Mapping[tuple, list[Mapping[str, Any]]],
           metric_of: dict[str, str]) -> Leaderboard:
    board = Leaderboard(head=head, columns=[], models=[], metric=metric_of, protocol=protocol)
    for (p, h, column, model, probe), records in grouped.items():
        if p != protocol or h not in (head, None):
            continue
        key = (model, column)
        values = [float(r["headline"]) for r in records]
        mean = float(np.mean(values))
        if key not in board.mean or mean > board.mean[key]:
            board.mean[key], board.std[key] = mean, float(np.std(values))
            board.seeds[key], board.probe[key] = len(values), probe
            board.runs[key] = runs_of(records)
            board.flags[key] = sorted({f for r in records for f in r.get("flags") or []})
            steps = {(r.get("training") or {}).get("steps") for r in records}
            board.steps[key] = steps.pop() if len(steps) == 1 else None
    board.columns = sorted({c for _, c in board.mean})
    board.models = sorted({m for m, _ in board.mean})
    add_intervals(board)
    return board


def add_intervals(board: Leaderboard) -> None:
    """Each measured cell's 95 % interval, and per column the paired mark (``≠`` separable,
    ``≈`` not) of each measured model against the next measured model below it."""
    for key, runs in board.runs.items():
        board.interval[key] = interval(runs)
    for column in board.columns:
        below = sorted((m for m in board.models if (m, column) in board.runs and not board.is_published(m)),
                       key=lambda m: -board.mean[m, column])
        for upper, lower in zip(below, below[1:]):
            verdict = separable(board.runs[upper, column], board.runs[lower, column])
            if verdict is not None:
                board.mark[upper, column] = "≠" if verdict else "≈"


def load_imagenet(path: str | Path | None = None) -> dict[str, float]:
    """Published ImageNet linear-probe top-1 (%) per model name, from the repository's CSV or ``path``."""
    if path is None:
        text = resources.files("probe.report").joinpath("imagenet_linear.csv").read_text()
    else:
        try:
            text = Path(path).read_text()
        except OSError as exc:
            raise MidprobeError(f"cannot read ImageNet CSV {path}: {exc.strerror}") from None
    rows = list(csv.DictReader(text.splitlines()))
    if rows and not {"model", "imagenet_top1"} <= set(rows[0]):
        raise MidprobeError(f"ImageNet CSV needs columns model,imagenet_top1; got {', '.join(rows[0])}")
    out = {}
    for row in rows:
        try:
            out[row["model"]] = float(row["imagenet_top1"])
        except (TypeError, ValueError):
            continue
    return out
