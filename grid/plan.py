"""The dry run: tasks by kind, feature-cache bytes per dataset and model, estimated compute.

Bytes come from :func:`extract.sizing.size_extraction` (exact for the planned splits: shapes from
a ``meta``-device forward, split sizes from the prepared store or the published counts).
Compute is an estimate from :data:`THROUGHPUT`, figures this project measured
(docs/benchmarks.md): extraction costs the backbone's forward pass plus writing its features; a probe
epoch on a GPU costs reading its cached features (so both scale with the bytes an image's
features take), on a CPU the heads' work at the target resolution (so it scales with pixels).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from cache import DataRoot
from grid.graph import Job
from grid.spec import GridSpec

#: Reference throughput per device, for a ViT-B/16 at 224 px (4 maps + CLS = 1.21 MB of float16
#: features per image). ``cuda`` — one H100 (docs/benchmarks.md; measured 2026-11-26, before the
#: current loader and extraction pipeline): bf16 forward ~6,400 images/s alone, extraction end to
#: end 423 images/s (bound by reading images and writing the store), a cached probe epoch
#: 2.4 ms/image whatever the number of heads (8 heads cost 1.2x one), scaled by the bytes read.
#: ``cpu`` — a 2-core machine (cpu2 in docs/benchmarks.md): extraction 4.5 images/s (``make
#: bench``, bound by the forward); a probe epoch ~28 ms per head per image at 224 x 224 targets
#: (the demo's probes, measured with other jobs running), scaled by the target pixels and, for the
#: heads' projections, partly by the feature bytes (:data:`CPU_FEATURE_SHARE`).
THROUGHPUT = {
    "cuda": {"forward_per_s": 6400.0, "extract_per_s": 423.0, "epoch_s": 2.4e-3, "per_head": False,
             "label": "one H100"},
    "cpu": {"forward_per_s": 4.7, "extract_per_s": 4.5, "epoch_s": 2.8e-2, "per_head": True,
            "label": "2 CPU cores"},
}
REFERENCE_BYTES = (4 * 768 * 14 * 14 + 768) * 2        # ViT-B/16 at 224 px, 4 maps + CLS, float16
#: The part of a CPU probe epoch that grows with the features read (the rest, the heads' work at
#: the target resolution, does not): fitted to the demo's probes, whose time went as 0.2 + 0.8 x
#: the features' bytes over the reference (HOG 0.23, pixels 0.4, ViT-B 1) within about 25 %.
CPU_FEATURE_SHARE = 0.8
VIT_WIDTH = 768
#: timm's published cost of ResNet-50 and ViT-B/16 at 224 px (GMACs): 4.1 and 17.6.
RESNET50_MACS_224 = 4.1e9


def _vit_macs(tokens: int, width: int = VIT_WIDTH, depth: int = 12) -> float:
    """Multiply-adds of a ViT-B forward over ``tokens`` tokens: per block 12 N D^2 (projections,
    MLP) + 2 N^2 D (attention); 17.4 G at 224 px (196 tokens), timm lists 17.6 G."""
    return depth * (12 * tokens * width ** 2 + 2 * tokens ** 2 * width)


def human_time(seconds: float) -> str:
    """``5400`` -> ``"1.5 h"``; ``90`` -> ``"1.5 min"``; ``12`` -> ``"12 s"``."""
    if seconds >= 3600:
        return f"{seconds / 3600:,.1f} h"
    return f"{seconds / 60:.1f} min" if seconds >= 60 else f"{seconds:.0f} s"


def forward_macs(family: str, height: int, width: int) -> float:
    """A ResNet-50's or ViT-B/16's multiply-adds at ``height`` x ``width`` (0 for weight-free models;
    other timm families are counted as a ViT-B of the same input)."""
    if family == "handcrafted":
        return 0.0
    if family == "resnet":
        return RESNET50_MACS_224 * height * width / 224 ** 2
    return _vit_macs(-(-height // 16) * -(-width // 16))


@dataclass
class Costs:
    """Estimated seconds of one job on the grid's reference device, and its image counts."""

    seconds: float = 0.0
    forwards: int = 0          # images through a backbone
    epochs: int = 0            # images read by probes (per epoch, per seed)


class Estimator:
    """Feature bytes (at the grid's precision) and compute of every job of a grid (split sizes read
    once per dataset)."""

    def __init__(self, spec: GridSpec, root: DataRoot, *, device: str | None = None) -> None:
        from protocols import get_protocol

        self.spec, self.root, self.precision = spec, root, spec.precision
        self.protocol = get_protocol(spec.protocol)
        self.rate = THROUGHPUT[device or spec.device]
        self.layouts: dict[str, Any] = {}
        self.sizes: dict[tuple[str, str], list] = {}
        self.entries = {self.protocol.dataset_name(d.loader): d for d in spec.datasets}

    def split_sizes(self, store: str, feature_model: str) -> list:
        """The feature splits (with bytes) of ``feature_model`` on dataset store ``store``."""
        from extract.sizing import dataset_layout, size_extraction

        entry = self.entries[store]
        if store not in self.layouts:
            options = {**self.protocol.data_options(entry.loader), **entry.options}
            self.layouts[store] = dataset_layout(entry.loader, protocol=self.protocol, options=options, root=self.root)
        if (store, feature_model) not in self.sizes:
            self.sizes[store, feature_model] = size_extraction(
                model=feature_model, layout=self.layouts[store], protocol=self.protocol, tasks=entry.tasks,
                precision=self.precision)
        return self.sizes[store, feature_model]

    def _extract_seconds(self, family: str, size) -> float:
        """Forward pass (by multiply-adds) plus writing (by bytes), each scaled from the reference."""
        forward = forward_macs(family, size.height, size.width) / (_vit_macs(196) * self.rate["forward_per_s"])
        write = max(1 / self.rate["extract_per_s"] - 1 / self.rate["forward_per_s"], 0.0) / REFERENCE_BYTES
        return size.rows * forward + size.bytes * write

    def job(self, job: Job) -> Costs:
        """The cost of one job (prepare, finalize and the report count as nothing against the rest)."""
        from extract.sizing import model_spec

        task = job.task
        if job.kind == "extract":
            sizes = self.split_sizes(task.store, task.feature_model)
            family = model_spec(task.feature_model).family
            n = task.shard[1]
            return Costs(sum(self._extract_seconds(family, s) for s in sizes) / n, sum(s.rows for s in sizes) // n)
        if job.kind == "probe":
            return self._probe(task)
        return Costs()

    def _probe(self, task) -> Costs:
        """Dense: every seed reads the train split once per epoch (one view of each image) and the
        test split once; a sweep's heads share the reads. Zero-shot: its split once per seed."""
        from probe.plan import dense_choices
        from probe.tasks import DenseTask, get_task
        from protocols import feature_split_name

        sizes = {s.feature_split: s for s in self.split_sizes(task.store, task.feature_model)}
        probe_task = get_task(task.settings.task)
        extraction = self.protocol.extraction_choices(probe_task.name, self.entries[task.store].loader)
        if isinstance(probe_task, DenseTask):
            epochs = dense_choices(self.protocol, probe_task.name, task.settings.overrides).epochs
            train = sizes.get(feature_split_name("train", extraction, training=True))
            test = sizes.get(feature_split_name("test", extraction))
            reads = [(train, train.images * epochs if train else 0), (test, test.images if test else 0)]
        else:
            split = sizes.get(feature_split_name(probe_task.split, extraction))
            reads = [(split, split.rows if split else 0)]
        seeds = len(task.seeds)
        images = seeds * sum(n for _, n in reads)
        reads = [(split, n, split.bytes / split.rows / REFERENCE_BYTES) for split, n in reads if split and split.rows]
        if self.rate["per_head"]:
            heads = 1
            if isinstance(probe_task, DenseTask):
                s = task.settings
                default = dense_choices(self.protocol, probe_task.name, s.overrides).heads
                heads = len(s.heads or default) * len(s.lrs or (1,)) * max(1, len(s.layer_sets))
            work = heads * sum(n * split.height * split.width / 224 ** 2
                               * (1 - CPU_FEATURE_SHARE + CPU_FEATURE_SHARE * share) for split, n, share in reads)
        else:
            work = sum(n * share for _, n, share in reads)
        return Costs(seeds * work * self.rate["epoch_s"], 0, images)


def describe(spec: GridSpec, root: DataRoot, jobs: list[Job], *, check_complete: bool = True,
             splits: bool = False) -> str:
    """The dry run's text: tasks by kind (and how many are already complete at the grid's
    precision), each dataset's feature splits, the feature cache per model and dataset
    (``splits``: every model's splits too) and estimated compute on the reference device."""
    from extract.sizing import format_sizes, human_bytes

    est = Estimator(spec, root)
    stores = list(est.entries)
    kinds = Counter(job.kind for job in jobs)
    done = sum(job.task.complete() for job in jobs) if check_complete else 0
    pairs = sum(len(d.tasks) for d in spec.datasets)
    lines = [f"grid {spec.name} ({spec.path}), protocol {spec.protocol}: {len(spec.datasets)} dataset(s) x "
             f"{len(spec.models)} model(s), {pairs} task/dataset pair(s), seeds {', '.join(map(str, spec.seeds))}",
             "tasks: " + ", ".join(f"{kinds[k]} {k}" for k in ("prepare", "extract", "finalize", "probe", "report")
                                   if kinds[k]) + f" = {len(jobs)} ({done} already complete)", ""]
    costs = {job.name: est.job(job) for job in jobs}
    models = list(dict.fromkeys(j.task.feature_model for j in jobs if j.kind == "extract"))
    table = {m: {s: sum(x.bytes for x in est.split_sizes(s, m)) for s in stores} for m in models}
    hours = {m: [0.0, 0.0] for m in models}
    for job in jobs:
        if job.kind in ("extract", "probe"):
            hours[job.task.feature_model][job.kind == "probe"] += costs[job.name].seconds
    rate = est.rate["label"]
    header = ["model", *stores, "total", "extraction", "probes"]
    rows = [[m, *[human_bytes(table[m][s]) for s in stores], human_bytes(sum(table[m].values())),
             human_time(hours[m][0]), human_time(hours[m][1])] for m in models]
    rows.append(["total", *[human_bytes(sum(t[s] for t in table.values())) for s in stores],
                 human_bytes(sum(sum(t.values()) for t in table.values())),
                 human_time(sum(h[0] for h in hours.values())), human_time(sum(h[1] for h in hours.values()))])
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines.append(f"feature cache ({est.precision}) per model and dataset, and estimated time on {rate}:")
    for row in [header, *rows]:
        cells = [c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))]
        lines.append("  " + "  ".join(cells))
    lines.append("")
    for store in stores:
        layout = est.layouts[store]
        lines.append(f"{store} (split sizes from {layout.source}):")
        for size in est.split_sizes(store, models[0]):
            views = f" x {size.views} views" if size.views > 1 else ""
            lines.append(f"  {size.feature_split:<40} {size.images:>9,} images{views} at {size.height}x{size.width}")
    if splits:
        lines += [""] + [format_sizes(m, est.layouts[s], est.split_sizes(s, m)) for m in models for s in stores]
    forwards = sum(c.forwards for c in costs.values())
    epochs = sum(c.epochs for c in costs.values())
    extract_s = sum(costs[j.name].seconds for j in jobs if j.kind == "extract")
    probe_s = sum(costs[j.name].seconds for j in jobs if j.kind == "probe")
    lines += ["", f"compute (estimated for {rate} from measured throughput; see docs/grid.md):",
              f"  extraction: {forwards:,} image-forwards, ~{human_time(extract_s)}",
              f"  probes: {epochs:,} image-epochs read from the cache, ~{human_time(probe_s)}",
              f"  total: ~{human_time(extract_s + probe_s)}"]
    if spec.disk_budget is not None or spec.augmented is not None:
        from grid.budget import describe_budget

        lines += ["", *describe_budget(est, jobs)]
    return "\n".join(lines)
