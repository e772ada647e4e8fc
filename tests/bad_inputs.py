"""Shared pieces of the bad-input matrix (tests/test_bad_inputs_*.py): the tiny extracted data root,
the one-line check, running a suggested ``make`` command, and folder-dataset fixtures in the folder
layout (images/, depth/ in metres, split.csv)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from cache import data_root
from extract.datasets.__main__ import main as data_main
from extract.runner import extract
from tests.conftest import write_tiny_dataset
from tests.filesystems import tree_bytes
from tests.test_cli import make_dry_run

PROBE = ("--task", "depth", "--dataset", "tiny", "--model", "pixels", "--epochs", "1", "--quiet")


def tiny_features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset (6 train / 3 test at 32x48) with the pixels backbone extracted: the data root."""
    root = data_root(tmp_path_factory.mktemp("features") / "data")
    write_tiny_dataset(root, splits={"train": 6, "test": 3}, height=32, width=48)
    extract(model="pixels", dataset="tiny", root=root, progress=False)
    return root.root


def one_line(code: int, err: str, expect: str, status: int = 2) -> None:
    assert code == status, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert re.search(expect, lines[0]), lines[0]


def unchanged(root: Path):
    before = tree_bytes(root)
    return lambda: tree_bytes(root) == before


def _run_make(target: str, words: str, data: Path) -> int:
    """Run a suggested ``make`` command through the recipe's own argv (make -n), in this process."""
    import shlex

    from midprobe.cli import main as midprobe_main

    (argv,) = [a for a in make_dry_run(target, *shlex.split(words)) if a[0].endswith("/midprobe")]
    return midprobe_main([*argv[1:], "--data", str(data)])


def _png_header(path: Path, width: int, height: int) -> None:
    """A PNG whose header claims ``width x height`` RGB pixels and holds none (no IDAT): a few bytes."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                     + chunk(b"IEND", b""))


def _depth_folder(raw: Path, depths: list[np.ndarray]) -> Path:
    """``images/NN.png`` and ``depth/NN.npy`` (metres) per depth map; the last image is the test split."""
    from PIL import Image

    (raw / "images").mkdir(parents=True)
    (raw / "depth").mkdir()
    for i, depth in enumerate(depths):
        Image.fromarray(np.full((*depth.shape, 3), 40 * i, np.uint8)).save(raw / "images" / f"{i:02d}.png")
        np.save(raw / "depth" / f"{i:02d}.npy", depth.astype(np.float32))
    (raw / "split.csv").write_text("image,split\n" + "".join(
        f"{i:02d},{'test' if i == len(depths) - 1 else 'train'}\n" for i in range(len(depths))))
    return raw


def _folder_data(raw: Path, root: Path, *extra: str) -> int:
    return data_main(["--dataset", "folder", "--raw", str(raw), "--size", "16", "--quiet", "--data", str(root), *extra])


def _no_store(root: Path) -> bool:
    return not (root / "stores" / "datasets").exists() or not any((root / "stores" / "datasets").glob("*.zarr"))


GOOD = np.full((16, 16), 2.0)
