"""Measured models among the paper's published 22: published rows in a board, the ImageNet axis
each figure uses, the zoo models measured here beside their published values, and the ranking's
mid-/high-level scores recomputed with the measured models inserted."""

from __future__ import annotations

from typing import Mapping

import numpy as np

from probe.report.intervals import rank_intervals
from probe.report.published import (IMAGENET_AXIS, OWN_SCALE, PROVENANCE, READ_PRECISION, comparable,
                                    load_published, published_by_zoo, published_column, zoo_of)
from probe.report.stats import ranks
from probe.report.tables import Leaderboard

SOURCES_AXIS = "the sources' published linear-probe top-1 (`probe/report/imagenet_linear.csv`) or yours (`--imagenet`)"


def attach_published(board: Leaderboard) -> None:
    """Add the paper's 22 as published rows on the board's comparable columns (``PROTOCOL=paper``,
    the paper's datasets, no overridden choice); where none is comparable, set the one line why."""
    columns = {}
    reasons = []
    for column in board.columns:
        task, dataset, overridden = board.column_info.get(column, ("", "", True))
        ok, why = comparable(board.protocol, task, dataset, overridden)
        if ok:
            columns[column] = published_column(task, dataset)
        else:
            reasons.append(why)
    if not columns:
        board.published_note = reasons[0] if len(set(reasons)) == 1 else (
            "published points are not shown: " + "; ".join(sorted({r.split(": ", 1)[1] for r in reasons})))
        return
    if reasons:
        board.published_note = (f"published points are shown for {len(columns)} of {len(board.columns)} columns; "
                                 + "; ".join(sorted(set(reasons))))
    for model in board.models:
        board.source[model] = "measured"
    for p in load_published():
        board.source[p.name] = "published"
        for column, name in columns.items():
            key = (p.name, column)
            board.mean[key], board.std[key], board.seeds[key], board.probe[key] = p.values[name] / 100, 0.0, 1, "published"
    # rows by mean rank over the compared columns (best first), so a measured model reads among its neighbours
    names = list(board.source)
    placed: dict[str, list[float]] = {m: [] for m in names}
    for column in columns:
        values = np.array([board.mean.get((m, column), np.nan) for m in names])
        for m, r in zip(names, ranks(values)):
            if not np.isnan(r):
                placed[m].append(float(r))
    board.models = sorted(names, key=lambda m: (float(np.mean(placed[m])) if placed[m] else np.inf, m))


def has_published(board: Leaderboard) -> bool:
    return any(board.is_published(m) for m in board.models)


def imagenet_axis(board: Leaderboard, sources: Mapping[str, float], user: Mapping[str, float]) -> tuple[dict[str, float], str]:
    """The ImageNet accuracy (%) of each row and the axis's name. Beside published points it is the
    paper's own ``IN1k_LP_BN`` (a zoo model measured here takes the paper's value for it); elsewhere
    the sources' published linear probes. ``user`` (``--imagenet``) always wins for the models it names."""
    if has_published(board):
        paper = {p.name: p.imagenet for p in load_published()}
        zoo = published_by_zoo()
        axis = dict(paper)
        for model in board.models:
            if not board.is_published(model) and zoo_of(model) in zoo:
                axis[model] = zoo[zoo_of(model)].imagenet
        name = IMAGENET_AXIS
    else:
        axis = {m: v for m, v in sources.items()}
        for model in board.models:
            axis.setdefault(model, sources.get(zoo_of(model), np.nan))
        name = SOURCES_AXIS
    axis.update(user)
    return {m: v for m, v in axis.items() if v == v}, name


def measured_vs_published(board: Leaderboard) -> list[str]:
    """Markdown rows: each zoo model measured here that the paper published, with the difference."""
    zoo = published_by_zoo()
    rows = []
    for model in board.models:
        if board.is_published(model) or zoo_of(model) not in zoo:
            continue
        paper = zoo[zoo_of(model)]
        for column in board.columns:
            task, dataset, _ = board.column_info.get(column, ("", "", True))
            name = published_column(task, dataset)
            if (model, column) not in board.mean or (paper.name, column) not in board.mean or name is None:
                continue
            mean, published = 100 * board.mean[model, column], paper.values[name]
            bounds = board.interval.get((model, column))
            shown = f"{mean:.1f}" + (f" [{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]" if bounds else "")
            if name in OWN_SCALE:
                diff, verdict = "– (figure's own scale)", "–"
            else:
                diff = f"{mean - published:+.1f}"
                verdict = ("–" if bounds is None else "yes" if 100 * bounds[0] - READ_PRECISION <= published
                           <= 100 * bounds[1] + READ_PRECISION else "no")
            rows.append(f"| {model} | {paper.name} | {column} | {shown} | {published:.1f} | {diff} | {verdict} |")
    if not rows:
        return []
    return ["### Measured here vs published", "",
            "Zoo models measured here that the paper published: the measured value with its 95 % interval, the "
            f"published one ({PROVENANCE}), the difference (measured − published, points) and whether the published "
            "value lies in the interval widened by the reading precision.", "",
            "| model | paper's name | column | measured [95 %] | published | difference | published within? |",
            "|---|---|---|---|---|---|---|", *rows, ""]


def ranking_rows(board: Leaderboard, imagenet: Mapping[str, float]) -> list[str]:
    """The ranking table: each row's mean rank over the columns with its 95 % interval (published
    points fixed, measured cells bootstrapped), and beside published points the ranking figure's
    scores recomputed with the measured models inserted."""
    columns = {c: {m: (board.runs[m, c] if (m, c) in board.runs else board.mean[m, c])
                   for m in board.models if (m, c) in board.mean} for c in board.columns}
    ranked = rank_intervals(columns, board.models)
    published = has_published(board)
    head = "| model | " + ("source | " if published else "") + "mean rank over tasks | 95 % interval |"
    rule = "|---|" + ("---|" if published else "") + "---|---|"
    if published:
        mid, high = level_scores(board, imagenet)
        head += " mid-level score | high-level score |"
        rule += "---|---|"
    rows = []
    for model, (rank, lo, hi) in sorted(ranked.items(), key=lambda kv: (kv[1][0], kv[0])):
        row = f"| {model} | " + (f"{board.source_of(model)} | " if published else "") + f"{rank:.2f} | {lo:.2f}–{hi:.2f} |"
        if published:
            row += f" {mid.get(model, float('nan')):.1f} | " + (f"{high[model]:.0f}" if model in high else "–") + " |"
        rows.append(row)
    return [head, rule, *rows]


def level_scores(board: Leaderboard, imagenet: Mapping[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """The ranking figure's scores over the board's rows: mid-level = the mean over the columns of
    how many rows rank below it (0 = worst everywhere), high-level = how many rows have a lower
    ImageNet accuracy (0 = worst; on the 22 alone this is the paper's high-level score exactly)."""
    counts: dict[str, list[float]] = {}
    for column in board.columns:
        names = [m for m in board.models if (m, column) in board.mean]
        values = np.array([board.mean[m, column] for m in names])
        for m, r in zip(names, ranks(values)):
            counts.setdefault(m, []).append(len(names) - r)
    mid = {m: float(np.mean(v)) for m, v in counts.items()}
    with_net = [m for m in board.models if m in imagenet]
    net_ranks = ranks(np.array([imagenet[m] for m in with_net]))
    high = {m: float(len(with_net) - r) for m, r in zip(with_net, net_ranks)}
    return mid, high
