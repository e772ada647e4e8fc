"""Protocols as data: the registry, and each paper choice against a hand computation."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch

from cache import MidprobeError, create_dataset_store, open_dataset, open_features
from probe.heads import Probe, build_head
from probe.losses import gradient_loss_across_batch
from probe.metrics import SegmentationMetrics
from protocols import (DEVIATIONS, MIDPROBE, PAPER, DPTChoices, DenseChoices, ExtractionChoices,
                             get_protocol, with_deviation)
from probe.records import load_records
from probe.report.tables import build_leaderboards
from probe.run import run_task
from protocols import feature_split_name as feature_split
from probe.tasks import get_task
from probe.tasks.correspondence import _pair_row, batch_standardise
from protocols import NAVI_STYLE, SCANNET_STYLE
from probe.train import lr_multiplier
from tests.conftest import write_features


def test_paper_is_midprobe_with_every_listed_deviation_and_nothing_else():
    assert get_protocol(None) is MIDPROBE and get_protocol("paper") is PAPER
    with pytest.raises(MidprobeError, match="unknown protocol 'papr'; known protocols: midprobe, paper"):
        get_protocol("papr")
    keys = [d.key for d in DEVIATIONS]
    assert len(keys) == len(set(keys))
    for deviation in DEVIATIONS:
        alone = with_deviation(deviation.key)
        assert alone.as_dict() != {**MIDPROBE.as_dict(), "name": alone.name}, deviation.key   # it changes something
        for path, value in deviation.changes:
            node = PAPER
            for part in path:
                node = node[part] if isinstance(node, dict) or hasattr(node, "keys") else getattr(node, part)
            assert node == value, (deviation.key, path)
    # the midprobe default: principled where the paper's choice is a bug, the paper's where it is a protocol
    seg = MIDPROBE.dense_choices("segmentation")
    assert (seg.aggregation, seg.logit_norm, seg.feature_norm) == ("image", "none", "train-stats")
    assert MIDPROBE.dense_choices("depth").schedule == PAPER.dense_choices("depth").schedule == "quarter-cosine"
    assert MIDPROBE.dense_choices("depth").heads == ("linear", "mlp") and PAPER.dense_choices("depth").heads == ("dpt",)
    assert PAPER.dataset_name("nyuv2") == "nyuv2@paper" and MIDPROBE.dataset_name("nyuv2") == "nyuv2"
    assert PAPER.dataset_name("synthetic") == "synthetic"
    assert PAPER.extraction_choices("depth", "nyuv2").augment_views == 10
    assert PAPER.extraction_choices("segmentation", "voc").augment_views == 0
    assert PAPER.extraction_choices("correspondence", "scannet1500").input_norm == "half"
    assert PAPER.extraction_choices("correspondence", "navi").input_norm == "model"


def test_feature_split_names_follow_the_extraction_choices():
    paper_nights = PAPER.extraction_choices("similarity", "nights")
    assert feature_split("triplets", paper_nights) == "triplets@input-none+global-cls-raw-last"
    augmented = ExtractionChoices(augment_views=10, augment_policy="paper-nyu")
    assert feature_split("train", augmented, training=True) == "train@aug10-paper-nyu"
    assert feature_split("test", augmented) == "test"            # test images are never augmented
    assert feature_split("train", ExtractionChoices()) == "train"


def test_quarter_cosine_schedule_multipliers_at_fixed_steps():
    w, t = 15, 100                                   # 1.5 warm-up epochs of 10 steps, 10 epochs
    assert lr_multiplier(0, warmup=w, total=t) == pytest.approx(0.01)
    assert lr_multiplier(5, warmup=w, total=t) == pytest.approx(0.99 * 5 / 15 + 0.01)
    assert lr_multiplier(15, warmup=w, total=t) == pytest.approx(1.0)
    # 50 / 70 / 90 % of the decay: 0.99 cos(pi/4) + 0.01 etc.
    for frac, expected in ((0.5, 0.7100), (0.7, 0.4594), (0.9, 0.1649)):
        step = w + frac * (t - w)
        assert lr_multiplier(step, warmup=w, total=t) == pytest.approx(expected, abs=1e-4)
    assert lr_multiplier(t, warmup=w, total=t) == pytest.approx(0.01)
    assert lr_multiplier(10 * t, warmup=w, total=t) == pytest.approx(0.01)     # the floor holds


def test_paper_gradient_term_compares_images_two_apart_by_hand():
    torch.manual_seed(0)
    target = torch.rand(5, 3, 4) + 0.5
    pred = target * torch.exp(torch.randn(5, 3, 4) * 0.1)
    valid = torch.rand(5, 3, 4) > 0.2
    r = (torch.log(pred + 1e-3) - torch.log(target + 1e-3)) * valid
    expected = 0.0
    for step in (1, 2, 4, 6):
        idx = list(range(0, 5, step))
        n = valid[idx].sum()
        for a, b in zip(idx, idx[2:]):                       # images two apart in the sub-batch
            expected += ((r[a] - r[b]).abs() * valid[a] * valid[b]).sum() / n
    assert gradient_loss_across_batch(pred, target, valid).item() == pytest.approx(float(expected), rel=1e-5)
    # the same spatial error in every image is invisible to it, unlike the spatial gradient term
    from probe.losses import gradient_loss

    ramp = torch.linspace(0.5, 2.0, 4).view(1, 1, 4)
    same = torch.full((5, 3, 4), 2.0)
    everywhere = torch.ones_like(valid)
    assert gradient_loss_across_batch(same * ramp, same, everywhere).item() == pytest.approx(0.0, abs=1e-6)
    assert gradient_loss(same * ramp, same, everywhere).item() > 0.1


def test_per_batch_segmentation_scoring_equals_a_hand_computation():
    # three 2x2 images scored in batches of two: [0, 1] then the partial last batch [2]
    target = torch.tensor([[[1, 1], [0, 0]], [[1, 0], [0, 0]], [[0, 0], [0, 1]]]).float()
    score = torch.tensor([[[1, -1], [-1, -1]], [[1, 1], [1, -1]], [[-1, -1], [-1, 1]]]).float()
    valid = torch.ones_like(target, dtype=torch.bool)
    valid[1, 1, 1] = False                                            # one ignored pixel
    metrics = SegmentationMetrics("batch")
    metrics.update(score[:2], target[:2], valid[:2])
    metrics.update(score[2:], target[2:], valid[2:])
    out = metrics.result()
    # batch 1: image 0 tp=1 fn=1; image 1 tp=1 fp=2 (the ignored pixel is not counted) -> tp 2, fp 2, fn 1
    iou1, iou2 = 2 / (2 + 2 + 1 + 1e-6), 1 / (1 + 1e-6)
    assert out["iou"] == pytest.approx((iou1 + iou2) / 2)
    assert out["corloc"] == pytest.approx((0.0 + 1.0) / 2)           # one 0/1 per batch: 0.4 < 0.5, then 1
    p1, r1 = 2 / (4 + 1e-6), 2 / (3 + 1e-6)
    f1 = 1.09 * p1 * r1 / (0.09 * p1 + r1 + 1e-6)
    assert out["f_beta"] == pytest.approx((f1 + 1.09 / (1.09 + 1e-6)) / 2, rel=1e-5)
    assert out["pixel_accuracy"] == pytest.approx((4 / 7 + 1.0) / 2)
    assert out["batches"] == 2
    per_image = SegmentationMetrics("image")
    per_image.update(score, target, valid)
    # per image: IoU 1/(2 + 1e-6) (just under 0.5), 1/3, 1 -> only image 2 localises
    assert per_image.result()["corloc"] == pytest.approx(1 / 3)


def test_logit_batchnorm_thresholds_at_the_test_batch_mean():
    head = build_head("linear", in_channels=[1], out_channels=1)
    with torch.no_grad():
        head.conv.weight.fill_(1.0)
        head.conv.bias.zero_()
    probe = Probe(head, out_channels=1, logit_norm="batchnorm-train").evaluating()
    x = torch.tensor([1.0, 2.0, 3.0]).view(3, 1, 1, 1)                # logits 1, 2, 3: all positive
    assert (head(x) > 0).all()
    decided = probe(x).view(-1) > 0                                   # BN in train mode: above the batch mean
    assert decided.tolist() == [False, False, True]
    # the same image (logit 2) decides by its batch: foreground among smaller logits, background among larger
    assert probe(torch.tensor([0.0, 2.0, 1.0]).view(3, 1, 1, 1)).view(-1)[1] > 0
    assert probe(torch.tensor([4.0, 2.0, 3.0]).view(3, 1, 1, 1)).view(-1)[1] < 0
    plain = Probe(head, out_channels=1).evaluating()
    assert (plain(x) > 0).all() and not plain.training


def test_dpt_paper_details_change_the_vit_path():
    torch.manual_seed(0)
    feats = [torch.randn(1, 8, 3, 3) for _ in range(4)]
    ours = build_head("dpt", in_channels=[8] * 4, out_channels=2, hidden=4)
    paper = build_head("dpt", in_channels=[8] * 4, out_channels=2, hidden=4, dpt=PAPER.dense_choices("depth").dpt)
    paper.load_state_dict(ours.state_dict())
    assert ours(list(feats)).shape == (1, 2, 24, 24)                   # 8x the grid; the task does the last x2
    out = paper(list(feats))
    assert out.shape == (1, 2, 48, 48)                                # the paper's final nearest x2 inside
    assert torch.equal(out[..., ::2, ::2], out[..., 1::2, 1::2])      # nearest: 2x2 blocks repeat
    only_final = build_head("dpt", in_channels=[8] * 4, out_channels=2, hidden=4,
                            dpt=DPTChoices(final_upsample="nearest"))
    only_final.load_state_dict(ours.state_dict())
    assert torch.equal(only_final(list(feats))[..., ::2, ::2], ours(list(feats)))
    x = torch.randn(1, 4, 5, 5)
    post = paper.fuse[3].out
    assert torch.allclose(post(x), torch.relu(post.conv2(torch.relu(post.conv1(x)))) + x)


def test_scannet_errors_are_quarter_resolution_pixels():
    e2 = np.array([8.0, 8.0])                                          # full-resolution pixels
    scannet = _pair_row(e2, None, SCANNET_STYLE)
    assert scannet == {"recall_2d_5px": 1.0, "recall_2d_10px": 1.0, "recall_2d_20px": 1.0}   # 8 px = 2 quarter px
    navi = _pair_row(e2, np.array([0.015, 0.03]), NAVI_STYLE)
    assert navi["recall_2d_5px"] == 0.0 and navi["recall_2d_25px"] == 1.0 and navi["recall_3d_2cm"] == 0.5


def _pairs_store(root, name, style):
    """Two-image pairs of a fronto-parallel plane at 2 m (identity poses), 32 x 32 px."""
    n = 8
    writer = create_dataset_store(root.dataset_store(name), name=name, source="t",
                                  attrs={"depth_kind": "metric", "correspondence_style": style})
    fields = {"images": ((32, 32, 3), "uint8"), "depth": ((32, 32), "float32"), "K": ((3, 3), "float32"),
              "pose": ((4, 4), "float32")}
    out = writer.split("pairs", num_images=n, height=32, width=32, fields=fields)
    K = np.array([[40.0, 0, 16], [0, 40.0, 16], [0, 0, 1]], np.float32)
    out.append({"images": np.zeros((n, 32, 32, 3), np.uint8), "depth": np.full((n, 32, 32), 2.0, np.float32),
                "K": np.repeat(K[None], n, 0), "pose": np.repeat(np.eye(4, dtype=np.float32)[None], n, 0)})
    out.put_relation("pairs", np.arange(n, dtype=np.int32).reshape(-1, 2))
    out.put_relation("pair_rotation_deg", np.zeros(n // 2, np.float32))
    writer.finish()
    return open_dataset(name, root=root)


def _coordinate_maps(n, shift=0):
    """Stride-1 maps encoding each pixel's column and row; second views shifted ``shift`` px right."""
    v, u = np.mgrid[0:32, 0:32].astype(np.float32)
    maps = np.zeros((n, 4, 32, 32), np.float32)
    for i in range(n):
        uu = u - (shift if i % 2 else 0)
        maps[i] = [np.cos(uu / 5), np.sin(uu / 5), np.cos(v / 5), np.sin(v / 5)]
    return maps


def test_scannet_style_counts_a_known_8px_error_as_2px(root):
    for style, name in (("probe3d-scannet", "scan"), ("navi", "obj")):
        store = _pairs_store(root, name, style)
        write_features(root, dataset=name, model="m", split="pairs", maps={"xy": _coordinate_maps(8, shift=8)},
                       strides={"xy": 1})
        metrics, config = get_task("correspondence").evaluate(
            features=open_features(name, "m", "pairs", root=root), data=store.split("pairs"),
            dataset_attrs=store.attrs, overrides={"top": 20})
        assert config["style"]["name"] == style
        if style == "probe3d-scannet":
            # every confident match is 8 px (2 quarter-resolution px) off: inside 5 px, outside nothing
            assert metrics["recall_2d_5px"] == 1.0 and metrics["pixel_scale"] == 0.25
            assert "recall_3d_2cm" not in metrics and "recall_2d_10px_rot0-15" in metrics
        else:
            assert metrics["recall_2d_5px"] == 0.0 and metrics["recall_2d_25px"] == 1.0


def test_batch_statistics_standardisation_equals_a_hand_computation(root):
    views = [{"a": np.full((2, 1, 1), v, np.float32) * np.array([1, 10], np.float32)[:, None, None]} for v in (1, 3)]
    normed = batch_standardise(views)
    # channel 0 holds 1 and 3 (mean 2, var 1), channel 1 holds 10 and 30 (mean 20, var 100)
    assert normed[0]["a"][:, 0, 0] == pytest.approx([-1 / math.sqrt(1 + 1e-5), -10 / math.sqrt(100 + 1e-5)])
    assert normed[1]["a"][:, 0, 0] == pytest.approx([1 / math.sqrt(1 + 1e-5), 10 / math.sqrt(100 + 1e-5)])
    # end to end: "batch" on raw maps equals "none" on maps standardised by hand, batches of 2 pairs,
    # first and second views separately (the last batch is partial)
    store = _pairs_store(root, "bn", "navi")
    rng = np.random.default_rng(0)
    raw = (_coordinate_maps(8) + rng.normal(0, 0.3, (8, 4, 32, 32)) * np.arange(1, 5)[None, :, None, None]
           + np.arange(4)[None, :, None, None]).astype(np.float32)
    by_hand = raw.copy()
    for batch in ([0, 2], [1, 3], [4, 6], [5, 7]):                    # pairs (0,1),(2,3) | (4,5),(6,7); views apart
        x = raw[batch].astype(np.float64)
        by_hand[batch] = (x - x.mean((0, 2, 3), keepdims=True)) / np.sqrt(x.var((0, 2, 3), keepdims=True) + 1e-5)
    write_features(root, dataset="bn", model="raw", split="pairs", maps={"x": raw}, strides={"x": 1})
    write_features(root, dataset="bn", model="hand", split="pairs", maps={"x": by_hand.astype(np.float16)},
                   strides={"x": 1})
    task = get_task("correspondence")
    pairs = store.split("pairs")
    batched, _ = task.evaluate(features=open_features("bn", "raw", "pairs", root=root), data=pairs,
                               dataset_attrs=store.attrs, overrides={"feature_norm": "batch", "norm_batch": 2})
    hand, _ = task.evaluate(features=open_features("bn", "hand", "pairs", root=root), data=pairs,
                            dataset_attrs=store.attrs)
    plain, _ = task.evaluate(features=open_features("bn", "raw", "pairs", root=root), data=pairs,
                             dataset_attrs=store.attrs)
    assert batched["recall_2d_5px"] == pytest.approx(hand["recall_2d_5px"], abs=0.02)
    assert batched != plain


def _two_protocol_records(root):
    from probe.records import write_record

    for protocol, value in (("midprobe", 0.6), ("paper", 0.4)):
        write_record(root, task="depth", dataset="synthetic", model="m", probe="linear-all-lr0.0005",
                     config={"head": "linear", "protocol": protocol}, metrics={"d1": value}, headline="d1",
                     fingerprint={"model": "m"}, wall_seconds=1.0, seed=0, protocol=protocol)


def test_two_protocols_never_share_a_leaderboard(root):
    _two_protocol_records(root)
    records = load_records(root)
    assert sorted(r["protocol"] for r in records) == ["midprobe", "paper"]
    boards = build_leaderboards(records)
    assert set(boards) == {("midprobe", "linear"), ("paper", "linear")}
    assert boards["midprobe", "linear"].mean["m", "depth (synthetic)"] == pytest.approx(0.6)
    assert boards["paper", "linear"].mean["m", "depth (synthetic)"] == pytest.approx(0.4)
    from probe.report.page import build_report

    page, _ = build_report(root)
    text = page.read_text()
    assert "## Leaderboard — midprobe protocol, linear heads" in text
    assert "## Leaderboard — paper protocol, linear heads" in text


def test_every_record_carries_its_protocol_and_resolved_choices(synthetic_root):
    from tests.conftest import TINY_VIT  # noqa: F401  (registers the tiny ViT)
    from extract.runner import extract

    root = synthetic_root
    extract(model="test_vit_tiny", dataset="synthetic", splits=["train", "test"], root=root, progress=False)
    rows = run_task(task_name="segmentation", dataset="synthetic", models=["test_vit_tiny"], protocol="paper",
                    heads=["linear"], overrides={"epochs": 1, "hidden": 8}, root=root, quiet=True)
    record = json.loads((root.root / rows[0]["record"]).read_text())
    assert record["protocol"] == "paper" and "/paper/" in rows[0]["record"]
    settings = record["config"]["settings"]
    assert (settings["batch_size"], settings["aggregation"], settings["logit_norm"]) == (16, "batch", "batchnorm-train")
    assert record["config"]["overrides"] == {"epochs": 1, "hidden": 8}
    assert record["metrics"]["batches"] == 1                           # 8 test images, batches of 16
    assert dataclasses.asdict(DenseChoices()) != {k: settings[k] for k in dataclasses.asdict(DenseChoices())}
