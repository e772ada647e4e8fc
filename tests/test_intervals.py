"""Known answers of the report's intervals, paired comparisons and rank intervals."""

import numpy as np
import pytest

from probe.report.intervals import (Runs, bootstrap, interval, paired_difference, rank_intervals, runs_of,
                                    separable)


def _runs(*seeds: np.ndarray) -> Runs:
    return Runs(items=[{"values": s} for s in seeds], headlines=[float(s.mean()) for s in seeds])


def test_interval_matches_the_normal_approximation():
    rng = np.random.default_rng(3)
    for n, sd in [(64, 0.2), (400, 0.1), (2000, 0.3)]:
        values = np.clip(rng.normal(0.5, sd, n), 0, 1)
        lo, hi = interval(_runs(values))
        half = 1.96 * values.std(ddof=1) / np.sqrt(n)
        assert (hi - lo) / 2 == pytest.approx(half, rel=0.10)
        assert (lo + hi) / 2 == pytest.approx(values.mean(), abs=0.25 * half)


def test_interval_is_seeded_and_identical_scores_are_never_separable():
    values = np.random.default_rng(0).random(100)
    assert interval(_runs(values)) == interval(_runs(values.copy()))
    assert separable(_runs(values), _runs(values.copy())) is False
    assert paired_difference(_runs(values), _runs(values.copy())) == (0.0, 0.0)


def test_a_shifted_copy_is_separable_and_a_noisy_one_is_not():
    rng = np.random.default_rng(1)
    values = rng.random(50)
    assert separable(_runs(values + 0.01), _runs(values)) is True      # paired: every draw differs by +0.01
    lo, hi = paired_difference(_runs(values + 0.01), _runs(values))
    assert lo == pytest.approx(0.01) and hi == pytest.approx(0.01)
    assert separable(_runs(values), _runs(rng.permutation(values))) is False    # same scores, other images
    assert separable(_runs(values), _runs(values[:40])) is None                  # not the same test items


def test_seeds_widen_the_interval_and_without_items_the_t_interval_is_used():
    values = np.random.default_rng(2).random(200)
    one = interval(_runs(values))
    two = interval(_runs(values, values + 0.2))
    assert two[1] - two[0] > one[1] - one[0]
    assert bootstrap(Runs(headlines=[0.5])) is None and interval(Runs(headlines=[0.5])) is None
    lo, hi = interval(Runs(headlines=[0.4, 0.6]))
    assert (hi - lo) / 2 == pytest.approx(12.706 * np.std([0.4, 0.6], ddof=1) / np.sqrt(2))


def test_f1_of_triplet_answers_is_bootstrapped_as_f1():
    rng = np.random.default_rng(4)
    answer = rng.integers(0, 2, 500)
    choice = np.where(rng.random(500) < 0.8, answer, 1 - answer)
    record = {"headline": 0.0, "item_scores": {"statistic": "f1", "choice": choice.tolist(), "answer": answer.tolist()}}
    runs = runs_of([record])
    tp, fp, fn = ((choice == 1) & (answer == 1)).sum(), ((choice == 1) & (answer == 0)).sum(), ((choice == 0) & (answer == 1)).sum()
    f1 = 2 * tp / (2 * tp + fp + fn)
    lo, hi = interval(runs)
    assert lo < f1 < hi and hi - lo < 0.1
    assert np.median(bootstrap(runs)) == pytest.approx(f1, abs=0.01)


def test_rank_intervals_are_tight_for_separated_models_and_wide_for_ties():
    rng = np.random.default_rng(5)
    base = rng.random(300)
    columns = {"t1": {"good": _runs(base + 0.3), "a": _runs(base), "b": _runs(base + rng.normal(0, 0.01, 300)),
                      "published": 10.0}}
    out = rank_intervals(columns, ["published", "good", "a", "b"])
    assert out["published"] == (1.0, 1.0, 1.0)          # a fixed point above everyone
    assert out["good"] == (2.0, 2.0, 2.0)
    assert out["a"][1] == 3.0 and out["a"][2] == 4.0 and out["b"][1] == 3.0 and out["b"][2] == 4.0


def test_robustness_pairs_clean_and_corrupted_seed_by_seed(tmp_path):
    """The issue's case: clean over seeds 0-2, corrupted over seed 0 only. Unpaired, the clean mean
    (0.5) against seed 0's corrupted 0.59 reads as an 18 % gain; paired on seed 0 (clean 0.6) it is a
    1.7 % drop."""
    from cache import data_root
    from probe.records import load_records, write_record
    from probe.report.studies import robustness

    root = data_root(tmp_path / "data")
    rng = np.random.default_rng(0)
    noise = rng.normal(0, 0.01, 30)

    def record(seed, value, corruption=""):
        config = {"head": "linear", **({"test_corruption": corruption} if corruption else {})}
        probe = "linear-all-lr0.001" + ("@corrupt-fog-1" if corruption else "")
        values = np.clip(value + noise, 0, 1)
        write_record(root, task="depth", dataset="synthetic", model="m", probe=probe, config=config,
                     metrics={"d1": float(values.mean())}, headline="d1", fingerprint={"model": "m"},
                     wall_seconds=1.0, seed=seed, extra={"item_scores": {"unit": "image", "statistic": "mean",
                                                                          "metric": "d1", "values": values.tolist()}})

    for seed, value in enumerate([0.6, 0.45, 0.45]):
        record(seed, value)
    record(0, 0.59, "fog:1")
    lines = robustness(load_records(root), tmp_path)
    row = next(line for line in lines if line.startswith("| m | fog |"))
    assert "| 1.7 % [1.7, 1.7] (seeds 0) |" in row          # a constant shift: the paired interval is a point


def test_collapsed_heads_are_flagged():
    import torch

    from probe.metrics import DepthMetrics, NormalMetrics, SegmentationMetrics

    target = (torch.rand(2, 8, 8) > 0.5).long()
    valid = torch.ones(2, 8, 8, dtype=torch.bool)
    for score, flagged in ((-torch.ones(2, 8, 8), True), (torch.randn(2, 8, 8), False)):
        seg = SegmentationMetrics()
        seg.update(score, target, valid)
        assert (seg.result().flags == ["collapsed"]) is flagged
    depth_target = torch.rand(2, 8, 8) + 1
    for pred, flagged in ((torch.full((2, 8, 8), 2.0), True), (torch.rand(2, 8, 8) + 1, False)):
        depth = DepthMetrics()
        depth.update(pred, depth_target, valid)
        assert (depth.result().flags == ["collapsed"]) is flagged
    normal_target = torch.nn.functional.normalize(torch.randn(2, 3, 8, 8), dim=1)
    for pred, flagged in ((torch.tensor([0.0, 0.0, 1.0]).view(1, 3, 1, 1).expand(2, 3, 8, 8), True),
                          (torch.randn(2, 3, 8, 8), False)):
        normals = NormalMetrics()
        normals.update(pred, normal_target, valid)
        assert (normals.result().flags == ["collapsed"]) is flagged
