"""Lockstep training on augmented views (:mod:`probe.lockstep`) against the cached views.

- ``lockstep_forwards_vs_paper_code``: from the plan of ``grids/paper.toml`` at int8 under a 2 TB
  disk budget (:mod:`grid.budget`): the backbone forward passes of the paper's code (it recomputes
  the backbone for every probe, every epoch) over the grid's (lockstep where the budget needs it,
  statistics pass included). ``lockstep_forwards_vs_all_views_cached``: the grid's forward passes
  over those of caching every view once (above 1: the statistics pass and the views not kept).
- ``lockstep_epoch_vs_cached_epoch``: on a CPU, one epoch of one model (ViT-B, random weights, 64 px)
  with 4 heads (linear and MLP at two learning rates) on depth: lockstep, its view extracted in
  the run, against extracting the view into the cache and probing from it (the cost of
  extracting the views once, shared by the epoch). Both score the same cached test split.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from bench.common import interleaved_medians, random_dataset, temporary_root

REPO = Path(__file__).resolve().parents[1]


def lockstep_forwards_vs_paper_code(*, grid: str = "grids/paper.toml", budget: str = "2TB") -> dict[str, float]:
    from cache import data_root
    from grid.budget import plan_units
    from grid.plan import Estimator
    from grid.spec import load_grid

    spec = load_grid(REPO / grid).with_precision("int8").with_disk_budget(budget)
    with temporary_root("plan") as root:                       # published split sizes, nothing prepared
        units = plan_units(Estimator(spec, data_root(root.root)))
    forwards = sum(u.forwards for u in units)
    return {"lockstep_forwards_vs_paper_code": sum(u.paper_forwards for u in units) / forwards,
            "lockstep_forwards_vs_all_views_cached": forwards / sum(u.cached_forwards for u in units)}


def lockstep_epoch_vs_cached_epoch(*, images: int = 48, size: int = 64, repeats: int = 2) -> dict[str, float]:
    from cache import open_dataset
    from extract.runner import extract
    from probe.lockstep import run_lockstep
    from probe.run import run_task
    from protocols import get_protocol, with_augment

    protocol = with_augment(get_protocol("midprobe"), "1")
    model, heads, lrs = "vit_b_random", ["linear", "mlp"], [5e-4, 1e-3]
    overrides = {"epochs": 1, "batch_size": 8, "eval_batch_size": 8}
    with temporary_root("lockstep") as root:
        random_dataset(root, name="bench", splits={"train": images, "test": 8}, size=size)
        open_dataset("bench", root=root)
        extract(model=model, dataset="bench", protocol=protocol, tasks=["depth"], splits=["test"], root=root,
                progress=False)
        store = root.feature_store("bench", model)

        def cached() -> None:
            shutil.rmtree(store / "train@aug1-paper-nyu", ignore_errors=True)
            extract(model=model, dataset="bench", protocol=protocol, tasks=["depth"], splits=["train"], root=root,
                    progress=False)
            run_task(task_name="depth", dataset="bench", models=[model], heads=heads, lrs=lrs, protocol=protocol,
                     overrides=overrides, root=root, quiet=True)

        def lockstep() -> None:
            run_lockstep(dataset="bench", model=model, tasks=["depth"], protocol=protocol, heads=heads, lrs=lrs,
                         overrides=overrides, root=root)

        seconds = interleaved_medians({"cached": cached, "lockstep": lockstep}, repeats=repeats)
    return {"lockstep_epoch_vs_cached_epoch": seconds["lockstep"] / seconds["cached"]}
