import math

import pytest
import torch

from probe.losses import angular_loss, depth_loss, gradient_loss, masked_bce, sig_loss
from probe.metrics import (DepthMetrics, NormalMetrics, SegmentationMetrics, depth_metrics, match_scale_and_shift,
                           segmentation_metrics)
from probe.tasks.depth import bins_to_depth
from probe.train import lr_multiplier


def test_depth_metrics_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [4.0, 0.5]]])
    target = torch.tensor([[[1.0, 1.0], [2.0, 1.0]]])
    m = depth_metrics(pred, target, target > 0)
    assert m["d1"].item() == pytest.approx(0.25) and m["d3"].item() == pytest.approx(0.25)
    assert m["abs_rel"].item() == pytest.approx((0 + 1 + 1 + 0.5) / 4)
    assert m["rmse"].item() == pytest.approx(math.sqrt((0 + 1 + 4 + 0.25) / 4))


def test_invalid_depth_pixels_never_count():
    pred = torch.tensor([[[1.0, 100.0]]])
    target = torch.tensor([[[1.0, 0.0]]])
    m = depth_metrics(pred, target, target > 0)
    assert m["d1"].item() == 1.0 and m["rmse"].item() == 0.0


def test_scale_and_shift_alignment_recovers_an_affine_prediction():
    target = torch.rand(2, 5, 7) + 0.5
    pred = 0.3 * target - 0.1
    aligned = match_scale_and_shift(pred, target, target > 0)
    torch.testing.assert_close(aligned, target, atol=1e-5, rtol=1e-5)
    metrics = DepthMetrics()
    metrics.update(pred, target, target > 0)
    result = metrics.result()
    assert result["aligned_d1"] == pytest.approx(1.0) and result["d1"] < 0.5


def test_normal_metrics_at_a_known_angle():
    target = torch.zeros(1, 3, 4, 4)
    target[:, 2] = 1
    angle = math.radians(10)
    pred = torch.zeros(1, 3, 4, 4)
    pred[:, 0], pred[:, 2] = math.sin(angle), math.cos(angle)
    pred[:, :, :, 2:] *= 5                                  # scale must not matter
    valid = torch.ones(1, 4, 4, dtype=torch.bool)
    metrics = NormalMetrics()
    metrics.update(pred, target, valid)
    r = metrics.result()
    assert r["within_11.25"] == 1.0 and r["mean_deg"] == pytest.approx(10, abs=1e-3)
    assert r["median_deg"] == pytest.approx(10, abs=0.01) and r["rmse_deg"] == pytest.approx(10, abs=1e-3)
    pred[:, :, :2] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1)   # half the pixels at 90 degrees
    metrics = NormalMetrics()
    metrics.update(pred, target, valid)
    r = metrics.result()
    assert r["within_30.0"] == pytest.approx(0.5) and r["mean_deg"] == pytest.approx(50, abs=1e-3)


def test_segmentation_metrics_by_hand():
    score = torch.tensor([[[1.0, 1.0, 1.0, -1.0, -1.0, 5.0]]])     # foreground where > 0
    target = torch.tensor([[[1, 1, 0, 0, 0, 1]]])
    valid = torch.tensor([[[True, True, True, True, True, False]]])  # the last pixel is the 255 band
    m = segmentation_metrics(score, target, valid)
    precision, recall = 2 / 3, 1.0
    assert m["iou"].item() == pytest.approx(2 / 3, abs=1e-6)
    assert m["f_beta"].item() == pytest.approx(1.09 * precision * recall / (0.09 * precision + recall), abs=1e-5)
    assert m["pixel_accuracy"].item() == pytest.approx(4 / 5)
    assert m["corloc"].item() == 1.0
    metrics = SegmentationMetrics()
    metrics.update(score, target, valid)
    assert metrics.result()["f_beta_beta2"] == 0.09


def test_losses_known_values():
    target = torch.rand(2, 8, 8) + 1
    valid = torch.ones_like(target, dtype=torch.bool)
    assert sig_loss(target, target, valid).item() < 1e-5
    assert gradient_loss(3 * target, target, valid).item() == pytest.approx(0, abs=1e-3)   # scale-invariant up to eps
    assert depth_loss(2 * target, target, valid).item() > 0
    n = torch.zeros(1, 3, 2, 2)
    n[:, 2] = 1
    m = torch.zeros(1, 3, 2, 2)
    m[:, 0] = 1
    assert angular_loss(m, n, torch.ones(1, 2, 2, dtype=torch.bool)).item() == pytest.approx(math.pi / 2, abs=1e-3)
    logits = torch.tensor([[[0.0, 100.0]]])
    assert masked_bce(logits, torch.tensor([[[1.0, 0.0]]]), torch.tensor([[[True, False]]])).item() == pytest.approx(math.log(2))


def test_depth_bins_are_an_expectation_over_uniform_bins():
    logits = torch.full((1, 256, 1, 1), -10.0)               # all relu'd to 0: uniform 0.1 weights
    assert bins_to_depth(logits, 0.001, 10.0).item() == pytest.approx((0.001 + 10) / 2, rel=1e-5)
    logits[0, 255] = 1e6                                     # all mass on the last bin
    assert bins_to_depth(logits, 0.001, 10.0).item() == pytest.approx(10.0, rel=1e-4)


def test_warmup_then_cosine_schedule():
    half = dict(warmup=10, total=100, schedule="half-cosine")
    assert lr_multiplier(0, **half) == pytest.approx(0.1)
    assert lr_multiplier(9, **half) == pytest.approx(1.0)
    assert lr_multiplier(55, **half) == pytest.approx(0.5)
    assert lr_multiplier(100, **half) == pytest.approx(0.0)


def test_strided_upsampling_computes_the_same_values_on_a_subgrid():
    from probe.tasks.base import subsample, upsample

    x = torch.randn(2, 3, 7, 9)
    full = upsample(x, (56, 72))
    for stride in (2, 4):
        torch.testing.assert_close(upsample(x, (56, 72), stride), subsample(full, stride), atol=1e-5, rtol=1e-5)


def test_angular_loss_gradient_matches_autograd_through_acos():
    from probe.losses import cosine

    torch.manual_seed(0)
    pred = torch.randn(2, 3, 5, 7, dtype=torch.float64, requires_grad=True)
    target = torch.nn.functional.normalize(torch.randn(2, 3, 5, 7, dtype=torch.float64), dim=1)
    valid = torch.rand(2, 5, 7) > 0.3
    loss = angular_loss(pred, target, valid)
    (grad,) = torch.autograd.grad(loss, pred)
    reference = torch.acos(cosine(pred, target).clamp(-1 + 1e-4, 1 - 1e-4))[valid].mean()
    (expected,) = torch.autograd.grad(reference, pred)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-6)
    torch.testing.assert_close(grad, expected, atol=1e-8, rtol=1e-6)
    assert torch.autograd.gradcheck(lambda x: angular_loss(x, target, valid), (pred,))


def test_uncertainty_aware_angular_loss_by_hand():
    target = torch.zeros(1, 3, 1, 2)
    target[:, 2] = 1
    pred = torch.zeros(1, 4, 1, 2)
    pred[:, 2] = 1                                       # zero angle; kappa = elu(0) + 1.01 = 1.01
    kappa = 1.01
    expected = math.log1p(math.exp(-kappa * math.pi)) - math.log1p(kappa ** 2) + kappa * math.acos(1 - 1e-4)
    valid = torch.ones(1, 1, 2, dtype=torch.bool)
    assert angular_loss(pred, target, valid, uncertainty_aware=True).item() == pytest.approx(expected, abs=1e-5)


def test_strided_depth_decode_reads_the_bins_of_the_loss_pixels_only():
    from probe.tasks import get_task
    from probe.tasks.base import subsample
    from protocols import MIDPROBE, PAPER

    task = get_task("depth")
    attrs = {"max_depth": 10.0}
    for protocol in (MIDPROBE, PAPER):
        choices = protocol.dense_choices("depth")
        # logits at the target's size (a DPT whose last x2 is inside the head) and at a quarter of it
        for logits in (torch.randn(2, 256, 16, 24), torch.randn(2, 256, 4, 6)):
            full = task.decode(logits, (16, 24), attrs, choices)
            for stride in (2, 4):
                strided = task.decode(logits, (16, 24), attrs, choices, stride)
                torch.testing.assert_close(strided, subsample(full, stride), atol=1e-5, rtol=1e-5)
