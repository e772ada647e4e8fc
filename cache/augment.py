"""Augmented training views, deterministic: the paper's colour jitter and random resized crop.

The paper trains its probes on augmented images (midvision-probe @ 984b325,
``evals/datasets/utils.py``; ``configs/dataset/{nyu,navi}.yaml`` set ``augment_train: True``
and leave ``rotateflip`` False, so flips and rotations never run):

- ``paper-nyu`` (``get_nyu_transforms``, utils.py:184-216): ``ToTensor`` ->
  ``RandomApply([ColorJitter(0.2, 0.2, 0.2, 0.2)], p=0.8)`` -> ``Normalize``, then
  albumentations ``RandomResizedCrop(480, 480, scale=(0.5, 1.0), ratio=(1.0, 1.0), p=0.5,
  interpolation=0)`` on the image, depth and normals together (nearest, back to the input size;
  target values unchanged: depth is not rescaled, normals are not rotated).
- ``paper-navi`` (``get_navi_transforms``, utils.py:102-135): the jitter is inserted at
  ``transforms[-1]``, i.e. after ``Normalize`` and before ``CenterCrop``, so it acts on the
  ImageNet-normalised tensor, whose values torchvision's brightness / contrast / saturation
  blends clamp to [0, 1]. No geometric augmentation (the shared transform is the fixed resize
  to 512, already in the store).

A view is a pure function of ``(policy, seed, index, view)``: :func:`view_params` draws every
random number from ``numpy.random.default_rng([seed, index, view])`` (not torch's RNG, so the
draws are not the paper's; the transforms and their distributions are). The image side
(:func:`augment_image`, run before the model's own normalisation) and the target side
(:func:`augment_targets`) read the same parameters, so targets move with the image.
Differences from the paper: the jitter sees the stored crop, so ``adjust_contrast``'s grey
mean covers the stored 480 x 480 (NYU) / 512 x 512 object crop (NAVI) where the paper's covers
the 480 x 640 frame / the short-side-512 image; images come back as uint8 (at most half a grey
level off the paper's float tensor), or as float pixels from :func:`augment_pixels`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from cache.errors import MidprobeError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CROP_ATTEMPTS = 10          # albumentations' RandomResizedCrop tries 10 boxes, then falls back to the centre


@dataclass(frozen=True)
class Policy:
    """One augmentation recipe: colour jitter (torchvision ``ColorJitter`` strengths, applied with
    ``jitter_p``, on pixels or on ImageNet-normalised values) and a random resized crop
    (``crop_p``, area fraction ``crop_scale``, aspect ``crop_ratio``, nearest back to the input size)."""

    jitter_p: float
    jitter: tuple[float, float, float, float]          # brightness, contrast, saturation, hue
    jitter_on_normalised: bool = False
    crop_p: float = 0.0
    crop_scale: tuple[float, float] = (0.5, 1.0)
    crop_ratio: tuple[float, float] = (1.0, 1.0)


POLICIES: dict[str, Policy] = {
    "paper-nyu": Policy(jitter_p=0.8, jitter=(0.2, 0.2, 0.2, 0.2), crop_p=0.5),
    "paper-navi": Policy(jitter_p=0.8, jitter=(0.2, 0.2, 0.2, 0.2), jitter_on_normalised=True),
}


def get_policy(name: str) -> Policy:
    if name not in POLICIES:
        raise MidprobeError(f"unknown augmentation policy {name!r}; known: {', '.join(sorted(POLICIES))}")
    return POLICIES[name]


def view_params(policy: str, *, seed: int, index: int, view: int) -> dict[str, Any]:
    """The random draws of one augmented view of image ``index`` (JSON-able, a pure function).

    Keys: ``jitter`` (applied?), ``order`` (the four colour ops, 0 brightness, 1 contrast,
    2 saturation, 3 hue, as torchvision's ``randperm``), their factors, ``crop`` (applied?),
    ``crop_candidates`` (10 ``[area fraction, aspect]`` tries) and ``crop_y``/``crop_x`` in [0, 1)
    (where the box sits among its possible offsets); :func:`crop_box` turns them into pixels.
    """
    spec = get_policy(policy)
    for key, value in (("seed", seed), ("index", index), ("view", view)):
        if not isinstance(value, (int, np.integer)) or value < 0:
            raise MidprobeError(f"augmentation {key}={value!r}: expected a non-negative integer")
    rng = np.random.default_rng([int(seed), int(index), int(view)])
    b, c, s, h = spec.jitter
    params = {"policy": policy, "jitter": bool(rng.random() < spec.jitter_p), "order": rng.permutation(4).tolist(),
              "brightness": float(rng.uniform(max(0.0, 1 - b), 1 + b)),
              "contrast": float(rng.uniform(max(0.0, 1 - c), 1 + c)),
              "saturation": float(rng.uniform(max(0.0, 1 - s), 1 + s)), "hue": float(rng.uniform(-h, h))}
    log_ratio = np.log(spec.crop_ratio)
    params.update({"crop": bool(rng.random() < spec.crop_p),
                   "crop_candidates": [[float(rng.uniform(*spec.crop_scale)), float(np.exp(rng.uniform(*log_ratio)))]
                                       for _ in range(CROP_ATTEMPTS)],
                   "crop_y": float(rng.random()), "crop_x": float(rng.random())})
    return params


def crop_box(params: Mapping[str, Any], height: int, width: int) -> tuple[int, int, int, int] | None:
    """``(top, left, h, w)`` of the view's crop in an image of ``height x width``, or None.

    albumentations' ``RandomResizedCrop``: the first candidate whose box
    ``round(sqrt(area * aspect)) x round(sqrt(area / aspect))`` fits, at a uniform integer
    offset; if none fits, the largest centred box within the aspect range.
    """
    if not params["crop"]:
        return None
    for scale, ratio in params["crop_candidates"]:
        area = scale * height * width
        w, h = int(round(math.sqrt(area * ratio))), int(round(math.sqrt(area / ratio)))
        if 0 < w <= width and 0 < h <= height:
            top = min(int(params["crop_y"] * (height - h + 1)), height - h)
            left = min(int(params["crop_x"] * (width - w + 1)), width - w)
            return top, left, h, w
    low, high = get_policy(params["policy"]).crop_ratio
    if width / height < low:
        w, h = width, int(round(width / low))
    elif width / height > high:
        w, h = int(round(height * high)), height
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def _nearest_index(source: int, size: int) -> np.ndarray:
    """OpenCV's ``INTER_NEAREST`` source index of each of ``size`` outputs from ``source`` inputs:
    ``min(floor(i / (out / in)), in - 1)``, in doubles."""
    return np.minimum(np.floor(np.arange(size) * (1.0 / (size / source))).astype(np.int64), source - 1)


def nearest_resize(array: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """``(H, W[, C])`` -> ``size = (h, w)`` by OpenCV's ``INTER_NEAREST`` (what albumentations'
    ``interpolation=0`` runs)."""
    h, w = array.shape[:2]
    if (h, w) == tuple(size):
        return array
    return array[_nearest_index(h, size[0])[:, None], _nearest_index(w, size[1])[None, :]]


def crop_index(params: Mapping[str, Any], height: int, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The view's crop of a ``height x width`` target as source ``(rows (height,), cols (width,))``
    int64 indices — ``target[rows[:, None], cols[None, :]]`` is :func:`augment_targets`' crop, for
    numpy arrays and (with the indices as tensors) for tensors on any device — or None (no crop)."""
    box = crop_box(params, height, width)
    if box is None:
        return None
    top, left, h, w = box
    return top + _nearest_index(h, height), left + _nearest_index(w, width)


def _crop(array: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    box = crop_box(params, *array.shape[:2])
    if box is None:
        return array
    top, left, h, w = box
    return nearest_resize(array[top:top + h, left:left + w], array.shape[:2])


def _jitter(x: Any, params: Mapping[str, Any]) -> Any:
    """torchvision's ``ColorJitter.forward`` with these factors, on a ``(3, H, W)`` float tensor."""
    import torchvision.transforms.functional as F

    ops = (lambda t: F.adjust_brightness(t, params["brightness"]), lambda t: F.adjust_contrast(t, params["contrast"]),
           lambda t: F.adjust_saturation(t, params["saturation"]), lambda t: F.adjust_hue(t, params["hue"]))
    for op in params["order"]:
        x = ops[op](x)
    return x


def augment_pixels(image: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """``(H, W, 3) uint8`` -> the augmented view as ``(H, W, 3) float32`` pixels (1 = white),
    before any model normalisation: jitter (if drawn) then crop (if drawn)."""
    import torch

    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise MidprobeError(f"augment: expected an (H, W, 3) uint8 image, got {image.dtype} {image.shape}")
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1).float() / 255.0
    if params["jitter"]:
        if get_policy(params["policy"]).jitter_on_normalised:
            mean, std = (torch.tensor(v).view(3, 1, 1) for v in (IMAGENET_MEAN, IMAGENET_STD))
            x = _jitter((x - mean) / std, params) * std + mean
        else:
            x = _jitter(x, params)
    return _crop(x.permute(1, 2, 0).numpy(), params).astype(np.float32)


def augment_image(image: np.ndarray, params: Mapping[str, Any]) -> np.ndarray:
    """``(H, W, 3) uint8`` -> the augmented view, ``(H, W, 3) uint8`` (rounded :func:`augment_pixels`)."""
    return np.clip(np.rint(augment_pixels(image, params) * 255.0), 0, 255).astype(np.uint8)


def augment_targets(targets: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Per-image targets ``{key: (H, W[, C])}`` moved with the image: the crop (nearest, values
    unchanged, as albumentations moves the paper's depth and normals); colour jitter never applies."""
    return {key: _crop(np.asarray(value), params) for key, value in targets.items()}
