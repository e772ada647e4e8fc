"""The one error type a user sees: a one-line message, then a non-zero exit."""

from __future__ import annotations

from typing import Callable


class MidprobeError(Exception):
    """Bad input or state a user can fix: what was wrong and what was expected.

    Command-line entry points print ``error: <message>`` and exit with status 2.
    """


def exits_on_error(main: "Callable[..., int]") -> "Callable[..., int]":
    """Wrap a command-line ``main``: a :class:`MidprobeError` becomes ``error: ...`` on stderr, exit 2."""
    import functools
    import sys

    @functools.wraps(main)
    def wrapped(*args: object, **kwargs: object) -> int:
        try:
            return main(*args, **kwargs)
        except MidprobeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2

    return wrapped
