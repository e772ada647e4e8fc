"""Helpers shared by the benchmarks: temporary data roots and timing."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from cache import DataRoot, create_dataset_store, data_root


@contextlib.contextmanager
def temporary_root(prefix: str) -> Iterator[DataRoot]:
    folder = Path(tempfile.mkdtemp(prefix=f"midprobe-bench-{prefix}-"))
    try:
        yield data_root(folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def random_dataset(root: DataRoot, *, name: str, splits: dict[str, int], size: int, seed: int = 0,
                   targets: bool = True) -> None:
    """Random images with depth, normals and foreground targets (``targets=False``: images only);
    timings do not depend on content."""
    rng = np.random.default_rng(seed)
    writer = create_dataset_store(root.dataset_store(name), name=name, source=f"bench:{seed}",
                                  attrs={"depth_kind": "metric"})
    fields = {"images": ((size, size, 3), "uint8")}
    if targets:
        fields.update({"depth": ((size, size), "float32"), "normals": ((size, size, 3), "float32"),
                       "foreground": ((size, size), "uint8")})
    for split, n in splits.items():
        out = writer.split(split, num_images=n, height=size, width=size, fields=fields, chunk_images=64)
        for start in range(0, n, 64):
            m = min(64, n - start)
            arrays = {"images": rng.integers(0, 256, (m, size, size, 3), dtype=np.uint8)}
            if targets:
                normals = rng.normal(size=(m, size, size, 3)).astype(np.float32)
                normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
                arrays.update({"depth": rng.uniform(0.5, 8.0, (m, size, size)).astype(np.float32), "normals": normals,
                               "foreground": rng.integers(0, 2, (m, size, size), dtype=np.uint8)})
            out.append(arrays)
    writer.finish()


class Timer:
    def __enter__(self) -> "Timer":
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        self.seconds = time.perf_counter() - self.start


def median_seconds(fn: Callable[[], object], *, repeats: int) -> float:
    """Median wall time of ``repeats`` calls: short timings on a shared machine are noisy."""
    times = []
    for _ in range(repeats):
        with Timer() as timer:
            fn()
        times.append(timer.seconds)
    return float(np.median(times))


def interleaved_medians(fns: dict[str, Callable[[], object]], *, repeats: int) -> dict[str, float]:
    """Median wall time of each function over ``repeats`` rounds that call every function once, in
    turn: on a shared machine the load changes over time, and a ratio of two timings should see
    the same load on both sides."""
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            with Timer() as timer:
                fn()
            times[name].append(timer.seconds)
    return {name: float(np.median(t)) for name, t in times.items()}
