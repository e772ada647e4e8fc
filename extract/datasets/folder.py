"""Your own data: a folder of images with any of depth, normals, masks, cameras, pairs and triplets.

``make data DATASET=folder RAW=path/to/mine [NAME=mine] [SIZE=224|HxW] [DEPTH_SCALE=0.001]`` writes
``stores/datasets/<name>.zarr`` (default name: the folder's). The layout is found and checked by
:mod:`extract.datasets.folder_layout`, values are read by :mod:`extract.datasets.folder_files`;
this module fits every image to the output size (centre crop or pad, K following) and writes
the store: ``train`` / ``test`` with the dense targets present, ``pairs`` (images, depth, K,
pose; relations ``pairs`` and ``pair_rotation_deg``) and ``triplets`` (``triplets``,
``triplet_answer``). Root attributes ``tasks`` and ``absent_targets`` say what it supports.
With ``check=True`` every file is read and checked and nothing is written.
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cache import DataRoot, MidprobeError, create_dataset_store
from cache.camera import relative_rotation_deg
from extract.datasets.folder_files import read_depth, read_mask, read_normals
from extract.datasets.folder_layout import Item, Layout, scan
from extract.datasets.raw import raw_fingerprint, read_image, resize
from extract.datasets.memory import check_fits
from extract.datasets.values import first_bad

FITS = ("crop", "pad")
#: a depth beyond this (metres) is a unit mistake, not a measurement, unless max_depth masks it
FARTHEST = 10_000.0
#: store key -> the task it serves
TASK_OF = {"depth": "depth", "normals": "normals", "foreground": "segmentation", "pairs": "correspondence",
           "triplets": "similarity"}


@dataclass(frozen=True)
class Fit:
    """How one image reaches the output size: the source ``box = (top, left, height, width)`` is
    resized to ``scaled = (h, w)`` and placed at ``offset = (top, left)`` of the output ``out = (H, W)``."""

    box: tuple[int, int, int, int]
    scaled: tuple[int, int]
    offset: tuple[int, int]
    out: tuple[int, int]

    def apply(self, array: np.ndarray, *, nearest: bool, fill: float = 0) -> np.ndarray:
        """``(h0, w0[, C])`` source -> ``(H, W[, C])``: bilinear for images, nearest for targets."""
        top, left, height, width = self.box
        scaled = resize(array[top:top + height, left:left + width], self.scaled, nearest=nearest)
        if self.scaled == self.out:
            return scaled
        out = np.full((*self.out, *array.shape[2:]), fill, dtype=array.dtype)
        out[self.offset[0]:self.offset[0] + self.scaled[0], self.offset[1]:self.offset[1] + self.scaled[1]] = scaled
        return out

    def intrinsics(self, K: np.ndarray) -> np.ndarray:
        """K of the output image; pixel centres stay at integers: u' = (u - left + 0.5) s - 0.5 + offset."""
        top, left, height, width = self.box
        sy, sx = self.scaled[0] / height, self.scaled[1] / width
        out = np.array(K, dtype=np.float64)
        out[0, 0], out[1, 1] = K[0, 0] * sx, K[1, 1] * sy
        out[0, 2] = (K[0, 2] - left + 0.5) * sx - 0.5 + self.offset[1]
        out[1, 2] = (K[1, 2] - top + 0.5) * sy - 0.5 + self.offset[0]
        return out


def plan_fit(size: tuple[int, int], out: tuple[int, int], how: str) -> Fit:
    """``crop``: the centred box of the output's aspect, resized; ``pad``: the whole image resized
    to fit inside, centred, the border filled (image black, targets "no data", masks ignored)."""
    (h, w), (H, W) = size, out
    if how == "crop":
        if w * H > h * W:
            height, width = h, min(w, max(1, round(h * W / H)))
        else:
            height, width = min(h, max(1, round(w * H / W))), w
        return Fit(((h - height) // 2, (w - width) // 2, height, width), (H, W), (0, 0), (H, W))
    scale = min(H / h, W / w)
    scaled = (min(H, max(1, round(h * scale))), min(W, max(1, round(w * scale))))
    return Fit((0, 0, h, w), scaled, ((H - scaled[0]) // 2, (W - scaled[1]) // 2), (H, W))


def parse_size(size: int | str) -> tuple[int, int]:
    """``224`` or ``"224"`` -> (224, 224); ``"480x640"`` -> (480, 640) (height x width)."""
    match = re.fullmatch(r"\s*(\d+)\s*(?:[xX]\s*(\d+)\s*)?", str(size))
    if not match or min(int(v) for v in match.groups() if v) < 16:
        raise MidprobeError(f"size {size!r}: expected S or HxW in pixels (each >= 16), e.g. 224 or 480x640")
    height = int(match.group(1))
    return height, int(match.group(2) or height)


def _check_options(fit: str, depth_scale: float, max_depth: float, normals_frame: str, mask_255: str) -> None:
    choices = {"fit": (fit, FITS), "normals_frame": (normals_frame, ("opencv", "opengl")),
               "mask_255": (mask_255, ("ignore", "foreground"))}
    for key, (value, allowed) in choices.items():
        if value not in allowed:
            raise MidprobeError(f"option {key}={value!r}: expected {' or '.join(allowed)}")
    if not depth_scale > 0 or not max_depth >= 0:
        raise MidprobeError(f"depth_scale={depth_scale}, max_depth={max_depth}: expected depth_scale > 0 "
                            "(metres per depth-PNG unit) and max_depth >= 0 (0 = no limit)")


def store_name(name: str, raw_dir: Path) -> str:
    """``name``, or the folder's name; a name that could not be a file name or is a built-in dataset's is refused."""
    from extract.datasets import DATASETS

    chosen = name or raw_dir.resolve().name
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", chosen):
        raise MidprobeError(f"store name {chosen!r}: expected letters, digits, '.', '_' or '-' (set NAME=)")
    if chosen in DATASETS and chosen != "folder":
        raise MidprobeError(f"store name {chosen!r} is a built-in dataset's; choose another NAME=")
    return chosen


def load_item(item: Item, layout: Layout, fit: Fit, *, depth_scale: float, max_depth: float,
              normals_frame: str, mask_255: str) -> dict[str, np.ndarray]:
    """One image and its targets at the output size: ``images (H, W, 3) uint8``, ``depth (H, W)``
    metres, ``normals (H, W, 3)``, ``foreground (H, W) uint8``, ``K (3, 3)``, ``pose (4, 4)`` float32."""
    out = {"images": fit.apply(read_image(item.image, exif=True), nearest=False)}
    if "depth" in item.targets:
        depth = read_depth(item.targets["depth"], depth_scale=depth_scale)
        if max_depth > 0:
            depth[depth > max_depth] = 0.0          # masked: "no measurement" (docs/own-data.md)
        elif (depth > FARTHEST).any():
            row, col = first_bad(depth > FARTHEST)
            raise MidprobeError(f"{item.targets['depth']}: {int((depth > FARTHEST).sum())} depth values beyond "
                                f"{FARTHEST:g} m (first {depth[row, col]:g} m at row {row}, column {col}); expected "
                                "metres (check DEPTH_SCALE), or set OPTIONS=max_depth=<metres> to mask farther values")
        out["depth"] = fit.apply(depth, nearest=True)
    if "normals" in item.targets:
        out["normals"] = fit.apply(read_normals(item.targets["normals"], frame=normals_frame), nearest=True)
    if "masks" in item.targets:
        out["foreground"] = fit.apply(read_mask(item.targets["masks"], mask_255=mask_255), nearest=True, fill=255)
    if layout.cameras is not None and item.name in layout.cameras:
        K, pose = layout.cameras[item.name]
        out["K"], out["pose"] = fit.intrinsics(K).astype(np.float32), pose.astype(np.float32)
    return out


def _unique(groups: Iterable[tuple[str, ...]]) -> list[str]:
    return list(dict.fromkeys(name for group in groups for name in group))


def supported(layout: Layout) -> tuple[list[str], dict[str, str]]:
    """The tasks a store of ``layout`` supports, and ``{store key: why it is absent}`` for the others."""
    folders = " and ".join(str(base) for base in layout.bases)
    present = {"depth": "depth" in layout.targets, "normals": "normals" in layout.targets,
               "foreground": "masks" in layout.targets, "pairs": layout.pairs is not None,
               "triplets": layout.triplets is not None}
    why = {"depth": f"no depth/ folder in {folders}", "normals": f"no normals/ folder in {folders}",
           "foreground": f"no masks/ folder in {folders}",
           "pairs": f"no pairs.csv in {layout.raw} (correspondence needs pairs.csv, cameras.json and depth/)",
           "triplets": f"no triplets.csv in {layout.raw}"}
    absent = {key: f"{why[key]}; see docs/own-data.md" for key in TASK_OF if not present[key]}
    return [TASK_OF[key] for key in TASK_OF if present[key]], absent


def prepare_folder(*, root: DataRoot, raw: str | None = None, name: str = "", size: str = "224", fit: str = "crop",
                   depth_scale: float = 0.001, max_depth: float = 0.0, normals_frame: str = "opencv",
                   mask_255: str = "ignore", seed: int = 0, test_fraction: float = 0.2, check: bool = False,
                   progress: bool = True) -> Path | str:
    """Write ``stores/datasets/<name>.zarr`` from a folder in the documented layout; returns its path.

    With ``check`` every file is read and checked and nothing is written; returns a summary.
    """
    from cache.progress import tqdm_like as tqdm

    _check_options(fit, depth_scale, max_depth, normals_frame, mask_255)
    if not raw and not name:
        raise MidprobeError("the folder dataset needs RAW=<your folder> (or NAME=<name> for data/raw/<name>)")
    raw_dir = Path(raw) if raw else root.raw(name)
    name = store_name(name, raw_dir)
    out_size = parse_size(size)
    check_fits(*out_size, what="size")
    layout = scan(raw_dir, seed=seed, test_fraction=test_fraction)
    tasks, absent = supported(layout)
    dense = [key for key in ("depth", "normals", "foreground") if key not in absent]
    reading = {"depth_scale": depth_scale, "max_depth": max_depth, "normals_frame": normals_frame,
               "mask_255": mask_255}
    if check:
        order = {"all": list(layout.items)}
    else:
        order = {"train": layout.split["train"] if dense else [], "test": layout.split["test"] if dense else [],
                 "pairs": _unique(layout.pairs or []), "triplets": _unique(t[:3] for t in layout.triplets or [])}
    bar = tqdm(total=sum(map(len, order.values())), unit="img", desc=name, disable=not progress, file=sys.stderr)

    def load(names: list[str]) -> Iterable[dict[str, np.ndarray]]:
        for image in names:
            item = layout.items[image]
            yield load_item(item, layout, plan_fit(item.size, out_size, fit), **reading)
            bar.update(1)

    try:
        if check:
            return _check(layout, load(order["all"]), name, tasks, absent, dense, max_depth)
        return _write(root, layout, name, out_size, order, load, tasks, absent, dense, options={
            "size": list(out_size), "fit": fit, "seed": seed, "test_fraction": test_fraction, **reading})
    finally:
        bar.close()


def _no_foreground(layout: Layout) -> MidprobeError:
    return MidprobeError(f"no mask in {layout.raw} marks any pixel as foreground (255 means ignore); expected "
                         "1 (or 1..254) for the object — for 0/255 masks set OPTIONS=mask_255=foreground")


def _no_depth(layout: Layout, split: str, max_depth: float) -> MidprobeError:
    masked = f", or beyond max_depth={max_depth:g} m" if max_depth > 0 else ""
    return MidprobeError(f"no depth file of the {split} split of {layout.raw} holds a measured pixel (every value "
                         f"is 0 or NaN{masked}); expected depth > 0 m somewhere in both train and test")


def _check(layout: Layout, arrays: Iterable[dict[str, np.ndarray]], name: str, tasks: list[str],
           absent: dict[str, str], dense: list[str], max_depth: float) -> str:
    foreground = False
    split_of = {image: split for split, names in layout.split.items() for image in names}
    measured = {split: 0 for split in layout.split}
    for image, item in zip(layout.items, arrays):
        foreground |= bool((item.get("foreground", np.zeros(1)) == 1).any())
        if "depth" in item and image in split_of:
            measured[split_of[image]] += int((item["depth"] > 0).sum())
    if "foreground" in dense and not foreground:
        raise _no_foreground(layout)
    for split, count in measured.items():
        if "depth" in dense and not count:
            raise _no_depth(layout, split, max_depth)
    split = (f"train {len(layout.split['train'])} / test {len(layout.split['test'])} ({layout.split_source})"
             if dense else "no train/test split (no dense targets)")
    lines = [f"{layout.raw}: {len(layout.items)} images, {split}; targets: {', '.join(layout.targets) or 'none'}; "
             f"{len(layout.pairs or [])} pairs; {len(layout.triplets or [])} triplets",
             f"store {name!r} would support: {', '.join(tasks)}",
             *[f"absent {key}: {why}" for key, why in absent.items()],
             "every file read and checked: no errors; nothing written"]
    return "\n".join(lines)


def _fields(height: int, width: int, keys: Iterable[str]) -> dict[str, tuple[tuple[int, ...], str]]:
    shapes = {"images": ((height, width, 3), "uint8"), "depth": ((height, width), "float32"),
              "normals": ((height, width, 3), "float32"), "foreground": ((height, width), "uint8"),
              "K": ((3, 3), "float32"), "pose": ((4, 4), "float32")}
    return {key: shapes[key] for key in ("images", *keys)}


def _write(root: DataRoot, layout: Layout, name: str, out_size: tuple[int, int], order: dict[str, list[str]],
           load, tasks: list[str], absent: dict[str, str], dense: list[str], *, options: dict[str, Any]) -> Path:
    height, width = out_size
    bulk = [p for item in layout.items.values() for p in (item.image, *item.targets.values())]
    path = root.dataset_store(name)
    root.ensure_writable(path.parent)
    writer = create_dataset_store(
        path, name=name, source=f"raw:{raw_fingerprint(layout.raw, layout.metadata, bulk)}", options=options,
        attrs={"loader": "folder", "tasks": tasks, "absent_targets": absent, "depth_kind": "metric",
               "raw_folder": str(layout.raw.resolve()), "split_source": layout.split_source})
    deepest, foreground = 0.0, False
    for split in ("train", "test"):
        if not order[split]:
            continue
        out = writer.split(split, num_images=len(order[split]), height=height, width=width,
                           fields=_fields(height, width, dense), attrs={"image_names": order[split]})
        measured = 0
        for arrays in load(order[split]):
            if split == "train" and "depth" in arrays:
                deepest = max(deepest, float(arrays["depth"].max()))
            measured += int((arrays["depth"] > 0).sum()) if "depth" in arrays else 0
            foreground |= bool((arrays.get("foreground", np.zeros(1)) == 1).any())
            out.append({key: arrays[key][None] for key in ("images", *dense)})
        if "depth" in dense and not measured:       # the store stays unfinished: nothing presented as complete
            raise _no_depth(layout, split, options["max_depth"])
    if "foreground" in dense and not foreground:
        raise _no_foreground(layout)
    if "depth" in dense:
        # the depth probe's bins span this range: the user's limit, else the deepest train value
        writer.root.attrs["depth_range"] = [0.001, options["max_depth"] or max(deepest, 0.01)]
    if order["pairs"]:
        index = {image: i for i, image in enumerate(order["pairs"])}
        out = writer.split("pairs", num_images=len(index), height=height, width=width,
                           fields=_fields(height, width, ("depth", "K", "pose")), attrs={"image_names": order["pairs"]})
        poses = []
        for arrays in load(order["pairs"]):
            poses.append(arrays["pose"])
            out.append({key: arrays[key][None] for key in ("images", "depth", "K", "pose")})
        out.put_relation("pairs", np.array([[index[a], index[b]] for a, b in layout.pairs], np.int32))
        out.put_relation("pair_rotation_deg", np.array([relative_rotation_deg(poses[index[a]], poses[index[b]])
                                                        for a, b in layout.pairs], np.float32))
    if order["triplets"]:
        index = {image: i for i, image in enumerate(order["triplets"])}
        out = writer.split("triplets", num_images=len(index), height=height, width=width,
                           fields=_fields(height, width, ()), attrs={"image_names": order["triplets"]})
        for arrays in load(order["triplets"]):
            out.append({"images": arrays["images"][None]})
        out.put_relation("triplets", np.array([[index[n] for n in t[:3]] for t in layout.triplets], np.int32))
        out.put_relation("triplet_answer", np.array([t[3] for t in layout.triplets], np.int8),
                         meaning="index (0 or 1) of the candidate closer to the reference")
    writer.finish()
    return path
