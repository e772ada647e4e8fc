"""``python -m grid GRID.toml``: run a grid file on dask.distributed (``--dry-run``: size it).

Exit status: 0 when every task is done or was already complete, 1 when any failed (the
summary names each with its reason), 2 for bad input (a malformed grid file, an unreachable
scheduler), 130 when interrupted (rerun the same command to resume).
"""

from __future__ import annotations

import argparse
import sys

from cache import MidprobeError, data_root
from cache.errors import exits_on_error, interrupted_exit
from grid.spec import DEVICES


def parser(prog: str = "python -m grid") -> argparse.ArgumentParser:
    from midprobe import options

    p = options.command_parser(prog=prog, description=__doc__, parents=[
        options.precision_option(default=None, what="the feature stores' value type, extracted, probed and sized "
                                 "(int8: <model>@int8.zarr, 1 byte and a scale per image and channel); default: "
                                 "the grid file's precision, fp16 unless it says"),
        options.device_option(default=None, choices=DEVICES, help="run extraction and probes here, whatever the "
                              "grid says"),
        options.data_option()])
    p.add_argument("grid", help="the grid file, e.g. grids/demo.toml")
    p.add_argument("--dry-run", action="store_true", help="print the plan: tasks by kind, feature-cache bytes per "
                   "dataset and model, estimated compute; run nothing")
    p.add_argument("--splits", action="store_true", help="with --dry-run: every model's feature splits too")
    p.add_argument("--scheduler", help="address of a running dask scheduler (tcp://host:8786) instead of a "
                   "cluster on this machine")
    p.add_argument("--cluster", default="local", help="local (default) or slurm (needs midprobe[slurm])")
    p.add_argument("--workers", type=int, help="local cluster: worker processes (default: one per GPU, or "
                   "sized to the cores)")
    p.add_argument("--jobs", type=int, default=1, help="slurm: how many one-GPU worker jobs to submit")
    p.add_argument("--disk-budget", metavar="SIZE", help="features on disk at once, e.g. 2TB (decimal units): "
                   "augmented views stream in lockstep where a model's splits do not fit (default: the grid "
                   "file's disk_budget, else no limit)")
    return p


@exits_on_error
def main(argv: list[str] | None = None, prog: str = "python -m grid") -> int:
    args = parser(prog).parse_args(argv)
    from grid.spec import load_grid

    spec = load_grid(args.grid)
    if args.device:
        spec = spec.with_device(args.device)
    if args.precision is not None:
        spec = spec.with_precision(args.precision)
    if args.disk_budget is not None:
        spec = spec.with_disk_budget(args.disk_budget)
    root = data_root(args.data)
    if args.dry_run:
        from grid.graph import plan_jobs
        from grid.plan import describe

        print(describe(spec, root, plan_jobs(spec, root), splits=args.splits))
        return 0
    if spec.disk_budget is not None or spec.augmented is not None:
        from grid.budget import plan_units
        from grid.plan import Estimator

        plan_units(Estimator(spec, root))   # a budget no plan fits is an error before any cluster starts
    from grid.cluster import open_client, visible_gpus
    from grid.run import run_grid

    if "cuda" in (spec.device, spec.probe_device) and not args.scheduler and args.cluster == "local" \
            and not visible_gpus():
        # before a cluster starts: its workers' teardown would print tracebacks ahead of this line
        raise MidprobeError(f"grid {spec.name} runs on cuda but this machine has no visible CUDA GPU; set "
                            "device = \"cpu\" in the grid file or run it with DEVICE=cpu")

    try:
        with open_client(scheduler=args.scheduler, cluster=args.cluster, workers=args.workers,
                         jobs=args.jobs, gpus="cuda" in (spec.device, spec.probe_device)) as client:
            summary = run_grid(spec, root=root, client=client, out=sys.stdout)
    except KeyboardInterrupt:
        return interrupted_exit("[grid] interrupted: rerun the same command to resume (complete work is skipped)")
    return 0 if summary.ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
