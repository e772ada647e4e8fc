"""``python -m probe.report``: build the report from every result record under the data root."""

from __future__ import annotations

import argparse

from cache import data_root
from cache.errors import exits_on_error
from probe.report.page import build_report


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m probe.report", description=__doc__)
    p.add_argument("--data", help="data root (default $MIDPROBE_DATA or ./data)")
    p.add_argument("--imagenet", help="CSV of ImageNet accuracies (model,imagenet_top1,...) to use instead")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args(argv)
    page, leaderboards = build_report(data_root(args.data), imagenet_csv=args.imagenet)
    if not args.quiet:
        for label, table in leaderboards.items():
            print(f"\nLeaderboard ({label}; zero-shot tasks as they are)\n{table}")
        print(f"\nreport: {page}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
