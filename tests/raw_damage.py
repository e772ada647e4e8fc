"""Damage, in each raw format: functions ``damage(data root folder)`` that the bad-input matrix
(tests/test_bad_inputs.py) applies to a good copy of a dataset's raw files."""

from __future__ import annotations

import gzip
import json
import pickle
import shutil
from pathlib import Path
from typing import Callable

import h5py
import numpy as np

from tests import dataset_fixtures as fx

NYU, META = "raw/nyuv2/", "raw/nyuv2/surfacenormal_metadata/"


def truncate(rel: str, keep: float = 0.5) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        path = data / rel
        path.write_bytes(path.read_bytes()[:max(1, int(path.stat().st_size * keep))])
    return damage


def scramble(rel: str, start: int = 16) -> Callable[[Path], None]:
    """Keep the first ``start`` bytes (the magic number, so the type looks right) and garble the rest."""
    def damage(data: Path) -> None:
        path = data / rel
        head = path.read_bytes()[:start]
        path.write_bytes(head + bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)))
    return damage


def replace_with(rel: str, content: bytes) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        (data / rel).write_bytes(content)
    return damage


def remove(rel: str) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        shutil.rmtree(data / rel)
    return damage


def savemat(rel: str, **variables: object) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        from scipy.io import savemat as save

        save(str(data / rel), variables)
    return damage


def pickled(rel: str, obj: object) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        with gzip.open(data / rel, "wb") as handle:
            pickle.dump(obj, handle)
    return damage


def npz(rel: str, **arrays: np.ndarray) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        np.savez(data / rel, **arrays)
    return damage


def hdf5_pixel(rel: str, key: str, frame: int, row: int, col: int, value: float) -> Callable[[Path], None]:
    """Set pixel (row, col) of the upright ``frame`` of ``key`` (h5py sees MATLAB's axes reversed: (N, W, H))."""
    def damage(data: Path) -> None:
        with h5py.File(data / rel, "r+") as f:
            f[key][frame, col, row] = value
    return damage


def pklz_normal(frame: int, row: int, col: int, value: tuple[float, float, float]) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        path = data / META / "all_normals.pklz"
        with gzip.open(path, "rb") as handle:
            content = pickle.load(handle)       # our own fixture, written just before
        content["all_normals"][frame, row, col] = value
        with gzip.open(path, "wb") as handle:
            pickle.dump(content, handle)
    return damage


def write_geonet(path: Path, key: str, values: dict[tuple[int, int], object]) -> None:
    """A GeoNet frame (the fixture's: depth 2 m, norm (0, 1, 0), mask 0 in columns < 100), values set at (row, col)."""
    from scipy.io import loadmat, savemat as save

    fx.write_geonet_frame(path.parent, path.name)
    mat = {k: v for k, v in loadmat(str(path)).items() if not k.startswith("__")}
    for (row, col), value in values.items():
        mat[key][row, col] = value
    save(str(path), mat)


def geonet_value(key: str, row: int, col: int, value: object) -> Callable[[Path], None]:
    return lambda data: write_geonet(data / NYU / "nyu_geonet" / "a.mat", key, {(row, col): value})


def json_edit(rel: str, edit: Callable[[object], None]) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        content = json.loads((data / rel).read_text())
        edit(content)
        (data / rel).write_text(json.dumps(content))        # NaN and Infinity as Python's json writes them
    return damage
