"""NAVI v1: object depth, object normals (train: multiview collections, test: in-the-wild) and
object correspondence (pairs within 0-120 degrees of each other), 512 x 512 object crops.

Raw files under ``RAW`` (default ``data/raw/navi``): ``navi_v1.tar.gz`` extracted, giving
``<object>/multiview_<NN>_<camera>/`` and ``<object>/wild_set/``, each with ``annotations.json``
(a list of ``{filename, camera: {q: [w, x, y, z], t: [mm], focal_length: px}, image_size: [h, w]}``),
``images/<NNN>.jpg`` (apply EXIF orientation) and ``depth/<NNN>.png`` (uint16 disparity:
depth_mm = 655350 / v, v = 0 background).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from cache import DataRoot, MidprobeError, create_dataset_store
from cache.camera import relative_rotation_deg
from extract.datasets.raw import raw_fingerprint, read_image, read_json, require, resize

SIZE = 512
MAX_ANGLE = 120.0
PAIR_SEED = 8


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


def relative_depth(depth: np.ndarray) -> np.ndarray:
    """Per-image relative depth in [0.01, 1]: (d - min) / max(0.01, max - min) * 0.99 + 0.01; 0 stays 0."""
    valid = depth > 0
    if not valid.any():
        return np.zeros_like(depth)
    lo, hi = depth[valid].min(), depth[valid].max()
    return np.where(valid, (depth - lo) / max(0.01, hi - lo) * 0.99 + 0.01, 0.0).astype(np.float32)


def load_view(folder: Path, record: dict[str, Any]) -> dict[str, np.ndarray]:
    """One annotated image as a 512 x 512 crop around the object: rgb, metric depth, K, pose."""
    image = read_image(folder / "images" / record["filename"], exif=True)
    stem = Path(record["filename"]).stem
    depth = decode_depth(read_image(folder / "depth" / f"{stem}.png", mode=None))
    if depth.shape != image.shape[:2]:
        raise MidprobeError(f"{folder / 'depth' / (stem + '.png')} is {depth.shape}, its image {image.shape[:2]}; "
                            "expected the same size")
    h, w = depth.shape
    f = float(record["camera"]["focal_length"])
    top, left, side = square_box(depth > 0)
    s = SIZE / side
    # pixel centres at integers: u' = (u - left + 0.5) s - 0.5
    K = np.array([[f * s, 0, (w / 2 - left + 0.5) * s - 0.5], [0, f * s, (h / 2 - top + 0.5) * s - 0.5], [0, 0, 1]])
    crop = (slice(top, top + side), slice(left, left + side))
    depth = resize(depth[crop], (SIZE, SIZE), nearest=True)
    return {"rgb": resize(image[crop], (SIZE, SIZE)), "depth": depth, "K": K.astype(np.float32),
            "pose": camera_to_object(record["camera"]).astype(np.float32)}


def collections(raw_dir: Path) -> dict[str, dict[str, list[tuple[Path, dict[str, Any]]]]]:
    """object -> {"train": multiview views, "test": wild-set views}, objects with both, sorted."""
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
        objects[obj.name] = views
    if not objects:
        raise MidprobeError(f"{raw_dir} holds no NAVI object with both multiview_* and wild_set collections")
    return objects


def draw_pairs(poses: list[np.ndarray], groups: list[str], *, seed: int = PAIR_SEED) -> list[tuple[int, int, float]]:
    """For each view, one partner from its group within (0, 120] degrees, drawn with a seeded RNG."""
    rng = np.random.default_rng(seed)
    out = []
    for i, (pose, group) in enumerate(zip(poses, groups)):
        cands = [(j, relative_rotation_deg(pose, poses[j])) for j in range(len(poses)) if groups[j] == group and j != i]
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


def prepare_navi(*, root: DataRoot, raw: str | None = None, progress: bool = True) -> Path:
    """Write ``stores/datasets/navi.zarr``: train / test (relative depth, normals) and pairs (metric depth, K, pose)."""
    from tqdm import tqdm

    raw_dir = Path(raw) if raw else root.raw("navi")
    objects = collections(raw_dir)
    views = {s: [(name, folder, r) for name, v in objects.items() for folder, r in v[s]] for s in ("train", "test")}
    annotations = {folder / "annotations.json" for s in views.values() for _, folder, _ in s}
    images: set[Path] = set()
    for s in views.values():
        for _, folder, r in s:
            images |= {require(folder / "images" / r["filename"], "a NAVI image"),
                     require(folder / "depth" / f"{Path(r['filename']).stem}.png", "a NAVI depth PNG")}
    path = root.dataset_store("navi")
    root.ensure_writable(path.parent)
    writer = create_dataset_store(path, name="navi", source=f"raw:{raw_fingerprint(raw_dir, annotations, images)}",
                                  options={"size": SIZE, "max_angle": MAX_ANGLE, "pair_seed": PAIR_SEED},
                                  attrs={"depth_kind": "relative", "depth_range": [0.01, 1.0],
                                         "tasks": ["depth", "normals", "correspondence"], "objects": list(objects)})
    bar = tqdm(total=sum(map(len, views.values())), unit="img", desc="navi", disable=not progress, file=sys.stderr)
    test_views = []
    for split, items in views.items():
        out = writer.split(split, num_images=len(items), height=SIZE, width=SIZE, fields=_fields(False))
        for name, folder, record in items:
            view = load_view(folder, record)
            if split == "test":
                test_views.append((name, view))
            out.append({"images": view["rgb"][None], "depth": relative_depth(view["depth"])[None],
                        "normals": normals_from_depth(view["depth"], view["K"].astype(np.float64))[None],
                        "foreground": (view["depth"] > 0).astype(np.uint8)[None]})
            bar.update(1)
    bar.close()
    pairs = draw_pairs([v["pose"].astype(np.float64) for _, v in test_views], [n for n, _ in test_views])
    out = writer.split("pairs", num_images=2 * len(pairs), height=SIZE, width=SIZE, fields=_fields(True),
                       attrs={"depth_kind": "metric", "source_split": "test (wild_set)"})
    for i, j, _ in tqdm(pairs, unit="pair", desc="navi pairs", disable=not progress, file=sys.stderr):
        for k in (i, j):
            v = test_views[k][1]
            out.append({"images": v["rgb"][None], "depth": v["depth"][None], "K": v["K"][None], "pose": v["pose"][None]})
    out.put_relation("pairs", np.arange(2 * len(pairs), dtype=np.int32).reshape(-1, 2))
    out.put_relation("pair_rotation_deg", np.array([a for _, _, a in pairs], np.float32))
    writer.finish()
    return path
