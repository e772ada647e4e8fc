"""Tiny fixtures in the real datasets' original file formats (layouts in docs/datasets.md).

Every fixture draws an asymmetric pattern (a marker near the top-left), so a transpose or
flip anywhere in a loader moves it.
"""

from __future__ import annotations

import gzip
import json
import pickle
from pathlib import Path

import h5py
import numpy as np
from PIL import Image


def voc_palette() -> list[int]:
    """The standard VOC colour map (bit-interleaved), 256 entries."""
    palette = []
    for i in range(256):
        r = g = b = 0
        c = i
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        palette += [r, g, b]
    return palette


def nyu_frame(i: int) -> dict[str, np.ndarray]:
    """What frame ``i`` should look like upright: (480, 640, 3) image, depth and normals."""
    image = np.full((480, 640, 3), 40 + i, np.uint8)
    image[:40, 80:200] = (255, 0, 0)                 # red marker: top rows, left of centre
    depth = np.tile(np.linspace(0.5, 9.5, 640, dtype=np.float32), (480, 1)) + i * 0.01
    depth[:20, :] = 12.0                              # beyond 10 m: invalid
    depth[-1, 500] = 0.0                              # no measurement (the Kinect's code); column 420 after the crop
    normals = np.zeros((480, 640, 3), np.float32)
    normals[..., 2] = -1.0
    normals[:240, :, :] = (1.0, 0.0, 0.0)             # upper half faces +x
    return {"images": image, "depth": depth, "normals": normals}


def write_nyu(raw: Path, n: int = 4, train: tuple[int, ...] = (1, 3), test: tuple[int, ...] = (2, 4)) -> None:
    """``nyu_depth_v2_labeled.mat`` (v7.3/HDF5, MATLAB axes reversed), ``splits.mat`` (v5),
    FAIR's ``surfacenormal_metadata/{all_normals.pklz, train_SN40.json, test_SN40.json}``."""
    from scipy.io import savemat

    raw.mkdir(parents=True, exist_ok=True)
    frames = [nyu_frame(i) for i in range(n)]
    with h5py.File(raw / "nyu_depth_v2_labeled.mat", "w", userblock_size=512) as f:
        f.create_dataset("images", data=np.stack([fr["images"] for fr in frames]).transpose(0, 3, 2, 1))
        f.create_dataset("depths", data=np.stack([fr["depth"] for fr in frames]).transpose(0, 2, 1))
        raw_depth = np.stack([fr["depth"] * 0.5 for fr in frames]).transpose(0, 2, 1)
        f.create_dataset("rawDepths", data=raw_depth.astype(np.float32))
        f.create_dataset("labels", data=np.zeros((n, 640, 480), np.uint16))
    with open(raw / "nyu_depth_v2_labeled.mat", "r+b") as handle:
        handle.write(b"MATLAB 7.3 MAT-file, Platform: GLNXA64, Created on: Thu Jan 01 00:00:00 2015 HDF5 schema 1.00 .")
    savemat(str(raw / "splits.mat"), {"trainNdxs": np.array(train, float)[:, None],
                                      "testNdxs": np.array(test, float)[:, None]})
    meta = raw / "surfacenormal_metadata"
    meta.mkdir(exist_ok=True)
    valid = np.ones((n, 480, 640), np.float32)
    valid[:, :, -100:] = 0.0                          # right edge: no valid normals
    with gzip.open(meta / "all_normals.pklz", "wb") as handle:
        pickle.dump({"all_normals": np.stack([fr["normals"] for fr in frames]), "all_valid_depth_masks": valid,
                     "all_filenames": [f"{i + 1:06d}" for i in range(n)]}, handle)
    for name, ids in (("train", train), ("test", test)):
        records = [{"img": f"{i:06d}_rgb.jpg", "segm": f"{i:06d}_SN40.png", "width": 640, "height": 480} for i in ids]
        (meta / f"{name}_SN40.json").write_text(json.dumps(records))


def write_geonet_frame(folder: Path, name: str, *, value: float = 100) -> None:
    """GeoNet's .mat: ``img`` stored minus twice the channel means (restored by adding them back),
    ``depth`` 2 m, ``norm`` (0, 1, 0), ``mask`` 0 in the first 100 columns; a red marker top-left and,
    at row 300, column 400, a value of 300 (out of uint8 range)."""
    from scipy.io import savemat

    folder.mkdir(parents=True, exist_ok=True)
    img = np.full((481, 641, 3), float(value)) - 2 * np.array([122.175, 116.169, 103.508])
    img[:40, 80:200, 0] += 100.0
    img[300, 400] += 300.0 - value
    norm = np.zeros((481, 641, 3)); norm[..., 1] = 1.0
    mask = np.ones((481, 641)); mask[:, :100] = 0
    savemat(str(folder / name), {"img": img, "depth": np.full((481, 641), 2.0), "norm": norm, "mask": mask,
                                 "grid": np.zeros((481, 641, 3))})


def write_voc(raw: Path) -> dict[str, list[str]]:
    """VOCdevkit/VOC2007 with JPEGImages, palette SegmentationObject PNGs, ImageSets/Segmentation lists."""
    devkit = raw / "VOCdevkit" / "VOC2007"
    for sub in ("JPEGImages", "SegmentationObject", "ImageSets/Segmentation", "Annotations"):
        (devkit / sub).mkdir(parents=True, exist_ok=True)
    ids = {"trainval": ["000032", "000033"], "test": ["000001"]}
    for name, items in ids.items():
        (devkit / "ImageSets" / "Segmentation" / f"{name}.txt").write_text("\n".join(items) + "\n")
        for k, i in enumerate(items):
            mask = np.zeros((375, 500), np.uint8)     # VOC-sized, landscape
            mask[20:120, 30:230] = 1                  # instance 1, top-left
            mask[200:300, 300:450] = 2 + k            # instance 2.., bottom-right
            mask[18:20, 30:230] = 255                 # void band above instance 1
            png = Image.fromarray(mask, mode="P")
            png.putpalette(voc_palette())
            png.save(devkit / "SegmentationObject" / f"{i}.png")
            image = np.full((375, 500, 3), 90, np.uint8)
            image[mask == 1] = (250, 20, 20)
            Image.fromarray(image).save(devkit / "JPEGImages" / f"{i}.jpg", quality=95)
    return ids


def write_nights(raw: Path) -> None:
    """nights/data.csv and ref/<group>/<item>.png, distort/<group>/<item>_{0,1}.png (256 x 256 here)."""
    rows = [("0", "0.0", "1.0", "6", "test", "False"), ("1", "1.0", "0.0", "7", "test", "True"),
            ("2", "0.2", "0.8", "5", "test", "False"), ("3", "0.0", "1.0", "6", "train", "False")]
    lines = ["id,left_vote,right_vote,votes,ref_path,left_path,right_path,split,is_imagenet,prompt"]
    for k, (i, lv, rv, votes, split, imnet) in enumerate(rows):
        paths = [f"ref/000/{k:03d}.png", f"distort/000/{k:03d}_0.png", f"distort/000/{k:03d}_1.png"]
        for j, p in enumerate(paths):
            (raw / p).parent.mkdir(parents=True, exist_ok=True)
            image = np.full((256, 256, 3), 30 * j + k, np.uint8)
            image[:32, :64] = 255                      # top-left marker
            Image.fromarray(image).save(raw / p)
        lines.append(",".join([i, lv, rv, votes, *paths, split, imnet, "a photo"]))
    (raw / "data.csv").write_text("\n".join(lines) + "\n")


def scannet_pose(angle_deg: float, shift: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    pose = np.eye(4)
    pose[:3, :3] = [[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]]
    pose[:3, 3] = (shift, 0.5, 1.0)
    return pose


def write_scannet(raw: Path) -> None:
    """LoFTR's test.npz + intrinsics.npz and scene folders color/ depth/ pose/ (frames not zero-padded)."""
    names = np.array([[707, 0, 15, 30], [708, 0, 0, 45]], np.uint16)
    np.savez(raw / "test.npz", name=names, rel_pose=np.zeros((2, 12), np.float32))
    K = np.array([[575.664, 0, 320.541], [0, 578.053, 240.379], [0, 0, 1]])
    np.savez(raw / "intrinsics.npz", scene0707_00=K, scene0708_00=K * [[1.01], [1.01], [1]])
    for p, (scene, sub, f0, f1) in enumerate(names):
        folder = raw / f"scene{scene:04d}_{sub:02d}"
        for sub_dir in ("color", "depth", "pose"):
            (folder / sub_dir).mkdir(parents=True, exist_ok=True)
        for k, frame in enumerate((f0, f1)):
            color = np.full((968, 1296, 3), 60, np.uint8)
            color[:100, :200] = (0, 0, 255)            # blue marker top-left
            Image.fromarray(color).save(folder / "color" / f"{frame}.jpg", quality=95)
            depth = np.full((480, 640), 1500 + 100 * k, np.uint16)
            depth[:, :50] = 0                          # invalid left band
            Image.fromarray(depth).save(folder / "depth" / f"{frame}.png")
            np.savetxt(folder / "pose" / f"{frame}.txt", scannet_pose(20.0 * k + 5 * p, 0.1 * k))


def navi_code(depth_m: np.ndarray) -> np.ndarray:
    """NAVI's depth PNG code for depths in metres (0 stays background)."""
    return np.where(depth_m > 0, np.rint(655.35 / np.maximum(depth_m, 1e-9)), 0).astype(np.uint16)


NAVI_PLATES = ((40, 120, 0.5), (120, 200, 0.6))      # (first column, end column, depth m): rows 30-129


def navi_background(collection: int, k: int) -> int:
    """The grey level of image ``k`` of the ``collection``-th folder, so a test can tell which were kept."""
    return 20 + 12 * k + 4 * collection


def write_navi(raw: Path, *, angles: dict[str, list[float]] | None = None,
               plates: tuple[tuple[int, int, float], ...] = NAVI_PLATES) -> None:
    """<object>/{multiview_00_pixel_4a, wild_set}/{annotations.json, images/NNN.jpg (EXIF), depth/NNN.png}.

    Upright frames are 300 x 400 (H x W) with the object (depth > 0, red) made of fronto-parallel
    plates in rows 30-129, by default in the top-left; the background's grey level tells
    the images apart (:func:`navi_background`). The JPEGs are stored rotated with EXIF
    orientation 6, so only EXIF-aware reading aligns them.
    """
    angles = angles or {"multiview_00_pixel_4a": [0.0, 30.0], "wild_set": [0.0, 50.0, 100.0]}
    obj = raw / "duck_bath_yellow_s"
    (obj / "3d_scan").mkdir(parents=True, exist_ok=True)
    for c, (collection, rotations) in enumerate(angles.items()):
        folder = obj / collection
        (folder / "images").mkdir(parents=True, exist_ok=True)
        (folder / "depth").mkdir(parents=True, exist_ok=True)
        records = []
        for k, angle in enumerate(rotations):
            depth = np.zeros((300, 400))
            for start, end, value in plates:
                depth[30:130, start:end] = value
            upright = np.full((300, 400, 3), navi_background(c, k), np.uint8)
            upright[depth > 0] = (230, 30, 30)
            stored = Image.fromarray(np.ascontiguousarray(np.rot90(upright, k=1)))   # orientation 6 undoes this
            exif = Image.Exif()
            exif[0x0112] = 6
            stored.save(folder / "images" / f"{k:03d}.jpg", exif=exif, quality=95)
            Image.fromarray(navi_code(depth)).save(folder / "depth" / f"{k:03d}.png")
            half = np.deg2rad(angle) / 2
            records.append({"object_id": obj.name, "filename": f"{k:03d}.jpg", "filename_original": f"IMG_{k}.jpg",
                            "camera": {"q": [float(np.cos(half)), 0.0, float(np.sin(half)), 0.0],
                                       "t": [0.0, 0.0, 500.0], "focal_length": 350.0, "camera_model": "pixel_4a"},
                            "image_size": [300, 400], "scene_name": collection, "split": "train", "occluded": False})
        (folder / "annotations.json").write_text(json.dumps(records))
