import json

import numpy as np
import pytest
import torch

from cache import create_dataset_store, open_dataset, open_features
from cache.camera import unproject
from probe.run import run_task
from probe.tasks import get_task
from probe.tasks.correspondence import match, sample_features
from probe.tasks.similarity import two_afc_metrics
from tests.conftest import write_features


def _position_encoding(split):
    """An injective per-pixel encoding of each pixel's world position, ``(N, 24, H, W)``."""
    depth, K, pose = split.read("depth"), split.read("K"), split.read("pose")
    n, h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w]
    uv = np.stack([u.ravel(), v.ravel()], 1).astype(np.float64)
    out = np.zeros((n, 24, h, w), np.float32)
    for i in range(n):
        xyz = unproject(uv, depth[i].ravel(), K[i], pose[i])
        feats = [f(2 * np.pi * freq * xyz) for freq in (0.04, 0.15, 0.5, 1.5) for f in (np.sin, np.cos)]
        out[i] = np.concatenate(feats, 1).T.reshape(24, h, w)
    return out


def test_position_encoding_gives_near_perfect_correspondence(synthetic_root):
    pairs = open_dataset("synthetic", root=synthetic_root).split("pairs")
    write_features(synthetic_root, dataset="synthetic", model="xyz", split="pairs",
                   maps={"pos": _position_encoding(pairs)}, strides={"pos": 1})
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(pairs.num_images, 24, 4, 4)).astype(np.float32)
    write_features(synthetic_root, dataset="synthetic", model="random", split="pairs", maps={"r": noise},
                   strides={"r": 16})
    task = get_task("correspondence")
    store = open_dataset("synthetic", root=synthetic_root)
    good, config = task.evaluate(features=open_features("synthetic", "xyz", "pairs", root=synthetic_root),
                                 data=pairs, dataset_attrs=store.attrs, overrides={"top": 16})
    assert good["recall_2d_5px"] > 0.95 and good["pairs"] == 4
    assert config["layers"] == ["pos"]
    bad, _ = task.evaluate(features=open_features("synthetic", "random", "pairs", root=synthetic_root),
                           data=pairs, dataset_attrs=store.attrs, overrides={"top": 16})
    assert bad["recall_2d_5px"] < 0.25
    # 3-D recall is bounded by the 4-pixel sampling of candidates at 64 px, but far above chance
    assert good["recall_3d_5cm"] > bad["recall_3d_5cm"] + 0.3
    binned = sum(good[f"pairs_rot{lo}-{hi}"] for lo, hi in ((0, 30), (30, 60), (60, 90), (90, 120)))
    assert binned == 4            # the synthetic pairs rotate by less than 120 degrees
    assert "recall_3d_2cm_rot0-30" in good and "recall_2d_5px_rot0-30" in good


def test_correspondence_records_through_the_registry(synthetic_root):
    pairs = open_dataset("synthetic", root=synthetic_root).split("pairs")
    write_features(synthetic_root, dataset="synthetic", model="xyz2", split="pairs",
                   maps={"pos": _position_encoding(pairs)}, strides={"pos": 1})
    rows = run_task(task_name="correspondence", dataset="synthetic", models=["xyz2"], root=synthetic_root, quiet=True)
    store = open_dataset("synthetic", root=synthetic_root)
    direct, _ = get_task("correspondence").evaluate(
        features=open_features("synthetic", "xyz2", "pairs", root=synthetic_root), data=pairs, dataset_attrs=store.attrs)
    record = json.loads((synthetic_root.root / rows[0]["record"]).read_text())
    assert record["metrics"] == pytest.approx(direct, nan_ok=True)
    assert record["headline_metric"] == "recall_2d_5px" and record["config"]["choices"]["top"] == 1000


def test_ratio_test_and_bidirectional_matching():
    a = torch.nn.functional.normalize(torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]]), dim=1)
    b = torch.nn.functional.normalize(torch.tensor([[0.0, 1.0], [1.0, 0.05], [0.71, 0.69]]), dim=1)
    ia, ib, w = match(a, b, top=3)
    assert dict(zip(ia.tolist(), ib.tolist())) == {0: 1, 1: 0, 2: 2}
    assert (np.diff(w) <= 0).all() and (w >= 0).all() and (w <= 1).all()
    ia2, ib2, _ = match(a, b, top=3, bidirectional="mutual")
    assert set(zip(ia2.tolist(), ib2.tolist())) <= set(zip(ia.tolist(), ib.tolist()))


def test_features_are_sampled_at_cell_centres():
    fmap = np.arange(16, dtype=np.float32).reshape(1, 4, 4)          # one channel, 4x4 cells of stride 8
    two = np.stack([fmap[0], np.ones((4, 4), np.float32)])
    uv = np.array([[3.5, 3.5], [11.5, 3.5], [7.5, 3.5]])              # centres of cells (0,0), (0,1) and between
    sampled = sample_features([two], [8], uv)
    raw = sampled[:, 0] / sampled[:, 1]                               # undo the normalisation
    np.testing.assert_allclose(raw.numpy(), [0.0, 1.0, 0.5], atol=1e-5)


def _triplet_store(root, vectors, answers):
    writer = create_dataset_store(root.dataset_store("afc"), name="afc", source="t")
    n = len(vectors)
    out = writer.split("triplets", num_images=n, height=2, width=2, fields={"images": ((2, 2, 3), "uint8")})
    out.append({"images": np.zeros((n, 2, 2, 3), np.uint8)})
    out.put_relation("triplets", np.arange(n).reshape(-1, 3))
    out.put_relation("triplet_answer", np.asarray(answers, np.int8))
    writer.finish()
    write_features(root, dataset="afc", model="m", split="triplets", maps={"x": np.zeros((n, 1, 1, 1), np.float32)},
                   strides={"x": 1}, vectors=np.asarray(vectors, np.float32))


def test_two_afc_by_hand(root):
    # triplet 0: candidate 0 is nearly the reference; triplet 1: candidate 1 is
    vectors = [[1, 0], [1, 0.1], [0, 1], [0, 1], [1, 0], [0.1, 1]]
    _triplet_store(root, vectors, answers=[0, 1])
    rows = run_task(task_name="similarity", dataset="afc", root=root, quiet=True)
    assert rows[0]["f1"] == 1.0
    record = next(root.results("similarity").rglob("*.json")).read_text()
    assert '"accuracy": 1.0' in record


def test_two_afc_metrics_known_confusion():
    m = two_afc_metrics(choice=[1, 1, 0, 0], answer=[1, 0, 1, 0])
    assert m["accuracy"] == 0.5 and m["precision"] == 0.5 and m["recall"] == 0.5 and m["f1"] == pytest.approx(0.5)
