"""Fetching a published checkpoint once into torch hub's cache, checked against its sha256."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

from cache import MidprobeError


def hub_checkpoint_dir() -> Path:
    """``$TORCH_HOME/hub/checkpoints`` (torch hub's usual cache), where downloads land once."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def cached_path(filename: str) -> Path:
    return hub_checkpoint_dir() / filename


def file_digest(path: Path, algorithm: str) -> str:
    """A file's digest by ``hashlib`` algorithm name (``sha256``, ``md5``, ...), as hex."""
    with open(path, "rb") as handle:
        return hashlib.file_digest(handle, algorithm).hexdigest()


def verify(path: Path, checksum: tuple[str, str] | None) -> None:
    """An error unless the file's digest starts with the published one.

    ``checksum`` is ``(algorithm, hex)``, where the hex may be the prefix a source
    publishes (OpenMMLab's file names carry the first 8 hex digits of the sha256; MoCo's
    README the first 8 of the md5).
    """
    if not checksum:
        return
    algorithm, expected = checksum
    digest = file_digest(path, algorithm)
    if not digest.startswith(expected.lower()):
        raise MidprobeError(f"{path} has {algorithm} {digest}, expected {expected}…; the file is corrupt or not "
                            "the published checkpoint (delete it to download again)")


def fetch(url: str, filename: str, *, checksum: tuple[str, str] | None = None, progress: bool = True) -> Path:
    """The local copy of ``url``: downloaded once into the hub cache, verified on every use.

    A partial download never takes the final name (torch hub writes to a temporary file
    and renames), so an interrupted fetch is simply retried.
    """
    import torch

    target = cached_path(filename)
    if not target.is_file():
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            torch.hub.download_url_to_file(url, str(target), progress=progress)
        except Exception as exc:  # offline, 404, refused
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            if target.exists():
                os.unlink(target)
            raise MidprobeError(f"cannot download {url} ({first}); on a machine without internet download it "
                                f"elsewhere and pass WEIGHTS=<file> (or put it at {target})") from None
    verify(target, checksum)
    return target
