"""Checking target values as they are read: what a source documents as "no data" passes, any
other impossible value is a one-line error naming where it is and what was expected.

Shared by the folder loader (:mod:`extract.datasets.folder_files`) and the published datasets'
loaders; each caller says which codes its source uses for "no data" (docs/datasets.md
lists them per dataset). Rows and columns are those of the frame as read (upright).
"""

from __future__ import annotations

import numpy as np

from cache import MidprobeError


def first_bad(bad: np.ndarray) -> tuple[int, int]:
    """(row, column) of the first ``True`` of a ``(H, W[, ...])`` mask, in reading order."""
    row, col = np.argwhere(bad)[0][:2]
    return int(row), int(col)


def check_depth(metres: np.ndarray, *, where: str, nan_is_missing: bool, expected: str) -> None:
    """A one-line error if ``metres (H, W)`` holds a negative or infinite value, or a NaN where
    NaN is not the source's "no measurement" code (``nan_is_missing=False``)."""
    bad = np.isinf(metres) | (metres < 0)
    if not nan_is_missing:
        bad |= np.isnan(metres)
    if bad.any():
        row, col = first_bad(bad)
        kinds = "negative or infinite" if nan_is_missing else "NaN, negative or infinite"
        raise MidprobeError(f"{where}: {int(bad.sum())} depth values are {kinds} (first {metres[row, col]} at row "
                            f"{row}, column {col}); expected {expected}")


def check_normals(normals: np.ndarray, valid: np.ndarray, *, where: str, expected: str,
                  kept: np.ndarray | None = None) -> None:
    """A one-line error if a normal of ``normals (H, W, 3)`` that ``valid (H, W) bool`` (the source's
    own validity mask) marks is non-finite or of zero length, or one that ``kept`` (the pixels
    stored as read; default ``valid``) marks is non-finite."""
    finite = np.isfinite(normals).all(axis=-1)
    kept = valid if kept is None else kept
    bad = (valid & (~finite | (normals == 0).all(axis=-1))) | (kept & ~finite)
    if bad.any():
        row, col = first_bad(bad)
        raise MidprobeError(f"{where}: {int(bad.sum())} normals are non-finite (or of zero length inside the valid "
                            f"mask) (first {tuple(float(v) for v in normals[row, col])} at row {row}, column {col}); "
                            f"expected {expected}")
