"""The one error type a user sees: a one-line message, then a non-zero exit."""

from __future__ import annotations

from typing import Any, Callable, TypeVar

T = TypeVar("T")


#: the exit status of a command stopped by Ctrl-C (128 + SIGINT, as a shell reports it)
INTERRUPTED = 130
INTERRUPTED_LINE = "interrupted; rerun the same command to resume (complete work is kept)"


class MidprobeError(Exception):
    """Bad input or state a user can fix: what was wrong and what was expected.

    Command-line entry points print ``error: <message>`` and exit with status 2.
    """


#: set by midprobe's SIGINT handler; read by :func:`honour_interrupt`
_interrupted = False


def _on_sigint(signum: int, frame: object) -> None:
    global _interrupted
    _interrupted = True
    raise KeyboardInterrupt


def _swallowed_interrupt_hook(previous: "Callable[[Any], object]") -> "Callable[[Any], object]":
    """An ``unraisablehook`` that keeps quiet about a ``KeyboardInterrupt`` Python could not raise (the
    flag is already set; the next :func:`honour_interrupt` raises it) and passes anything else on."""
    def hook(unraisable: Any) -> object:
        if isinstance(unraisable.exc_value, KeyboardInterrupt):
            return None
        return previous(unraisable)
    return hook


def honour_interrupt() -> None:
    """Raise ``KeyboardInterrupt`` if Ctrl-C came during this command but its exception was lost.

    A SIGINT that arrives while Python runs a weakref callback, a ``__del__`` or an import's lock
    clean-up raises there, where the exception is printed as "Exception ignored" and dropped: the
    command would go on to the end as if never interrupted. Every long step calls this between
    units of work (through :class:`cache.progress.Progress`), so such a Ctrl-C stops it at the next
    image or batch instead."""
    if _interrupted:
        raise KeyboardInterrupt


def interrupted_exit(line: str) -> int:
    """After a caught ``KeyboardInterrupt``: print ``line`` to stderr and return :data:`INTERRUPTED`."""
    import sys

    # A KeyboardInterrupt raised inside code run by eval() of a string (collections.namedtuple does
    # that) leaves CPython's "unhandled KeyboardInterrupt" flag set even once caught, and `python -m`
    # then exits by SIGINT (-2) instead of this status; every eval of a string resets that flag on entry.
    eval("None")
    print(line, file=sys.stderr)
    return INTERRUPTED


def exits_on_error(main: "Callable[..., int]") -> "Callable[..., int]":
    """Wrap a command-line ``main``: a :class:`MidprobeError` becomes ``error: ...`` on stderr, exit 2;
    Ctrl-C (``KeyboardInterrupt``) becomes one line, exit 130. Every store, record and report is
    written to a temporary name and renamed when whole, so what an interrupt leaves is either
    complete or resumed by the same command.

    While it runs (outermost call, main thread, SIGINT at Python's default) Ctrl-C is also recorded,
    so an interrupt Python swallowed is honoured at the next unit of work (:func:`honour_interrupt`)
    or, at the latest, in the exit status."""
    import functools
    import signal
    import sys
    import threading

    @functools.wraps(main)
    def wrapped(*args: object, **kwargs: object) -> int:
        global _interrupted
        outermost = (threading.current_thread() is threading.main_thread()
                     and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if outermost:
            previous_hook = sys.unraisablehook
            signal.signal(signal.SIGINT, _on_sigint)
            sys.unraisablehook = _swallowed_interrupt_hook(previous_hook)
        try:
            code = main(*args, **kwargs)
            if code == 0:
                honour_interrupt()       # a swallowed Ctrl-C after the last unit of work
            return code
        except MidprobeError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            return interrupted_exit(INTERRUPTED_LINE)
        finally:
            if outermost:
                signal.signal(signal.SIGINT, signal.default_int_handler)
                sys.unraisablehook = previous_hook
                _interrupted = False

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
