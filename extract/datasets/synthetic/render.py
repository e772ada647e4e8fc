"""Render one view: RGB with Lambertian shading and cast shadows, plus exact geometry."""

from __future__ import annotations

import numpy as np

from extract.datasets.synthetic.raycast import cast, occluded
from extract.datasets.synthetic.scene import Camera, Scene, Texture


def _value_noise(points: np.ndarray, seed: int) -> np.ndarray:
    """Smooth 3-D value noise in [0, 1] at ``points (M, 3)`` (lattice spacing 1)."""
    base = np.floor(points)
    frac = points - base
    frac = frac * frac * (3 - 2 * frac)
    corner = base.astype(np.int64)
    out = np.zeros(len(points))
    for dx in (0, 1):
        for dy in (0, 1):
            for dz in (0, 1):
                h = (corner[:, 0] + dx) * 73856093 ^ (corner[:, 1] + dy) * 19349663 ^ (corner[:, 2] + dz) * 83492791
                h = (h ^ seed) * 2654435761 % 4294967296
                value = (h % 1024) / 1023.0
                w = ((frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                     * (frac[:, 2] if dz else 1 - frac[:, 2]))
                out += w * value
    return out


def shade_texture(texture: Texture, points: np.ndarray) -> np.ndarray:
    """Albedo ``(M, 3)`` of a solid texture at surface-frame points ``(M, 3)``."""
    a, b = np.asarray(texture.colour_a), np.asarray(texture.colour_b)
    if texture.kind == "flat":
        return np.broadcast_to(a, points.shape).copy()
    if texture.kind == "stripes":
        mix = (np.sin(2 * np.pi * texture.frequency * points @ np.asarray(texture.direction) + texture.phase) > 0)
        mix = mix.astype(np.float64)
    elif texture.kind == "checks":
        cells = np.floor(points * texture.frequency).astype(np.int64).sum(axis=1)
        mix = (cells % 2).astype(np.float64)
    else:
        mix = _value_noise(points * texture.frequency, texture.seed)
    return a * (1 - mix[:, None]) + b * mix[:, None]


def camera_rays(camera: Camera, height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """World origin ``(3,)`` and directions ``(H*W, 3)`` whose camera-frame z is 1 (t = z-depth)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float64)
    return rays_through(camera, np.stack([u.ravel(), v.ravel()], axis=1))


def rays_through(camera: Camera, uv: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rays through sub-pixel positions ``uv (M, 2)``; directions scaled to camera-frame z = 1."""
    K = camera.K
    cam = np.stack([(uv[:, 0] - K[0, 2]) / K[0, 0], (uv[:, 1] - K[1, 2]) / K[1, 1], np.ones(len(uv))], axis=1)
    return camera.pose[:3, 3].copy(), cam @ camera.pose[:3, :3].T


def render(scene: Scene, camera: Camera, height: int, width: int) -> dict[str, np.ndarray]:
    """One view of ``scene``.

    Returns ``rgb (H, W, 3) uint8``, ``depth (H, W) float32`` z-depth in metres,
    ``normals (H, W, 3) float32`` unit vectors in the camera frame, ``instance (H, W) int32``
    (0 = room), ``foreground (H, W) uint8``, ``K (3, 3)`` and ``pose (4, 4)`` float32.
    """
    origin, directions = camera_rays(camera, height, width)
    hits = cast(scene, origin, directions)
    albedo = np.zeros_like(hits.points)
    for face, texture in enumerate(scene.room_textures):
        sel = (hits.instance == 0) & (hits.face == face)
        if sel.any():
            albedo[sel] = shade_texture(texture, hits.points[sel])
    for k, (obj, texture) in enumerate(zip(scene.objects, scene.object_textures), start=1):
        sel = hits.instance == k
        if sel.any():
            local = (hits.points[sel] - np.asarray(obj.centre)) @ np.asarray(obj.rotation)
            albedo[sel] = shade_texture(texture, local)
    light = np.asarray(scene.light)
    lambert = np.clip(hits.normals @ light, 0.0, None)
    lit = lambert > 0
    shadow = np.zeros(len(lambert), dtype=bool)
    if lit.any():
        start = hits.points[lit] + 1e-6 * hits.normals[lit]
        shadow[lit] = occluded(scene, start, light)
    intensity = scene.ambient + (1 - scene.ambient) * lambert * ~shadow
    rgb = np.clip(albedo * intensity[:, None], 0.0, 1.0)
    normals_cam = hits.normals @ camera.pose[:3, :3]
    return {
        "rgb": np.round(rgb * 255).astype(np.uint8).reshape(height, width, 3),
        "depth": hits.t.astype(np.float32).reshape(height, width),
        "normals": normals_cam.astype(np.float32).reshape(height, width, 3),
        "instance": hits.instance.reshape(height, width),
        "foreground": (hits.instance > 0).astype(np.uint8).reshape(height, width),
        "K": camera.K.astype(np.float32),
        "pose": camera.pose.astype(np.float32),
    }
