"""Store locks that die with their holder.

A lock is ``fcntl.flock`` on an open lock file: the kernel drops it when the holding
process exits, however it exits (``kill -9`` included), so a crashed writer never leaves a
lock behind that blocks the next run. Two live writers still exclude each other. The lock
file itself stays (deleting it would let a third process lock a fresh file while a second
still holds the old one); it is empty and harmless.

``flock`` works between processes on one machine and on local file systems; on NFS it
depends on the server's lock support.
"""

from __future__ import annotations

import fcntl
import os
import time
from pathlib import Path
from typing import Any

from cache.errors import MidprobeError


class FileLock:
    """An exclusive lock on ``path``, for ``with`` blocks.

    ``timeout`` seconds to wait for another live holder (``0``: fail at once); ``what``
    names the guarded thing in the error.
    """

    def __init__(self, path: Path, *, timeout: float = 120.0, what: str | None = None) -> None:
        self.path, self.timeout = Path(path), timeout
        self.what = what or f"the store beside {self.path}"
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> "FileLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        except OSError as exc:
            raise MidprobeError(f"cannot create the lock {self.path} ({exc.strerror}); the data root must be "
                                "writable — set MIDPROBE_DATA or DATA= to a writable folder") from None
        deadline = time.monotonic() + self.timeout
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                self._fd = fd
                return self
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    os.close(fd)
                    waited = f" for over {self.timeout:.0f} s" if self.timeout else ""
                    raise MidprobeError(f"{self.what} is in use by another running process{waited} "
                                        f"(lock {self.path}); wait for it to finish") from None
                time.sleep(0.02)

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        self.release()
