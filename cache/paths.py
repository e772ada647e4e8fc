"""Where generated data lives: one data root, never inside the packages.

Layout under the root (default ``data/`` in the working directory, or ``$MIDPROBE_DATA``)::

    raw/<dataset>/                      user-downloaded original files
    stores/datasets/<dataset>.zarr      prepared dataset stores
    stores/features/<dataset>/<model>.zarr   feature stores, one group per split
    results/<task>/<dataset>/<model>/<protocol>/   one JSON record per probe
    reports/                            generated report pages and figures
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from cache.errors import MidprobeError

ENV_VAR = "MIDPROBE_DATA"


@dataclass(frozen=True)
class DataRoot:
    """Paths under one data root; nothing is created until a writer asks for it."""

    root: Path

    def raw(self, dataset: str) -> Path:
        return self.root / "raw" / dataset

    def dataset_store(self, dataset: str) -> Path:
        return self.root / "stores" / "datasets" / f"{dataset}.zarr"

    def feature_store(self, dataset: str, model: str, precision: str = "fp16") -> Path:
        """``<model>.zarr`` (float16 features) or ``<model>@int8.zarr`` (int8 with per-image-channel scales)."""
        suffix = "" if precision == "fp16" else f"@{precision}"
        return self.root / "stores" / "features" / dataset / f"{_safe(model)}{suffix}.zarr"

    def feature_dir(self, dataset: str) -> Path:
        return self.root / "stores" / "features" / dataset

    def results(self, task: str | None = None, dataset: str | None = None, model: str | None = None,
                protocol: str | None = None) -> Path:
        path = self.root / "results"
        for part in (task, dataset, model, protocol):
            if part is None:
                break
            path = path / _safe(part)
        return path

    def reports(self) -> Path:
        return self.root / "reports"

    def ensure_writable(self, path: Path) -> Path:
        """Create ``path`` (a directory) or fail with a one-line error naming it."""
        try:
            path.mkdir(parents=True, exist_ok=True)
            # one probe file per process: two shard writers checking the same folder at once must not
            # delete each other's
            probe = path / f".write-test-{os.getpid()}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise MidprobeError(
                f"data root is not writable: cannot write in {path} ({exc.strerror}); "
                f"set {ENV_VAR} or DATA= to a writable folder"
            ) from None
        return path


#: Longest file name made from a model name (file systems allow 255 bytes; ``@int8.zarr`` follows).
MAX_NAME = 200


def _safe(name: str) -> str:
    """Model names like ``timm:vit_small_patch16_224.dino`` or ``py:/abs/path/net.py:build`` become
    one file-system safe name; a very long one keeps its end and a digest of the whole."""
    safe = name.replace(":", "__").replace("/", "_")
    if len(safe.encode()) > MAX_NAME:
        import hashlib

        digest = hashlib.sha256(name.encode()).hexdigest()[:16]
        safe = f"{safe.encode()[-(MAX_NAME - 18):].decode(errors='ignore')}--{digest}"
    return safe


def data_root(root: str | os.PathLike | None = None) -> DataRoot:
    """The data root: ``root`` if given, else ``$MIDPROBE_DATA``, else ``./data``."""
    chosen = root if root is not None else os.environ.get(ENV_VAR, "data")
    path = Path(chosen).expanduser().resolve()
    if path.exists() and not path.is_dir():
        from cache.errors import MidprobeError

        raise MidprobeError(f"data root {path} is a file; expected a folder (DATA= / --data / $MIDPROBE_DATA)")
    return DataRoot(path)
