"""Robustness: seeded corruptions, corrupted test splits in the feature store, clean heads scored on them."""

import json
import re

import numpy as np
import pytest

from cache import MidprobeError, open_features
from extract.corruptions import CORRUPTIONS, OCCLUSION_FRACTIONS, corrupt_images, parse_corruption, parse_list
from extract.plan import plan_extraction
from extract.runner import extract
from probe.cli import main as probe_main
from probe.records import load_records
from probe.report.page import build_report
from probe.run import run_task
from protocols import MIDPROBE, ExtractionChoices, canonical_corruption, feature_split_name
from tests.conftest import write_tiny_dataset

MODEL = "test_vit_tiny"


def _images(n=3, size=40, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, size, size + 8, 3), dtype=np.uint8)


@pytest.mark.parametrize("name", sorted(CORRUPTIONS))
def test_every_corruption_is_a_pure_function_of_its_seed_and_the_image_index(name):
    images = _images()
    first = corrupt_images(images, f"{name}:3", np.arange(3))
    assert first.shape == images.shape and first.dtype == np.uint8
    assert not np.array_equal(first, images)
    assert np.array_equal(corrupt_images(images, f"{name}:3", np.arange(3)), first)
    # image 2 alone, at its index, gets the same draws as in the batch
    assert np.array_equal(corrupt_images(images[2:], f"{name}:3", np.array([2])), first[2:])
    assert np.array_equal(corrupt_images(images, f"{name}:0", np.arange(3)), images)       # severity 0 = clean


def test_random_corruptions_change_with_the_seed_and_leave_the_global_rng_alone():
    images = _images()
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    for name in ("gaussian_noise", "shot_noise", "motion_blur", "fog", "occlusion"):
        seed0 = corrupt_images(images, f"{name}:2", np.arange(3))
        assert not np.array_equal(corrupt_images(images, f"{name}:2:1", np.arange(3)), seed0)
        assert not np.array_equal(corrupt_images(images, f"{name}:2", np.arange(1, 4)), seed0)
    assert np.array_equal(np.random.get_state()[1], before)


def test_occlusion_covers_its_fraction_with_the_mean_colour():
    image = _images(n=1, size=64)
    for severity, fraction in enumerate(OCCLUSION_FRACTIONS, start=1):
        out = corrupt_images(image, f"occlusion:{severity}", np.array([5]))[0]
        mean = np.round(image[0].reshape(-1, 3).mean(axis=0)).astype(np.uint8)
        changed = (out != image[0]).any(axis=-1)
        assert (out[changed] == mean).all()
        covered = (out == mean).all(axis=-1).mean()
        assert fraction <= covered <= fraction + (64 // 3 + 1) * (72 // 3 + 1) / (64 * 72)


def test_corruption_names_are_checked_and_canonical():
    assert parse_corruption("none") is None and parse_corruption("") is None
    assert parse_corruption("fog:3").fingerprint()["library"] == "imagecorruptions-imaug"
    assert parse_list("fog:3,none,fog:3:0,occlusion:2:1") == ["fog:3", "occlusion:2:1"]
    assert canonical_corruption("fog:3:0") == "fog:3"
    for bad, says in (("fgo:3", "unknown corruption 'fgo'"), ("fog:6", "severity must be 0-5"), ("fog", "expected"),
                      ("fog:x", "integers")):
        with pytest.raises(MidprobeError, match=says):
            parse_list(bad)
    with pytest.raises(MidprobeError, match="at least 32x32"):
        corrupt_images(np.zeros((1, 16, 16, 3), np.uint8), "fog:1", np.array([0]))


def test_corruptions_plan_only_the_evaluation_splits_of_corruptible_tasks():
    attrs = {"name": "synthetic", "loader": "synthetic",
             "tasks": ["depth", "normals", "segmentation", "correspondence", "similarity"]}
    jobs = plan_extraction(attrs=attrs, splits=["train", "test", "pairs", "triplets"], protocol=MIDPROBE,
                           corruption="fog:3")
    assert {(j.source, j.name, j.training) for j in jobs} == {("test", "test@corrupt-fog-3", False),
                                                              ("pairs", "pairs@corrupt-fog-3", False)}
    assert feature_split_name("train", ExtractionChoices(corruption="fog:3"), training=True) == "train"
    with pytest.raises(MidprobeError, match="nothing to corrupt"):
        plan_extraction(attrs={**attrs, "tasks": ["similarity"]}, splits=["triplets"], protocol=MIDPROBE,
                        corruption="fog:3")


@pytest.fixture
def corrupted(root):
    """A tiny dataset with clean features and the corrupted test splits fog:0 and gaussian_noise:4."""
    write_tiny_dataset(root, splits={"train": 8, "test": 4}, height=32, width=48)
    extract(model=MODEL, dataset="tiny", root=root, progress=False)
    extract(model=MODEL, dataset="tiny", root=root, progress=False, corruptions="fog:0,gaussian_noise:4")
    return root


def test_corrupted_test_splits_are_their_own_feature_splits(corrupted):
    clean = open_features("tiny", MODEL, "test", root=corrupted)
    zero = open_features("tiny", MODEL, "test@corrupt-fog-0", root=corrupted)
    noisy = open_features("tiny", MODEL, "test@corrupt-gaussian_noise-4", root=corrupted)
    for layer in [*clean.layers, "global"]:
        assert np.array_equal(zero.group[layer][:], clean.group[layer][:])      # severity 0: bit for bit
        assert not np.array_equal(noisy.group[layer][:], clean.group[layer][:])
    assert noisy.fingerprint["corruption"] == {"name": "gaussian_noise", "severity": 4, "seed": 0,
                                               "library": "imagecorruptions-imaug",
                                               "version": parse_corruption("fog:1").fingerprint()["version"]}
    assert "corruption" not in clean.fingerprint and noisy.fingerprint["source_split"] == "test"
    with pytest.raises(MidprobeError, match=r"has no split 'train@corrupt-gaussian_noise-4'"):
        open_features("tiny", MODEL, "train@corrupt-gaussian_noise-4", root=corrupted)     # never training


def test_corrupted_features_repeat_exactly(corrupted, tmp_path):
    from cache import data_root

    again = data_root(tmp_path / "again")
    write_tiny_dataset(again, splits={"train": 8, "test": 4}, height=32, width=48)
    extract(model=MODEL, dataset="tiny", root=again, progress=False, corruptions="gaussian_noise:4")
    first = open_features("tiny", MODEL, "test@corrupt-gaussian_noise-4", root=corrupted)
    second = open_features("tiny", MODEL, "test@corrupt-gaussian_noise-4", root=again)
    for layer in first.layers:
        assert np.array_equal(first.group[layer][:], second.group[layer][:])


def test_probes_score_the_clean_heads_on_corrupted_features(corrupted):
    common = dict(task_name="segmentation", dataset="tiny", models=[MODEL], heads=["linear", "mlp"],
                  overrides={"batch_size": 4, "epochs": 2}, root=corrupted, quiet=True)
    clean = {r["probe"]: r["iou"] for r in run_task(**common)}
    rows = {r["probe"]: r for r in run_task(**common, test_corruptions="fog:0,gaussian_noise:4")}
    metrics = {(r["probe"]): r["metrics"] for r in load_records(corrupted)}
    for key in clean:
        assert rows[key]["iou"] == clean[key]                     # trained as a clean run, scored on clean test
        # the same heads on features equal to the clean ones give exactly the clean metrics
        assert metrics[f"{key}@corrupt-fog-0"] == metrics[key]
        assert metrics[f"{key}@corrupt-gaussian_noise-4"] != metrics[key]
    record = next(r for r in load_records(corrupted) if r["probe"].endswith("@corrupt-gaussian_noise-4"))
    assert record["config"]["test_corruption"] == "gaussian_noise:4"
    assert record["test_fingerprint"]["corruption"]["name"] == "gaussian_noise"
    assert record["feature_fingerprint"]["split"] == "train"
    page, _ = build_report(corrupted)
    text = page.read_text()
    assert "## Robustness — segmentation (tiny) [batch_size=4 epochs=2], midprobe protocol, linear heads" in text
    assert "| gaussian_noise |" in text and "| fog | " in text
    # one cell of the linear heads' table, recomputed from the two records on disk
    linear = next(key for key in clean if key.startswith("linear"))
    headline = {key: json.loads((corrupted.root / rows[key]["record"]).read_text())["headline"]
                for key in (linear, f"{linear}@corrupt-gaussian_noise-4")}
    iou, noisy = headline[linear], headline[f"{linear}@corrupt-gaussian_noise-4"]
    assert iou > 0
    column = "segmentation (tiny) [batch_size=4 epochs=2]"          # the column names the overridden choices
    section = text.split(f"## Robustness — {column}, midprobe protocol, linear heads")[1].split("\n## ")[0]
    # severities 0 (fog:0) and 4 (gaussian_noise:4) are the columns; each corruption fills one
    # each with its 95 % interval (clean: bootstrap; drop: paired bootstrap) and the seeds it pairs
    assert re.search(rf"\| {MODEL} \| gaussian_noise \| {100 * iou:.1f} \[[-\d.]+, [-\d.]+\] \| – \| "
                     rf"{100 * (iou - noisy) / abs(iou):.1f} % \[[-\d.]+, [-\d.]+\] \(seeds 0\) \|", section)
    assert re.search(rf"\| {MODEL} \| fog \| {100 * iou:.1f} \[[-\d.]+, [-\d.]+\] \| 0.0 % \[0.0, 0.0\] "
                     rf"\(seeds 0\) \| – \|", section)
    figure = page.parent / "figures" / "robustness_midprobe_linear_segmentation__tiny___batch_size_4_epochs_2.png"
    assert f"![robustness](figures/{figure.name})" in section
    assert figure.stat().st_size > 0 and figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    board = (page.parent / "leaderboard_midprobe_linear.csv").read_text()
    assert "corrupt" not in board


def test_missing_or_unsupported_corrupted_splits_are_one_line_errors(corrupted, capsys):
    data = ["--data", str(corrupted.root), "--dataset", "tiny"]
    assert probe_main(["--task", "depth", "--test-corrupt", "contrast:2", *data]) == 2
    err = capsys.readouterr().err
    assert "make extract MODEL=test_vit_tiny DATASET=tiny PROTOCOL=midprobe CORRUPT=contrast:2" in err
    assert probe_main(["--task", "similarity", "--test-corrupt", "fog:1", *data]) == 2
    assert "2AFC answer judges the clean images" in capsys.readouterr().err
    assert probe_main(["--task", "depth", "--test-corrupt", "fog:9", *data]) == 2
    assert "severity must be 0-5" in capsys.readouterr().err
