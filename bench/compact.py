"""Compact caches: int8 against float16 stores of the same backbone, and the alternatives measured.

- ``int8_bytes_vs_fp16``: bytes on disk of the int8 store over the float16 store (ViT-B/16 at 224 px).
- ``int8_max_headline_delta_points``: the largest change of any headline (depth δ1, normals %
  within 11.25°, IoU, 2AFC F1, correspondence recall @ 5 px) between the two stores, linear and
  ridge heads, same seeds, in points.
- ``int8_zstd_ratio`` / ``fp16_zstd_ratio``: zstd-compressed over raw bytes of the chunks (does
  compression pay?).
- ``fp8_e4m3_rmse_vs_int8``: reconstruction RMSE of float8 e4m3 (per-image-channel scale to
  448) over int8's, on the same maps (which 8-bit format keeps more).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from bench.common import temporary_root
from cache import open_features
from cache.quantize import quantize

MODEL = "vit_b_random"
SIZES = {"train": 64, "test": 32, "pairs": 8, "triplets": 16, "size": 224, "seed": 0}
HEADLINES = {"depth": "d1", "normals": "within_11.25", "segmentation": "iou", "similarity": "f1",
             "correspondence": "recall_2d_5px"}


def _chunk_bytes(store: Path) -> int:
    return sum(p.stat().st_size for p in store.rglob("*") if p.is_file() and "/c/" in str(p))


def _zstd_ratio(arrays: list[np.ndarray]) -> float:
    from numcodecs import Zstd

    codec = Zstd(level=3)
    raw = sum(a.nbytes for a in arrays)
    return sum(len(codec.encode(np.ascontiguousarray(a))) for a in arrays) / raw


def _fp8_vs_int8(maps: np.ndarray) -> float:
    import torch

    x = maps.astype(np.float32)
    int8 = np.sqrt(np.mean((quantize(x).dequantize() - x) ** 2))
    peak = np.abs(x).max(axis=(2, 3), keepdims=True)
    scale = np.where(peak > 0, peak / 448.0, 1.0)
    fp8 = torch.from_numpy(x / scale).to(torch.float8_e4m3fn).float().numpy() * scale
    return float(np.sqrt(np.mean((fp8 - x) ** 2)) / int8)


def compact_features() -> dict[str, float]:
    from extract.datasets import prepare
    from extract.runner import extract
    from probe.run import run_task

    with temporary_root("compact") as root:
        prepare("synthetic", root=root, progress=False, contact_sheet=False, **SIZES)
        for precision in ("fp16", "int8"):
            extract(model=MODEL, dataset="synthetic", root=root, precision=precision, progress=False)
        sizes = {p: _chunk_bytes(root.feature_store("synthetic", MODEL, p)) for p in ("fp16", "int8")}
        deltas = []
        for task, headline in HEADLINES.items():
            heads = ["linear", "ridge"] if task in ("depth", "normals", "segmentation") else None
            scores = {p: {r["probe"]: r[headline] for r in run_task(task_name=task, dataset="synthetic", models=[MODEL],
                                                                    heads=heads, precision=p, root=root, quiet=True)}
                      for p in ("fp16", "int8")}
            deltas += [abs(scores["int8"][k] - scores["fp16"][k]) * 100 for k in scores["fp16"]]
        fp16 = open_features("synthetic", MODEL, "train", root=root)
        int8 = open_features("synthetic", MODEL, "train", root=root, precision="int8")
        maps16 = [fp16.array(layer)[:16] for layer in fp16.layers]
        maps8 = [int8.array(layer)[:16] for layer in int8.layers]
        return {"int8_bytes_vs_fp16": sizes["int8"] / sizes["fp16"],
                "int8_max_headline_delta_points": max(deltas),
                "int8_zstd_ratio": _zstd_ratio(maps8), "fp16_zstd_ratio": _zstd_ratio(maps16),
                "fp8_e4m3_rmse_vs_int8": float(np.mean([_fp8_vs_int8(m) for m in maps16]))}
