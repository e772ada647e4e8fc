"""The one error type a user sees: a one-line message, then a non-zero exit."""

from __future__ import annotations

from typing import Callable, TypeVar

T = TypeVar("T")


#: the exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it)
INTERRUPTED = 130
INTERRUPTED_LINE = "interrupted; rerun the same command to resume (complete work is kept)"


class MidprobeError(Exception):
    """Bad input or state a user can fix: what was wrong and what was expected.

    Command-line entry points print ``error: <message>`` and exit with status 2.
    """


def exits_on_error(main: "Callable[..., int]") -> "Callable[..., int]":
    """Wrap a command-line ``main``: a :class:`MidprobeError` becomes ``error: ...`` on stderr, exit 2;
    Ctrl-C (``KeyboardInterrupt``) becomes one line, exit 130. Every store, record and report is
    written to a temporary name and renamed when whole, so what an interrupt leaves is either
    complete or resumed by the same command."""
    import functools
    import sys

    @functools.wraps(main)
    def wrapped(*args: object, **kwargs: object) -> int:
        try:
            return main(*args, **kwargs)
        except MidprobeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(INTERRUPTED_LINE, file=sys.stderr)
            return INTERRUPTED

    return wrapped



def metadata_errors(what: "Callable[..., object]") -> "Callable[[Callable[..., T]], Callable[..., T]]":
    """Decorate a function that opens a store: a damaged (truncated, garbled) ``zarr.json`` in it
    becomes a one-line error naming the store (``what(*args, **kwargs)``) and ``make verify``,
    which names the file and the rebuild."""
    import functools
    import json

    def wrap(fn: "Callable[..., T]") -> "Callable[..., T]":
        @functools.wraps(fn)
        def wrapped(*args: object, **kwargs: object) -> T:
            try:
                return fn(*args, **kwargs)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise MidprobeError(f"{what(*args, **kwargs)} has a damaged zarr.json ({type(exc).__name__}: {exc}); "
                                    "run `make verify` to see which and how to rebuild it") from None
        return wrapped
    return wrap
