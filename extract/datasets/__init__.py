"""Dataset preparation: raw files (or a renderer) -> a dataset store under the data root."""

from __future__ import annotations

import re
from typing import Any, Callable

from cache import DataRoot, MidprobeError

#: name -> prepare(root=..., raw=..., **options) returning the store path.
DATASETS: dict[str, Callable[..., Any]] = {}


def register_dataset(name: str) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    def wrap(fn: Callable[..., Any]) -> Callable[..., Any]:
        DATASETS[name] = fn
        return fn
    return wrap


@register_dataset("synthetic")
def _synthetic(*, root: DataRoot, raw: str | None = None, **options: Any):
    from extract.datasets.synthetic import prepare_synthetic

    if raw:
        raise MidprobeError("the synthetic dataset is rendered, it reads no raw files; drop RAW=")
    import inspect

    known = [k for k in inspect.signature(prepare_synthetic).parameters if k not in ("root", "progress")]
    unknown = [k for k in options if k not in known and k != "progress"]
    if unknown:
        raise MidprobeError(f"dataset 'synthetic' has no option {', '.join(unknown)}; its options: {', '.join(known)}")
    if isinstance(options.get("size"), str) and not options["size"].strip().isdigit():
        raise MidprobeError(f"size {options['size']!r}: the synthetic dataset renders square images, expected --size S")
    params = inspect.signature(prepare_synthetic).parameters
    # --option values arrive as text: typed like the renderer's defaults (workers defaults to None)
    options = {k: _coerce(k, v, 0 if k == "workers" else params[k].default) if k in params else v
               for k, v in options.items()}
    for key, least in (("train", 1), ("test", 1), ("pairs", 1), ("triplets", 1), ("size", 16), ("workers", 1)):
        if key in options and options[key] is not None and options[key] < least:
            raise MidprobeError(f"option {key}={options[key]}: expected an integer >= {least}")
    return prepare_synthetic(root=root, **options)


def _coerce(key: str, value: Any, default: Any) -> Any:
    """A command-line option's text as the type of the loader's default."""
    if not isinstance(value, str) or isinstance(default, str):
        return value
    if isinstance(default, bool):
        if value.lower() not in ("true", "false"):
            raise MidprobeError(f"option {key}={value!r}: expected true or false")
        return value.lower() == "true"
    try:
        return type(default)(value)
    except (TypeError, ValueError):
        kind = {int: "an integer", float: "a number"}.get(type(default), f"a {type(default).__name__}")
        raise MidprobeError(f"option {key}={value!r}: expected {kind}") from None


#: a store name: ``stores/datasets/<name>.zarr``, e.g. ``navi`` or ``navi@paper``
STORE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@+=-]*")


def _lazy(name: str, module: str, function: str) -> None:
    def run(*, root: DataRoot, raw: str | None = None, **options: Any):
        import importlib
        import inspect

        loader = getattr(importlib.import_module(f"extract.datasets.{module}"), function)
        params = inspect.signature(loader).parameters
        known = [p for p in params if p not in ("root", "raw", "progress")]
        unknown = [k for k in options if k not in known and k != "progress"]
        if unknown:
            raise MidprobeError(f"dataset {name!r} has no option {', '.join(unknown)}; "
                                f"its options: {', '.join(known) or 'none'}")
        store = options.get("name", name)
        if not isinstance(store, str) or not STORE_NAME.fullmatch(store):
            raise MidprobeError(f"store name {store!r}: expected letters, digits and _ . @ + = - "
                                "(it names stores/datasets/<name>.zarr)")
        return loader(root=root, raw=raw, **{k: _coerce(k, v, params[k].default) if k in params else v
                                             for k, v in options.items()})
    DATASETS[name] = run


_lazy("nyuv2", "nyuv2", "prepare_nyuv2")
_lazy("navi", "navi", "prepare_navi")
_lazy("voc", "voc", "prepare_voc")
_lazy("nights", "nights", "prepare_nights")
_lazy("scannet1500", "scannet", "prepare_scannet1500")
_lazy("folder", "folder", "prepare_folder")


def prepare(dataset: str, /, *, root: DataRoot, raw: str | None = None, **options: Any):
    """Prepare ``dataset`` (positional only, so a loader's store-name option ``name=`` passes through)."""
    if dataset not in DATASETS:
        raise MidprobeError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[dataset](root=root, raw=raw, **options)
