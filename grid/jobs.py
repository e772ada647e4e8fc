"""The grid's units of work: small picklable descriptions that a dask worker runs.

Each kind has ``complete()`` (read from the data root by :mod:`grid.state`, loading nothing
heavy), ``run()`` (the package's own function: ``prepare``, ``extract``, ``run_task``,
``build_report``) and a ``label``. :func:`execute` is the one function submitted to dask:
it skips complete work, runs the rest with its output in ``<data>/logs/grid/<name>.log``,
and turns a :class:`MidprobeError` (a missing file, weights or dataset: retrying cannot help)
into a ``failed`` :class:`Outcome`; any other exception propagates, so dask retries the task,
on another worker if this one died.
"""

from __future__ import annotations

import multiprocessing
import os
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, Mapping

from cache import DataRoot, MidprobeError
from grid import state
from grid.logs import task_log
from grid.spec import TaskSettings


@dataclass(frozen=True)
class Outcome:
    """What became of one task: ``done``, ``skipped`` (already complete), ``failed`` (with the
    one-line reason) or ``blocked`` (a task it needs failed)."""

    name: str
    status: str
    reason: str = ""
    seconds: float = 0.0


def blocked_by(name: str, upstream: Outcome) -> Outcome:
    """``name`` blocked by ``upstream``, naming the failed task at the root of the chain."""
    return Outcome(name, "blocked", upstream.reason if upstream.status == "blocked" else
                   f"needs {upstream.name}, which failed")


def _root(path: str) -> DataRoot:
    return DataRoot(Path(path))


def tagged_model(feature_model: str, precision: str) -> str:
    """``vit_b_mae`` (float16) or ``vit_b_mae@int8``: the store's name in labels and job names."""
    return feature_model if precision == "fp16" else f"{feature_model}@{precision}"


@dataclass(frozen=True)
class PrepareDataset:
    root: str
    loader: str
    store: str
    options: Mapping[str, Any]
    raw: str | None
    kind: ClassVar[str] = "prepare"

    @property
    def label(self) -> str:
        return f"prepare {self.store}"

    def complete(self) -> bool:
        return state.dataset_ready(_root(self.root), self.store, self.options)

    def run(self) -> str:
        from extract.datasets import prepare

        options = dict(self.options)
        if self.loader == "synthetic" and "workers" not in options and multiprocessing.current_process().daemon:
            options["workers"] = 1          # a dask worker process may not fork a pool of its own
        if self.store != self.loader:
            options["name"] = self.store    # the protocol's own store (e.g. nyuv2@paper)
        path = prepare(self.loader, root=_root(self.root), raw=self.raw, **options)
        return f"wrote {path}"


@dataclass(frozen=True)
class ExtractShard:
    """Shard ``shard = (i, N)`` of ``model``'s features (``feature_model`` names its store) of
    ``store``, stored at ``precision`` (``fp16`` or ``int8``)."""

    root: str
    model: str
    feature_model: str
    store: str
    protocol: str
    tasks: tuple[str, ...]
    shard: tuple[int, int]
    device: str
    batch_size: int
    chunk_images: int | None
    weights: str | None
    precision: str
    #: feature splits not to extract (an augmented split streamed in lockstep under a disk budget)
    exclude: tuple[str, ...] = ()
    #: a budget unit whose probes all have records (:class:`grid.units.UnitDone`): nothing to extract again
    done_with: Any = None
    kind: ClassVar[str] = "extract"

    @property
    def label(self) -> str:
        i, n = self.shard
        return (f"extract {tagged_model(self.feature_model, self.precision)} on {self.store}"
                + (f" (shard {i + 1}/{n})" if n > 1 else ""))

    def complete(self) -> bool:
        if self.done_with is not None and self.done_with.complete():
            return True
        planned = planned_splits(_root(self.root), self.store, self.feature_model, self.protocol, self.tasks,
                                 self.precision, self.exclude)
        return planned is not None and all(
            state.features_ready(_root(self.root), self.store, self.feature_model, name, expect, shard=self.shard,
                                 precision=self.precision)
            for name, expect in planned)

    def run(self) -> str:
        from extract.runner import extract

        only = None
        if self.exclude:
            planned = planned_splits(_root(self.root), self.store, self.feature_model, self.protocol, self.tasks,
                                     self.precision, self.exclude) or []
            only = [name for name, _ in planned]
            if not only:
                return "nothing cached to extract"
        reports = extract(model=self.feature_model, dataset=self.store, protocol=self.protocol, splits=only,
                          tasks=list(self.tasks), batch_size=self.batch_size, device=self.device, shard=self.shard,
                          chunk_images=self.chunk_images, weights=self.weights, precision=self.precision,
                          root=_root(self.root), progress=True)
        return f"{sum(r.images_written for r in reports)} images into {len(reports)} split(s)"


def planned_splits(root: DataRoot, store: str, model: str, protocol: str, tasks: tuple[str, ...],
                   precision: str, exclude: tuple[str, ...] = ()) -> list[tuple[str, dict[str, Any]]] | None:
    """``(feature split, the fingerprint values known before extracting)`` of every split the
    extraction of ``model`` on ``store`` at ``precision`` writes (less those in ``exclude``);
    ``None`` while the dataset store is not there."""
    from extract.plan import plan_extraction
    from extract.sizing import model_spec
    from protocols import get_protocol

    attrs = state.dataset_attrs(root, store)
    if attrs is None:
        return None
    jobs = plan_extraction(attrs=attrs, splits=attrs["splits"], protocol=get_protocol(protocol), tasks=list(tasks))
    names = list(model_spec(model).layer_names)
    return [(job.name, {"model": model, "dataset": store, "dataset_fingerprint": attrs["fingerprint"],
                        "split": job.name, "layers": {"all": names, "last": names[-1:], "global": []}[job.layers],
                        "precision": precision})
            for job in jobs if job.name not in exclude]


@dataclass(frozen=True)
class FinalizeFeatures:
    """Every feature split of ``feature_model`` on ``store`` marked complete once all shards are durable."""

    root: str
    feature_model: str
    store: str
    protocol: str
    tasks: tuple[str, ...]
    precision: str
    exclude: tuple[str, ...] = ()
    done_with: Any = None
    kind: ClassVar[str] = "finalize"

    @property
    def label(self) -> str:
        return f"finalize {tagged_model(self.feature_model, self.precision)} on {self.store}"

    def complete(self) -> bool:
        if self.done_with is not None and self.done_with.complete():
            return True
        planned = planned_splits(_root(self.root), self.store, self.feature_model, self.protocol, self.tasks,
                                 self.precision, self.exclude)
        return planned is not None and all(
            state.features_ready(_root(self.root), self.store, self.feature_model, name, expect,
                                 precision=self.precision)
            for name, expect in planned)

    def run(self) -> str:
        import zarr

        from cache import FeatureWriter

        root = _root(self.root)
        path = root.feature_store(self.store, self.feature_model, self.precision)
        planned = planned_splits(root, self.store, self.feature_model, self.protocol, self.tasks, self.precision,
                                 self.exclude)
        if planned is None:
            raise MidprobeError(f"dataset store {self.store!r} is not complete under {root.root}")
        for name, _ in planned:
            missing = state.missing_chunks(root, self.store, self.feature_model, name, self.precision)
            if missing is None or missing:
                raise MidprobeError(f"feature split {path}/{name} is missing "
                                    f"{'every chunk' if missing is None else f'chunks {missing}'}; rerun the grid")
            FeatureWriter(path, name, zarr.open_group(str(path / name), mode="r+")).finalize()
        return "complete"


@dataclass(frozen=True)
class ProbeStore:
    """One sweep per seed of ``settings`` (every head x learning rate x layer set) on one feature
    store, of ``precision``."""

    root: str
    settings: TaskSettings
    store: str
    feature_model: str
    protocol: str
    seeds: tuple[int, ...]
    device: str
    precision: str
    kind: ClassVar[str] = "probe"

    @property
    def label(self) -> str:
        return f"probe {self.settings.task} on {self.store} with {tagged_model(self.feature_model, self.precision)}"

    def _plan(self) -> tuple[dict[str, Any], list[Any]]:
        """``(run_task arguments, the records the run writes)``: the records as
        :func:`probe.plan.plan_records` names and configures them, for every seed."""
        from probe.plan import plan_records
        from probe.tasks import DenseTask, get_task
        from protocols import feature_split_name, get_protocol

        root, s = _root(self.root), self.settings
        protocol = get_protocol(self.protocol)
        task = get_task(s.task)
        attrs = state.dataset_attrs(root, self.store) or {}
        loader = attrs.get("loader", self.store)
        dense = isinstance(task, DenseTask)
        split = feature_split_name("train" if dense else task.split, protocol.extraction_choices(s.task, loader),
                                   training=dense)
        cached = state.feature_layers(root, self.store, self.feature_model, split, self.precision)
        # "all" and "last" coincide on a one-layer store: each layer set is probed once
        sets = [list(t) for t in dict.fromkeys(tuple(_layer_set(item, cached))
                                               for item in (s.layer_sets or (("all",) if dense else ())))]
        args: dict[str, Any] = {"layer_sets": sets or None, "overrides": dict(s.overrides), "options": dict(s.options)}
        if dense:
            args.update(heads=list(s.heads) if s.heads else None, lrs=list(s.lrs) if s.lrs else None)
        # one plan per seed, as the grid runs each seed: run_task(seed=seed)
        planned = [record for seed in self.seeds for record in plan_records(
            task=s.task, dense=dense, protocol=protocol, loader=loader, dataset_attrs=attrs, layer_sets=sets or None,
            heads=args.get("heads"), lrs=args.get("lrs"), overrides=s.overrides, seeds=[seed], device=self.device,
            precision=self.precision, options=s.options, zero_shot_split="" if dense else task.split)]
        return args, planned

    def _done(self, seed: int, planned: list[Any]) -> bool:
        root = _root(self.root)
        folder = root.results(self.settings.task, self.store, self.feature_model, self.protocol)
        return state.records_ready(root, self.store, self.feature_model, folder,
                                   [p for p in planned if p.seed == seed], precision=self.precision)

    def complete(self) -> bool:
        if state.dataset_attrs(_root(self.root), self.store) is None:
            return False
        try:
            _, planned = self._plan()
        except MidprobeError:
            return False                        # e.g. a layer set the store lacks: run() says so
        return all(self._done(seed, planned) for seed in self.seeds)

    def run(self) -> str:
        from probe.run import run_task

        args, planned = self._plan()
        ran = []
        for seed in self.seeds:
            if self._done(seed, planned):
                continue
            run_task(task_name=self.settings.task, dataset=self.store, models=[self.feature_model],
                     protocol=self.protocol, seed=seed, device=self.device, precision=self.precision,
                     root=_root(self.root), quiet=False, **args)
            ran.append(seed)
        return f"{len(planned) // len(self.seeds)} record(s) x seeds {', '.join(map(str, ran))}"


def _layer_set(item: str, cached: list[str]) -> list[str]:
    if not cached:
        raise MidprobeError("the feature split has no cached layers to probe")
    if item == "all":
        return list(cached)
    if item == "last":
        return cached[-1:]
    names = item.split(",")
    missing = [n for n in names if n not in cached]
    if missing:
        raise MidprobeError(f"layer set {item!r}: {', '.join(missing)} not cached; the store has {', '.join(cached)}")
    return names


@dataclass(frozen=True)
class BuildReport:
    root: str
    kind: ClassVar[str] = "report"

    @property
    def label(self) -> str:
        return "report"

    def complete(self) -> bool:
        return state.report_current(_root(self.root))

    def run(self) -> str:
        from probe.report.page import build_report

        page, _ = build_report(_root(self.root))
        return str(page)


def execute(task: Any, name: str, log_dir: str, *upstream: Any) -> Outcome:
    """Run ``task`` unless it is complete or a task it needs did not succeed (``upstream``: their outcomes)."""
    stopped = [o for o in upstream if isinstance(o, Outcome) and o.status in ("failed", "blocked")]
    if stopped:
        return blocked_by(name, stopped[0])
    if task.complete():
        return Outcome(name, "skipped", "complete")
    threads = os.environ.get("MIDPROBE_THREADS")
    if threads:
        import torch

        torch.set_num_threads(int(threads))     # per task thread: the worker's pool threads do the work
    started = time.perf_counter()
    with task_log(Path(log_dir) / f"{name}.log", header=f"{task.label} (pid {os.getpid()})"):
        try:
            note = task.run()
        except MidprobeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return Outcome(name, "failed", str(exc), time.perf_counter() - started)
        except BaseException:
            traceback.print_exc(file=sys.stderr)
            raise
        print(f"done in {time.perf_counter() - started:.1f} s: {note}", file=sys.stderr)
    return Outcome(name, "done", note, time.perf_counter() - started)
