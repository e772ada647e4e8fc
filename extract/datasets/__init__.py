"""Dataset preparation: raw files (or a renderer) -> a dataset store under the data root."""

from __future__ import annotations

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
    return prepare_synthetic(root=root, **options)


def prepare(name: str, *, root: DataRoot, raw: str | None = None, **options: Any):
    if name not in DATASETS:
        raise MidprobeError(f"unknown dataset {name!r}; known: {', '.join(sorted(DATASETS))}")
    return DATASETS[name](root=root, raw=raw, **options)
