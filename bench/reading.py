"""feature_read_gbps_vs_memcpy: how fast cached features reach a probe, against a plain copy-and-cast of the same bytes.

The store is ViT-B/16's four layers at 224 px (random float16 maps, 1.2 MB an image), read warm
(in the page cache). ``delivered``: an epoch of :func:`cache.iterate_batches` (batches of 32,
shuffled) with every layer made a float32 tensor on the device, as a probe's first step does
(here the CPU: :func:`probe.features.to_device`). ``memcpy``: the same bytes, already in memory
as one array per layer, copied batch by batch into a reused host buffer (the one copy any read
from the page cache makes) and cast from float16 to float32 tensors (torch's threads) — a plain
memcpy-and-cast, with no file, no shuffle and no allocation. ``cast_only`` (reported, not a
ratio) skips the copy. All timed in alternation (median of ``repeats``), in one run; then
``delivered`` and ``memcpy`` again with one torch thread (``_1_torch_thread``).
"""

from __future__ import annotations

import numpy as np
import torch

from bench.common import interleaved_medians, random_dataset, temporary_root
from bench.probing import VIT_LAYERS, write_random_features
from cache import iterate_batches, open_features
from cache.loader import FeatureLoader
from probe.features import to_device


def feature_read_gbps_vs_memcpy(*, images: int = 256, batch_size: int = 32, repeats: int = 7) -> dict[str, float]:
    cpu = torch.device("cpu")
    layers = list(VIT_LAYERS)
    with temporary_root("read") as root:
        random_dataset(root, name="bench", splits={"train": images}, size=32, targets=False)
        write_random_features(root, dataset="bench", model="vit", split="train", num_images=images)
        split = open_features("bench", "vit", "train", root=root)
        nbytes = sum(split.array(layer).nbytes for layer in layers)
        source = {layer: split.read(layer, 0, images) for layer in layers}
        loader = FeatureLoader(split, layers=layers, budget=0)

        def delivered() -> None:
            for batch in iterate_batches(split, layers=layers, batch_size=batch_size, seed=0, epoch=0):
                for layer in layers:
                    to_device(batch.features[layer], cpu)

        def streamed() -> None:           # the probes' path when a split is not held in memory
            for batch in loader.batches(batch_size=batch_size, seed=0, epoch=0):
                for layer in layers:
                    to_device(batch.features[layer], cpu)

        staging = {layer: np.empty((batch_size, *source[layer].shape[1:]), source[layer].dtype) for layer in layers}

        def memcpy() -> None:
            for layer in layers:
                for s in range(0, images, batch_size):
                    n = min(batch_size, images - s)
                    np.copyto(staging[layer][:n], source[layer][s:s + n])
                    torch.from_numpy(staging[layer][:n]).float()

        def cast() -> None:
            for layer in layers:
                for s in range(0, images, batch_size):
                    torch.from_numpy(source[layer][s:s + batch_size]).float()

        runs = {"delivered": delivered, "streamed": streamed, "memcpy": memcpy, "cast": cast}
        for fn in runs.values():
            fn()                                  # warm: page cache, allocator, reader threads
        seconds = interleaved_medians(runs, repeats=repeats)
        # torch's intra-op threads and the reader threads share the cores: with one torch thread
        # (both sides alike) the cast no longer waits on a thread the readers hold
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            single = interleaved_medians({"delivered": delivered, "memcpy": memcpy}, repeats=repeats)
        finally:
            torch.set_num_threads(threads)
    return {"feature_read_gbps_vs_memcpy": seconds["memcpy"] / seconds["delivered"],
            "feature_read_gbps": nbytes / seconds["delivered"] / 1e9,
            "feature_memcpy_cast_gbps": nbytes / seconds["memcpy"] / 1e9,
            "feature_cast_only_gbps": nbytes / seconds["cast"] / 1e9,
            "feature_stream_gbps_vs_memcpy": seconds["memcpy"] / seconds["streamed"],
            "feature_read_gbps_vs_memcpy_1_torch_thread": single["memcpy"] / single["delivered"]}
