"""``python -m midprobe.docs_cli``: write ``docs/cli.md``, every command's options and the make
variable that sets each, read from the argparse parsers and the Makefile at generation time.

Nothing here is typed by hand, so the page cannot drift from the code: the options (name, default,
choices, help) come from each command's own parser, captured while its ``main`` builds it, and
the make variable of each option from what ``make -n`` runs when only that variable is set.
``tests/test_docs.py`` checks that the page on disk equals what this writes (``--check`` does the
same from the command line: exit 1 and the file's name when it is stale).
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import shlex
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable
from unittest import mock

from midprobe.cli import COMMANDS, Command

REPO = Path(__file__).resolve().parent.parent
PAGE = Path("docs/cli.md")
SENTINEL = "__MIDPROBE_DOCS_{}__"
#: What the page says of an option the Makefile passes that the command's parser lacks (a bug that
#: ``midprobe.docs_check`` reports).
NOT_AN_OPTION = "**the Makefile passes it, but it is not an option of**"
_VARIABLE = re.compile(r"^([A-Z][A-Z0-9_]*)[ \t]*\?=[ \t]*(.*?)[ \t]*$", re.M)
_EXPORT = re.compile(r"^export\s+([A-Z][A-Z0-9_]*)\s*:?=\s*\$\(([A-Z][A-Z0-9_]*)\)", re.M)
_RULE = re.compile(r"^([a-z][a-z0-9-]*)\s*:(?!=)", re.M)
_CONDITION = re.compile(r"\$\(filter\s+([^,()]+),\s*\$\(([A-Z][A-Z0-9_]*)\)\)")


class _Captured(BaseException):
    """Raised in place of parsing, carrying the parser a ``main`` built (a BaseException so that
    no ``except Exception`` in a ``main`` swallows it)."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        super().__init__(parser.prog)
        self.parser = parser


def parser_of(main: Callable[[list[str]], int], prog: str | None = None) -> argparse.ArgumentParser:
    """The argparse parser ``main(argv)`` builds, captured when it parses (nothing after that runs).
    With ``prog``, only a parser whose prog ends with it is captured; any other parse (a parent
    parser's early ``parse_known_args``, say) runs as usual on an empty command line."""
    parse_args, parse_known_args = argparse.ArgumentParser.parse_args, argparse.ArgumentParser.parse_known_args

    def capture(original: Callable[..., object]) -> Callable[..., object]:
        def parse(self: argparse.ArgumentParser, *args: object, **kwargs: object) -> object:
            if prog is None or self.prog.endswith(prog):
                raise _Captured(self)
            kwargs.pop("args", None)
            return original(self, [], *args[1:], **kwargs)
        return parse

    with mock.patch.object(argparse.ArgumentParser, "parse_args", capture(parse_args)), \
            mock.patch.object(argparse.ArgumentParser, "parse_known_args", capture(parse_known_args)), \
            contextlib.redirect_stdout(io.StringIO()):
        try:
            main([])
        except _Captured as caught:
            return caught.parser
    raise RuntimeError(f"{main.__module__}.main returned without parsing its arguments"
                       + (f" with a parser named {prog!r}" if prog else ""))


def command_parser(command: Command) -> argparse.ArgumentParser:
    """The parser of one ``midprobe`` subcommand, as its module's ``main`` builds it (its prog is
    ``python -m <module>``, which ``midprobe COMMAND --help`` relies on too)."""
    return parser_of(command.entry(), f"python -m {command.runs_as}")


def options_of(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """Every option string (``--task``, ``-h``) and positional name of ``parser`` -> its action."""
    out: dict[str, argparse.Action] = {}
    for action in parser._actions:
        for name in action.option_strings or [action.dest]:
            out[name] = action
    return out


# --- the Makefile --------------------------------------------------------------------------------

def makefile_variables(text: str) -> dict[str, str]:
    """``NAME ?= default`` assignments of a Makefile, in order (default as written, may be empty)."""
    return {name: value for name, value in _VARIABLE.findall(text)}


def makefile_targets(text: str) -> list[str]:
    """The rule names of a Makefile (``name:`` at the start of a line), in order, without repeats."""
    return list(dict.fromkeys(_RULE.findall(text)))


def target_recipe(text: str, target: str) -> str:
    """The recipe of ``target`` in a Makefile: its rule line and the tab-indented lines after it."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^{re.escape(target)}\s*:(?!=)", line):
            body = [line]
            for nxt in lines[i + 1:]:
                if not nxt.startswith("\t"):
                    break
                body.append(nxt)
            return "\n".join(body)
    return ""


def makefile_exports(text: str) -> dict[str, str]:
    """``export ENV := $(VAR)`` lines: make variable -> the environment variable it sets."""
    return {var: env for env, var in _EXPORT.findall(text)}


def target_comment(text: str, target: str) -> str:
    """The comment lines right above ``target:`` in a Makefile, joined (empty if none)."""
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if re.match(rf"^{re.escape(target)}\s*:(?!=)", line):
            above = []
            j = i - 1
            while j >= 0 and (lines[j].startswith("#") or re.match(r"^[A-Z_]+\s*\?=", lines[j])):
                if lines[j].startswith("#"):
                    above.insert(0, lines[j].lstrip("#").strip())
                j -= 1
            return " ".join(above)
    return ""


def recipe_commands(target: str, assignments: dict[str, str], *, makefile_dir: Path = REPO) -> list[list[str]]:
    """The command lines ``make -n target VAR=value …`` prints, one argv each (a venv at /venv)."""
    args = [f"{k}={v}" for k, v in assignments.items()]
    out = subprocess.run(["make", "-n", "--no-print-directory", "-C", str(makefile_dir), target, *args,
                          "VENV=/venv"], capture_output=True, text=True, check=True).stdout
    lines = out.replace("\\\n", " ").splitlines()
    return [shlex.split(line) for line in lines if line.strip()]


def stage_argv(target: str, assignments: dict[str, str], *, makefile_dir: Path = REPO) -> list[str] | None:
    """The arguments a make target hands its stage (after ``midprobe`` or ``python -m module``),
    or None when the target runs no midprobe stage."""
    for argv in recipe_commands(target, assignments, makefile_dir=makefile_dir):
        if argv and argv[0].endswith("/midprobe"):
            return argv[1:]
        if len(argv) > 2 and argv[0].endswith("/python") and argv[1] == "-m":
            return argv[2:]
    return None


@dataclass(frozen=True)
class VariableOption:
    """How one make variable reaches a stage: the option (``--model``), or the flag it adds, and
    the condition it needs (``CLUSTER=slurm``), if any."""

    variable: str
    option: str
    condition: str = ""


def variable_options(target: str, variables: list[str], conditions: dict[str, list[str]], *,
                     makefile_dir: Path = REPO) -> list[VariableOption]:
    """For each variable, the option of the target's stage it sets, found by running ``make -n``
    with that variable alone set to a sentinel (and, where the Makefile tests another variable
    with ``$(filter X,$(VAR))``, with that one set to X too)."""
    base = stage_argv(target, {}, makefile_dir=makefile_dir) or []
    recipe = target_recipe((makefile_dir / "Makefile").read_text(), target)
    found: list[VariableOption] = []
    for var in variables:
        if f"$({var})" not in recipe:
            continue
        tries = [{}] + [{other: value} for other, values in conditions.items() if other != var for value in values]
        for extra in tries:
            sentinel = SENTINEL.format(var)
            argv = stage_argv(target, {**extra, var: sentinel}, makefile_dir=makefile_dir) or []
            before = stage_argv(target, extra, makefile_dir=makefile_dir) or [] if extra else base
            option = _option_set_by(argv, before, sentinel)
            if option:
                found.append(VariableOption(var, option, " ".join(f"{k}={v}" for k, v in extra.items())))
                break
    return found


def _option_set_by(argv: list[str], before: list[str], sentinel: str) -> str:
    """The option a sentinel value reached in ``argv``: ``--opt`` (the sentinel its value),
    ``--opt key=…``, ``(positional)``, or else the words setting the variable added (a flag such
    as ``--dry-run``) against ``before``."""
    for i, token in enumerate(argv):
        if sentinel not in token:
            continue
        shown = token.replace(sentinel, "…")
        previous = argv[i - 1] if i > 0 else ""
        if previous.startswith("-"):
            return previous if shown == "…" else f"{previous} {shown}"
        if token.startswith("-"):
            return shown                                      # --opt=…
        return "(positional)" if shown == "…" else f"(positional) {shown}"
    return " ".join(t for t in argv if t not in before)


def filter_conditions(text: str) -> dict[str, list[str]]:
    """``$(filter X,$(VAR))`` tests in a Makefile: VAR -> the values X it is compared with."""
    out: dict[str, list[str]] = {}
    for values, var in _CONDITION.findall(text):         # $(filter …,$(origin VAR)) does not match
        for value in values.split():
            out.setdefault(var, []).append(value)
    return {k: list(dict.fromkeys(v)) for k, v in out.items()}


# --- the page ------------------------------------------------------------------------------------

def _cell(text: object) -> str:
    return " ".join(str(text).split()).replace("|", "\\|")


def _help(action: argparse.Action, prog: str) -> str:
    text = action.help or ""
    if "%(" in text:
        with contextlib.suppress(KeyError, TypeError, ValueError):
            text = text % {**vars(action), "prog": prog}
    return _cell(text)


def _default(action: argparse.Action) -> str:
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction)) or action.default in (
            None, argparse.SUPPRESS, [], ()):
        return ""
    return f"`{action.default}`" if not isinstance(action.default, list) else \
        "`" + ",".join(map(str, action.default)) + "`"


def _make_target_of(command: Command, targets: list[str]) -> str | None:
    name = command.make.split()[-1]
    return name if command.make.startswith("make ") and name in targets else None


def render(*, makefile: Path = REPO / "Makefile") -> str:
    """The whole of ``docs/cli.md``, deterministic (no dates, no paths of this machine)."""
    text = makefile.read_text()
    variables = makefile_variables(text)
    targets = makefile_targets(text)
    exports = makefile_exports(text)
    conditions = filter_conditions(text)
    user_vars = [v for v in variables if v not in ("PYTHON", "VENV")]
    parsers = {name: command_parser(c) for name, c in COMMANDS.items()}
    here = makefile.parent
    per_target = {t: variable_options(t, [v for v in user_vars if v not in exports], conditions, makefile_dir=here)
                  for t in targets if stage_argv(t, {}, makefile_dir=here) is not None}
    lines = [
        "# Commands and options",
        "",
        "<!-- generated by `python -m midprobe.docs_cli` (make docs) from the argparse parsers and the Makefile;"
        " do not edit by hand -->",
        "",
        "Every stage is one `midprobe` subcommand, one `python -m` module and one make target, and the three run "
        "the same `main()` with the same options. A make variable is the option it sets (found by running "
        "`make -n` with that variable alone set), so `make probe TASK=depth LR=5e-4,1e-3` is "
        "`midprobe probe --task depth --lr 5e-4,1e-3`. `midprobe COMMAND --help` prints the same options.",
        "",
        "| make | midprobe | python -m | what it does |",
        "|---|---|---|---|",
    ]
    for command in COMMANDS.values():
        lines.append(f"| `{command.make}` | `midprobe {command.name}` | `python -m {command.runs_as}` | "
                     f"{_cell(command.summary)} |")
    for var, env in exports.items():
        reading = sorted({o for p in parsers.values() for a in p._actions if f"${env}" in (a.help or "")
                          for o in a.option_strings})
        lines += ["", f"`{var}=` (default `{variables.get(var, '')}`) is exported to every command as the "
                      f"environment variable `{env}`" + (f", the default of {', '.join(f'`{o}`' for o in reading)}"
                                                         if reading else "") + "."]
    for command in COMMANDS.values():
        parser = parsers[command.name]
        target = _make_target_of(command, targets)
        by_option: dict[str, list[VariableOption]] = {}
        for vo in per_target.get(target or "", []):
            by_option.setdefault(vo.option.split()[0], []).append(vo)
        lines += ["", f"## midprobe {command.name}", "",
                  f"{_cell(command.summary)}. Also `{command.make}` and `python -m {command.runs_as}`.", ""]
        if parser.usage is None:
            usage = parser.format_usage().replace(f"python -m {command.runs_as}", f"midprobe {command.name}")
            lines += ["```", " ".join(usage.split()), "```", ""]
        lines += ["| option | make variable | default | meaning |", "|---|---|---|---|"]
        for action in parser._actions:
            if isinstance(action, argparse._HelpAction):
                continue
            names = action.option_strings or [action.dest]
            shown = ", ".join(f"`{n}`" for n in names)
            if action.choices and not isinstance(action.choices, dict):
                shown += " {" + ",".join(map(str, action.choices)) + "}"
            makes = [vo for n in names for vo in by_option.get(n, [])]
            if not action.option_strings and target:
                makes += by_option.get("(positional)", [])
            make_cell = "; ".join([_make_cell(vo, names[0]) for vo in makes] +
                                  [f"`{var}=` (through `${env}`)" for var, env in exports.items()
                                   if f"${env}" in (action.help or "")])
            lines.append(f"| {shown} | {make_cell} | {_default(action)} | {_help(action, parser.prog)} |")
        if target:
            unused = [vo for opt, vos in by_option.items() for vo in vos
                      if opt not in options_of(parser) and opt != "(positional)"]
            for vo in unused:
                lines.append(f"| `{vo.option}` | `{vo.variable}=` |  | {NOT_AN_OPTION} midprobe {command.name} |")
        if command.examples:
            lines += ["", "```bash", *command.examples, "```"]
    staged = {_make_target_of(c, targets) for c in COMMANDS.values()}
    rest = [t for t in targets if t not in staged]
    lines += ["", "## Other make targets", "", "| target | what it does |", "|---|---|"]
    for target in rest:
        lines.append(f"| `make {target}` | {_cell(target_comment(text, target)) or '—'} |")
    sets: dict[str, list[str]] = {}
    for target, found in per_target.items():
        for vo in found:
            shown = "its positional argument" if vo.option.startswith("(positional)") else f"`{vo.option}`"
            sets.setdefault(vo.variable, []).append(
                f"`make {target}`: {shown}" + (f" with `{vo.condition}`" if vo.condition else ""))
    for var, env in exports.items():
        sets.setdefault(var, []).append(f"every target: the environment variable `{env}`")
    lines += ["", "## Make variables", "", "| variable | default | sets |", "|---|---|---|"]
    for var in user_vars:
        default = f"`{variables[var]}`" if variables[var] else "—"
        lines.append(f"| `{var}` | {default} | {'; '.join(sets.get(var, [])) or 'read by the Makefile only'} |")
    return "\n".join(lines) + "\n"


def _make_cell(vo: VariableOption, option: str) -> str:
    """``VAR=``, with the option it becomes where that is more than the option's own name."""
    plain = vo.option in (option, f"{option} …", "(positional)")
    return (f"`{vo.variable}=`" + ("" if plain else f" (as `{vo.option}`)")
            + (f" with `{vo.condition}`" if vo.condition else ""))


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m midprobe.docs_cli", description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="write nothing; exit 1 when docs/cli.md is stale")
    p.add_argument("--out", default=str(REPO / PAGE), help="where to write the page (default docs/cli.md)")
    args = p.parse_args(argv)
    page = render()
    out = Path(args.out)
    if args.check:
        if not out.exists() or out.read_text() != page:
            print(f"error: {out} is stale; regenerate it with python -m midprobe.docs_cli (make docs)",
                  file=sys.stderr)
            return 1
        return 0
    out.write_text(page)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
