"""Reading the folder dataset's target files into the store's units, every value checked.

What counts as "no data" and what is an error (docs/own-data.md says the same):

- depth PNG (16-bit greyscale): value × ``depth_scale`` metres; 0 = no measurement.
- depth ``.npy`` (float, metres): 0 or NaN = no measurement; a negative or infinite value is an error.
- normals ``.npy`` (float ``(H, W, 3)``): (0, 0, 0) or any NaN component = no data; an infinite
  component, or a length off 1 by more than 0.01, is an error (so is a zero-length-but-not-zero vector).
- normals PNG (8-bit RGB, ``c = (n + 1) / 2 · 255``): black (0, 0, 0) = no data; a decoded
  length off 1 by more than 0.03 (8-bit rounding stays below 0.014) is an error.
- masks: mode ``1`` (1 foreground, 0 background) or greyscale / palette (0 background,
  255 ignore — or foreground with ``mask_255=foreground`` — any other value foreground).

Every target is read in the orientation of its image as displayed (EXIF orientation applied,
a no-op for files without the tag).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cache import MidprobeError
from extract.datasets.raw import image_mode, read_image
from extract.datasets.values import check_depth, first_bad

DEPTH_PNG_MODES = ("I;16", "I;16L", "I;16B", "I")
MASK_MODES = ("1", "L", "P")
#: allowed | |n| - 1 | of a normal before it is renormalised, by file type
NORMAL_TOLERANCE = {".npy": 0.01, ".png": 0.03}
IGNORE = 255


def _npy(path: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except (OSError, ValueError) as exc:
        raise MidprobeError(f"cannot read {path} ({exc}); expected a numpy .npy array") from None


def read_depth(path: Path, *, depth_scale: float) -> np.ndarray:
    """``(H, W) float32`` z-depth in metres, 0 where there is no measurement."""
    if path.suffix.lower() == ".png":
        mode = image_mode(path)
        if mode not in DEPTH_PNG_MODES:
            raise MidprobeError(f"{path} is a {mode} PNG; expected a 16-bit greyscale PNG "
                                f"({depth_scale:g} m per unit, 0 = no measurement)")
        metres = read_image(path, mode=None, exif=True).astype(np.float64) * depth_scale
    else:
        metres = _npy(path)
        if metres.ndim != 2 or metres.dtype.kind != "f":
            raise MidprobeError(f"{path} holds {metres.dtype} {metres.shape}; expected a float (H, W) array of metres")
    check_depth(metres, where=str(path), nan_is_missing=True,
                expected="metres >= 0, with 0 or NaN for no measurement")
    return np.nan_to_num(metres, nan=0.0).astype(np.float32)


def read_normals(path: Path, *, frame: str = "opencv") -> np.ndarray:
    """``(H, W, 3) float32`` unit normals in the OpenCV camera frame (x right, y down, z forward); 0 = no data.

    ``frame="opengl"`` reads files in OpenGL camera axes (x right, y up, z backward).
    """
    png = path.suffix.lower() == ".png"
    if png:
        mode = image_mode(path)
        if mode != "RGB":
            raise MidprobeError(f"{path} is a {mode} PNG; expected an 8-bit RGB PNG encoding (n + 1) / 2")
        code = read_image(path, mode=None, exif=True)
        none = (code == 0).all(axis=-1)
        normals = code.astype(np.float64) / 127.5 - 1.0
    else:
        normals = _npy(path)
        if normals.ndim != 3 or normals.shape[-1] != 3 or normals.dtype.kind != "f":
            raise MidprobeError(f"{path} holds {normals.dtype} {normals.shape}; expected a float (H, W, 3) array "
                                "of unit vectors")
        if np.isinf(normals).any():
            row, col = first_bad(np.isinf(normals).any(axis=-1))
            raise MidprobeError(f"{path}: infinite normal at row {row}, column {col}; expected unit vectors, "
                                "with (0, 0, 0) or NaN for no data")
        normals = normals.astype(np.float64)
        none = np.isnan(normals).any(axis=-1) | (normals == 0).all(axis=-1)
        normals = np.where(none[..., None], 0.0, normals)
    length = np.linalg.norm(normals, axis=-1)
    tolerance = NORMAL_TOLERANCE[".png" if png else ".npy"]
    bad = ~none & (np.abs(length - 1.0) > tolerance)
    if bad.any():
        row, col = first_bad(bad)
        raise MidprobeError(f"{path}: {int(bad.sum())} normals are not unit vectors (length {length[row, col]:.3g} "
                            f"at row {row}, column {col}); expected length 1 ± {tolerance}, with "
                            f"{'black (0, 0, 0)' if png else '(0, 0, 0) or NaN'} for no data")
    unit = np.where(none[..., None], 0.0, normals / np.where(none, 1.0, length)[..., None])
    if frame == "opengl":
        unit = unit * np.array([1.0, -1.0, -1.0])
    return unit.astype(np.float32)


def read_mask(path: Path, *, mask_255: str = "ignore") -> np.ndarray:
    """``(H, W) uint8``: 1 foreground, 0 background, 255 ignored."""
    mode = image_mode(path)
    if mode not in MASK_MODES:
        raise MidprobeError(f"{path} is a {mode} image; expected a binary (1), greyscale (L) or palette (P) PNG: "
                            "0 background, 255 ignore, any other value foreground")
    values = read_image(path, mode=None, exif=True)
    if mode == "1":
        return values.astype(np.uint8)
    out = (values != 0).astype(np.uint8)
    if mask_255 == "ignore":
        out[values == IGNORE] = IGNORE
    return out
