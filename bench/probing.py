"""Probe-stage benchmarks: cache vs recompute, sweeps in one pass, memory against store size."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from bench.common import Timer, median_seconds, random_dataset, temporary_root
from cache import DataRoot, open_dataset, open_feature_writer, open_features
from extract.backbones import build_backbone
from extract.runner import extract, resolve_device, to_input
from probe.features import BatchInputs, Standardizer, channel_stats
from probe.heads import build_head
from probe.tasks import get_task
from probe.tasks.base import subsample_raw
from probe.train import ProbeConfig, TrainSettings, forward_heads, train_sweep
from protocols import DENSE_DEFAULTS

VIT_LAYERS = {f"block{i}": (768, 14, 14) for i in (2, 5, 8, 11)}


def write_random_features(root: DataRoot, *, dataset: str, model: str, split: str, num_images: int,
                          shapes: dict[str, tuple[int, int, int]] = VIT_LAYERS, seed: int = 0) -> None:
    """A feature store of random float16 maps, as if a ViT-B/16 had been extracted at 224 px."""
    store = open_dataset(dataset, root=root)
    rng = np.random.default_rng(seed)
    fingerprint = {"format_version": 1, "model": model, "weights": "bench", "timm_version": "-",
                   "layers": list(shapes), "input_size": list(store.split(split).image_size), "mean": [0, 0, 0],
                   "std": [1, 1, 1], "feature_norm": False, "dataset": dataset,
                   "dataset_fingerprint": store.fingerprint, "split": split}
    writer = open_feature_writer(root.feature_store(dataset, model), split=split, fingerprint=fingerprint,
                                 num_images=num_images, layer_shapes=shapes, strides={k: 16 for k in shapes},
                                 global_dim=768)
    block = {k: rng.normal(size=(writer.chunk_images, *s)).astype(np.float16) for k, s in shapes.items()}
    for ci in writer.pending():
        lo, hi = writer.chunk_range(ci)
        writer.write_chunk(ci, {k: v[: hi - lo] for k, v in block.items()}, np.zeros((hi - lo, 768), np.float32))
    writer.finalize()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def cache_vs_recompute(*, images: int = 128, batch_size: int = 32, loss_stride: int = 1,
                       device: str = "cpu") -> dict[str, float]:
    """One linear-probe epoch (normals, ViT-B/16 at 224 px) recomputing features, over the same from the cache.

    Both epochs do the same head work (standardise, linear head, loss at every
    ``loss_stride``-th target pixel, AdamW step); only where the features come from differs.
    On a GPU the recomputing backbone runs in bf16, as extraction does.
    """
    dev = resolve_device(device)
    task = get_task("normals")
    settings = TrainSettings.make(epochs=1, batch_size=batch_size, device=str(dev), loss_stride=loss_stride)
    config = ProbeConfig("linear", tuple(VIT_LAYERS), DENSE_DEFAULTS.lr)
    with temporary_root("cache") as root:
        random_dataset(root, name="bench", splits={"train": images}, size=224)
        backbone = build_backbone("vit_b_random")
        backbone.module.to(dev)
        extract(model="vit_b_random", dataset="bench", root=root, backbone=backbone, device=str(dev), progress=False)
        data = open_dataset("bench", root=root)
        train = open_features("bench", "vit_b_random", "train", root=root)
        standardizer = Standardizer(channel_stats(train, list(VIT_LAYERS)), dev)

        def cached_epoch():
            train_sweep(task, train=train, train_data=data.split("train"), dataset_attrs=data.attrs,
                        configs=[config], settings=settings, standardizer=standardizer)
            _sync(dev)

        cached_epoch()                       # both sides are timed warm: page cache, allocator, threads
        cached_seconds = median_seconds(cached_epoch, repeats=5)    # a cached epoch is short: take the median
        config_head = [(config, build_head("linear", in_channels=[768] * 4, out_channels=3).to(dev))]
        autocast = (torch.autocast("cuda", dtype=torch.bfloat16) if dev.type == "cuda"
                    else torch.autocast("cpu", enabled=False))
        optimizer = torch.optim.AdamW(config_head[0][1].parameters(), lr=DENSE_DEFAULTS.lr)
        split = data.split("train")

        def recompute_batch(index: np.ndarray) -> None:
            pixels = split.read("images", index)
            with torch.inference_mode(), autocast:
                maps, _ = backbone(to_input(pixels, backbone.spec.mean, backbone.spec.std, dev))
            maps = {k: v.to(torch.float32, copy=True) for k, v in maps.items()}   # leave inference mode
            raw = subsample_raw({"normals": split.read("normals", index)}, loss_stride)
            target, valid = task.targets(raw, data.attrs, dev, settings.choices, training=True)
            (logits,) = forward_heads(config_head, BatchInputs(maps, standardizer))
            prediction = task.decode(logits, split.image_size, data.attrs, settings.choices, loss_stride)
            loss = task.loss(prediction, target, valid, settings.choices)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()

        order = np.random.default_rng(0).permutation(images)
        recompute_batch(np.sort(order[:batch_size]))
        with Timer() as recomputed:
            for s in range(0, images, batch_size):
                recompute_batch(np.sort(order[s:s + batch_size]))
            _sync(dev)
    suffix = "" if loss_stride == 1 else f"_loss_stride{loss_stride}"
    print(f"# cached {cached_seconds / images * 1e3:.2f} ms/img, recomputed {recomputed.seconds / images * 1e3:.1f} ms/img",
          file=sys.stderr)
    return {f"cache_vs_recompute{suffix}": recomputed.seconds / cached_seconds}


def sweep_vs_single(*, images: int = 256, heads: int = 8, loss_stride: int = 1, device: str = "cpu") -> dict[str, float]:
    """A sweep of ``heads`` linear heads (different learning rates) in one pass, over one head alone."""
    dev = resolve_device(device)
    task = get_task("normals")
    settings = TrainSettings.make(epochs=1, batch_size=32, device=str(dev), loss_stride=loss_stride)
    with temporary_root("sweep") as root:
        random_dataset(root, name="bench", splits={"train": images}, size=224)
        write_random_features(root, dataset="bench", model="vit", split="train", num_images=images)
        data = open_dataset("bench", root=root)
        train = open_features("bench", "vit", "train", root=root)
        standardizer = Standardizer(channel_stats(train, list(VIT_LAYERS)), dev)
        configs = [ProbeConfig("linear", tuple(VIT_LAYERS), lr) for lr in np.geomspace(1e-4, 1e-2, heads)]

        def run(chosen):
            train_sweep(task, train=train, train_data=data.split("train"), dataset_attrs=data.attrs,
                        configs=chosen, settings=settings, standardizer=standardizer)
            _sync(dev)

        run(configs[:1])                                   # warm the page cache for both timings
        one = median_seconds(lambda: run(configs[:1]), repeats=3)
        many = median_seconds(lambda: run(configs), repeats=3)
    suffix = "" if loss_stride == 1 else f"_loss_stride{loss_stride}"
    return {f"sweep{heads}_vs_1{suffix}": many / one}


def _peak_rss_of_probe(root: DataRoot, budget: str | None) -> int:
    """Peak resident memory (bytes) of a one-epoch linear segmentation probe in a fresh process
    (``budget``: its ``--cache-budget``; None: the default)."""
    command = [sys.executable, "-m", "probe", "--task", "segmentation", "--dataset", "bench", "--model", "vit",
               "--head", "linear", "--epochs", "1", "--data", str(root.root), "--quiet",
               *(["--cache-budget", budget] if budget is not None else [])]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, cwd=Path(__file__).resolve().parents[1])
    _, status, usage = os.wait4(proc.pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        raise RuntimeError(f"the probe run failed: {' '.join(command)}")
    return usage.ru_maxrss * 1024


def probe_rss_growth(*, small_gb: float = 1.0, large_gb: float = 4.0) -> dict[str, float]:
    """Peak probe memory over a 4 GB store divided by over a 1 GB store, minus 1, with the split
    streamed (``--cache-budget 0``: flat memory is 0); and, on the 1 GB store, the extra memory of
    the split held in RAM (the default budget: half the available RAM) over the split's bytes."""
    per_image = sum(c * h * w for c, h, w in VIT_LAYERS.values()) * 2
    peaks, split_bytes = {}, {}
    for label, gigabytes in (("small", small_gb), ("large", large_gb)):
        n = int(gigabytes * 2**30 / per_image)
        with temporary_root(f"rss-{label}") as root:
            # small targets keep the dataset store itself light; the feature store is the large part
            random_dataset(root, name="bench", splits={"train": n, "test": 64}, size=32)
            for split, count in (("train", n), ("test", 64)):
                write_random_features(root, dataset="bench", model="vit", split=split, num_images=count)
            peaks[label] = _peak_rss_of_probe(root, "0")
            if label == "small":
                split_bytes[label] = n * (per_image + 32 * 32)        # the maps and the foreground targets
                peaks["resident"] = _peak_rss_of_probe(root, None)
    return {"probe_rss_growth": peaks["large"] / peaks["small"] - 1.0,
            "probe_peak_rss_mb_4gb_store": peaks["large"] / 2**20,
            "probe_resident_extra_rss_vs_split_bytes": (peaks["resident"] - peaks["small"]) / split_bytes["small"]}
