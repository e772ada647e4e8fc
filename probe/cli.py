"""``python -m probe``: train probes (or run zero-shot tasks) on cached features, write records."""

from __future__ import annotations

import argparse

from cache import MidprobeError, data_root
from cache.errors import exits_on_error


def _floats(text: str) -> list[float]:
    try:
        return [float(v) for v in text.split(",") if v]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of numbers") from None


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m probe", description=__doc__)
    p.add_argument("--task", required=True, help="depth, normals, segmentation, correspondence, similarity")
    p.add_argument("--dataset", default="synthetic")
    p.add_argument("--model", help="comma-separated models (default: every model cached for the dataset)")
    p.add_argument("--head", default="linear", help="comma-separated heads: linear, mlp, dpt, ridge")
    p.add_argument("--layers", help="layer sets: 'block2,block11;block11' (default: all cached layers)")
    p.add_argument("--lr", type=_floats, default=[5e-4], help="comma-separated learning rates")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--warmup-epochs", type=float, default=1.5)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--weight-decay", type=float, default=0.01)
    p.add_argument("--hidden", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--uncertainty-aware", action="store_true", help="normals: the uncertainty-aware angular loss")
    p.add_argument("--depth-bins", choices=("quarter", "grid"), default="quarter",
                   help="depth: resolve the 256 bins at 1/4 target resolution (paper) or at the feature grid")
    p.add_argument("--loss-stride", type=int, default=1,
                   help="compute the training loss at every n-th target pixel (1 = all, the paper's)")
    p.add_argument("--bidirectional", action="store_true", help="correspondence: keep mutual nearest neighbours only")
    p.add_argument("--data", help="data root (default $MIDPROBE_DATA or ./data)")
    p.add_argument("--quiet", action="store_true")
    return p


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
def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from probe.run import print_table, run_task
    from probe.train import TrainSettings

    if args.epochs < 1 or args.batch_size < 1:
        raise MidprobeError(f"epochs and batch size must be >= 1, got {args.epochs} and {args.batch_size}")
    _check_numbers(args)
    options: dict = {"uncertainty_aware": True} if args.uncertainty_aware else {}
    if args.task == "depth":
        options["depth_bins"] = args.depth_bins
    if args.loss_stride != 1:
        if args.loss_stride < 1:
            raise MidprobeError(f"--loss-stride must be >= 1, got {args.loss_stride}")
        options["loss_stride"] = args.loss_stride
    settings = TrainSettings(epochs=args.epochs, warmup_epochs=args.warmup_epochs, batch_size=args.batch_size,
                             weight_decay=args.weight_decay, seed=args.seed, device=args.device,
                             hidden=args.hidden, options=options)
    layer_sets = [s.split(",") for s in args.layers.split(";") if s] if args.layers else None
    zero_shot = {"bidirectional": True} if args.bidirectional else {}
    rows = run_task(task_name=args.task, dataset=args.dataset,
                    models=args.model.split(",") if args.model else None,
                    heads=[h for h in args.head.split(",") if h], lrs=args.lr, layer_sets=layer_sets,
                    settings=settings, root=data_root(args.data), quiet=args.quiet, options=zero_shot)
    print(print_table(rows))
    return 0
