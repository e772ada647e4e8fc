"""Procedural scenes: a room, primitives at random poses, solid textures, a light and cameras.

Units are metres; the world is y-up with the floor at y = 0. Everything is drawn from a
``numpy.random.Generator`` so a seed fixes the scene exactly.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

import numpy as np

TEXTURE_KINDS = ("flat", "stripes", "checks", "noise")
SHAPES = ("sphere", "box", "cylinder")


@dataclass(frozen=True)
class Texture:
    """A solid texture, evaluated at 3-D points in the surface's own frame."""

    kind: str
    colour_a: tuple[float, float, float]
    colour_b: tuple[float, float, float]
    frequency: float                         # cycles per metre
    direction: tuple[float, float, float]    # stripes' normal
    phase: float
    seed: int                                # noise lattice


@dataclass(frozen=True)
class Primitive:
    """A sphere, oriented box or capped cylinder. ``rotation`` maps local to world axes."""

    shape: str
    centre: tuple[float, float, float]
    rotation: tuple[tuple[float, float, float], ...]
    size: tuple[float, float, float]         # sphere (r,-,-); box half extents; cylinder (r, r, half height)


@dataclass(frozen=True)
class Scene:
    room: tuple[float, float, float]         # half width (x), height (y), half depth (z)
    objects: tuple[Primitive, ...]
    room_textures: tuple[Texture, ...]       # 6 faces: -x, +x, floor, ceiling, -z, +z
    object_textures: tuple[Texture, ...]
    light: tuple[float, float, float]        # unit direction towards the light
    ambient: float


@dataclass(frozen=True)
class Camera:
    """Pinhole camera: ``K (3, 3)`` and camera-to-world ``pose (4, 4)`` (OpenCV axes)."""

    K: np.ndarray = field(repr=False)
    pose: np.ndarray = field(repr=False)


def _rotation_y(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _rotation_x(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[1.0, 0.0, 0.0], [0.0, c, -s], [0.0, s, c]])


def random_texture(rng: np.random.Generator) -> Texture:
    direction = rng.normal(size=3)
    direction /= np.linalg.norm(direction)
    return Texture(kind=str(rng.choice(TEXTURE_KINDS)), colour_a=tuple(rng.uniform(0.1, 0.95, 3)),
                   colour_b=tuple(rng.uniform(0.1, 0.95, 3)), frequency=float(rng.uniform(1.5, 6.0)),
                   direction=tuple(direction), phase=float(rng.uniform(0, 2 * math.pi)),
                   seed=int(rng.integers(0, 2**31 - 1)))


def random_light(rng: np.random.Generator) -> tuple[tuple[float, float, float], float]:
    light = np.array([rng.uniform(-1, 1), rng.uniform(0.8, 2.0), rng.uniform(-1, 1)])
    return tuple(light / np.linalg.norm(light)), float(rng.uniform(0.15, 0.35))


def random_objects(rng: np.random.Generator, room: tuple[float, float, float]) -> tuple[Primitive, ...]:
    rx, _, rz = room
    objects = []
    for _ in range(int(rng.integers(3, 8))):
        shape = str(rng.choice(SHAPES))
        x, z = rng.uniform(-rx + 1.0, rx - 1.0), rng.uniform(-rz + 1.0, rz - 1.0)
        yaw = _rotation_y(rng.uniform(0, 2 * math.pi))
        if shape == "sphere":
            r = rng.uniform(0.25, 0.7)
            lift = r if rng.random() < 0.7 else r + rng.uniform(0.2, 1.0)
            objects.append(Primitive("sphere", (x, lift, z), tuple(map(tuple, np.eye(3))), (r, r, r)))
        elif shape == "box":
            h = rng.uniform(0.2, 0.6, 3)
            rotation = yaw @ (_rotation_x(rng.uniform(-0.6, 0.6)) if rng.random() < 0.3 else np.eye(3))
            lift = float(np.abs(rotation[1]) @ h)            # rests on the floor
            objects.append(Primitive("box", (x, lift, z), tuple(map(tuple, rotation)), tuple(h)))
        else:
            r, half = rng.uniform(0.15, 0.45), rng.uniform(0.3, 0.9)
            lying = rng.random() < 0.35
            # local z is the axis: upright cylinders turn it to world y
            rotation = yaw @ (np.eye(3) if lying else _rotation_x(-math.pi / 2))
            lift = r if lying else half
            objects.append(Primitive("cylinder", (x, lift, z), tuple(map(tuple, rotation)), (r, r, half)))
    return tuple(objects)


def random_scene(rng: np.random.Generator) -> Scene:
    room = (float(rng.uniform(3.0, 4.5)), float(rng.uniform(2.6, 3.2)), float(rng.uniform(3.0, 4.5)))
    objects = random_objects(rng, room)
    light, ambient = random_light(rng)
    return Scene(room=room, objects=objects, room_textures=tuple(random_texture(rng) for _ in range(6)),
                 object_textures=tuple(random_texture(rng) for _ in objects), light=light, ambient=ambient)


def retextured(scene: Scene, rng: np.random.Generator) -> Scene:
    """The same layout under new textures and lighting."""
    light, ambient = random_light(rng)
    return replace(scene, room_textures=tuple(random_texture(rng) for _ in range(6)),
                   object_textures=tuple(random_texture(rng) for _ in scene.objects), light=light, ambient=ambient)


def relayout(scene: Scene, rng: np.random.Generator) -> Scene:
    """A different object layout that keeps the scene's textures and lighting."""
    objects = random_objects(rng, scene.room)
    textures = tuple(scene.object_textures[i % len(scene.object_textures)] for i in range(len(objects)))
    return replace(scene, objects=objects, object_textures=textures)


def intrinsics(height: int, width: int, fov_y_deg: float) -> np.ndarray:
    f = 0.5 * height / math.tan(math.radians(fov_y_deg) / 2)
    return np.array([[f, 0.0, (width - 1) / 2], [0.0, f, (height - 1) / 2], [0.0, 0.0, 1.0]])


def look_at(eye: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Camera-to-world pose at ``eye`` looking at ``target`` (OpenCV axes, world y up)."""
    forward = target - eye
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.array([0.0, 1.0, 0.0]))
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    pose = np.eye(4)
    pose[:3, 0], pose[:3, 1], pose[:3, 2], pose[:3, 3] = right, down, forward, eye
    return pose


def inside_object(point: np.ndarray, scene: Scene, margin: float = 0.15) -> bool:
    for obj in scene.objects:
        local = np.asarray(obj.rotation).T @ (point - np.asarray(obj.centre))
        if np.linalg.norm(local) < max(obj.size) * 1.8 + margin:
            return True
    return False


def scene_target(scene: Scene, rng: np.random.Generator) -> np.ndarray:
    centres = np.array([o.centre for o in scene.objects])
    target = centres[rng.integers(len(centres))] * 0.5 + centres.mean(0) * 0.5
    return np.array([target[0], rng.uniform(0.2, 0.8), target[2]])


def random_camera(scene: Scene, rng: np.random.Generator, height: int, width: int) -> tuple[Camera, np.ndarray]:
    """A camera inside the room, outside every object, looking at the objects; and its target."""
    rx, _, rz = scene.room
    target = scene_target(scene, rng)
    for _ in range(200):
        eye = np.array([rng.uniform(-rx + 0.5, rx - 0.5), rng.uniform(1.2, 2.0), rng.uniform(-rz + 0.5, rz - 0.5)])
        if np.linalg.norm((eye - target)[[0, 2]]) > 1.5 and not inside_object(eye, scene):
            break
    fov = float(rng.uniform(50.0, 70.0))
    return Camera(intrinsics(height, width, fov), look_at(eye, target)), target


def orbit_camera(camera: Camera, target: np.ndarray, angle_deg: float, scene: Scene) -> Camera | None:
    """``camera`` turned by ``angle_deg`` about the vertical axis through ``target``; None if it leaves the room."""
    eye = camera.pose[:3, 3]
    rotation = _rotation_y(math.radians(angle_deg))
    new_eye = target + rotation @ (eye - target)
    rx, _, rz = scene.room
    if abs(new_eye[0]) > rx - 0.3 or abs(new_eye[2]) > rz - 0.3 or inside_object(new_eye, scene):
        return None
    return Camera(camera.K, look_at(new_eye, target))


def nudged_camera(camera: Camera, target: np.ndarray, rng: np.random.Generator, scene: Scene) -> Camera:
    """A slightly moved camera (about 10-20 cm, a few degrees) on the same target."""
    for _ in range(50):
        eye = camera.pose[:3, 3] + rng.normal(0, 0.1, 3)
        if not inside_object(eye, scene):
            return Camera(camera.K, look_at(eye, target + rng.normal(0, 0.05, 3)))
    return camera
