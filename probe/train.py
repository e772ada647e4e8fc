"""Training a sweep of heads in one pass over the cache: each batch is read once, fed to all."""

from __future__ import annotations

import dataclasses
import hashlib
import math
import time
from dataclasses import dataclass, field, replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cache import FeatureSplit, SplitView, iterate_batches
from cache.augment import crop_index, view_params
from cache.batches import Batch
from cache.loader import FeatureLoader
from cache.progress import progress_bar
from probe.features import BatchInputs, Standardizer
from probe.heads import LinearHead, Probe, build_head
from probe.plan import sgd_key
from protocols import DENSE_DEFAULTS, DenseChoices
from probe.tasks.base import DenseTask, subsample_raw


#: Keeps the subset permutations' random stream apart from the other draws seeded by the same seed.
SUBSET_STREAM = 0x5AB5E7


@dataclass(frozen=True)
class ProbeConfig:
    """One probe of a sweep: which head on which cached layers, at which learning rate."""

    head: str
    layers: tuple[str, ...]
    lr: float = DENSE_DEFAULTS.lr

    @property
    def key(self) -> str:
        return sgd_key(self.head, self.layers, self.lr)


@dataclass(frozen=True)
class TrainSettings:
    """What every probe of a sweep shares: the protocol's resolved choices for the task (the data
    order above all), the seed and the device.

    AdamW, lr warm-up over ``choices.warmup_epochs`` then the protocol's cosine decay, stepped
    per batch; batches reshuffled every epoch from ``seed``. Evaluation always scores every
    target pixel, whatever ``choices.loss_stride``.
    """

    choices: DenseChoices = DenseChoices()
    seed: int = 0
    device: str = "cpu"
    #: bytes of device memory (RAM on a CPU) the training split may take to be held there for the
    #: whole sweep (None: :func:`cache.loader.default_budget`; 0: streamed every epoch). The
    #: numbers do not depend on it, so it is not part of the record.
    cache_budget: int | None = None

    @classmethod
    def make(cls, *, seed: int = 0, device: str = "cpu", choices: DenseChoices | None = None,
             cache_budget: int | None = None, **overrides: Any) -> "TrainSettings":
        """Settings from ``choices`` (default: midprobe's) with named fields overridden."""
        return cls(replace(choices or DenseChoices(), **overrides), seed, device, cache_budget)

    @property
    def epochs(self) -> int:
        return self.choices.epochs

    @property
    def batch_size(self) -> int:
        return self.choices.batch_size

    def as_dict(self) -> dict[str, Any]:
        return {"seed": self.seed, "device": self.device, **dataclasses.asdict(self.choices)}


def head_seed(seed: int, config: ProbeConfig) -> int:
    """A per-probe init seed: the same probe gets the same init whatever else is in the sweep."""
    return int.from_bytes(hashlib.sha256(f"{seed}|{config.key}".encode()).digest()[:4], "little") & 0x7FFFFFFF


def lr_multiplier(step: int, *, warmup: float, total: int, schedule: str = "quarter-cosine") -> float:
    """The LR multiplier at optimiser step ``step`` (0-based) of ``total``, warm-up over ``warmup`` steps.

    ``"quarter-cosine"`` (the paper's ``cosine_decay_linear_warmup``): ``0.99 s/W + 0.01`` while
    ``s <= W``, then ``0.99 cos(pi/2 · (s - W)/(T - W)) + 0.01`` — a quarter cosine with a 0.01
    floor. ``"half-cosine"``: ``(s + 1)/W`` while ``s < W``, then ``(1 + cos(pi · progress))/2``
    down to 0.
    """
    if schedule == "quarter-cosine":
        if warmup > 0 and step <= warmup:
            return 0.99 * step / warmup + 0.01
        progress = min((step - warmup) / max(total - warmup, 1.0), 1.0)
        return 0.99 * math.cos(0.5 * math.pi * progress) + 0.01
    if schedule == "half-cosine":
        if step < warmup:
            return (step + 1) / max(warmup, 1.0)
        progress = (step - warmup) / max(total - warmup, 1.0)
        return 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))
    raise ValueError(f"unknown schedule {schedule!r}; expected quarter-cosine or half-cosine")


def nested_subset(num_images: int, size: int, seed: int) -> np.ndarray:
    """The training subset of ``size`` images for ``seed``: the first ``size`` of one seeded permutation
    of the split's ``num_images`` images, sorted — so a seed's smaller subsets lie inside its larger ones."""
    order = np.random.default_rng([SUBSET_STREAM, seed]).permutation(num_images)
    return np.sort(order[:size])


def views_of(split: FeatureSplit) -> tuple[int, int]:
    """``(views, images per view)`` of a feature split: augmented splits hold ``views`` view-major
    copies of the dataset split (feature image ``v * n + i`` is view ``v`` of image ``i``)."""
    augment = split.fingerprint.get("augment")
    views = int(augment["views"]) if augment else 1
    return views, split.num_images // views


def training_batches(train: FeatureSplit, *, layers: Sequence[str], targets: Mapping[str, Any], batch_size: int,
                     seed: int, epoch: int, view: int | None = None, shuffle: bool = True,
                     loader: FeatureLoader | None = None, subset: np.ndarray | None = None) -> Any:
    """The batches of one pass over a training split, targets moved with each image's augmented view.

    On an augmented split the pass reads view ``epoch mod views`` (or ``view``) — the paper's
    training distribution, one fresh view per epoch — and crops each image's targets as its
    view was cropped; otherwise it reads the whole split. ``subset`` (dataset image indices)
    keeps only those images (of that view). With ``loader`` (made for ``train``, ``layers`` and
    ``targets``) the same batches come as tensors on its device.
    """
    views, per_view = views_of(train)
    if loader is None:
        def source(**kwargs: Any) -> Any:
            return iterate_batches(train, layers=layers, targets=targets, **kwargs)
    else:
        source = loader.batches
    if views == 1:
        yield from source(batch_size=batch_size, seed=seed, epoch=epoch, shuffle=shuffle, subset=subset)
        return
    augment = train.fingerprint["augment"]
    v = epoch % views if view is None else view
    for batch in source(batch_size=batch_size, seed=seed, epoch=epoch, shuffle=shuffle,
                        images=(v * per_view, (v + 1) * per_view), target_offset=v * per_view,
                        subset=None if subset is None else np.asarray(subset) + v * per_view):
        crops = [crop_index(view_params(augment["policy"], seed=int(augment["seed"]), index=int(i - v * per_view),
                                        view=v), *next(iter(batch.targets.values())).shape[1:3])
                 for i in batch.index] if batch.targets else []
        yield Batch(batch.index, batch.features, {k: _cropped(a, crops) for k, a in batch.targets.items()})


def _cropped(targets: Any, crops: Sequence[tuple[np.ndarray, np.ndarray] | None]) -> Any:
    """Each image's targets ``(B, H, W[, C])`` (numpy, or a tensor on any device) cut by its view's
    crop (:func:`cache.augment.crop_index`: nearest, values unchanged, as ``augment_targets``)."""
    if all(crop is None for crop in crops):
        return targets
    if isinstance(targets, torch.Tensor):
        def take(j: int, rows: np.ndarray, cols: np.ndarray) -> torch.Tensor:
            return targets[j][torch.from_numpy(rows).to(targets.device)[:, None],
                              torch.from_numpy(cols).to(targets.device)[None, :]]
        return torch.stack([targets[j] if crop is None else take(j, *crop) for j, crop in enumerate(crops)])
    return np.stack([targets[j] if crop is None else targets[j][crop[0][:, None], crop[1][None, :]]
                     for j, crop in enumerate(crops)])


@dataclass
class _Probe:
    config: ProbeConfig
    head: Probe
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    losses: list[float] = field(default_factory=list)
    pending: list[torch.Tensor] = field(default_factory=list)     # this epoch's losses, still on the device

    def flush(self) -> None:
        """Move the pending losses to :attr:`losses` (one device sync per epoch, not one per step)."""
        if self.pending:
            self.losses.extend(torch.stack(self.pending).tolist())
            self.pending.clear()


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
    """Logits of every head (a :class:`Probe`, or a bare head). Linear heads on the same layers
    run as one projection with their weights stacked, so a sweep of learning rates reads the
    batch's features once; a probe's logit norm is applied to its own part."""
    outputs: list[torch.Tensor | None] = [None] * len(heads)
    groups: dict[tuple[str, ...], list[int]] = {}
    inner = [head.head if isinstance(head, Probe) else head for _, head in heads]
    for i, ((config, _), head) in enumerate(zip(heads, inner)):
        if isinstance(head, LinearHead):
            groups.setdefault(config.layers, []).append(i)
        else:
            outputs[i] = head(inputs.for_head(head.input_kind, config.layers))
    for layers, members in groups.items():
        convs = [inner[i].conv for i in members]
        stacked = _stacked_linear(convs, layers, inputs)
        for i, part in zip(members, stacked.split([c.out_channels for c in convs], dim=1)):
            outputs[i] = part
    return [head.normalise(out) if isinstance(head, Probe) else out
            for (_, head), out in zip(heads, outputs)]  # type: ignore[misc]


def grouped_loss(task: DenseTask, prediction: torch.Tensor, target: torch.Tensor, valid: torch.Tensor,
                 choices: DenseChoices) -> torch.Tensor:
    """The task's loss, or with ``choices.loss_groups = g`` the mean of the losses of the batch's
    ``g`` contiguous parts (as ``g`` GPUs under DDP each compute the loss of their share)."""
    if choices.loss_groups <= 1:
        return task.loss(prediction, target, valid, choices)
    parts = [task.loss(p, t, v, choices) for p, t, v in zip(*(torch.tensor_split(x, choices.loss_groups)
                                                                for x in (prediction, target, valid))) if len(p)]
    return torch.stack(parts).mean()


#: called after each optimiser step of each probe: ``(config, step, loss, lr)``, step 1-based
StepHook = Callable[[ProbeConfig, int, float, float], None]


class Sweep:
    """A sweep of heads trained together, one epoch at a time: what :func:`train_sweep` runs, and
    what :mod:`probe.lockstep` runs epoch by epoch as each augmented view is extracted.

    Its whole training state (heads, optimisers, schedulers, losses, the torch RNG) round-trips
    through :meth:`state_dict` / :meth:`load_state_dict`, so a sweep stopped between epochs and
    restored trains on exactly as an uninterrupted one.
    """

    def __init__(self, task: DenseTask, *, train: FeatureSplit, train_data: SplitView,
                 dataset_attrs: Mapping[str, Any], configs: Sequence[ProbeConfig], settings: TrainSettings,
                 standardizer: Standardizer, subset: np.ndarray | None = None) -> None:
        self.task, self.train, self.settings, self.standardizer = task, train, settings, standardizer
        self.attrs, self.subset = dataset_attrs, subset
        self.device = torch.device(settings.device)
        choices = settings.choices
        self.size = train_data.image_size
        self.layers = sorted({layer for c in configs for layer in c.layers}, key=train.layers.index)
        out_channels = task.out_channels(dataset_attrs, choices)
        self.per_epoch = views_of(train)[1] if subset is None else len(subset)
        self.steps_per_epoch = math.ceil(self.per_epoch / choices.batch_size)
        total = self.steps_per_epoch * choices.epochs
        warmup = choices.warmup_epochs * self.steps_per_epoch
        self.probes: list[_Probe] = []
        for config in configs:
            shapes = [train.shape(layer) for layer in config.layers]
            equal = len({s[1:] for s in shapes}) == 1
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(head_seed(settings.seed, config))
                head = build_head(config.head, in_channels=[s[0] for s in shapes], out_channels=out_channels,
                                  hidden=choices.hidden, equal_grids=equal, dpt=choices.dpt)
                probe = Probe(head, out_channels=out_channels, logit_norm=choices.logit_norm).to(self.device)
            optimizer = torch.optim.AdamW(probe.parameters(), lr=config.lr, weight_decay=choices.weight_decay)
            scheduler = torch.optim.lr_scheduler.LambdaLR(
                optimizer, lambda step: lr_multiplier(step, warmup=warmup, total=total, schedule=choices.schedule))
            self.probes.append(_Probe(config, probe, optimizer, scheduler))
        self.targets = {key: train_data.array(key) for key in task.target_keys(choices)}
        self.epochs_done = 0
        self.seconds = 0.0

    def loader(self, *, budget: int | None, say: Any = None, what: str = "") -> FeatureLoader:
        """A loader of this sweep's layers and targets of its train split."""
        return FeatureLoader(self.train, layers=self.layers, targets=self.targets, device=self.device,
                             budget=budget, say=say, what=what)

    def run_epoch(self, epoch: int, *, loader: FeatureLoader | None = None, on_step: StepHook | None = None,
                  bar: Any = None) -> None:
        """Train every head for epoch ``epoch`` (its view of an augmented split, its shuffle)."""
        started = time.perf_counter()
        task, choices, ds_attrs = self.task, self.settings.choices, self.attrs
        for probe in self.probes:
            probe.head.train()
        for batch in training_batches(self.train, layers=self.layers, batch_size=choices.batch_size,
                                      seed=self.settings.seed, epoch=epoch, targets=self.targets, loader=loader,
                                      subset=self.subset):
            target, valid = task.targets(subsample_raw(batch.targets, choices.loss_stride), ds_attrs, self.device,
                                         choices, training=True)
            outputs = forward_heads([(p.config, p.head) for p in self.probes],
                                    BatchInputs(batch.features, self.standardizer))
            losses = [grouped_loss(task, task.decode(logits, self.size, ds_attrs, choices, choices.loss_stride),
                                   target, valid, choices) for logits in outputs]
            for probe in self.probes:
                probe.optimizer.zero_grad(set_to_none=True)
            # each loss depends on its own head only, so one backward gives every head its own gradient
            torch.stack(losses).sum().backward()
            for probe, loss in zip(self.probes, losses):
                lr = probe.optimizer.param_groups[0]["lr"]
                probe.optimizer.step()
                probe.scheduler.step()
                if on_step is None:
                    probe.pending.append(loss.detach())
                else:
                    probe.losses.append(float(loss.detach()))
                    on_step(probe.config, len(probe.losses), probe.losses[-1], lr)
            if bar is not None:
                bar.update(len(batch.index), note=f"epoch {epoch + 1}/{choices.epochs}")
        for probe in self.probes:
            probe.flush()
        self.epochs_done = epoch + 1
        self.seconds += time.perf_counter() - started

    def epoch_line(self) -> str:
        return f"epoch {self.epochs_done}/{self.settings.epochs}: " + ", ".join(
            f"{p.config.key} loss {np.mean(p.losses[-self.steps_per_epoch:]):.4f}" for p in self.probes)

    def state_dict(self) -> dict[str, Any]:
        """Everything training depends on, as tensors and plain values (``torch.load(weights_only=True)``-safe)."""
        return {"epochs_done": self.epochs_done, "seconds": self.seconds, "rng": torch.get_rng_state(),
                "probes": {p.config.key: {"head": p.head.state_dict(), "optimizer": p.optimizer.state_dict(),
                                          "scheduler": p.scheduler.state_dict(), "losses": list(p.losses)}
                           for p in self.probes}}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        saved = state["probes"]
        if sorted(saved) != sorted(p.config.key for p in self.probes):
            raise ValueError(f"saved sweep holds {sorted(saved)}, not {sorted(p.config.key for p in self.probes)}")
        for probe in self.probes:
            entry = saved[probe.config.key]
            probe.head.load_state_dict(entry["head"], strict=True)
            probe.optimizer.load_state_dict(entry["optimizer"])
            probe.scheduler.load_state_dict(entry["scheduler"])
            probe.losses = [float(x) for x in entry["losses"]]
        self.epochs_done, self.seconds = int(state["epochs_done"]), float(state["seconds"])
        torch.set_rng_state(state["rng"])

    def finish(self) -> tuple[dict[ProbeConfig, torch.nn.Module], dict[ProbeConfig, dict[str, Any]]]:
        """The heads, in evaluation mode, and each probe's training stats."""
        n = self.steps_per_epoch
        stats = {p.config: {"final_train_loss": float(np.mean(p.losses[-n:])) if p.losses else float("nan"),
                            "train_seconds_shared": self.seconds, "steps": len(p.losses)} for p in self.probes}
        return {p.config: p.head.evaluating() for p in self.probes}, stats


def train_sweep(task: DenseTask, *, train: FeatureSplit, train_data: SplitView, dataset_attrs: Mapping[str, Any],
                configs: Sequence[ProbeConfig],
                settings: TrainSettings, standardizer: Standardizer,
                log: Any = None, quiet: bool = True, name: str = "train",
                on_step: StepHook | None = None, subset: np.ndarray | None = None,
                loader: FeatureLoader | None = None,
                ) -> tuple[dict[ProbeConfig, torch.nn.Module], dict[ProbeConfig, dict[str, Any]]]:
    """Train every config on the train split (only images ``subset`` if given: an epoch is one pass
    over them) in one pass per epoch; returns heads and training stats.

    Unless ``quiet``, shows progress (``name``) over every image of every epoch — images/s, the
    epoch, the ETA of the whole sweep; ``log`` gets one line per epoch with each probe's mean loss.
    Batches come from ``loader`` (made for ``train``, the sweep's layers and the task's targets),
    by default a :class:`~cache.loader.FeatureLoader` under ``settings.cache_budget``.
    """
    sweep = Sweep(task, train=train, train_data=train_data, dataset_attrs=dataset_attrs, configs=configs,
                  settings=settings, standardizer=standardizer, subset=subset)
    # the split is held on the device for the whole sweep when it fits the budget, else streamed
    if loader is None:
        loader = sweep.loader(budget=settings.cache_budget, say=log, what=f"{name} ({train.split})")
    with progress_bar(total=sweep.per_epoch * settings.epochs, name=name, unit="img", quiet=quiet) as bar:
        for epoch in range(settings.epochs):
            sweep.run_epoch(epoch, loader=loader, on_step=on_step, bar=bar)
            if log is not None:
                with bar.paused():
                    log(sweep.epoch_line())
    return sweep.finish()


@torch.no_grad()
def evaluate_heads(task: DenseTask, *, test: FeatureSplit, test_data: SplitView, dataset_attrs: Mapping[str, Any],
                   heads: Mapping[ProbeConfig, torch.nn.Module], settings: TrainSettings,
                   standardizer: Standardizer, quiet: bool = True,
                   name: str = "evaluate") -> dict[ProbeConfig, dict[str, float]]:
    """Score every trained head on the test split, in store order in batches of
    ``eval_batch_size`` (one read of each test batch, streamed to the device); progress (``name``)
    unless ``quiet``."""
    device = torch.device(settings.device)
    choices = settings.choices
    ds_attrs = dataset_attrs
    size = test_data.image_size
    layers = sorted({layer for c in heads for layer in c.layers}, key=test.layers.index)
    metrics = {config: task.new_metrics(choices) for config in heads}
    targets = {key: test_data.array(key) for key in task.needs}
    loader = FeatureLoader(test, layers=layers, targets=targets, device=device, budget=0)    # a single pass
    with progress_bar(total=test.num_images, name=name, unit="img", quiet=quiet) as bar:
        for batch in loader.batches(batch_size=choices.eval_batch_size, shuffle=False):
            target, valid = task.targets(batch.targets, ds_attrs, device, choices)
            for config, logits in zip(heads, forward_heads(list(heads.items()),
                                                           BatchInputs(batch.features, standardizer))):
                metrics[config].update(task.decode(logits, size, ds_attrs, choices), target, valid)
            bar.update(len(batch.index))
    return {config: m.result() for config, m in metrics.items()}
