"""The bad-input matrix: every row ends with exit status 2, one line starting ``error:``, no traceback,
and no store, record or report changed.

Raw files are damaged in each of the datasets' formats (truncated, corrupt, the wrong type),
folders are left out, splits left empty; the probe gets impossible learning rates and unknown
layers; extraction meets stores of a newer format and stores whose fingerprint differs in each
field; two extractions race into one store; and every command runs on a read-only data root.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import zarr
from PIL import Image

from cache import DataRoot, data_root, open_dataset, open_features
from cache.fingerprint import FINGERPRINT_FIELDS
from cache.verify import main as verify_main
from extract.cli import main as extract_main
from extract.datasets import prepare
from extract.datasets.__main__ import main as data_main
from extract.runner import extract
from probe.cli import main as probe_main
from probe.report.__main__ import main as report_main
from tests import dataset_fixtures as fx
from tests.conftest import write_tiny_dataset
from tests.filesystems import read_only_view, tree_bytes
from tests.raw_damage import (META, NYU, geonet_value, hdf5_pixel, json_edit, npz, pickled, pklz_normal,
                               remove, replace_with, savemat, scramble, truncate, write_geonet)

REPO = Path(__file__).resolve().parents[1]
CLIS = {"data": data_main, "extract": extract_main, "probe": probe_main, "report": report_main, "verify": verify_main}


def _features(root: DataRoot) -> None:
    write_tiny_dataset(root, splits={"train": 6, "test": 3}, height=32, width=48)
    for model in ("test_vit_tiny", "pixels"):
        extract(model=model, dataset="tiny", root=root, progress=False)
    assert probe_main(["--task", "depth", "--dataset", "tiny", "--model", "pixels", "--epochs", "1",
                       "--depth-bins", "grid", "--data", str(root.root), "--quiet"]) == 0


def _scannet(raw: Path) -> None:
    raw.mkdir(parents=True, exist_ok=True)
    fx.write_scannet(raw)


BASES: dict[str, Callable[[DataRoot], None]] = {
    "nyuv2": lambda root: fx.write_nyu(root.raw("nyuv2")),
    "navi": lambda root: fx.write_navi(root.raw("navi")),
    "voc": lambda root: fx.write_voc(root.raw("voc")),
    "nights": lambda root: fx.write_nights(root.raw("nights")),
    "scannet1500": lambda root: _scannet(root.raw("scannet1500")),
}


@pytest.fixture(scope="module")
def good_roots(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], DataRoot]:
    """Per base, a data root with valid raw files and the store prepared from them (built once)."""
    built: dict[str, DataRoot] = {}

    def get(base: str) -> DataRoot:
        if base not in built:
            root = data_root(tmp_path_factory.mktemp(base) / "data")
            if base == "features":
                _features(root)
            else:
                BASES[base](root)
                prepare(base, root=root, progress=False)
            built[base] = root
        return built[base]

    return get


PNG_BYTES = b"\x89PNG\r\n\x1a\n" + b"\0" * 64
NAVI = "raw/navi/duck_bath_yellow_s/"
VOC = "raw/voc/VOCdevkit/VOC2007/"
NIGHTS, SCANNET = "raw/nights/", "raw/scannet1500/"


@dataclass
class Row:
    base: str
    damage: Callable[[Path], None]
    cli: str
    args: tuple[str, ...]
    expect: str


def data(dataset: str, *options: str) -> tuple[str, ...]:
    return ("--dataset", dataset, "--quiet", *(a for o in options for a in ("--option", o)))


ROWS = {
    # NYUv2: the labeled .mat (HDF5), splits.mat (MATLAB v5), FAIR's pklz and SN40 json, GeoNet .mat
    "nyu-mat-truncated": Row("nyuv2", truncate(NYU + "nyu_depth_v2_labeled.mat"), "data", data("nyuv2"),
                             "nyu_depth_v2_labeled.mat .*truncated file.*expected the MATLAB v7.3"),
    "nyu-mat-corrupt": Row("nyuv2", scramble(NYU + "nyu_depth_v2_labeled.mat", 600), "data", data("nyuv2"),
                           "cannot read .*nyu_depth_v2_labeled.mat"),
    "nyu-mat-wrong-type": Row("nyuv2", replace_with(NYU + "nyu_depth_v2_labeled.mat", PNG_BYTES), "data",
                              data("nyuv2"), "cannot read .*nyu_depth_v2_labeled.mat .*file signature not found"),
    "splits-mat-truncated": Row("nyuv2", truncate(NYU + "splits.mat", 0.6), "data", data("nyuv2"),
                                "cannot read .*splits.mat"),
    "splits-mat-corrupt": Row("nyuv2", scramble(NYU + "splits.mat", 128), "data", data("nyuv2"),
                              "cannot read .*splits.mat"),
    "splits-mat-wrong-type": Row("nyuv2", savemat(NYU + "splits.mat", trainNdxs="one", testNdxs="two"), "data",
                                 data("nyuv2"), "cannot read .*splits.mat .*expected MATLAB v5 with trainNdxs"),
    "pklz-truncated": Row("nyuv2", truncate(META + "all_normals.pklz"), "data", data("nyuv2"),
                          "cannot read .*all_normals.pklz .*expected a gzip pickle of numpy arrays"),
    "pklz-corrupt": Row("nyuv2", scramble(META + "all_normals.pklz", 10), "data", data("nyuv2"),
                        "cannot read .*all_normals.pklz"),
    "pklz-wrong-type": Row("nyuv2", pickled(META + "all_normals.pklz", [1, 2, 3]), "data", data("nyuv2"),
                           "all_normals.pklz lacks .*expected all_normals"),
    "sn40-json-truncated": Row("nyuv2", truncate(META + "train_SN40.json"), "data",
                               data("nyuv2", "split_source=sn40"), "cannot read .*train_SN40.json"),
    "sn40-json-wrong-type": Row("nyuv2", replace_with(META + "test_SN40.json", b'[{"img": 7}]'), "data",
                                data("nyuv2", "split_source=sn40"), "cannot read .*test_SN40.json"),
    "geonet-mat-truncated": Row("nyuv2", lambda d: (fx.write_geonet_frame(d / NYU / "nyu_geonet", "a.mat"),
                                                    truncate(NYU + "nyu_geonet/a.mat", 0.3)(d)),
                                "data", data("nyuv2", "geonet=true"), "cannot read .*a.mat .*GeoNet frame"),
    "nyu-missing-subfolder": Row("nyuv2", remove(META), "data", data("nyuv2", "split_source=sn40"),
                                 "missing .*train_SN40.json: expected FAIR's surface-normal split file"),
    "nyu-empty-split": Row("nyuv2", savemat(NYU + "splits.mat", trainNdxs=np.array([[1.0]]),
                                            testNdxs=np.zeros((0, 1))), "data", data("nyuv2"),
                           "the test split .*lists no frames"),
    # NYUv2 target values: depth NaN / inf / negative (0 is "no measurement", > 10 m is cut), normals
    # non-finite or zero inside the valid mask (the base splits: train frames 1 and 3, test 2 and 4, 1-based)
    "nyu-depth-nan": Row("nyuv2", hdf5_pixel(NYU + "nyu_depth_v2_labeled.mat", "depths", 2, 100, 300, np.nan),
                         "data", data("nyuv2"), "nyu_depth_v2_labeled.mat, 'depths' of frame 3 \\(1-based\\): 1 depth "
                         "values are NaN, negative or infinite \\(first nan at row 100, column 300\\); expected metres "
                         ">= 0, 0 for no measurement"),
    "nyu-depth-inf": Row("nyuv2", hdf5_pixel(NYU + "nyu_depth_v2_labeled.mat", "rawDepths", 3, 5, 7, np.inf), "data",
                         data("nyuv2", "test_depth=rawDepths"), "'rawDepths' of frame 4 .*\\(first inf at row 5, column 7"),
    "nyu-depth-negative": Row("nyuv2", hdf5_pixel(NYU + "nyu_depth_v2_labeled.mat", "depths", 0, 479, 639, -0.5),
                              "data", data("nyuv2"), "'depths' of frame 1 .*\\(first -0.5 at row 479, column 639\\)"),
    "nyu-normals-zero": Row("nyuv2", pklz_normal(1, 10, 10, (0.0, 0.0, 0.0)), "data", data("nyuv2"),
                            "all_normals.pklz, frame 2 \\(1-based\\): 1 normals are non-finite \\(or of zero length "
                            "inside the valid mask\\) \\(first \\(0.0, 0.0, 0.0\\) at row 10, column 10\\); expected finite, "
                            "non-zero normals where all_valid_depth_masks is 1"),
    "nyu-normals-nan": Row("nyuv2", pklz_normal(2, 200, 5, (np.nan, 0.0, 1.0)), "data", data("nyuv2"),
                           "all_normals.pklz, frame 3 .*\\(first \\(nan, 0.0, 1.0\\) at row 200, column 5\\)"),
    "geonet-depth-nan": Row("nyuv2", geonet_value("depth", 30, 40, np.nan), "data", data("nyuv2", "geonet=true"),
                            "a.mat, 'depth': 1 depth values are NaN, negative or infinite \\(first nan at row 30, column "
                            "40\\); expected metres >= 0"),
    "geonet-depth-inf": Row("nyuv2", geonet_value("depth", 0, 0, np.inf), "data", data("nyuv2", "geonet=true"),
                            "a.mat, 'depth': 1 depth values .*\\(first inf at row 0, column 0\\)"),
    "geonet-depth-negative": Row("nyuv2", geonet_value("depth", 479, 639, -2.0), "data", data("nyuv2", "geonet=true"),
                                 "a.mat, 'depth': 1 depth values .*\\(first -2.0 at row 479, column 639\\)"),
    "geonet-normals-zero": Row("nyuv2", geonet_value("norm", 300, 200, 0.0), "data", data("nyuv2", "geonet=true"),
                               "a.mat, 'norm': 1 normals are non-finite \\(or of zero length inside the valid mask\\) "
                               "\\(first \\(0.0, 0.0, 0.0\\) at row 300, column 200\\); expected finite, non-zero normals "
                               "where GeoNet's mask > 0.5"),
    "geonet-normals-inf-stored": Row("nyuv2", geonet_value("norm", 300, 50, (np.inf, 1.0, 0.0)), "data",
                                     data("nyuv2", "geonet=true", "geonet_mask=false"),
                                     "a.mat, 'norm': 1 normals .*\\(first \\(inf, 1.0, 0.0\\) at row 300, column 50\\).* "
                                     "finite ones elsewhere \\(geonet_mask=false"),
    # NAVI: annotations json, EXIF JPEG, uint16 depth PNG
    "navi-json-truncated": Row("navi", truncate(NAVI + "wild_set/annotations.json"), "data", data("navi"),
                               "cannot read .*wild_set/annotations.json .*JSONDecodeError"),
    "navi-json-wrong-type": Row("navi", replace_with(NAVI + "wild_set/annotations.json", b'[{"filename": "000.jpg"}]'),
                                "data", data("navi"), "annotations.json .*expected a list of annotation records"),
    "navi-jpeg-truncated": Row("navi", truncate(NAVI + "wild_set/images/001.jpg", 0.3), "data", data("navi"),
                               "cannot read .*001.jpg .*expected a valid PNG or JPEG"),
    "navi-png-corrupt": Row("navi", scramble(NAVI + "multiview_00_pixel_4a/depth/001.png", 40), "data",
                            data("navi"), "cannot read .*depth/001.png"),
    "navi-missing-subfolder": Row("navi", remove(NAVI + "wild_set/depth"), "data", data("navi"),
                                  "missing .*wild_set/depth/000.png: expected a NAVI depth PNG"),
    "navi-empty-split": Row("navi", replace_with(NAVI + "wild_set/annotations.json", b"[]"), "data", data("navi"),
                            "split 'test' of dataset 'navi' would hold no images"),
    "navi-camera-nan": Row("navi", json_edit(NAVI + "wild_set/annotations.json",
                                             lambda records: records[1]["camera"].update(focal_length=float("nan"))),
                           "data", data("navi"), "wild_set/annotations.json: 001.jpg has camera .* focal_length nan; "
                           "expected finite values"),
    # VOC: JPEG images, palette PNG masks, ImageSets lists
    "voc-jpeg-truncated": Row("voc", truncate(VOC + "JPEGImages/000033.jpg", 0.2), "data", data("voc"),
                              "cannot read .*000033.jpg"),
    "voc-png-corrupt": Row("voc", scramble(VOC + "SegmentationObject/000001.png", 33), "data", data("voc"),
                           "cannot read .*000001.png"),
    "voc-png-wrong-type": Row("voc", lambda d: Image.new("L", (500, 375)).save(
        d / VOC / "SegmentationObject/000032.png"), "data", data("voc"), "000032.png is a L image; expected an 8-bit"),
    "voc-list-wrong-type": Row("voc", replace_with(VOC + "ImageSets/Segmentation/test.txt", b"\xff\xfe\x00\x9c"),
                               "data", data("voc"), "cannot read .*test.txt .*UnicodeDecodeError"),
    "voc-missing-subfolder": Row("voc", remove(VOC + "SegmentationObject"), "data", data("voc"),
                                 "missing .*000032.png: expected a VOC SegmentationObject palette PNG"),
    "voc-empty-split": Row("voc", replace_with(VOC + "ImageSets/Segmentation/test.txt", b"\n"), "data", data("voc"),
                           "test.txt lists no images"),
    # NIGHTS: data.csv and PNGs
    "nights-csv-truncated": Row("nights", truncate(NIGHTS + "data.csv", 0.55), "data", data("nights"),
                                "data.csv line \\d has fewer fields than the header"),
    "nights-csv-corrupt": Row("nights", replace_with(NIGHTS + "data.csv", b"id,votes\x00\n\xff\xff\x00"), "data",
                              data("nights"), "cannot read .*data.csv"),
    "nights-png-truncated": Row("nights", truncate(NIGHTS + "distort/000/001_1.png", 0.5), "data", data("nights"),
                                "cannot read .*001_1.png"),
    "nights-missing-subfolder": Row("nights", remove(NIGHTS + "distort"), "data", data("nights"),
                                    "missing .*distort/000/000_0.png: expected a NIGHTS image named in data.csv"),
    "nights-vote-nan": Row("nights", lambda d: (d / NIGHTS / "data.csv").write_text(
        (d / NIGHTS / "data.csv").read_text().replace("0,0.0,1.0,6,", "0,0.0,nan,6,")), "data", data("nights"),
        "data.csv line 2: id 0, votes 6, right_vote nan; expected finite numbers, right_vote a share in \\[0, 1\\]"),
    "nights-empty-split": Row("nights", lambda d: (d / NIGHTS / "data.csv").write_text(
        (d / NIGHTS / "data.csv").read_text().replace(",test,", ",val,")), "data", data("nights"),
        "no 'test' triplets with >= 6 votes"),
    # ScanNet-1500: npz, JPEG, 16-bit PNG, pose text
    "npz-truncated": Row("scannet1500", truncate(SCANNET + "test.npz"), "data", data("scannet1500"),
                         "cannot read .*test.npz .*LoFTR's ScanNet-1500 test.npz"),
    "npz-corrupt": Row("scannet1500", scramble(SCANNET + "intrinsics.npz", 4), "data", data("scannet1500"),
                       "cannot read .*intrinsics.npz"),
    "npz-wrong-type": Row("scannet1500", npz(SCANNET + "test.npz", name=np.array([["a", "b", "c", "d"]])), "data",
                          data("scannet1500"), "test.npz: expected integer 'name' of shape \\(P, 4\\)"),
    "scannet-png-wrong-type": Row("scannet1500", lambda d: Image.new("RGB", (640, 480)).save(
        d / SCANNET / "scene0707_00/depth/15.png"), "data", data("scannet1500"),
        "15.png is uint8 \\(480, 640, 3\\); expected uint16 millimetres"),
    "scannet-pose-corrupt": Row("scannet1500", replace_with(SCANNET + "scene0708_00/pose/0.txt", b"\x00\xff\x12"),
                                "data", data("scannet1500"), "cannot read .*pose/0.txt"),
    "scannet-missing-subfolder": Row("scannet1500", remove(SCANNET + "scene0708_00/color"), "data",
                                     data("scannet1500"), "missing .*scene0708_00/color/0.jpg"),
    "scannet-K-nan": Row("scannet1500", npz(SCANNET + "intrinsics.npz", scene0707_00=np.full((3, 3), np.nan),
                                            scene0708_00=np.eye(3)), "data", data("scannet1500"),
                         "intrinsics.npz: scene0707_00 is float64 \\(3, 3\\) \\[nan .*expected a finite 3x3 K"),
    "scannet-empty-split": Row("scannet1500", npz(SCANNET + "test.npz", name=np.zeros((0, 4), np.int64)), "data",
                               data("scannet1500"), "split 'pairs' of dataset 'scannet1500' would hold no images"),
}

PROBE = ("--task", "depth", "--dataset", "tiny", "--model", "pixels", "--epochs", "1", "--quiet")
EXTRACT = ("--model", "test_vit_tiny", "--dataset", "tiny", "--quiet")
TRAIN = "stores/features/tiny/test_vit_tiny.zarr"


def edit_fingerprint(field: str) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        group = zarr.open_group(str(data / TRAIN), mode="r+")["train"]
        fingerprint = dict(group.attrs["fingerprint"])
        value = fingerprint[field]
        fingerprint[field] = (value + 1 if isinstance(value, int) and not isinstance(value, bool) else
                              (not value) if isinstance(value, bool) else
                              [*value, 0] if isinstance(value, list) else f"{value}-other")
        group.attrs["fingerprint"] = fingerprint
    return damage


def newer_format(data: Path) -> None:
    zarr.open_group(str(data / TRAIN), mode="r+").attrs["midprobe_format"] = 2


ROWS.update({
    "lr-nan": Row("features", lambda d: None, "probe", (*PROBE, "--lr", "nan"), "--lr nan: expected finite"),
    "lr-inf": Row("features", lambda d: None, "probe", (*PROBE, "--lr", "5e-4,inf"), "--lr 0.0005,inf: expected"),
    "lr-negative": Row("features", lambda d: None, "probe", (*PROBE, "--lr=-1e-3"), "--lr -0.001: expected finite"),
    "probe-unknown-layer": Row("features", lambda d: None, "probe", (*PROBE, "--layers", "patch,block9"),
                               "layers block9 are not cached in split 'train' .*; no extraction can add it: model "
                               "'pixels' has one layer, 'patch'"),
    "extract-unknown-layer": Row("features", lambda d: None, "extract", (*EXTRACT, "--layers", "pool5"),
                                 "unknown layer 'pool5'; expected names like block0, block1"),
    "extract-layer-out-of-range": Row("features", lambda d: None, "extract", (*EXTRACT, "--layers", "block9"),
                                      "model 'test_vit_tiny' has no layers block9 \\(feature index 9 is out of range"),
    "newer-format-probe": Row("features", newer_format, "probe", (*PROBE, "--model", "test_vit_tiny"),
                              "test_vit_tiny.zarr has format 2, expected 1"),
    "newer-format-extract": Row("features", newer_format, "extract", EXTRACT,
                                "test_vit_tiny.zarr is a features store of format 2, not a feature store of format 1"),
    **{f"fingerprint-{field}": Row("features", edit_fingerprint(field), "extract", EXTRACT,
                                   f"test_vit_tiny.zarr/train has {field}=.* but .* was asked for" if field != "layers"
                                   else "test_vit_tiny.zarr/train has layers=.* in its fingerprint but holds .*: it was "
                                        "changed by hand")
       for field in FINGERPRINT_FIELDS},
})


def snapshot(root: DataRoot) -> dict[str, str]:
    """Every store, record and report under the root (raw files, locks and unfinished builds aside)."""
    return {k: v for k, v in tree_bytes(root.root).items()
            if not k.startswith("raw/") and not k.endswith(".lock") and ".zarr.building/" not in k}


def assert_one_line_error(code: int, err: str, expect: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    import re

    assert re.search(expect, lines[0]), lines[0]


@pytest.mark.parametrize("name", ROWS)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(name, good_roots, tmp_path, capsys):
    row = ROWS[name]
    root = data_root(tmp_path / "data")
    shutil.copytree(good_roots(row.base).root, root.root)
    row.damage(root.root)
    before = snapshot(root)
    capsys.readouterr()
    code = CLIS[row.cli]([*row.args, "--data", str(root.root)])
    assert_one_line_error(code, capsys.readouterr().err, row.expect)
    assert snapshot(root) == before


def test_the_datasets_own_no_data_codes_are_not_errors(tmp_path):
    """What genuine copies hold passes: NYU depth 0 and > 10 m (fx.nyu_frame: row 479, column 500 and rows 0-19),
    Ladicky normals zero or NaN outside all_valid_depth_masks (columns >= 540), GeoNet normals zero or NaN outside
    its mask (columns < 100) — stored as 0 (no data); GeoNet's zeros are stored as read with geonet_mask=false."""
    root = data_root(tmp_path / "data")
    fx.write_nyu(root.raw("nyuv2"))
    for row, value in ((100, (0.0, 0.0, 0.0)), (101, (np.nan, np.nan, np.nan))):
        pklz_normal(1, row, 550, value)(root.root)                  # frame 2 = the first test image
    geonet = root.raw("nyuv2") / "nyu_geonet" / "a.mat"
    write_geonet(geonet, "norm", {(200, 90): 0.0, (201, 90): np.nan})
    store = open_dataset(prepare("nyuv2", root=root, progress=False, geonet=True))
    test, train = store.split("test"), store.split("train")
    assert test.read("depth")[0][-1, 420] == 0 and not test.read("depth")[0][:20].any()
    assert not test.read("normals")[0][100:102, 470].any() and test.read("normals")[0][102, 400, 0] == 1
    assert not train.read("normals")[0][200:202, 10].any()
    write_geonet(geonet, "norm", {(200, 90): 0.0})
    paper = open_dataset(prepare("nyuv2", root=root, progress=False, geonet=True, geonet_mask=False)).split("train")
    np.testing.assert_array_equal(paper.read("normals")[0][200:202, 10], [[0, 0, 0], [0, 1, 0]])


def test_two_extractions_with_different_fingerprints_into_one_store_at_once(tmp_path):
    import timm
    import torch

    root = data_root(tmp_path / "data")
    write_tiny_dataset(root, splits={"train": 6, "test": 3}, height=32, width=48)
    torch.manual_seed(1)                              # other weights than the spec's random:0
    other = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, depth=2, embed_dim=32,
                              num_heads=2)
    torch.save(other.state_dict(), tmp_path / "other.pth")
    script = ("import sys; sys.path.insert(0, %r); import tests.conftest; from extract.cli import main; "
              "sys.exit(main(sys.argv[1:]))" % str(REPO))
    base = [sys.executable, "-c", script, *EXTRACT, "--data", str(root.root)]
    procs = [subprocess.Popen([*base, *extra], cwd=REPO, stderr=subprocess.PIPE, text=True)
             for extra in ([], ["--weights", str(tmp_path / "other.pth")])]
    results = [(p.wait(), p.stderr.read()) for p in procs]
    assert sorted(code for code, _ in results) == [0, 2]
    loser = max(results)[1]
    assert "Traceback" not in loser and len(loser.strip().splitlines()) == 1
    assert loser.startswith("error: feature store ") and " has weights=" in loser and "was asked for" in loser
    stored = open_features("tiny", "test_vit_tiny", "train", root=root).fingerprint["weights"]
    assert f" has weights={stored!r} but " in loser         # the winner's store, whole and alone
    assert verify_main(["--data", str(root.root)]) == 0


READ_ONLY = {
    "data": ("--dataset", "synthetic", "--train", "2", "--test", "1", "--pairs", "1", "--triplets", "1", "--size",
             "32", "--workers", "1", "--quiet"),
    "extract": ("--model", "hog", "--dataset", "tiny", "--split", "train", "--quiet"),
    "probe": PROBE,
    "report": ("--quiet",),
    "verify": ("--repair",),
}


@pytest.mark.parametrize("cli", READ_ONLY)
def test_a_read_only_data_root_is_one_line_exit_2(cli, good_roots, tmp_path, capsys):
    source = data_root(tmp_path / "data")
    shutil.copytree(good_roots("features").root, source.root)
    store = source.feature_store("tiny", "test_vit_tiny")
    chunk = next(p for p in (store / "train" / "block0" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"x")                                            # so repair has something to mark
    with read_only_view(source.root, tmp_path / "read-only") as view:
        root = data_root(view)
        before = snapshot(root)
        capsys.readouterr()
        code = CLIS[cli]([*READ_ONLY[cli], "--data", str(root.root)])
        assert_one_line_error(code, capsys.readouterr().err, "writable|Read-only file system")
        assert snapshot(root) == before
