"""Label efficiency: nested seeded training subsets read from the same cache, their records and report."""

import json
import re

import numpy as np
import pytest

from cache import MidprobeError, create_dataset_store, iterate_batches, open_features
from probe.cli import _train_images
from probe.cli import main as probe_main
from probe.records import load_records
from probe.report.page import build_report
from probe.report.studies import labels_needed
from probe.run import run_task, subset_sizes
from probe.train import nested_subset
from tests.conftest import write_features

SIZE = 16


def _dataset(root, n_train=24, n_test=6, chunk=4):
    """Foreground targets and "features" linear in them (plus noise), in chunks of ``chunk`` images."""
    rng = np.random.default_rng(0)
    writer = create_dataset_store(root.dataset_store("sub"), name="sub", source="test", attrs={"depth_kind": "metric"})
    fields = {"images": ((SIZE, SIZE, 3), "uint8"), "foreground": ((SIZE, SIZE), "uint8")}
    maps = {}
    for split, n in (("train", n_train), ("test", n_test)):
        fg = rng.integers(0, 2, (n, SIZE, SIZE)).astype(np.uint8)
        writer.split(split, num_images=n, height=SIZE, width=SIZE, fields=fields).append(
            {"images": np.zeros((n, SIZE, SIZE, 3), np.uint8), "foreground": fg})
        maps[split] = np.stack([fg, 1 - fg, rng.normal(size=fg.shape)], 1).astype(np.float32)
        maps[split][:, 2] += np.arange(n)[:, None, None]           # channel 2 carries the image index
    writer.finish()
    for split, values in maps.items():
        write_features(root, dataset="sub", model="lin", split=split, maps={"lin": values}, strides={"lin": 1},
                       chunk_images=chunk)


def test_subsets_are_nested_within_a_seed_and_differ_between_seeds():
    order = {n: nested_subset(100, n, seed=3) for n in (8, 16, 64)}
    assert set(order[8]) < set(order[16]) < set(order[64])
    for n, subset in order.items():
        assert len(subset) == n and len(set(subset)) == n and list(subset) == sorted(subset)
        assert subset.min() >= 0 and subset.max() < 100
    assert np.array_equal(nested_subset(100, 16, seed=3), order[16])          # seeded
    assert not np.array_equal(nested_subset(100, 16, seed=4), order[16])      # another seed, another subset


def test_subset_batches_cover_the_subset_once_per_epoch_in_a_seeded_order(root):
    _dataset(root, n_train=24, chunk=4)
    train = open_features("sub", "lin", "train", root=root)
    subset = nested_subset(24, 7, seed=1)

    def epoch(e, seed=0, members=subset):
        return [b for b in iterate_batches(train, layers=["lin"], batch_size=3, seed=seed, epoch=e, subset=members,
                                           window_chunks=2)]

    batches = epoch(0)
    seen = np.concatenate([b.index for b in batches])
    assert sorted(seen) == sorted(subset)                               # every subset image once, no other
    assert [len(b.index) for b in batches] == [3, 3, 1]
    for b in batches:                                                   # features are those of the indexed images
        assert np.allclose(b.features["lin"][:, 2].mean(axis=(1, 2)), b.index, atol=0.5)
    assert [list(b.index) for b in epoch(0)] == [list(b.index) for b in batches]
    assert [list(b.index) for b in epoch(1)] != [list(b.index) for b in batches]     # reshuffled each epoch
    every = [list(b.index) for b in epoch(0, members=np.arange(24))]
    plain = [list(b.index) for b in iterate_batches(train, layers=["lin"], batch_size=3, seed=0, epoch=0,
                                                    window_chunks=2)]
    assert every == plain                                               # a subset of all = no subset
    with pytest.raises(ValueError, match=r"subset of 1 images must be non-empty, inside images 0:24"):
        epoch(0, members=np.array([24]))


def test_subset_sizes_from_counts_fractions_and_all():
    assert subset_sizes([8, 0.25, None, 8, 24], 24) == [8, 6, None]
    assert subset_sizes(None, 24) == [None]
    assert _train_images("16,0.1,all") == [16, 0.1, None]
    for bad in ([0], [25], [1.5], [0.0]):
        with pytest.raises(MidprobeError, match=rf"train images {bad[0]:g}: (a fraction must be in \(0, 1\]|the train "
                                                r"split has 24 images; ask for 1-24 or all)"):
            subset_sizes(bad, 24)


def test_subset_records_carry_size_and_seed_and_leave_the_full_records_alone(root):
    _dataset(root)
    common = dict(task_name="segmentation", dataset="sub", models=["lin"], heads=["linear"], lrs=[0.05],
                  overrides={"batch_size": 4, "epochs": 2}, root=root, quiet=True)
    plain = {r["probe"]: r["iou"] for r in run_task(**common, seed=1)}
    rows = run_task(**common, seeds=[0, 1], train_images=[5, 0.5, "all" and None])
    keys = {(r["probe"], r["record"].rsplit("-seed", 1)[1]) for r in rows}
    # runs overriding protocol choices carry them in their file names
    assert keys == {(f"linear-lin-lr0.05{suffix}", f"{seed}+batch_size_4+epochs_2.json")
                    for suffix in ("-n5", "-n12", "") for seed in (0, 1)}
    full = next(r for r in rows if r["probe"] == "linear-lin-lr0.05" and "seed1+" in r["record"])
    assert full["iou"] == plain["linear-lin-lr0.05"]                  # the full-data heads are a plain run's
    records = {(r["probe"], r["seed"]): r for r in load_records(root)}
    small = records["linear-lin-lr0.05-n5", 1]
    assert small["config"]["train_images"] == 5
    assert small["config"]["train_subset"] == {"images": 5, "of": 24, "seed": 1}
    assert small["training"]["steps"] == 2 * 2                          # ceil(5 / 4) steps in each of 2 epochs
    assert records["linear-lin-lr0.05", 1]["training"]["steps"] == 6 * 2
    assert "train_subset" not in records["linear-lin-lr0.05", 1]["config"]
    assert small["metrics"]["iou"] != records["linear-lin-lr0.05-n12", 1]["metrics"]["iou"]


def test_ridge_fits_each_seeds_subsets_in_closed_form(root):
    _dataset(root)
    rows = run_task(task_name="segmentation", dataset="sub", models=["lin"], heads=["ridge"], seeds=[0, 1],
                    train_images=[10, None], root=root, quiet=True)
    assert sorted((r["probe"], r["record"].rsplit("-seed", 1)[1]) for r in rows) == [
        ("ridge-lin", "0.json"), ("ridge-lin-n10", "0.json"), ("ridge-lin-n10", "1.json")]
    records = {(r["probe"], r["seed"]): r for r in load_records(root)}
    assert records["ridge-lin-n10", 1]["config"]["train_subset"] == {"images": 10, "of": 24, "seed": 1}
    assert records["ridge-lin-n10", 1]["ridge"]["rows"] < records["ridge-lin", 0]["ridge"]["rows"]
    # the features are linear in the target: a fit on 10 images already separates foreground
    assert records["ridge-lin-n10", 0]["headline"] > 0.9 and records["ridge-lin", 0]["headline"] > 0.9
    from probe.features import Standardizer
    from probe.ridge import fit_ridge
    from probe.tasks import get_task
    from cache import open_dataset

    store, train = open_dataset("sub", root=root), open_features("sub", "lin", "train", root=root)
    stats = {"lin": (np.zeros(3), np.ones(3))}
    kwargs = dict(train=train, train_data=store.split("train"), dataset_attrs=store.attrs, layers=["lin"],
                  standardizer=Standardizer(stats, __import__("torch").device("cpu")))
    task = get_task("segmentation")
    every = fit_ridge(task, **kwargs, subset=np.arange(24))
    assert np.allclose(every.weights.numpy(), fit_ridge(task, **kwargs).weights.numpy())   # all = no subset


def test_zero_shot_tasks_refuse_training_subsets(root, capsys):
    _dataset(root)
    data = ["--data", str(root.root), "--dataset", "sub"]
    assert probe_main(["--task", "similarity", "--train-images", "4", *data]) == 2
    assert "zero-shot" in capsys.readouterr().err
    assert probe_main(["--task", "segmentation", "--train-images", "40", *data]) == 2
    assert "the train split has 24 images" in capsys.readouterr().err


def test_labels_needed_interpolates_log_linearly():
    assert labels_needed([10, 100], [0.2, 0.8], 0.5) == "≈ 32"          # sqrt(10 * 100)
    assert labels_needed([10, 100], [0.6, 0.8], 0.5) == "≤ 10"
    assert labels_needed([10, 100], [0.2, 0.4], 0.5) == "> 100"


def test_report_draws_the_curve_and_keeps_subsets_out_of_the_leaderboard(root):
    _dataset(root)
    run_task(task_name="segmentation", dataset="sub", models=["lin"], heads=["linear"], lrs=[0.05], seeds=[0, 1],
             train_images=[3, 6, None], overrides={"batch_size": 4, "epochs": 2}, root=root, quiet=True)
    page, boards = build_report(root)
    text = page.read_text()
    # the column names the choices the runs overrode
    section = text.split("## Label efficiency — segmentation (sub) [batch_size=4 epochs=2], midprobe protocol, "
                         "linear heads")[1]
    figure = "label_efficiency_midprobe_linear_segmentation__sub___batch_size_4_epochs_2.png"
    assert f"![label efficiency](figures/{figure})" in section
    assert (page.parent / "figures" / figure).stat().st_size > 0
    # the row recomputed from the records on disk: per-size means over both seeds, the full split last
    mean = {n: 100 * np.mean([json.loads(p.read_text())["headline"] for p in root.results().rglob(pattern)])
            for n, pattern in ((3, "linear-lin-lr0.05-n3-seed?+*.json"), (6, "linear-lin-lr0.05-n6-seed?+*.json"),
                               (24, "linear-lin-lr0.05-seed?+*.json"))}
    assert mean[24] > 0
    needed = [labels_needed([3.0, 6.0, 24.0], [mean[3], mean[6], mean[24]], x * mean[24]) for x in (0.5, 0.9)]
    # with the full score's interval, the seeds, and each size's steps (same epochs: ceil(n / 4) x 2)
    assert re.search(rf"\| lin \| `linear-lin-lr0.05` \| {mean[24]:.1f} \[[\d.]+, [\d.]+\] \(24\) \| "
                     rf"{needed[0]} \| {needed[1]} \| 0, 1 \| 2 / 4 / 12 \|", section)
    assert "same number of epochs as the whole split" in section
    html = (page.parent / "report.html").read_text()               # the shared page holds the section too
    studies = html.split('<section id="studies">')[1].split("</section>")[0]
    assert "Label efficiency — segmentation (sub) [batch_size=4 epochs=2]" in studies
    assert 'src="data:image/png;base64,' in studies
    assert '<table class="sortable">' in studies and "<code>linear-lin-lr0.05</code>" in studies
    board = (page.parent / "leaderboard_midprobe_linear.csv").read_text()
    assert "-n3" not in board and "-n6" not in board and "linear-lin-lr0.05" in board
    full = [json.loads(p.read_text())["headline"] for p in root.results().rglob("linear-lin-lr0.05-seed?+*.json")]
    row = board.splitlines()[1].split(",")
    assert float(row[3]) == pytest.approx(np.mean(full)) and row[5] == "2"    # the full-data seeds only


def test_subsets_of_an_augmented_split_read_the_epochs_view_of_each_subset_image(root):
    from cache import open_feature_writer, open_dataset
    from probe.train import training_batches

    _dataset(root, n_train=8)
    store = open_dataset("sub", root=root)
    n, views = 8, 2
    maps = np.zeros((views * n, 1, 2, 2), np.float32) + np.arange(views * n)[:, None, None, None]
    fingerprint = {**open_features("sub", "lin", "train", root=root).fingerprint, "split": "train@aug2-paper-nyu",
                   "layers": ["lin"], "augment": {"views": views, "policy": "paper-nyu", "seed": 0}}
    writer = open_feature_writer(root.feature_store("sub", "aug"), split="train@aug2-paper-nyu",
                                 fingerprint=fingerprint, num_images=views * n, layer_shapes={"lin": (1, 2, 2)},
                                 strides={"lin": 8}, global_dim=1, chunk_images=4)
    for ci in writer.pending():
        lo, hi = writer.chunk_range(ci)
        writer.write_chunk(ci, {"lin": maps[lo:hi]}, np.zeros((hi - lo, 1), np.float32))
    assert writer.finalize()
    train = open_features("sub", "aug", "train@aug2-paper-nyu", root=root)
    targets = {"foreground": store.split("train").array("foreground")}
    for epoch in (0, 1):
        batches = list(training_batches(train, layers=["lin"], targets=targets, batch_size=2, seed=0, epoch=epoch,
                                        subset=np.array([1, 6])))
        index = np.concatenate([b.index for b in batches])
        assert sorted(index) == [epoch * n + 1, epoch * n + 6]                  # view epoch mod 2 of images 1, 6
        assert sorted(np.concatenate([b.features["lin"][:, 0, 0, 0] for b in batches])) == sorted(index)
        assert all(b.targets["foreground"].shape[0] == len(b.index) for b in batches)
