"""Extraction benchmarks.

- ``extract_overhead``: extraction wall time (store writes included) / the bare forward pass.
- ``extract_vs_limit``: extraction images/s / the limit the device or the disk sets (see below).
"""

from __future__ import annotations

import os
import shutil
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from bench.common import Timer, random_dataset, temporary_root
from cache import open_dataset
from cache.durable import fsync_dir
from cache.feature_store import CHUNK_BYTES, estimate_bytes
from extract.backbones import build_backbone
from extract.pipeline import writer_threads
from extract.runner import extract, layer_shapes, resolve_device, to_input


def extract_overhead(*, images: int = 48, size: int = 224, batch_size: int = 16, device: str = "cpu",
                     model: str = "vit_b_random") -> dict[str, float]:
    dev = resolve_device(device)
    with temporary_root("extract") as root:
        random_dataset(root, name="bench", splits={"train": images}, size=size)
        pixels = open_dataset("bench", root=root).split("train").read("images")
        backbone = build_backbone(model)
        backbone.module.to(dev)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda" else torch.autocast("cpu", enabled=False)
        with torch.inference_mode(), autocast:             # warm-up: first-call allocations and kernels
            backbone(to_input(pixels[:batch_size], backbone.spec.mean, backbone.spec.std, dev))

        def sync() -> None:
            if dev.type == "cuda":
                torch.cuda.synchronize()

        with Timer() as bare:
            with torch.inference_mode(), autocast:
                for s in range(0, images, batch_size):
                    backbone(to_input(pixels[s:s + batch_size], backbone.spec.mean, backbone.spec.std, dev))
            sync()
        with Timer() as full:
            extract(model=model, dataset="bench", root=root, batch_size=batch_size, device=device,
                    backbone=backbone, progress=False)
            sync()
    return {"extract_overhead": full.seconds / bare.seconds, "extract_images_per_s": images / full.seconds}


def _disk_write_rate(folder: Path, *, total_bytes: int, file_bytes: int, threads: int) -> float:
    """Bytes/s of writing ``total_bytes`` as files of ``file_bytes`` under ``folder``, each fsynced
    (as a feature chunk is), from ``threads`` threads at once."""
    folder.mkdir(parents=True, exist_ok=True)
    payload = np.random.default_rng(0).integers(0, 256, file_bytes, dtype=np.uint8).tobytes()
    count = max(1, -(-total_bytes // file_bytes))

    def write(i: int) -> None:
        path = folder / f"{i}.bin"
        with open(path, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())

    with Timer() as timer:
        with ThreadPoolExecutor(max_workers=threads) as pool:
            list(pool.map(write, range(count)))
        fsync_dir(folder)
    shutil.rmtree(folder, ignore_errors=True)
    return count * file_bytes / timer.seconds


def extract_vs_limit(*, images: int | None = None, size: int = 224, batch_size: int | None = None,
                     device: str = "cpu", model: str = "vit_b_random") -> dict[str, float]:
    """Extraction images/s ÷ the slower of what the device and the disk allow, both measured in this run:
    the bare forward pass (bf16 on CUDA) on a batch already on the device, and the disk's write
    bandwidth (fsynced chunk-sized files from as many threads as the extractor writes with) ÷ the
    store's bytes per image."""
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    images = images or (1024 if cuda else 48)
    batch_size = batch_size or (64 if cuda else 16)
    with temporary_root("limit") as root:
        random_dataset(root, name="bench", splits={"train": images}, size=size, targets=False)
        pixels = open_dataset("bench", root=root).split("train").read("images", slice(0, batch_size))
        backbone = build_backbone(model)
        backbone.module.to(dev)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else torch.autocast("cpu", enabled=False)
        x = to_input(pixels, backbone.spec.mean, backbone.spec.std, dev)
        with torch.inference_mode(), autocast:
            backbone(x)                                     # warm-up: first-call allocations and kernels
            if cuda:
                torch.cuda.synchronize(dev)
            with Timer() as bare:
                for _ in range(-(-images // batch_size)):
                    backbone(x)
                if cuda:
                    torch.cuda.synchronize(dev)
        forward_rate = -(-images // batch_size) * batch_size / bare.seconds
        shapes, global_dim = layer_shapes(backbone, size, size, dev)
        per_image = estimate_bytes(shapes, global_dim, 1)
        disk = _disk_write_rate(root.root / "disk-probe", total_bytes=per_image * images, file_bytes=CHUNK_BYTES,
                                threads=writer_threads(dev))
        with Timer() as full:
            extract(model=model, dataset="bench", root=root, batch_size=batch_size, device=device,
                    backbone=backbone, progress=False)
            if cuda:
                torch.cuda.synchronize(dev)
    rate = images / full.seconds
    limit = min(forward_rate, disk / per_image)
    print(f"# extraction {rate:.0f} img/s; bare forward {forward_rate:.0f} img/s; disk {disk / 1e9:.2f} GB/s = "
          f"{disk / per_image:.0f} img/s at {per_image / 2**20:.2f} MiB an image", file=sys.stderr)
    return {"extract_vs_limit": rate / limit, "extract_images_per_s_at_limit": rate,
            "bare_forward_images_per_s": forward_rate, "disk_write_gbps": disk / 1e9}
