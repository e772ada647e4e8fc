"""Geometric correspondence from cached features, zero-shot.

For each pair, the depth maps downsampled (nearest) to 1/4 resolution give the candidate
points; each point's feature is read from the chosen layer's cached map; points of the first
image are matched to the second's by cosine nearest neighbour with the ratio test
(weight = 1 - d1/d2, d the cosine distance), keeping the top 1000 by weight. Errors: 3-D
distance (metres) between the source point's true position and the matched point; 2-D
distance between their projections into the second image.

How errors are measured is the dataset's evaluation *style*, and the style's thresholds, pixel
scale and rotation bins are the protocol's (:class:`~protocols.CorrespondenceStyle`): ``navi``
(midvision-probe's NAVI script: full-resolution pixels, 3-D recall, rotation bins on 3-D
recall @ 2 cm) or ``probe3d-scannet`` (Probe3D's ScanNet script: 1/4-resolution pixels,
5/10/20 px, bins on recall @ 10 px). How features are normalised, read and matched is the
protocol's too (:class:`~protocols.CorrespondenceChoices`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from typing import Any, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from cache import FeatureSplit, MidprobeError, SplitView
from cache.camera import project, relative_rotation_deg, unproject
from cache.progress import progress_bar
from protocols import CorrespondenceChoices, CorrespondenceStyle, Protocol, get_protocol
from probe.scores import Scored
from probe.tasks import register_task
from probe.tasks.base import ZeroShotTask

DOWNSAMPLE = 4
BN_EPS = 1e-5


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
        return {layer: v[index - chunk * k].astype(np.float32) for layer, v in self.block.items()}


def candidate_points(depth: np.ndarray, step: int = DOWNSAMPLE) -> tuple[np.ndarray, np.ndarray]:
    """Pixels ``(M, 2)`` (u, v) of the nearest-downsampled depth map with valid depth, and their depths."""
    small = depth[::step, ::step]
    v, u = np.nonzero(np.isfinite(small) & (small > 0))
    return np.stack([u * step, v * step], axis=1).astype(np.float64), small[v, u].astype(np.float64)


def sample_features(maps: Sequence[np.ndarray], strides: Sequence[int], uv: np.ndarray, *,
                    padding: str = "border") -> torch.Tensor:
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
        sampled = F.grid_sample(fmap[None], grid, mode="bilinear", padding_mode=padding, align_corners=True)
        parts.append(F.normalize(sampled[0, :, 0].T, dim=1))
    return F.normalize(torch.cat(parts, dim=1), dim=1)


def bicubic_grid_features(maps: Sequence[np.ndarray], size: tuple[int, int], uv: np.ndarray,
                          step: int = DOWNSAMPLE) -> torch.Tensor:
    """The paper's NAVI read: each map resized bicubically to the 1/4 candidate grid, read at the
    candidates' cells ``(v/4, u/4)``; ``(M, sum C)`` unit-normalised."""
    grid = (size[0] // step, size[1] // step)
    cols, rows = (uv[:, 0] // step).astype(np.int64), (uv[:, 1] // step).astype(np.int64)
    parts = []
    for fmap in maps:
        resized = F.interpolate(torch.from_numpy(np.asarray(fmap, dtype=np.float32))[None], size=grid,
                                mode="bicubic", align_corners=False)[0]
        parts.append(F.normalize(resized[:, rows, cols].T, dim=1))
    return F.normalize(torch.cat(parts, dim=1), dim=1)


def batch_standardise(views: list[dict[str, np.ndarray]], cls: Sequence[np.ndarray] | None = None,
                      cls_layer: str = "") -> list[dict[str, np.ndarray]]:
    """Each layer's channels standardised with the statistics of these views (all positions):
    a BatchNorm in train mode with its initial affine (biased variance, eps 1e-5).

    ``cls``: each view's CLS token ``(C,)`` of layer ``cls_layer``, counted in that layer's
    statistics as one more position per view (the paper's ViT wrappers norm all ``1 + h w``
    tokens of the last block, then drop the CLS: midvision-probe evals/models/dino.py L185-191).
    """
    out: list[dict[str, np.ndarray]] = [{} for _ in views]
    for layer in views[0]:
        stack = np.stack([v[layer] for v in views]).astype(np.float64)        # (B, C, h, w)
        tokens = stack.reshape(*stack.shape[:2], -1)                          # (B, C, h w)
        if cls is not None and layer == cls_layer:
            tokens = np.concatenate([tokens, np.stack(cls).astype(np.float64)[:, :, None]], axis=2)
        mean = tokens.mean(axis=(0, 2))[None, :, None, None]
        var = tokens.var(axis=(0, 2))[None, :, None, None]
        normed = ((stack - mean) / np.sqrt(var + BN_EPS)).astype(np.float32)
        for i in range(len(views)):
            out[i][layer] = normed[i]
    return out


def cls_tokens(features: FeatureSplit, tokens: str) -> np.ndarray | None:
    """The CLS tokens ``(N, C)`` the batch statistics count (``tokens="patches+cls"``), or None.

    They are the split's global vectors when it was extracted with ``global_kind="cls-raw-last"``
    (the last tapped block's CLS, before any norm); a split whose model has no CLS token (a CNN;
    its extraction fell back to the pooled vector) normalises its patches alone, as the paper's
    ResNet wrappers do.
    """
    if tokens not in ("patches", "patches+cls"):
        raise MidprobeError(f"correspondence norm_tokens {tokens!r}: expected patches or patches+cls")
    if tokens == "patches" or features.fingerprint.get("global_kind") != "cls-raw-last":
        return None
    return features.global_vectors()


def _ratio_weights(sim: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest neighbour per row and its ratio-test weight ``1 - d1/d2`` with cosine distances."""
    best = sim.topk(min(2, sim.shape[1]), dim=1)
    dist = (1 - best.values).clamp(min=1e-9)
    d2 = dist[:, 1] if dist.shape[1] > 1 else torch.ones_like(dist[:, 0])
    return best.indices[:, 0], 1 - dist[:, 0] / d2.clamp(min=1e-9)


def _nearest(feat_a: torch.Tensor, feat_b: torch.Tensor, chunk: int) -> tuple[torch.Tensor, torch.Tensor]:
    nn_idx, weight = [], []
    for s in range(0, len(feat_a), chunk):
        idx, w = _ratio_weights(feat_a[s:s + chunk] @ feat_b.T)
        nn_idx.append(idx)
        weight.append(w)
    return torch.cat(nn_idx), torch.cat(weight)


def match(feat_a: torch.Tensor, feat_b: torch.Tensor, *, top: int = 1000, bidirectional: str = "",
          chunk: int = 1024) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Nearest neighbours of A's points among B's with the ratio test.

    Returns indices into A and B and weights, the ``top`` highest weights first.
    ``bidirectional``: ``""`` (A to B only), ``"mutual"`` (keep mutual nearest neighbours) or
    ``"halves"`` (the best ``top // 2`` of A to B and of B to A, concatenated). Memory is
    ``chunk x len(B)`` similarities at a time.
    """
    idx_b, w = _nearest(feat_a, feat_b, chunk)
    idx_a = torch.arange(len(feat_a))
    if bidirectional == "halves":
        back_a, back_w = _nearest(feat_b, feat_a, chunk)
        first = torch.argsort(w, descending=True, stable=True)[:top // 2]
        second = torch.argsort(back_w, descending=True, stable=True)[:top // 2]
        return (torch.cat([idx_a[first], back_a[second]]).numpy(),
                torch.cat([idx_b[first], torch.arange(len(feat_b))[second]]).numpy(),
                torch.cat([w[first], back_w[second]]).numpy())
    if bidirectional == "mutual":
        back = torch.cat([(feat_b[s:s + chunk] @ feat_a.T).argmax(dim=1) for s in range(0, len(feat_b), chunk)])
        mutual = back[idx_b] == idx_a
        idx_a, idx_b, w = idx_a[mutual], idx_b[mutual], w[mutual]
    elif bidirectional:
        raise MidprobeError(f"bidirectional matching {bidirectional!r}: expected mutual or halves")
    order = torch.argsort(w, descending=True, stable=True)[:top]
    return idx_a[order].numpy(), idx_b[order].numpy(), w[order].numpy()


def pair_errors(world_a: np.ndarray, world_b: np.ndarray, K_b: np.ndarray,
                pose_b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """3-D error (metres) between matched world points and 2-D error (pixels of B) between their
    projections into B."""
    error_3d = np.linalg.norm(world_a - world_b, axis=1)
    px_a, _ = project(world_a, K_b, pose_b)
    px_b, _ = project(world_b, K_b, pose_b)
    return error_3d, np.linalg.norm(px_a - px_b, axis=1)


def _pair_row(e2: np.ndarray, e3: np.ndarray | None, style: CorrespondenceStyle) -> dict[str, float]:
    e2 = e2 * style.pixel_scale
    row = {f"recall_2d_{t:g}px": float((e2 < t).mean()) if len(e2) else 0.0 for t in style.thresholds_px}
    if e3 is not None:
        row.update({f"recall_3d_{round(t * 100)}cm": float((e3 < t).mean()) if len(e3) else 0.0
                    for t in style.thresholds_m})
    return row


@dataclass(frozen=True)
class CorrespondenceTask(ZeroShotTask):
    def evaluate(self, *, features: FeatureSplit, data: SplitView, dataset_attrs: Mapping[str, Any],
                 layers: Sequence[str] | None = None, protocol: Protocol | None = None,
                 overrides: Mapping[str, Any] | None = None, bidirectional: bool = False, quiet: bool = True,
                 name: str = "correspondence", **_: Any) -> tuple[dict[str, float], dict[str, Any]]:
        """Match every pair (progress over pairs, ``name``, unless ``quiet``); returns metrics and config."""
        choices = (protocol or get_protocol(None)).correspondence_of(dataset_attrs)
        choices = replace(choices, **{k: v for k, v in (overrides or {}).items()
                                      if k in {f.name for f in dataclasses.fields(CorrespondenceChoices)}})
        style = choices.style
        layers = list(layers or features.layers[-1:])
        strides = [features.stride(layer) for layer in layers]
        pairs = data.read("pairs").astype(np.int64)
        rotations = (data.read("pair_rotation_deg") if data.has("pair_rotation_deg") else None)
        # a split may hold metric depth where the dataset's dense splits are relative (NAVI's pairs)
        metric = data.attrs.get("depth_kind", dataset_attrs.get("depth_kind", "metric")) == "metric"
        size = data.image_size
        load = _ImageCache(features, layers)
        cls = cls_tokens(features, choices.norm_tokens) if choices.feature_norm == "batch" else None
        per_pair: list[dict[str, float]] = []
        with progress_bar(total=len(pairs), name=name, unit="pair", quiet=quiet) as bar:
            for start in range(0, len(pairs), choices.norm_batch):
                batch = pairs[start:start + choices.norm_batch]
                views = [[load(int(p[side])) for p in batch] for side in (0, 1)]
                if choices.feature_norm == "batch":
                    views = [batch_standardise(side, None if cls is None else [cls[int(p[k])] for p in batch],
                                               features.layers[-1]) for k, side in enumerate(views)]
                elif choices.feature_norm != "none":
                    raise MidprobeError(f"correspondence feature_norm {choices.feature_norm!r}: expected none or batch")
                for k, (ia, ib) in enumerate(batch):
                    row = self._pair(ia, ib, views[0][k], views[1][k], data, style, choices, layers, strides, size,
                                     metric, bidirectional)
                    if row is None:
                        continue
                    p = start + k
                    row["rotation"] = (float(rotations[p]) if rotations is not None else
                                       relative_rotation_deg(*data.read("pose", np.array([ia, ib]))))
                    per_pair.append(row)
                bar.update(len(batch))
        metrics = _average(per_pair, style)
        config = {"task": self.name, "layers": layers, "style": dataclasses.asdict(style),
                  "choices": dataclasses.asdict(choices), "norm_cls": cls is not None, "bidirectional": choices.bidirectional if bidirectional
                  else "", "downsample": DOWNSAMPLE}
        return metrics, config

    @staticmethod
    def _pair(ia, ib, maps_a, maps_b, data: SplitView, style: CorrespondenceStyle, choices: CorrespondenceChoices,
              layers, strides, size, metric: bool, bidirectional: bool) -> dict[str, float] | None:
        depth = data.read("depth", np.array([ia, ib]))
        K, pose = data.read("K", np.array([ia, ib])), data.read("pose", np.array([ia, ib]))
        uv_a, z_a = candidate_points(depth[0])
        uv_b, z_b = candidate_points(depth[1])
        if len(uv_a) == 0 or len(uv_b) < 2:
            return None
        if choices.sampling == "bicubic-grid":
            feat_a = bicubic_grid_features([maps_a[layer] for layer in layers], size, uv_a)
            feat_b = bicubic_grid_features([maps_b[layer] for layer in layers], size, uv_b)
        elif choices.sampling == "bilinear":
            feat_a = sample_features([maps_a[layer] for layer in layers], strides, uv_a + style.sample_offset,
                                     padding=style.padding)
            feat_b = sample_features([maps_b[layer] for layer in layers], strides, uv_b + style.sample_offset,
                                     padding=style.padding)
        else:
            raise MidprobeError(f"correspondence sampling {choices.sampling!r}: expected bilinear or bicubic-grid")
        ia_idx, ib_idx, _ = match(feat_a, feat_b, top=choices.top,
                                  bidirectional=choices.bidirectional if bidirectional else "")
        world_a = unproject(uv_a[ia_idx] + style.ray_offset, z_a[ia_idx], K[0], pose[0])
        world_b = unproject(uv_b[ib_idx] + style.ray_offset, z_b[ib_idx], K[1], pose[1])
        e3, e2 = pair_errors(world_a, world_b, K[1], pose[1])
        return _pair_row(e2, e3 if metric else None, style)


def _average(rows: list[dict[str, float]], style: CorrespondenceStyle) -> dict[str, float]:
    """Per-pair metrics averaged over pairs, and each binned by the pairs' rotation ``[lo, hi)``."""
    keys = [k for k in (rows[0] if rows else {}) if k != "rotation"]
    out = Scored({k: float(np.mean([r[k] for r in rows])) for k in keys}, unit="pair",
                 per_item={k: np.array([r[k] for r in rows], dtype=np.float64) for k in keys})
    binned = [style.binned if style.binned in keys else f"recall_2d_{style.thresholds_px[0]:g}px"]
    if style.bin_2d:
        binned += [f"recall_2d_{t:g}px" for t in style.thresholds_px if f"recall_2d_{t:g}px" not in binned]
    edges = style.rotation_bins
    for lo, hi in zip(edges[:-1], edges[1:]):
        chosen = [r for r in rows if lo <= r["rotation"] < hi]
        for key in binned:
            out[f"{key}_rot{lo:g}-{hi:g}"] = float(np.mean([r[key] for r in chosen])) if chosen else float("nan")
        out[f"pairs_rot{lo:g}-{hi:g}"] = float(len(chosen))
    out["pairs"] = float(len(rows))
    out["pixel_scale"] = style.pixel_scale
    return out


register_task(CorrespondenceTask(name="correspondence", kind="zero_shot", headline="recall_2d_5px",
                                 needs=("pairs", "depth", "K", "pose"),
                                 description="geometric correspondence: scene (ScanNet-1500) or object (NAVI)",
                                 split="pairs"))
