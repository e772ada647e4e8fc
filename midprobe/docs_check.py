"""``python -m midprobe.docs_check``: check that README.md and docs/*.md stay true.

Three checks, each a function of the page's text so that tests can feed them small strings:

- every relative link and ``#anchor`` resolves: the file exists, and the anchor is the GitHub slug
  of one of the target page's headings (:func:`github_slug`);
- every ``make …`` line in a code block names Makefile targets and variables that exist, and every
  ``midprobe COMMAND --option`` (and ``python -m MODULE --option`` of a midprobe stage) names a
  command and options its argparse parser has;
- every generated page is current (``docs/cli.md``: :mod:`midprobe.docs_cli` writes the same).

Exit status 0 when nothing is wrong, 1 otherwise (one line per problem, ``file:line: …``).
"""

from __future__ import annotations

import argparse
import re
import shlex
import sys
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator, Mapping

REPO = Path(__file__).resolve().parent.parent
_FENCE = re.compile(r"^\s*(`{3,}|~{3,})(.*)$")
_HEADING = re.compile(r"^ {0,3}(#{1,6})\s+(.*?)\s*#*\s*$")
_LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
_INLINE_CODE = re.compile(r"(`+)(?:(?!\1).)+?\1")
_HTML_ANCHOR = re.compile(r"<a\s+(?:name|id)=\"([^\"]+)\"", re.I)


def pages(root: Path = REPO) -> list[Path]:
    """README.md and every docs/*.md page under ``root``, sorted."""
    return [root / "README.md", *sorted((root / "docs").glob("*.md"))]


# --- markdown --------------------------------------------------------------------------------------

def prose_lines(text: str) -> Iterator[tuple[int, str]]:
    """(line number, line) of every line outside fenced code blocks."""
    fence = ""
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if match and (not fence or match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)):
            fence = "" if fence else match.group(1)
            continue
        if not fence:
            yield number, line


@dataclass(frozen=True)
class CodeLine:
    line: int
    text: str
    language: str


def code_lines(text: str) -> Iterator[CodeLine]:
    """Every line inside a fenced code block, with the block's language (may be empty); a line
    ending in a backslash is joined with the next, as a shell would."""
    fence, language, pending, start = "", "", "", 0
    for number, line in enumerate(text.splitlines(), 1):
        match = _FENCE.match(line)
        if match and (not fence or match.group(1)[0] == fence[0] and len(match.group(1)) >= len(fence)
                      and not match.group(2).strip()):
            fence, language = ("", "") if fence else (match.group(1), match.group(2).strip())
            continue
        if fence:
            if not pending:
                start = number
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            yield CodeLine(start, pending + line, language)
            pending = ""


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: the rendered text, lower-cased, with every character that
    is not a letter, digit, space, hyphen or underscore dropped, and each space made a hyphen."""
    parts = []
    for i, part in enumerate(re.split(r"(`+[^`]*`+)", heading)):     # odd parts: inline code, kept as is
        if i % 2 == 0:
            part = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", part)  # links and images: their text
            part = re.sub(r"<[^>]+>", "", part)                       # inline HTML tags
        parts.append(part)
    text = "".join(parts)
    out = []
    for ch in text.lower():
        if ch in " -_" or unicodedata.category(ch)[0] in "LN":
            out.append("-" if ch == " " else ch)
    return "".join(out)


def anchors(text: str) -> set[str]:
    """Every anchor a page defines: its headings' slugs (a repeated slug gets -1, -2, … as on
    GitHub) and explicit ``<a name=…>``/``id=…`` anchors."""
    seen: dict[str, int] = {}
    out: set[str] = set()
    for _, line in prose_lines(text):
        match = _HEADING.match(line)
        if match:
            slug = github_slug(match.group(2))
            count = seen.get(slug, 0)
            seen[slug] = count + 1
            out.add(slug if count == 0 else f"{slug}-{count}")
        out.update(_HTML_ANCHOR.findall(line))
    return out


def links(text: str) -> Iterator[tuple[int, str]]:
    """(line number, target) of every markdown link and image outside code (fenced or inline)."""
    for number, line in prose_lines(text):
        for match in _LINK.finditer(_INLINE_CODE.sub("", line)):
            yield number, match.group(1)


def link_problems(page: Path, text: str, *, read: Mapping[Path, str] | None = None,
                  pending: Mapping[str, str] | None = None, root: Path = REPO) -> list[str]:
    """One line per link of ``text`` (the page at ``page``) that does not resolve. ``read`` gives
    the text of other pages (read from disk when absent there); ``pending`` names pages that
    other work will add (path relative to ``root`` -> who), whose absence is not a broken link here
    (``test_docs`` checks separately that they exist)."""
    problems = []
    for number, target in links(text):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):            # http:, https:, mailto:
            continue
        path_part, _, anchor = target.partition("#")
        dest = (page.parent / path_part).resolve() if path_part else page.resolve()
        where = f"{_rel(page, root)}:{number}: link {target}"
        relative = _rel(dest, root)
        if not path_part:
            dest_text: str | None = text
        elif read is not None and dest in read:
            dest_text = read[dest]
        elif dest.is_file():
            dest_text = dest.read_text() if dest.suffix == ".md" else None
        elif dest.is_dir():
            dest_text = None
        elif pending and relative in pending:
            continue
        else:
            problems.append(f"{where}: no file {relative}")
            continue
        if anchor:
            if dest_text is None:
                problems.append(f"{where}: an anchor into {relative}, which is not a markdown page")
            elif anchor not in anchors(dest_text):
                problems.append(f"{where}: no heading with the anchor #{anchor} in {relative}")
    return problems


def _rel(path: Path, root: Path) -> str:
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


# --- commands in code blocks -----------------------------------------------------------------------

def _words(line: str) -> list[str]:
    """A shell line's words, its comment dropped; [] when it is not one simple command."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        return []
    while words and (words[0] in ("$", "sudo") or re.match(r"^[A-Za-z_][A-Za-z0-9_]*=", words[0])):
        words = words[1:]                     # a prompt, or environment assignments before the command
    for stop in ("&&", "||", ";", "|", "&"):
        if stop in words:
            words = words[:words.index(stop)]
    return words


def make_problems(line: str, targets: set[str], variables: set[str]) -> list[str]:
    """What a ``make …`` line names that the Makefile lacks (targets, ``VAR=`` variables)."""
    words = _words(line)
    if not words or words[0] != "make":
        return []
    problems = []
    for word in words[1:]:
        if word in ("…", "...") or word.startswith("-"):
            continue
        if "=" in word:
            name = word.split("=", 1)[0]
            if name not in variables:
                problems.append(f"make variable {name} is not in the Makefile")
        elif word not in targets:
            problems.append(f"make target {word!r} is not in the Makefile")
    return problems


def cli_problems(line: str, parsers: Mapping[str, argparse.ArgumentParser],
                 modules: Mapping[str, str]) -> list[str]:
    """What a ``midprobe COMMAND …`` (or ``python -m MODULE …`` of a stage) line names that the
    command's parser lacks: the command itself, or an option. ``parsers`` maps command names to
    parsers, ``modules`` the stages' ``python -m`` modules to command names."""
    words = _words(line)
    if len(words) >= 3 and re.search(r"(^|/)python[0-9.]*$", words[0]) and words[1] == "-m":
        if words[2] not in modules:
            return []                         # a module that is not a midprobe stage (pytest, pip, …)
        command, rest = modules[words[2]], words[3:]
    elif words and re.search(r"(^|/)midprobe$", words[0]):
        if len(words) == 1 or words[1] in ("-h", "--help", "help"):
            return []
        command, rest = words[1], words[2:]
        if command not in parsers:
            return [f"midprobe has no command {command!r}"]
    else:
        return []
    known = {s for action in parsers[command]._actions for s in action.option_strings}
    problems = []
    for word in rest:
        if word.startswith("--") and word != "--":
            option = word.split("=", 1)[0]
            if option not in known:
                problems.append(f"midprobe {command} has no option {option}")
    return problems


def command_problems(page: Path, text: str, *, targets: set[str], variables: set[str],
                     parsers: Mapping[str, argparse.ArgumentParser], modules: Mapping[str, str],
                     root: Path = REPO) -> list[str]:
    """One line per make target, make variable, command or option named in a code block of
    ``text`` that does not exist."""
    out = []
    for code in code_lines(text):
        for problem in make_problems(code.text, targets, variables) + cli_problems(code.text, parsers, modules):
            out.append(f"{_rel(page, root)}:{code.line}: {problem} ({code.text.strip()})")
    return out


# --- the whole check -------------------------------------------------------------------------------

#: Pages that other issues write, linked from here before they land (path -> issue).
PENDING_PAGES = {
    "docs/fidelity.md": "#24 (make fidelity)",
    "docs/own-backbone.md": "#25 (hf:, py:, plugins)",
    "docs/comparing.md": "#26 (published points, intervals, paired tests)",
    "docs/paper-grid.md": "#27 (lockstep views, disk budget, SLURM)",
}


def generated_problems(root: Path = REPO) -> list[str]:
    """A generated page that differs from what its generator writes now."""
    from midprobe import docs_cli

    page = root / docs_cli.PAGE
    fresh = docs_cli.render(makefile=root / "Makefile")
    problems = [f"{docs_cli.PAGE}: {' '.join(line.split())}" for line in fresh.splitlines()
                if docs_cli.NOT_AN_OPTION in line]
    if not page.exists() or page.read_text() != fresh:
        problems.append(f"{docs_cli.PAGE} is stale: regenerate it with python -m midprobe.docs_cli (make docs)")
    return problems


def all_problems(root: Path = REPO, *, generated: bool = True) -> list[str]:
    """Every problem of every page under ``root``: links, commands and (unless ``generated`` is
    False) generated pages that are stale."""
    from midprobe.cli import COMMANDS
    from midprobe.docs_cli import command_parser, makefile_targets, makefile_variables

    makefile = (root / "Makefile").read_text()
    targets, variables = set(makefile_targets(makefile)), set(makefile_variables(makefile)) | {"MIDPROBE"}
    parsers = {name: command_parser(c) for name, c in COMMANDS.items() if c.available}
    modules = {c.runs_as: name for name, c in COMMANDS.items() if name in parsers}
    problems = []
    for page in pages(root):
        text = page.read_text()
        problems += link_problems(page, text, pending=PENDING_PAGES, root=root)
        problems += command_problems(page, text, targets=targets, variables=variables, parsers=parsers,
                                     modules=modules, root=root)
    return problems + (generated_problems(root) if generated else [])


def main(argv: list[str] | None = None) -> int:
    argparse.ArgumentParser(prog="python -m midprobe.docs_check", description=__doc__.split("\n\n")[0]) \
        .parse_args(argv)
    problems = all_problems()
    for problem in problems:
        print(problem, file=sys.stderr)
    missing = [f"{page} (written by {who})" for page, who in PENDING_PAGES.items() if not (REPO / page).exists()]
    if missing:
        print("not yet merged: " + ", ".join(missing), file=sys.stderr)
    return 1 if problems or missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
