"""Geometric correspondence from cached features (Probe3D protocol), zero-shot.

For each pair, the depth maps downsampled (nearest) to 1/4 resolution give the candidate
points; each point's feature is sampled bilinearly from the chosen layer's cached map;
points of the first image are matched to the second's by cosine nearest neighbour with
the ratio test (weight = 1 - d1/d2, d the distance between unit features), keeping the
top 1000 by weight. Errors: 3-D distance (metres) between the source point's true
position in the second camera and the matched point; 2-D distance (pixels of the second
image) between their projections.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cache import FeatureSplit, SplitView
from cache.camera import project, relative_rotation_deg, unproject
from probe.tasks import register_task
from probe.tasks.base import ZeroShotTask

THRESH_2D = (5, 25, 50)            # pixels
THRESH_3D = (0.01, 0.02, 0.05)     # metres
ROTATION_BINS = ((0, 30), (30, 60), (60, 90), (90, 120))
DOWNSAMPLE = 4


class _ImageCache:
    """Reads per-image maps chunk by chunk (an image in many pairs is read from one chunk)."""

    def __init__(self, features: FeatureSplit, layers: Sequence[str]) -> None:
        self.features, self.layers = features, list(layers)
        self.chunk_id, self.block = -1, {}

    def __call__(self, index: int) -> dict[str, np.ndarray]:
        k = self.features.chunk_images
        chunk = index // k
        if chunk != self.chunk_id:
            lo, hi = chunk * k, min((chunk + 1) * k, self.features.num_images)
            self.block = {layer: self.features.read(layer, lo, hi) for layer in self.layers}
            self.chunk_id = chunk
        return {layer: v[index - chunk * k] for layer, v in self.block.items()}


def candidate_points(depth: np.ndarray, step: int = DOWNSAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(M, 2)`` (u, v) of the nearest-downsampled depth map with valid depth, and their depths."""
    small = depth[::step, ::step]
    v, u = np.nonzero(np.isfinite(small) & (small > 0))
    return np.stack([u * step, v * step], axis=1).astype(np.float64), small[v, u].astype(np.float64)


def sample_features(maps: Sequence[np.ndarray], strides: Sequence[int], uv: np.ndarray) -> torch.Tensor:
    """Bilinear samples ``(M, sum C)`` of ``(C, h, w)`` maps at pixels ``uv``; unit-normalised.

    Feature cell ``k`` of a stride-``s`` map covers pixels ``[k s, (k+1) s)``, centred at
    ``k s + (s - 1) / 2``.
    """
    parts = []
    for fmap, stride in zip(maps, strides):
        fmap = torch.from_numpy(np.asarray(fmap, dtype=np.float32))
        c, h, w = fmap.shape
        gx = (uv[:, 0] - (stride - 1) / 2) / stride
        gy = (uv[:, 1] - (stride - 1) / 2) / stride
        grid = torch.tensor(np.stack([2 * gx / max(w - 1, 1) - 1, 2 * gy / max(h - 1, 1) - 1], axis=1),
                            dtype=torch.float32).view(1, 1, -1, 2)
        sampled = F.grid_sample(fmap[None], grid, mode="bilinear", padding_mode="border", align_corners=True)
        parts.append(F.normalize(sampled[0, :, 0].T, dim=1))
    return F.normalize(torch.cat(parts, dim=1), dim=1)


def match(feat_a: torch.Tensor, feat_b: torch.Tensor, *, top: int = 1000, bidirectional: bool = False,
          chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest neighbours of A's points among B's with the ratio test.

    Returns indices into A and B and weights, the ``top`` highest weights first. Memory is
    ``chunk x len(B)`` similarities at a time.
    """
    nn_idx, weight = [], []
    for s in range(0, len(feat_a), chunk):
        sim = feat_a[s:s + chunk] @ feat_b.T
        best = sim.topk(min(2, sim.shape[1]), dim=1)
        dist = torch.sqrt(torch.clamp(2 - 2 * best.values, min=0))
        d2 = dist[:, 1] if dist.shape[1] > 1 else torch.ones_like(dist[:, 0])
        weight.append(1 - dist[:, 0] / d2.clamp(min=1e-12))
        nn_idx.append(best.indices[:, 0])
    idx_b, w = torch.cat(nn_idx), torch.cat(weight)
    idx_a = torch.arange(len(feat_a))
    if bidirectional:
        back = torch.cat([(feat_b[s:s + chunk] @ feat_a.T).argmax(dim=1) for s in range(0, len(feat_b), chunk)])
        mutual = back[idx_b] == idx_a
        idx_a, idx_b, w = idx_a[mutual], idx_b[mutual], w[mutual]
    order = torch.argsort(w, descending=True, stable=True)[:top]
    return idx_a[order].numpy(), idx_b[order].numpy(), w[order].numpy()


def pair_errors(uv_a: np.ndarray, depth_a: np.ndarray, uv_b: np.ndarray, depth_b: np.ndarray,
                K_a: np.ndarray, pose_a: np.ndarray, K_b: np.ndarray, pose_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3-D error (metres) and 2-D error (pixels of B) of matches ``uv_a[i] <-> uv_b[i]``."""
    true_world = unproject(uv_a, depth_a, K_a, pose_a)
    matched_world = unproject(uv_b, depth_b, K_b, pose_b)
    error_3d = np.linalg.norm(true_world - matched_world, axis=1)
    true_px, _ = project(true_world, K_b, pose_b)
    error_2d = np.linalg.norm(true_px - uv_b, axis=1)
    return error_3d, error_2d


@dataclass(frozen=True)
class CorrespondenceTask(ZeroShotTask):
    def evaluate(self, *, features: FeatureSplit, data: SplitView, dataset_attrs: Mapping[str, Any],
                 layers: Sequence[str] | None = None, bidirectional: bool = False, top: int = 1000,
                 **_: Any) -> tuple[dict[str, float], dict[str, Any]]:
        layers = list(layers or features.layers[-1:])
        strides = [features.stride(layer) for layer in layers]
        pairs = data.read("pairs").astype(np.int64)
        rotations = (data.read("pair_rotation_deg") if data.has("pair_rotation_deg") else None)
        # a split may hold metric depth where the dataset's dense splits are relative (NAVI's pairs)
        metric = data.attrs.get("depth_kind", dataset_attrs.get("depth_kind", "metric")) == "metric"
        load = _ImageCache(features, layers)
        per_pair: list[dict[str, float]] = []
        for p, (ia, ib) in enumerate(pairs):
            depth = data.read("depth", np.array([ia, ib]))
            K, pose = data.read("K", np.array([ia, ib])), data.read("pose", np.array([ia, ib]))
            uv_a, z_a = candidate_points(depth[0])
            uv_b, z_b = candidate_points(depth[1])
            if len(uv_a) == 0 or len(uv_b) < 2:
                continue
            fa, fb = load(int(ia)), load(int(ib))
            feat_a = sample_features([fa[layer] for layer in layers], strides, uv_a)
            feat_b = sample_features([fb[layer] for layer in layers], strides, uv_b)
            ia_idx, ib_idx, _ = match(feat_a, feat_b, top=top, bidirectional=bidirectional)
            e3, e2 = pair_errors(uv_a[ia_idx], z_a[ia_idx], uv_b[ib_idx], z_b[ib_idx], K[0], pose[0], K[1], pose[1])
            rotation = float(rotations[p]) if rotations is not None else relative_rotation_deg(pose[0], pose[1])
            row = {f"recall_2d_{t}px": float((e2 < t).mean()) if len(e2) else 0.0 for t in THRESH_2D}
            if metric:
                row.update({f"recall_3d_{round(t * 100)}cm": float((e3 < t).mean()) if len(e3) else 0.0
                            for t in THRESH_3D})
            row["rotation"] = rotation
            per_pair.append(row)
        metrics = _average(per_pair)
        config = {"task": self.name, "layers": layers, "bidirectional": bidirectional, "top": top,
                  "downsample": DOWNSAMPLE}
        return metrics, config


def _average(rows: list[dict[str, float]]) -> dict[str, float]:
    keys = [k for k in (rows[0] if rows else {}) if k != "rotation"]
    out = {k: float(np.mean([r[k] for r in rows])) for k in keys}
    for lo, hi in ROTATION_BINS:
        chosen = [r for r in rows if lo <= r["rotation"] < hi or (hi == 120 and r["rotation"] == 120)]
        for t in THRESH_2D:
            key = f"recall_2d_{t}px"
            out[f"{key}_rot{lo}-{hi}"] = float(np.mean([r[key] for r in chosen])) if chosen else float("nan")
        out[f"pairs_rot{lo}-{hi}"] = float(len(chosen))
    out["pairs"] = float(len(rows))
    return out


register_task(CorrespondenceTask(name="correspondence", kind="zero_shot", headline="recall_2d_5px",
                                 needs=("pairs", "depth", "K", "pose"),
                                 description="geometric correspondence: scene (ScanNet-1500) or object (NAVI)",
                                 split="pairs"))
