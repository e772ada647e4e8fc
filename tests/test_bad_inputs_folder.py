"""The bad-input matrix, folder datasets (issue #30): images over the size limit, depth with no measured
pixel or an implausible value, sizes that cannot fit in memory, dangling links. Every row: one
``error:`` line, exit 2, and no store presented as complete."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from extract.datasets.__main__ import main as data_main
from probe.cli import main as probe_main
from tests.bad_inputs import GOOD, PROBE, _depth_folder, _folder_data, _no_store, _png_header, one_line, tiny_features


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_features(tmp_path_factory)


@pytest.mark.parametrize("check", [True, False])
def test_an_image_over_the_megapixel_limit_is_refused_from_its_header(check, tmp_path, capsys):
    raw = _depth_folder(tmp_path / "mine", [np.ones((16, 16))] * 3)
    (raw / "images" / "01.png").unlink()
    _png_header(raw / "images" / "01.png", 15000, 12000)          # PIL's own check: a DecompressionBombError
    code = _folder_data(raw, tmp_path / "data", *(["--check"] if check else []))
    one_line(code, capsys.readouterr().err, "^error: image .*01.png is 15000x12000 \\(180 megapixels\\); expected at "
             "most 100 megapixels: downscale it first")
    assert _no_store(tmp_path / "data")


@pytest.mark.parametrize("name,depths,option,expect", [
    ("all-zero", [np.zeros((16, 16))] * 3, (), "no depth file of the train split .* holds a measured pixel \\(every "
     "value is 0 or NaN\\); expected depth > 0 m somewhere in both train and test$"),
    ("all-nan", [np.full((16, 16), np.nan)] * 3, (), "no depth file of the train split"),
    ("test-zero", [GOOD, GOOD, np.zeros((16, 16))], (), "no depth file of the test split"),
    ("test-masked", [GOOD, GOOD, np.full((16, 16), 50.0)], ("--option", "max_depth=10"),
     "no depth file of the test split .*\\(every value is 0 or NaN, or beyond max_depth=10 m\\)"),
    ("far", [GOOD, np.where(np.eye(16) > 0, 1e30, 2.0), GOOD], (), "01.npy: 16 depth values beyond 10000 m \\(first "
     "1e\\+30 m at row 0, column 0\\); expected metres \\(check DEPTH_SCALE\\), or set OPTIONS=max_depth=<metres>"),
])
@pytest.mark.parametrize("check", [True, False])
def test_a_folder_depth_with_no_measured_pixel_or_an_implausible_value_is_one_line(name, depths, option, expect,
                                                                                   check, tmp_path, capsys):
    raw = _depth_folder(tmp_path / "mine", depths)
    code = _folder_data(raw, tmp_path / "data", *option, *(["--check"] if check else []))
    one_line(code, capsys.readouterr().err, "^error: .*" + expect)
    assert _no_store(tmp_path / "data")


def test_a_far_depth_is_masked_by_max_depth(tmp_path):
    from cache import open_dataset

    raw = _depth_folder(tmp_path / "mine", [GOOD, np.where(np.eye(16) > 0, 1e30, 2.0), GOOD])
    assert _folder_data(raw, tmp_path / "data", "--option", "max_depth=10") == 0
    depth = open_dataset(tmp_path / "data" / "stores" / "datasets" / "mine.zarr").split("train").read("depth")
    assert depth[1][np.eye(16) > 0].tolist() == [0.0] * 16 and (depth[1][np.eye(16) == 0] == 2.0).all()


@pytest.mark.parametrize("split", ["train", "test"])
def test_a_probe_on_a_split_with_no_valid_depth_stops_before_training(split, features, tmp_path, capsys):
    import zarr

    root = tmp_path / "data"
    shutil.copytree(features, root)
    depth = zarr.open_array(root / "stores" / "datasets" / "tiny.zarr" / split / "depth", mode="r+")
    depth[:] = np.where(np.arange(depth.shape[0])[:, None, None] % 2, np.nan, 0.0)
    capsys.readouterr()
    one_line(probe_main([*PROBE, "--data", str(root)]), capsys.readouterr().err,
             f"^error: no pixel of the {depth.shape[0]} images of split '{split}' holds a valid depth target \\(depth "
             "0, NaN or beyond the bins' 10 m\\); a probe would .* nothing: rebuild the dataset store")
    assert not (root / "results").exists() or not any((root / "results").rglob("*.json"))


@pytest.mark.parametrize("dataset", ["folder", "synthetic"])
def test_a_size_that_cannot_fit_in_memory_is_refused_before_allocating(dataset, tmp_path, capsys):
    raw = _depth_folder(tmp_path / "mine", [GOOD] * 3)
    args = ["--raw", str(raw), "--check"] if dataset == "folder" else ["--workers", "1"]
    code = data_main(["--dataset", dataset, *args, "--size", "100000", "--quiet", "--data", str(tmp_path / "data")])
    one_line(code, capsys.readouterr().err, "^error: size 100000x100000: building an image needs ~[0-9.]+ GiB "
             "\\(~64 bytes per pixel\\), .* of (available|free) RAM; expected a smaller SIZE=")
    assert _no_store(tmp_path / "data")


def test_a_dangling_image_link_is_one_line_naming_it(tmp_path, capsys):
    raw = _depth_folder(tmp_path / "mine", [GOOD] * 3)
    (raw / "images" / "03.png").symlink_to(tmp_path / "gone.png")
    one_line(_folder_data(raw, tmp_path / "data", "--check"), capsys.readouterr().err,
             "^error: .*images/03.png is a link to .*gone.png, which does not exist \\(1 such link\\(s\\) in "
             ".*images\\); expected an image: restore the target or delete the link$")
