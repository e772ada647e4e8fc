"""Running probes for one task over cached models, under a protocol, writing one record per probe."""

from __future__ import annotations

import functools
import itertools
import sys
import time
from dataclasses import replace
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from cache import DataRoot, MidprobeError, data_root, list_feature_stores, open_dataset, open_features
from cache.loader import FeatureLoader
from probe.features import Standardizer, channel_stats
from probe.heads import CLOSED_FORM, check_head
from probe.layers import add_hint as _add_hint, default_layers, resolve_layers  # noqa: F401 (imported from here)
from protocols import (CORRUPTIBLE_TASKS, ExtractionChoices, Protocol, corruption_list,
                       feature_split_name, get_protocol)
from probe.plan import PlannedRecord, condition_key, dense_choices, plan_records, ridge_key, zero_shot_key
from probe.records import format_table, write_record
from probe.ridge import evaluate_ridge, fit_ridge
from probe.scores import item_scores
from probe.tasks import DenseTask, ZeroShotTask, get_task
from probe.tracking import ProbeId, TensorBoardLog, open_log
from probe.train import ProbeConfig, TrainSettings, evaluate_heads, nested_subset, train_sweep, views_of


def _say(quiet: bool) -> Callable[[str], None]:
    return (lambda message: None) if quiet else (lambda message: print(message, file=sys.stderr))


def protocol_models(store_name: str, protocol: Protocol, models: Sequence[str] | None, root: DataRoot,
                    precision: str = "fp16") -> list[str]:
    """The feature stores to probe: ``models`` (or every cached one) as the protocol names them.

    A protocol with a ``model_option`` (``paper``) reads, for a model that offers that option, the
    store of that variant (its canonical name, e.g. ``vit_b_mae+hf+paper-layers+sincos``:
    :func:`extract.sizing.feature_model_name`), and the plain store of a model without it.
    """
    cached = list_feature_stores(store_name, root=root, precision=precision)
    if not protocol.model_option:
        return list(models or cached)
    from extract.runner import protocol_model
    from extract.sizing import feature_model_name

    def variant(model: str) -> str:
        try:
            name = feature_model_name(model, protocol)
        except MidprobeError:
            return model                      # not a model of this installation: the error names it
        # a variant not extracted yet: its +option name makes the error say what to extract
        return name if name in cached or name == model else protocol_model(model, protocol)

    if models:
        return [variant(m) for m in models]
    attrs = {m: _store_attrs(store_name, m, root, precision) for m in cached}
    bases = list(dict.fromkeys(a.get("base_model") or m.split("+")[0] for m, a in attrs.items()))
    return [v for v in map(variant, bases) if v in cached]


def _store_attrs(dataset: str, model: str, root: DataRoot, precision: str) -> dict[str, Any]:
    import zarr

    try:
        return dict(zarr.open_group(str(root.feature_store(dataset, model, precision)), mode="r").attrs)
    except (FileNotFoundError, ValueError):
        return {}


def subset_sizes(specs: Sequence[int | float | None] | None, num_images: int) -> list[int | None]:
    """Training-set sizes from ``specs`` — an image count, a fraction in (0, 1] of the split's
    ``num_images``, or ``None`` for all — in order, without repeats; the whole split is ``None``."""
    out: list[int | None] = []
    for spec in specs or [None]:
        if spec is None:
            size = None
        elif isinstance(spec, float):
            if not 0 < spec <= 1:
                raise MidprobeError(f"train images {spec:g}: a fraction must be in (0, 1]")
            size = max(1, round(spec * num_images))
        elif not 1 <= spec <= num_images:
            raise MidprobeError(f"train images {spec}: the train split has {num_images} images; ask for 1-{num_images} "
                                "or all")
        else:
            size = int(spec)
        size = None if size == num_images else size
        if size not in out:
            out.append(size)
    return out


def run_task(*, task_name: str, dataset: str, models: Sequence[str] | None = None,
             heads: Sequence[str] | None = None, lrs: Sequence[float] | None = None,
             layer_sets: Sequence[Sequence[str]] | None = None, protocol: str | Protocol = "midprobe",
             overrides: Mapping[str, Any] | None = None, seed: int = 0, device: str = "cpu",
             precision: str = "fp16", root: DataRoot | None = None, quiet: bool = False,
             options: dict[str, Any] | None = None, log: str | None = None, seeds: Sequence[int] | None = None,
             train_images: Sequence[int | float | None] | None = None,
             test_corruptions: Sequence[str] | str | None = None,
             cache_budget: int | None = None) -> list[dict[str, Any]]:
    """Probe ``task_name`` on ``dataset`` for each model (default: every cached model) under ``protocol``.

    ``overrides`` replaces named choices of the protocol (dense tasks: :class:`DenseChoices`
    fields; correspondence: :class:`CorrespondenceChoices` fields); ``heads`` and ``lrs``
    default to the protocol's. Records store the protocol's name, the resolved choices and the
    overrides. Unless ``quiet``, training and evaluation show progress; ``log="tensorboard"``
    also writes each probe's curves and metrics as TensorBoard events (:mod:`probe.tracking`).
    ``cache_budget`` (bytes; None: half the free device memory / available RAM; 0: stream) decides
    whether a training split is held on the device for its sweeps (:class:`cache.loader.FeatureLoader`);
    the numbers do not depend on it.

    Studies: ``seeds`` trains every head once per seed (default ``[seed]``). ``train_images``
    (counts, fractions, ``None`` = all) trains each seed's heads also on nested subsets of the
    train split (:func:`probe.train.nested_subset`: seed ``s``'s first ``n`` images). Every
    trained head (zero-shot: the evaluation) is scored on the clean test split and on each of
    ``test_corruptions`` (``"fog:3"``; extracted with ``make extract CORRUPT=``), one record
    per condition (:func:`condition_key`).
    """
    root = root or data_root()
    say = _say(quiet)
    task = get_task(task_name)
    protocol = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
    corruptions = corruption_list(test_corruptions if isinstance(test_corruptions, str) or test_corruptions is None
                                  else ",".join(test_corruptions))
    if corruptions and task.name not in CORRUPTIBLE_TASKS:
        raise MidprobeError(f"task {task.name!r} is not scored on corrupted images (those that are: "
                            f"{', '.join(CORRUPTIBLE_TASKS)}): a 2AFC answer judges the clean images")
    if train_images and isinstance(task, ZeroShotTask):
        raise MidprobeError(f"task {task.name!r} is zero-shot: nothing is trained, so --train-images does not apply")
    store = open_dataset(dataset if "@" in dataset else protocol.dataset_name(dataset), root=root)
    absent = store.attrs.get("absent_targets") or {}
    missing = [key for key in task.needs if key in absent]
    if missing:
        raise MidprobeError(f"dataset {store.name!r} cannot run task {task.name!r}: {absent[missing[0]]}")
    models = protocol_models(store.name, protocol, models, root, precision)
    if not models:
        raise MidprobeError(f"no feature stores for dataset {store.name!r}; run `make extract MODEL=... DATASET={store.name}`")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise MidprobeError(f"device {device!r} was asked for but no CUDA GPU is visible; use DEVICE=cpu")
    for head in heads or ():
        check_head(head)
    root.ensure_writable(root.results())        # a read-only data root, found before a head trains, not after
    torch.manual_seed(seed)
    loader = store.attrs.get("loader", store.name)
    extraction = protocol.extraction_choices(task.name, loader)
    study = {"seeds": seeds or [seed], "train_images": train_images, "corruptions": corruptions}
    tracker = open_log(log, root)
    try:
        return _run_models(task, store, models, root, protocol, extraction, heads, lrs, layer_sets, overrides,
                           seed, device, say, quiet, options, tracker, precision, study, cache_budget)
    finally:
        if tracker is not None:
            tracker.close()


def _run_models(task, store, models: Sequence[str], root: DataRoot, protocol: Protocol,
                extraction: ExtractionChoices, heads, lrs, layer_sets, overrides, seed: int, device: str, say,
                quiet: bool, options, tracker: TensorBoardLog | None, precision: str,
                study: Mapping[str, Any], cache_budget: int | None = None) -> list[dict[str, Any]]:
    rows = []
    # the records each model's run writes, named and configured by the one planning function the grid uses too
    plan = functools.partial(plan_records, task=task.name, dense=not isinstance(task, ZeroShotTask),
                             protocol=protocol, loader=store.attrs.get("loader", store.name),
                             dataset_attrs=store.attrs, heads=heads, lrs=lrs, overrides=overrides,
                             device=device, precision=precision, corruptions=study["corruptions"],
                             options=options, zero_shot_split=getattr(task, "split", ""))
    _open_every_split(task, store, models, root, protocol, extraction, study["corruptions"], precision)
    for model in models:
        started = time.perf_counter()
        if isinstance(task, ZeroShotTask):
            planned = plan(layer_sets=layer_sets, seeds=[seed])
            results = [(*_zero_shot(task, store, model, root, protocol, replace(extraction, corruption=corruption),
                                    dict(overrides or {}), options or {}, layer_sets, quiet=quiet,
                                    precision=precision), seed)
                       for corruption in ["", *study["corruptions"]]]
        else:
            choices = dense_choices(protocol, task.name, overrides)
            settings = TrainSettings(choices, study["seeds"][0], device, cache_budget)
            on_step = None if tracker is None else (
                lambda key, seed, step, loss, lr, model=model: tracker.step(
                    ProbeId(protocol.name, task.name, store.name, model, key, seed), step, loss, lr))
            results, planned = _dense(task, store, model, root, list(heads or choices.heads),
                                      list(lrs or [choices.lr]), layer_sets, settings, protocol, extraction, say,
                                      precision, seeds=study["seeds"], train_images=study["train_images"],
                                      corruptions=study["corruptions"], quiet=quiet, on_step=on_step,
                                      plan=functools.partial(plan, seeds=study["seeds"]))
        entries = _as_planned(results, planned, model)
        for (probe, metrics, fingerprint, config, extra, probe_seed), entry in zip(results, entries):
            seconds = time.perf_counter() - started
            extra = {**extra, **_scored(metrics, task.headline)}
            config = {**config, **entry.config}
            path = write_record(root, task=task.name, dataset=store.name, model=model, probe=probe, config=config,
                                metrics=metrics, headline=task.headline, fingerprint=fingerprint,
                                wall_seconds=seconds, seed=probe_seed, protocol=protocol.name, extra=extra,
                                name=entry.file)
            rows.append({"task": task.name, "dataset": store.name, "model": model, "probe": probe,
                         task.headline: metrics.get(task.headline), "record": str(path.relative_to(root.root))})
            if tracker is not None:
                tracker.final(ProbeId(protocol.name, task.name, store.name, model, probe, probe_seed), metrics,
                              step=extra.get("training", {}).get("steps", 0), config=config)
            say(f"[probe] {protocol.name}: {task.name}/{store.name}/{model}/{probe}: "
                f"{task.headline} = {metrics.get(task.headline)}")
    return rows


def _open_every_split(task, store, models: Sequence[str], root: DataRoot, protocol: Protocol,
                      extraction: ExtractionChoices, corruptions: Sequence[str], precision: str) -> None:
    """Open every feature split each model's probe reads before the first model trains: one model
    lacking one (a corrupted copy extracted for another model only) stops the run before any record
    is written, not after the models before it."""
    if isinstance(task, ZeroShotTask):
        if task.split not in store.splits:
            return                              # _zero_shot says which split the dataset lacks
        reads = [(task.split, corruption, False) for corruption in ["", *corruptions]]
    else:
        reads = [("train", "", True), *[("test", corruption, False) for corruption in ["", *corruptions]]]
    for model in models:
        for split, corruption, training in reads:
            _open_split(store, model, split, replace(extraction, corruption=corruption), root, training=training,
                        protocol=protocol, expect={"dataset_fingerprint": store.fingerprint}, precision=precision)


def _as_planned(results: Sequence[tuple], planned: Sequence[PlannedRecord], model: str) -> list[PlannedRecord]:
    """The planned record of each result, in order; a result the plan lacks, or a planned record no
    result fills, is an error before anything is written (the grid would never see it complete)."""
    by_key = {(p.probe, p.seed): p for p in planned}
    entries = [by_key.pop((r[0], r[5]), None) for r in results]
    stray = [f"{r[0]} (seed {r[5]})" for r, e in zip(results, entries) if e is None]
    if stray or by_key:
        raise MidprobeError(f"{model}: the probes' records differ from their plan (probe.plan.plan_records): "
                            f"unplanned {', '.join(stray) or 'none'}; missing "
                            f"{', '.join(f'{p} (seed {s})' for p, s in by_key) or 'none'}")
    return entries


def _scored(metrics: Mapping[str, Any], headline: str) -> dict[str, Any]:
    """The record fields a run's per-item scores add: ``item_scores`` (for the report's intervals)
    and ``flags`` (``collapsed``: the head predicts one value or class everywhere)."""
    out: dict[str, Any] = {}
    scores = item_scores(metrics, headline)
    if scores is not None:
        out["item_scores"] = scores
    if getattr(metrics, "flags", None):
        out["flags"] = list(metrics.flags)
    return out


def _open_split(store, model: str, split: str, extraction: ExtractionChoices, root: DataRoot, *, training: bool,
                protocol: Protocol, expect: Mapping[str, Any], precision: str = "fp16"):
    name = feature_split_name(split, extraction, training=training)
    try:
        return open_features(store.name, model, name, expect=expect, root=root, precision=precision)
    except MidprobeError as exc:
        if name == split or "has no split" not in str(exc):
            raise
        corrupt = extraction.corruption and not training
        reads = (f"the corrupted split {name!r}" if corrupt else
                 f"split {name!r}, which protocol {protocol.name!r} reads")
        extra = "" if precision == "fp16" else f" PRECISION={precision}"
        # a protocol with augmented views (midprobe+aug2-paper-nyu) is its base with AUGMENT=
        extra += f" AUGMENT={protocol.augment}" if protocol.augment not in ("", "0") else ""
        raise MidprobeError(f"feature store of {model!r} for {store.name!r} lacks {reads}; run `make extract "
                            f"MODEL={model} DATASET={store.name} PROTOCOL={protocol.base or protocol.name}"
                            f"{f' CORRUPT={extraction.corruption}' if corrupt else ''}{extra}`") from None


def _step_hook(on_step: Callable[..., None], seed: int, size: int | None) -> Callable[..., None]:
    """A sweep's ``on_step(config, step, loss, lr)`` passed on as ``on_step(key, seed, step, loss, lr)``
    with the probe's key under the training condition (its subset), as its records are named."""
    return lambda config, step, loss, lr: on_step(condition_key(config.key, train_images=size), seed, step, loss, lr)


def _dense(task: DenseTask, store, model: str, root: DataRoot, heads: Sequence[str], lrs: Sequence[float],
           layer_sets, settings: TrainSettings, protocol: Protocol, extraction: ExtractionChoices,
           say, precision: str = "fp16", *, seeds: Sequence[int] = (), train_images=None,
           corruptions: Sequence[str] = (), quiet: bool = True, on_step=None,
           plan: Callable[..., list[PlannedRecord]]) -> tuple[list[tuple], list[PlannedRecord]]:
    choices = settings.choices
    train_data, test_data = store.split("train"), store.split("test")
    absent = store.attrs.get("absent_targets") or {}
    task.check_dataset(train_data, task.target_keys(choices), absent)
    task.check_dataset(test_data, task.needs, absent)
    task.check_valid(train_data, store.attrs, choices, training=True)
    task.check_valid(test_data, store.attrs, choices, training=False)
    expect = {"dataset_fingerprint": store.fingerprint}
    train = _open_split(store, model, "train", extraction, root, training=True, protocol=protocol, expect=expect,
                        precision=precision)
    # the clean test split and each corrupted copy: every head is scored on all of them
    tests = {corruption: _open_split(store, model, "test", replace(extraction, corruption=corruption), root,
                                     training=False, protocol=protocol,
                                     expect={**expect, "weights": train.fingerprint["weights"]}, precision=precision)
             for corruption in ["", *corruptions]}
    # default: the layers every split read holds (one added to the train split only is left out)
    common = default_layers(train, list(tests.values()))
    chosen_sets = resolve_layers(train.layers, layer_sets or ([common] if common else None), train, protocol)
    for test in tests.values():
        resolve_layers(test.layers, chosen_sets, test, protocol)
    used = sorted({layer for s in chosen_sets for layer in s}, key=train.layers.index)
    if choices.feature_norm == "train-stats":
        say(f"[probe] {model}: per-channel statistics of {', '.join(used)} over {train.num_images} train images")
        stats = channel_stats(train, used)
    else:
        stats = {layer: (np.zeros(train.shape(layer)[0]), np.ones(train.shape(layer)[0])) for layer in used}
    standardizer = Standardizer(stats, torch.device(settings.device))
    sgd = [ProbeConfig(head, layers, lr) for head, layers, lr in itertools.product(
        [h for h in heads if h not in CLOSED_FORM], chosen_sets, lrs)]
    attrs = store.attrs
    results = []
    per_view = views_of(train)[1]
    sizes = subset_sizes(train_images, per_view)
    base = {"task": task.name, "train_images": train.num_images, "test_images": tests[""].num_images}

    def condition(key: str, config: dict[str, Any], size: int | None, seed: int, corruption: str):
        """A probe's key and config when trained on ``size`` images (None = all), scored under ``corruption``."""
        if size is not None:
            config = {**config, "train_images": size, "train_subset": {"images": size, "of": per_view, "seed": seed}}
        if corruption:
            config = {**config, "test_corruption": corruption, "test_images": tests[corruption].num_images}
        return condition_key(key, train_images=size, corruption=corruption), config

    # one loader serves every seed's and subset's sweep: the split is loaded (or its stream set up) once
    loader = FeatureLoader(train, layers=used, targets={key: train_data.array(key) for key in task.target_keys(choices)},
                           device=settings.device, budget=settings.cache_budget, say=say,
                           what=f"[probe] {task.name}/{store.name}/{model} training ({train.split})") if sgd else None
    for seed in seeds if sgd else ():
        seeded = replace(settings, seed=seed)
        for size in sizes:
            subset = None if size is None else nested_subset(per_view, size, seed)
            say(f"[probe] {model}: training {len(sgd)} head(s) in one pass on {size or train.num_images} train images, "
                f"seed {seed}: {', '.join(c.key for c in sgd)}")
            where = f"[probe] {task.name}/{store.name}/{model}"
            trained, stats_ = train_sweep(task, train=train, train_data=train_data, dataset_attrs=attrs, configs=sgd,
                                          settings=seeded, standardizer=standardizer, log=say, subset=subset,
                                          loader=loader, quiet=quiet, name=f"{where} training",
                                          on_step=None if on_step is None else _step_hook(on_step, seed, size))
            for corruption, test in tests.items():
                scores = evaluate_heads(task, test=test, test_data=test_data, dataset_attrs=attrs, heads=trained,
                                        settings=seeded, standardizer=standardizer, quiet=quiet,
                                        name=f"{where} evaluation" + (f" ({corruption})" if corruption else ""))
                for config in sgd:
                    key, full = condition(config.key, {**base, "settings": seeded.as_dict(), "head": config.head,
                                                       "layers": list(config.layers), "lr": config.lr},
                                          size, seed, corruption)
                    results.append((key, scores[config], train.fingerprint, full,
                                    {"training": stats_[config], **_test_of(test, corruption)}, seed))
    # the ridge fit is deterministic: the whole split once (the first seed); each seed's nested subsets
    ridge_runs = [(None, settings.seed)] * (None in sizes) + [(s, seed) for seed in seeds for s in sizes if s]
    for layers, (size, seed) in itertools.product(chosen_sets if any(h in CLOSED_FORM for h in heads) else [],
                                                  ridge_runs):
        fit = fit_ridge(task, train=train, train_data=train_data, dataset_attrs=attrs, layers=layers,
                        standardizer=standardizer, choices=choices, device=settings.device,
                        subset=None if size is None else nested_subset(per_view, size, seed))
        head_config = {**base, "settings": replace(settings, seed=seed).as_dict(), "head": "ridge",
                       "layers": list(layers)}
        for corruption in tests:
            key, full = condition(ridge_key(layers), head_config, size, seed, corruption)
            metrics = evaluate_ridge(task, fit, test=tests[corruption], test_data=test_data, dataset_attrs=attrs,
                                     layers=layers, standardizer=standardizer, choices=choices, device=settings.device)
            results.append((key, metrics, train.fingerprint, full,
                            {"ridge": {"penalty": fit.penalty, "rows": fit.rows,
                                       "heldout_mse": {f"{k:g}": v for k, v in fit.heldout_mse.items()}},
                             **_test_of(tests[corruption], corruption)}, seed))
    return results, plan(layer_sets=chosen_sets, train_sizes=sizes)


def _test_of(test, corruption: str) -> dict[str, Any]:
    """A corrupted condition's record names the test features it was scored on (their fingerprint
    holds the corruption, its seed, library and version)."""
    return {"test_fingerprint": test.fingerprint} if corruption else {}


def _zero_shot(task: ZeroShotTask, store, model: str, root: DataRoot, protocol: Protocol,
               extraction: ExtractionChoices, overrides: dict[str, Any], options: dict[str, Any], layer_sets, *,
               quiet: bool = True, precision: str = "fp16") -> tuple:
    if task.split not in store.splits:
        raise MidprobeError(f"task {task.name!r} needs split {task.split!r} in dataset {store.name!r}, "
                            f"which has {', '.join(store.splits)}")
    data = store.split(task.split)
    task.check_dataset(data, absent=store.attrs.get("absent_targets") or {})
    features = _open_split(store, model, task.split, extraction, root, training=False, protocol=protocol,
                           expect={"dataset_fingerprint": store.fingerprint}, precision=precision)
    layers = resolve_layers(features.layers, layer_sets, features, protocol)[0] if layer_sets else None
    if task.name == "correspondence" and not layers:
        resolve_layers(features.layers, None, features, protocol)
    metrics, config = task.evaluate(features=features, data=data, dataset_attrs=store.attrs, layers=layers,
                                    protocol=protocol, overrides=overrides, quiet=quiet,
                                    name=f"[probe] {task.name}/{store.name}/{model}", **options)
    key = zero_shot_key(task.name, layers, options)
    if extraction.corruption:
        config = {**config, "test_corruption": extraction.corruption}
    return condition_key(key, corruption=extraction.corruption), metrics, features.fingerprint, config, {}


def print_table(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "(no results)"
    headline = [k for k in rows[0] if k not in {"task", "dataset", "model", "probe", "record"}]
    return format_table(rows, ["task", "dataset", "model", "probe", *headline])
