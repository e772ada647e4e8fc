"""The options every command shares, defined once: parent parsers for ``--data``, ``--quiet``,
``--device``, ``--protocol``, ``--precision`` and ``--task``, their choices read from the
registries (:data:`protocols.PROTOCOLS`, :data:`cache.quantize.PRECISIONS`, the task registry).
A protocol, precision or task is checked by its registry as it is parsed (``get_protocol``,
``check_precision``, ``get_task``): a bad one is the registry's one-line ``error:`` listing the
known ones (exit 2 under :func:`cache.errors.exits_on_error`), not argparse's usage block.

Each command builds its parser with :func:`command_parser`, naming itself with the ``prog`` it
is given (``python -m probe`` run as a module, ``midprobe probe`` under the one command), so no
help text is rewritten after the fact.
"""

from __future__ import annotations

import argparse
import re
from typing import Sequence

from cache.errors import MidprobeError

DATA_HELP = "data root (default $MIDPROBE_DATA or ./data)"


def describe(doc: str | None) -> str | None:
    """A module docstring as a parser's description: without the command spellings it opens with
    (``python -m probe``: ..., a paragraph that is only a usage line), which ``prog`` names instead."""
    if not doc:
        return doc
    text = "\n\n".join(p for p in doc.strip().split("\n\n") if not re.fullmatch(r"``[^`]*``", p.strip()))
    head = re.match(r"``[^`]*``(?: \(``[^`]*``\))?: ", text)
    text = text[head.end():] if head else text
    return text[:1].upper() + text[1:]


def command_parser(*, prog: str, description: str | None, parents: Sequence[argparse.ArgumentParser] = (),
                   raw: bool = True) -> argparse.ArgumentParser:
    """A command's parser named ``prog``, with the shared options of ``parents``; ``description`` is
    the module's docstring (:func:`describe`); ``raw`` keeps its line breaks."""
    return argparse.ArgumentParser(prog=prog, description=describe(description), parents=list(parents),
                                   formatter_class=argparse.RawDescriptionHelpFormatter if raw
                                   else argparse.HelpFormatter)


def _parent() -> argparse.ArgumentParser:
    return argparse.ArgumentParser(add_help=False)


def _protocol(name: str) -> str:
    from protocols import get_protocol

    return get_protocol(name).name      # an unknown name raises the registry's MidprobeError


def _precision(name: str) -> str:
    from cache.quantize import check_precision

    return check_precision(name)


def _task(name: str) -> str:
    from probe.tasks import get_task

    return get_task(name).name


def _tasks(names: str) -> str:
    """Comma-separated tasks, each registered (``depth,normals``), returned as given."""
    from midprobe import values

    listed = values.name_list(names) or []
    if not listed:
        raise MidprobeError(f"task {names!r}: expected a task name, or several comma-separated")
    return ",".join(_task(name) for name in listed)


def data_option(*, default: str | None = None, help: str = DATA_HELP) -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--data", default=default, help=help)
    return p


def quiet_option(*, help: str | None = "no progress lines") -> argparse.ArgumentParser:
    p = _parent()
    p.add_argument("--quiet", action="store_true", help=help)
    return p


def device_option(*, default: str | None = "cpu", choices: Sequence[str] | None = None,
                  help: str | None = "cpu (default) or cuda (cuda:<i> for one of several GPUs)") -> argparse.ArgumentParser:
    p = _parent()
    if choices:
        p.add_argument("--device", default=default, choices=list(choices), help=help)
    else:  # checked against the GPUs this machine has, in one line (midprobe.values)
        from midprobe import values

        p.add_argument("--device", default=default, type=values.device, help=help)
    return p


def protocol_option(*, what: str, default: str | None = None) -> argparse.ArgumentParser:
    """``--protocol`` with the registered protocols as its choices (default :data:`DEFAULT_PROTOCOL`
    unless ``default`` is ``None`` here and the command has its own); ``what`` says what it decides."""
    from protocols import DEFAULT_PROTOCOL, PROTOCOLS

    p = _parent()
    chosen = DEFAULT_PROTOCOL if default is None else default
    p.add_argument("--protocol", default=chosen or None, type=_protocol, metavar="{" + ",".join(sorted(PROTOCOLS)) + "}",
                   help=f"{', '.join(sorted(PROTOCOLS))}" + (f" (default {chosen})" if chosen else "") + f": {what}")
    return p


def precision_option(*, default: str | None = "fp16", what: str) -> argparse.ArgumentParser:
    """``--precision`` with :data:`cache.quantize.PRECISIONS` as its choices."""
    from cache.quantize import PRECISIONS

    p = _parent()
    p.add_argument("--precision", default=default, type=_precision, metavar="{" + ",".join(PRECISIONS) + "}",
                   help=f"{' or '.join(PRECISIONS)}" + (f" (default {default})" if default else "") + f": {what}")
    return p


def task_option(*, required: bool = True, several: bool = False, **kwargs) -> argparse.ArgumentParser:
    """``--task``, the registered tasks named in its help; ``several``: a comma-separated list."""
    from probe.tasks import TASKS

    p = _parent()
    kwargs.setdefault("help", ", ".join(TASKS))
    p.add_argument("--task", required=required, type=_tasks if several else _task, metavar="{" + ",".join(TASKS) + "}", **kwargs)
    return p
