"""Per-task log files: what a task prints goes to its own file, even beside other tasks.

A worker process may run tasks in several threads at once, so ``sys.stdout``/``sys.stderr``
are replaced (once per process) by streams that write to the file of the task the calling
thread is running, and to the original stream otherwise.
"""

from __future__ import annotations

import contextlib
import io
import sys
import threading
import time
from pathlib import Path
from typing import IO, Iterator


class _Routed(io.TextIOBase):
    """A text stream writing to the calling thread's task log, or to ``fallback``."""

    def __init__(self, fallback: IO[str], local: threading.local) -> None:
        self.fallback, self.local = fallback, local

    def _target(self) -> IO[str]:
        return getattr(self.local, "file", None) or self.fallback

    def write(self, text: str) -> int:
        return self._target().write(text)

    def flush(self) -> None:
        self._target().flush()

    def isatty(self) -> bool:
        return False

    @property
    def encoding(self) -> str:  # type: ignore[override]
        return "utf-8"


_LOCAL = threading.local()
_INSTALL = threading.Lock()


def _install() -> None:
    with _INSTALL:
        if not isinstance(sys.stdout, _Routed):
            sys.stdout = _Routed(sys.stdout, _LOCAL)
        if not isinstance(sys.stderr, _Routed):
            sys.stderr = _Routed(sys.stderr, _LOCAL)


@contextlib.contextmanager
def task_log(path: Path, *, header: str) -> Iterator[IO[str]]:
    """Send this thread's ``print``/``sys.stderr`` output to ``path`` (appended: a retried task
    keeps the log of its earlier attempts) while the block runs."""
    _install()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", buffering=1) as handle:
        handle.write(f"--- {time.strftime('%Y-%m-%d %H:%M:%S')} {header}\n")
        previous = getattr(_LOCAL, "file", None)
        _LOCAL.file = handle
        try:
            yield handle
        finally:
            _LOCAL.file = previous
