"""The views the synthetic dataset is made of: single images, correspondence pairs, 2AFC triplets.

Each item is a pure function of ``(seed, kind, index)``, so the dataset is identical
whatever the number of worker processes.
"""

from __future__ import annotations

import numpy as np

from cache.camera import project, relative_rotation_deg, unproject
from extract.datasets.synthetic.raycast import cast
from extract.datasets.synthetic.render import render, rays_through
from extract.datasets.synthetic.scene import (Camera, Scene, nudged_camera, orbit_camera, random_camera,
                                              random_scene, relayout, retextured)

KIND_IDS = {"train": 0, "test": 1, "pairs": 2, "triplets": 3}
MAX_MATCHES = 1000


def single_view(seed: int, split: str, index: int, size: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng([seed, KIND_IDS[split], index])
    scene = random_scene(rng)
    camera, _ = random_camera(scene, rng, size, size)
    return [render(scene, camera, size, size)]


def visible_matches(scene: Scene, a: dict[str, np.ndarray], cam_b: Camera, rng: np.random.Generator,
                    max_matches: int = MAX_MATCHES) -> np.ndarray:
    """Ground-truth correspondences ``(M, 4)`` = (u_a, v_a, u_b, v_b), M <= ``max_matches``.

    Source points are pixel centres of view A; each is back-projected with A's depth and
    pose and projected into B. A point counts only if it lands inside B and the exact ray
    from B's centre through that sub-pixel position hits it first (occlusion check).
    """
    height, width = a["depth"].shape
    v, u = np.mgrid[0:height, 0:width]
    uv = np.stack([u.ravel(), v.ravel()], axis=1).astype(np.float64)
    uv = uv[rng.permutation(len(uv))[: max_matches * 8]]
    depth = a["depth"][uv[:, 1].astype(int), uv[:, 0].astype(int)].astype(np.float64)
    world = unproject(uv, depth, a["K"], a["pose"])
    uv_b, z_b = project(world, cam_b.K, cam_b.pose)
    inside = (z_b > 0) & (uv_b[:, 0] >= 0) & (uv_b[:, 0] <= width - 1) & (uv_b[:, 1] >= 0) & (uv_b[:, 1] <= height - 1)
    uv, uv_b, z_b = uv[inside], uv_b[inside], z_b[inside]
    origin, directions = rays_through(cam_b, uv_b)
    first = cast(scene, origin, directions).t
    # float32 depth storage limits the back-projection to ~1e-6 relative
    visible = np.abs(first - z_b) < 1e-4 * z_b + 1e-5
    matches = np.concatenate([uv[visible], uv_b[visible]], axis=1)[:max_matches]
    return matches.astype(np.float32)


def pair_views(seed: int, index: int, size: int) -> tuple[list[dict[str, np.ndarray]], float, np.ndarray]:
    """Two views of one scene, B orbiting A's target by 0-120 degrees; their rotation and matches."""
    rng = np.random.default_rng([seed, KIND_IDS["pairs"], index])
    while True:
        scene = random_scene(rng)
        cam_a, target = random_camera(scene, rng, size, size)
        for _ in range(30):
            cam_b = orbit_camera(cam_a, target, float(rng.uniform(0.0, 120.0)) * rng.choice([-1, 1]), scene)
            if cam_b is not None:
                break
        if cam_b is not None:
            break
    view_a, view_b = render(scene, cam_a, size, size), render(scene, cam_b, size, size)
    matches = visible_matches(scene, view_a, cam_b, rng)
    # the stored pose is float32: measure the rotation on what is stored
    return [view_a, view_b], relative_rotation_deg(view_a["pose"], view_b["pose"]), matches


def triplet_views(seed: int, index: int, size: int) -> tuple[list[dict[str, np.ndarray]], int]:
    """A 2AFC triplet (reference, candidate 0, candidate 1) and which candidate is closer.

    The closer candidate keeps the reference's 3-D layout (slightly moved camera, new
    textures and lighting); the other keeps textures and lighting but not the layout.
    """
    rng = np.random.default_rng([seed, KIND_IDS["triplets"], index])
    scene = random_scene(rng)
    camera, target = random_camera(scene, rng, size, size)
    reference = render(scene, camera, size, size)
    same_layout = render(retextured(scene, rng), nudged_camera(camera, target, rng, scene), size, size)
    same_look = render(relayout(scene, rng), camera, size, size)
    answer = int(rng.integers(2))
    candidates = [same_layout, same_look] if answer == 0 else [same_look, same_layout]
    return [reference, *candidates], answer
