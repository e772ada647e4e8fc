"""Store locks that die with their holder.

A lock is the ``filelock`` library's ``flock`` on an open lock file: the kernel drops it when
the holding process exits, however it exits (``kill -9`` included), so a crashed writer never
leaves a lock behind that blocks the next run. Two live writers still exclude each other. The
lock file itself stays (deleting it would let a third process lock a fresh file while a second
still holds the old one); it is empty and harmless.

``flock`` works between processes on one machine and on local file systems; on NFS it
depends on the server's lock support. Where the file system has no ``flock`` at all the lock
is an error, never ``filelock``'s marker-file fallback, which a killed holder would leave behind.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import filelock

from cache.errors import MidprobeError


class FileLock:
    """An exclusive lock on ``path``, for ``with`` blocks.

    ``timeout`` seconds to wait for another live holder (``0``: fail at once); ``what``
    names the guarded thing in the error.
    """

    def __init__(self, path: Path, *, timeout: float = 120.0, what: str | None = None) -> None:
        self.path, self.timeout = Path(path), timeout
        self.what = what or f"the store beside {self.path}"
        # not thread-local: a preparation may release on another thread than the one that locked
        self._lock = filelock.FileLock(self.path, timeout=timeout, mode=0o644, thread_local=False,
                                       poll_interval=0.02, fallback_to_soft=False, preserve_lock_file=True)

    @property
    def held(self) -> bool:
        return self._lock.is_locked

    def acquire(self) -> "FileLock":
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._lock.acquire()
        except filelock.Timeout:
            waited = f" for over {self.timeout:.0f} s" if self.timeout else ""
            raise MidprobeError(f"{self.what} is in use by another running process{waited} "
                                f"(lock {self.path}); wait for it to finish") from None
        except OSError as exc:
            raise MidprobeError(f"cannot create the lock {self.path} ({exc.strerror or exc}); the data root must "
                                "be writable — set MIDPROBE_DATA or DATA= to a writable folder") from None
        return self

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release(force=True)

    def __enter__(self) -> "FileLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()

    def __del__(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is not None and lock.is_locked:
            lock.release(force=True)
