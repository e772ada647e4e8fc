"""A PNG a person can look at.

Rows: rgb | depth | normals | mask for a few test images; a correspondence pair with
some ground-truth matches drawn; a 2AFC triplet (reference | candidate 0 | candidate 1)
with the closer candidate framed in green.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cache import DatasetStore


def _depth_rgb(depth: np.ndarray) -> np.ndarray:
    valid = depth > 0
    lo, hi = (depth[valid].min(), depth[valid].max()) if valid.any() else (0.0, 1.0)
    scaled = np.clip((depth - lo) / max(hi - lo, 1e-6), 0, 1)
    return np.stack([np.round(255 * (1 - scaled)).astype(np.uint8)] * 3, axis=-1)


def write_contact_sheet(store: DatasetStore, path: Path, rows: int = 3) -> Path:
    from PIL import Image, ImageDraw

    test = store.split("test")
    tiles = []
    for i in range(min(rows, test.num_images)):
        rgb = test.read("images", slice(i, i + 1))[0]
        depth = test.read("depth", slice(i, i + 1))[0]
        normals = test.read("normals", slice(i, i + 1))[0]
        mask = test.read("foreground", slice(i, i + 1))[0]
        tiles.append(np.concatenate([rgb, _depth_rgb(depth), np.round((normals * 0.5 + 0.5) * 255).astype(np.uint8),
                                     np.stack([mask * 255] * 3, -1).astype(np.uint8)], axis=1))
    height, width = test.image_size
    sheet = [np.concatenate(tiles, axis=0)]
    pairs = store.split("pairs")
    images = pairs.read("images", slice(0, 2))
    pair = Image.fromarray(np.concatenate([images[0], images[1]], axis=1))
    draw = ImageDraw.Draw(pair)
    matches = pairs.read("pair_matches")[0]
    matches = matches[~np.isnan(matches[:, 0])]
    for ua, va, ub, vb in matches[:: max(1, len(matches) // 25)]:
        draw.line([(ua, va), (ub + width, vb)], fill=(255, 255, 0), width=1)
    full = sheet[0].shape[1]

    def padded(row: np.ndarray) -> np.ndarray:
        return np.concatenate([row, np.zeros((height, full - row.shape[1], 3), np.uint8)], axis=1)

    sheet.append(padded(np.asarray(pair)))
    triplets = store.split("triplets")
    views = triplets.read("images", slice(0, 3)).copy()
    closer = 1 + int(triplets.read("triplet_answer")[0])
    views[closer, :3], views[closer, -3:], views[closer, :, :3], views[closer, :, -3:] = 0, 0, 0, 0
    views[closer, :3, :, 1] = views[closer, -3:, :, 1] = views[closer, :, :3, 1] = views[closer, :, -3:, 1] = 255
    sheet.append(padded(np.concatenate(list(views), axis=1)))
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.concatenate(sheet, axis=0)).save(path)
    return path
