"""Statistics the report shows: least-squares fits, R², Pearson correlations, ranks."""

from __future__ import annotations

import numpy as np


def least_squares(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    """Slope, intercept and R² of the least-squares line ``y ~ a x + b``."""
    x, y = np.asarray(x, float), np.asarray(y, float)
    a, b = np.polyfit(x, y, 1)
    residual = y - (a * x + b)
    total = ((y - y.mean()) ** 2).sum()
    r2 = 1.0 - (residual ** 2).sum() / total if total > 0 else float("nan")
    return float(a), float(b), float(r2)


def pearson_matrix(columns: dict[str, np.ndarray]) -> tuple[list[str], np.ndarray]:
    """Pairwise Pearson r between columns, each over the rows where both are present (NaN = absent)."""
    names = list(columns)
    out = np.full((len(names), len(names)), np.nan)
    for i, a in enumerate(names):
        for j, b in enumerate(names):
            x, y = np.asarray(columns[a], float), np.asarray(columns[b], float)
            both = ~np.isnan(x) & ~np.isnan(y)
            if both.sum() >= 3 and x[both].std() > 0 and y[both].std() > 0:
                out[i, j] = float(np.corrcoef(x[both], y[both])[0, 1])
    return names, out


def ranks(values: np.ndarray, higher_is_better: bool = True) -> np.ndarray:
    """1 = best; ties share the mean rank; NaN stays NaN."""
    values = np.asarray(values, float)
    out = np.full(len(values), np.nan)
    present = ~np.isnan(values)
    v = values[present] * (-1 if higher_is_better else 1)
    order = v.argsort(kind="stable")
    r = np.empty(len(v))
    r[order] = np.arange(1, len(v) + 1)
    for value in np.unique(v):
        tie = v == value
        r[tie] = r[tie].mean()
    out[present] = r
    return out
