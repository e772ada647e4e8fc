"""What an extraction writes: the feature splits a protocol's tasks read from one dataset store.

A dataset store lists the tasks it was prepared for (its ``tasks`` attribute). For each task
the protocol names the dataset splits it reads, the extraction choices of each (input
normalisation, global vector, augmented views) and the layers it needs (all, the last, or
only the global vector). Splits read by several tasks with the same choices are extracted
once, with the union of their layers. A store without a ``tasks`` attribute gets every split
with every layer and the default choices. With a corruption, only the evaluation splits of the
tasks that can be corrupted (``protocols.CORRUPTIBLE_TASKS``) are planned, each as its own
feature split ``<split>@...corrupt-<name>-<severity>``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from cache import MidprobeError
from protocols import CORRUPTIBLE_TASKS, TASK_SPLITS, ExtractionChoices, Protocol, feature_split_name

#: How much of the model a layer need covers: every tapped layer, the last one, or none (global only).
LAYER_NEEDS = ("global", "last", "all")


@dataclass(frozen=True)
class SplitJob:
    """One feature split to write: ``name`` from dataset split ``source`` with ``choices``.

    ``layers`` is ``"all"``, ``"last"`` or ``"global"`` (only the global vector); ``training``
    splits get the choices' augmented views; ``tasks`` read it.
    """

    source: str
    name: str
    choices: ExtractionChoices
    layers: str
    training: bool
    tasks: tuple[str, ...]


def plan_extraction(*, attrs: Mapping[str, Any], splits: Sequence[str], protocol: Protocol,
                    tasks: Sequence[str] | None = None, only_splits: Sequence[str] | None = None,
                    layers: str | None = None, corruption: str = "") -> list[SplitJob]:
    """The feature splits to extract for ``tasks`` (default: the store's) under ``protocol``.

    ``only_splits`` keeps the jobs reading those dataset splits; ``layers`` overrides every
    job's layer need (``LAYERS=``); ``corruption`` (canonical, e.g. ``"fog:3"``) plans instead
    the corrupted copies of the evaluation splits that corruptible tasks read.
    """
    loader = attrs.get("loader", attrs.get("name", ""))
    store_tasks = list(attrs.get("tasks") or [])
    chosen = list(tasks or store_tasks)
    unknown = [t for t in chosen if t not in TASK_SPLITS]
    if unknown:
        raise MidprobeError(f"unknown task {', '.join(unknown)}; known tasks: {', '.join(TASK_SPLITS)}")
    if tasks and store_tasks:
        foreign = [t for t in tasks if t not in store_tasks]
        if foreign:
            raise MidprobeError(f"dataset {attrs.get('name')!r} was prepared for {', '.join(store_tasks)}, "
                                f"not {', '.join(foreign)}")
    jobs: dict[str, SplitJob] = {}
    if not chosen:
        for split in splits:
            jobs[split] = SplitJob(split, split, ExtractionChoices(), "all", False, ())
    for task in chosen:
        for source, name, training, choices in protocol.feature_splits(task, loader):
            if source not in splits:
                continue
            need = choices.layers
            if name in jobs:
                old = jobs[name]
                need = max(old.layers, need, key=LAYER_NEEDS.index)
                jobs[name] = SplitJob(source, name, choices, need, training, old.tasks + (task,))
            else:
                jobs[name] = SplitJob(source, name, choices, need, training, (task,))
    out = [job for job in jobs.values() if not only_splits or job.source in only_splits or job.name in only_splits]
    if corruption:
        out = _corrupted(out, corruption, attrs.get("name"))
    if only_splits and not out:
        raise MidprobeError(f"no feature split to extract from {', '.join(only_splits)}; the store's splits: "
                            f"{', '.join(splits)}")
    if layers is not None:
        out = [SplitJob(j.source, j.name, j.choices, layers, j.training, j.tasks) for j in out]
    return out


def _corrupted(jobs: list[SplitJob], corruption: str, dataset: Any) -> list[SplitJob]:
    """The corrupted copies of the evaluation jobs read by corruptible tasks (for a store without
    tasks, of the splits those tasks evaluate on)."""
    evaluated = {split for task in CORRUPTIBLE_TASKS for split, training in TASK_SPLITS[task] if not training}
    out = []
    for job in jobs:
        tasks = tuple(t for t in job.tasks if t in CORRUPTIBLE_TASKS)
        if job.training or (job.tasks and not tasks) or (not job.tasks and job.source not in evaluated):
            continue
        choices = replace(job.choices, corruption=corruption)
        out.append(SplitJob(job.source, feature_split_name(job.source, choices), choices, job.layers, False, tasks))
    if not out:
        raise MidprobeError(f"nothing to corrupt in dataset {dataset!r}: corruptions apply to the evaluation splits "
                            f"of {', '.join(CORRUPTIBLE_TASKS)}, and none is planned here")
    return out
