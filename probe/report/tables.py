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

    @property
    def label(self) -> str:
        return f"{self.protocol} protocol, {self.head} heads"

    @property
    def slug(self) -> str:
        return f"{self.protocol}_{self.head}"

    def column(self, name: str) -> np.ndarray:
        return np.array([self.mean.get((m, name), np.nan) for m in self.models])

    def cell(self, model: str, column: str) -> str:
        if (model, column) not in self.mean:
            return "–"
        mean, std, n = self.mean[model, column], self.std[model, column], self.seeds[model, column]
        return f"{100 * mean:.1f} ± {100 * std:.1f}" if n > 1 else f"{100 * mean:.1f}"

    def markdown(self) -> str:
        header = "| model | " + " | ".join(f"{c}<br>{self.metric[c]}" for c in self.columns) + " |"
        rule = "|---|" + "---|" * len(self.columns)
        rows = [f"| {m} | " + " | ".join(self.cell(m, c) for c in self.columns) + " |" for m in self.models]
        return "\n".join([header, rule, *rows])

    def text(self) -> str:
        cells = [["model", *self.columns]] + [[m, *(self.cell(m, c) for c in self.columns)] for m in self.models]
        widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
        return "\n".join("  ".join(v.ljust(w) for v, w in zip(r, widths)) for r in cells)

    def write_csv(self, path: Path) -> Path:
        with open(path, "w", newline="") as handle:
            out = csv.writer(handle)
            out.writerow(["model", "column", "metric", "mean", "std", "seeds", "probe"])
            for (model, column), mean in sorted(self.mean.items()):
                out.writerow([model, column, self.metric[column], mean, self.std[model, column],
                              self.seeds[model, column], self.probe[model, column]])
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
    grouped: dict[tuple, list[float]] = defaultdict(list)
    metric_of: dict[str, str] = {}
    for r in records:
        column = column_of(r)
        metric_of[column] = r["headline_metric"]
        value = r.get("headline")
        if value is None or not np.isfinite(value):
            continue
        grouped[(r.get("protocol", "midprobe"), _head_of(r), column, r["model"], r["probe"])].append(float(value))
    boards = {}
    for protocol in sorted({p for p, *_ in grouped}):
        heads = sorted({h for p, h, *_ in grouped if p == protocol and h is not None}) or ["zero-shot"]
        for head in heads:
            boards[protocol, head] = _board(protocol, head, grouped, metric_of)
    return boards


def _board(protocol: str, head: str, grouped: Mapping[tuple, list[float]], metric_of: dict[str, str]) -> Leaderboard:
    board = Leaderboard(head=head, columns=[], models=[], metric=metric_of, protocol=protocol)
    for (p, h, column, model, probe), values in grouped.items():
        if p != protocol or h not in (head, None):
            continue
        key = (model, column)
        mean = float(np.mean(values))
        if key not in board.mean or mean > board.mean[key]:
            board.mean[key], board.std[key] = mean, float(np.std(values))
            board.seeds[key], board.probe[key] = len(values), probe
    board.columns = sorted({c for _, c in board.mean})
    board.models = sorted({m for m, _ in board.mean})
    return board


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
