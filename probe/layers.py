"""Which cached layers a probe reads: ``--layers`` resolved against a feature split, and, for a layer
the split lacks, the one ``make extract`` that adds it — or why no extraction can.

``--layers`` takes what grid files take: store names (``block11``), indices (``11``: the model's
``block11``), ``all`` (every cached layer) and ``last`` (the deepest cached layer).
"""

from __future__ import annotations

import re
from typing import Sequence

from cache import MidprobeError
from protocols import DEFAULT_PROTOCOL, Protocol, get_protocol

#: dataset splits a dense probe reads together: a layer is added to both at once
DENSE_SPLITS = ("train", "test")


def _index(name: str) -> int:
    match = re.search(r"(\d+)$", name)
    return int(match.group(1)) if match else -1


def _named(token: str, available: Sequence[str], model: str | None) -> str:
    """An index (``11``) as the store name the model's extraction writes (``block11``)."""
    if not token.isdigit():
        return token
    if model is not None and model.split("+")[0]:
        from extract.backbones import BACKBONES, get_spec
        from extract.backbones.spec import layer_name

        if model.split("+")[0] in BACKBONES:
            return layer_name(get_spec(model).family, int(token))
    same = [name for name in available if _index(name) == int(token)]
    return same[0] if len(same) == 1 else token


def expand(chosen: Sequence[str], available: Sequence[str], model: str | None = None) -> tuple[str, ...]:
    """``chosen`` with ``all``, ``last`` and indices replaced by store names, repeats dropped."""
    out: list[str] = []
    for token in chosen:
        if token == "all":
            out += available
        elif token == "last":
            out += sorted(available, key=_index)[-1:]
        else:
            out.append(_named(token, available, model))
    return tuple(dict.fromkeys(out))


def default_layers(train, tests: Sequence) -> list[str]:
    """The default layer set: the layers every split read holds (a layer added to some splits only
    is left out until it is in all of them)."""
    return [layer for layer in train.layers if all(layer in test.layers for test in tests)]


def resolve_layers(available: Sequence[str], layer_sets: Sequence[Sequence[str]] | None,
                   features=None, protocol: str | Protocol | None = None) -> list[tuple[str, ...]]:
    """Layer sets to probe (default: all cached layers); a layer the split lacks is an error that
    names the ``make extract`` adding it (without rewriting the others)."""
    if not layer_sets:
        if not available:
            raise MidprobeError(add_hint(features, [], "holds only global vectors", protocol))
        return [tuple(available)]
    model = features.fingerprint.get("model") if features is not None else None
    out = []
    for chosen in layer_sets:
        names = expand(chosen, available, model)
        missing = [layer for layer in names if layer not in available]
        if missing or not names:
            raise MidprobeError(add_hint(features, missing, f"has {', '.join(available) or 'only global vectors'}",
                                         protocol))
        out.append(names)
    return list(dict.fromkeys(out))


def add_hint(features, missing: Sequence[str], has: str, protocol: str | Protocol | None) -> str:
    """The message for ``missing`` layers (none: no layer at all) of ``features``: the ``make extract``
    that adds them to every split the probe reads, or, where the model has no such layer, that."""
    from extract.backbones.layer_check import missing_layers

    protocol = protocol if isinstance(protocol, Protocol) else get_protocol(protocol)
    what = f"layers {', '.join(missing)} are not cached" if missing else "no layer is cached"
    if features is None:
        return f"{what}; the store {has}"
    fp = features.fingerprint
    where = f"{what} in split {features.split!r} of {features.store} (it {has})"
    impossible = missing_layers(fp["model"], missing) if missing else None
    if impossible:
        return f"{where}; no extraction can add it: {impossible}"
    # LAYERS=all: the layers the model taps by default (a split of global vectors has none to name)
    wanted = ",".join(missing) if missing else "all"
    extra = "" if features.precision == "fp16" else f" PRECISION={features.precision}"
    # the split a protocol reads (``train@input-none``, ``train@aug10-paper-nyu``) is written with its
    # base's PROTOCOL= (and AUGMENT= where the probe's protocol came from one)
    extra += "" if protocol.base in ("", DEFAULT_PROTOCOL) else f" PROTOCOL={protocol.base}"
    augment = fp.get("augment")
    extra += f" AUGMENT={augment['views']}:{augment['policy']}" if augment and protocol.augment not in ("", "0") else ""
    source = fp.get("source_split", features.split)
    # a dense probe reads train and test: one command adds the layer to both, so the default probe
    # (the layers every split holds) never sees it in one split only
    split = ",".join(DENSE_SPLITS) if source in DENSE_SPLITS and not fp.get("corruption") else source
    return (f"{where}; add them, without rewriting the others, with `make extract MODEL={fp['model']} "
            f"DATASET={fp['dataset']} SPLIT={split} LAYERS={wanted}{extra}`")
