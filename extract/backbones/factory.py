"""``py:<module or path/to/file.py>:<factory>``: your own ``nn.Module`` as a backbone.

The factory is called with no arguments, under ``torch.manual_seed(0)`` (so a randomly
initialised model is the same model every run), and returns either

- an ``nn.Module`` whose ``forward(x (N, 3, H, W))`` returns a dict of named ``(N, C, h, w)``
  maps (or a list of them, named ``map0``, ``map1``, ...; or a pair ``(maps, vector (N, D))``
  whose vector is the model's own global vector) — the simplest form; or
- a :class:`CustomBackbone`, the whole contract: the module plus the submodules to tap, the
  strides it declares, and its normalisation.

Strides are read off the map sizes of a 224 px forward; the mean/std are the module's ``mean`` /
``std`` attributes when it has them (``0-1`` pixel scale), ImageNet's otherwise; the global vector
is the model's own when ``forward`` returns one, else the spatial mean of its last map. Before
anything is written the factory's output is checked (shapes, whole strides, finite values) and a
wrong one fails in one line naming the factory.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Mapping

import torch
from torch import nn

from cache import MidprobeError
from extract.backbones.spec import IMAGENET_MEAN, IMAGENET_STD, BackboneSpec
from extract.backbones.weights import file_sha256, state_sha256

PREFIX = "py:"
#: The side of the square input the maps' strides are read off.
PROBE_SIDE = 224
#: The seed every factory is called under.
FACTORY_SEED = 0


@dataclass(frozen=True)
class CustomBackbone:
    """What a ``py:`` factory (or a plugin's entry point) may return instead of a bare module.

    ``module``: the network, given ``(N, 3, H, W)`` normalised float input. ``taps``: dotted names
    of submodules whose ``(N, C, h, w)`` outputs are the maps (forward hooks; the store names them
    with ``.`` as ``_``); empty: the maps are what ``forward`` returns. ``strides``: the stride, in
    input pixels, the factory declares per map name (checked against the maps). ``mean`` /
    ``std``: the input normalisation on the 0-1 pixel scale (default: the module's ``mean`` /
    ``std`` attributes, else ImageNet's).
    """

    module: nn.Module
    taps: tuple[str, ...] = ()
    strides: Mapping[str, int] | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


@dataclass
class Loaded:
    """A factory's module, called once per process, and what was read off it."""

    label: str                       # names the factory in every error
    module: nn.Module
    names: tuple[str, ...]           # every map, in forward order
    strides: tuple[int, ...]
    own_vector: bool                 # forward returns (maps, vector)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    source_id: dict[str, Any]
    weights_id: str
    taps: dict[str, str] = field(default_factory=dict)      # store name -> submodule name
    captured: dict[str, torch.Tensor] = field(default_factory=dict)


def parse(target: str) -> tuple[str, str]:
    """``"pkg.mod:build"`` or ``"path/to/file.py:build"`` -> ``(module or file, factory)``."""
    where, sep, name = target.rpartition(":")
    if not sep or not where or not name:
        raise MidprobeError(f"py:{target}: expected py:<module or path/to/file.py>:<factory>")
    return where, name


def _is_file(where: str) -> bool:
    return where.endswith(".py") or "/" in where or "\\" in where


def _import(label: str, where: str):
    """The module named ``where`` or in file ``where`` (a file gets a private module name)."""
    try:
        if _is_file(where):
            path = Path(where).expanduser().resolve()
            if not path.is_file():
                raise MidprobeError(f"{label}: no such file {path}")
            name = f"midprobe_py_{path.stem}_{hashlib.sha256(str(path).encode()).hexdigest()[:8]}"
            spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module
            spec.loader.exec_module(module)
            return module
        try:
            return importlib.import_module(where)
        except ModuleNotFoundError as exc:
            if exc.name and where.startswith(exc.name) and "" not in sys.path and str(Path.cwd()) not in sys.path:
                sys.path.insert(0, str(Path.cwd()))   # as `python -m` would find it
                return importlib.import_module(where)
            raise
    except MidprobeError:
        raise
    except Exception as exc:
        raise MidprobeError(f"{label}: importing {where} failed: {type(exc).__name__}: {_first(exc)}") from None


def _first(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [""])[0][:200]


def _version(module) -> str | None:
    version = getattr(module, "__version__", None)
    if version is None:
        from importlib.metadata import PackageNotFoundError, packages_distributions, version as dist_version

        for dist in packages_distributions().get(module.__name__.split(".")[0], []):
            try:
                return f"{dist} {dist_version(dist)}"
            except PackageNotFoundError:
                continue
    return None if version is None else str(version)


def file_identity(module) -> dict[str, Any]:
    """The module's file and its sha256, and the version of the package it comes from."""
    path = getattr(module, "__file__", None)
    return {"file": str(Path(path).resolve()) if path else None,
            "file_sha256": file_sha256(Path(path)) if path and Path(path).is_file() else None,
            "version": _version(module)}


def load_py(target: str) -> Loaded:
    """Load ``py:<target>`` (once per process while its file is unchanged)."""
    where, name = parse(target)
    stamp = ()
    if _is_file(where):
        path = Path(where).expanduser()
        stamp = (str(path.resolve()), path.stat().st_mtime_ns, path.stat().st_size) if path.is_file() else ()
    return _load_py(target, stamp)


@lru_cache(maxsize=16)
def _load_py(target: str, stamp: tuple) -> Loaded:
    where, name = parse(target)
    label = f"{PREFIX}{target}"
    module = _import(label, where)
    factory = module
    for part in name.split("."):
        factory = getattr(factory, part, None)
        if factory is None:
            raise MidprobeError(f"{label}: {where} has no factory {name!r}")
    source_id = {"route": "py", "factory": f"{where}:{name}", **file_identity(module)}
    return call_factory(label, factory, source_id)


def call_factory(label: str, factory: Callable[[], Any], source_id: dict[str, Any]) -> Loaded:
    """Call ``factory`` under :data:`FACTORY_SEED`, check its output on a 224 px input, and freeze it."""
    if not callable(factory):
        raise MidprobeError(f"{label}: {factory!r} is not callable; expected a factory returning an nn.Module")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(FACTORY_SEED)
            made = factory()
    except MidprobeError:
        raise
    except Exception as exc:
        raise MidprobeError(f"{label}: the factory raised {type(exc).__name__}: {_first(exc)}") from None
    contract = made if isinstance(made, CustomBackbone) else CustomBackbone(made) if isinstance(made, nn.Module) else None
    if contract is None or not isinstance(contract.module, nn.Module):
        raise MidprobeError(f"{label}: the factory returned {type(made).__name__}; expected an nn.Module or a "
                            "CustomBackbone")
    module = contract.module.eval()
    for p in module.parameters():
        p.requires_grad_(False)
    loaded = Loaded(label, module, (), (), False, _stats(label, contract, "mean", IMAGENET_MEAN),
                    _stats(label, contract, "std", IMAGENET_STD), source_id,
                    f"sha256-state:{state_sha256(module)}" if module.state_dict() else "none")
    _hook(loaded, contract.taps)
    gen = torch.Generator().manual_seed(FACTORY_SEED)
    x = torch.randn(2, 3, PROBE_SIDE, PROBE_SIDE, generator=gen)
    with torch.inference_mode():
        maps, vector = outputs(loaded, x)
    strides = []
    for key, value in maps.items():
        h, w = value.shape[-2:]
        stride = PROBE_SIDE // h if h else 0
        if not h or PROBE_SIDE % h or h != w:
            raise MidprobeError(f"{label}: map {key!r} is {h}x{w} on a {PROBE_SIDE}x{PROBE_SIDE} input: its stride "
                                f"does not divide the input (expected {PROBE_SIDE} / stride on each side)")
        declared = (contract.strides or {}).get(key)
        if declared is not None and declared != stride:
            raise MidprobeError(f"{label}: map {key!r} declares stride {declared} but is {h}x{w} on a "
                                f"{PROBE_SIDE} px input (stride {stride})")
        strides.append(stride)
    unknown = set(contract.strides or {}) - set(maps)
    if unknown:
        raise MidprobeError(f"{label}: strides declared for {sorted(unknown)}, which are not maps it returns "
                            f"({', '.join(maps)})")
    loaded.names, loaded.strides, loaded.own_vector = tuple(maps), tuple(strides), vector is not None
    return loaded


def _stats(label: str, contract: CustomBackbone, which: str, default: tuple) -> tuple[float, float, float]:
    value = getattr(contract, which)
    if value is None:
        value = getattr(contract.module, which, None)
    if value is None:
        return default
    flat = torch.as_tensor(value, dtype=torch.float64).flatten().tolist()
    if len(flat) != 3 or (which == "std" and min(flat) <= 0):
        raise MidprobeError(f"{label}: {which} {flat} is not three {'positive ' if which == 'std' else ''}numbers "
                            "(per RGB channel, 0-1 pixel scale)")
    return tuple(flat)


def _hook(loaded: Loaded, taps: tuple[str, ...]) -> None:
    modules = dict(loaded.module.named_modules())
    for tap in taps:
        if tap not in modules:
            raise MidprobeError(f"{loaded.label}: tap {tap!r} is not a submodule of the model")
        key = tap.replace(".", "_")
        loaded.taps[key] = tap
        modules[tap].register_forward_hook(lambda _m, _i, out, key=key: loaded.captured.__setitem__(key, out))


def outputs(loaded: Loaded, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor | None]:
    """``({name: (N, C, h, w)}, (N, D) or None)`` of one forward, checked (one line naming the factory).

    Values are checked for NaN/inf on a CPU only: on a GPU the check would wait for the device
    every batch, and the extraction's float16 range check refuses them before a chunk is written.
    """
    finite = x.device.type == "cpu"
    label, n = loaded.label, len(x)
    loaded.captured.clear()
    out = loaded.module(x)
    vector = None
    if isinstance(out, tuple) and len(out) == 2 and isinstance(out[0], (dict, list, tuple)) \
            and isinstance(out[1], torch.Tensor):
        out, vector = out
    if loaded.taps:
        maps = {key: loaded.captured.get(key) for key in loaded.taps}
        if vector is None and isinstance(out, torch.Tensor) and out.dim() == 2:
            vector = out
    elif isinstance(out, dict):
        maps = dict(out)
    elif isinstance(out, (list, tuple)):
        maps = {f"map{i}": v for i, v in enumerate(out)}
    else:
        raise MidprobeError(f"{label}: forward returned {type(out).__name__}; expected a dict of named "
                            "(N, C, h, w) maps, a list of them, or (maps, vector)")
    if not maps:
        raise MidprobeError(f"{label}: forward returned no maps")
    for key, value in maps.items():
        if not isinstance(key, str) or not key or "/" in key or key == "global":
            raise MidprobeError(f"{label}: map name {key!r} is not a usable store name (a non-empty string "
                                "without '/', not 'global')")
        shape = tuple(value.shape) if isinstance(value, torch.Tensor) else None
        if shape is None or len(shape) != 4 or shape[0] != n or not value.is_floating_point():
            raise MidprobeError(f"{label}: map {key!r} is {shape or type(value).__name__} for {n} images; expected "
                                f"a float (N={n}, C, h, w) tensor")
        if finite and not torch.isfinite(value).all():
            raise MidprobeError(f"{label}: map {key!r} has non-finite values (NaN or inf)")
    if vector is not None:
        if vector.dim() != 2 or vector.shape[0] != n or not vector.is_floating_point():
            raise MidprobeError(f"{label}: global vector is {tuple(vector.shape)}; expected a float (N={n}, D) tensor")
        if finite and not torch.isfinite(vector).all():
            raise MidprobeError(f"{label}: global vector has non-finite values (NaN or inf)")
    return maps, vector


def spec_for(loaded: Loaded, name: str, *, method: str, source: str, weights: str,
             layers: list[str] | None = None) -> BackboneSpec:
    """The :class:`BackboneSpec` of a loaded factory tapping ``layers`` (names or indices; default all)."""
    from extract.backbones.routes import pick_layers

    indices = pick_layers(name, loaded.names, layers) if layers and layers != ["all"] else \
        tuple(range(len(loaded.names)))
    return BackboneSpec(name=name, arch=name, family="custom", method=method, source=source, weights=weights,
                        layers=indices, layer_names=tuple(loaded.names[i] for i in indices),
                        strides=tuple(loaded.strides[i] for i in indices), mean=loaded.mean, std=loaded.std)


class FactoryBackbone(nn.Module):
    """``forward(x (N, 3, H, W))`` -> ``({name: (N, C, h, w)}, (N, D))`` of a factory's module.

    Every map must be exactly ``H / stride`` x ``W / stride``. The global vector
    (``spec.global_kind``): ``default`` the model's own (else the mean of its last map),
    ``gap`` the spatial mean of the last tapped map.
    """

    def __init__(self, spec: BackboneSpec, loaded: Loaded) -> None:
        super().__init__()
        self.spec, self.loaded, self.model = spec, loaded, loaded.module

    def with_spec(self, spec: BackboneSpec) -> "FactoryBackbone":
        return FactoryBackbone(spec, self.loaded)

    def forward(self, x: torch.Tensor) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        maps, vector = outputs(self.loaded, x)
        H, W = x.shape[-2:]
        for key, stride in zip(self.loaded.names, self.loaded.strides):
            h, w = maps[key].shape[-2:]
            if (h * stride, w * stride) != (H, W):
                raise MidprobeError(f"{self.loaded.label}: map {key!r} is {h}x{w} on a {H}x{W} input: its stride "
                                    f"{stride} does not divide the input (expected {H / stride:g}x{W / stride:g})")
        chosen = {key: maps[key] for key in self.spec.layer_names}
        if self.spec.global_kind == "gap":
            pooled = chosen[self.spec.layer_names[-1]].mean(dim=(2, 3))
        else:
            pooled = vector if vector is not None else maps[self.loaded.names[-1]].mean(dim=(2, 3))
        return chosen, pooled
