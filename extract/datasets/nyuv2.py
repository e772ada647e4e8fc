"""NYU Depth v2 (labeled set): scene depth and scene normals, 480 x 480 centre crops.

Raw files under ``RAW`` (default ``data/raw/nyuv2``):
- ``nyu_depth_v2_labeled.mat`` — MATLAB v7.3 (HDF5); h5py sees MATLAB's axes reversed:
  ``images (1449, 3, 640, 480) uint8``, ``depths``/``rawDepths (1449, 640, 480)`` metres, 0 where
  the Kinect measured nothing (a NaN, infinite or negative value is an error, :func:`clean_depth`).
- ``splits.mat`` — MATLAB v5; ``trainNdxs (795, 1)``, ``testNdxs (654, 1)``, 1-based.
- ``surfacenormal_metadata/all_normals.pklz`` — FAIR's gzip pickle of Ladicky et al.'s normals
  for all 1449 frames: ``all_normals (1449, 480, 640, 3)``, ``all_valid_depth_masks``,
  ``all_filenames`` (1-based frame ids); ``train_SN40.json`` / ``test_SN40.json`` beside it.
- optional ``nyu_geonet/*.mat`` — GeoNet's ~30k full-NYU training frames (MATLAB v5,
  ``img``/``depth``/``norm``/``mask`` of 481 x 641).

Without ``all_normals.pklz`` the store holds images and depth only and names the missing
file in its ``absent_targets`` attribute. The paper's choices (midvision-probe @ 984b325):
``split_source=sn40 test_depth=rawDepths`` (``data_processing/create_nyu_pkl.py:59-64``),
``geonet=true`` (``evals/datasets/nyu.py:20-31``: every split but test is GeoNet, for depth and
normals alike), ``geonet_mask=false geonet_uint8=truncate`` (``convert_nyuv2.ipynb`` cell 2).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cache import DataRoot, MidprobeError, create_dataset_store
from extract.datasets.raw import load_numpy_pickle, open_hdf5, raw_fingerprint, read_hdf5, read_json, read_mat, require
from extract.datasets.values import check_depth, check_normals

SIZE = 480
MAX_DEPTH = 10.0
GEONET_MEAN = (122.175, 116.169, 103.508)
GEONET_UNREADABLE = {"library_0006_r-1300708259.539496-3335480784.mat", "bedroom_0129_r-1315328302.785180-1089784518.mat"}
FIELDS = {"images": ((SIZE, SIZE, 3), "uint8"), "depth": ((SIZE, SIZE), "float32"),
          "normals": ((SIZE, SIZE, 3), "float32")}
UINT8_CASTS = ("round", "truncate")
DEPTH_EXPECTED = f"metres >= 0, 0 for no measurement (values over {MAX_DEPTH:g} m are cut to 0)"


def centre_crop(x: np.ndarray) -> np.ndarray:
    """One frame ``(480, 640, ...)`` -> ``(480, 480, ...)``: columns 80..559."""
    off = (x.shape[1] - SIZE) // 2
    return x[:, off:off + SIZE]


def clean_depth(depth: np.ndarray, *, where: str) -> np.ndarray:
    """Metres as read -> the store's depth: 0 (NYU's and GeoNet's "no measurement") stays 0 and
    values over 10 m become 0 (the paper's range, midvision-probe ``nyu.py:118``); a NaN, an
    infinite or a negative value is no code of theirs, so it is an error naming ``where``."""
    depth = np.asarray(depth, np.float32)
    check_depth(depth, where=where, nan_is_missing=False, expected=DEPTH_EXPECTED)
    return np.where(depth <= MAX_DEPTH, depth, 0.0).astype(np.float32)


def official_split(raw: Path) -> dict[str, np.ndarray]:
    path = require(raw / "splits.mat", "NYU's official split, splits.mat (MATLAB v5, trainNdxs/testNdxs)")
    mat = read_mat(path, "NYU's official split, splits.mat (MATLAB v5, trainNdxs/testNdxs)")
    try:
        return {"train": np.asarray(mat["trainNdxs"]).ravel().astype(np.int64) - 1,
                "test": np.asarray(mat["testNdxs"]).ravel().astype(np.int64) - 1}
    except (KeyError, ValueError, TypeError) as exc:
        raise MidprobeError(f"cannot read {path} ({exc}); expected MATLAB v5 with trainNdxs and testNdxs") from None


def sn40_split(raw: Path) -> dict[str, np.ndarray]:
    """FAIR's train_SN40.json / test_SN40.json (the paper's split): records {img: '%06d_rgb.jpg', ...}."""
    out = {}
    for split in ("train", "test"):
        path = require(raw / "surfacenormal_metadata" / f"{split}_SN40.json", "FAIR's surface-normal split file")
        try:
            records = read_json(path, "FAIR's surface-normal split file (a list of {img: '000001_rgb.jpg'})")
            out[split] = np.array(sorted(int(r["img"].split("_")[0]) - 1 for r in records), dtype=np.int64)
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise MidprobeError(f"cannot read {path} ({exc}); expected a list of {{img: '000001_rgb.jpg'}}") from None
    return out


def ladicky_normals(raw: Path) -> tuple[dict[int, int], np.ndarray, np.ndarray]:
    """Frame (0-based) -> row, and the normals and validity masks of FAIR's all_normals.pklz."""
    path = raw / "surfacenormal_metadata" / "all_normals.pklz"
    data = load_numpy_pickle(require(path, "FAIR's nyuv2_surfacenormal_metadata (all_normals.pklz)"))
    try:
        rows = {int(Path(str(name)).stem) - 1: i for i, name in enumerate(data["all_filenames"])}
        normals, valid = data["all_normals"], data["all_valid_depth_masks"]
    except (KeyError, TypeError, ValueError) as exc:
        raise MidprobeError(f"{path} lacks {exc}; expected all_normals, all_valid_depth_masks, all_filenames") from None
    if np.shape(normals)[1:] != (480, 640, 3):
        raise MidprobeError(f"{path}: all_normals has shape {np.shape(normals)}, expected (N, 480, 640, 3)")
    return rows, normals, valid


def _geonet_frames(folder: Path) -> list[Path]:
    files = sorted(p for p in require(folder, "GeoNet's NYU training .mat files (data1.zip + data2.zip)").glob("*.mat"))
    if not files:
        raise MidprobeError(f"{folder} holds no .mat files; expected GeoNet's NYU training frames")
    return [p for p in files if p.name not in GEONET_UNREADABLE]


def to_uint8(img: np.ndarray, cast: str = "round") -> np.ndarray:
    """Float pixel values -> uint8: ``round`` rounds and clips to 0..255; ``truncate`` is the
    paper's ``img.astype(np.uint8)`` (convert_nyuv2.ipynb cell 2, as Probe3D's nyu.py): toward
    zero, and out-of-range values wrap modulo 256 as numpy's cast does on x86."""
    if cast == "truncate":
        return np.trunc(img).astype(np.int64).astype(np.uint8)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def geonet_frame(path: Path, *, mask: bool = True, cast: str = "round") -> dict[str, np.ndarray]:
    """One GeoNet frame, cropped from 481 x 641 to 480 x 640 and then centred to 480 x 480.

    ``img`` is restored by adding twice the channel means (as Probe3D and the paper do) and
    cast with ``cast`` (:func:`to_uint8`); with ``mask`` the normals are zero outside
    GeoNet's ``mask`` (the paper's code never reads it). Inside ``mask`` a normal must be finite
    and non-zero; without ``mask`` every normal is stored, so every one must be finite.
    """
    mat = read_mat(path, "a GeoNet frame (MATLAB v5 with img, depth, norm, mask)")
    try:
        img = np.asarray(mat["img"], np.float64)[:480, :640] + 2 * np.asarray(GEONET_MEAN)
        depth, norm = np.asarray(mat["depth"])[:480, :640], np.asarray(mat["norm"], np.float32)[:480, :640]
        valid = np.asarray(mat["mask"])[:480, :640] > 0.5
        kept = valid if mask else np.ones(valid.shape, bool)
        check_normals(norm, valid, kept=kept, where=f"{path}, 'norm'",
                      expected="finite, non-zero normals where GeoNet's mask > 0.5"
                      + ("" if mask else ", finite ones elsewhere (geonet_mask=false stores them all)"))
    except (KeyError, ValueError, TypeError, IndexError) as exc:
        raise MidprobeError(f"cannot read GeoNet frame {path} ({exc}); expected img, depth, norm, mask") from None
    return {"images": centre_crop(to_uint8(img, cast)),
            "depth": centre_crop(clean_depth(depth, where=f"{path}, 'depth'")),
            "normals": centre_crop(np.where(kept[..., None], norm, 0.0).astype(np.float32))}


def prepare_nyuv2(*, root: DataRoot, raw: str | None = None, name: str = "nyuv2", split_source: str = "official",
                  test_depth: str = "depths", geonet: bool = False, geonet_mask: bool = True,
                  geonet_uint8: str = "round", progress: bool = True) -> Path:
    """Write ``stores/datasets/<name>.zarr``: train / test with images, depth (m) and, when FAIR's
    ``all_normals.pklz`` is there, normals."""
    from cache.progress import tqdm_like as tqdm

    raw_dir = Path(raw) if raw else root.raw("nyuv2")
    if split_source not in ("official", "sn40"):
        raise MidprobeError(f"split_source {split_source!r}: expected official (splits.mat) or sn40 (FAIR's json)")
    if test_depth not in ("depths", "rawDepths"):
        raise MidprobeError(f"test_depth {test_depth!r}: expected depths (in-painted) or rawDepths (Kinect)")
    if geonet_uint8 not in UINT8_CASTS:
        raise MidprobeError(f"geonet_uint8 {geonet_uint8!r}: expected round (round and clip) or truncate (the paper's)")
    mat_path = require(raw_dir / "nyu_depth_v2_labeled.mat", "the NYU Depth v2 labeled set (MATLAB v7.3 / HDF5)")
    splits = official_split(raw_dir) if split_source == "official" else sn40_split(raw_dir)
    pklz = raw_dir / "surfacenormal_metadata" / "all_normals.pklz"
    absent = {}
    if pklz.exists():
        rows, normals, valid = ladicky_normals(raw_dir)
    else:
        absent["normals"] = f"missing {pklz} (FAIR's nyuv2_surfacenormal_metadata.zip, all_normals.pklz)"
        rows, normals, valid = {}, None, None
        print(f"[nyuv2] {absent['normals']}: preparing images and depth only, no normals", file=sys.stderr)
    used = [mat_path, *([pklz] if normals is not None else []),
            *([raw_dir / "splits.mat"] if split_source == "official" else
              [raw_dir / "surfacenormal_metadata" / f"{s}_SN40.json" for s in ("train", "test")])]
    frames = _geonet_frames(raw_dir / "nyu_geonet") if geonet else []
    options = {"split_source": split_source, "test_depth": test_depth, "geonet": geonet, "size": SIZE,
               "geonet_mask": geonet_mask, "geonet_uint8": geonet_uint8}
    fields = FIELDS if normals is not None else {k: v for k, v in FIELDS.items() if k != "normals"}
    path = root.dataset_store(name)
    root.ensure_writable(path.parent)
    h5 = open_hdf5(mat_path, "the MATLAB v7.3 (HDF5) labeled set")
    with h5:
        for key in ("images", "depths", "rawDepths"):
            if key not in h5:
                raise MidprobeError(f"{mat_path} has no {key!r}; expected NYU's images, depths, rawDepths")
        n = h5["images"].shape[0]
        if h5["images"].shape[1:] != (3, 640, 480):
            raise MidprobeError(f"{mat_path}: images has shape {h5['images'].shape}, expected (N, 3, 640, 480)")
        for split, index in splits.items():
            if not len(index):
                raise MidprobeError(f"the {split} split ({split_source}) lists no frames; expected at least one")
            if index.min() < 0 or index.max() >= n or (normals is not None and any(int(i) not in rows for i in index)):
                raise MidprobeError(f"{split} split indexes frames outside the {n} labeled frames or the normals")
        source = ("train: " + ("GeoNet (Qi et al.)" if geonet else "Ladicky et al. (FAIR all_normals)")
                  + "; test: Ladicky et al. (FAIR all_normals)")
        writer = create_dataset_store(
            path, name=name, source=f"raw:{raw_fingerprint(raw_dir, used, frames)}", options=options,
            attrs={"loader": "nyuv2", "depth_kind": "metric", "depth_range": [0.001, MAX_DEPTH],
                   "tasks": ["depth", "normals"] if normals is not None else ["depth"],
                   **({"normals_source": source} if normals is not None else {"absent_targets": absent})})
        bar = tqdm(total=len(splits["test"]) + (len(frames) if geonet else len(splits["train"])),
                   unit="img", desc=name, disable=not progress, file=sys.stderr)
        for split, index in splits.items():
            if split == "train" and geonet:
                out = writer.split("train", num_images=len(frames), height=SIZE, width=SIZE, fields=fields)
                for frame in frames:
                    arrays = geonet_frame(frame, mask=geonet_mask, cast=geonet_uint8)
                    out.append({k: arrays[k][None] for k in fields})
                    bar.update(1)
                continue
            out = writer.split(split, num_images=len(index), height=SIZE, width=SIZE, fields=fields)
            depth_key = test_depth if split == "test" else "depths"
            for i in (int(i) for i in index):
                frame = {"images": read_hdf5(h5, "images", i, path=mat_path).transpose(2, 1, 0),
                         "depth": clean_depth(read_hdf5(h5, depth_key, i, path=mat_path).T,
                                              where=f"{mat_path}, {depth_key!r} of frame {i + 1} (1-based)")}
                if normals is not None:
                    r = rows[i]
                    n_valid = np.asarray(valid[r]) > 0.5
                    check_normals(np.asarray(normals[r]), n_valid, where=f"{pklz}, frame {i + 1} (1-based)",
                                  expected="finite, non-zero normals where all_valid_depth_masks is 1")
                    frame["normals"] = np.where(n_valid[..., None], normals[r], 0.0).astype(np.float32)
                out.append({k: centre_crop(v)[None] for k, v in frame.items()})
                bar.update(1)
        bar.close()
        writer.finish()
    return path
