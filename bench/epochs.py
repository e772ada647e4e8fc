"""probe_epoch_vs_head_compute: a cached probe epoch against the head's own work on features already on the device.

For the linear head on ViT-B/16's four layers at 224 px (random float16 maps), depth and normals,
the paper's full-resolution loss: ``epoch`` is a sweep of ``epochs`` epochs through
:func:`probe.train.train_sweep` with the split held on the device (the default budget; its one
load counted, spread over the epochs), divided by ``epochs``; ``head`` is the same sweep fed the
same batches from device memory where they already sit, gathered once beforehand — what is left
is the head's forward, loss, backward and optimiser step. ``_streamed`` is the epoch with the
split streamed from the store instead (``CACHE_BUDGET=0``), for splits larger than the budget.
All alternate (median of ``repeats``) in one run, with the one-time load of the split alone
(printed per image).
"""

from __future__ import annotations

import functools
import sys
from typing import Any, Iterator

import numpy as np
import torch

from bench.common import interleaved_medians, random_dataset, temporary_root
from bench.probing import VIT_LAYERS, write_random_features
from cache import open_dataset, open_features
from cache.batches import Batch
from cache.loader import FeatureLoader
from extract.runner import resolve_device
from probe.features import Standardizer
from probe.tasks import get_task
from probe.train import ProbeConfig, TrainSettings, train_sweep
from protocols import DENSE_DEFAULTS


class _InMemory:
    """Batches fixed in device memory, served as a :class:`FeatureLoader` serves them."""

    def __init__(self, batches: list[Batch]) -> None:
        self.served = batches

    def batches(self, **_: Any) -> Iterator[Batch]:
        return iter(self.served)


def probe_epoch_vs_head_compute(*, images: int | None = None, epochs: int | None = None, batch_size: int = 32,
                                repeats: int = 3, device: str = "cpu") -> dict[str, float]:
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    images = images or (512 if cuda else 32)          # a CPU epoch costs 5-100 ms an image
    epochs = epochs or (10 if cuda else 1)
    layers = list(VIT_LAYERS)
    config = ProbeConfig("linear", tuple(layers), DENSE_DEFAULTS.lr)
    out: dict[str, float] = {}
    with temporary_root("epochs") as root:
        random_dataset(root, name="bench", splits={"train": images}, size=224)
        write_random_features(root, dataset="bench", model="vit", split="train", num_images=images)
        data = open_dataset("bench", root=root)
        train = open_features("bench", "vit", "train", root=root)
        # the statistics do not change the work; unit ones spare a pass over the split
        standardizer = Standardizer({layer: (np.zeros(768), np.ones(768)) for layer in layers}, dev)
        for name in ("normals", "depth"):
            task = get_task(name)
            targets = {key: data.split("train").array(key) for key in task.target_keys(TrainSettings().choices)}

            def sweep(budget: int | None = None, loader: Any = None) -> None:
                settings = TrainSettings.make(epochs=epochs, batch_size=batch_size, device=str(dev),
                                              cache_budget=budget)
                train_sweep(task, train=train, train_data=data.split("train"), dataset_attrs=data.attrs,
                            configs=[config], settings=settings, standardizer=standardizer, loader=loader)
                if cuda:
                    torch.cuda.synchronize(dev)

            resident = FeatureLoader(train, layers=layers, targets=targets, device=dev)
            fixed = _InMemory(list(resident.batches(batch_size=batch_size, seed=0, epoch=0)))
            runs = {"epoch": lambda: sweep(None), "head": functools.partial(sweep, loader=fixed),
                    "streamed": lambda: sweep(0),
                    "load": lambda: FeatureLoader(train, layers=layers, targets=targets, device=dev).resident}
            for run in runs.values():
                run()                                          # warm: page cache, allocator, kernels
            seconds = interleaved_medians(runs, repeats=repeats)
            per_image = {k: v / images * 1e3 for k, v in seconds.items()}
            print(f"# {name}: epoch {per_image['epoch'] / epochs:.3f} ms/img, head {per_image['head'] / epochs:.3f} "
                  f"ms/img, streamed {per_image['streamed'] / epochs:.3f} ms/img; the resident split "
                  f"({resident.resident_bytes / 2**20:.0f} MiB) loads in {per_image['load']:.3f} ms/img once a sweep",
                  file=sys.stderr)
            out[f"probe_epoch_vs_head_compute_{name}"] = seconds["epoch"] / seconds["head"]
            out[f"probe_epoch_streamed_vs_head_compute_{name}"] = seconds["streamed"] / seconds["head"]
            # the resident batches (held by runs too) are freed before the next task loads its own
            del runs, fixed, resident
    out["probe_epoch_vs_head_compute"] = max(out["probe_epoch_vs_head_compute_normals"],
                                             out["probe_epoch_vs_head_compute_depth"])
    return out
