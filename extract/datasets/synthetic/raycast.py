"""Exact analytic ray intersections, vectorised over rays with numpy (float64).

Rays are ``origin (3,)`` plus ``directions (P, 3)``; directions need not be unit, and
every ``t`` is in units of the direction's length (with camera rays whose camera-frame
z component is 1, ``t`` is the z-depth).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from extract.datasets.synthetic.scene import Primitive, Scene

EPS = 1e-9


def _intersect_local(obj: Primitive, o: np.ndarray, d: np.ndarray, t_min: float) -> np.ndarray:
    """Nearest ``t > t_min`` of rays ``o + t d`` given in ``obj``'s local frame (inf on a miss).

    ``o`` and ``d`` are ``(P, 3)`` or broadcast to it.
    """
    o, d = np.broadcast_arrays(o, d)
    inf = np.full(len(d), np.inf)
    if obj.shape == "sphere":
        r = obj.size[0]
        a = np.einsum("ij,ij->i", d, d)
        b = 2 * np.einsum("ij,ij->i", d, o)
        c = np.einsum("ij,ij->i", o, o) - r * r
        disc = b * b - 4 * a * c
        root = np.sqrt(np.maximum(disc, 0))
        t0, t1 = (-b - root) / (2 * a), (-b + root) / (2 * a)
        t = np.where(t0 > t_min, t0, np.where(t1 > t_min, t1, np.inf))
        return np.where(disc >= 0, t, inf)
    if obj.shape == "box":
        h = np.asarray(obj.size)
        inv = 1.0 / np.where(np.abs(d) < EPS, EPS, d)
        t1, t2 = (-h - o) * inv, (h - o) * inv
        near = np.minimum(t1, t2).max(axis=1)
        far = np.maximum(t1, t2).min(axis=1)
        t = np.where(near > t_min, near, far)
        return np.where((far >= near) & (t > t_min), t, inf)
    # capped cylinder along local z
    r, half = obj.size[0], obj.size[2]
    a = d[:, 0] ** 2 + d[:, 1] ** 2
    b = 2 * (o[:, 0] * d[:, 0] + o[:, 1] * d[:, 1])
    c = o[:, 0] ** 2 + o[:, 1] ** 2 - r * r
    disc = b * b - 4 * a * c
    root = np.sqrt(np.maximum(disc, 0))
    best = inf.copy()
    safe_a = np.where(a < EPS, EPS, a)
    for sign in (-1.0, 1.0):
        ts = (-b + sign * root) / (2 * safe_a)
        z = o[:, 2] + ts * d[:, 2]
        ok = (disc >= 0) & (a >= EPS) & (ts > t_min) & (np.abs(z) <= half)
        best = np.where(ok & (ts < best), ts, best)
    dz = np.where(np.abs(d[:, 2]) < EPS, EPS, d[:, 2])
    for cap in (-half, half):
        tc = (cap - o[:, 2]) / dz
        x, y = o[:, 0] + tc * d[:, 0], o[:, 1] + tc * d[:, 1]
        ok = (tc > t_min) & (x * x + y * y <= r * r)
        best = np.where(ok & (tc < best), tc, best)
    return best


def intersect(obj: Primitive, origins: np.ndarray, directions: np.ndarray, t_min: float = 1e-6) -> np.ndarray:
    """Nearest hit distance ``(P,)`` with ``t > t_min`` (inf where the ray misses).

    ``origins`` is one ``(3,)`` origin or one per ray ``(P, 3)``; ``directions`` ``(P, 3)`` or ``(3,)``.
    """
    rotation = np.asarray(obj.rotation)
    o = (np.atleast_2d(origins) - np.asarray(obj.centre)) @ rotation      # rows: R^T (o - c)
    d = np.atleast_2d(directions) @ rotation
    return _intersect_local(obj, o, d, t_min)


def normal_at(obj: Primitive, points: np.ndarray) -> np.ndarray:
    """Outward unit normals ``(M, 3)`` (world frame) at surface points ``(M, 3)`` of ``obj``."""
    rotation = np.asarray(obj.rotation)
    local = (points - np.asarray(obj.centre)) @ rotation
    if obj.shape == "sphere":
        n = local
    elif obj.shape == "box":
        scaled = np.abs(local) / np.asarray(obj.size)
        axis = scaled.argmax(axis=1)
        n = np.zeros_like(local)
        n[np.arange(len(local)), axis] = np.sign(local[np.arange(len(local)), axis])
    else:
        r, half = obj.size[0], obj.size[2]
        on_cap = np.abs(np.abs(local[:, 2]) - half) < 1e-7 * max(1.0, half) + 1e-9
        side_dist = np.abs(np.hypot(local[:, 0], local[:, 1]) - r)
        cap_dist = np.abs(np.abs(local[:, 2]) - half)
        on_cap = on_cap | (cap_dist < side_dist)
        n = np.where(on_cap[:, None], np.stack([0 * local[:, 0], 0 * local[:, 1], np.sign(local[:, 2])], 1),
                     np.stack([local[:, 0], local[:, 1], 0 * local[:, 2]], 1))
    n = n @ rotation.T
    return n / np.linalg.norm(n, axis=1, keepdims=True)


def room_exit(scene: Scene, origin: np.ndarray, directions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where rays from inside the room meet its walls: ``t (P,)``, face id ``(P,)`` and inward normals."""
    rx, ry, rz = scene.room
    lo, hi = np.array([-rx, 0.0, -rz]), np.array([rx, ry, rz])
    with np.errstate(divide="ignore", invalid="ignore"):
        d = np.where(np.abs(directions) < EPS, EPS, directions)
        t_axes = np.maximum((lo - origin) / d, (hi - origin) / d)
    axis = t_axes.argmin(axis=1)
    t = t_axes[np.arange(len(d)), axis]
    positive = d[np.arange(len(d)), axis] > 0
    face = axis * 2 + positive                       # 0:-x 1:+x 2:floor 3:ceiling 4:-z 5:+z
    normals = np.zeros_like(directions)
    normals[np.arange(len(d)), axis] = np.where(positive, -1.0, 1.0)
    return t, face, normals


@dataclass
class Hits:
    t: np.ndarray          # (P,) hit distance
    instance: np.ndarray   # (P,) 0 = room, k = object k-1
    face: np.ndarray       # (P,) room face id where instance == 0
    points: np.ndarray     # (P, 3) world
    normals: np.ndarray    # (P, 3) world, unit, facing the ray origin


def cast(scene: Scene, origin: np.ndarray, directions: np.ndarray) -> Hits:
    """Cast rays from inside the room: nearest object or wall for every ray."""
    t, face, normals = room_exit(scene, origin, directions)
    instance = np.zeros(len(directions), dtype=np.int32)
    for k, obj in enumerate(scene.objects, start=1):
        tk = intersect(obj, origin, directions)
        closer = tk < t
        t = np.where(closer, tk, t)
        instance[closer] = k
    points = origin + t[:, None] * directions
    for k, obj in enumerate(scene.objects, start=1):
        sel = instance == k
        if sel.any():
            normals[sel] = normal_at(obj, points[sel])
    facing = np.einsum("ij,ij->i", normals, directions) > 0
    normals[facing] *= -1
    return Hits(t=t, instance=instance, face=face, points=points, normals=normals)


def occluded(scene: Scene, points: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Whether rays from ``points (P, 3)`` towards the directional light hit an object (shadow).

    The room does not occlude: the light is a directional source above it.
    """
    blocked = np.zeros(len(points), dtype=bool)
    for obj in scene.objects:
        blocked |= np.isfinite(intersect(obj, points, np.asarray(direction, dtype=np.float64)))
    return blocked
