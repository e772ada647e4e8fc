"""Models from outside the registry: ``hf:<id or dir>``, ``py:<module or file>:<factory>``, plugins.

Each route gives the same :class:`~extract.backbones.spec.BackboneSpec` (``weights`` is the route:
``"hf"``, ``"py"`` or ``"plugin"``) and a module with the :class:`~extract.backbones.Backbone`
contract, plus a ``source_id`` the store's fingerprint records (``model_source``: the factory's
file and its sha256 and package version, or the HF config's sha256), beside the weights' digest,
so a changed model never reuses features extracted from the old one.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from torch import nn

from cache import MidprobeError
from extract.backbones.spec import BackboneSpec

#: ``BackboneSpec.weights`` of the routes' specs.
ROUTE_WEIGHTS = ("hf", "py", "plugin")


def route_of(name: str, registered: bool = False) -> str | None:
    """``"hf"``, ``"py"`` or ``"plugin"`` for a name one of the routes serves (``registered``: the
    name is in the registry, which plugins never shadow), else ``None``."""
    if name.startswith("hf:"):
        return "hf"
    if name.startswith("py:"):
        return "py"
    if not registered and ":" not in name and "+" not in name:
        from extract.backbones.plugins import available

        if name in available():
            return "plugin"
    return None


def route_spec(name: str, layers: list[str] | None = None) -> BackboneSpec:
    """The spec of route model ``name`` tapping ``layers`` (names or indices; default per route)."""
    route = route_of(name)
    if route == "hf":
        from extract.backbones import hf

        return hf.spec_for(name[len(hf.PREFIX):], layers)
    from extract.backbones.factory import spec_for

    loaded = _loaded(name, route)
    if route == "py":
        source = f"py factory {loaded.source_id['factory']}"
    else:
        source = f"plugin entry point {loaded.source_id['entry_point']} ({loaded.source_id['version']})"
    return spec_for(loaded, name, method=f"{route} factory" if route == "py" else "plugin", source=source,
                    weights=route, layers=layers)


def _loaded(name: str, route: str | None):
    if route == "py":
        from extract.backbones.factory import PREFIX, load_py

        return load_py(name[len(PREFIX):])
    if route == "plugin":
        from extract.backbones.plugins import load_plugin

        return load_plugin(name)
    raise MidprobeError(f"{name!r} is not an hf:, py: or plugin model")


def select(spec: BackboneSpec, layers: list[str] | None) -> BackboneSpec:
    """``spec`` tapping ``layers`` instead (its global vector kept)."""
    if not layers or layers == ["all"]:
        return spec
    return replace(route_spec(spec.name, layers), global_kind=spec.global_kind)


def pick_layers(label: str, names: tuple[str, ...], layers: list[str]) -> tuple[int, ...]:
    """Indices of ``layers`` (store names or 0-based indices) among ``names``."""
    out = []
    for item in layers:
        if item in names:
            out.append(names.index(item))
        elif item.isdigit() and int(item) < len(names):
            out.append(int(item))
        else:
            raise MidprobeError(f"{label} has no layer {item!r}; its layers: {', '.join(names)} "
                                f"(or indices 0-{len(names) - 1})")
    return tuple(out)


def build(spec: BackboneSpec, weights: Any = None) -> tuple[nn.Module, str, dict[str, Any]]:
    """``(module, weights id, source id)`` of a route spec."""
    if weights:
        raise MidprobeError(f"model {spec.name!r} loads its own weights ({spec.weights} route); WEIGHTS= does not "
                            "apply: load the file in the factory, or save_pretrained into the hf: directory")
    if spec.weights == "hf":
        from extract.backbones import hf

        return hf.build(spec)
    from extract.backbones.factory import FactoryBackbone

    loaded = _loaded(spec.name, spec.weights)
    return FactoryBackbone(spec, loaded).eval(), loaded.weights_id, dict(loaded.source_id)
