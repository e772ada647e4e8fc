"""Durable writes: fsync, atomic replacement, content checksums, and disk errors as one line."""

from __future__ import annotations

import contextlib
import errno
import os
from pathlib import Path
from typing import Callable, Iterator

from cache.errors import MidprobeError

#: errno values that mean "no room": the file system or the user's quota is full.
_FULL = {errno.ENOSPC, errno.EDQUOT}
_READ_ONLY = {errno.EROFS, errno.EACCES, errno.EPERM}


def file_checksum(path: Path) -> tuple[int, int]:
    """``(size in bytes, crc32c)`` of a file's bytes as stored (hardware crc32c, ~20 GB/s)."""
    import google_crc32c

    data = Path(path).read_bytes()
    return len(data), int(google_crc32c.value(data))


def fsync_file(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (new names, renames) durable."""
    fsync_file(path)


def fsync_tree(path: Path) -> None:
    """fsync every file under ``path`` and every directory holding them."""
    if not path.exists():
        return
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        fsync_file(file)
    for folder in sorted((p for p in path.rglob("*") if p.is_dir()), reverse=True):
        fsync_dir(folder)
    fsync_dir(path)


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``path`` so a reader (or a crash) sees the old file or the whole new one, never part.

    The bytes go to a hidden temporary file named after this process, are fsynced, and
    replace ``path`` in one rename.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    payload = data.encode() if isinstance(data, str) else data
    try:
        with open(tmp, "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
    return path


@contextlib.contextmanager
def disk_errors(where: Path | str, *, after: str | Callable[[], str] = "") -> Iterator[None]:
    """Turn a full disk or a read-only file system met while writing ``where`` into one line.

    ``after`` (or a function giving it, called only on failure) says what the user keeps,
    e.g. how many chunks are durable.
    """
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL:
            kept = after() if callable(after) else after
            raise MidprobeError(f"disk full while writing {where} ({exc.strerror})"
                                f"{'; ' + kept if kept else ''}; free space and rerun the same command") from None
        if exc.errno in _READ_ONLY:
            raise MidprobeError(f"cannot write {where} ({exc.strerror}); the data root must be writable — "
                                "set MIDPROBE_DATA or DATA= to a writable folder") from None
        raise
