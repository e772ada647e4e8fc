"""Reading a dataset's original files: presence checks, fingerprints, images, safe unpickling."""

from __future__ import annotations

import gzip
import hashlib
import io
import pickle
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cache import MidprobeError

SMALL_FILE = 32 << 20     # files up to this size are hashed whole; larger ones by size and both ends


def require(path: Path, what: str) -> Path:
    """``path`` if it exists; else a one-line error naming it and what it should be."""
    path = Path(path)
    if not path.exists():
        raise MidprobeError(f"missing {path}: expected {what}")
    return path


def file_fingerprint(path: Path, *, block: int = 1 << 20) -> str:
    """sha256 of a file; for a large one, of its size and its first and last MiB (a full
    hash of tens of GB of images would dominate preparation)."""
    size = path.stat().st_size
    digest = hashlib.sha256(str(size).encode())
    with open(path, "rb") as handle:
        if size <= SMALL_FILE:
            while chunk := handle.read(block):
                digest.update(chunk)
        else:
            digest.update(handle.read(block))
            handle.seek(size - block)
            digest.update(handle.read(block))
    return digest.hexdigest()


def raw_fingerprint(root: Path, metadata: Iterable[Path], bulk: Iterable[Path] = ()) -> str:
    """One digest over the files a store was built from.

    ``metadata`` files (splits, annotations, matrices) count by name and contents; ``bulk``
    files (the many images and depth maps) by name and size only — hashing their tens of
    GB would double the preparation's reading for little: a changed image almost always
    changes its size, and preparation reads every one anyway.
    """
    digest = hashlib.sha256()
    for path in sorted(Path(f) for f in metadata):
        digest.update(str(path.relative_to(root)).encode())
        digest.update(file_fingerprint(path).encode())
    for path in sorted(Path(f) for f in bulk):
        digest.update(f"{path.relative_to(root)}:{path.stat().st_size}".encode())
    return digest.hexdigest()


def read_image(path: Path, *, mode: str = "RGB", exif: bool = False) -> np.ndarray:
    """A PNG/JPEG as ``(H, W, 3) uint8`` (``mode="RGB"``) or its raw values (``mode=None``:
    palette indices, 16-bit depth); a corrupt file is a one-line error naming it."""
    from PIL import Image, ImageOps

    require(path, "an image file")
    try:
        with Image.open(path) as img:
            img.load()
            if exif:
                img = ImageOps.exif_transpose(img)
            if mode is not None and img.mode != mode:
                img = img.convert(mode)
            return np.asarray(img)
    except (OSError, ValueError) as exc:
        raise MidprobeError(f"cannot read image {path} ({exc}); expected a valid image file") from None


def as_uint16(array: np.ndarray) -> np.ndarray:
    """A 16-bit PNG's values as uint16, whichever mode Pillow opened it in.

    Pillow >= 10.3 opens 16-bit greyscale PNGs as mode ``I;16`` (uint16); older Pillow as
    mode ``I`` (int32), cast here when every value fits 16 bits. Anything else is returned
    unchanged, for the caller's dtype check to reject.
    """
    if array.dtype == np.int32 and (array.size == 0 or (array.min() >= 0 and array.max() <= 0xFFFF)):
        return array.astype(np.uint16)
    return array


def image_mode(path: Path) -> str:
    from PIL import Image

    with Image.open(path) as img:
        return img.mode


def resize(array: np.ndarray, size: tuple[int, int], *, nearest: bool = False, resample: str = "bilinear") -> np.ndarray:
    """Resize ``(H, W[, C])`` to ``size = (h, w)``: nearest for labels and depth, else ``resample``."""
    from PIL import Image

    h, w = size
    if array.shape[:2] == (h, w):
        return array
    method = Image.Resampling.NEAREST if nearest else getattr(Image.Resampling, resample.upper())
    if array.dtype == np.uint8:
        return np.asarray(Image.fromarray(array).resize((w, h), method))
    channels = array.reshape(*array.shape[:2], -1).astype(np.float32)
    planes = [np.asarray(Image.fromarray(channels[..., c], mode="F").resize((w, h), method)) for c in range(channels.shape[-1])]
    return np.stack(planes, axis=-1).reshape(h, w, *array.shape[2:]).astype(array.dtype)


class _NumpyOnly(pickle.Unpickler):
    """Unpickles containers, strings, numbers and numpy arrays; any other global is refused."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in self.ALLOWED or (module == "numpy.dtypes" and name.endswith("DType")):
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}")


def load_numpy_pickle(path: Path) -> Any:
    """A (gzip) pickle of numpy arrays and plain containers, never arbitrary objects."""
    require(path, "a pickle of numpy arrays")
    opener = gzip.open if path.suffix in (".pklz", ".gz") else open
    try:
        with opener(path, "rb") as handle:
            return _NumpyOnly(io.BufferedReader(handle)).load()
    except (OSError, EOFError, pickle.UnpicklingError, ValueError) as exc:
        raise MidprobeError(f"cannot read {path} ({exc}); expected a gzip pickle of numpy arrays") from None
