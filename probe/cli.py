"""``python -m probe``: train probes (or run zero-shot tasks) on cached features, write records.

Every choice defaults to the protocol's (``--protocol``, default ``midprobe``); an option given
on the command line overrides that one choice and is recorded as an override.
"""

from __future__ import annotations

import argparse

from cache import MidprobeError, data_root
from cache.errors import exits_on_error
from midprobe import values
from probe.tracking import LOGGERS


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def _train_images(text: str) -> list[int | float | None]:
    """``16,64,0.1,all`` -> counts (integers), fractions (with a decimal point) and ``None`` for all."""
    out: list[int | float | None] = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        try:
            out.append(None if part == "all" else float(part) if "." in part else int(part))
        except ValueError:
            raise argparse.ArgumentTypeError(f"train images {part!r}: expected a count (16), a fraction (0.1) or "
                                             "all") from None
    return out


def parser(prog: str = "python -m probe") -> argparse.ArgumentParser:
    from midprobe import options

    p = options.command_parser(prog=prog, description=__doc__, parents=[
        options.task_option(several=True, help="one task, or with --lockstep several comma-separated (depth,normals)"), options.protocol_option(what="every choice the probes are trained and scored with"),
        options.device_option(),
        options.precision_option(what="which feature store to read (int8: PRECISION=int8 at extraction)"),
        options.data_option(), options.quiet_option(help="no progress and no log lines, only the result table")])
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--model", help="comma-separated models (default: every model cached for the dataset)")
    p.add_argument("--head", help="comma-separated heads: linear, mlp, dpt, ridge (default: the protocol's)")
    p.add_argument("--layers", help="layer sets: 'block2,block11;block11' (default: all cached layers)")
    p.add_argument("--lr", type=_floats, help="comma-separated learning rates (default: the protocol's)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--warmup-epochs", type=float)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--weight-decay", type=float)
    p.add_argument("--hidden", type=int, help="hidden width of the MLP and DPT heads")
    p.add_argument("--seed", type=values.seed, default=0)
    p.add_argument("--seeds", type=values.seeds, help="comma-separated seeds (e.g. 0,1,2): every head trained once per "
                   "seed; with --train-images each seed also draws its own subsets")
    p.add_argument("--train-images", type=_train_images,
                   help="label efficiency: also train on nested seeded subsets of the train split, e.g. "
                        "16,64,256,all or 0.1,0.5,all (counts, fractions, all)")
    p.add_argument("--test-corrupt", help="robustness: also score every head on these corrupted test splits "
                   "(<name>:<severity>[:<seed>], comma-separated; extracted with make extract CORRUPT=...)")
    p.add_argument("--cache-budget", metavar="BYTES",
                   help="memory the training split may take to be held on the device for the whole sweep, in "
                        "bytes with a k/M/G suffix (powers of 1024); 0 streams it from the store every epoch "
                        "(default: half the free GPU memory on CUDA, half the available RAM on a CPU); results "
                        "do not depend on it")
    p.add_argument("--augment", metavar="K[:POLICY]",
                   help="dense probes train on K seeded augmented views of each training image (policy "
                        "paper-nyu, the default, or paper-navi; extract and probe with the same AUGMENT=)")
    p.add_argument("--lockstep", action="store_true",
                   help="with --augment (or a protocol with augmented views): extract each view when its epoch "
                        "starts and drop it after, training every head of every task in --task (e.g. "
                        "depth,normals) on it; needs --model and the cached test split; same records as the "
                        "cached views")
    p.add_argument("--uncertainty-aware", action="store_true", help="normals: the uncertainty-aware angular loss")
    p.add_argument("--depth-bins", choices=("quarter", "grid"),
                   help="depth: resolve the 256 bins at 1/4 target resolution or at the feature grid")
    p.add_argument("--loss-stride", type=int,
                   help="compute the training loss at every n-th target pixel (1 = all)")
    p.add_argument("--bidirectional", action="store_true", help="correspondence: match both ways "
                   "(the protocol says how: mutual nearest neighbours, or the paper's halves)")
    p.add_argument("--log", choices=sorted(LOGGERS), help="also log each probe's loss curve and final metrics: "
                   "tensorboard -> <data>/logs/tensorboard/<protocol>/<task>/<dataset>/<model>/<probe> "
                   "(needs midprobe[tensorboard])")
    return p


def overrides_of(args: argparse.Namespace) -> dict:
    """The protocol choices the command line overrides (only those given)."""
    named = {"epochs": args.epochs, "warmup_epochs": args.warmup_epochs, "batch_size": args.batch_size,
             "weight_decay": args.weight_decay, "hidden": args.hidden, "depth_bins": args.depth_bins,
             "loss_stride": args.loss_stride}
    out = {k: v for k, v in named.items() if v is not None}
    if args.uncertainty_aware:
        out["normals_loss"] = "uncertainty-aware"
    from protocols.overrides import OverrideError, check_overrides

    try:
        checked = {}
        for task in args.task.split(","):      # with --lockstep, every task takes the same overrides
            checked = check_overrides(task, out)
        return checked
    except OverrideError as exc:
        raise MidprobeError(f"--{exc.name.replace('_', '-')}: {exc.problem}") from None


def _check_numbers(args: argparse.Namespace) -> None:
    """Learning rates finite and > 0; weight decay and warm-up finite and >= 0 (one-line errors).
    A value not given (``None``) is left to the defaults."""
    import math

    if args.lr is not None and (not args.lr or any(not math.isfinite(lr) or lr <= 0 for lr in args.lr)):
        raise MidprobeError(f"--lr {','.join(f'{v:g}' for v in args.lr) or '(empty)'}: expected finite learning "
                            "rates > 0, e.g. 5e-4 or 5e-4,1e-3")
    for flag, value in (("--weight-decay", args.weight_decay), ("--warmup-epochs", args.warmup_epochs)):
        if value is not None and (not math.isfinite(value) or value < 0):
            raise MidprobeError(f"{flag} {value:g}: expected a finite number >= 0")


@exits_on_error
def main(argv: list[str] | None = None, prog: str = "python -m probe") -> int:
    args = parser(prog).parse_args(argv)
    from probe.run import print_table, run_task
    from probe.tasks import DenseTask, get_task

    _check_numbers(args)
    from cache.loader import parse_bytes

    budget = None if args.cache_budget is None else parse_bytes(args.cache_budget)
    if args.lockstep:
        return _lockstep(args)
    if "," in args.task:
        raise MidprobeError(f"--task {args.task}: several tasks train together only with --lockstep (LOCKSTEP=1); "
                            "otherwise run make probe once per task")
    task = get_task(args.task)
    overrides = overrides_of(args) if isinstance(task, DenseTask) else {}
    if not isinstance(task, DenseTask) and (args.head or args.lr is not None):
        raise MidprobeError(f"task {args.task!r} is zero-shot: it trains no head, so "
                            f"{'--head' if args.head else '--lr'} does not apply; drop HEAD= and LR=")
    layer_sets = values.layer_sets(args.layers)
    zero_shot = {"bidirectional": True} if args.bidirectional else {}
    from protocols import get_protocol, with_augment

    protocol = with_augment(get_protocol(args.protocol), args.augment)
    rows = run_task(task_name=args.task, dataset=args.dataset, protocol=protocol,
                    models=values.name_list(args.model) or None, heads=values.name_list(args.head) or None,
                    lrs=values.unique(args.lr) if args.lr is not None else None,
                    layer_sets=layer_sets, overrides=overrides, seed=args.seed, device=args.device,
                    precision=args.precision, seeds=args.seeds, train_images=args.train_images,
                    test_corruptions=args.test_corrupt, cache_budget=budget,
                    root=data_root(args.data), quiet=args.quiet, options=zero_shot, log=args.log)
    print(print_table(rows))
    return 0


def _lockstep(args: argparse.Namespace) -> int:
    """``--lockstep``: :func:`probe.lockstep.run_lockstep` for each model of ``--model``."""
    from probe.lockstep import run_lockstep
    from probe.run import print_table
    from protocols import get_protocol, with_augment

    given = [flag for flag, value in (("--train-images", args.train_images), ("--test-corrupt", args.test_corrupt),
                                      ("--log", args.log), ("--cache-budget", args.cache_budget)) if value]
    if given:
        raise MidprobeError(f"--lockstep trains every head on each view as it is extracted; {', '.join(given)} "
                            "applies to the cached path only (drop --lockstep)")
    if not args.model:
        raise MidprobeError("--lockstep extracts the views itself, so it needs --model (e.g. MODEL=vit_b_mae)")
    protocol = with_augment(get_protocol(args.protocol), args.augment)
    rows = []
    for model in values.name_list(args.model):
        rows += run_lockstep(dataset=args.dataset, model=model, tasks=values.name_list(args.task),
                             protocol=protocol, heads=values.name_list(args.head) or None,
                             lrs=values.unique(args.lr) if args.lr is not None else None,
                             layer_sets=values.layer_sets(args.layers), overrides=overrides_of(args),
                             seeds=args.seeds or [args.seed], device=args.device, precision=args.precision,
                             root=data_root(args.data), quiet=args.quiet)
    print(print_table(rows))
    return 0
