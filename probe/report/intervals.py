"""95 % intervals from the records' per-item scores, computed at report time.

A cell's runs are its seeds, each with the same test items' scores (``item_scores``: per image,
per evaluation batch, per pair, or a triplet's answer). Its interval is a seeded bootstrap:
each of :data:`RESAMPLES` resamples draws the test items with replacement (the same draw for
every seed, and for every model scored on the same items, so comparisons are paired) and, where
several seeds ran, the seeds with replacement too; the statistic is the mean over the drawn seeds
of each seed's headline over the drawn items. Its 2.5 and 97.5 percentiles are the interval — the
test sample's noise and the seeds' spread combined. A cell without per-item scores (older
records) gets the seeds' normal interval ``mean ± t·sd/√k`` (sample sd) when several seeds ran,
and none otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

#: Bootstrap resamples per interval (the issue asks for at least 1000).
RESAMPLES = 2000
#: The bootstrap's seed: the same records always give the same intervals.
SEED = 0
LEVEL = 0.95
#: Student t quantile (97.5 %) by degrees of freedom, for a cell with seeds but no per-item scores.
T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262}
HOW = (f"95 % intervals: seeded bootstrap over the test items ({RESAMPLES} resamples; items are images, or "
       "evaluation batches where the protocol pools per batch, pairs or triplets for the zero-shot tasks), "
       "drawing the seeds with replacement too where several ran, so the interval holds both the test sample's "
       "noise and the seeds' spread; the ± std beside a mean is the population std over seeds (numpy's default, "
       "ddof=0). Models on the same test items are compared with a paired bootstrap of the difference: `≠` "
       "between neighbours means its interval excludes 0, `≈` that it does not.")


@dataclass
class Runs:
    """One cell's runs: per seed, its item scores (``values`` for a mean; ``choice``/``answer``
    for F1) or only its headline (``headlines``; no items)."""

    statistic: str = "mean"
    items: list[dict[str, np.ndarray]] = field(default_factory=list)
    headlines: list[float] = field(default_factory=list)

    @property
    def n_items(self) -> int | None:
        """The number of test items every seed scored (None: no items, or seeds disagree)."""
        sizes = {len(next(iter(i.values()))) for i in self.items}
        return sizes.pop() if len(sizes) == 1 and len(self.items) == len(self.headlines) else None


def runs_of(records: Sequence[Mapping[str, Any]]) -> Runs:
    """The runs of one cell from its records (one per seed)."""
    out = Runs()
    for r in records:
        out.headlines.append(float(r["headline"]))
        scores = r.get("item_scores")
        if not scores:
            continue
        out.statistic = scores.get("statistic", "mean")
        if out.statistic == "f1":
            out.items.append({"choice": np.asarray(scores["choice"], float), "answer": np.asarray(scores["answer"], float)})
        else:
            out.items.append({"values": np.asarray(scores["values"], float)})
    return out


def resample_indices(n: int, *, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray:
    """``(resamples, n)`` item indices drawn with replacement; the same for every cell of ``n`` items."""
    return np.random.default_rng([seed, n]).integers(0, n, size=(resamples, n))


def _statistic(items: Mapping[str, np.ndarray], index: np.ndarray) -> np.ndarray:
    """The headline of each resample (``index``: ``(B, n)``), vectorised."""
    if "values" in items:
        return items["values"][index].mean(axis=1)
    choice, answer = items["choice"][index], items["answer"][index]
    tp = (choice * answer).sum(1)
    fp = (choice * (1 - answer)).sum(1)
    fn = ((1 - choice) * answer).sum(1)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(2 * tp + fp + fn > 0, 2 * tp / (2 * tp + fp + fn), 0.0)
    return f1


def bootstrap(runs: Runs, *, resamples: int = RESAMPLES, seed: int = SEED) -> np.ndarray | None:
    """The cell's headline in each resample, ``(resamples,)`` (None: no per-item scores)."""
    n = runs.n_items
    if n is None or n == 0:
        return None
    index = resample_indices(n, resamples=resamples, seed=seed)
    per_seed = np.stack([_statistic(items, index) for items in runs.items])          # (S, B)
    if len(per_seed) == 1:
        return per_seed[0]
    # the seeds' own draw, independent of the items' (the same for every cell with S seeds)
    drawn = np.random.default_rng([seed, n, len(per_seed)]).integers(0, len(per_seed), size=(len(per_seed), resamples))
    return per_seed[drawn, np.arange(resamples)].mean(axis=0)


def interval(runs: Runs, *, resamples: int = RESAMPLES, seed: int = SEED) -> tuple[float, float] | None:
    """The cell's 95 % interval (headline units), or None where neither items nor several seeds exist."""
    draws = bootstrap(runs, resamples=resamples, seed=seed)
    if draws is not None:
        lo, hi = np.percentile(draws, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
        return float(lo), float(hi)
    k = len(runs.headlines)
    if k < 2:
        return None
    mean, sd = float(np.mean(runs.headlines)), float(np.std(runs.headlines, ddof=1))
    half = T975.get(k - 1, 1.96) * sd / np.sqrt(k)
    return mean - half, mean + half


def paired_difference(a: Runs, b: Runs, *, resamples: int = RESAMPLES,
                      seed: int = SEED) -> tuple[float, float] | None:
    """The 95 % interval of ``a − b`` by a paired bootstrap (the same item draws for both), or
    None when the two were not scored on the same number of items (not the same test set)."""
    if a.n_items is None or a.n_items != b.n_items:
        return None
    draws = bootstrap(a, resamples=resamples, seed=seed) - bootstrap(b, resamples=resamples, seed=seed)
    lo, hi = np.percentile(draws, [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
    return float(lo), float(hi)


def separable(a: Runs, b: Runs, **kwargs: Any) -> bool | None:
    """Whether the paired difference's interval excludes 0 (None: not comparable item by item)."""
    diff = paired_difference(a, b, **kwargs)
    return None if diff is None else bool(diff[0] > 0 or diff[1] < 0)


def rank_intervals(columns: Mapping[str, Mapping[str, Runs | float]], models: Sequence[str], *,
                   resamples: int = RESAMPLES, seed: int = SEED) -> dict[str, tuple[float, float, float]]:
    """Each model's mean rank over ``columns`` (1 = best) and its 95 % interval.

    ``columns``: per column, per model, its :class:`Runs` or a fixed value (a published point:
    no items, so it does not move). In each resample every measured cell takes its bootstrap
    draw (paired within a column through the shared item draws); models rank per column, the
    ranks are averaged over the columns the model has. Returns ``{model: (rank, low, high)}``.
    """
    draws: dict[str, list[np.ndarray]] = {m: [] for m in models}
    totals = {m: np.zeros(resamples) for m in models}
    counts = {m: 0 for m in models}
    for cells in columns.values():
        names = [m for m in models if m in cells]
        if not names:
            continue
        matrix = np.stack([_draws(cells[m], resamples, seed) for m in names])       # (M, B)
        order = (-matrix).argsort(axis=0, kind="stable")
        ranked = np.empty_like(order, dtype=float)
        ranked[order, np.arange(resamples)] = np.arange(1, len(names) + 1)[:, None]
        for i, m in enumerate(names):
            totals[m] += ranked[i]
            counts[m] += 1
    for m in models:
        if counts[m]:
            draws[m].append(totals[m] / counts[m])
    point = _point_ranks(columns, models)
    out = {}
    for m in models:
        if not counts[m]:
            continue
        lo, hi = np.percentile(draws[m][0], [100 * (1 - LEVEL) / 2, 100 * (1 + LEVEL) / 2])
        out[m] = (point[m], float(lo), float(hi))
    return out


def _draws(cell: Runs | float, resamples: int, seed: int) -> np.ndarray:
    if isinstance(cell, Runs):
        boot = bootstrap(cell, resamples=resamples, seed=seed)
        return boot if boot is not None else np.full(resamples, float(np.mean(cell.headlines)))
    return np.full(resamples, float(cell))


def _point_ranks(columns: Mapping[str, Mapping[str, Runs | float]], models: Sequence[str]) -> dict[str, float]:
    from probe.report.stats import ranks

    sums, counts = {m: 0.0 for m in models}, {m: 0 for m in models}
    for cells in columns.values():
        names = [m for m in models if m in cells]
        values = np.array([float(np.mean(c.headlines)) if isinstance(c, Runs) else float(c)
                           for c in (cells[m] for m in names)])
        for m, r in zip(names, ranks(values)):
            sums[m] += r
            counts[m] += 1
    return {m: sums[m] / counts[m] for m in models if counts[m]}
