"""Deterministic augmented views: the paper's colour jitter and random resized crop, image and targets alike."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from cache import MidprobeError
from cache.augment import IMAGENET_MEAN, IMAGENET_STD, augment_image, augment_pixels, augment_targets, crop_box, view_params


def _image(h: int = 48, w: int = 64) -> np.ndarray:
    """Red carries the column index, green the row, blue a checker: every crop and colour change shows."""
    rows, cols = np.mgrid[0:h, 0:w]
    return np.stack([cols * 3 + 20, rows * 3 + 10, 60 + 80 * ((rows // 8 + cols // 8) % 2)], axis=-1).astype(np.uint8)


def _find(policy: str, **want) -> dict:
    """The first view (seed 0, image 0) whose draws have the wanted ``jitter`` / ``crop`` flags."""
    for view in range(200):
        params = view_params(policy, seed=0, index=0, view=view)
        if all(params[k] == v for k, v in want.items()):
            return params
    raise AssertionError(f"no view with {want}")


def test_views_are_a_pure_function_of_seed_index_and_view():
    image = _image()
    first = view_params("paper-nyu", seed=3, index=7, view=1)
    assert view_params("paper-nyu", seed=3, index=7, view=1) == first
    assert json.loads(json.dumps(first)) == first                     # recordable as it is
    np.testing.assert_array_equal(augment_image(image, first), augment_image(image, dict(first)))
    others = [view_params("paper-nyu", seed=s, index=i, view=v) for s, i, v in ((3, 7, 2), (4, 7, 1), (3, 8, 1))]
    assert all(o != first for o in others)
    outs = [augment_image(image, view_params("paper-nyu", seed=0, index=0, view=v)) for v in range(6)]
    assert len({o.tobytes() for o in outs}) == 6                      # different views differ
    draws = [view_params("paper-nyu", seed=0, index=i, view=0) for i in range(2000)]
    assert 0.77 < np.mean([d["jitter"] for d in draws]) < 0.83        # p = 0.8
    assert 0.47 < np.mean([d["crop"] for d in draws]) < 0.53          # p = 0.5
    assert all(0.8 <= d["brightness"] <= 1.2 and -0.2 <= d["hue"] <= 0.2 for d in draws)
    with pytest.raises(MidprobeError, match="unknown augmentation policy 'paper-voc'"):
        view_params("paper-voc", seed=0, index=0, view=0)
    with pytest.raises(MidprobeError, match="augmentation seed=-1: expected a non-negative integer"):
        view_params("paper-nyu", seed=-1, index=0, view=0)


@pytest.mark.parametrize("policy", ["paper-nyu", "paper-navi"])
def test_without_the_p_draws_the_view_is_the_image(policy):
    image = _image()
    params = {**view_params(policy, seed=0, index=0, view=0), "jitter": False, "crop": False}
    np.testing.assert_array_equal(augment_image(image, params), image)
    targets = {"depth": np.random.default_rng(0).random((48, 64)).astype(np.float32)}
    np.testing.assert_array_equal(augment_targets(targets, params)["depth"], targets["depth"])


def test_colour_jitter_is_torchvisions_color_jitter_and_never_touches_targets(monkeypatch):
    import torchvision.transforms as T

    image = _image()
    params = _find("paper-nyu", jitter=True, crop=False)
    ours = augment_pixels(image, params)
    # torchvision's own module, its draw replaced by this view's
    draw = (torch.tensor(params["order"]), params["brightness"], params["contrast"], params["saturation"], params["hue"])
    monkeypatch.setattr(T.ColorJitter, "get_params", staticmethod(lambda *args: draw))
    theirs = T.ColorJitter(0.2, 0.2, 0.2, 0.2)(torch.from_numpy(image).permute(2, 0, 1).float() / 255)
    np.testing.assert_allclose(ours, theirs.permute(1, 2, 0).numpy(), rtol=0, atol=1e-6)
    assert np.abs(augment_image(image, params).astype(int) - image).max() > 3
    targets = {"depth": np.linspace(0.5, 3, 48 * 64, dtype=np.float32).reshape(48, 64),
               "normals": np.tile(np.float32([0, 0, -1]), (48, 64, 1)), "foreground": np.ones((48, 64), np.uint8)}
    for key, value in augment_targets(targets, params).items():
        np.testing.assert_array_equal(value, targets[key])


def test_navi_jitter_acts_on_imagenet_normalised_values_clamped_to_0_1():
    image = _image()
    params = _find("paper-navi", jitter=True)
    assert not any(view_params("paper-navi", seed=0, index=i, view=0)["crop"] for i in range(100))  # no crop
    pixels = augment_pixels(image, params)
    normalised = (pixels - np.float32(IMAGENET_MEAN)) / np.float32(IMAGENET_STD)
    # the paper's blends clamp the normalised tensor to [0, 1]: every pixel ends between mean and mean + std
    assert normalised.min() >= -1e-5 and normalised.max() <= 1 + 1e-5
    assert (np.abs(normalised) < 1e-5).mean() > 0.3                    # the dark half is clamped to the mean
    plain = augment_pixels(image, {**params, "policy": "paper-nyu", "crop": False})
    assert np.abs(plain - pixels).max() > 0.1                          # not the same as jitter on pixels


def test_the_crop_moves_targets_with_the_image():
    image = _image(64, 64)                  # square, as NYU's 480 x 480: the first candidate box always fits
    params = _find("paper-nyu", jitter=False, crop=True)
    top, left, h, w = crop_box(params, 64, 64)
    assert 0 <= top <= 64 - h and 0 <= left <= 64 - w
    # square crops (aspect 1) of 50-100 % of the area: side = round(sqrt(area fraction) * 64)
    side = round(np.sqrt(params["crop_candidates"][0][0]) * 64)
    assert (h, w) == (side, side) and 45 <= side <= 64
    depth = np.tile(np.arange(64, dtype=np.float32), (64, 1))         # a ramp: depth = column index
    out = augment_targets({"depth": depth, "normals": np.dstack([depth] * 3)}, params)
    view = augment_image(image, params)
    assert view.shape == image.shape and out["depth"].shape == depth.shape
    # the known ramp: output column j shows source column left + floor(j * w / 64), nearest, values unchanged
    expected = left + np.floor(np.arange(64) * (w / 64))
    np.testing.assert_array_equal(out["depth"], np.tile(expected, (64, 1)))
    np.testing.assert_array_equal(out["normals"][..., 2], out["depth"])
    np.testing.assert_array_equal(view[..., 0], out["depth"] * 3 + 20)     # the image's red ramp moved alike
    np.testing.assert_array_equal(view[:, 0, 1], (top + np.floor(np.arange(64) * (h / 64))) * 3 + 10)


def test_a_crop_that_never_fits_falls_back_to_the_centre():
    params = {**view_params("paper-nyu", seed=0, index=0, view=0), "crop": True,
              "crop_candidates": [[1.0, 1.0]] * 10}
    # a full-area square cannot fit a 48 x 64 image: the largest centred square does
    assert crop_box(params, 48, 64) == (0, 8, 48, 48)
    assert crop_box(params, 48, 48) == (0, 0, 48, 48)
