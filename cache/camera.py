"""The camera convention of every dataset store, and the geometry both stages rely on.

Pinhole camera, OpenCV axes (x right, y down, z forward). Pixel ``(u, v)`` = (column,
row) has its centre at integer coordinates. ``K`` is ``(3, 3)``; ``pose`` is the
``(4, 4)`` camera-to-world transform; ``depth`` is z-depth in metres.
"""

from __future__ import annotations

import numpy as np


def unproject(uv: np.ndarray, depth: np.ndarray, K: np.ndarray, pose: np.ndarray) -> np.ndarray:
    """World points ``(M, 3)`` of pixels ``uv (M, 2)`` at z-depths ``depth (M,)``."""
    uv = np.asarray(uv, dtype=np.float64)
    K = np.asarray(K, dtype=np.float64)
    x = (uv[:, 0] - K[0, 2]) / K[0, 0]
    y = (uv[:, 1] - K[1, 2]) / K[1, 1]
    cam = np.stack([x, y, np.ones_like(x)], axis=1) * np.asarray(depth, dtype=np.float64)[:, None]
    pose = np.asarray(pose, dtype=np.float64)
    return cam @ pose[:3, :3].T + pose[:3, 3]


def project(points: np.ndarray, K: np.ndarray, pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(M, 2)`` and z-depths ``(M,)`` of world points ``(M, 3)`` in a camera.

    The homogeneous coordinates ``K @ cam`` are divided by ``max(z, 1e-9)``, as Probe3D's
    ``project_3dto2d`` does (evals/utils/correspondence.py L193-196): a point behind the camera
    (``z <= 0``) lands ~1e9 px away instead of at its mirror image in front, so it can never
    count as a correct 2-D match. The returned z is signed.
    """
    pose = np.asarray(pose, dtype=np.float64)
    cam = (np.asarray(points, dtype=np.float64) - pose[:3, 3]) @ pose[:3, :3]
    z = cam[:, 2]
    K = np.asarray(K, dtype=np.float64)
    clamped = np.maximum(z, 1e-9)                  # NaN stays NaN
    # (fx x + cx z) / max(z, 1e-9): for z >= 1e-9 exactly fx x / z + cx (z / z == 1)
    u = K[0, 0] * cam[:, 0] / clamped + K[0, 2] * (z / clamped)
    v = K[1, 1] * cam[:, 1] / clamped + K[1, 2] * (z / clamped)
    return np.stack([u, v], axis=1), z


def relative_rotation_deg(pose_a: np.ndarray, pose_b: np.ndarray) -> float:
    """Angle in degrees of the rotation between two camera orientations."""
    r = np.asarray(pose_a, dtype=np.float64)[:3, :3].T @ np.asarray(pose_b, dtype=np.float64)[:3, :3]
    cos = np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0)
    return float(np.degrees(np.arccos(cos)))
