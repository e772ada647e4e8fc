"""extract_overhead: extraction wall time (store writes included) / the bare forward pass."""

from __future__ import annotations

import torch

from bench.common import Timer, random_dataset, temporary_root
from cache import open_dataset
from extract.backbones import build_backbone
from extract.runner import extract, resolve_device, to_input


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
