"""The folder dataset's layout: which files a user's folder holds, matched and checked before any pixel is read.

``RAW/images/<name>.{jpg,jpeg,png}`` (``<name>`` may contain sub-folders) with any of
``depth/``, ``normals/``, ``masks/`` holding ``<name>.<suffix>`` for every image, and the
optional ``cameras.json``, ``pairs.csv``, ``triplets.csv``, ``split.csv``; or the same folders
under ``RAW/train/`` and ``RAW/test/``. Files are read and their values checked by
:mod:`extract.datasets.folder_files`; docs/own-data.md is the user's
description of the format.
"""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from cache import MidprobeError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
#: target folder -> accepted suffixes, and what a file there should be (for messages)
TARGETS = {"depth": ((".png", ".npy"), "a 16-bit PNG (DEPTH_SCALE metres per unit) or a .npy of metres"),
           "normals": ((".npy", ".png"), "a .npy of unit vectors (H, W, 3) or an RGB PNG encoding (n + 1) / 2"),
           "masks": ((".png",), "a binary, greyscale or palette PNG")}
CONVENTIONS = ("opencv", "opengl")
#: a camera-to-world rotation passes when |R^T R - I| and |det R - 1| are below this
RIGID_TOLERANCE = 1e-3
SPLITS = ("train", "test")


@dataclass(frozen=True)
class Item:
    """One image and its target files; ``size`` is ``(H, W)`` after EXIF orientation."""

    name: str
    image: Path
    size: tuple[int, int]
    targets: dict[str, Path] = field(default_factory=dict)


@dataclass
class Layout:
    """A checked folder: its images by name, the split, the cameras and the relations."""

    raw: Path
    bases: tuple[Path, ...]                         # RAW, or RAW/train and RAW/test
    items: dict[str, Item]
    split: dict[str, list[str]]
    split_source: str
    targets: tuple[str, ...]                        # target folders present: depth, normals, masks
    cameras: dict[str, tuple[np.ndarray, np.ndarray]] | None = None   # name -> K (3, 3), OpenCV pose (4, 4)
    pairs: list[tuple[str, str]] | None = None
    triplets: list[tuple[str, str, str, int]] | None = None
    metadata: list[Path] = field(default_factory=list)   # files fingerprinted by contents


def _visible(path: Path, base: Path) -> bool:
    return not any(part.startswith(".") for part in path.relative_to(base).parts)


def _files(folder: Path, suffixes: tuple[str, ...], what: str) -> dict[str, Path]:
    """``name -> path`` of every file under ``folder``; another suffix or a repeated name is an error."""
    out: dict[str, Path] = {}
    dangling = sorted(p for p in folder.rglob("*") if p.is_symlink() and not p.exists() and _visible(p, folder))
    if dangling:            # is_file() is False for them: they would be dropped without a word
        raise MidprobeError(f"{dangling[0]} is a link to {dangling[0].readlink()}, which does not exist "
                            f"({len(dangling)} such link(s) in {folder}); expected {what}: restore the target or "
                            "delete the link")
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and _visible(p, folder)):
        if path.suffix.lower() not in suffixes:
            raise MidprobeError(f"{path}: unexpected file type; expected {what} ({', '.join(suffixes)})")
        name = path.relative_to(folder).with_suffix("").as_posix()
        if name in out:
            raise MidprobeError(f"{path} and {out[name]} have the same name; expected one file per image")
        out[name] = path
    return out


def oriented_size(path: Path) -> tuple[int, int]:
    """``(H, W)`` of an image as displayed (EXIF orientations 5-8 swap the axes), from its header only."""
    from extract.datasets.raw import open_image

    try:
        with open_image(path) as img:
            width, height = img.size
            turned = img.getexif().get(0x0112, 1) in (5, 6, 7, 8)
    except (OSError, ValueError, SyntaxError) as exc:
        raise MidprobeError(f"cannot read image {path} ({exc}); expected a valid image file") from None
    return (width, height) if turned else (height, width)


def npy_shape(path: Path) -> tuple[int, ...]:
    try:
        return tuple(np.load(path, mmap_mode="r", allow_pickle=False).shape)
    except (OSError, ValueError) as exc:
        raise MidprobeError(f"cannot read {path} ({exc}); expected a numpy .npy array") from None


def _scan_base(base: Path, kinds: tuple[str, ...]) -> dict[str, Item]:
    """The images under ``base/images`` with their files in each ``base/<kind>``, sizes matched."""
    images = _files(base / "images", IMAGE_SUFFIXES, "an image")
    if not images:
        raise MidprobeError(f"{base / 'images'} holds no image; expected .jpg, .jpeg or .png files")
    sizes = {name: oriented_size(path) for name, path in images.items()}
    targets: dict[str, dict[str, Path]] = {name: {} for name in images}
    for kind in kinds:
        suffixes, what = TARGETS[kind]
        files = _files(base / kind, suffixes, what)
        for name, path in files.items():
            if name not in images:
                raise MidprobeError(f"{path} has no image {base / 'images' / name}.*; expected a target per image")
        lacking = [name for name in images if name not in files]
        if lacking:
            expected = " or ".join(f"{base / kind / lacking[0]}{s}" for s in suffixes)
            raise MidprobeError(f"no {kind} for {images[lacking[0]]}: expected {expected} "
                                f"({len(lacking)} of {len(images)} images lack one)")
        for name, path in files.items():
            shape = npy_shape(path)[:2] if path.suffix == ".npy" else oriented_size(path)
            if shape != sizes[name]:
                raise MidprobeError(f"{path} is {shape[0]}x{shape[1]} (HxW), its image {images[name]} "
                                    f"{sizes[name][0]}x{sizes[name][1]} after EXIF orientation; expected the same size")
            targets[name][kind] = path
    return {name: Item(name, images[name], sizes[name], targets[name]) for name in images}


def read_table(path: Path, columns: tuple[str, ...]) -> list[tuple[int, dict[str, str]]]:
    """``(line, row)`` of a CSV file with a header naming at least ``columns``; blank lines skipped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in reader.fieldnames or []]
            missing = [c for c in columns if c not in header]
            if missing:
                raise MidprobeError(f"{path} lacks column {', '.join(missing)}; expected a header line "
                                    f"{','.join(columns)}")
            rows = []
            for line, row in enumerate(reader, start=2):
                row = {(k or "").strip(): (v or "").strip() for k, v in row.items()}
                if any(row.values()):
                    rows.append((line, row))
            return rows
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise MidprobeError(f"cannot read {path} ({exc}); expected a CSV file with header "
                            f"{','.join(columns)}") from None


class Names:
    """Resolves an image reference — ``0001``, ``0001.jpg`` or ``sub/0001`` — to its name."""

    def __init__(self, items: dict[str, Item]) -> None:
        self.lookup = {name: name for name in items}
        self.lookup.update({f"{name}{item.image.suffix}": name for name, item in items.items()})

    def __call__(self, ref: str, path: Path, line: int, column: str) -> str:
        if ref not in self.lookup:
            raise MidprobeError(f"{path} line {line}: {column} {ref!r} is not an image in images/; "
                                "expected an image name such as '0001' or '0001.jpg'")
        return self.lookup[ref]


def _split_csv(path: Path, items: dict[str, Item], names: Names) -> dict[str, list[str]]:
    chosen: dict[str, tuple[str, int]] = {}
    for line, row in read_table(path, ("image", "split")):
        name = names(row["image"], path, line, "image")
        if row["split"] not in SPLITS:
            raise MidprobeError(f"{path} line {line}: split {row['split']!r}; expected train or test")
        if name in chosen:
            raise MidprobeError(f"{path} line {line}: {name!r} is listed again (first at line {chosen[name][1]}); "
                                "expected each image once")
        chosen[name] = (row["split"], line)
    unlisted = [name for name in items if name not in chosen]
    if unlisted:
        raise MidprobeError(f"{path} does not list {items[unlisted[0]].image} ({len(unlisted)} images unlisted); "
                            "expected every image once, with train or test")
    return {s: [name for name in items if chosen[name][0] == s] for s in SPLITS}


def seeded_split(names: list[str], *, seed: int, test_fraction: float) -> dict[str, list[str]]:
    """A stable split: images ranked by sha256 of ``seed:name``, the first ``round(N * test_fraction)`` to test.

    An image's rank does not depend on the others, so adding images moves at most a few
    existing ones across the boundary; the same names and seed always give the same split.
    """
    if not 0.0 < test_fraction < 1.0:
        raise MidprobeError(f"test_fraction {test_fraction}: expected a fraction between 0 and 1")
    if len(names) < 2:
        raise MidprobeError(f"{len(names)} image: a train/test split needs at least 2 images")
    count = min(max(round(len(names) * test_fraction), 1), len(names) - 1)
    ranked = sorted(names, key=lambda n: hashlib.sha256(f"{seed}:{n}".encode()).hexdigest())
    test = set(ranked[:count])
    return {"train": [n for n in names if n not in test], "test": [n for n in names if n in test]}


def _matrix(value: object, shapes: tuple[tuple[int, int], ...], where: str) -> np.ndarray:
    try:
        out = np.asarray(value, dtype=np.float64)
    except (TypeError, ValueError):
        out = np.zeros(0)
    if out.shape not in shapes or not np.all(np.isfinite(out)):
        raise MidprobeError(f"{where} is not a finite {' or '.join(f'{r}x{c}' for r, c in shapes)} matrix of numbers")
    return out


def check_intrinsics(K: np.ndarray, where: str) -> np.ndarray:
    if K[0, 0] <= 0 or K[1, 1] <= 0 or K[0, 1] != 0 or K[1, 0] != 0 or not np.allclose(K[2], [0, 0, 1]):
        raise MidprobeError(f"{where} = {K.tolist()}: expected [[fx, 0, cx], [0, fy, cy], [0, 0, 1]] with "
                            "fx, fy > 0 (pixels, no skew)")
    return K


def check_rigid(pose: np.ndarray, where: str) -> np.ndarray:
    """A ``(3, 4)`` or ``(4, 4)`` camera-to-world matrix as ``(4, 4)``; it must be a rotation and a translation."""
    if pose.shape == (3, 4):
        pose = np.vstack([pose, [0, 0, 0, 1]])
    rotation = pose[:3, :3]
    off = float(np.abs(rotation.T @ rotation - np.eye(3)).max())
    det = float(np.linalg.det(rotation))
    if off > RIGID_TOLERANCE or abs(det - 1) > RIGID_TOLERANCE or not np.allclose(pose[3], [0, 0, 0, 1]):
        raise MidprobeError(f"{where} is not rigid (|R^T R - I| = {off:.3g}, det R = {det:.3g}, last row "
                            f"{pose[3].tolist()}); expected a rotation and a translation in metres")
    return pose


def read_cameras(path: Path, names: Names) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """``name -> (K, pose)``: K in pixels of the displayed image, pose camera-to-world in OpenCV axes."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise MidprobeError(f"cannot read {path} ({exc}); expected JSON with convention and cameras") from None
    if not isinstance(data, dict) or data.get("convention") not in CONVENTIONS \
            or not isinstance(data.get("cameras"), dict):
        raise MidprobeError(f"{path}: expected {{\"convention\": \"opencv\" or \"opengl\", \"cameras\": "
                            "{image: {\"K\": 3x3, \"pose\": 4x4 camera-to-world}}, optional shared \"K\"}")
    shared = check_intrinsics(_matrix(data["K"], ((3, 3),), f"{path}: K"), f"{path}: K") if "K" in data else None
    # OpenGL cameras look down -z with y up; OpenCV's axes are theirs with y and z negated
    flip = np.diag([1.0, -1.0, -1.0, 1.0]) if data["convention"] == "opengl" else np.eye(4)
    out = {}
    for ref, entry in data["cameras"].items():
        where = f"{path}: camera {ref!r}"
        if ref not in names.lookup:
            raise MidprobeError(f"{where} names no image in images/; expected an image name such as '0001'")
        if not isinstance(entry, dict) or "pose" not in entry or ("K" not in entry and shared is None):
            raise MidprobeError(f"{where}: expected {{\"K\": 3x3, \"pose\": 4x4}} (K may be shared at the top level)")
        K = check_intrinsics(_matrix(entry["K"], ((3, 3),), f"{where} K"), f"{where} K") if "K" in entry else shared
        pose = check_rigid(_matrix(entry["pose"], ((4, 4), (3, 4)), f"{where} pose"), f"{where} pose")
        if names.lookup[ref] in out:
            raise MidprobeError(f"{where} is the image {names.lookup[ref]!r} again; expected one camera per image")
        out[names.lookup[ref]] = (K, pose @ flip)
    return out


def _pairs(path: Path, names: Names, cameras: dict | None) -> list[tuple[str, str]]:
    out = []
    for line, row in read_table(path, ("image_a", "image_b")):
        a, b = names(row["image_a"], path, line, "image_a"), names(row["image_b"], path, line, "image_b")
        if a == b:
            raise MidprobeError(f"{path} line {line}: pairs {a!r} with itself; expected two different images")
        for name in (a, b):
            if cameras is not None and name not in cameras:
                raise MidprobeError(f"{path} line {line}: {name!r} has no camera in cameras.json; "
                                    "expected K and pose for every paired image")
        out.append((a, b))
    if not out:
        raise MidprobeError(f"{path} lists no pairs; expected lines image_a,image_b")
    return out


def _triplets(path: Path, names: Names) -> list[tuple[str, str, str, int]]:
    out = []
    for line, row in read_table(path, ("reference", "candidate_0", "candidate_1", "answer")):
        ref, c0, c1 = (names(row[c], path, line, c) for c in ("reference", "candidate_0", "candidate_1"))
        if len({ref, c0, c1}) < 3:
            raise MidprobeError(f"{path} line {line}: expected three different images, got {ref!r}, {c0!r}, {c1!r}")
        if row["answer"] not in ("0", "1"):
            raise MidprobeError(f"{path} line {line}: answer {row['answer']!r}; expected 0 or 1 "
                                "(the candidate closer to the reference)")
        out.append((ref, c0, c1, int(row["answer"])))
    if not out:
        raise MidprobeError(f"{path} lists no triplets; expected lines reference,candidate_0,candidate_1,answer")
    return out


def scan(raw: Path, *, seed: int = 0, test_fraction: float = 0.2) -> Layout:
    """Find, match and check every file of ``raw`` short of reading pixel values."""
    if not raw.is_dir():
        raise MidprobeError(f"missing {raw}: expected a folder with images/ (see docs/own-data.md)")
    nested = [(raw / s / "images").is_dir() for s in SPLITS]
    if (raw / "images").is_dir() and any(nested):
        raise MidprobeError(f"{raw} has both images/ and train/ or test/ sub-folders; expected one layout")
    if (raw / "images").is_dir():
        bases = {"": raw}
    elif all(nested):
        bases = {s: raw / s for s in SPLITS}
    else:
        raise MidprobeError(f"{raw} has no images/ folder (nor train/images/ and test/images/); "
                            "expected the layout of docs/own-data.md")
    present = {key: tuple(k for k in TARGETS if (base / k).is_dir()) for key, base in bases.items()}
    if len(set(present.values())) > 1:
        raise MidprobeError(f"{raw / 'train'} has target folders {', '.join(present['train']) or 'none'}, "
                            f"{raw / 'test'} has {', '.join(present['test']) or 'none'}; expected the same in both")
    targets = next(iter(present.values()))
    if not targets and not (raw / "pairs.csv").is_file() and not (raw / "triplets.csv").is_file():
        raise MidprobeError(f"{raw} has images but nothing to probe; expected depth/, normals/, masks/, pairs.csv "
                            "or triplets.csv")
    scanned = {key: _scan_base(base, targets) for key, base in bases.items()}
    items = {name: item for key in bases for name, item in scanned[key].items()}
    if len(bases) == 2:
        both = sorted(set(scanned["train"]) & set(scanned["test"]))
        if both:
            raise MidprobeError(f"{raw / 'train' / 'images'} and {raw / 'test' / 'images'} both hold {both[0]!r}; "
                                "expected image names unique across train and test")
    items = dict(sorted(items.items()))
    names = Names(items)
    metadata = [raw / f for f in ("cameras.json", "pairs.csv", "triplets.csv", "split.csv") if (raw / f).is_file()]
    if (raw / "split.csv").is_file():
        if len(bases) == 2:
            raise MidprobeError(f"{raw} has both split.csv and train/ test/ folders; expected one split source")
        split, source = _split_csv(raw / "split.csv", items, names), "split.csv"
    elif len(bases) == 2:
        split, source = {s: sorted(scanned[s]) for s in SPLITS}, "train/ and test/ folders"
    elif targets:
        split = seeded_split(list(items), seed=seed, test_fraction=test_fraction)
        source = f"seeded {round(100 * (1 - test_fraction))}/{round(100 * test_fraction)} (seed {seed})"
    else:
        split, source = {s: [] for s in SPLITS}, "none: no depth/, normals/ or masks/"
    if targets and not all(split.values()):
        raise MidprobeError(f"the split ({source}) leaves {'train' if not split['train'] else 'test'} empty; "
                            "expected images in both train and test")
    cameras = read_cameras(raw / "cameras.json", names) if (raw / "cameras.json").is_file() else None
    pairs = None
    if (raw / "pairs.csv").is_file():
        lacking = [what for what, ok in (("cameras.json", cameras is not None), ("depth/", "depth" in targets))
                   if not ok]
        if lacking:
            raise MidprobeError(f"{raw / 'pairs.csv'} needs {' and '.join(lacking)} in {raw}; expected depth, K and "
                                "pose for every paired image (correspondence)")
        pairs = _pairs(raw / "pairs.csv", names, cameras)
    triplets = _triplets(raw / "triplets.csv", names) if (raw / "triplets.csv").is_file() else None
    return Layout(raw=raw, bases=tuple(bases.values()), items=items, split=split, split_source=source,
                  targets=targets, cameras=cameras, pairs=pairs, triplets=triplets, metadata=metadata)
