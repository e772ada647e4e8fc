"""Lockstep training on augmented views: extract view e, train every head that reads it for epoch e, drop it.

The cached path (``make extract`` then ``make probe``) stores all ``K`` augmented views of a
training split and reads view ``e mod K`` in epoch ``e``; each view is written once and read
once per epoch by every head. :func:`run_lockstep` trains the same probes without ever holding
more than one view (two while the next is prefetched on a GPU): for each epoch ``e`` it extracts
view ``e mod K`` (:class:`extract.views.ViewSource`, the same bytes as the cache's chunks),
trains **every** sweep that reads the split — each task (depth and normals on NYU), seed, head,
layer set and learning rate — for that epoch, saves their state, and deletes the view.

The numbers are the cached path's, bit for bit on a CPU (``tests/test_lockstep.py``): the same
batches (:func:`probe.train.training_batches` on a split of the cached geometry), the same
:class:`probe.train.Sweep` code, the same per-channel statistics. Those statistics
(``feature_norm = "train-stats"``) cover every view before the first step, so lockstep then
runs one statistics pass first (each view extracted, its per-chunk moments saved, dropped; in
reverse order, so view 0 is still there for epoch 0): ``2K - 1`` view extractions per model
instead of ``K``, whatever the number of probes.

Resumable: the end of each epoch saves every sweep (heads, optimisers, schedulers, losses, the
torch RNG) to ``state/epoch-<e>.pt``, atomically and fsynced (:func:`cache.durable.atomic_write`);
a rerun after a kill during epoch ``e`` loads epoch ``e - 1``'s state and trains epoch ``e`` again,
and its records equal an unkilled run's. Records have the cached path's names and contents (the
same experiment); the workspace is deleted once they are written.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import json
import os
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from cache import DataRoot, MidprobeError, data_root, open_dataset
from cache.durable import atomic_write
from extract.views import ViewSource
from probe.features import Standardizer, chunk_moments, stats_from_moments
from probe.heads import CLOSED_FORM, check_head
from probe.records import write_record
from probe.train import ProbeConfig, Sweep, TrainSettings, evaluate_heads
from protocols import Protocol, feature_split_name, get_protocol

#: Set by the kill tests: ``<epoch>`` makes the run SIGKILL itself half-way through that epoch.
KILL_ENV = "MIDPROBE_LOCKSTEP_KILL_AT"


@dataclass
class _TaskPlan:
    """One dense task's sweeps in a lockstep run."""

    task: Any
    choices: Any
    configs: list[ProbeConfig]
    layer_sets: list[tuple[str, ...]]
    used: list[str]
    test: Any
    sweeps: dict[int, Sweep] = dataclasses.field(default_factory=dict)


def _say(quiet: bool) -> Callable[[str], None]:
    return (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr))


def run_lockstep(*, dataset: str, model: str, tasks: Sequence[str], protocol: str | Protocol = "midprobe",
                 heads: Sequence[str] | None = None, lrs: Sequence[float] | None = None,
                 layer_sets: Sequence[Sequence[str]] | None = None, overrides: Mapping[str, Any] | None = None,
                 seeds: Sequence[int] = (0,), device: str = "cpu", precision: str = "fp16",
                 root: DataRoot | None = None, batch_size: int = 16, weights: str | None = None,
                 chunk_images: int | None = None,
                 backbone: Any = None, overlap: bool | None = None, views_on_disk: int | None = None,
                 keep: bool = False,
                 quiet: bool = True) -> list[dict[str, Any]]:
    """Train and score the dense ``tasks`` on ``dataset`` for ``model`` in lockstep with its augmented
    views; one record per probe and seed, as :func:`probe.run.run_task` writes them.

    The test splits must be cached (``make extract``); the augmented training split need not be.
    ``overlap`` (default: on CUDA) extracts view ``e + 1`` in a background thread while the
    heads train on view ``e``. ``views_on_disk`` (default: 2 with ``overlap``, else 1) is how many
    views may be on disk at once: the statistics pass leaves the first ``views_on_disk`` (less one
    with ``overlap``) in place for the first epochs, so only the others are extracted twice. ``keep``
    keeps the workspace (views and state) afterwards.
    """
    from extract.backbones import build_backbone
    from extract.plan import plan_extraction
    from extract.runner import protocol_model
    from probe.run import _open_split, dense_choices, resolve_layers
    from probe.tasks import DenseTask, get_task

    root = root or data_root()
    say = _say(quiet)
    protocol = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
    store = open_dataset(dataset if "@" in dataset else protocol.dataset_name(dataset), root=root)
    loader_name = store.attrs.get("loader", store.name)
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MidprobeError(f"device {device!r} was asked for but no CUDA GPU is visible; use DEVICE=cpu")
    for head in heads or ():
        check_head(head)
    if any(h in CLOSED_FORM for h in heads or ()):
        raise MidprobeError("lockstep trains SGD heads epoch by epoch; the ridge head fits every view at once, "
                            "so leave it out (e.g. HEAD=linear,mlp) or use the cached path")
    names = set()
    for name in tasks:
        task = get_task(name)
        if not isinstance(task, DenseTask):
            raise MidprobeError(f"task {name!r} is zero-shot: nothing trains on augmented views, so lockstep "
                                "does not apply; probe it on the cache")
        names.add(feature_split_name("train", protocol.extraction_choices(name, loader_name), training=True))
    if len(names) != 1:
        raise MidprobeError(f"tasks {', '.join(tasks)} train on different splits ({', '.join(sorted(names))}); "
                            "run lockstep once per split")
    split_name = names.pop()
    jobs = [j for j in plan_extraction(attrs=store.attrs, splits=store.splits, protocol=protocol, tasks=list(tasks))
            if j.name == split_name]
    if not jobs or not jobs[0].choices.augment_views:
        raise MidprobeError(f"split {split_name!r} of {store.name!r} has no augmented views under protocol "
                            f"{protocol.name!r}; lockstep needs AUGMENT=k (or PROTOCOL=paper)")
    backbone = backbone or build_backbone(protocol_model(model, protocol), weights=weights)
    views = ViewSource(backbone=backbone, store=store, job=jobs[0], root=root, batch_size=batch_size, device=device,
                       precision=precision, chunk_images=chunk_images, progress=not quiet)
    feature_model = backbone.spec.name
    train = views.split
    expect = {"dataset_fingerprint": store.fingerprint, "weights": train.fingerprint["weights"]}
    plans: dict[str, _TaskPlan] = {}
    for name in tasks:
        task = get_task(name)
        choices = dense_choices(protocol, name, overrides)
        extraction = protocol.extraction_choices(name, loader_name)
        test = _open_split(store, feature_model, "test", extraction, root, training=False, protocol=protocol,
                           expect=expect, precision=precision)
        absent = store.attrs.get("absent_targets") or {}
        task.check_dataset(store.split("train"), task.target_keys(choices), absent)
        task.check_dataset(store.split("test"), task.needs, absent)
        sets = resolve_layers(train.layers, layer_sets, train, protocol.name)
        resolve_layers(test.layers, sets, test, protocol.name)
        used = sorted({layer for s in sets for layer in s}, key=train.layers.index)
        configs = [ProbeConfig(h, layers, lr) for h, layers, lr in itertools.product(
            list(heads or [h for h in choices.heads if h not in CLOSED_FORM]), sets, list(lrs or [choices.lr]))]
        plans[name] = _TaskPlan(task, choices, configs, sets, used, test)
    state_dir = views.dir / "state"
    identity = _identity(plans, seeds, feature_model, protocol, precision, train)
    overlap = torch.device(device).type == "cuda" if overlap is None else overlap
    most = views_on_disk or (2 if overlap else 1)
    if most < 1 or (overlap and most < 2):
        raise MidprobeError(f"views on disk {most}: expected >= 1 (>= 2 while the next view is prefetched)")
    retained = max(1, most - 1 if overlap else most)
    stats = _statistics(views, plans, state_dir, identity, say, retained)
    for name, plan in plans.items():
        standardizer = Standardizer({layer: stats[layer] for layer in plan.used} if plan.choices.feature_norm
                                    == "train-stats" else {layer: (np.zeros(train.shape(layer)[0]),
                                                                   np.ones(train.shape(layer)[0]))
                                                           for layer in plan.used}, torch.device(device))
        for seed in seeds:
            torch.manual_seed(seed)
            plan.sweeps[seed] = Sweep(plan.task, train=train, train_data=store.split("train"),
                                      dataset_attrs=store.attrs, configs=plan.configs,
                                      settings=TrainSettings(plan.choices, seed, device), standardizer=standardizer)
    started = time.perf_counter()
    epochs = max(plan.choices.epochs for plan in plans.values())
    first = _resume(state_dir, plans, identity, say)
    kill_at = os.environ.get(KILL_ENV)
    loaders = {(name, seed): sweep.loader(budget=0) for name, plan in plans.items()
               for seed, sweep in plan.sweeps.items()}
    for epoch in range(first, epochs):
        view = epoch % views.views
        nxt = (epoch + 1) % views.views if epoch + 1 < epochs else None
        views.extract(view)
        if overlap and nxt is not None and nxt != view:
            views.prefetch(nxt)
        say(f"[lockstep] {feature_model} on {store.name}: epoch {epoch + 1}/{epochs} on view {view}")
        for name, plan in plans.items():
            for seed, sweep in plan.sweeps.items():
                if epoch < plan.choices.epochs:
                    if kill_at is not None and int(kill_at) == epoch and name == list(plans)[-1]:
                        os.kill(os.getpid(), 9)     # the kill test: die half-way through the epoch
                    sweep.run_epoch(epoch, loader=loaders[name, seed])
                    say(f"[lockstep] {name} seed {seed}: {sweep.epoch_line()}")
        _save(state_dir, epoch, plans, identity)
        later = {e % views.views for e in range(epoch + 1, epochs)}
        views.drop(view, keep=[v for v in (nxt,) if v is not None] + [v for v in range(retained) if v in later])
    views.wait()
    rows = _records(plans, store, feature_model, train, protocol, overrides, precision, root, started, say,
                    loader_name, device)
    if not keep:
        views.remove()
        shutil.rmtree(views.dir, ignore_errors=True)
    say(f"[lockstep] {feature_model} on {store.name}: {views.extracted} images extracted, {len(rows)} records")
    return rows


def _identity(plans: Mapping[str, _TaskPlan], seeds: Sequence[int], model: str, protocol: Protocol,
              precision: str, train: Any) -> str:
    """What a saved state belongs to: a state of another run is never resumed from."""
    return json.dumps({"model": model, "protocol": protocol.name, "precision": precision, "seeds": list(seeds),
                       "fingerprint": train.fingerprint,
                       "tasks": {n: {"choices": dataclasses.asdict(p.choices), "probes": [c.key for c in p.configs]}
                                 for n, p in plans.items()}}, sort_keys=True, default=str)


def _statistics(views: ViewSource, plans: Mapping[str, _TaskPlan], state_dir: Path, identity: str,
                say: Callable[[str], None], retained: int = 1) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per-channel statistics over every view, as :func:`probe.features.channel_stats` computes them
    on the cached split: each view extracted, its chunks' moments saved, the view dropped. Views
    run from the last to the first, so views ``0 .. retained - 1`` stay for the first epochs."""
    layers = sorted({layer for p in plans.values() if p.choices.feature_norm == "train-stats" for layer in p.used},
                    key=views.split.layers.index)
    if not layers:
        return {}
    state_dir.mkdir(parents=True, exist_ok=True)
    moments: dict[int, dict[str, np.ndarray]] = {}
    for view in reversed(range(views.views)):
        path = state_dir / f"moments-{view}.npz"
        saved = _load_moments(path, identity, layers)
        if saved is None:
            views.extract(view)
            split = views.split
            saved = {c: chunk_moments(split, layers, c) for c in views.chunks(view)}
            buffer = io.BytesIO()
            np.savez(buffer, identity=np.array(identity),
                     **{f"{c}|{layer}": m[layer] for c, m in saved.items() for layer in layers})
            atomic_write(path, buffer.getvalue())
            if view >= retained:
                views.drop(view, keep=[view - 1])
        moments.update(saved)
    say(f"[lockstep] per-channel statistics of {', '.join(layers)} over {views.views} views")
    split = views.split
    return stats_from_moments(split, layers, [moments[c] for c in sorted(moments)])


def _load_moments(path: Path, identity: str, layers: Sequence[str]) -> dict[int, dict[str, np.ndarray]] | None:
    if not path.exists():
        return None
    with np.load(path) as data:
        if str(data["identity"]) != identity:
            return None
        out: dict[int, dict[str, np.ndarray]] = {}
        for key in data.files:
            if key != "identity":
                chunk, layer = key.split("|", 1)
                out.setdefault(int(chunk), {})[layer] = data[key]
    return out if all(set(m) >= set(layers) for m in out.values()) else None


def _save(state_dir: Path, epoch: int, plans: Mapping[str, _TaskPlan], identity: str) -> None:
    """Every sweep's state at the end of ``epoch``, atomic and fsynced; the previous epoch's goes."""
    state_dir.mkdir(parents=True, exist_ok=True)
    buffer = io.BytesIO()
    torch.save({"identity": identity, "epoch": epoch,
                "sweeps": {f"{n}|{s}": sw.state_dict() for n, p in plans.items() for s, sw in p.sweeps.items()}},
               buffer)
    atomic_write(state_dir / f"epoch-{epoch}.pt", buffer.getvalue())
    for old in state_dir.glob("epoch-*.pt"):
        if old.name != f"epoch-{epoch}.pt":
            old.unlink(missing_ok=True)


def _resume(state_dir: Path, plans: Mapping[str, _TaskPlan], identity: str, say: Callable[[str], None]) -> int:
    """The first epoch to train: 0, or the one after the last saved (its state loaded into the sweeps)."""
    saved = sorted(state_dir.glob("epoch-*.pt"), key=lambda p: int(p.stem.split("-")[1]))
    if not saved:
        return 0
    state = torch.load(saved[-1], map_location="cpu", weights_only=True)
    if state.get("identity") != identity:
        say(f"[lockstep] {saved[-1]} belongs to another run; starting over")
        return 0
    for name, plan in plans.items():
        for seed, sweep in plan.sweeps.items():
            sweep.load_state_dict(state["sweeps"][f"{name}|{seed}"])
    say(f"[lockstep] resuming after epoch {state['epoch'] + 1} from {saved[-1]}")
    return int(state["epoch"]) + 1


def _records(plans: Mapping[str, _TaskPlan], store: Any, model: str, train: Any, protocol: Protocol,
             overrides: Mapping[str, Any] | None, precision: str, root: DataRoot, started: float,
             say: Callable[[str], None], loader_name: str, device: str) -> list[dict[str, Any]]:
    """Score every sweep on its test split and write the records :func:`probe.run.run_task` would."""
    from probe.plan import plan_records
    from probe.run import _scored

    rows = []
    for name, plan in plans.items():
        extraction = protocol.extraction_choices(name, loader_name)
        # the records' names and identifying configs come from the one plan the cached path and the grid use
        planned = {(p.probe, p.seed): p for p in plan_records(
            task=name, dense=True, protocol=protocol, loader=loader_name, dataset_attrs=store.attrs,
            layer_sets=plan.layer_sets, heads=list(dict.fromkeys(c.head for c in plan.configs)),
            lrs=list(dict.fromkeys(c.lr for c in plan.configs)), overrides=overrides, seeds=list(plan.sweeps),
            device=device, precision=precision)}
        for seed, sweep in plan.sweeps.items():
            trained, stats = sweep.finish()
            scores = evaluate_heads(plan.task, test=plan.test, test_data=store.split("test"),
                                    dataset_attrs=store.attrs, heads=trained, settings=sweep.settings,
                                    standardizer=sweep.standardizer)
            for config in plan.configs:
                record_config = {"task": name, "train_images": train.num_images, "test_images": plan.test.num_images,
                                 "settings": sweep.settings.as_dict(), "head": config.head,
                                 "layers": list(config.layers), "lr": config.lr, "protocol": protocol.name,
                                 "overrides": dict(overrides or {}), "extraction": dataclasses.asdict(extraction),
                                 **({} if precision == "fp16" else {"precision": precision})}
                entry = planned.get((config.key, seed))
                if entry is None:
                    raise MidprobeError(f"{model}: lockstep probe {config.key} (seed {seed}) is not in the record "
                                        "plan (probe.plan.plan_records)")
                path = write_record(root, task=name, dataset=store.name, model=model, probe=config.key,
                                    config={**record_config, **entry.config}, metrics=scores[config],
                                    headline=plan.task.headline, fingerprint=train.fingerprint,
                                    wall_seconds=time.perf_counter() - started, seed=seed, protocol=protocol.name,
                                    extra={"training": stats[config], **_scored(scores[config], plan.task.headline)},
                                    name=entry.file)
                rows.append({"task": name, "dataset": store.name, "model": model, "probe": config.key,
                             plan.task.headline: scores[config].get(plan.task.headline),
                             "record": str(path.relative_to(root.root))})
                say(f"[probe] {protocol.name}: {name}/{store.name}/{model}/{config.key}: "
                    f"{plan.task.headline} = {scores[config].get(plan.task.headline)}")
    return rows
