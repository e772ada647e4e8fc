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
    if isinstance(options.get("size"), str) and not options["size"].strip().isdigit():
        raise MidprobeError(f"size {options['size']!r}: the synthetic dataset renders square images, expected --size S")
    options = check_options("synthetic", {k: v for k, v in options.items() if k != "progress"}) | (
        {"progress": options["progress"]} if "progress" in options else {})
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


#: loader name -> (module under extract.datasets, its prepare function)
LOADERS = {"synthetic": ("synthetic", "prepare_synthetic")}

#: lower bounds of the synthetic renderer's counts and size
SYNTHETIC_LEAST = {"train": 1, "test": 1, "pairs": 1, "triplets": 1, "size": 16, "workers": 1}


def option_defaults(dataset: str) -> dict[str, Any]:
    """The options ``dataset``'s loader takes, each with its default (``make data OPTIONS=`` and a
    grid file's ``options = {…}``)."""
    import importlib
    import inspect

    if dataset not in LOADERS:
        raise MidprobeError(f"unknown dataset {dataset!r}; known: {', '.join(sorted(DATASETS))}")
    module, function = LOADERS[dataset]
    loader = getattr(importlib.import_module(f"extract.datasets.{module}"), function)
    defaults = {k: p.default for k, p in inspect.signature(loader).parameters.items()
                if k not in ("root", "raw", "progress")}
    if dataset == "synthetic":
        defaults["workers"] = 0                   # None means "the default count" of an integer
    return defaults


def typed_option(dataset: str, key: str, value: Any, default: Any) -> Any:
    """One option's value as its loader takes it: text is converted to the default's type, a typed
    value (from a grid file) must already be of it; the synthetic counts have lower bounds."""
    if value is None:
        return value
    if isinstance(value, str):
        value = _coerce(key, value, default)
    elif isinstance(default, bool) and not isinstance(value, bool):
        raise MidprobeError(f"option {key}={value!r}: expected true or false")
    elif isinstance(default, (int, float)) and not isinstance(default, bool) and (
            isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(default, int) and not isinstance(value, int))):
        raise MidprobeError(f"option {key}={value!r}: expected {'an integer' if isinstance(default, int) else 'a number'}")
    if dataset == "synthetic" and key in SYNTHETIC_LEAST and value is not None and value < SYNTHETIC_LEAST[key]:
        raise MidprobeError(f"option {key}={value}: expected an integer >= {SYNTHETIC_LEAST[key]}")
    return value


def check_options(dataset: str, options: dict[str, Any]) -> dict[str, Any]:
    """``options`` for ``dataset``'s loader: an unknown name (a misspelt ``trian``) or a value of the
    wrong type is a one-line error, before anything is read or written."""
    defaults = option_defaults(dataset)
    unknown = [k for k in options if k not in defaults]
    if unknown:
        raise MidprobeError(f"dataset {dataset!r} has no option {', '.join(unknown)}; "
                            f"its options: {', '.join(defaults) or 'none'}")
    return {k: typed_option(dataset, k, v, defaults[k]) for k, v in options.items()}


def _lazy(name: str, module: str, function: str) -> None:
    LOADERS[name] = (module, function)

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
