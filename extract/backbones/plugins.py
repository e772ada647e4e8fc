"""Backbones from installed packages: entry points of the group ``midprobe.backbones``.

A package declares, in its ``pyproject.toml``::

    [project.entry-points."midprobe.backbones"]
    my_ssl_v2 = "my_ssl.midprobe:build_v2"

and after ``pip install my-ssl``, ``MODEL=my_ssl_v2`` builds ``build_v2()`` exactly as
``py:my_ssl.midprobe:build_v2`` would (:mod:`extract.backbones.factory`: an ``nn.Module``
returning named maps, or a :class:`~extract.backbones.factory.CustomBackbone`). The zoo's own
names come first: a plugin cannot replace a registered model.
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from importlib.metadata import EntryPoint, entry_points

from cache import MidprobeError
from extract.backbones.factory import Loaded, call_factory, file_identity

GROUP = "midprobe.backbones"


def available() -> dict[str, EntryPoint]:
    """Every installed entry point of :data:`GROUP`, by name (the first of a repeated name wins)."""
    out: dict[str, EntryPoint] = {}
    for ep in entry_points(group=GROUP):
        out.setdefault(ep.name, ep)
    return out


def distribution(ep: EntryPoint) -> str:
    """``"<dist> <version>"`` of the package that declares ``ep``."""
    dist = getattr(ep, "dist", None)
    return f"{dist.name} {dist.version}" if dist is not None else "unknown package"


def load_plugin(name: str) -> Loaded:
    """Build the plugin ``name`` (once per process per package version)."""
    ep = available().get(name)
    if ep is None:
        raise MidprobeError(f"no installed package provides backbone {name!r} (entry point group {GROUP})")
    return _load(name, ep.value, distribution(ep))


@lru_cache(maxsize=16)
def _load(name: str, value: str, dist: str) -> Loaded:
    ep = available()[name]
    label = f"plugin {name} ({value} from {dist})"
    try:
        factory = ep.load()
        module = importlib.import_module(ep.module)
    except Exception as exc:
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise MidprobeError(f"{label}: loading the entry point failed: {type(exc).__name__}: {first}") from None
    identity = file_identity(module)
    source_id = {"route": "plugin", "entry_point": f"{name} = {value}", **identity, "version": dist}
    return call_factory(label, factory, source_id)


def list_rows() -> list[tuple[str, str, str]]:
    """``(name, entry point value, "<dist> <version>")`` of every installed plugin, for ``--list``."""
    return [(name, ep.value, distribution(ep)) for name, ep in sorted(available().items())]
