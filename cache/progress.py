"""Progress of a long step: a bar on a terminal, plain lines in a log, nothing when quiet.

Every long step (dataset preparation, extraction, probe training, zero-shot evaluation, the
report) reports through :func:`progress_bar`. On a terminal it is a tqdm bar with rate and
ETA; when stderr is not a terminal (CI logs, ``make … > log``) it prints at most one plain line
per ``interval`` seconds, ``name: i/n unit (x unit/s, ETA m:ss[, note])``, and one closing line
``name: n/n unit in m:ss (x unit/s)``, so a log stays readable; with ``quiet`` it prints nothing.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any, Callable, Iterable, Iterator, TextIO

from cache.errors import honour_interrupt

#: seconds between two plain progress lines (the closing line is always printed)
PLAIN_INTERVAL = 10.0
MODES = ("bar", "plain", "off")


def clock_text(seconds: float) -> str:
    """``m:ss`` (``h:mm:ss`` from an hour on) of a non-negative duration; ``?`` when unknown."""
    if not seconds >= 0 or seconds == float("inf"):
        return "?"
    whole = int(round(seconds))
    hours, rest = divmod(whole, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Counts done units of a step of ``total`` units; see :func:`progress_bar`.

    Use as a context manager (or call :meth:`close`): leaving it normally prints the closing
    line in plain mode; leaving it on an exception prints none, so a failed step never reads
    as done.
    """

    def __init__(self, iterable: Iterable[Any] | None, *, total: int | None, name: str, unit: str, mode: str,
                 stream: TextIO, interval: float, clock: Callable[[], float], smoothing: float = 0.1) -> None:
        if mode not in MODES:
            raise ValueError(f"progress mode {mode!r}; expected one of {', '.join(MODES)}")
        if total is None and iterable is not None:
            try:
                total = len(iterable)  # type: ignore[arg-type]
            except TypeError:
                total = None
        self.iterable, self.total, self.name, self.unit = iterable, total, name, unit
        self.mode, self.stream, self.interval, self.clock = mode, stream, interval, clock
        self.done = 0
        self.note = ""
        self.started = clock()
        self._last_line = self.started
        self._closed = False
        self._bar = None
        if mode == "bar":
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=name, unit=unit, file=stream, dynamic_ncols=True,
                             smoothing=smoothing)

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(finished=exc_type is None)

    def __iter__(self) -> Iterator[Any]:
        if self.iterable is None:
            raise TypeError("this progress was made without an iterable")
        finished = False
        try:
            for item in self.iterable:
                yield item
                self.update(1)
            finished = True
        finally:
            self.close(finished=finished)

    @property
    def rate(self) -> float:
        """Units per second since the start (0 before the first unit)."""
        seconds = self.clock() - self.started
        return self.done / seconds if seconds > 0 and self.done else 0.0

    @property
    def eta(self) -> float:
        """Seconds left at the mean rate so far (``inf`` while unknown)."""
        if self.total is None or not self.rate:
            return float("inf")
        return max(self.total - self.done, 0) / self.rate

    def update(self, n: int = 1, *, note: str | None = None) -> None:
        """``n`` more units done; ``note`` (e.g. ``epoch 3/10``) replaces the text shown after the rate.

        Raises ``KeyboardInterrupt`` if Ctrl-C came and Python swallowed it (:func:`cache.errors.honour_interrupt`)."""
        honour_interrupt()
        self.done += n
        if note is not None:
            self.note = note
        if self._bar is not None:
            if note is not None:
                self._bar.set_postfix_str(note, refresh=False)
            self._bar.update(n)
        elif self.mode == "plain":
            now = self.clock()
            if now - self._last_line >= self.interval and not (self.total is not None and self.done >= self.total):
                self._last_line = now
                self._print(self.line())

    def line(self) -> str:
        """The plain progress line: ``name: i/n unit (x unit/s, ETA m:ss[, note])``."""
        of = f"/{self.total}" if self.total is not None else ""
        note = f", {self.note}" if self.note else ""
        return (f"{self.name}: {self.done}{of} {self.unit} ({self.rate:.1f} {self.unit}/s, "
                f"ETA {clock_text(self.eta)}{note})")

    def closing_line(self) -> str:
        """``name: n unit in m:ss (x unit/s)``."""
        seconds = self.clock() - self.started
        rate = self.done / seconds if seconds > 0 else 0.0
        return f"{self.name}: {self.done} {self.unit} in {clock_text(seconds)} ({rate:.1f} {self.unit}/s)"

    def write(self, message: str) -> None:
        """Print a line of its own (a log line) without breaking the bar; nothing when quiet."""
        if self.mode == "off":
            return
        with self.paused():
            self._print(message)

    def paused(self) -> contextlib.AbstractContextManager:
        """A context in which other code may print to the stream: the bar is cleared and redrawn after."""
        if self._bar is not None:
            from tqdm import tqdm

            return tqdm.external_write_mode(file=self.stream)
        return contextlib.nullcontext()

    def close(self, *, finished: bool = True) -> None:
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "plain" and finished:
            self._print(self.closing_line())

    def _print(self, text: str) -> None:
        print(text, file=self.stream, flush=True)


def progress_mode(stream: TextIO, *, quiet: bool) -> str:
    """``off`` when quiet, ``bar`` on a terminal, ``plain`` otherwise."""
    if quiet:
        return "off"
    isatty = getattr(stream, "isatty", None)
    return "bar" if isatty is not None and isatty() else "plain"


def progress_bar(iterable: Iterable[Any] | None = None, *, total: int | None = None, name: str, unit: str = "img",
                 quiet: bool = False, stream: TextIO | None = None, interval: float = PLAIN_INTERVAL,
                 clock: Callable[[], float] = time.monotonic, smoothing: float = 0.1) -> Progress:
    """Progress over ``total`` units (or over ``iterable``, counting one unit per item).

    ``stream`` defaults to stderr; its being a terminal chooses a bar over plain lines.
    ``clock`` (seconds) is there for tests; ``smoothing`` is the bar's rate smoothing (tqdm's).
    """
    stream = stream if stream is not None else sys.stderr
    return Progress(iterable, total=total, name=name, unit=unit, mode=progress_mode(stream, quiet=quiet),
                    stream=stream, interval=interval, clock=clock, smoothing=smoothing)


def tqdm_like(iterable: Iterable[Any] | None = None, *, total: int | None = None, desc: str = "", unit: str = "it",
              disable: bool = False, file: TextIO | None = None, smoothing: float = 0.1) -> Progress:
    """:func:`progress_bar` under the part of tqdm's signature the dataset loaders and the extraction
    runner call (``tqdm(iterable, total=, unit=, desc=, disable=, file=, smoothing=)``), so they
    print plain lines off a terminal."""
    return progress_bar(iterable, total=total, name=desc, unit=unit, quiet=disable, stream=file, smoothing=smoothing)
