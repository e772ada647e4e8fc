"""``python -m extract.datasets.folder_example OUT``: a small folder in the layout of "Probe your own data".

Renders synthetic rooms (:mod:`extract.datasets.synthetic`) and writes them as a user's files:
``images/`` (JPEG and PNG; ``view_001.jpg`` stored turned, with an EXIF orientation tag that
turns it back), ``depth/`` (16-bit PNGs in millimetres; ``view_002.npy`` in metres with a NaN
hole in the centre), ``normals/`` (float16 ``.npy`` and RGB PNGs), ``masks/`` (greyscale and
palette PNGs: 1 object, 0 background, 255 a one-pixel ignore band along object outlines),
``cameras.json`` (OpenCV axes), ``pairs.csv``, ``triplets.csv`` and ``split.csv``. Seeded:
the same arguments give the same files.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import sys
from pathlib import Path

import numpy as np

from cache import MidprobeError
from cache.errors import exits_on_error
from extract.datasets.synthetic.render import render
from extract.datasets.synthetic.scene import (nudged_camera, orbit_camera, random_camera, random_scene, relayout,
                                              retextured)

DEFAULTS = {"views": 24, "pairs": 4, "triplets": 4, "height": 240, "width": 320, "seed": 0}
MARKER = ".midprobe-example"
OWNED = ("images", "depth", "normals", "masks", "cameras.json", "pairs.csv", "triplets.csv", "split.csv")
ROTATED, NPY_DEPTH = "view_001", "view_002"


def _views(*, views: int, pairs: int, triplets: int, height: int, width: int, seed: int):
    """``(name, rendered view)`` in order, then the pair names and the triplets with their answers."""
    out, pair_names, triplet_rows = [], [], []
    for i in range(views):
        rng = np.random.default_rng([seed, 0, i])
        scene = random_scene(rng)
        out.append((f"view_{i:03d}", render(scene, random_camera(scene, rng, height, width)[0], height, width)))
    for i in range(pairs):
        rng = np.random.default_rng([seed, 1, i])
        cam_b = None
        while cam_b is None:
            scene = random_scene(rng)
            cam_a, target = random_camera(scene, rng, height, width)
            for _ in range(30):
                cam_b = orbit_camera(cam_a, target, float(rng.uniform(10.0, 60.0) * rng.choice([-1, 1])), scene)
                if cam_b is not None:
                    break
        names = (f"pair_{i:02d}_a", f"pair_{i:02d}_b")
        out += [(names[0], render(scene, cam_a, height, width)), (names[1], render(scene, cam_b, height, width))]
        pair_names.append(names)
    for i in range(triplets):
        rng = np.random.default_rng([seed, 2, i])
        scene = random_scene(rng)
        camera, target = random_camera(scene, rng, height, width)
        same_layout = render(retextured(scene, rng), nudged_camera(camera, target, rng, scene), height, width)
        same_look = render(relayout(scene, rng), camera, height, width)
        answer = int(rng.integers(2))
        names = tuple(f"triplet_{i:02d}_{k}" for k in ("ref", "c0", "c1"))
        candidates = [same_layout, same_look] if answer == 0 else [same_look, same_layout]
        out += list(zip(names, [render(scene, camera, height, width), *candidates]))
        triplet_rows.append((*names, answer))
    return out, pair_names, triplet_rows


def _mask(view: dict[str, np.ndarray]) -> np.ndarray:
    """1 object, 0 background, 255 where an object's outline runs (a neighbour of another instance)."""
    instance = view["instance"]
    edge = np.zeros(instance.shape, bool)
    edge[1:] |= instance[1:] != instance[:-1]
    edge[:, 1:] |= instance[:, 1:] != instance[:, :-1]
    return np.where(edge, 255, view["foreground"]).astype(np.uint8)


def _write_view(out: Path, index: int, name: str, view: dict[str, np.ndarray]) -> None:
    from PIL import Image

    rgb = view["rgb"]
    if name == ROTATED:
        exif = Image.Exif()
        exif[0x0112] = 6          # "rotate 90 degrees clockwise to display": the pixels are stored turned back
        Image.fromarray(np.ascontiguousarray(np.rot90(rgb, 1))).save(out / "images" / f"{name}.jpg", quality=95,
                                                                     exif=exif)
    else:
        Image.fromarray(rgb).save(out / "images" / f"{name}.{'jpg' if index % 2 == 0 else 'png'}",
                                  **({"quality": 95} if index % 2 == 0 else {}))
    depth = view["depth"].astype(np.float64)
    if name == NPY_DEPTH:
        h, w = depth.shape
        depth[h // 2 - h // 8:h // 2 + h // 8, w // 2 - w // 8:w // 2 + w // 8] = np.nan     # no measurement
        np.save(out / "depth" / f"{name}.npy", depth.astype(np.float32))
    else:
        Image.fromarray(np.round(depth * 1000).astype(np.uint16)).save(out / "depth" / f"{name}.png")
    normals = view["normals"]
    if index % 2 == 0:
        np.save(out / "normals" / f"{name}.npy", normals.astype(np.float16))     # half the bytes, still unit
    else:
        code = np.clip(np.round((normals + 1.0) * 127.5), 0, 255).astype(np.uint8)
        Image.fromarray(code).save(out / "normals" / f"{name}.png")
    mask = Image.fromarray(_mask(view))
    if index % 3 == 0:
        # VOC's colours: black background, index 255 (ignore) cream; putpalette makes the image mode P
        mask.putpalette([0, 0, 0, 128, 0, 0] + [0] * 3 * 253 + [224, 224, 192])
    mask.save(out / "masks" / f"{name}.png")


def write_example(out: Path, *, views: int = DEFAULTS["views"], pairs: int = DEFAULTS["pairs"],
                  triplets: int = DEFAULTS["triplets"], height: int = DEFAULTS["height"],
                  width: int = DEFAULTS["width"], seed: int = DEFAULTS["seed"]) -> Path:
    """Render and write the example folder at ``out``; an earlier example there is replaced."""
    out = Path(out)
    if views < 3 or height < 16 or width < 16 or pairs < 0 or triplets < 0:
        raise MidprobeError(f"views={views}, {height}x{width}: expected at least 3 views of at least 16x16 pixels")
    if out.exists() and any(out.iterdir()) and not (out / MARKER).exists():
        raise MidprobeError(f"{out} exists and is not an earlier example; expected a new or empty folder")
    for owned in OWNED:
        target = out / owned
        if target.is_dir():
            shutil.rmtree(target)
        else:
            target.unlink(missing_ok=True)
    for folder in OWNED[:4]:
        (out / folder).mkdir(parents=True)
    (out / MARKER).write_text("written by python -m extract.datasets.folder_example\n")
    rendered, pair_names, triplet_rows = _views(views=views, pairs=pairs, triplets=triplets, height=height,
                                                width=width, seed=seed)
    for index, (name, view) in enumerate(rendered):
        _write_view(out, index, name, view)
    cameras = {name: {"K": np.round(view["K"].astype(np.float64), 4).tolist(),
                      "pose": np.round(view["pose"].astype(np.float64), 6).tolist()} for name, view in rendered}
    (out / "cameras.json").write_text(json.dumps({"convention": "opencv", "cameras": cameras}, indent=1))
    tables = {"pairs.csv": (("image_a", "image_b"), pair_names),
              "triplets.csv": (("reference", "candidate_0", "candidate_1", "answer"), triplet_rows),
              # every fourth single view is a test image; pair and triplet images train
              "split.csv": (("image", "split"), [(name, "test" if name.startswith("view") and i % 4 == 3 else "train")
                                                 for i, (name, _) in enumerate(rendered)])}
    for file, (header, rows) in tables.items():
        if rows or file == "split.csv":
            with open(out / file, "w", newline="") as handle:
                csv.writer(handle).writerows([header, *rows])
    return out


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m extract.datasets.folder_example", description=__doc__)
    p.add_argument("out", help="the folder to write (e.g. data/raw/example)")
    for key, value in DEFAULTS.items():
        p.add_argument(f"--{key}", type=int, default=value, help=f"default {value}")
    args = p.parse_args(argv)
    path = write_example(Path(args.out), **{k: getattr(args, k) for k in DEFAULTS})
    print(f"[example] {args.views} views, {args.pairs} pairs, {args.triplets} triplets -> {path}", file=sys.stderr)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
