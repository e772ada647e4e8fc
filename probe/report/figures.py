"""The report's figures (matplotlib, non-interactive). Each returns a path, or why it could not be drawn."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from cache.progress import Progress  # noqa: E402
from probe.report.stats import least_squares, pearson_matrix, ranks  # noqa: E402
from probe.report.tables import Leaderboard  # noqa: E402

MIN_POINTS = 3


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_")


def mid_vs_high(board: Leaderboard, imagenet: dict[str, float], folder: Path,
                axis: str = "ImageNet linear top-1") -> dict[str, tuple[Path | None, str]]:
    """Per column: task metric against ImageNet accuracy (``axis`` names which) with the
    least-squares line over every point; R² in the title. Published points are grey, measured ones
    highlighted with their 95 % intervals; the note gives the published points' R² alone too."""
    out = {}
    x_all = np.array([imagenet.get(m, np.nan) for m in board.models])
    published = np.array([board.is_published(m) for m in board.models], dtype=bool)
    for column in board.columns:
        y_all = 100 * board.column(column)
        both = ~np.isnan(x_all) & ~np.isnan(y_all)
        if both.sum() < MIN_POINTS:
            out[column] = (None, f"needs at least {MIN_POINTS} models with both an ImageNet accuracy and this "
                                 f"task's result; have {int(both.sum())}")
            continue
        x, y = x_all[both], y_all[both]
        a, b, r2 = least_squares(x, y)
        fig, ax = plt.subplots(figsize=(4.2, 3.4), dpi=110)
        grey = published[both]
        names = np.array(board.models)[both]
        if grey.any():
            ax.scatter(x[grey], y[grey], s=14, color="0.65", label="published (read off figures, ±0.3)")
        measured = ~grey
        errors = np.array([[0.0, 0.0] if board.interval.get((m, column)) is None else
                           [100 * board.mean[m, column] - 100 * board.interval[m, column][0],
                            100 * board.interval[m, column][1] - 100 * board.mean[m, column]]
                           for m in names[measured]]).reshape(-1, 2).T
        ax.errorbar(x[measured], y[measured], yerr=errors, fmt="o", ms=4, color="C3" if grey.any() else "C0",
                    capsize=2, lw=1, label="measured (95 % interval)" if grey.any() else None)
        for name, xi, yi, is_grey in zip(names, x, y, grey):
            ax.annotate(name, (xi, yi), fontsize=5 if is_grey else 6, color="0.5" if is_grey else "black",
                        xytext=(2, 2), textcoords="offset points")
        grid = np.linspace(x.min(), x.max(), 10)
        ax.plot(grid, a * grid + b, lw=1, color="0.3")
        ax.set_xlabel(f"{axis.split(' (')[0].replace('`', '')} (%)", fontsize=7)
        ax.set_ylabel(f"{board.metric[column]} (%)")
        ax.set_title(f"{column}: R² = {r2:.2f}\n{board.label}", fontsize=8)
        if grey.any():
            ax.legend(fontsize=5, loc="best")
        fig.tight_layout()
        path = folder / f"mid_vs_high_{board.slug}_{_slug(column)}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        note = f"R² = {r2:.3f} over {int(both.sum())} models"
        if grey.sum() >= MIN_POINTS and measured.any():
            note += f" (the {int(grey.sum())} published alone: R² = {least_squares(x[grey], y[grey])[2]:.3f})"
        out[column] = (path, note + f"; x axis: {axis}")
    return out


def correlations(board: Leaderboard, imagenet: dict[str, float], folder: Path) -> tuple[Path | None, str]:
    """Heatmap of Pearson r between tasks (and ImageNet), over the models that have both."""
    columns = {c: board.column(c) for c in board.columns}
    net = np.array([imagenet.get(m, np.nan) for m in board.models])
    if (~np.isnan(net)).sum() >= MIN_POINTS:
        columns["ImageNet"] = net
    if len(board.models) < MIN_POINTS or len(columns) < 2:
        return None, f"needs at least {MIN_POINTS} models and 2 tasks; have {len(board.models)} and {len(columns)}"
    names, r = pearson_matrix(columns)
    fig, ax = plt.subplots(figsize=(1.2 + 0.7 * len(names), 1.0 + 0.6 * len(names)), dpi=110)
    image = ax.imshow(r, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    for i in range(len(names)):
        for j in range(len(names)):
            ax.text(j, i, "–" if np.isnan(r[i, j]) else f"{r[i, j]:.2f}", ha="center", va="center", fontsize=6)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_title(f"Pearson r between tasks\n{board.label}", fontsize=8)
    fig.tight_layout()
    path = folder / f"task_correlations_{board.slug}.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path, f"over {len(board.models)} models"


def ranking(board: Leaderboard, imagenet: dict[str, float], folder: Path) -> tuple[Path | None, str, dict[str, float]]:
    """Each model's mean rank over the mid-level tasks against its ImageNet rank."""
    per_task = np.stack([ranks(board.column(c)) for c in board.columns]) if board.columns else np.zeros((0, 0))
    mid = np.nanmean(per_task, axis=0) if len(per_task) else np.array([])
    mid_rank = dict(zip(board.models, mid.tolist()))
    net = np.array([imagenet.get(m, np.nan) for m in board.models])
    present = ~np.isnan(net)
    if present.sum() < MIN_POINTS:
        return None, (f"the ImageNet ranking needs at least {MIN_POINTS} models with a published ImageNet "
                      f"accuracy; have {int(present.sum())}"), mid_rank
    high = ranks(net[present])
    mid_present = ranks(mid[present], higher_is_better=False)
    fig, ax = plt.subplots(figsize=(4.2, 3.6), dpi=110)
    ax.scatter(high, mid_present, s=18)
    for name, hx, my in zip(np.array(board.models)[present], high, mid_present):
        ax.annotate(name, (hx, my), fontsize=6, xytext=(2, 2), textcoords="offset points")
    lim = [0.5, present.sum() + 0.5]
    ax.plot(lim, lim, lw=0.8, ls="--")
    ax.set_xlabel("ImageNet rank (1 = best)")
    ax.set_ylabel("mid-level rank (mean over tasks)")
    ax.set_title(f"Mid-level vs high-level rank\n{board.label}", fontsize=8)
    fig.tight_layout()
    path = folder / f"ranking_{board.slug}.png"
    fig.savefig(path, bbox_inches="tight")
    plt.close(fig)
    return path, f"over {int(present.sum())} models", mid_rank


@dataclass
class BoardFigures:
    """A leaderboard's figures, each a path or why it was not drawn, and each model's mean rank."""

    board: Leaderboard
    scatter: dict[str, tuple[Path | None, str]] = field(default_factory=dict)
    correlations: tuple[Path | None, str] = (None, "")
    ranking: tuple[Path | None, str] = (None, "")
    mid_rank: dict[str, float] = field(default_factory=dict)
    imagenet: dict[str, float] = field(default_factory=dict)
    axis: str = ""


def figure_count(board: Leaderboard) -> int:
    """How many figures :func:`draw_board` makes for ``board``: a scatter per column, correlations, ranking."""
    return len(board.columns) + 2


def draw_board(board: Leaderboard, imagenet: dict[str, float], folder: Path,
               progress: Progress | None = None, axis: str = "ImageNet linear top-1") -> BoardFigures:
    """Every figure of ``board`` into ``folder`` (``progress`` counts them); ``axis`` names the
    ImageNet accuracies' source."""
    out = BoardFigures(board, scatter=mid_vs_high(board, imagenet, folder, axis), imagenet=imagenet, axis=axis)
    if progress is not None:
        progress.update(len(board.columns))
    out.correlations = correlations(board, imagenet, folder)
    path, note, out.mid_rank = ranking(board, imagenet, folder)
    out.ranking = (path, note)
    if progress is not None:
        progress.update(2)
    return out
