"""Running probes for one task over cached models, writing one record per probe."""

from __future__ import annotations

import itertools
import sys
import time
from typing import Any, Callable, Sequence

import torch

from cache import DataRoot, MidprobeError, data_root, list_feature_stores, open_dataset, open_features
from probe.features import Standardizer, channel_stats
from probe.heads import CLOSED_FORM
from probe.records import format_table, write_record
from probe.ridge import evaluate_ridge, fit_ridge
from probe.tasks import DenseTask, ZeroShotTask, get_task
from probe.train import ProbeConfig, TrainSettings, evaluate_heads, train_sweep


def _say(quiet: bool) -> Callable[[str], None]:
    return (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr))


def resolve_layers(available: Sequence[str], layer_sets: Sequence[Sequence[str]] | None) -> list[tuple[str, ...]]:
    """Layer sets to probe (default: all cached layers); unknown names are an error."""
    if not layer_sets:
        return [tuple(available)]
    out = []
    for chosen in layer_sets:
        missing = [layer for layer in chosen if layer not in available]
        if missing:
            raise MidprobeError(f"layers {', '.join(missing)} are not cached; the store has {', '.join(available)}")
        out.append(tuple(chosen))
    return out


def run_task(*, task_name: str, dataset: str, models: Sequence[str] | None = None, heads: Sequence[str] = ("linear",),
             lrs: Sequence[float] = (5e-4,), layer_sets: Sequence[Sequence[str]] | None = None,
             settings: TrainSettings = TrainSettings(), root: DataRoot | None = None,
             quiet: bool = False, options: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Probe ``task_name`` on ``dataset`` for each model (default: every cached model)."""
    root = root or data_root()
    say = _say(quiet)
    task = get_task(task_name)
    store = open_dataset(dataset, root=root)
    models = list(models or list_feature_stores(store.name, root=root))
    if not models:
        raise MidprobeError(f"no feature stores for dataset {store.name!r}; run `make extract MODEL=... DATASET={store.name}`")
    if settings.device.startswith("cuda") and not torch.cuda.is_available():
        raise MidprobeError(f"device {settings.device!r} was asked for but no CUDA GPU is visible; use DEVICE=cpu")
    torch.manual_seed(settings.seed)
    rows = []
    for model in models:
        started = time.perf_counter()
        if isinstance(task, ZeroShotTask):
            results = [_zero_shot(task, store, model, root, options or {}, layer_sets)]
        else:
            results = _dense(task, store, model, root, heads, lrs, layer_sets, settings, say)
        for probe, metrics, fingerprint, config, extra in results:
            seconds = time.perf_counter() - started
            path = write_record(root, task=task.name, dataset=store.name, model=model, probe=probe, config=config,
                                metrics=metrics, headline=task.headline, fingerprint=fingerprint,
                                wall_seconds=seconds, seed=settings.seed, extra=extra)
            rows.append({"task": task.name, "dataset": store.name, "model": model, "probe": probe,
                         task.headline: metrics.get(task.headline), "record": str(path.relative_to(root.root))})
            say(f"[probe] {task.name}/{store.name}/{model}/{probe}: {task.headline} = {metrics.get(task.headline)}")
    return rows


def _dense(task: DenseTask, store, model: str, root: DataRoot, heads: Sequence[str], lrs: Sequence[float],
           layer_sets, settings: TrainSettings, say) -> list[tuple]:
    train_data, test_data = store.split("train"), store.split("test")
    task.check_dataset(train_data)
    task.check_dataset(test_data)
    expect = {"dataset_fingerprint": store.fingerprint}
    train = open_features(store.name, model, "train", expect=expect, root=root)
    test = open_features(store.name, model, "test", expect={**expect, "weights": train.fingerprint["weights"],
                                                               "layers": train.fingerprint["layers"]}, root=root)
    chosen_sets = resolve_layers(train.layers, layer_sets)
    used = sorted({layer for s in chosen_sets for layer in s}, key=train.layers.index)
    say(f"[probe] {model}: per-channel statistics of {', '.join(used)} over {train.num_images} train images")
    standardizer = Standardizer(channel_stats(train, used), torch.device(settings.device))
    sgd = [ProbeConfig(head, layers, lr) for head, layers, lr in itertools.product(
        [h for h in heads if h not in CLOSED_FORM], chosen_sets, lrs)]
    attrs = store.attrs
    results = []
    base = {"task": task.name, "train_images": train.num_images, "test_images": test.num_images,
            "settings": settings.as_dict()}
    if sgd:
        say(f"[probe] {model}: training {len(sgd)} head(s) in one pass: {', '.join(c.key for c in sgd)}")
        trained, stats = train_sweep(task, train=train, train_data=train_data, dataset_attrs=attrs, configs=sgd,
                                     settings=settings, standardizer=standardizer, log=say)
        scores = evaluate_heads(task, test=test, test_data=test_data, dataset_attrs=attrs, heads=trained,
                                settings=settings, standardizer=standardizer)
        for config in sgd:
            results.append((config.key, scores[config], train.fingerprint,
                            {**base, "head": config.head, "layers": list(config.layers), "lr": config.lr},
                            {"training": stats[config]}))
    for layers in chosen_sets if any(h in CLOSED_FORM for h in heads) else []:
        fit = fit_ridge(task, train=train, train_data=train_data, dataset_attrs=attrs, layers=layers,
                        standardizer=standardizer, batch_size=settings.batch_size, device=settings.device)
        metrics = evaluate_ridge(task, fit, test=test, test_data=test_data, dataset_attrs=attrs, layers=layers,
                                 standardizer=standardizer, batch_size=settings.batch_size, device=settings.device)
        key = f"ridge-{'+'.join(layers)}"
        results.append((key, metrics, train.fingerprint, {**base, "head": "ridge", "layers": list(layers)},
                        {"ridge": {"penalty": fit.penalty, "rows": fit.rows,
                                   "heldout_mse": {f"{k:g}": v for k, v in fit.heldout_mse.items()}}}))
    return results


def _zero_shot(task: ZeroShotTask, store, model: str, root: DataRoot, options: dict[str, Any], layer_sets) -> tuple:
    if task.split not in store.splits:
        raise MidprobeError(f"task {task.name!r} needs split {task.split!r} in dataset {store.name!r}, "
                            f"which has {', '.join(store.splits)}")
    data = store.split(task.split)
    task.check_dataset(data)
    features = open_features(store.name, model, task.split, expect={"dataset_fingerprint": store.fingerprint}, root=root)
    layers = resolve_layers(features.layers, layer_sets)[0] if layer_sets else None
    metrics, config = task.evaluate(features=features, data=data, dataset_attrs=store.attrs, layers=layers, **options)
    return task.name if not layers else f"{task.name}-{'+'.join(layers)}", metrics, features.fingerprint, config, {}


def print_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no results)"
    headline = [k for k in rows[0] if k not in {"task", "dataset", "model", "probe", "record"}]
    return format_table(rows, ["task", "dataset", "model", "probe", *headline])
