"""A disk budget for a grid: which (model, dataset) units stream their augmented views, and in what order.

Each (model, dataset store) is a *unit*: the feature splits its extraction writes and the probes
that read them. A unit is ``cached`` (every split on disk, as without a budget) or ``lockstep``
(its augmented training split streamed a view at a time by :func:`probe.lockstep.run_lockstep`,
at most ``views_on_disk`` views on disk; its other splits cached). Under ``disk_budget`` a unit
is cached when all its splits fit, else lockstep with as many views as fit (``augmented =
"lockstep" | "cached"`` forces one or the other). Units run in *lanes*: a lane runs its units one
after another, each evicting its features once every probe that reads them has its record
(``keep_features = true`` keeps them); lanes run side by side, as many as the budget holds, so
the features on disk never exceed the sum of each lane's largest unit.

Forward passes (images through a backbone) per unit: cached, each split's rows once; lockstep,
the statistics pass over every view (when a task standardises with train statistics) plus the
views training could not keep (:mod:`probe.lockstep`); the paper's code recomputes the backbone
for every probe, every epoch (``epochs x train images + test images`` per dense probe and seed).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

from cache import MidprobeError

_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "p": 10**15}


def parse_disk(text: str | int) -> int:
    """``"2TB"``, ``"500 GB"``, ``"1.5t"`` or bytes -> bytes (decimal units, as the dry run prints them)."""
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([kKmMgGtTpP]?)[bB]?\s*", str(text))
    if not match or float(match.group(1)) <= 0:
        raise MidprobeError(f"disk budget {text!r}: expected a size such as 2TB, 500GB or 1.5T (decimal units)")
    return int(float(match.group(1)) * _UNITS[match.group(2).lower()])


@dataclass(frozen=True)
class Unit:
    """One (feature model, dataset store) under the budget: its mode, disk peak and forward passes."""

    model: str
    store: str
    mode: str                        # "cached" or "lockstep"
    cached_bytes: int                # every split on disk
    peak: int                        # what this unit puts on disk at most
    views: int                       # augmented views of its training split (0: none)
    views_on_disk: int               # lockstep: views on disk at once
    augmented_split: str | None
    lockstep_tasks: tuple[str, ...]  # the dense tasks trained in lockstep
    forwards: int
    cached_forwards: int
    paper_forwards: int


def _dense_plan(est: Any, store: str, task: str) -> tuple[Any, int]:
    """``(choices, probes per seed)`` of a dense task under the grid's settings."""
    from probe.run import dense_choices

    settings = est.spec.tasks[task]
    choices = dense_choices(est.protocol, task, settings.overrides)
    probes = len(settings.heads or choices.heads) * len(settings.lrs or (1,)) * max(1, len(settings.layer_sets))
    return choices, probes


def plan_units(est: Any) -> list[Unit]:
    """Every (model, dataset) unit of the grid sized by ``est`` (a :class:`grid.plan.Estimator`), each
    given its mode under the grid's budget; a budget below a unit's smallest footprint is an error."""
    from extract.sizing import feature_model_name, human_bytes
    from probe.tasks import DenseTask, get_task
    from protocols import feature_split_name

    spec = est.spec
    budget, overlap = spec.disk_budget, spec.probe_device == "cuda"
    seeds = len(spec.seeds)
    units = []
    for entry in spec.datasets:
        store = est.protocol.dataset_name(entry.loader)
        for model in spec.models:
            feature_model = feature_model_name(model, est.protocol)
            sizes = est.split_sizes(store, feature_model)
            by_name = {s.feature_split: s for s in sizes}
            cached_bytes = sum(s.bytes for s in sizes)
            augmented = next((s for s in sizes if s.views > 1), None)
            dense = [t for t in entry.tasks if isinstance(get_task(t), DenseTask)]
            readers, epochs, stats, paper = [], 0, False, 0
            for task in entry.tasks:
                extraction = est.protocol.extraction_choices(task, entry.loader)
                probe_task = get_task(task)
                if task in dense:
                    choices, probes = _dense_plan(est, store, task)
                    train = by_name.get(feature_split_name("train", extraction, training=True))
                    test = by_name.get(feature_split_name("test", extraction))
                    paper += seeds * probes * (choices.epochs * (train.images if train else 0)
                                               + (test.images if test else 0))
                    if augmented is not None and train is augmented:
                        readers.append(task)
                        epochs = max(epochs, choices.epochs)
                        stats = stats or choices.feature_norm == "train-stats"
                else:
                    split = by_name.get(feature_split_name(probe_task.split, extraction))
                    paper += seeds * (split.rows if split else 0)
            cached_forwards = sum(s.rows for s in sizes)
            unit = Unit(feature_model, store, "cached", cached_bytes, cached_bytes, 0, 0, None, (), cached_forwards,
                        cached_forwards, paper)
            if augmented is not None and readers:
                other = cached_bytes - augmented.bytes
                view = -(-augmented.bytes // augmented.views)
                wanted = spec.augmented or ("cached" if budget is None or cached_bytes <= budget else "lockstep")
                if wanted == "lockstep":
                    fit = augmented.views if budget is None else (budget - other) // view
                    if fit < 1:
                        raise MidprobeError(f"disk budget {human_bytes(budget)}: {feature_model} on {store} needs "
                                            f"{human_bytes(other + view)} even streaming one view at a time")
                    most = min(augmented.views, fit) if budget is not None else (2 if overlap else 1)
                    most = max(most, 1)
                    use_overlap = overlap and most >= 2
                    retained = max(1, most - 1 if use_overlap else most)
                    k, n = augmented.views, augmented.images
                    again = epochs - min(retained, k, epochs) if stats else epochs
                    forwards = (cached_forwards - augmented.rows) + n * ((k if stats else 0) + again)
                    unit = Unit(feature_model, store, "lockstep", cached_bytes, other + most * view, k, most,
                                augmented.feature_split, tuple(readers), forwards, cached_forwards, paper)
                elif budget is not None and cached_bytes > budget and not spec.keep_features:
                    raise MidprobeError(f"disk budget {human_bytes(budget)}: {feature_model} on {store} caches "
                                        f"{human_bytes(cached_bytes)}; use augmented = \"lockstep\" (or leave it unset)")
            elif budget is not None and cached_bytes > budget:
                raise MidprobeError(f"disk budget {human_bytes(budget)}: {feature_model} on {store} needs "
                                    f"{human_bytes(cached_bytes)} and has no augmented views to stream")
            units.append(unit)
    return units


def lanes(units: Sequence[Unit], budget: int | None, *, keep: bool = False) -> list[list[Unit]]:
    """Units in lanes: the most lanes whose largest units together fit ``budget`` (one lane per unit
    without a budget). Largest units first, each to the lane whose largest is smallest."""
    if budget is None:
        return [[u] for u in units]
    if keep:
        return [list(units)]
    ordered = sorted(units, key=lambda u: -u.peak)
    best = [list(ordered)]
    for count in range(2, len(ordered) + 1):
        trial: list[list[Unit]] = [[] for _ in range(count)]
        for unit in ordered:
            min(trial, key=lambda lane: (lane[0].peak if lane else 0, len(lane))).append(unit)
        if sum(lane[0].peak for lane in trial if lane) > budget:
            break
        best = trial
    return best


def peak_bytes(plan: Sequence[Sequence[Unit]], *, keep: bool = False) -> int:
    """Features on disk at most: each lane's largest unit (every unit, when nothing is evicted)."""
    if keep:
        return sum(u.peak for lane in plan for u in lane)
    return sum(max(u.peak for u in lane) for lane in plan if lane)


def describe_budget(est: Any, jobs: Sequence[Any]) -> list[str]:
    """The dry run's lines on disk and forward passes under the grid's budget."""
    from extract.sizing import human_bytes

    spec = est.spec
    units = plan_units(est)
    plan = lanes(units, spec.disk_budget, keep=spec.keep_features)
    peak = peak_bytes(plan, keep=spec.keep_features or spec.disk_budget is None)
    streamed = [u for u in units if u.mode == "lockstep"]
    forwards = sum(u.forwards for u in units)
    cached = sum(u.cached_forwards for u in units)
    paper = sum(u.paper_forwards for u in units)
    kinds = {}
    for job in jobs:
        kinds[job.kind] = kinds.get(job.kind, 0) + 1
    budget = "no disk budget" if spec.disk_budget is None else f"disk budget {human_bytes(spec.disk_budget)}"
    lines = [f"{budget} ({spec.precision}): {len(units)} (model, dataset) unit(s), {len(streamed)} in lockstep, "
             f"{len(plan)} lane(s){'' if spec.keep_features or spec.disk_budget is None else ', features evicted once their probes have records'}"]
    for store in dict.fromkeys(u.store for u in streamed):
        group = [u for u in streamed if u.store == store]
        on_disk = sorted({u.views_on_disk for u in group})
        lines.append(f"  lockstep on {store}: {len(group)} model(s), {', '.join(group[0].lockstep_tasks)} on "
                     f"{group[0].augmented_split}, {'-'.join(map(str, on_disk[::max(1, len(on_disk) - 1)]))} of "
                     f"{group[0].views} views on disk")
    lines += [f"  peak feature disk: {human_bytes(peak)} (everything cached at once: "
              f"{human_bytes(sum(u.cached_bytes for u in units))})",
              f"  backbone forward passes: {forwards:,} (all views cached: {cached:,}; the paper's code, per probe "
              f"and epoch: {paper:,}, {paper / max(forwards, 1):.1f}x)",
              f"  every task planned: {kinds.get('probe', 0)} probe job(s) over {len(spec.datasets)} dataset(s) x "
              f"{len(spec.models)} model(s), {sum(len(u.lockstep_tasks) for u in streamed)} of them in lockstep"]
    return lines
