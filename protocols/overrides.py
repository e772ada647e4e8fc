"""Overrides of a protocol's choices (``EPOCHS=``, ``--batch-size``, a grid's ``overrides``), checked once.

:func:`check_overrides` is the one validator: the probe command line (:mod:`probe.cli`) and grid
files (:mod:`grid.spec`) both pass their overrides through it, so a value one accepts the other
accepts too, and both record the same resolved overrides.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

from cache import MidprobeError
from protocols.choices import DENSE_TASKS, CorrespondenceChoices, DenseChoices

#: Choices set with options of their own (``--head``/``--lr``, a grid's ``heads``/``lrs``), not as overrides.
OWN_OPTIONS = ("heads", "lr")


class OverrideError(MidprobeError):
    """One bad override; ``name`` is the choice it named (a grid file points at its line)."""

    def __init__(self, name: str, problem: str) -> None:
        super().__init__(f"{name}: {problem}")
        self.name, self.problem = name, problem


def _kind(value: Any) -> str:
    return {list: "a list", str: "a string", bool: "a boolean", int: "an integer", float: "a number"}.get(
        type(value), type(value).__name__)


def overridable(task: str) -> dict[str, Any]:
    """``{choice: default}`` of the choices an override may set for ``task`` (none for a task
    without protocol choices: similarity)."""
    kind = DenseChoices if task in DENSE_TASKS else CorrespondenceChoices if task == "correspondence" else None
    fields = {f.name: f.default for f in dataclasses.fields(kind)} if kind else {}
    return {n: d for n, d in fields.items() if not dataclasses.is_dataclass(d) and n not in OWN_OPTIONS}


def check_overrides(task: str, overrides: Mapping[str, Any]) -> dict[str, Any]:
    """``overrides`` of ``task``'s protocol choices, checked and resolved: each names a choice of the
    task, of its type (an integer where a number is expected is taken), integers >= 1; numbers
    become floats where the choice is one; ``batch_size`` also sets ``eval_batch_size`` unless it is
    given. A bad one raises :class:`OverrideError`."""
    known = overridable(task)
    if overrides and not known:
        raise OverrideError(next(iter(overrides)), f"{task} has no protocol choices to override")
    for name, value in overrides.items():
        if name in OWN_OPTIONS:
            raise OverrideError(name, f"{name} is set with its own option ({'heads' if name == 'heads' else 'lrs'}), "
                                      "not as an override")
        if name not in known:
            raise OverrideError(name, f"unknown choice; {task} has {', '.join(known)}")
        default = known[name]
        fits = (isinstance(value, type(default)) and not (isinstance(value, bool) and not isinstance(default, bool))
                or isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool))
        if not fits:
            raise OverrideError(name, f"expected {_kind(default)} like {default!r}, got {value!r}")
        if isinstance(default, int) and not isinstance(default, bool) and value < 1:
            raise OverrideError(name, f"expected a value >= 1, got {value!r}")
    out = {k: float(v) if isinstance(known[k], float) else v for k, v in overrides.items()}
    if "batch_size" in out and "eval_batch_size" not in out:
        out["eval_batch_size"] = out["batch_size"]
    return out
