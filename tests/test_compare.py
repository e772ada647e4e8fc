"""The paper's 22 as published reference points: shipped values, their known R², and a report under
``PROTOCOL=paper`` that places a measured model among them."""

import csv
import re

import numpy as np
import pytest

from cache import data_root
from probe.records import load_records, write_record
from probe.report.__main__ import imagenet_arguments, main as report_main
from probe.report.compare import attach_published, level_scores
from probe.report.published import (COLUMNS, IMAGENET_COLUMN, PRINTED_R2, ZOO_NAMES, load_published)
from probe.report.stats import least_squares
from probe.report.tables import build_leaderboards
from tests import dataset_fixtures as fx


def test_shipped_values_give_the_r2_printed_on_the_papers_figures():
    published = load_published()
    assert len(published) == 22 and len({p.zoo for p in published}) == 22
    x = np.array([p.imagenet for p in published])
    assert x[[p.name for p in published].index("Jigsaw")] == 32.5        # the paper's IN1k_LP_BN, not VISSL's 48.6
    for column in COLUMNS.values():
        r2 = least_squares(x, np.array([p.values[column] for p in published]))[2]
        assert r2 == pytest.approx(PRINTED_R2[column], abs=0.01), column


def test_zoo_names_exist_and_high_level_score_is_the_imagenet_rank():
    from extract.backbones import BACKBONES

    assert set(ZOO_NAMES.values()) <= set(BACKBONES)
    published = load_published()
    text = (__import__("importlib.resources").resources.files("probe.report.published")
            .joinpath("paper_figure_values.csv").read_text())
    assert IMAGENET_COLUMN in text.splitlines()[0]
    from probe.report.tables import Leaderboard

    board = Leaderboard(head="dpt", columns=[], models=[p.name for p in published], protocol="paper")
    _, high = level_scores(board, {p.name: p.imagenet for p in published})
    assert high == {p.name: p.high_score for p in published}


def test_imagenet_arguments(tmp_path):
    assert imagenet_arguments(["mine=71.5", "other=3"]) == (None, {"mine": 71.5, "other": 3.0})
    path = tmp_path / "net.csv"
    path.write_text("model,imagenet_top1\nmine,70\n")
    assert imagenet_arguments([str(path)]) == (str(path), {})
    from cache import MidprobeError

    with pytest.raises(MidprobeError, match="expected MODEL=ACC with ACC the ImageNet top-1 in %"):
        imagenet_arguments(["mine=high"])
    with pytest.raises(MidprobeError, match="0-100"):
        imagenet_arguments(["mine=170"])


def _nyu_paper_root(tmp_path):
    """A data root with a tiny NYUv2-format fixture prepared under ``paper`` and one model probed on it."""
    from extract.datasets import prepare
    from extract.runner import extract
    from probe.run import run_task
    from protocols import get_protocol

    root = data_root(tmp_path / "data")
    raw = root.raw("nyuv2")
    fx.write_nyu(raw)
    fx.write_geonet_frame(raw / "nyu_geonet", "kitchen_0001_r-1.0-2.mat", value=100)
    (raw / "surfacenormal_metadata" / "train_SN40.json").write_text('[{"img": "000002_rgb.jpg"}]')
    paper = get_protocol("paper")
    prepare("nyuv2", root=root, progress=False, name=paper.dataset_name("nyuv2"), **paper.data_options("nyuv2"))
    extract(model="test_vit_tiny", dataset="nyuv2@paper", tasks=["depth"], protocol="paper", root=root, progress=False)
    # a linear head: the paper's DPT at 480 px takes minutes on a CPU (heads are not a protocol override)
    run_task(task_name="depth", dataset="nyuv2", models=["test_vit_tiny"], protocol="paper", root=root, quiet=True,
             layer_sets=[["block1"]], heads=["linear"])
    return root


def test_a_measured_model_among_the_published_22_under_paper(tmp_path, capsys):
    root = _nyu_paper_root(tmp_path)
    record = load_records(root)[0]
    assert record["item_scores"]["unit"] == "image" and len(record["item_scores"]["values"]) == 2
    assert np.mean(record["item_scores"]["values"]) == pytest.approx(record["headline"], abs=1e-6)
    assert record["training"]["steps"] > 0
    assert report_main(["--data", str(root.root), "--imagenet", "test_vit_tiny=55", "--quiet"]) == 0
    text = (root.reports() / "report.md").read_text()
    rows = [line for line in text.splitlines() if "| published (read off figures, ±0.3) |" in line]
    assert len(rows) == 22 + 22          # the leaderboard's and the ranking's
    measured = next(line for line in text.splitlines() if line.startswith("| test_vit_tiny | measured |"))
    assert re.search(r"\| \d+\.\d \[\d+\.\d, \d+\.\d\] \|$", measured)          # with its interval
    assert "ImageNet axis: the paper's own ImageNet-1k linear probe with BatchNorm" in text
    assert "(the 22 published alone: R² = 0.223)" in text                       # NYUv2 depth: the figure's 0.23
    assert (root.reports() / "figures" / "mid_vs_high_paper_linear_depth__nyuv2_paper.png").exists()
    with open(root.reports() / "leaderboard_paper_linear.csv") as handle:
        cells = list(csv.DictReader(handle))
    assert sum(c["source"] == "published" for c in cells) == 22
    mine = next(c for c in cells if c["model"] == "test_vit_tiny")
    assert float(mine["ci_low"]) <= float(mine["mean"]) <= float(mine["ci_high"]) and mine["steps"]


def test_published_points_stay_out_of_other_protocols_with_one_line_why(root):
    for model, value in (("a", 0.5), ("b", 0.6)):
        write_record(root, task="depth", dataset="nyuv2", model=model, probe="linear-all-lr0.0005",
                     config={"head": "linear"}, metrics={"d1": value}, headline="d1",
                     fingerprint={"model": model, "weights": "w"}, wall_seconds=1.0, seed=0)
    board = build_leaderboards(load_records(root))["midprobe", "linear"]
    attach_published(board)
    assert board.models == ["a", "b"] and not board.source
    assert board.published_note.startswith("published points are not shown: they were measured under the paper's")


def test_a_collapsed_head_is_flagged_in_the_leaderboard_and_csv(root, tmp_path):
    write_record(root, task="segmentation", dataset="synthetic", model="hog", probe="mlp-patch-lr0.0005",
                 config={"head": "mlp"}, metrics={"iou": 0.0}, headline="iou", fingerprint={"model": "hog"},
                 wall_seconds=1.0, seed=0, extra={"flags": ["collapsed"], "training": {"steps": 80}})
    board = build_leaderboards(load_records(root))["midprobe", "mlp"]
    assert board.cell("hog", "segmentation (synthetic)") == "0.0 collapsed"
    with open(board.write_csv(tmp_path / "board.csv")) as handle:
        row = next(csv.DictReader(handle))
    assert row["flags"] == "collapsed" and row["steps"] == "80"
