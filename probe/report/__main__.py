"""``python -m probe.report``: build the report from every result record under the data root.

Writes ``<data>/reports/report.md`` (figures beside it) and ``report.html`` (one self-contained
page: figures embedded, sortable leaderboards, each number's configuration on hover). When the
data root holds no records but exactly one data root inside it does (``data/demo`` after
``make demo``), that one is reported, and stderr says so.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from cache import DataRoot, MidprobeError, data_root
from cache.errors import exits_on_error
from probe.records import load_records
from probe.report.page import build_report


def _shown(path: Path) -> str:
    """``path`` relative to the working directory when it lies under it."""
    try:
        return os.path.relpath(path) if path.is_relative_to(Path.cwd()) else str(path)
    except ValueError:
        return str(path)


def nested_roots(root: DataRoot) -> list[DataRoot]:
    """Data roots directly inside ``root`` (``data/demo``, ``data/fidelity``) that hold result records."""
    if not root.root.is_dir():
        return []
    found = []
    for child in sorted(p for p in root.root.iterdir() if (p / "results").is_dir()):
        nested = data_root(child)
        if load_records(nested):
            found.append(nested)
    return found


def root_to_report(root: DataRoot) -> tuple[DataRoot, str | None]:
    """The data root to report and, when it is not ``root``, a line saying which and why.

    ``root`` itself when it holds records; else the one data root inside it that does (the
    demo's after ``make demo``); none or several is an error naming what to run.
    """
    if load_records(root):
        return root, None
    nested = nested_roots(root)
    if len(nested) == 1:
        chosen = _shown(nested[0].root)
        whose = "the demo's data root" if nested[0].root.name == "demo" else "the only data root inside it with records"
        return nested[0], (f"report: no result records under {_shown(root.root)}; reporting {chosen} ({whose}; "
                           f"to choose: make report DATA={chosen}, or midprobe report --data {chosen})")
    if nested:
        options = ", ".join(f"make report DATA={_shown(n.root)}" for n in nested)
        raise MidprobeError(f"no result records under {_shown(root.root)}, but under several data roots inside it; "
                            f"choose one: {options}")
    raise MidprobeError(f"no result records under {_shown(root.root)}; run `make probe TASK=...` (or `make demo`, "
                        "then `make report`) first")


def parser(prog: str = "python -m probe.report") -> argparse.ArgumentParser:
    from midprobe import options

    p = options.command_parser(prog=prog, description=__doc__, parents=[
        options.data_option(), options.quiet_option(help="print nothing but errors")])
    p.add_argument("--imagenet", action="append", default=[], metavar="MODEL=ACC|CSV",
                   help="a model's ImageNet top-1 (%%) as MODEL=ACC, or a CSV (model,imagenet_top1,...); repeatable; "
                        "these win over the shipped values")
    return p


def imagenet_arguments(given: list[str]) -> tuple[str | None, dict[str, float]]:
    """``--imagenet`` values: at most one CSV path, and any number of ``MODEL=ACC`` (ACC in %, 0-100)."""
    paths, values = [], {}
    for item in given:
        model, sep, acc = item.rpartition("=")
        if not sep or Path(item).is_file():
            paths.append(item)
            continue
        try:
            value = float(acc)
        except ValueError:
            value = float("nan")
        if not model or not 0 <= value <= 100:
            raise MidprobeError(f"--imagenet {item}: expected MODEL=ACC with ACC the ImageNet top-1 in % (0-100), "
                                "or a CSV file")
        values[model] = value
    if len(paths) > 1:
        raise MidprobeError(f"--imagenet: one CSV at most (got {', '.join(paths)}); add models to it or give MODEL=ACC")
    return (paths[0] if paths else None), values


@exits_on_error
def main(argv: list[str] | None = None, prog: str = "python -m probe.report") -> int:
    args = parser(prog).parse_args(argv)
    root, notice = root_to_report(data_root(args.data))
    if notice and not args.quiet:
        print(notice, file=sys.stderr)
    csv_path, values = imagenet_arguments(args.imagenet)
    page, leaderboards = build_report(root, imagenet_csv=csv_path, imagenet_values=values, quiet=args.quiet)
    if not args.quiet:
        for label, table in leaderboards.items():
            print(f"\nLeaderboard ({label}; zero-shot tasks as they are)\n{table}")
        print(f"\nreport: {page}\n        {page.with_suffix('.html')} (one file: figures embedded, sortable tables)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
