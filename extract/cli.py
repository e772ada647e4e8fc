"""``python -m extract``: run a frozen backbone once over a dataset into a feature store."""

from __future__ import annotations

import argparse

from cache import MidprobeError, data_root
from cache.errors import exits_on_error
from midprobe import values


def _shard(text: str) -> tuple[int, int]:
    try:
        i, n = (int(p) for p in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"shard {text!r} is not of the form i/N (e.g. 0/4)") from None
    if not (n >= 1 and 0 <= i < n):
        raise argparse.ArgumentTypeError(f"shard {text!r} needs 0 <= i < N")
    return i, n


def parser(prog: str = "python -m extract") -> argparse.ArgumentParser:
    from midprobe import options

    p = options.command_parser(prog=prog, description=__doc__, raw=False, parents=[
        options.task_option(required=False, action="append",
                            help="extract only what these tasks read (default: the dataset's tasks)"),
        options.protocol_option(what="which extraction choices (input normalisation, global vector, augmented "
                                     "views) and model variants the tasks read"),
        options.device_option(),
        options.precision_option(what="float16 features, or int8 with a float16 scale per image and channel "
                                      "(about half the bytes; its own store, <model>@int8.zarr)"),
        options.data_option(), options.quiet_option()])
    p.add_argument("--list", action="store_true", help="list the registered models and exit")
    p.add_argument("--model", help="registry name, an installed plugin's name, timm:<timm model name>, "
                   "hf:<model id or local dir> or py:<module or path/to/file.py>:<factory>")
    p.add_argument("--dataset", help="dataset store name under the data root")
    p.add_argument("--split", action="append", help="dataset split(s) to extract (default: every split the "
                   "dataset's tasks read)")
    p.add_argument("--layers", help="comma-separated layer names or indices (default: the layers the tasks read)")
    p.add_argument("--corrupt", help="<name>:<severity>[:<seed>], comma-separated (e.g. fog:3,occlusion:2): extract "
                   "instead the corrupted copies of the test split (and of correspondence pairs), each as its own "
                   "feature split test@corrupt-<name>-<severity>; severity 0-5, 0 = clean")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--augment", metavar="K[:POLICY]",
                   help="dense probes train on K seeded augmented views of each training image (policy "
                        "paper-nyu, the default, or paper-navi; extract and probe with the same AUGMENT=)")
    p.add_argument("--shard", type=_shard, default=(0, 1), help="i/N: write only this shard's chunks")
    p.add_argument("--weights", help="local weights file (.safetensors or .pth) instead of a download")
    p.add_argument("--chunk-images", type=int,
                   help="images per Zarr chunk (default: about 8 MiB per chunk of the largest layer)")
    p.add_argument("--dry-run", action="store_true", help="print the bytes each feature split would take "
                   "(split sizes from the prepared store, or the dataset's published counts) and exit")
    return p


def list_models() -> str:
    from extract.backbones import BACKBONES, weights_available
    from extract.backbones.plugins import list_rows

    rows = [("name", "arch", "method", "licence", "weights", "options", "source")]
    for spec in BACKBONES.values():
        options = " ".join(f"+{o}" for o in spec.options) or "-"
        rows.append((spec.name, spec.arch, spec.method, spec.license or "-", weights_available(spec), options,
                     spec.source))
    for name, value, dist in list_rows():
        if name not in BACKBONES:     # the registry's names come first
            rows.append((name, value, "plugin", "-", "plugin", "-", f"entry point of {dist}"))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)) + "  " + r[-1] for r in rows)


@exits_on_error
def main(argv: list[str] | None = None, prog: str = "python -m extract") -> int:
    args = parser(prog).parse_args(argv)
    if args.list:
        print(list_models())
        return 0
    if not args.model or not args.dataset:
        raise MidprobeError("both --model and --dataset are required (or --list)")
    if args.batch_size < 1 or (args.chunk_images is not None and args.chunk_images < 1):
        raise MidprobeError(f"--batch-size and --chunk-images must be >= 1, got {args.batch_size} and "
                            f"{args.chunk_images}")
    if args.layers is not None and not values.name_list(args.layers):
        raise MidprobeError(f"--layers {args.layers!r} names no layer; expected layer names or indices joined by "
                            "commas (e.g. block2,block11), or all")
    if args.split:          # SPLIT=train,test: several splits in one make variable
        args.split = list(dict.fromkeys(name for item in args.split for name in values.name_list(item)))
    if args.dry_run:
        from extract.sizing import dataset_layout, feature_model_name, format_sizes, size_extraction
        from protocols import get_protocol, with_augment

        protocol = with_augment(get_protocol(args.protocol), args.augment)
        layout = dataset_layout(args.dataset, protocol=protocol, root=data_root(args.data))
        sizes = size_extraction(model=args.model, layout=layout, protocol=protocol, tasks=args.task,
                                only_splits=args.split, layers=values.name_list(args.layers) or None,
                                precision=args.precision)
        print(format_sizes(feature_model_name(args.model, protocol), layout, sizes))
        return 0
    from extract.runner import extract

    from protocols import get_protocol, with_augment

    protocol = with_augment(get_protocol(args.protocol), args.augment)
    extract(model=args.model, dataset=args.dataset, splits=args.split, tasks=args.task, protocol=protocol,
            precision=args.precision,
            layers=values.name_list(args.layers) or None, batch_size=args.batch_size,
            device=args.device, shard=args.shard, weights=args.weights, chunk_images=args.chunk_images,
            root=data_root(args.data), progress=not args.quiet, corruptions=args.corrupt)
    return 0
