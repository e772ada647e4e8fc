"""Record identity: the records a probe run will write, named and configured, before it runs.

:func:`plan_records` is the one place a record's probe key, file name and identifying
configuration are decided. The probe runner (:mod:`probe.run`) writes each record under the
planned name with the planned configuration, and fails if it produces a record the plan does not
hold (or misses one it does); the grid (:mod:`grid.jobs`) asks the same function which records
a probe task must leave behind to be complete. A change to a record's identity is therefore
made here, once, and both sides follow it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

from cache import MidprobeError
from probe.heads import CLOSED_FORM
from probe.records import record_name
from protocols import (DenseChoices, ExtractionChoices, Protocol, canonical_corruption, correspondence_style,
                       feature_split_name)


@dataclass(frozen=True)
class PlannedRecord:
    """One record a probe run writes: its ``probe`` key and ``seed``, its ``file`` name in the
    ``results/<task>/<dataset>/<model>/<protocol>/`` folder, ``split`` (the feature split whose
    fingerprint it carries) and ``config``, the entries of its configuration that identify it
    (a record that matches them, from features of that fingerprint, is this record)."""

    probe: str
    seed: int
    file: str
    split: str
    config: Mapping[str, Any]


def dense_choices(protocol: Protocol, task: str, overrides: Mapping[str, Any] | None) -> DenseChoices:
    """The protocol's choices for ``task`` with the named fields overridden (unknown names are an error)."""
    base = protocol.dense_choices(task)
    overrides = dict(overrides or {})
    unknown = [k for k in overrides if k not in {f.name for f in dataclasses.fields(DenseChoices)}]
    if unknown:
        raise MidprobeError(f"unknown probe setting {', '.join(unknown)}")
    return replace(base, **overrides)


def condition_key(probe: str, *, train_images: int | None = None, corruption: str = "") -> str:
    """A probe's key under a study's conditions: ``-n<images>`` for a training subset,
    ``@corrupt-<name>-<severity>`` for a corrupted test split (none for the full, clean run)."""
    tag = ExtractionChoices(corruption=corruption).split_tag()
    return probe + (f"-n{train_images}" if train_images else "") + (f"@{tag}" if tag else "")


def sgd_key(head: str, layers: Sequence[str], lr: float) -> str:
    """The key of an SGD-trained head (:attr:`probe.train.ProbeConfig.key`)."""
    return f"{head}-{'+'.join(layers)}-lr{lr:g}"


def ridge_key(layers: Sequence[str]) -> str:
    return f"ridge-{'+'.join(layers)}"


def zero_shot_key(task: str, layers: Sequence[str] | None, options: Mapping[str, Any] | None = None) -> str:
    """A zero-shot task's key: the task, with the layers when they were chosen rather than defaulted,
    and ``-bidirectional`` for a bidirectional correspondence run (its own experiment: without the
    tag its record would replace the one-way run's)."""
    key = task if not layers else f"{task}-{'+'.join(layers)}"
    return key + ("-bidirectional" if (options or {}).get("bidirectional") else "")


def record_config(*, protocol: Protocol, overrides: Mapping[str, Any] | None, extraction: ExtractionChoices,
                  precision: str) -> dict[str, Any]:
    """The configuration entries every record of a run carries: the protocol's name, the overrides,
    the extraction choices its features were made with and (when not float16) the store's precision."""
    return {"protocol": protocol.name, "overrides": dict(overrides or {}),
            "extraction": dataclasses.asdict(extraction), **({} if precision == "fp16" else {"precision": precision})}


def plan_records(*, task: str, dense: bool, protocol: Protocol, loader: str, dataset_attrs: Mapping[str, Any],
                 layer_sets: Sequence[Sequence[str]] | None, heads: Sequence[str] | None = None,
                 lrs: Sequence[float] | None = None, overrides: Mapping[str, Any] | None = None,
                 seeds: Sequence[int] = (0,), device: str = "cpu", precision: str = "fp16",
                 train_sizes: Sequence[int | None] = (None,), corruptions: Sequence[str] = (),
                 options: Mapping[str, Any] | None = None, zero_shot_split: str = "") -> list[PlannedRecord]:
    """Every record a probe of ``task`` on one feature store writes, in the order it writes them.

    ``layer_sets``: the resolved layer sets (names, as the store holds them); ``None`` for a
    zero-shot task's default. ``heads``/``lrs``: default the protocol's. ``seeds``: one sweep each
    (the ridge head on the whole split is fitted once, with the first; on each seed's training subsets once per seed). ``train_sizes``: resolved training subsets
    (``None`` = the whole split; :func:`probe.run.subset_sizes`). ``corruptions``: canonical
    corrupted test splits each head is also scored on. ``options``: zero-shot run options
    (``bidirectional``). ``zero_shot_split``: the dataset split a zero-shot task reads.
    """
    from probe.train import TrainSettings

    extraction = protocol.extraction_choices(task, loader)
    common = record_config(protocol=protocol, overrides=overrides, extraction=extraction, precision=precision)
    conditions = ["", *(canonical_corruption(c) for c in corruptions)]
    out: list[PlannedRecord] = []

    def add(key: str, seed: int, split: str, config: Mapping[str, Any]) -> None:
        config = {**common, **config}
        out.append(PlannedRecord(key, seed, record_name(key, seed, config["overrides"], precision), split, config))

    if not dense:
        seed = seeds[0]
        layers = list(layer_sets[0]) if layer_sets else None
        extra: dict[str, Any] = {}
        if task == "correspondence":
            choices = protocol.correspondence_choices(correspondence_style(dataset_attrs))
            fields = {f.name for f in dataclasses.fields(choices)}
            choices = replace(choices, **{k: v for k, v in (overrides or {}).items() if k in fields})
            extra["bidirectional"] = choices.bidirectional if (options or {}).get("bidirectional") else ""
        for corruption in conditions:
            split = feature_split_name(zero_shot_split, replace(extraction, corruption=corruption))
            add(condition_key(zero_shot_key(task, layers, options), corruption=corruption), seed, split,
                {**extra, **({"test_corruption": corruption} if corruption else {})})
        return out
    choices = dense_choices(protocol, task, overrides)
    heads = list(heads or choices.heads)
    lrs = list(lrs or [choices.lr])
    sets = [list(s) for s in layer_sets or ()]
    train = feature_split_name("train", extraction, training=True)
    sgd = [(head, layers, lr) for head in heads if head not in CLOSED_FORM for layers in sets for lr in lrs]

    def condition(size: int | None, corruption: str) -> dict[str, Any]:
        return {**({"train_images": size} if size is not None else {}),
                **({"test_corruption": corruption} if corruption else {})}

    for seed in seeds if sgd else ():
        settings = TrainSettings(choices, seed, device).as_dict()
        for size in train_sizes:
            for corruption in conditions:
                for head, layers, lr in sgd:
                    add(condition_key(sgd_key(head, layers, lr), train_images=size, corruption=corruption), seed,
                        train, {"settings": settings, "head": head, "layers": layers, "lr": lr,
                                **condition(size, corruption)})
    # the ridge fit is deterministic: the whole split once (the first seed); each seed's nested subsets
    ridge_runs = [(None, seeds[0])] * (None in train_sizes) + [(s, seed) for seed in seeds for s in train_sizes if s]
    for layers in sets if any(h in CLOSED_FORM for h in heads) else ():
        for size, seed in ridge_runs:
            settings = TrainSettings(choices, seed, device).as_dict()
            for corruption in conditions:
                add(condition_key(ridge_key(layers), train_images=size, corruption=corruption), seed, train,
                    {"settings": settings, "head": "ridge", "layers": layers, **condition(size, corruption)})
    return out
