"""The four places where `PROTOCOL=paper` was checked against the paper's code and differed (issue 24),
each against a known answer, and the fidelity study's statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from cache import create_dataset_store, open_dataset, open_feature_writer, open_features
from cache.camera import project, unproject
from probe.heads import ResidualConvUnit, build_head
from probe.tasks import get_task
from probe.tasks.correspondence import _pair_row, batch_standardise, cls_tokens, pair_errors
from protocols import MIDPROBE, PAPER, DenseChoices, deviation, with_deviation
from protocols.choices import NAVI_STYLE


# 1. ResNet DPT residual unit ------------------------------------------------------------------

def test_paper_cnn_residual_unit_adds_the_rectified_input():
    torch.manual_seed(0)
    unit = ResidualConvUnit(4, kind="inplace-relu")
    x = torch.randn(2, 4, 5, 5)
    assert (x < 0).any()
    by_hand = unit.conv2(torch.relu(unit.conv1(torch.relu(x)))) + torch.relu(x)
    assert torch.allclose(unit(x), by_hand)
    ours = ResidualConvUnit(4)
    ours.load_state_dict(unit.state_dict())
    assert torch.allclose(ours(x), by_hand - torch.relu(x) + x)        # midprobe's unit adds x itself
    assert torch.allclose(ours(x.abs()), unit(x.abs()))                # equal where nothing is negative
    with pytest.raises(Exception, match="residual unit 'inplace'"):
        ResidualConvUnit(4, kind="inplace")


def test_paper_dpt_uses_the_inplace_unit_on_a_cnn_pyramid_only():
    paper = PAPER.dense_choices("depth").dpt
    assert paper.cnn_residual == "inplace-relu" and MIDPROBE.dense_choices("depth").dpt.cnn_residual == "pre-activation"
    cnn = build_head("dpt", in_channels=[4, 8, 8, 8], out_channels=1, hidden=4, equal_grids=False, dpt=paper)
    vit = build_head("dpt", in_channels=[8] * 4, out_channels=1, hidden=4, dpt=paper)
    assert {u.kind for u in cnn.modules() if isinstance(u, ResidualConvUnit)} == {"inplace-relu"}
    assert {u.kind for u in vit.modules() if isinstance(u, ResidualConvUnit)} == {"post-activation"}
    alone = with_deviation("dpt-cnn-inplace-relu", prerequisites=True)
    assert alone.dense_choices("normals").heads == ("dpt",) and deviation("dpt-cnn-inplace-relu").bug


# 3. points behind the other camera --------------------------------------------------------------

K = np.array([[100.0, 0, 32], [0, 100.0, 32], [0, 0, 1]])


def test_a_point_behind_the_camera_projects_far_away_not_to_its_mirror_image():
    pose = np.eye(4)
    front, behind = np.array([[-0.1, -0.05, 2.0]]), np.array([[0.1, 0.05, -2.0]])
    uv_front, z_front = project(front, K, pose)
    assert uv_front[0] == pytest.approx([32 - 5.0, 32 - 2.5]) and z_front[0] == 2.0
    uv_behind, z_behind = project(behind, K, pose)
    assert z_behind[0] == -2.0
    # the signed division would put it at (27, 29.5), exactly on the point in front; Probe3D's
    # max(z, 1e-9) puts it at (100 * 0.1 + 32 * -2) / 1e-9 px
    assert uv_behind[0] == pytest.approx([(10.0 - 64.0) * 1e9, (5.0 - 64.0) * 1e9], rel=1e-9)
    e3, e2 = pair_errors(behind, front, K, pose)
    assert e3[0] == pytest.approx(math.dist(behind[0], front[0])) and e2[0] > 1e9
    row = _pair_row(e2, e3, NAVI_STYLE)
    assert row["recall_2d_50px"] == 0.0


def test_projection_in_front_of_the_camera_is_unchanged_and_round_trips():
    rng = np.random.default_rng(0)
    pose = np.eye(4)
    pose[:3, 3] = [0.3, -0.2, 0.1]
    uv = rng.uniform(0, 64, (50, 2))
    depth = rng.uniform(0.5, 5.0, 50)
    back, z = project(unproject(uv, depth, K, pose), K, pose)
    assert np.allclose(back, uv, atol=1e-9) and np.allclose(z, depth)


# 4. segmentation: sigmoid, then resize ------------------------------------------------------------

def test_paper_segmentation_resizes_the_probability_and_thresholds_at_one_half():
    task = get_task("segmentation")
    paper, ours = PAPER.dense_choices("segmentation"), MIDPROBE.dense_choices("segmentation")
    assert (paper.segmentation_output, ours.segmentation_output) == ("probability", "logit")
    logits = torch.tensor([[[[-6.0, 0.5]]]])                       # (B, 1, 1, 2) -> a 1 x 8 mask
    prob = task.decode(logits, (1, 8), {}, paper)
    # pixel 5 samples 0.875 of the way to the second logit (align_corners=False)
    expected = 0.125 * torch.sigmoid(torch.tensor(-6.0)) + 0.875 * torch.sigmoid(torch.tensor(0.5))
    assert prob[0, 0, 5] == pytest.approx(float(expected), abs=1e-6) and float(expected) > 0.5
    logit = task.decode(logits, (1, 8), {}, ours)
    assert logit[0, 0, 5] == pytest.approx(-0.3125, abs=1e-6)      # the resized logit says background
    target, valid = torch.zeros(1, 1, 8), torch.ones(1, 1, 8, dtype=torch.bool)
    target[0, 0, 5:] = 1
    by_hand = torch.nn.BCELoss()(prob.flatten(), target.flatten())
    assert float(task.loss(prob, target, valid, paper)) == pytest.approx(float(by_hand), rel=1e-6)
    paper_metrics, our_metrics = task.new_metrics(paper), task.new_metrics(ours)
    paper_metrics.update(prob, target, valid)
    our_metrics.update(logit, target, valid)
    # the paper's order finds pixels 5-7 (IoU 1); the logit's finds 6-7 (IoU 2/3)
    assert paper_metrics.result()["iou"] == pytest.approx(1.0, abs=1e-5)
    assert our_metrics.result()["iou"] == pytest.approx(2 / 3, abs=1e-5)
    with pytest.raises(Exception, match="segmentation_output 'prob'"):
        task.decode(logits, (1, 8), {}, DenseChoices(segmentation_output="prob"))


def test_the_two_orders_agree_when_the_head_outputs_the_mask_size():
    task = get_task("segmentation")
    logits = torch.randn(2, 1, 6, 6)
    prob = task.decode(logits, (6, 6), {}, PAPER.dense_choices("segmentation"))
    logit = task.decode(logits, (6, 6), {}, MIDPROBE.dense_choices("segmentation"))
    assert torch.equal(prob > 0.5, logit > 0)


# 2. the CLS token in NAVI's correspondence BatchNorm -------------------------------------------------

def test_batch_statistics_count_each_views_cls_token_as_one_more_position():
    views = [{"a": np.full((1, 1, 1), v, np.float32)} for v in (1.0, 3.0)]
    normed = batch_standardise(views, [np.array([5.0]), np.array([7.0])], "a")
    # tokens 1, 5, 3, 7: mean 4, biased variance 5
    assert [float(n["a"][0, 0, 0]) for n in normed] == pytest.approx([-3 / math.sqrt(5 + 1e-5),
                                                                       -1 / math.sqrt(5 + 1e-5)])
    without = batch_standardise(views)
    assert [float(n["a"][0, 0, 0]) for n in without] == pytest.approx([-1 / math.sqrt(1 + 1e-5),
                                                                        1 / math.sqrt(1 + 1e-5)])
    # another layer's statistics never see the CLS
    two = [{"a": v["a"], "b": v["a"]} for v in views]
    normed = batch_standardise(two, [np.array([5.0]), np.array([7.0])], "a")
    assert float(normed[0]["b"][0, 0, 0]) == pytest.approx(-1 / math.sqrt(1 + 1e-5))


def _pairs(root, n=4, size=16):
    writer = create_dataset_store(root.dataset_store("pp"), name="pp", source="t", attrs={"depth_kind": "metric"})
    fields = {"images": ((size, size, 3), "uint8"), "depth": ((size, size), "float32"), "K": ((3, 3), "float32"),
              "pose": ((4, 4), "float32")}
    out = writer.split("pairs", num_images=n, height=size, width=size, fields=fields)
    k = np.array([[20.0, 0, size / 2], [0, 20.0, size / 2], [0, 0, 1]], np.float32)
    out.append({"images": np.zeros((n, size, size, 3), np.uint8), "depth": np.full((n, size, size), 2.0, np.float32),
                "K": np.repeat(k[None], n, 0), "pose": np.repeat(np.eye(4, dtype=np.float32)[None], n, 0)})
    out.put_relation("pairs", np.arange(n, dtype=np.int32).reshape(-1, 2))
    out.put_relation("pair_rotation_deg", np.zeros(n // 2, np.float32))
    writer.finish()
    return open_dataset("pp", root=root)


def _features(root, store, model, maps, vectors, global_kind):
    fingerprint = {"format_version": 1, "model": model, "weights": "test", "timm_version": "-", "layers": ["last"],
                   "input_size": list(store.split("pairs").image_size), "mean": [0, 0, 0], "std": [1, 1, 1],
                   "feature_norm": False, "dataset": "pp", "dataset_fingerprint": store.fingerprint,
                   "split": "pairs", "global_kind": global_kind}
    writer = open_feature_writer(root.feature_store("pp", model), split="pairs", fingerprint=fingerprint,
                                 num_images=len(maps), layer_shapes={"last": maps.shape[1:]}, strides={"last": 4},
                                 global_dim=vectors.shape[1], chunk_images=4)
    for ci in writer.pending():
        lo, hi = writer.chunk_range(ci)
        writer.write_chunk(ci, {"last": maps[lo:hi]}, vectors[lo:hi])
    assert writer.finalize()
    return open_features("pp", model, "pairs", root=root)


def test_paper_navi_statistics_include_the_cls_token_of_a_cls_split(root):
    store = _pairs(root)
    rng = np.random.default_rng(0)
    maps = rng.normal(0, 1, (4, 3, 4, 4)).astype(np.float32)
    cls = (rng.normal(0, 1, (4, 3)) * 10 + 20).astype(np.float32)        # far from the patches: moves the mean
    vit = _features(root, store, "vit", maps, cls, "cls-raw-last")
    cnn = _features(root, store, "cnn", maps, cls, "default")
    assert np.allclose(cls_tokens(vit, "patches+cls"), cls, atol=0.05)     # stored float16
    assert cls_tokens(vit, "patches") is None and cls_tokens(cnn, "patches+cls") is None
    choices = PAPER.correspondence_choices("navi")
    assert (choices.feature_norm, choices.norm_tokens) == ("batch", "patches+cls")
    assert PAPER.extraction_choices("correspondence", "navi").global_kind == "cls-raw-last"
    task = get_task("correspondence")
    with_cls, config = task.evaluate(features=vit, data=store.split("pairs"), dataset_attrs=store.attrs,
                                     protocol=PAPER)
    patches_only, config_cnn = task.evaluate(features=cnn, data=store.split("pairs"), dataset_attrs=store.attrs,
                                             protocol=PAPER)
    assert config["norm_cls"] and not config_cnn["norm_cls"]
    assert config["choices"]["norm_tokens"] == "patches+cls"
    assert set(with_cls) == set(patches_only)
