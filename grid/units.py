"""A grid run under a disk budget: (model, dataset) units in lanes, lockstep jobs and evictions.

:func:`budget_jobs` turns the plan of :mod:`grid.budget` into the graph a real run submits.
Each unit keeps today's jobs (extract shards, finalize, one probe per task) with two changes:

* a ``lockstep`` unit does not extract its augmented training split; one
  :class:`LockstepTasks` job trains every dense task that reads it with
  :func:`probe.lockstep.run_lockstep` (after the unit's cached splits — test, pairs,
  unaugmented — are finalized), writing the cached path's records;
* an :class:`EvictFeatures` job follows every job that reads the unit's features and, unless
  ``keep_features = true``, deletes its feature splits (:func:`cache.evict.evict_split`, which
  leaves a note of each split's fingerprint so the records still count as complete). Each
  eviction is a line of ``<data>/logs/grid/evictions.log``.

Units of one lane run one after another: a unit's extraction waits for the previous unit's
eviction. Lanes run side by side. A unit whose records are all complete skips its extraction
too (``done_with``), so a resumed grid never extracts evicted features again.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, ClassVar

from cache import DataRoot, MidprobeError
from grid.jobs import ProbeStore, _layer_set, _root, planned_splits, tagged_model
from grid.spec import GridSpec, TaskSettings


@dataclass(frozen=True)
class UnitDone:
    """Whether every job reading a unit's features (``readers``: probe and lockstep tasks) is complete."""

    readers: tuple[Any, ...]

    def complete(self) -> bool:
        return all(reader.complete() for reader in self.readers)


@dataclass(frozen=True)
class LockstepTasks:
    """The dense ``settings`` tasks of ``feature_model`` on ``store`` that train on the augmented
    feature split ``split``, streamed a view at a time (at most ``views_on_disk`` on disk)."""

    root: str
    model: str
    feature_model: str
    store: str
    protocol: str
    split: str
    settings: tuple[TaskSettings, ...]
    seeds: tuple[int, ...]
    device: str
    batch_size: int
    chunk_images: int | None
    weights: str | None
    precision: str
    views_on_disk: int
    kind: ClassVar[str] = "lockstep"

    @property
    def label(self) -> str:
        return (f"lockstep {', '.join(s.task for s in self.settings)} on {self.store} with "
                f"{tagged_model(self.feature_model, self.precision)}")

    def _probes(self) -> list[ProbeStore]:
        return [ProbeStore(self.root, s, self.store, self.feature_model, self.protocol, self.seeds, self.device,
                           self.precision) for s in self.settings]

    def complete(self) -> bool:
        return all(probe.complete() for probe in self._probes())

    def run(self) -> str:
        from cache.evict import write_note
        from probe.lockstep import run_lockstep

        root = _root(self.root)
        planned = dict(planned_splits(root, self.store, self.feature_model, self.protocol,
                                      tuple(s.task for s in self.settings), self.precision) or [])
        if self.split not in planned:
            raise MidprobeError(f"{self.store}: no augmented split {self.split!r} planned for "
                                f"{', '.join(s.task for s in self.settings)}; is the dataset store complete?")
        layers = list(planned[self.split]["layers"])
        groups: dict[str, list[TaskSettings]] = defaultdict(list)
        for s in self.settings:       # tasks probed alike share one stream of views
            groups[json.dumps([s.heads, s.lrs, s.layer_sets, dict(s.overrides)], sort_keys=True, default=str)].append(s)
        rows: list[dict[str, Any]] = []
        for group in groups.values():
            s = group[0]
            sets = [list(t) for t in dict.fromkeys(tuple(_layer_set(item, layers))
                                                   for item in (s.layer_sets or ("all",)))]
            rows += run_lockstep(dataset=self.store, model=self.model, tasks=[g.task for g in group],
                                 protocol=self.protocol, heads=list(s.heads) if s.heads else None,
                                 lrs=list(s.lrs) if s.lrs else None, layer_sets=sets, overrides=dict(s.overrides),
                                 seeds=self.seeds, device=self.device, precision=self.precision, root=root,
                                 batch_size=self.batch_size, weights=self.weights, chunk_images=self.chunk_images,
                                 overlap=self.device == "cuda" and self.views_on_disk >= 2,
                                 views_on_disk=self.views_on_disk, quiet=False)
        if rows:
            # the records name the streamed split's fingerprint: noted, so they count as complete on a rerun
            record = json.loads((root.root / rows[0]["record"]).read_text())
            write_note(root.feature_store(self.store, self.feature_model, self.precision), self.split,
                       fingerprint=record["feature_fingerprint"], layers=layers, reason="streamed in lockstep")
        return f"{len(rows)} record(s) in lockstep"


@dataclass(frozen=True)
class EvictFeatures:
    """Delete ``feature_model``'s feature splits of ``store`` once ``done_with`` (its readers) is
    complete; ``keep``: keep them (``keep_features = true``)."""

    root: str
    feature_model: str
    store: str
    protocol: str
    tasks: tuple[str, ...]
    precision: str
    done_with: UnitDone
    keep: bool
    grid: str
    kind: ClassVar[str] = "evict"

    @property
    def label(self) -> str:
        return f"evict {tagged_model(self.feature_model, self.precision)} on {self.store}"

    def _on_disk(self) -> list[str]:
        root = _root(self.root)
        path = root.feature_store(self.store, self.feature_model, self.precision)
        planned = planned_splits(root, self.store, self.feature_model, self.protocol, self.tasks, self.precision)
        # a folder without metadata is what a killed eviction left: evict_split finishes it
        return [name for name, _ in planned or [] if (path / name).is_dir()]

    def complete(self) -> bool:
        return self.keep or not self._on_disk()

    def run(self) -> str:
        from cache.evict import evict_split
        from extract.sizing import human_bytes

        if not self.done_with.complete():
            raise MidprobeError(f"{self.label}: not every probe reading these features has its record; "
                                "nothing evicted (rerun the grid)")
        root = _root(self.root)
        path = root.feature_store(self.store, self.feature_model, self.precision)
        log = root.root / "logs" / "grid" / "evictions.log"
        freed = 0
        for split in self._on_disk():
            size = evict_split(path, split, reason=f"grid {self.grid}: every probe reading it has its record")
            freed += size
            line = f"evicted {path}/{split} ({human_bytes(size)}): every probe reading it has its record"
            stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            with open(log, "a") as out:
                out.write(f"{stamp} grid {self.grid}: {line}\n")
            print(f"[grid] {line}")
        return f"{human_bytes(freed)} freed"


def budget_jobs(spec: GridSpec, root: DataRoot) -> list[Any]:
    """The grid's jobs under its disk budget / ``augmented`` choice (see the module's docstring)."""
    from grid.budget import lanes, plan_units
    from grid.graph import Job, _name, plan_jobs
    from grid.plan import Estimator

    jobs = plan_jobs(spec, root)
    units = plan_units(Estimator(spec, root))
    plan = lanes(units, spec.disk_budget, keep=spec.keep_features)
    evict = spec.disk_budget is not None and not spec.keep_features
    models = {}
    for job in jobs:
        if job.kind == "extract":
            models[job.task.feature_model] = job.task.model
    out = [job for job in jobs if job.kind == "prepare"]
    for lane in plan:
        before: str | None = None
        for unit in lane:
            mine = [j for j in jobs if j.kind in ("extract", "finalize", "probe")
                    and (j.task.store, j.task.feature_model) == (unit.store, unit.model)]
            probes = [j for j in mine if j.kind == "probe" and j.task.settings.task not in unit.lockstep_tasks]
            readers: list[Job] = list(probes)
            final = next(j for j in mine if j.kind == "finalize")
            if unit.mode == "lockstep":
                streamed = [j.task for j in mine if j.kind == "probe" and j.task.settings.task in unit.lockstep_tasks]
                first = streamed[0]
                extract = next(j.task for j in mine if j.kind == "extract")
                task = LockstepTasks(first.root, models[unit.model], unit.model, unit.store, spec.protocol,
                                     str(unit.augmented_split), tuple(p.settings for p in streamed), spec.seeds,
                                     spec.probe_device, spec.batch_size, spec.chunk_images, extract.weights,
                                     spec.precision, unit.views_on_disk)
                readers.append(Job(_name("lockstep", *unit.lockstep_tasks, unit.store,
                                         tagged_model(unit.model, spec.precision)),
                                   task, (final.name,), spec.probe_device == "cuda"))
            done = UnitDone(tuple(r.task for r in readers))
            exclude = (str(unit.augmented_split),) if unit.mode == "lockstep" else ()
            for job in mine:
                if job.kind in ("extract", "finalize"):
                    deps = job.deps + ((before,) if before and job.kind == "extract" else ())
                    out.append(Job(job.name, replace(job.task, exclude=exclude, done_with=done), deps, job.gpu))
            out += readers
            first_task = final.task
            evictor = Job(_name("evict", unit.store, tagged_model(unit.model, spec.precision)),
                          EvictFeatures(first_task.root, unit.model, unit.store, spec.protocol, first_task.tasks,
                                        spec.precision, done, not evict, spec.name),
                          tuple(r.name for r in readers), False)
            out.append(evictor)
            before = evictor.name
    out += [job for job in jobs if job.kind == "report"]
    return out


def evictions(root: DataRoot) -> list[str]:
    """The lines of the grid's eviction log (empty when nothing was evicted)."""
    path = Path(root.root) / "logs" / "grid" / "evictions.log"
    return path.read_text().splitlines() if path.is_file() else []
