"""``midprobe COMMAND [OPTIONS]``: every stage of midprobe behind one command.

Each command hands its options, untouched, to the same ``main`` that its ``python -m`` module
and its make target run, so the three spellings take the same options and do the same thing:
``midprobe probe --task depth`` is ``python -m probe --task depth`` is ``make probe TASK=depth``.
A command whose module is not part of this installation is not listed.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.util
import inspect
import sys
from dataclasses import dataclass
from typing import Callable

from cache.errors import MidprobeError, exits_on_error


@dataclass(frozen=True)
class Command:
    """One subcommand: the module whose ``main(argv)`` runs it, and what to show in help."""

    name: str
    module: str                  # holds main(argv); run as ``python -m <runs_as>``
    runs_as: str
    make: str
    summary: str
    examples: tuple[str, ...] = ()

    @property
    def available(self) -> bool:
        """Whether its module is part of this installation (found without importing it)."""
        try:
            return importlib.util.find_spec(self.module) is not None
        except ImportError:          # its package, or a dependency the package imports, is missing
            return False

    def entry(self) -> Callable[[list[str]], int]:
        """Its ``main``; a module that fails to import is a one-line error naming it."""
        try:
            return importlib.import_module(self.module).main
        except ImportError as exc:
            raise MidprobeError(f"command {self.name!r} cannot load {self.module}: {exc}") from None

    def run(self, argv: list[str]) -> int:
        """Its ``main`` on ``argv``, its parser named ``midprobe <name>`` (every stage's ``main`` takes
        ``prog``; one that does not is run as it is)."""
        main = self.entry()
        takes_prog = "prog" in inspect.signature(main).parameters
        return main(argv, prog=f"midprobe {self.name}") if takes_prog else main(argv)


COMMANDS = {c.name: c for c in (
    Command("data", "extract.datasets.__main__", "extract.datasets", "make data",
            "prepare a dataset store from raw files, or render the synthetic set",
            ("midprobe data --dataset synthetic",
             "midprobe data --dataset nyuv2 --raw data/raw/nyuv2",
             "midprobe data --dataset folder --raw ~/mine --check",
             "midprobe data --dataset nyuv2 --protocol paper")),
    Command("extract", "extract.cli", "extract", "make extract",
            "run a frozen backbone once over a dataset into a feature store",
            ("midprobe extract --list",
             "midprobe extract --model vit_b_mae --dataset synthetic",
             "midprobe extract --model rn50_swav --dataset nyuv2 --weights ~/swav_800ep_pretrain.pth.tar",
             "midprobe extract --model vit_b_mae --dataset nyuv2 --shard 0/4 --device cuda")),
    Command("probe", "probe.cli", "probe", "make probe",
            "train probes or run zero-shot tasks on cached features",
            ("midprobe probe --task normals",
             "midprobe probe --task depth --model vit_b_mae --head linear,mlp --lr 5e-4,1e-3",
             "midprobe probe --task correspondence",
             "midprobe probe --task depth --log tensorboard")),
    Command("report", "probe.report.__main__", "probe.report", "make report",
            "leaderboards and figures: report.md and a self-contained report.html",
            ("midprobe report", "midprobe report --data data/demo")),
    Command("bench", "bench.__main__", "bench", "make bench",
            "the benchmarks: name: value lines",
            ("midprobe bench", "midprobe bench --only sweep --device cuda")),
    Command("fidelity", "bench.fidelity", "bench.fidelity", "make fidelity",
            "how much each of the paper's choices moves the numbers",
            ("midprobe fidelity --data data/fidelity --page docs/fidelity.md",
             "midprobe fidelity --seeds 0,1,2,3,4 --only dpt-head,dpt-cnn-inplace-relu")),
    Command("verify", "cache.verify", "cache.verify", "make verify",
            "check every store under the data root",
            ("midprobe verify", "midprobe verify --repair")),
    Command("grid", "grid.__main__", "grid", "make grid",
            "run a grid of extractions and probes on dask",
            ("midprobe grid grids/demo.toml --dry-run", "midprobe grid grids/demo.toml")),
)}


def available_commands() -> dict[str, Command]:
    return {name: c for name, c in COMMANDS.items() if c.available}


def usage() -> str:
    commands = available_commands()
    width = max(len(n) for n in commands)
    lines = ["usage: midprobe COMMAND [OPTIONS]   (midprobe COMMAND --help for its options)", "",
             "Probe what frozen self-supervised vision backbones know about mid-level vision.", "",
             "commands (each runs the same code as its make target, in brackets, and its python -m module):"]
    lines += [f"  {n.ljust(width)}  {c.summary} [{c.make}]" for n, c in commands.items()]
    lines += ["", "examples:",
              "  make demo                # the demo end to end; its report: data/demo/reports/report.html",
              *[f"  {c.examples[0]}" for c in commands.values() if c.examples],
              *[f"  {e}" for name in ("probe",) if name in commands for e in commands[name].examples[1:]],
              "", "Every command takes --data (default $MIDPROBE_DATA, else ./data); the long ones take --quiet.",
              "Progress is a bar on a terminal and a plain line every few seconds in a log."]
    return "\n".join(lines)


def command_help(command: Command, argv: list[str]) -> int:
    """The module's own help, its parser named for this command, then the command's examples."""
    status = 0
    try:
        status = command.run(argv)
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 0
    print(f"\nThe same code as {command.make} (options as make variables) and python -m {command.runs_as}.")
    if command.examples:
        print("\nexamples:\n" + "\n".join(f"  {e}" for e in command.examples))
    return status


@exits_on_error
def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if len(argv) > 1 and argv[0] == "help":
        argv = [argv[1], "--help"]
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(usage(), file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    commands = available_commands()
    if name not in commands:
        close = difflib.get_close_matches(name, list(commands), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        print(f"error: unknown command {name!r}{hint}; commands: {', '.join(commands)}", file=sys.stderr)
        return 2
    command = commands[name]
    if any(a in ("-h", "--help") for a in rest):
        return command_help(command, rest)
    status = command.run(rest)
    return status if isinstance(status, int) else 0
