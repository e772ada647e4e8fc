"""``python -m extract.datasets --dataset NAME``: prepare a dataset store."""

from __future__ import annotations


from cache import MidprobeError, data_root
from cache.errors import exits_on_error
from extract.datasets import prepare


def protocol_options(dataset: str, protocol_name: str, given: dict) -> dict:
    """The loader options (and store name) of ``protocol_name`` for ``dataset``; an explicit option
    that contradicts the protocol is an error (the store would not be the protocol's)."""
    from protocols import get_protocol

    protocol = get_protocol(protocol_name)
    wanted = protocol.data_options(dataset)
    for key, value in wanted.items():
        if key in given and str(given[key]).lower() != str(value).lower():
            raise MidprobeError(f"option {key}={given[key]} contradicts protocol {protocol.name!r}, which prepares "
                                f"{dataset} with {key}={value}; drop the option or the protocol")
    return {**wanted, "name": protocol.dataset_name(dataset)} if wanted else {}


@exits_on_error
def main(argv: list[str] | None = None, prog: str = "python -m extract.datasets") -> int:
    from midprobe import options

    p = options.command_parser(prog=prog, description=__doc__, raw=False, parents=[
        options.data_option(), options.quiet_option(),
        options.protocol_option(default="", what="prepare the dataset as this protocol reads it (paper: the "
                                "paper's loader options, into the store <dataset>@paper when they differ from the "
                                "defaults)")])
    p.add_argument("--dataset", required=True)
    p.add_argument("--raw", help="folder of the original files (default data/raw/<dataset>)")
    p.add_argument("--name", help="the store's name (default: the dataset's; folder: the folder's name; "
                   "with --protocol: <dataset>@<protocol> when its options differ)")
    p.add_argument("--check", action="store_true",
                   help="folder: read and check every file, write nothing")
    p.add_argument("--train", type=int, help="synthetic: train images (default 1024)")
    p.add_argument("--test", type=int, help="synthetic: test images (default 256)")
    p.add_argument("--pairs", type=int, help="synthetic: correspondence pairs (default 64)")
    p.add_argument("--triplets", type=int, help="synthetic: 2AFC triplets (default 64)")
    p.add_argument("--size", help="image side in pixels (synthetic, folder; default 224) or HxW (folder)")
    p.add_argument("--seed", type=int, help="synthetic: scene seed; folder: split seed (default 0)")
    p.add_argument("--workers", type=int, help="render processes (default 2)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a loader option, e.g. test_depth=rawDepths (nyuv2), split_source=sn40 (nyuv2), "
                        "geonet=true (nyuv2), void_as_foreground=true (voc), depth_scale=0.001 (folder); "
                        "see docs/datasets.md")
    args = p.parse_args(argv)
    options = {k: v for k, v in vars(args).items()
               if k in {"train", "test", "pairs", "triplets", "size", "seed", "workers", "name"} and v is not None}
    if args.check:
        options["check"] = True
    if "size" in options and options["size"].strip().isdigit():
        options["size"] = int(options["size"])
    for key in ("train", "test", "pairs", "triplets", "size"):
        if isinstance(options.get(key), int) and options[key] < (16 if key == "size" else 1):
            raise MidprobeError(f"--{key} must be >= {16 if key == 'size' else 1}, got {options[key]}")
    for item in args.option:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise MidprobeError(f"--option {item!r}: expected KEY=VALUE")
        options[key.replace("-", "_")] = value
    if args.protocol:
        chosen = protocol_options(args.dataset, args.protocol, options)
        options.update({k: v for k, v in chosen.items() if k != "name" or "name" not in options})
    path = prepare(args.dataset, root=data_root(args.data), raw=args.raw, progress=not args.quiet, **options)
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
