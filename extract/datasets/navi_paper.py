"""The paper's NAVI image chain, step by step, for ``make data DATASET=navi OPTIONS="crop=paper ..."``.

Each function reproduces one step of midvision-probe @ 984b325 (cited by file:line):
``data_processing/resize_navi.py`` (an offline downsample the paper's README asks for), then
``evals/datasets/navi.py`` ``NAVI.get_single`` with ``evals/datasets/utils.py``'s transforms.
The order is: downsample to a short side of 1024 -> short side 512 (nearest) -> centre crop
512 x 512 -> the object box (``bbox_crop``) -> nearest resize of the box to 512 x 512.
"""

from __future__ import annotations

import io

import numpy as np

from cache import MidprobeError
from cache.augment import nearest_resize

DOWNSAMPLE_SHORT_SIDE = 1024


def downsample(image: np.ndarray, code: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``resize_navi.py:32-59``: short side to 1024 (``int`` of the scaled long side).

    The image ``(H, W, 3) uint8`` with PIL resample code 2 — BILINEAR in Pillow's
    numbering, though the script's docstring calls 2 "bicubic" — and saved as a JPEG at
    Pillow's default quality (75), which is re-encoded here in memory. The depth code
    ``(H, W) uint16`` with PIL NEAREST (code 0), saved as PNG (lossless).
    """
    from PIL import Image

    h, w = code.shape
    factor = float(DOWNSAMPLE_SHORT_SIDE) / min(w, h)
    size = (int(w * factor), int(h * factor))
    small = Image.fromarray(image).resize(size, Image.Resampling.BILINEAR)
    buffer = io.BytesIO()
    small.save(buffer, format="JPEG")
    with Image.open(io.BytesIO(buffer.getvalue())) as jpeg:
        rgb = np.asarray(jpeg.convert("RGB"))
    depth = np.asarray(Image.fromarray(code).resize(size, Image.Resampling.NEAREST)).astype(np.uint16)
    return rgb, depth


def resize_short_nearest(array: np.ndarray, short: int) -> np.ndarray:
    """torchvision ``Resize(short, NEAREST)`` on a tensor (``utils.py:106-118``).

    The long side is ``int(short * long / short_side)``; sampling is PyTorch's legacy
    ``nearest``: source index ``floor(i * in / out)`` in float32.
    """
    import torch

    h, w = array.shape[:2]
    if w <= h:
        new_w, new_h = short, int(short * h / w)
    else:
        new_h, new_w = short, int(short * w / h)
    if (new_h, new_w) == (h, w):
        return array
    planes = torch.from_numpy(np.array(array.reshape(h, w, -1))).permute(2, 0, 1)[None]
    out = torch.nn.functional.interpolate(planes, size=(new_h, new_w), mode="nearest")
    return out[0].permute(1, 2, 0).numpy().reshape(new_h, new_w, *array.shape[2:])


def centre_crop(array: np.ndarray, size: int) -> np.ndarray:
    """torchvision ``CenterCrop(size)`` (``utils.py:121-123``): offsets ``int(round((H - size) / 2))``
    with Python's round-half-to-even, as torchvision computes them."""
    h, w = array.shape[:2]
    if h < size or w < size:
        raise MidprobeError(f"cannot centre-crop {size} x {size} from a {h} x {w} image")
    top, left = int(round((h - size) / 2.0)), int(round((w - size) / 2.0))
    return array[top:top + size, left:left + size]


def box_paper(valid: np.ndarray) -> tuple[int, int, int]:
    """``(top, left, side)`` of the paper's ``bbox_crop`` (``utils.py:300-329``).

    The box spans ``max - min`` pixels (one short of the object's extent), is padded to a
    square around its centre and, when that leaves the image, slid to ``tl - pad`` clipped
    at 0. An image without valid pixels (where the paper's code raises) keeps the whole frame.
    """
    h, w = valid.shape
    rows, cols = np.nonzero(valid)
    if len(rows) == 0:
        return 0, 0, min(h, w)
    tl = np.array([rows.min(), cols.min()])
    box = np.array([rows.max(), cols.max()]) - tl
    side = int(box.max())
    if side == 0:
        return int(tl[0]), int(tl[1]), 1
    pad = side - box
    corner = tl - pad // 2
    if not ((corner >= 0).all() and (corner + side <= np.array([h, w])).all()):
        corner = np.clip(tl - pad, 0, None)
    return int(corner[0]), int(corner[1]), side


def nearest_cv2(array: np.ndarray, size: int) -> np.ndarray:
    """albumentations ``Resize(size, size, interpolation=0)`` (``utils.py:150-155``): OpenCV's
    ``INTER_NEAREST``, source index ``min(floor(i / (size / n)), n - 1)``."""
    return nearest_resize(array, (size, size))


def paper_normals(depth: np.ndarray, focal: float) -> np.ndarray:
    """The paper's normals ``(H, W, 3) float32`` of a depth map (``utils.py:236-275``).

    Points are back-projected with ``K = diag(focal, focal, 1)``: the principal point at the
    crop's corner, pixel centres at +0.5 (``utils.py:221-233``, ``:241-243``); missing depth is
    set to 1e6 (``:251``); the normal is the mean of ``l x t``, ``t x r``, ``r x b`` and
    ``b x l`` of the differences to the four neighbours (``:260-272``), so it points away from
    the camera (+z for a fronto-parallel surface). Zero on the border and where depth is 0.
    """
    h, w = depth.shape
    valid = depth > 0
    z = np.where(valid, depth, 1e6).astype(np.float64)
    v, u = np.mgrid[0:h, 0:w].astype(np.float64) + 0.5
    pts = np.stack([u * z / focal, v * z / focal, z], axis=-1)
    centre = pts[1:-1, 1:-1]
    left, top = pts[1:-1, :-2] - centre, pts[:-2, 1:-1] - centre
    right, bottom = pts[1:-1, 2:] - centre, pts[2:, 1:-1] - centre
    out = np.zeros((h, w, 3))
    out[1:-1, 1:-1] = (np.cross(left, top) + np.cross(top, right) + np.cross(right, bottom)
                       + np.cross(bottom, left)) / 4.0
    out /= np.maximum(np.linalg.norm(out, axis=-1, keepdims=True), 1e-12)
    return (out * valid[..., None]).astype(np.float32)
