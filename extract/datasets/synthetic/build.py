"""``make data DATASET=synthetic``: render the synthetic dataset into a dataset store."""

from __future__ import annotations

import multiprocessing as mp
import os
import sys
import time
from functools import partial
from pathlib import Path
from typing import Any, Callable, Iterable

import numpy as np

from cache import DataRoot, create_dataset_store
from extract.datasets.memory import check_fits
from extract.datasets.synthetic.views import MAX_MATCHES, pair_views, single_view, triplet_views

DEFAULTS = {"train": 1024, "test": 256, "pairs": 64, "triplets": 64, "size": 224, "seed": 0}
PROXY_NOTE = ("2AFC triplets are a synthetic proxy for NIGHTS: the closer candidate keeps the reference's "
              "3-D layout under new textures/lighting and a slightly moved camera; the other keeps textures "
              "and lighting with a different layout. Not human judgements.")


def _fields(size: int) -> dict[str, tuple[tuple[int, ...], str]]:
    return {"images": ((size, size, 3), "uint8"), "depth": ((size, size), "float32"),
            "normals": ((size, size, 3), "float32"), "instance": ((size, size), "int32"),
            "foreground": ((size, size), "uint8"), "K": ((3, 3), "float32"), "pose": ((4, 4), "float32")}


def _stack(views: list[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    out = {key: np.stack([v[key] for v in views]) for key in views[0] if key != "rgb"}
    out["images"] = np.stack([v["rgb"] for v in views])
    return out


def _ignore_interrupts() -> None:
    """Pool workers leave Ctrl-C to the parent: a worker that died of it took its task with it, and
    the parent's ``pool.join()`` then waited for that task forever (Ctrl-C to the process group)."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _run(pool: Any, fn: Callable, items: Iterable[int]) -> Iterable[Any]:
    return pool.imap(fn, items, chunksize=4) if pool is not None else map(fn, items)


def prepare_synthetic(*, root: DataRoot, train: int = DEFAULTS["train"], test: int = DEFAULTS["test"],
                      pairs: int = DEFAULTS["pairs"], triplets: int = DEFAULTS["triplets"],
                      size: int = DEFAULTS["size"], seed: int = DEFAULTS["seed"], workers: int | None = None,
                      progress: bool = True, contact_sheet: bool = True) -> Path:
    """Render every split and write ``stores/datasets/synthetic.zarr``; returns its path."""
    from cache.progress import tqdm_like as tqdm

    options = {"train": train, "test": test, "pairs": pairs, "triplets": triplets, "size": size, "seed": seed}
    workers = workers or min(2, os.cpu_count() or 1)
    check_fits(size, size, what="size", copies=workers)
    path = root.dataset_store("synthetic")
    root.ensure_writable(path.parent)
    writer = create_dataset_store(
        path, name="synthetic", source=f"procedural:synthetic-v1:seed={seed}", options=options,
        attrs={"depth_kind": "metric", "depth_range": [0.001, 10.0], "tasks":
               ["depth", "normals", "segmentation", "correspondence", "similarity"], "proxy_note": PROXY_NOTE})
    pool = mp.get_context("fork").Pool(workers, initializer=_ignore_interrupts) if workers > 1 else None
    total = train + test + 2 * pairs + 3 * triplets
    bar = tqdm(total=total, unit="img", desc="synthetic", disable=not progress, file=sys.stderr)
    started = time.perf_counter()
    whole = False
    try:
        for split, count in (("train", train), ("test", test)):
            out = writer.split(split, num_images=count, height=size, width=size, fields=_fields(size))
            for i, views in enumerate(_run(pool, partial(single_view, seed, split, size=size), range(count))):
                out.append(_stack(views))
                bar.update(1)
        out = writer.split("pairs", num_images=2 * pairs, height=size, width=size, fields=_fields(size))
        rotations, matches = np.zeros(pairs, np.float32), np.full((pairs, MAX_MATCHES, 4), np.nan, np.float32)
        for i, (views, rotation, m) in enumerate(_run(pool, partial(pair_views, seed, size=size), range(pairs))):
            out.append(_stack(views))
            rotations[i], matches[i, :len(m)] = rotation, m
            bar.update(2)
        out.put_relation("pairs", np.arange(2 * pairs, dtype=np.int32).reshape(pairs, 2))
        out.put_relation("pair_rotation_deg", rotations)
        out.put_relation("pair_matches", matches, layout="(P, M, 4) = (u_a, v_a, u_b, v_b) pixels; NaN rows pad")
        out = writer.split("triplets", num_images=3 * triplets, height=size, width=size, fields=_fields(size))
        answers = np.zeros(triplets, np.int8)
        for i, (views, answer) in enumerate(_run(pool, partial(triplet_views, seed, size=size), range(triplets))):
            out.append(_stack(views))
            answers[i] = answer
            bar.update(3)
        out.put_relation("triplets", np.arange(3 * triplets, dtype=np.int32).reshape(triplets, 3))
        out.put_relation("triplet_answer", answers, meaning="index (0 or 1) of the candidate closer to the reference")
        whole = True
    finally:
        bar.close()
        if pool is not None:
            # on an error or Ctrl-C the outstanding renders are not wanted: stop, do not wait
            pool.close() if whole else pool.terminate()
            pool.join()
    store = writer.finish()
    seconds = time.perf_counter() - started
    if progress:
        print(f"[data] synthetic: {total} images in {seconds:.1f} s ({total / seconds:.1f} images/s) -> {path}",
              file=sys.stderr)
    if contact_sheet:
        from extract.datasets.synthetic.contact_sheet import write_contact_sheet

        sheet = write_contact_sheet(store, root.reports() / "synthetic_contact_sheet.png")
        if progress:
            print(f"[data] contact sheet: {sheet}", file=sys.stderr)
    return path
