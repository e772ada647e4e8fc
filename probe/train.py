"""Training a sweep of heads in one pass over the cache: each batch is read once, fed to all."""

from __future__ import annotations

import hashlib
import math
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cache import FeatureSplit, SplitView, iterate_batches
from probe.features import BatchInputs, Standardizer
from probe.heads import LinearHead, build_head
from probe.tasks.base import DenseTask, subsample_raw


@dataclass(frozen=True)
class ProbeConfig:
    """One probe of a sweep: which head on which cached layers, at which learning rate."""

    head: str
    layers: tuple[str, ...]
    lr: float = 5e-4

    @property
    def key(self) -> str:
        return f"{self.head}-{'+'.join(self.layers)}-lr{self.lr:g}"


@dataclass(frozen=True)
class TrainSettings:
    """What every probe of a sweep shares (the data order above all).

    AdamW (weight decay 0.01), lr warm-up over ``warmup_epochs`` then cosine decay to 0,
    stepped per batch; batches reshuffled every epoch from ``seed``. ``options`` carries task
    options and ``loss_stride``: 1 (the paper's) computes the training loss at every target
    pixel; ``s > 1`` at every s-th pixel in each direction (the same prediction values,
    s² fewer of them). Evaluation always scores every target pixel.
    """

    epochs: int = 10
    warmup_epochs: float = 1.5
    batch_size: int = 32
    weight_decay: float = 0.01
    seed: int = 0
    device: str = "cpu"
    hidden: int = 512
    options: Mapping[str, Any] = field(default_factory=dict)   # task options, e.g. uncertainty_aware

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "options": dict(self.options)}


def head_seed(seed: int, config: ProbeConfig) -> int:
    """A per-probe init seed: the same probe gets the same init whatever else is in the sweep."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{config.key}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def warmup_cosine(step: int, *, warmup: float, total: int) -> float:
    """LR multiplier: linear warm-up for ``warmup`` steps, then cosine decay to 0 at ``total``."""
    if step < warmup:
        return (step + 1) / max(warmup, 1.0)
    progress = (step - warmup) / max(total - warmup, 1.0)
    return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


@dataclass
class _Probe:
    config: ProbeConfig
    head: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    losses: list[float] = field(default_factory=list)


def _stacked_linear(convs: Sequence[torch.nn.Conv2d], layers: Sequence[str], inputs: BatchInputs) -> torch.Tensor:
    """Logits of several linear heads on the same layers, ``(B, sum K, h, w)`` on the finest grid.

    The same function of the weights as ``conv(concat_on_grid(standardized maps))``, computed
    without building the standardised concatenation: the statistics fold into the weights,
    each layer is projected on its own grid, and the K-channel result is upsampled (bilinear
    resizing and per-channel affine maps commute with a 1x1 projection). On a CPU this
    avoids several full-size float32 copies of the batch's features.
    """
    weight = torch.cat([c.weight for c in convs]).flatten(1)       # (K, sum C)
    bias = torch.cat([c.bias for c in convs])
    stats = inputs.standardizer
    grid = inputs.grid(layers)
    out, offset = None, 0
    for layer in layers:
        x = inputs.raw(layer)
        w = weight[:, offset:offset + x.shape[1]] * stats.inv_std[layer].view(1, -1)
        offset += x.shape[1]
        bias = bias - w @ stats.mean[layer].view(-1)
        part = torch.matmul(w, x.flatten(2)).unflatten(2, tuple(x.shape[-2:]))
        if tuple(part.shape[-2:]) != grid:
            part = F.interpolate(part, size=grid, mode="bilinear", align_corners=False)
        out = part if out is None else out + part
    return out + bias.view(1, -1, 1, 1)


def forward_heads(heads: Sequence[tuple[ProbeConfig, torch.nn.Module]], inputs: BatchInputs) -> list[torch.Tensor]:
    """Logits of every head. Linear heads on the same layers run as one projection with
    their weights stacked, so a sweep of learning rates reads the batch's features once."""
    outputs: list[torch.Tensor | None] = [None] * len(heads)
    groups: dict[tuple[str, ...], list[int]] = {}
    for i, (config, head) in enumerate(heads):
        if isinstance(head, LinearHead):
            groups.setdefault(config.layers, []).append(i)
        else:
            outputs[i] = head(inputs.for_head(head.input_kind, config.layers))
    for layers, members in groups.items():
        convs = [heads[i][1].conv for i in members]
        stacked = _stacked_linear(convs, layers, inputs)
        for i, part in zip(members, stacked.split([c.out_channels for c in convs], dim=1)):
            outputs[i] = part
    return outputs  # type: ignore[return-value]


def train_sweep(task: DenseTask, *, train: FeatureSplit, train_data: SplitView, dataset_attrs: Mapping[str, Any],
                configs: Sequence[ProbeConfig],
                settings: TrainSettings, standardizer: Standardizer,
                log: Any = None) -> tuple[dict[ProbeConfig, torch.nn.Module], dict[ProbeConfig, dict[str, Any]]]:
    """Train every config on the train split in one pass per epoch; returns heads and training stats."""
    device = torch.device(settings.device)
    ds_attrs = dataset_attrs
    size = train_data.image_size
    layers = sorted({layer for c in configs for layer in c.layers}, key=train.layers.index)
    out_channels = task.out_channels(ds_attrs, settings.options)
    steps_per_epoch = math.ceil(train.num_images / settings.batch_size)
    total = steps_per_epoch * settings.epochs
    warmup = settings.warmup_epochs * steps_per_epoch
    probes = []
    for config in configs:
        shapes = [train.shape(layer) for layer in config.layers]
        equal = len({s[1:] for s in shapes}) == 1
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(head_seed(settings.seed, config))
            head = build_head(config.head, in_channels=[s[0] for s in shapes], out_channels=out_channels,
                              hidden=settings.hidden, equal_grids=equal).to(device)
        optimizer = torch.optim.AdamW(head.parameters(), lr=config.lr, weight_decay=settings.weight_decay)
        scheduler = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda step: warmup_cosine(step, warmup=warmup, total=total))
        probes.append(_Probe(config, head, optimizer, scheduler))
    started = time.perf_counter()
    targets = {key: train_data.array(key) for key in task.needs}
    loss_stride = int(settings.options.get("loss_stride", 1))
    decode_options = {**settings.options, "sample_stride": loss_stride}
    for epoch in range(settings.epochs):
        for probe in probes:
            probe.head.train()
        for batch in iterate_batches(train, layers=layers, batch_size=settings.batch_size, seed=settings.seed,
                                     epoch=epoch, targets=targets):
            target, valid = task.targets(subsample_raw(batch.targets, loss_stride), ds_attrs, device)
            outputs = forward_heads([(p.config, p.head) for p in probes], BatchInputs(batch.features, standardizer))
            losses = [task.loss(task.decode(logits, size, ds_attrs, decode_options), target, valid, settings.options)
                      for logits in outputs]
            for probe in probes:
                probe.optimizer.zero_grad(set_to_none=True)
            # each loss depends on its own head only, so one backward gives every head its own gradient
            torch.stack(losses).sum().backward()
            for probe, loss in zip(probes, losses):
                probe.optimizer.step()
                probe.scheduler.step()
                probe.losses.append(float(loss.detach()))
        if log is not None:
            log(f"epoch {epoch + 1}/{settings.epochs}: " + ", ".join(
                f"{p.config.key} loss {np.mean(p.losses[-steps_per_epoch:]):.4f}" for p in probes))
    seconds = time.perf_counter() - started
    stats = {p.config: {"final_train_loss": float(np.mean(p.losses[-steps_per_epoch:])) if p.losses else float("nan"),
                        "train_seconds_shared": seconds, "steps": len(p.losses)} for p in probes}
    return {p.config: p.head.eval() for p in probes}, stats


@torch.inference_mode()
def evaluate_heads(task: DenseTask, *, test: FeatureSplit, test_data: SplitView, dataset_attrs: Mapping[str, Any],
                   heads: Mapping[ProbeConfig, torch.nn.Module], settings: TrainSettings,
                   standardizer: Standardizer) -> dict[ProbeConfig, dict[str, float]]:
    """Score every trained head on the test split (one read of each test batch)."""
    device = torch.device(settings.device)
    ds_attrs = dataset_attrs
    size = test_data.image_size
    layers = sorted({layer for c in heads for layer in c.layers}, key=test.layers.index)
    metrics = {config: task.new_metrics() for config in heads}
    targets = {key: test_data.array(key) for key in task.needs}
    for batch in iterate_batches(test, layers=layers, batch_size=settings.batch_size, shuffle=False, targets=targets):
        target, valid = task.targets(batch.targets, ds_attrs, device)
        for config, logits in zip(heads, forward_heads(list(heads.items()), BatchInputs(batch.features, standardizer))):
            metrics[config].update(task.decode(logits, size, ds_attrs, settings.options), target, valid)
    return {config: m.result() for config, m in metrics.items()}
