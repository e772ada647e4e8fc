"""PASCAL VOC 2007 generic object segmentation: every object instance is foreground, 480 x 480.

Raw files under ``RAW`` (default ``data/raw/voc``): VOCtrainval_06-Nov-2007.tar and
VOCtest_06-Nov-2007.tar both extracted there, giving ``VOCdevkit/VOC2007/`` with
``JPEGImages/<id>.jpg``, ``SegmentationObject/<id>.png`` (8-bit palette: 0 background,
1..K instances, 255 the void band) and ``ImageSets/Segmentation/{trainval,test}.txt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cache import DataRoot, MidprobeError, create_dataset_store
from extract.datasets.raw import image_mode, raw_fingerprint, read_image, read_text, require, resize

SIZE = 480
IGNORE = 255
SPLITS = {"train": "trainval", "test": "test"}
RESAMPLES = ("bilinear", "lanczos")


def foreground(instances: np.ndarray, *, void_as_foreground: bool = False) -> np.ndarray:
    """Palette indices -> 1 (any instance), 0 (background), 255 (void band, ignored) ``uint8``.

    With ``void_as_foreground`` the void band counts as foreground, as the paper's code
    does (it converts the palette PNG to luma and thresholds > 0).
    """
    out = np.where(instances == 0, 0, 1).astype(np.uint8)
    if not void_as_foreground:
        out[instances == IGNORE] = IGNORE
    return out


def _ids(devkit: Path, name: str) -> list[str]:
    path = require(devkit / "ImageSets" / "Segmentation" / f"{name}.txt",
                   f"the VOC2007 segmentation list {name}.txt (from the VOC2007 {'test' if name == 'test' else 'trainval'} tar)")
    ids = [line.strip() for line in read_text(path, "a list of image ids, one per line").splitlines() if line.strip()]
    if not ids:
        raise MidprobeError(f"{path} lists no images; expected one image id per line")
    return ids


def prepare_voc(*, root: DataRoot, raw: str | None = None, name: str = "voc", void_as_foreground: bool = False,
                resample: str = "bilinear", progress: bool = True) -> Path:
    """Write ``stores/datasets/<name>.zarr``: train = VOC2007 seg trainval, test = VOC2007 seg test.

    Images are resized to 480 x 480 with ``resample`` (``lanczos``: the paper's ``Image.LANCZOS``,
    midvision-probe evals/datasets/voc.py:62-65), masks with nearest neighbour.
    """
    from cache.progress import tqdm_like as tqdm

    if resample not in RESAMPLES:
        raise MidprobeError(f"voc option resample={resample!r}: expected one of {', '.join(RESAMPLES)}")
    raw_dir = Path(raw) if raw else root.raw("voc")
    devkit = require(raw_dir / "VOCdevkit" / "VOC2007", "the extracted VOC2007 tars (VOCdevkit/VOC2007)")
    ids = {split: _ids(devkit, name) for split, name in SPLITS.items()}
    files = {split: [(devkit / "JPEGImages" / f"{i}.jpg", devkit / "SegmentationObject" / f"{i}.png") for i in v]
             for split, v in ids.items()}
    for pairs in files.values():
        for jpg, png in pairs:
            require(jpg, "a VOC JPEG image")
            require(png, "a VOC SegmentationObject palette PNG")
    lists = [devkit / "ImageSets" / "Segmentation" / f"{n}.txt" for n in SPLITS.values()]
    images = [p for pairs in files.values() for pair in pairs for p in pair]
    options = {"size": SIZE, "void_as_foreground": void_as_foreground, "image_resample": resample}
    path = root.dataset_store(name)
    root.ensure_writable(path.parent)
    writer = create_dataset_store(path, name=name, source=f"raw:{raw_fingerprint(raw_dir, lists, images)}", options=options,
                                  attrs={"loader": "voc", "tasks": ["segmentation"], "ignore_label": IGNORE,
                                         "void_band": "foreground" if void_as_foreground else "ignored"})
    fields = {"images": ((SIZE, SIZE, 3), "uint8"), "foreground": ((SIZE, SIZE), "uint8")}
    bar = tqdm(total=sum(map(len, files.values())), unit="img", desc=name, disable=not progress, file=sys.stderr)
    for split, pairs in files.items():
        out = writer.split(split, num_images=len(pairs), height=SIZE, width=SIZE, fields=fields)
        for jpg, png in pairs:
            if image_mode(png) != "P":
                raise MidprobeError(f"{png} is a {image_mode(png)} image; expected an 8-bit palette (P) PNG")
            mask = read_image(png, mode=None)
            image = read_image(jpg)
            if image.shape[:2] != mask.shape:
                raise MidprobeError(f"{png} is {mask.shape}, its image {jpg} {image.shape[:2]}; expected the same size")
            out.append({"images": resize(image, (SIZE, SIZE), resample=resample)[None],
                        "foreground": resize(foreground(mask, void_as_foreground=void_as_foreground), (SIZE, SIZE),
                                             nearest=True)[None]})
            bar.update(1)
    bar.close()
    writer.finish()
    return path
