"""Real-dataset loaders on tiny fixtures in the original formats: shapes, units, masks, orientation."""

from __future__ import annotations

import re

import numpy as np
import pytest

from cache import MidprobeError, open_dataset
from extract.datasets import prepare
from extract.datasets.__main__ import main as data_main
from probe.cli import main as probe_main
from probe.run import run_task
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
    assert depth[-1, 420] == 0.0 and depth[100, 0] < depth[100, -1]      # 0 (no measurement) stays; grows rightward
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


def test_nyuv2_geonet_frames_feed_depth_and_normals_as_the_paper_reads_them(root):
    raw = root.raw("nyuv2")
    fx.write_nyu(raw)
    fx.write_geonet_frame(raw / "nyu_geonet", "kitchen_0001_r-1.0-2.mat", value=100.7)
    default = open_dataset(prepare("nyuv2", root=root, progress=False, geonet=True)).split("train")
    paper = open_dataset(prepare("nyuv2", root=root, progress=False, geonet=True, split_source="sn40",
                                 test_depth="rawDepths", geonet_mask=False, geonet_uint8="truncate",
                                 name="nyuv2@paper"))
    assert paper.attrs["loader"] == "nyuv2" and paper.attrs["name"] == "nyuv2@paper" and "absent_targets" not in paper.attrs
    train = paper.split("train")
    assert train.num_images == 1 and train.keys == ["images", "depth", "normals"]
    assert (train.read("depth")[0] == 2.0).all()                               # GeoNet's depth feeds depth
    normals = train.read("normals")[0]
    assert (normals[..., 1] == 1).all() and not normals[..., [0, 2]].any()    # and normals, mask ignored
    assert not default.read("normals")[0][:, :20].any()                       # the default applies the mask
    # img + 2 * mean = 100.7: the paper truncates to 100, the default rounds to 101; 300 wraps to 44 (x86 cast)
    image, rounded = train.read("images")[0], default.read("images")[0]
    assert tuple(image[300, 300]) == (100, 100, 100) and tuple(rounded[300, 300]) == (101, 101, 101)
    assert tuple(image[300, 320]) == (44, 44, 44) and tuple(rounded[300, 320]) == (255, 255, 255)
    with pytest.raises(MidprobeError, match="geonet_uint8 'floor': expected round"):
        prepare("nyuv2", root=root, progress=False, geonet=True, geonet_uint8="floor")


def test_nyuv2_without_fair_normals_is_images_and_depth_only(root, capsys):
    raw = root.raw("nyuv2")
    fx.write_nyu(raw)
    (raw / "surfacenormal_metadata" / "all_normals.pklz").unlink()
    store = open_dataset(prepare("nyuv2", root=root, progress=False))
    assert "all_normals.pklz" in capsys.readouterr().err
    assert store.attrs["tasks"] == ["depth"]
    assert set(store.attrs["absent_targets"]) == {"normals"}
    assert str(raw / "surfacenormal_metadata" / "all_normals.pklz") in store.attrs["absent_targets"]["normals"]
    for split in ("train", "test"):
        assert store.split(split).keys == ["images", "depth"]
    np.testing.assert_allclose(store.split("train").read("depth")[0][100], fx.nyu_frame(0)["depth"][100, 80:560])


def test_a_normals_probe_of_nyuv2_without_fair_normals_names_the_missing_file(root, capsys):
    raw = root.raw("nyuv2")
    fx.write_nyu(raw)
    pklz = raw / "surfacenormal_metadata" / "all_normals.pklz"
    pklz.unlink()
    prepare("nyuv2", root=root, progress=False)
    capsys.readouterr()
    # refused from the dataset store alone: no feature store is needed to say so
    with pytest.raises(MidprobeError, match=r"dataset 'nyuv2' cannot run task 'normals': missing " + re.escape(str(pklz))
                                            + r" \(FAIR's nyuv2_surfacenormal_metadata.zip") as error:
        run_task(task_name="normals", dataset="nyuv2", root=root, quiet=True)
    assert "\n" not in str(error.value)
    assert probe_main(["--task", "normals", "--dataset", "nyuv2", "--data", str(root.root), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(f"error: dataset 'nyuv2' cannot run task 'normals': missing {pklz} ")
    assert not root.results().exists()                                  # no record written


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
    papers = open_dataset(prepare("voc", root=root, progress=False, void_as_foreground=True, resample="lanczos",
                                  name="voc@paper"))
    assert papers.attrs["loader"] == "voc" and papers.attrs["options"]["image_resample"] == "lanczos"
    train_paper = papers.split("train")
    assert train_paper.read("foreground")[0][int(19 * 480 / 375), int(130 * 480 / 500)] == 1
    from PIL import Image

    jpeg = Image.open(raw / "VOCdevkit" / "VOC2007" / "JPEGImages" / "000032.jpg").convert("RGB")
    np.testing.assert_array_equal(train_paper.read("images")[0], np.asarray(jpeg.resize((480, 480), Image.LANCZOS)))
    np.testing.assert_array_equal(image, np.asarray(jpeg.resize((480, 480), Image.BILINEAR)))
    Image.new("RGB", (500, 375)).save(raw / "VOCdevkit" / "VOC2007" / "SegmentationObject" / "000001.png")
    with pytest.raises(MidprobeError, match="000001.png is a RGB image; expected an 8-bit palette"):
        prepare("voc", root=root, progress=False)


def test_nights_keeps_test_triplets_with_six_votes(root):
    raw = root.raw("nights")
    fx.write_nights(raw)
    store = open_dataset(prepare("nights", root=root, progress=False))
    assert store.attrs["loader"] == "nights" and store.attrs["name"] == "nights"
    split = store.split("triplets")
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
    store = open_dataset(prepare("scannet1500", root=root, progress=False, name="scannet1500@x"))
    assert store.attrs["loader"] == "scannet1500" and store.path.name == "scannet1500@x.zarr"
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
    with pytest.raises(MidprobeError, match="dataset 'voc' has no option split_source; its options: name, void_as_foreground, resample"):
        prepare("voc", root=root, split_source="sn40")
    with pytest.raises(MidprobeError, match="missing .*VOC2007: expected the extracted VOC2007 tars"):
        prepare("voc", root=root, progress=False)
    with pytest.raises(MidprobeError, match=r"store name '../voc': expected letters, digits"):
        prepare("voc", root=root, progress=False, name="../voc")
    assert data_main(["--dataset", "nights", "--data", str(root.root), "--option", "min_votes=six"]) == 2
    assert "option min_votes='six': expected an integer" in capsys.readouterr().err


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


def _background(images: np.ndarray, valid: np.ndarray) -> list[float]:
    """The median green level outside the object of each image (the fixture's image tag)."""
    return [float(np.median(image[~mask][:, 1])) for image, mask in zip(images, valid)]


def test_navi_every_4th_listed_image_of_every_split_and_a_store_name(root):
    raw = root.raw("navi")
    angles = {"multiview_00_pixel_4a": [0, 10, 20, 30, 40], "multiview_01_pixel_4a": [0, 10, 20, 30],
              "wild_set": [0, 50, 100, 150, 20, 70]}
    fx.write_navi(raw, angles=angles)
    store = open_dataset(prepare("navi", root=root, progress=False, every=4, name="navi@paper"))
    assert store.path.name == "navi@paper.zarr" and store.attrs["name"] == "navi@paper"
    assert store.attrs["loader"] == "navi" and store.attrs["options"]["every"] == 4
    train, test, pairs = store.split("train"), store.split("test"), store.split("pairs")
    # the global listing: multiview_00 images 0-4, multiview_01 images 0-3 -> keep 0, 4, 8
    np.testing.assert_allclose(_background(train.read("images"), train.read("foreground") > 0),
                               [fx.navi_background(0, 0), fx.navi_background(0, 4), fx.navi_background(1, 3)], atol=2)
    np.testing.assert_allclose(_background(test.read("images"), test.read("foreground") > 0),
                               [fx.navi_background(2, 0), fx.navi_background(2, 4)], atol=2)
    # pairs start at the kept test images; partners come from any wild image within 120 degrees
    shown = _background(pairs.read("images"), pairs.read("depth") > 0)
    np.testing.assert_allclose(shown[0::2], [fx.navi_background(2, 0), fx.navi_background(2, 4)], atol=2)
    partners = [min(range(6), key=lambda k: abs(fx.navi_background(2, k) - g)) for g in shown[1::2]]
    expected = [abs(angles["wild_set"][a] - angles["wild_set"][b]) for a, b in zip((0, 4), partners)]
    np.testing.assert_allclose(pairs.read("pair_rotation_deg"), expected, atol=1e-3)
    assert all(0 < e <= 120 for e in expected)
    full = open_dataset(prepare("navi", root=root, progress=False))
    assert [full.split(s).num_images for s in ("train", "test", "pairs")] == [9, 6, 12]
    assert full.path.name == "navi.zarr" and (root.dataset_store("navi@paper")).exists()
    with pytest.raises(MidprobeError, match="navi option crop='centre': expected one of object, paper"):
        prepare("navi", root=root, progress=False, crop="centre")


def test_navi_papers_centre_crop_cuts_an_off_centre_object_and_its_relative_minimum(root):
    raw = root.raw("navi")
    # plates at 0.4 m (columns 10-39), 0.5 m (40-89), 0.6 m (90-169) of the 400-wide upright frame
    fx.write_navi(raw, plates=((10, 40, 0.4), (40, 90, 0.5), (90, 170, 0.6)))

    def widths(store):
        depth = store.split("pairs").read("depth")[0]       # metric; wild image 0
        row = depth[np.nonzero((depth > 0).any(axis=1))[0].mean().astype(int)]
        return [np.isclose(row, d, atol=1e-3).sum() / len(row) for d in (0.4, 0.5, 0.6)]

    default = open_dataset(prepare("navi", root=root, progress=False))
    np.testing.assert_allclose(widths(default), [30 / 160, 50 / 160, 80 / 160], atol=0.01)   # the whole object
    paper = open_dataset(prepare("navi", root=root, progress=False, crop="paper", name="navi@crop"))
    # the paper keeps the central 300 x 300 square of the frame (columns 50-349) before the object box:
    # the 0.4 m plate is gone and 40 of the 0.5 m plate's 50 columns remain, beside all 80 at 0.6 m
    np.testing.assert_allclose(widths(paper), [0, 40 / 120, 80 / 120], atol=0.015)
    relative = paper.split("test").read("depth")[0]
    assert relative[relative > 0].min() == pytest.approx(0.01)          # minimum of the crop: 0.5 m
    image_min = open_dataset(prepare("navi", root=root, progress=False, crop="paper", relative_min="image",
                                     name="navi@min"))
    near = image_min.split("test").read("depth")[0]
    # minimum of the whole image, 0.4 m: (0.5 - 0.4) / (0.6 - 0.4) * 0.99 + 0.01, in the PNG's quantised depths
    d4, d5, d6 = 655.35 / fx.navi_code(np.array([0.4, 0.5, 0.6]))
    assert near[near > 0].min() == pytest.approx((d5 - d4) / (d6 - d4) * 0.99 + 0.01, abs=1e-5)
    assert near.max() == pytest.approx(1.0)
    # K is the paper's camera carried through the crops: the 0.5 m plate's left edge (column 50,
    # 149.5 px left of the principal point at f = 350) back-projects to x = -149.5 / 350 * 0.5 m
    pairs = paper.split("pairs")
    depth, K = pairs.read("depth")[0], pairs.read("K")[0].astype(np.float64)
    v = int(np.nonzero((depth > 0).any(axis=1))[0].mean())
    u = np.nonzero(np.isclose(depth[v], 0.5, atol=1e-3))[0].min()
    assert (u - K[0, 2]) / K[0, 0] * 0.5 == pytest.approx(-149.5 / 350 * 0.5, abs=0.004)


def test_navi_paper_normals_of_a_tilted_plane_match_a_hand_computation():
    from extract.datasets.navi_paper import paper_normals

    f, side, tilt = 500.0, 256, np.deg2rad(30.0)
    # a plane through (0, 0, 2 m) with normal (sin 30, 0, -cos 30), seen by a true camera whose principal
    # point is the crop's centre (128 px from its corner, centres at +0.5): Z = 2 / (1 - tan 30 x / f)
    u = np.arange(side) + 0.5 - side / 2
    depth = np.tile(2.0 / (1.0 - np.tan(tilt) * u / f), (side, 1)).astype(np.float32)
    normals = paper_normals(depth, f)
    # with the principal point at the corner the points are sheared, X' = X + (128 / f) Z, so the
    # normal becomes S^-T n = (nx, ny, nz - 0.256 nx), flipped to point away from the camera
    n = np.array([np.sin(tilt), 0.0, -np.cos(tilt)])
    sheared = np.array([n[0], n[1], n[2] - side / 2 / f * n[0]])
    expected = -sheared / np.linalg.norm(sheared)
    np.testing.assert_allclose(expected, [-0.449, 0.0, 0.893], atol=1e-3)
    np.testing.assert_allclose(normals[1:-1, 1:-1].reshape(-1, 3), np.broadcast_to(expected, (254 * 254, 3)), atol=2e-4)
    assert not normals[0].any() and not normals[:, -1].any()            # the border is zero
    flat = paper_normals(np.full((8, 8), 1.5, np.float32), f)
    np.testing.assert_allclose(flat[4, 4], [0, 0, 1], atol=1e-6)          # fronto-parallel: away from the camera


def test_navi_papers_box_and_normals_in_a_store(root):
    from extract.datasets.navi_paper import box_paper

    valid = np.zeros((100, 100), bool)
    valid[10:20, 5:45] = True        # box (9, 39) from (10, 5): centring needs row -5, so it slides to rows 0..
    assert box_paper(valid) == (0, 5, 39)
    valid[:] = False
    valid[40:50, 30:70] = True       # fits: centred rows 40 - 15 = 25
    assert box_paper(valid) == (25, 30, 39)
    raw = root.raw("navi")
    fx.write_navi(raw)
    store = open_dataset(prepare("navi", root=root, progress=False, crop="paper", normals="paper"))
    test = store.split("test")
    normals, relative, valid = test.read("normals")[0], test.read("depth")[0], test.read("foreground")[0] > 0
    far = relative == 1.0                   # the 0.6 m plate, away from its edges: fronto-parallel
    inner = np.zeros_like(far)
    inner[4:-4, 4:-4] = far[:-8, 4:-4] & far[8:, 4:-4] & far[4:-4, :-8] & far[4:-4, 8:]
    assert inner.sum() > 10_000
    np.testing.assert_allclose(normals[inner], np.broadcast_to([0, 0, 1], (inner.sum(), 3)), atol=1e-5)
    assert not normals[~valid].any() and "away from the camera" in store.attrs["normals_convention"]


def _force_png16_mode_i(monkeypatch):
    """Make Pillow open 16-bit greyscale PNGs as mode I (int32), as Pillow < 10.3 did."""
    from PIL import PngImagePlugin

    entry = PngImagePlugin._MODES[(16, 0)]
    monkeypatch.setitem(PngImagePlugin._MODES, (16, 0), tuple(x if x == "I;16B" else "I" for x in entry))


def test_16_bit_pngs_opened_as_mode_i_read_the_same(root, monkeypatch):
    from PIL import Image

    raw = root.raw("scannet1500")
    raw.mkdir(parents=True)
    fx.write_scannet(raw)
    fx.write_navi(root.raw("navi"))
    expected = {name: open_dataset(prepare(name, root=root, progress=False)).split(split).read("depth")
                for name, split in (("scannet1500", "pairs"), ("navi", "pairs"))}
    _force_png16_mode_i(monkeypatch)
    with Image.open(raw / "scene0707_00" / "depth" / "15.png") as png:
        assert png.mode == "I" and np.asarray(png).dtype == np.int32
    for name, split in (("scannet1500", "pairs"), ("navi", "pairs")):
        np.testing.assert_array_equal(open_dataset(prepare(name, root=root, progress=False)).split(split).read("depth"),
                                      expected[name])
