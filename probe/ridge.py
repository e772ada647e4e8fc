"""The ``ridge`` head: closed-form ridge regression at feature resolution, no SGD.

One streaming pass over the train split accumulates ``X^T X`` and ``X^T y`` (float64)
chunk by chunk, separately for a fitting part and a held-out part (the last 10 % of
train images). The penalty is the one with the lowest held-out squared error on a grid
relative to ``trace(X^T X) / D``; the final solve uses all of train. Targets are pooled
to the feature grid (area average over valid pixels).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from cache import FeatureSplit, SplitView
from cache.loader import FeatureLoader
from probe.features import Standardizer, concat_on_grid
from protocols import DenseChoices
from probe.tasks.base import DenseTask

RELATIVE_PENALTIES = tuple(10.0 ** e for e in range(-6, 3))


@dataclass
class RidgeFit:
    weights: torch.Tensor            # (D + 1, k) float64; the last row is the intercept
    penalty: float
    heldout_mse: dict[float, float] = field(default_factory=dict)
    rows: int = 0


def _design(maps: Mapping[str, torch.Tensor], layers: Sequence[str]) -> tuple[torch.Tensor, tuple[int, int]]:
    x = concat_on_grid([maps[layer] for layer in layers])
    b, d, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(b * h * w, d)
    return torch.cat([rows, torch.ones(len(rows), 1, dtype=rows.dtype, device=rows.device)], dim=1), (h, w)


def _targets(task: DenseTask, batch_targets: Mapping[str, np.ndarray], attrs: Mapping[str, Any],
             grid: tuple[int, int], device: torch.device, choices: DenseChoices) -> tuple[torch.Tensor, torch.Tensor]:
    target, valid = task.targets(batch_targets, attrs, device, choices)
    y, ok = task.ridge_target(target, valid, grid)
    k = y.shape[1]
    return y.permute(0, 2, 3, 1).reshape(-1, k), ok.reshape(-1)


def fit_ridge(task: DenseTask, *, train: FeatureSplit, train_data: SplitView, dataset_attrs: Mapping[str, Any],
              layers: Sequence[str], standardizer: Standardizer, choices: DenseChoices = DenseChoices(),
              heldout_fraction: float = 0.1, device: str = "cpu", subset: np.ndarray | None = None) -> RidgeFit:
    """Fit on the train split, or on ``subset`` (sorted image indices of one view; every view of
    them): a closed-form fit per subset is the cheapest label-efficiency curve. The held-out part
    is the last ``heldout_fraction`` of the images used."""
    from probe.train import training_batches, views_of

    dev = torch.device(device)
    views, per_view = views_of(train)
    used = np.arange(per_view) if subset is None else np.asarray(subset)
    n_fit = len(used) - max(1, int(round(heldout_fraction * len(used))))
    member, held_out = np.zeros(per_view, bool), np.zeros(per_view, bool)
    member[used], held_out[used[n_fit:]] = True, True
    sums: dict[str, Any] = {}
    targets = {key: train_data.array(key) for key in task.needs}
    # one pass over each view: streamed to the device
    loader = FeatureLoader(train, layers=list(layers), targets=targets, device=dev, budget=0)
    passes = (training_batches(train, layers=list(layers), targets=targets, batch_size=choices.batch_size, seed=0,
                               epoch=0, view=v, shuffle=False, loader=loader) for v in range(views))
    for batch in (b for one in passes for b in one):
        maps = standardizer(batch.features, layers)
        x, grid = _design(maps, layers)
        y, ok = _targets(task, batch.targets, dataset_attrs, grid, dev, choices)
        cells = grid[0] * grid[1]
        image = batch.index % per_view
        held = torch.from_numpy(np.repeat(held_out[image], cells)).to(dev)
        ok = ok & torch.from_numpy(np.repeat(member[image], cells)).to(dev)
        for part, rows in (("fit", ok & ~held), ("held", ok & held)):
            xs, ys = x[rows], y[rows]
            # float32 products per batch (2x faster), summed across batches in float64
            for name, value in (("xx", (xs.T @ xs).double()), ("xy", (xs.T @ ys).double()),
                                ("yy", (ys.double() * ys.double()).sum(0)),
                                ("n", torch.tensor(float(len(xs)), dtype=torch.float64))):
                sums[f"{part}_{name}"] = sums.get(f"{part}_{name}", 0) + value
    xx, xy = sums["fit_xx"], sums["fit_xy"]
    d = xx.shape[0]
    scale = float(torch.diagonal(xx)[:-1].mean().clamp(min=1e-12))
    eye = torch.eye(d, dtype=torch.float64, device=dev)
    eye[-1, -1] = 0.0                                  # the intercept is not penalised
    scores = {}
    for rel in RELATIVE_PENALTIES:
        w = torch.linalg.solve(xx + rel * scale * eye, xy)
        hxx, hxy, hyy, hn = sums["held_xx"], sums["held_xy"], sums["held_yy"], sums["held_n"]
        sse = hyy.sum() - 2 * (w * hxy).sum() + (w * (hxx @ w)).sum()
        scores[rel] = float(sse / max(float(hn) * w.shape[1], 1.0))
    best = min(scores, key=scores.get)
    weights = torch.linalg.solve(xx + sums["held_xx"] + best * scale * eye, xy + sums["held_xy"])
    return RidgeFit(weights=weights, penalty=best * scale, heldout_mse=scores,
                    rows=int(sums["fit_n"] + sums["held_n"]))


@torch.inference_mode()
def evaluate_ridge(task: DenseTask, fit: RidgeFit, *, test: FeatureSplit, test_data: SplitView,
                   dataset_attrs: Mapping[str, Any], layers: Sequence[str], standardizer: Standardizer,
                   choices: DenseChoices = DenseChoices(), device: str = "cpu") -> dict[str, float]:
    dev = torch.device(device)
    metrics = task.new_metrics(choices)
    targets = {key: test_data.array(key) for key in task.needs}
    loader = FeatureLoader(test, layers=list(layers), targets=targets, device=dev, budget=0)
    for batch in loader.batches(batch_size=choices.eval_batch_size, shuffle=False):
        maps = standardizer(batch.features, layers)
        x, grid = _design(maps, layers)
        values = (x.double() @ fit.weights).float()
        b = len(batch.index)
        values = values.reshape(b, grid[0], grid[1], -1).permute(0, 3, 1, 2)
        prediction = task.ridge_decode(values, test_data.image_size, dataset_attrs, choices)
        target, valid = task.targets(batch.targets, dataset_attrs, dev, choices)
        metrics.update(prediction, target, valid)
    return metrics.result()
