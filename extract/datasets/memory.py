"""Refusing an output size that cannot fit in memory, before a pixel is allocated.

A store's images are built one at a time, but one image at ``SIZE=100000`` is 30 GB of RGB
alone: such a size is a one-line error naming what it would need and what is available,
never an out-of-memory kill (``CHECK=1`` included, which writes nothing but builds every image).
"""

from __future__ import annotations

import torch

from cache import MidprobeError

#: peak bytes per output pixel while one image and its targets are built: RGB (3) + depth (4) +
#: normals (12) + mask (1), their float32 resize planes and float64 reading copies, rounded up
BYTES_PER_PIXEL = 64


def check_fits(height: int, width: int, *, what: str, copies: int = 1) -> None:
    """A one-line error when ``copies`` images of ``height x width`` pixels (one per worker) need
    more than the available RAM."""
    from cache.loader import available_memory, format_bytes

    need = height * width * BYTES_PER_PIXEL * max(1, copies)
    free, kind = available_memory(torch.device("cpu"))
    if need > free:
        per = f" ({copies} workers)" if copies > 1 else ""
        raise MidprobeError(f"{what} {height}x{width}: building an image needs ~{format_bytes(need)}{per} "
                            f"(~{BYTES_PER_PIXEL} bytes per pixel), {format_bytes(free)} of {kind}; expected a "
                            "smaller SIZE= (e.g. 224 or 480x640)")
