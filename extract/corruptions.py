"""Seeded image corruptions applied to evaluation images before the backbone (robustness studies).

ImageNet-C's corruptions (Hendrycks & Dietterich, ICLR 2019) come from the ``imagecorruptions``
module — ImageNet-C's code packaged by Michaelis et al. (2019) — as distributed by the maintained
``imagecorruptions-imaug`` release: the original ``imagecorruptions`` 1.1.2 (2020) no longer imports
(``pkg_resources``) nor runs ``fog`` (``np.float_``) under numpy 2. ``occlusion`` (missing data) is
midprobe's own. Severities are ImageNet-C's 1–5; severity 0 is the clean image.

Every corruption is a pure function of ``(name, severity, seed, image index)``: the library draws
from numpy's global RNG, so each image runs with that RNG seeded from those four values, under a
lock, and the caller's RNG state is restored afterwards.
"""

from __future__ import annotations

import hashlib
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from cache import MidprobeError
from protocols import canonical_corruption, corruption_list, corruption_parts

#: The distribution providing ImageNet-C's corruptions (the ``corrupt`` extra of pyproject.toml).
LIBRARY = "imagecorruptions-imaug"
#: Covered area fraction of ``occlusion`` at severities 1–5.
OCCLUSION_FRACTIONS = (0.1, 0.2, 0.3, 0.4, 0.5)
#: Images smaller than this are refused by ImageNet-C's implementations.
MIN_SIDE = 32

_RNG_LOCK = threading.Lock()


@dataclass(frozen=True)
class Corruption:
    """One registered corruption: ``apply(image (H, W, 3) uint8, severity 1-5, seed) -> (H, W, 3) uint8``;
    ``library`` the distribution implementing it (``"midprobe"`` for our own)."""

    name: str
    what: str
    library: str
    apply: Callable[[np.ndarray, int, int], np.ndarray]


CORRUPTIONS: dict[str, Corruption] = {}


def register(corruption: Corruption) -> Corruption:
    CORRUPTIONS[corruption.name] = corruption
    return corruption


def _imagenet_c(name: str) -> Callable[[np.ndarray, int, int], np.ndarray]:
    def apply(image: np.ndarray, severity: int, seed: int) -> np.ndarray:
        try:
            from imagecorruptions import corrupt
        except ImportError:
            raise MidprobeError(f"corruption {name!r} needs the {LIBRARY} package: pip install -e '.[corrupt]' "
                                "(or make setup)") from None
        with _RNG_LOCK:
            state = np.random.get_state()
            np.random.seed(seed)
            try:
                return corrupt(image, severity=severity, corruption_name=name)
            finally:
                np.random.set_state(state)
    return apply


for _name, _what in (("gaussian_noise", "additive Gaussian noise"), ("shot_noise", "Poisson (shot) noise"),
                     ("defocus_blur", "disk-kernel defocus blur"), ("motion_blur", "motion blur at a random angle"),
                     ("brightness", "brightness raised in HSV value"), ("contrast", "contrast lowered about the mean"),
                     ("fog", "plasma-fractal fog"), ("jpeg_compression", "JPEG at low quality"),
                     ("pixelate", "box-downsampled then nearest-upsampled")):
    register(Corruption(_name, f"ImageNet-C {_what}", LIBRARY, _imagenet_c(_name)))


def occlude(image: np.ndarray, severity: int, seed: int) -> np.ndarray:
    """Missing data: rectangles of the image's mean colour, each side uniform in [1/8, 1/3] of the
    image's, placed uniformly, added until at least ``OCCLUSION_FRACTIONS[severity - 1]`` of the
    pixels are covered (the last one may overshoot)."""
    height, width = image.shape[:2]
    rng = np.random.default_rng(seed)
    covered = np.zeros((height, width), bool)
    want = OCCLUSION_FRACTIONS[severity - 1] * height * width
    while covered.sum() < want:
        h = int(rng.integers(max(1, height // 8), max(2, height // 3) + 1))
        w = int(rng.integers(max(1, width // 8), max(2, width // 3) + 1))
        top, left = int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1))
        covered[top:top + h, left:left + w] = True
    out = image.copy()
    out[covered] = np.round(image.reshape(-1, 3).mean(axis=0)).astype(np.uint8)
    return out


register(Corruption("occlusion", "missing data: rectangles of the image's mean colour covering 10-50 % of it",
                    "midprobe", occlude))


@dataclass(frozen=True)
class CorruptionSpec:
    """A corruption at one severity with one seed; ``canonical`` is how choices and records name it."""

    name: str
    severity: int
    seed: int = 0

    @property
    def canonical(self) -> str:
        return canonical_corruption(f"{self.name}:{self.severity}:{self.seed}")

    def fingerprint(self) -> dict[str, Any]:
        """What a corrupted feature split records: the corruption, its seed, and the library and version."""
        library = CORRUPTIONS[self.name].library
        return {"name": self.name, "severity": self.severity, "seed": self.seed, "library": library,
                "version": _version(library)}


def _version(library: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(library)
    except PackageNotFoundError:
        return "not installed"


def parse_corruption(text: str) -> CorruptionSpec | None:
    """``"<name>:<severity>[:<seed>]"`` -> a :class:`CorruptionSpec`; ``""`` or ``"none"`` -> ``None`` (clean).

    A bad name, severity or seed is a one-line error listing what is accepted.
    """
    parts = corruption_parts(text)
    if parts is None:
        return None
    if parts[0] not in CORRUPTIONS:
        raise MidprobeError(f"unknown corruption {parts[0]!r}; known: {', '.join(CORRUPTIONS)}")
    return CorruptionSpec(*parts)


def parse_list(text: str | None) -> list[str]:
    """A comma-separated list of corruptions as canonical names (checked against the registry), in
    order, without repeats or clean entries."""
    names = corruption_list(text)
    for name in names:
        parse_corruption(name)
    return names


def image_seed(spec: CorruptionSpec, index: int) -> int:
    """The 32-bit seed of image ``index`` of a split under ``spec``."""
    key = f"{spec.name}|{spec.severity}|{spec.seed}|{index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:4], "little")


def corrupt_images(images: np.ndarray, spec: CorruptionSpec | str, indices: np.ndarray) -> np.ndarray:
    """``(n, H, W, 3) uint8`` images -> the same corrupted; ``indices`` ``(n,)`` are the images' indices
    in their split (each image's draws depend only on the corruption, its seed and that index).
    Severity 0 returns the images unchanged."""
    spec = parse_corruption(spec) if isinstance(spec, str) else spec
    if spec is None or spec.severity == 0:
        return images
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
        raise MidprobeError(f"corruptions take (n, H, W, 3) uint8 images, got {images.shape} {images.dtype}")
    if min(images.shape[1:3]) < MIN_SIDE:
        raise MidprobeError(f"corruption {spec.canonical!r} needs images of at least {MIN_SIDE}x{MIN_SIDE} px, "
                            f"the split's are {images.shape[1]}x{images.shape[2]}")
    apply = CORRUPTIONS[spec.name].apply
    out = np.empty_like(images)
    for j, (image, index) in enumerate(zip(images, indices)):
        out[j] = apply(np.ascontiguousarray(image), spec.severity, image_seed(spec, int(index)))
    return out
