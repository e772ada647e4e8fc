"""NAVI v1: object depth, object normals (train: multiview collections, test: in-the-wild) and
object correspondence (pairs within 0-120 degrees of each other), 512 x 512 object crops.

Raw files under ``RAW`` (default ``data/raw/navi``): ``navi_v1.tar.gz`` extracted, giving
``<object>/multiview_<NN>_<camera>/`` and ``<object>/wild_set/``, each with ``annotations.json``
(a list of ``{filename, camera: {q: [w, x, y, z], t: [mm], focal_length: px}, image_size: [h, w]}``),
``images/<NNN>.jpg`` (apply EXIF orientation) and ``depth/<NNN>.png`` (uint16 disparity:
depth_mm = 655350 / v, v = 0 background).

The defaults are the correct geometry; ``every``, ``crop``, ``normals`` and ``relative_min``
select the paper's choices (midvision-probe @ 984b325, ``evals/datasets/navi.py``,
``evals/datasets/utils.py``, ``data_processing/resize_navi.py``; line numbers cited below).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from cache import DataRoot, MidprobeError, create_dataset_store
from cache.camera import relative_rotation_deg
from extract.datasets.navi_paper import (box_paper, centre_crop, downsample, nearest_cv2, paper_normals,
                                         resize_short_nearest)
from extract.datasets.raw import as_uint16, raw_fingerprint, read_image, read_json, require, resize

SIZE = 512
MAX_ANGLE = 120.0
PAIR_SEED = 8
CROPS = ("object", "paper")
NORMALS = ("geometric", "paper")
RELATIVE_MINS = ("crop", "image")


def decode_depth(code: np.ndarray) -> np.ndarray:
    """NAVI's depth PNG ``(H, W) uint16`` -> metres (0 where the code is 0: background)."""
    code = code.astype(np.float64)
    return np.where(code > 0, 655.350 / np.maximum(code, 1), 0.0).astype(np.float32)


def quaternion_matrix(q: list[float]) -> np.ndarray:
    w, x, y, z = np.asarray(q, np.float64) / np.linalg.norm(q)
    return np.array([[1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y)],
                     [2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x)],
                     [2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y)]])


def camera_to_object(camera: dict[str, Any]) -> np.ndarray:
    """The ``(4, 4)`` camera-to-world pose, the object's frame as world (NAVI stores object-to-camera, mm)."""
    obj_to_cam = np.eye(4)
    obj_to_cam[:3, :3] = quaternion_matrix(camera["q"])
    obj_to_cam[:3, 3] = np.asarray(camera["t"], np.float64) / 1000.0
    return np.linalg.inv(obj_to_cam)


def square_box(valid: np.ndarray) -> tuple[int, int, int]:
    """``(top, left, side)``: the square around the valid pixels' box, pushed inside the image."""
    h, w = valid.shape
    rows, cols = np.nonzero(valid)
    if len(rows) == 0:
        side = min(h, w)
        return (h - side) // 2, (w - side) // 2, side
    side = min(max(rows.max() - rows.min(), cols.max() - cols.min()) + 1, h, w)
    top = int(np.clip((rows.min() + rows.max() + 1 - side) // 2, 0, h - side))
    left = int(np.clip((cols.min() + cols.max() + 1 - side) // 2, 0, w - side))
    return top, left, int(side)


def normals_from_depth(depth: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Camera-frame unit normals ``(H, W, 3)`` facing the camera, from central differences of the
    back-projected points; zero where a pixel or a neighbour has no depth, and on the border."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    z = depth.astype(np.float64)
    pts = np.stack([(u - K[0, 2]) / K[0, 0] * z, (v - K[1, 2]) / K[1, 1] * z, z], axis=-1)
    out = np.zeros((h, w, 3), np.float32)
    du = pts[1:-1, 2:] - pts[1:-1, :-2]
    dv = pts[2:, 1:-1] - pts[:-2, 1:-1]
    n = np.cross(dv, du)
    n = np.where((np.einsum("ijk,ijk->ij", n, pts[1:-1, 1:-1]) > 0)[..., None], -n, n)
    norm = np.linalg.norm(n, axis=-1, keepdims=True)
    ok = (z[1:-1, 1:-1] > 0) & (z[1:-1, 2:] > 0) & (z[1:-1, :-2] > 0) & (z[2:, 1:-1] > 0) & (z[:-2, 1:-1] > 0)
    ok &= norm[..., 0] > 0
    out[1:-1, 1:-1] = np.where(ok[..., None], n / np.maximum(norm, 1e-12), 0.0)
    return out


def relative_depth(depth: np.ndarray, lo: float | None = None) -> np.ndarray:
    """Per-image relative depth in [0.01, 1]: (d - lo) / max(0.01, max - lo) * 0.99 + 0.01; 0 stays 0.

    ``lo`` defaults to the crop's minimum valid depth; the paper passes the whole image's
    (navi.py:157, :211-220)."""
    valid = depth > 0
    if not valid.any():
        return np.zeros_like(depth)
    lo = float(depth[valid].min()) if lo is None else float(lo)
    hi = float(depth[valid].max())
    return np.where(valid, (depth - lo) / max(0.01, hi - lo) * 0.99 + 0.01, 0.0).astype(np.float32)


def read_depth_code(path: Path) -> np.ndarray:
    """NAVI's depth PNG as ``(H, W) uint16`` (mode ``I;16`` or, before Pillow 10.3, ``I``)."""
    code = as_uint16(read_image(path, mode=None))
    if code.dtype != np.uint16 or code.ndim != 2:
        raise MidprobeError(f"{path} is {code.dtype} {code.shape}; expected NAVI's 16-bit greyscale depth PNG")
    return code


def _object_crop(image: np.ndarray, code: np.ndarray, record: dict[str, Any]) -> dict[str, Any]:
    """The square around the object in the full-resolution image, resized to 512 (image bilinear)."""
    depth = decode_depth(code)
    h, w = depth.shape
    f = float(record["camera"]["focal_length"])
    top, left, side = square_box(depth > 0)
    s = SIZE / side
    # pixel centres at integers: u' = (u - left + 0.5) s - 0.5
    K = np.array([[f * s, 0, (w / 2 - left + 0.5) * s - 0.5], [0, f * s, (h / 2 - top + 0.5) * s - 0.5], [0, 0, 1]])
    crop = (slice(top, top + side), slice(left, left + side))
    return {"rgb": resize(image[crop], (SIZE, SIZE)), "depth": resize(depth[crop], (SIZE, SIZE), nearest=True),
            "K": K, "box_depth": depth[crop], "box_focal": f, "full_depth": depth,
            "to_size": lambda x: resize(x, (SIZE, SIZE), nearest=True)}


def _object_crop_paper(image: np.ndarray, code: np.ndarray, record: dict[str, Any]) -> dict[str, Any]:
    """The paper's chain (navi_paper): downsample to 1024, short side 512 nearest, 512 centre crop,
    its object box, nearest resize of the box to 512 (navi.py:152-196, utils.py:102-123, 300-329)."""
    image, code = downsample(image, code)
    full = decode_depth(code)
    image, depth = (centre_crop(resize_short_nearest(x, SIZE), SIZE) for x in (image, full))
    orig_h, orig_w = record["image_size"]
    focal = float(record["camera"]["focal_length"]) * SIZE / min(orig_h, orig_w)     # navi.py:161-164 aug_fx
    top, left, side = box_paper(depth > 0)
    crop = (slice(top, top + side), slice(left, left + side))
    q = side / SIZE
    # the paper's own camera (its xyz grid, navi.py:167-177: f = aug_fx, principal point at the
    # centre of the 512 crop), carried through the box crop and the nearest resize (source = left + q u)
    K = np.array([[focal / q, 0, (SIZE / 2 - 0.5 - left) / q], [0, focal / q, (SIZE / 2 - 0.5 - top) / q], [0, 0, 1]])
    return {"rgb": nearest_cv2(image[crop], SIZE), "depth": nearest_cv2(depth[crop], SIZE), "K": K,
            "box_depth": depth[crop], "box_focal": focal, "full_depth": full,
            "to_size": lambda x: nearest_cv2(x, SIZE)}


def load_view(folder: Path, record: dict[str, Any], *, crop: str = "object", normals: str = "geometric",
              relative_min: str = "crop") -> dict[str, np.ndarray]:
    """One annotated image as a 512 x 512 crop around its object: ``rgb``, metric ``depth``, ``K``,
    ``pose``, ``relative`` depth, ``normals`` and ``foreground`` (options: :func:`prepare_navi`)."""
    image = read_image(folder / "images" / record["filename"], exif=True)
    depth_path = folder / "depth" / f"{Path(record['filename']).stem}.png"
    code = read_depth_code(depth_path)
    if code.shape != image.shape[:2]:
        raise MidprobeError(f"{depth_path} is {code.shape}, its image {image.shape[:2]}; expected the same size")
    view = (_object_crop_paper if crop == "paper" else _object_crop)(image, code, record)
    depth, K, full = view["depth"], view["K"].astype(np.float32), view["full_depth"]
    lo = float(full[full > 0].min()) if relative_min == "image" and (full > 0).any() else None
    if normals == "paper":
        # at the box's own resolution with its focal length, then resized with the image (navi.py:183-196)
        n = view["to_size"](paper_normals(view["box_depth"], view["box_focal"]))
    else:
        n = normals_from_depth(depth, K.astype(np.float64))
    return {"rgb": view["rgb"], "depth": depth, "K": K,
            "pose": camera_to_object(record["camera"]).astype(np.float32), "relative": relative_depth(depth, lo),
            "normals": n.astype(np.float32), "foreground": (depth > 0).astype(np.uint8)}


def collections(raw_dir: Path) -> dict[str, dict[str, list[tuple[Path, dict[str, Any]]]]]:
    """object -> {"train": multiview views, "test": wild-set views}, objects with both.

    Objects, collections and images in sorted order. The paper lists them in ``glob`` and
    ``os.listdir`` order (navi.py:247-256), which is the file system's, so its order (and
    with ``every`` its subset) is sorted order only where the file system lists that way.
    """
    objects = {}
    for obj in sorted(p for p in require(raw_dir, "the extracted NAVI v1 release").iterdir() if p.is_dir()):
        wild = obj / "wild_set"
        multi = sorted(p for p in obj.glob("multiview_*") if p.is_dir())
        if not wild.is_dir() or not multi:
            continue
        views: dict[str, list] = {"train": [], "test": []}
        for split, folders in (("train", multi), ("test", [wild])):
            for folder in folders:
                path = require(folder / "annotations.json", "NAVI's annotations.json")
                records = read_json(path, "NAVI's annotations.json (a list of annotation records)")
                try:
                    for r in records:       # every field load_view reads, of the right shape
                        str(r["filename"]), float(r["camera"]["focal_length"])
                        np.asarray(r["camera"]["q"], float).reshape(4), np.asarray(r["camera"]["t"], float).reshape(3)
                    views[split].extend((folder, r) for r in sorted(records, key=lambda r: r["filename"]))
                except (ValueError, KeyError, TypeError) as exc:
                    raise MidprobeError(f"cannot read {path} ({exc}); expected a list of annotation records") from None
                for r in records:           # JSON reads NaN and Infinity; they would reach K and the pose
                    camera = r["camera"]
                    q, f = np.asarray(camera["q"], float), float(camera["focal_length"])
                    if not (np.isfinite([*q, *np.asarray(camera["t"], float), f]).all() and f > 0
                            and np.linalg.norm(q) > 0):
                        raise MidprobeError(f"{path}: {r['filename']} has camera q {camera['q']}, t {camera['t']}, "
                                            f"focal_length {camera['focal_length']}; expected finite values, a "
                                            "non-zero q [w, x, y, z] and focal_length > 0 (pixels)")
        objects[obj.name] = views
    if not objects:
        raise MidprobeError(f"{raw_dir} holds no NAVI object with both multiview_* and wild_set collections")
    return objects


def draw_pairs(poses: list[np.ndarray], groups: list[str], *, seed: int = PAIR_SEED,
               anchors: list[int] | None = None) -> list[tuple[int, int, float]]:
    """For each anchor view (default: every view), one partner from its group (any view of it)
    within (0, 120] degrees, drawn with a seeded RNG."""
    rng = np.random.default_rng(seed)
    out = []
    for i in range(len(poses)) if anchors is None else anchors:
        cands = [(j, relative_rotation_deg(poses[i], poses[j])) for j in range(len(poses))
                 if groups[j] == groups[i] and j != i]
        cands = [(j, a) for j, a in cands if 0 < a <= MAX_ANGLE]
        if cands:
            j, angle = cands[int(rng.integers(len(cands)))]
            out.append((i, j, angle))
    return out


def _fields(extra: bool) -> dict[str, tuple[tuple[int, ...], str]]:
    fields = {"images": ((SIZE, SIZE, 3), "uint8"), "depth": ((SIZE, SIZE), "float32")}
    if extra:
        return {**fields, "K": ((3, 3), "float32"), "pose": ((4, 4), "float32")}
    return {**fields, "normals": ((SIZE, SIZE, 3), "float32"), "foreground": ((SIZE, SIZE), "uint8")}


def _check(every: int, crop: str, normals: str, relative_min: str) -> None:
    for key, value, allowed in (("crop", crop, CROPS), ("normals", normals, NORMALS),
                                ("relative_min", relative_min, RELATIVE_MINS)):
        if value not in allowed:
            raise MidprobeError(f"navi option {key}={value!r}: expected one of {', '.join(allowed)}")
    if every < 1:
        raise MidprobeError(f"navi option every={every}: expected a positive integer (1 keeps every image)")


def prepare_navi(*, root: DataRoot, raw: str | None = None, name: str = "navi", every: int = 1,
                 crop: str = "object", normals: str = "geometric", relative_min: str = "crop",
                 progress: bool = True) -> Path:
    """Write ``stores/datasets/<name>.zarr``: train / test (relative depth, normals) and pairs
    (metric depth, K, pose).

    ``every=4`` keeps every 4th image of the train list, of the test list, and of the pairs'
    first images (partners are drawn from all test images), over the lists in their global
    order — the paper's ``self.instances[::4]`` after drawing pairs (navi.py:108-113).
    ``crop="paper"``: the paper's resampling chain (:mod:`extract.datasets.navi_paper`).
    ``normals="paper"``: the paper's normals, pointing away from the camera, principal point at
    the crop's corner. ``relative_min="image"``: the relative depth's minimum over the whole image.
    """
    from cache.progress import tqdm_like as tqdm

    _check(every, crop, normals, relative_min)
    raw_dir = Path(raw) if raw else root.raw("navi")
    objects = collections(raw_dir)
    views = {s: [(obj, folder, r) for obj, v in objects.items() for folder, r in v[s]] for s in ("train", "test")}
    annotations = {folder / "annotations.json" for s in views.values() for _, folder, _ in s}
    images: set[Path] = set()
    for s in views.values():
        for _, folder, r in s:
            images |= {require(folder / "images" / r["filename"], "a NAVI image"),
                       require(folder / "depth" / f"{Path(r['filename']).stem}.png", "a NAVI depth PNG")}
    choices = {"crop": crop, "normals": normals, "relative_min": relative_min}
    test = views["test"]
    # angles from the poses as stored (float32)
    poses = [camera_to_object(r["camera"]).astype(np.float32).astype(np.float64) for _, _, r in test]
    pairs = draw_pairs(poses, [obj for obj, _, _ in test],
                       anchors=list(range(0, len(test), every)))
    needed = {k for i, j, _ in pairs for k in (i, j)}
    path = root.dataset_store(name)
    root.ensure_writable(path.parent)
    writer = create_dataset_store(
        path, name=name, source=f"raw:{raw_fingerprint(raw_dir, annotations, images)}",
        options={"size": SIZE, "max_angle": MAX_ANGLE, "pair_seed": PAIR_SEED, "every": every, **choices},
        attrs={"loader": "navi", "depth_kind": "relative", "depth_range": [0.01, 1.0],
               "tasks": ["depth", "normals", "correspondence"], "objects": list(objects),
               "normals_convention": "away from the camera (the paper's: principal point at the crop corner)"
               if normals == "paper" else "toward the camera (geometric, true principal point)"})
    kept = {split: items[::every] for split, items in views.items()}
    bar = tqdm(total=sum(map(len, kept.values())), unit="img", desc=name, disable=not progress, file=sys.stderr)
    cache: dict[int, dict[str, np.ndarray]] = {}
    for split, items in kept.items():
        out = writer.split(split, num_images=len(items), height=SIZE, width=SIZE, fields=_fields(False))
        for k, (_, folder, record) in enumerate(items):
            view = load_view(folder, record, **choices)
            if split == "test" and k * every in needed:
                cache[k * every] = view
            out.append({"images": view["rgb"][None], "depth": view["relative"][None],
                        "normals": view["normals"][None], "foreground": view["foreground"][None]})
            bar.update(1)
    bar.close()
    out = writer.split("pairs", num_images=2 * len(pairs), height=SIZE, width=SIZE, fields=_fields(True),
                       attrs={"depth_kind": "metric", "source_split": "test (wild_set)"})
    for i, j, _ in tqdm(pairs, unit="pair", desc=f"{name} pairs", disable=not progress, file=sys.stderr):
        for k in (i, j):
            if k not in cache:
                cache[k] = load_view(test[k][1], test[k][2], **choices)
            v = cache[k]
            out.append({"images": v["rgb"][None], "depth": v["depth"][None], "K": v["K"][None], "pose": v["pose"][None]})
    out.put_relation("pairs", np.arange(2 * len(pairs), dtype=np.int32).reshape(-1, 2))
    out.put_relation("pair_rotation_deg", np.array([a for _, _, a in pairs], np.float32))
    writer.finish()
    return path
