"""Real-dataset loaders on tiny fixtures in the original formats: shapes, units, masks, orientation."""

from __future__ import annotations

import numpy as np
import pytest

from cache import MidprobeError, open_dataset
from extract.datasets import prepare
from extract.datasets.__main__ import main as data_main
from tests import dataset_fixtures as fx


def test_nyuv2_official_split_crop_units_and_orientation(root):
    raw = root.raw("nyuv2")
    fx.write_nyu(raw)
    store = open_dataset(prepare("nyuv2", root=root, progress=False))
    assert store.attrs["depth_kind"] == "metric" and sorted(store.splits) == ["test", "train"]
    train, test = store.split("train"), store.split("test")
    assert train.num_images == 2 and test.num_images == 2 and train.image_size == (480, 480)
    expected = fx.nyu_frame(0)                         # splits.mat's 1-based index 1 = frame 0
    images = train.read("images")
    # the red marker sits in rows 0-39, columns 80-199 of the 640-wide frame: 0-119 after the crop
    np.testing.assert_array_equal(images[0], expected["images"][:, 80:560])
    assert tuple(images[0, 5, 5]) == (255, 0, 0) and tuple(images[0, 5, 130]) == (40, 40, 40)
    depth = train.read("depth")[0]
    assert depth[:20].max() == 0.0                     # > 10 m is invalid
    np.testing.assert_allclose(depth[100], expected["depth"][100, 80:560])
    assert depth[-1, 420] == 0.0 and depth[100, 0] < depth[100, -1]      # NaN invalid; depth grows to the right
    normals = train.read("normals")[0]
    np.testing.assert_array_equal(normals[10, 10], [1, 0, 0])
    np.testing.assert_array_equal(normals[300, 10], [0, 0, -1])
    assert not normals[:, 480 - 20:].any()             # FAIR's valid-depth mask (the right 100 columns) applied
    np.testing.assert_allclose(test.read("depth")[0][100], fx.nyu_frame(1)["depth"][100, 80:560])


def test_nyuv2_papers_options_and_bad_files(root):
    raw = root.raw("nyuv2")
    fx.write_nyu(raw, train=(1, 2), test=(3, 4))
    # the paper's choices: FAIR's SN40 json split (here it names other frames) and raw Kinect depth for test
    (raw / "surfacenormal_metadata" / "train_SN40.json").write_text('[{"img": "000004_rgb.jpg"}]')
    store = open_dataset(prepare("nyuv2", root=root, progress=False, split_source="sn40", test_depth="rawDepths"))
    assert store.split("train").num_images == 1
    np.testing.assert_allclose(store.split("train").read("depth")[0][100], fx.nyu_frame(3)["depth"][100, 80:560])
    np.testing.assert_allclose(store.split("test").read("depth")[0][100], 0.5 * fx.nyu_frame(2)["depth"][100, 80:560],
                               rtol=1e-6)
    (raw / "splits.mat").unlink()
    with pytest.raises(MidprobeError, match=r"missing .*splits.mat: expected NYU's official split"):
        prepare("nyuv2", root=root, progress=False)
    fx.write_nyu(raw)
    (raw / "nyu_depth_v2_labeled.mat").write_bytes(b"not hdf5")
    with pytest.raises(MidprobeError, match="expected the MATLAB v7.3"):
        prepare("nyuv2", root=root, progress=False)


def test_nyuv2_geonet_training_frames(root):
    raw = root.raw("nyuv2")
    fx.write_nyu(raw)
    fx.write_geonet_frame(raw / "nyu_geonet", "kitchen_0001_r-1.0-2.mat", value=100)
    fx.write_geonet_frame(raw / "nyu_geonet", "library_0006_r-1300708259.539496-3335480784.mat")   # known unreadable
    (raw / "nyu_geonet" / "library_0006_r-1300708259.539496-3335480784.mat").write_bytes(b"broken")
    train = open_dataset(prepare("nyuv2", root=root, progress=False, geonet=True)).split("train")
    assert train.num_images == 1
    image = train.read("images")[0]
    assert tuple(image[5, 5]) == (200, 100, 100) and tuple(image[300, 300]) == (100, 100, 100)
    normals = train.read("normals")[0]
    assert not normals[:, :20].any() and (normals[:, 40:, 1] == 1).all()   # GeoNet's mask: columns < 100 of 640
    assert (train.read("depth")[0] == 2.0).all()


def test_voc_foreground_void_band_and_resize(root):
    raw = root.raw("voc")
    fx.write_voc(raw)
    store = open_dataset(prepare("voc", root=root, progress=False))
    train, test = store.split("train"), store.split("test")
    assert train.num_images == 2 and test.num_images == 1 and train.image_size == (480, 480)
    fg = train.read("foreground")[0]
    # instance 1 at rows 20-119 of 375, columns 30-229 of 500 -> scaled by 480/375 and 480/500
    assert fg[int(70 * 480 / 375), int(130 * 480 / 500)] == 1
    assert fg[int(250 * 480 / 375), int(375 * 480 / 500)] == 1        # instance 2 is foreground too
    assert fg[int(330 * 480 / 375), int(100 * 480 / 500)] == 0
    assert fg[int(19 * 480 / 375), int(130 * 480 / 500)] == 255       # the void band is ignored
    assert set(np.unique(fg)) == {0, 1, 255}
    image = train.read("images")[0]
    assert image[int(70 * 480 / 375), int(130 * 480 / 500), 0] > 200   # the red object under its mask
    papers = open_dataset(prepare("voc", root=root, progress=False, void_as_foreground=True)).split("train")
    assert papers.read("foreground")[0][int(19 * 480 / 375), int(130 * 480 / 500)] == 1
    from PIL import Image

    Image.new("RGB", (500, 375)).save(raw / "VOCdevkit" / "VOC2007" / "SegmentationObject" / "000001.png")
    with pytest.raises(MidprobeError, match="000001.png is a RGB image; expected an 8-bit palette"):
        prepare("voc", root=root, progress=False)


def test_nights_keeps_test_triplets_with_six_votes(root):
    raw = root.raw("nights")
    fx.write_nights(raw)
    split = open_dataset(prepare("nights", root=root, progress=False)).split("triplets")
    np.testing.assert_array_equal(split.read("triplets"), [[0, 1, 2], [3, 4, 5]])
    np.testing.assert_array_equal(split.read("triplet_answer"), [1, 0])      # right_vote 1.0, then 0.0
    np.testing.assert_array_equal(split.read("triplet_id"), [0, 1])
    images = split.read("images")
    assert images.shape == (6, 224, 224, 3)
    assert images[1, 5, 5, 0] == 255 and images[1, 5, 100, 0] == 30          # marker stays top-left
    (raw / "distort" / "000" / "001_1.png").unlink()
    with pytest.raises(MidprobeError, match="001_1.png: expected a NIGHTS image named in data.csv"):
        prepare("nights", root=root, progress=False)
    (raw / "data.csv").write_text("id,votes\n1,6\n")
    with pytest.raises(MidprobeError, match="lacks columns right_vote"):
        prepare("nights", root=root, progress=False)


def test_scannet1500_pairs_depth_intrinsics_poses(root):
    raw = root.raw("scannet1500")
    raw.mkdir(parents=True)
    fx.write_scannet(raw)
    store = open_dataset(prepare("scannet1500", root=root, progress=False))
    split = store.split("pairs")
    assert split.image_size == (480, 640) and split.num_images == 4
    np.testing.assert_array_equal(split.read("pairs"), [[0, 1], [2, 3]])
    depth = split.read("depth")
    assert depth[0, 10, 100] == pytest.approx(1.5) and depth[1, 10, 100] == pytest.approx(1.6)
    assert (depth[:, :, :50] == 0).all()
    images = split.read("images")
    assert images[0, 10, 10, 2] > 200 and images[0, 300, 400, 2] < 100       # blue marker top-left
    np.testing.assert_allclose(split.read("K")[2], np.load(raw / "intrinsics.npz")["scene0708_00"], rtol=1e-6)
    np.testing.assert_allclose(split.read("pose")[1], fx.scannet_pose(20.0, 0.1), atol=1e-6)
    np.testing.assert_allclose(split.read("pair_rotation_deg"), [20.0, 20.0], atol=1e-3)
    (raw / "scene0708_00" / "pose" / "45.txt").write_text("1 0 0\n")
    with pytest.raises(MidprobeError, match="45.txt holds"):
        prepare("scannet1500", root=root, progress=False)


def test_navi_crops_units_exif_poses_and_pairs(root):
    raw = root.raw("navi")
    fx.write_navi(raw)
    store = open_dataset(prepare("navi", root=root, progress=False))
    assert store.attrs["depth_kind"] == "relative"
    train, test, pairs = store.split("train"), store.split("test"), store.split("pairs")
    assert train.num_images == 2 and test.num_images == 3 and train.image_size == (512, 512)
    depth, images = test.read("depth"), test.read("images")
    valid = depth[0] > 0
    # the object box (rows 30-129, cols 40-199) becomes a 160-px square: the object fills its width
    assert valid[:, 5].any() and valid[:, -5].any()
    assert depth[0][valid].min() == pytest.approx(0.01) and depth[0][valid].max() == pytest.approx(1.0)
    left, right = depth[0][256, 100], depth[0][256, 400]
    assert left == pytest.approx(0.01) and right == pytest.approx(1.0)      # the nearer plate is on the left
    assert (images[0][valid][:, 0] > 150).mean() > 0.95                   # EXIF applied: red where depth is
    normals = test.read("normals")[0]
    np.testing.assert_allclose(normals[256, 60], [0, 0, -1], atol=1e-5)   # facing the camera
    assert not normals[~valid].any()
    assert pairs.attrs["depth_kind"] == "metric"
    metric = pairs.read("depth")[0]
    assert metric[metric > 0].min() == pytest.approx(655.35 / np.rint(655.35 / 0.5), rel=1e-6)
    rotations = pairs.read("pair_rotation_deg")
    assert len(rotations) == 3 and ((rotations > 0) & (rotations <= 120)).all()
    pose = pairs.read("pose")
    K = pairs.read("K")[0]
    assert K[0, 0] == pytest.approx(350 * 512 / 160, rel=1e-6)
    # the identity-rotation view sits 0.5 m in front of the object: camera at z = -0.5 in the object frame
    first = [p for p in pose if np.allclose(p[:3, :3], np.eye(3), atol=1e-6)]
    np.testing.assert_allclose(first[0][:3, 3], [0, 0, -0.5], atol=1e-6)


def test_unknown_options_and_missing_raw_folders_are_one_line_errors(root, capsys):
    with pytest.raises(MidprobeError, match="dataset 'voc' has no option split_source; its options: void_as_foreground"):
        prepare("voc", root=root, split_source="sn40")
    with pytest.raises(MidprobeError, match="missing .*VOC2007: expected the extracted VOC2007 tars"):
        prepare("voc", root=root, progress=False)
    assert data_main(["--dataset", "nights", "--data", str(root.root), "--option", "min_votes=six"]) == 2
    assert "option min_votes='six': expected a int" in capsys.readouterr().err


def test_the_store_fingerprint_follows_the_raw_files(root):
    raw = root.raw("nights")
    fx.write_nights(raw)
    first = open_dataset(prepare("nights", root=root, progress=False)).fingerprint
    assert open_dataset(prepare("nights", root=root, progress=False)).fingerprint == first      # deterministic
    (raw / "data.csv").write_text((raw / "data.csv").read_text().replace("a photo", "a picture"))
    second = open_dataset(prepare("nights", root=root, progress=False)).fingerprint
    assert second != first                                   # metadata: by contents
    from PIL import Image

    Image.new("RGB", (300, 300)).save(raw / "ref" / "000" / "000.png")
    assert open_dataset(prepare("nights", root=root, progress=False)).fingerprint != second   # images: by size
