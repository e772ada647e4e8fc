"""Reading a dataset's original files: presence checks, fingerprints, images, safe unpickling.

Every reader here turns any failure to read or decode a file (truncated, corrupt, or of
the wrong type) into a one-line :class:`MidprobeError` naming the file and what it should
be: the libraries underneath (scipy, h5py, PIL, numpy, gzip, json, csv) raise dozens of
exception types, none of which a user should have to read a traceback for.
"""

from __future__ import annotations

import csv
import gzip
import hashlib
import io
import json
import threading
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable

import numpy as np

from cache import MidprobeError
from extract.safe_pickle import Refused, load_numpy

SMALL_FILE = 32 << 20     # files up to this size are hashed whole; larger ones by size and both ends
#: the largest image read, in megapixels (a 100 MP RGB image decodes to 300 MB, its float depth to 800 MB);
#: a larger one is refused from its header, before a pixel is decoded (docs/own-data.md)
MAX_MEGAPIXELS = 100
_BOMB_CHECK = threading.Lock()


def require(path: Path, what: str) -> Path:
    """``path`` if it exists; else a one-line error naming it and what it should be."""
    path = Path(path)
    if not path.exists():
        raise MidprobeError(f"missing {path}: expected {what}")
    return path


def _cannot_read(path: Path, exc: BaseException, what: str) -> MidprobeError:
    reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
    return MidprobeError(f"cannot read {path} ({type(exc).__name__}: {reason}); expected {what}")


def read_text(path: Path, what: str) -> str:
    """A text file's contents (UTF-8)."""
    require(path, what)
    try:
        return Path(path).read_text()
    except (OSError, ValueError) as exc:
        raise _cannot_read(path, exc, what) from None


def read_json(path: Path, what: str) -> Any:
    """A JSON file's contents."""
    text = read_text(path, what)
    try:
        return json.loads(text)
    except ValueError as exc:
        raise _cannot_read(path, exc, what) from None


def read_csv(path: Path, what: str) -> tuple[list[str], list[dict[str, Any]]]:
    """A CSV file's header and rows (as dicts; fields missing from a short row are ``None``)."""
    require(path, what)
    try:
        with open(path, newline="") as handle:
            reader = csv.DictReader(handle)
            rows = list(reader)
            return list(reader.fieldnames or []), rows
    except (OSError, ValueError, csv.Error) as exc:
        raise _cannot_read(path, exc, what) from None


def read_mat(path: Path, what: str) -> dict[str, Any]:
    """A MATLAB v5 ``.mat`` file's variables (scipy's ``loadmat``)."""
    from scipy.io import loadmat

    require(path, what)
    try:
        return loadmat(str(path))
    except Exception as exc:        # scipy raises many types for a damaged file (ValueError, zlib.error, ...)
        raise _cannot_read(path, exc, what) from None


def open_hdf5(path: Path, what: str) -> Any:
    """An HDF5 file (MATLAB v7.3 ``.mat`` included) opened for reading with h5py."""
    import h5py

    require(path, what)
    try:
        return h5py.File(str(path), "r")
    except Exception as exc:
        raise _cannot_read(path, exc, what) from None


def read_hdf5(h5: Any, key: str, index: int, *, path: Path) -> np.ndarray:
    """Item ``index`` (along the first axis) of dataset ``key`` of an open HDF5 file."""
    try:
        return np.asarray(h5[key][index])
    except Exception as exc:        # a truncated or corrupt file fails only when the bytes are read
        raise _cannot_read(path, exc, f"item {index} of {key!r} readable (the file looks damaged)") from None


def read_npz(path: Path, what: str) -> dict[str, np.ndarray]:
    """Every array of a ``.npz`` file, read now (a damaged member would otherwise fail later)."""
    require(path, what)
    try:
        with np.load(path, allow_pickle=False) as archive:
            return {key: archive[key] for key in archive.files}
    except Exception as exc:        # zipfile.BadZipFile, zlib.error, ValueError, EOFError, ...
        raise _cannot_read(path, exc, what) from None


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


@contextmanager
def open_image(path: Path):
    """``PIL.Image.open(path)``, refused (one line naming the file, its size and the limit) when
    its header says it is over :data:`MAX_MEGAPIXELS`: checked here, from the header, in place of
    PIL's decompression-bomb check (whose warning and error are tracebacks, at other limits)."""
    from PIL import Image

    with _BOMB_CHECK:                   # PIL's limit is a module global: off only while this header is read
        limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None
        try:
            img = Image.open(path)
        finally:
            Image.MAX_IMAGE_PIXELS = limit
    with img:
        width, height = img.size
        if width * height > MAX_MEGAPIXELS * 1e6:
            raise MidprobeError(f"image {path} is {width}x{height} ({width * height / 1e6:.0f} megapixels); expected "
                                f"at most {MAX_MEGAPIXELS} megapixels: downscale it first (SIZE= sets the stored "
                                "size, not the size read)")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            yield img


def read_image(path: Path, *, mode: str = "RGB", exif: bool = False) -> np.ndarray:
    """A PNG/JPEG as ``(H, W, 3) uint8`` (``mode="RGB"``) or its raw values (``mode=None``:
    palette indices, 16-bit depth); a corrupt file is a one-line error naming it."""
    from PIL import ImageOps

    require(path, "an image file")
    try:
        with open_image(path) as img:
            img.load()
            if exif:
                img = ImageOps.exif_transpose(img)
            if mode is not None and img.mode != mode:
                img = img.convert(mode)
            return np.asarray(img)
    except MidprobeError:
        raise
    except Exception as exc:        # PIL raises OSError, SyntaxError, ValueError, struct.error, ... for damaged files
        raise _cannot_read(path, exc, "a valid PNG or JPEG image") from None


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
    """The PIL mode of an image file (``P``, ``RGB``, ``I;16``, ...)."""

    require(path, "an image file")
    try:
        with open_image(path) as img:
            return img.mode
    except MidprobeError:
        raise
    except Exception as exc:
        raise _cannot_read(path, exc, "a valid PNG or JPEG image") from None


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


def load_numpy_pickle(path: Path) -> Any:
    """A (gzip) pickle of numpy arrays and plain containers, read by the restricted reader
    (:mod:`extract.safe_pickle`): an object array, a dtype whose pickled flags disagree with
    its type, or any global besides numpy's array reconstruction is a one-line error."""
    require(path, "a pickle of numpy arrays")
    opener = gzip.open if path.suffix in (".pklz", ".gz") else open
    try:
        with opener(path, "rb") as handle:
            return load_numpy(io.BufferedReader(handle))
    except Refused as exc:
        raise MidprobeError(f"cannot read {path} ({exc}); expected a gzip pickle of numpy arrays") from None
    except Exception as exc:        # truncated or corrupt: EOFError, zlib.error, gzip.BadGzipFile, UnpicklingError, ...
        raise _cannot_read(path, exc, "a gzip pickle of numpy arrays") from None
