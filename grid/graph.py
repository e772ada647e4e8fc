"""A grid as a task graph: prepare dataset -> extract (model, dataset, shard i/N) -> finalize ->
probe (model, dataset, task) -> report, submitted to dask.distributed.

:func:`plan_jobs` turns a :class:`GridSpec` into :class:`Job` rows (no dask involved);
:func:`submit_jobs` submits them with their dependencies as futures. Extraction (and probes on a
GPU grid) ask for ``GPU=1``; every task may be retried on another worker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from cache import DataRoot
from grid.jobs import BuildReport, ExtractShard, FinalizeFeatures, PrepareDataset, ProbeStore, execute, tagged_model
from grid.spec import GridSpec

#: Retries of a task whose attempt raised something other than a MidprobeError.
RETRIES = 2


@dataclass(frozen=True)
class Job:
    """One task of the graph: ``name`` (stable across runs: it names the log file), the work,
    the names of the jobs it needs and whether it takes a GPU."""

    name: str
    task: Any
    deps: tuple[str, ...]
    gpu: bool

    @property
    def kind(self) -> str:
        return self.task.kind


def _name(*parts: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.@+=-]", "_", "-".join(parts))


def plan_jobs(spec: GridSpec, root: DataRoot) -> list[Job]:
    """Every job of the grid in dependency order (the report last)."""
    from extract.sizing import feature_model_name
    from protocols import get_protocol

    protocol = get_protocol(spec.protocol)
    where = str(root.root)
    jobs: list[Job] = []
    for entry in spec.datasets:
        store = protocol.dataset_name(entry.loader)
        options = {**protocol.data_options(entry.loader), **entry.options}
        prepare = Job(_name("prepare", store), PrepareDataset(where, entry.loader, store, options, entry.raw),
                      (), False)
        jobs.append(prepare)
        for model in spec.models:
            feature_model = feature_model_name(model, protocol)
            # an int8 grid's jobs (and so their logs) are named for the <model>@int8 store they fill
            tagged = tagged_model(feature_model, spec.precision)
            n = entry.shards
            shards = [Job(_name("extract", store, tagged, f"{i}of{n}"),
                          ExtractShard(where, model, feature_model, store, protocol.name, entry.tasks, (i, n),
                                       spec.device, spec.batch_size, spec.chunk_images, spec.weights.get(model),
                                       spec.precision),
                          (prepare.name,), spec.device == "cuda") for i in range(n)]
            final = Job(_name("finalize", store, tagged),
                        FinalizeFeatures(where, feature_model, store, protocol.name, entry.tasks, spec.precision),
                        tuple(s.name for s in shards), False)
            jobs += [*shards, final]
            jobs += [Job(_name("probe", task, store, tagged),
                         ProbeStore(where, spec.tasks[task], store, feature_model, protocol.name, spec.seeds,
                                    spec.probe_device, spec.precision), (final.name,), spec.probe_device == "cuda")
                     for task in entry.tasks]
    if spec.report:
        jobs.append(Job("report", BuildReport(where), (), False))
    return jobs


def plan_grid_jobs(spec: GridSpec, root: DataRoot) -> list[Job]:
    """The jobs a grid run submits: :func:`plan_jobs`, or under a ``disk_budget`` / ``augmented``
    choice its (model, dataset) units in lanes with lockstep and eviction jobs (:mod:`grid.units`)."""
    if spec.disk_budget is None and spec.augmented is None:
        return plan_jobs(spec, root)
    from grid.units import budget_jobs

    return budget_jobs(spec, root)


#: Scheduling priority by kind: evictions (they free disk), datasets, then features (they unblock
#: the probes), then probes.
PRIORITY = {"evict": 4, "prepare": 3, "extract": 2, "finalize": 2, "probe": 1, "lockstep": 1}


def submit_jobs(client: Any, jobs: list[Job], *, log_dir: str, token: str, gpus: bool,
                costs: dict[str, float] | None = None) -> dict[str, Any]:
    """Submit ``jobs`` (the report excepted: it runs once the probes are over); returns
    ``{job name: future}``. ``gpus``: the cluster offers ``GPU`` resources. Workers take ready
    tasks by kind (:data:`PRIORITY`), then the most costly first (``costs``: estimated seconds),
    so the long ones do not trail at the end."""
    costs = costs or {}
    futures: dict[str, Any] = {}
    for job in jobs:
        if job.kind == "report":
            continue
        futures[job.name] = client.submit(
            execute, job.task, job.name, log_dir, *[futures[d] for d in job.deps], key=f"{job.name}-{token}",
            resources={"GPU": 1} if job.gpu and gpus else None, retries=RETRIES, pure=False,
            priority=PRIORITY[job.kind] * 10**9 + min(int(costs.get(job.name, 0.0) * 1000), 10**9 - 1))
    return futures
