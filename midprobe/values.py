"""Checked command-line values: argparse ``type=`` callables and post-parse checks.

Each turns a value a user can get wrong into a one-line ``error:`` before anything is read or
written — a :class:`~cache.errors.MidprobeError`, which argparse does not catch, so it is not
argparse's two-line usage error: seeds >= 0
(numpy seeds are unsigned), devices this machine has, positive integers, comma lists without
repeats (a repeated seed, model, head, learning rate or layer would train the same probe twice).
"""

from __future__ import annotations

from typing import Iterable, TypeVar

from cache.errors import MidprobeError

T = TypeVar("T")

#: device names midprobe runs on; ``cuda:<i>`` also, where that GPU is visible
DEVICES = ("cpu", "cuda")


def seed(text: str) -> int:
    """A seed: an integer >= 0 (numpy's generators take unsigned seeds)."""
    try:
        value = int(text)
    except ValueError:
        raise MidprobeError(f"seed {text!r}: expected an integer >= 0") from None
    if value < 0:
        raise MidprobeError(f"seed {value}: expected an integer >= 0")
    return value


def seeds(text: str) -> list[int]:
    """Comma-separated seeds, each >= 0, repeats dropped (order kept)."""
    out = []
    for part in (p.strip() for p in text.split(",")):
        if part:
            out.append(seed(part))
    if not out:
        raise MidprobeError(f"seeds {text!r}: expected integers >= 0, e.g. 0,1,2")
    return unique(out)


def positive_int(text: str) -> int:
    """An integer >= 1 (counts, sizes, epochs)."""
    try:
        value = int(text)
    except ValueError:
        raise MidprobeError(f"{text!r}: expected an integer >= 1") from None
    if value < 1:
        raise MidprobeError(f"{value}: expected an integer >= 1")
    return value


def unique(items: Iterable[T]) -> list[T]:
    """``items`` without repeats, first occurrences in order."""
    return list(dict.fromkeys(items))


def name_list(text: str | None) -> list[str] | None:
    """A comma-separated list of names (models, heads), blanks and repeats dropped; ``None`` stays."""
    if text is None:
        return None
    return unique(p.strip() for p in text.split(",") if p.strip())


def layer_sets(text: str | None) -> list[list[str]] | None:
    """``'block2,block11;block11'`` -> ``[['block2', 'block11'], ['block11']]``: blank names and sets
    dropped, repeats within a set and repeated sets dropped; text with no layer name in it is an error."""
    if text is None:
        return None
    sets = [name_list(s) for s in text.split(";")]
    out = unique(tuple(s) for s in sets if s)
    if not out:
        raise MidprobeError(f"--layers {text!r} names no layer; expected layer names joined by commas, sets "
                            "separated by ';' (e.g. block2,block11;block11), or all / last")
    return [list(s) for s in out]


def device(text: str) -> str:
    """``cpu``, ``cuda`` or ``cuda:<i>`` — and only a CUDA device this machine has."""
    name = text.strip()
    base, _, index = name.partition(":")
    if base not in DEVICES or (index and not index.isdigit()) or (base == "cpu" and index):
        raise MidprobeError(f"unknown device {text!r}; expected cpu, cuda or cuda:<i>")
    if base == "cuda":
        import torch

        if not torch.cuda.is_available():
            raise MidprobeError(f"device {text!r} was asked for but no CUDA GPU is visible; use DEVICE=cpu")
        if index and int(index) >= torch.cuda.device_count():
            raise MidprobeError(f"device {text!r}: this machine has {torch.cuda.device_count()} CUDA GPU(s), "
                                f"cuda:0-cuda:{torch.cuda.device_count() - 1}")
    return name
