"""Per-item scores: the values a headline averages (per test image, per evaluation batch, per pair)
or the answers it is computed from (per 2AFC triplet), kept in the record so that intervals are
computed at report time (:mod:`probe.report.intervals`) without re-running a probe."""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

#: Decimals kept per item in a record: 1e-6 of a score in [0, 1] is far below any interval.
DECIMALS = 6


class Scored(dict):
    """A metrics dict (name -> float, compares and serialises as one) with the per-item values
    behind it: ``per_item`` maps a metric name to an ``(N,)`` array; ``unit`` says what an item is
    (``image``, ``batch``, ``pair``, ``triplet``); ``statistic`` how the headline comes from them
    (``mean``; ``f1``: F1 of ``choice`` against ``answer``)."""

    def __init__(self, metrics: Mapping[str, Any], *, unit: str, per_item: Mapping[str, np.ndarray],
                 statistic: str = "mean") -> None:
        super().__init__(metrics)
        self.unit, self.statistic = unit, statistic
        #: what looks wrong with the run (``collapsed``: one value or class at every test pixel)
        self.flags: list[str] = []
        self.per_item = {k: np.asarray(v, dtype=np.float64) for k, v in per_item.items()}


def item_scores(metrics: Mapping[str, Any], headline: str) -> dict[str, Any] | None:
    """The record field ``item_scores`` for ``headline`` (None: the metrics carry no per-item values)."""
    per_item = getattr(metrics, "per_item", None)
    if not per_item:
        return None
    if metrics.statistic == "f1":
        return {"unit": metrics.unit, "statistic": "f1", "metric": headline,
                "choice": per_item["choice"].astype(int).tolist(), "answer": per_item["answer"].astype(int).tolist()}
    if headline not in per_item:
        return None
    values = np.round(per_item[headline], DECIMALS)
    return {"unit": metrics.unit, "statistic": "mean", "metric": headline, "values": values.tolist()}
