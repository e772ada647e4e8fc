"""ScanNet-1500: the standard 1500 test pairs (SuperGlue's, as packaged by LoFTR), 480 x 640.

Raw files under ``RAW`` (default ``data/raw/scannet1500``): LoFTR's ``test.npz`` (``name``
``(1500, 4)`` = scene, sub-scene, frame 0, frame 1) and ``intrinsics.npz`` (``scene<NNNN>_<NN>`` ->
``(3, 3)`` K at 640 x 480), and the extracted ``scannet_test_1500.tar``: ``scene<NNNN>_<NN>/color/<frame>.jpg``,
``depth/<frame>.png`` (uint16 millimetres, 0 invalid, 640 x 480), ``pose/<frame>.txt`` (4 x 4
camera-to-world). Frames are not zero-padded.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np

from cache import DataRoot, MidprobeError, create_dataset_store
from cache.camera import relative_rotation_deg
from extract.datasets.raw import as_uint16, raw_fingerprint, read_image, read_npz, require, resize

HEIGHT, WIDTH = 480, 640
FIELDS = {"images": ((HEIGHT, WIDTH, 3), "uint8"), "depth": ((HEIGHT, WIDTH), "float32"),
          "K": ((3, 3), "float32"), "pose": ((4, 4), "float32")}


def _npz(path: Path, what: str) -> Any:
    return read_npz(path, what)


def read_pose(path: Path) -> np.ndarray:
    try:
        pose = np.loadtxt(require(path, "a ScanNet 4x4 camera-to-world pose"), dtype=np.float64)
    except ValueError as exc:
        raise MidprobeError(f"cannot read {path} ({exc}); expected 4 rows of 4 numbers") from None
    if pose.shape != (4, 4) or not np.all(np.isfinite(pose)):
        raise MidprobeError(f"{path} holds {pose.shape} values (or inf); expected a finite 4x4 camera-to-world pose")
    return pose


def read_depth_mm(path: Path) -> np.ndarray:
    """A ScanNet depth PNG (uint16 mm, whichever mode Pillow opens it in) -> ``(480, 640) float32`` metres."""
    depth = as_uint16(read_image(path, mode=None))
    if depth.dtype != np.uint16 or depth.shape != (HEIGHT, WIDTH):
        raise MidprobeError(f"{path} is {depth.dtype} {depth.shape}; expected uint16 millimetres of {HEIGHT}x{WIDTH}")
    return depth.astype(np.float32) / 1000.0


def prepare_scannet1500(*, root: DataRoot, raw: str | None = None, name: str = "scannet1500",
                        progress: bool = True) -> Path:
    """Write ``stores/datasets/<name>.zarr``: split ``pairs`` (image 2p and 2p+1 form pair p)."""
    from cache.progress import tqdm_like as tqdm

    raw_dir = Path(raw) if raw else root.raw("scannet1500")
    names = _npz(raw_dir / "test.npz", "LoFTR's ScanNet-1500 test.npz with 'name'")
    listing = names.get("name")
    if listing is None or listing.ndim != 2 or listing.shape[1] != 4 or listing.dtype.kind not in "iu":
        raise MidprobeError(f"{raw_dir / 'test.npz'}: expected integer 'name' of shape (P, 4)")
    pairs_meta = names["name"].astype(np.int64)
    intrinsics = _npz(raw_dir / "intrinsics.npz", "LoFTR's intrinsics.npz (scene -> 3x3 K at 640x480)")
    frames = []
    for scene_num, sub, f0, f1 in pairs_meta:
        scene = f"scene{scene_num:04d}_{sub:02d}"
        if scene not in intrinsics:
            raise MidprobeError(f"{raw_dir / 'intrinsics.npz'} has no {scene}; expected a K for every scene in test.npz")
        K = intrinsics[scene]
        if K.shape != (3, 3) or K.dtype.kind not in "iuf" or not np.isfinite(K).all() or min(K[0, 0], K[1, 1]) <= 0:
            raise MidprobeError(f"{raw_dir / 'intrinsics.npz'}: {scene} is {K.dtype} {K.shape} "
                                f"{np.array2string(K.ravel(), threshold=9, max_line_width=200)}; expected a finite 3x3 K, focal lengths > 0")
        for frame in (f0, f1):
            folder = raw_dir / scene
            frames.append((scene, folder / "color" / f"{frame}.jpg", folder / "depth" / f"{frame}.png",
                           folder / "pose" / f"{frame}.txt"))
    for _, color, depth, pose in frames:
        require(color, "a ScanNet colour frame"), require(depth, "a ScanNet depth PNG"), require(pose, "a pose file")
    metadata = [raw_dir / "test.npz", raw_dir / "intrinsics.npz", *sorted({f[3] for f in frames})]
    images = sorted({p for f in frames for p in f[1:3]})
    path = root.dataset_store(name)
    root.ensure_writable(path.parent)
    writer = create_dataset_store(path, name=name, source=f"raw:{raw_fingerprint(raw_dir, metadata, images)}",
                                  options={"height": HEIGHT, "width": WIDTH},
                                  attrs={"loader": "scannet1500", "depth_kind": "metric", "depth_range": [0.001, 10.0],
                                         "tasks": ["correspondence"]})
    out = writer.split("pairs", num_images=len(frames), height=HEIGHT, width=WIDTH, fields=FIELDS)
    poses = []
    for scene, color, depth, pose_path in tqdm(frames, unit="img", desc=name, disable=not progress,
                                               file=sys.stderr):
        pose = read_pose(pose_path)
        poses.append(pose)
        out.append({"images": resize(read_image(color), (HEIGHT, WIDTH))[None], "depth": read_depth_mm(depth)[None],
                    "K": np.asarray(intrinsics[scene], np.float32)[None], "pose": pose.astype(np.float32)[None]})
    count = len(pairs_meta)
    out.put_relation("pairs", np.arange(2 * count, dtype=np.int32).reshape(count, 2))
    out.put_relation("pair_rotation_deg", np.array([relative_rotation_deg(poses[2 * p], poses[2 * p + 1])
                                                    for p in range(count)], np.float32))
    writer.finish()
    return path
