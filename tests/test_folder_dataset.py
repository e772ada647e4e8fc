"""Your own data: the folder loader on generated folders — every task end to end, units, geometry, every error."""

from __future__ import annotations

import csv
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cache import MidprobeError, data_root, open_dataset
from cache.camera import project, unproject
from extract.datasets import prepare
from extract.datasets.__main__ import main as data_main
from extract.datasets.folder import plan_fit
from extract.datasets.folder_example import main as example_main
from extract.datasets.folder_example import write_example
from extract.datasets.folder_layout import seeded_split
from extract.runner import extract
from probe.cli import main as probe_main
from probe.run import run_task
from probe.tasks import get_task

H, W = 60, 80                    # the example's images; a centre crop keeps columns 10..69


@pytest.fixture(scope="module")
def example(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """6 single views, 2 pairs, 2 triplets (16 images) at 60 x 80, every optional part present."""
    return write_example(tmp_path_factory.mktemp("raw") / "example", views=6, pairs=2, triplets=2, height=H,
                         width=W, seed=1)


@pytest.fixture
def folder(example: Path, tmp_path: Path) -> Path:
    """A private copy of the example for a test to change."""
    return Path(shutil.copytree(example, tmp_path / "mine"))


def _prepare(raw: Path, root, **options):
    return open_dataset(prepare("folder", root=root, raw=str(raw), progress=False, **options))


def _pixels(path: Path) -> np.ndarray:
    with Image.open(path) as img:
        return np.asarray(img)


def _mode(path: Path) -> str:
    with Image.open(path) as img:
        return img.mode


def _png(path: Path, array: np.ndarray) -> None:
    Image.fromarray(array).save(path)


def _cameras(raw: Path) -> dict:
    return json.loads((raw / "cameras.json").read_text())


def test_example_goes_through_data_extract_and_every_task(example, root):
    store = _prepare(example, root, size=48)
    assert store.path == root.dataset_store("example")
    assert store.name == "example" and store.attrs["loader"] == "folder"
    assert store.attrs["tasks"] == ["depth", "normals", "segmentation", "correspondence", "similarity"]
    assert store.attrs["absent_targets"] == {} and store.attrs["split_source"] == "split.csv"
    assert store.splits == ["pairs", "test", "train", "triplets"]
    train, test = store.split("train"), store.split("test")
    assert (train.num_images, test.num_images) == (15, 1) and train.image_size == (48, 48)
    assert test.attrs["image_names"] == ["view_003"]            # split.csv: every fourth single view
    assert train.keys == ["images", "depth", "normals", "foreground"]
    pairs, triplets = store.split("pairs"), store.split("triplets")
    assert pairs.attrs["image_names"] == ["pair_00_a", "pair_00_b", "pair_01_a", "pair_01_b"]
    np.testing.assert_array_equal(pairs.read("pairs"), [[0, 1], [2, 3]])
    assert np.all((pairs.read("pair_rotation_deg") >= 10) & (pairs.read("pair_rotation_deg") <= 60))
    np.testing.assert_array_equal(triplets.read("triplets"), [[0, 1, 2], [3, 4, 5]])
    rows = list(csv.reader((example / "triplets.csv").read_text().splitlines()))[1:]
    np.testing.assert_array_equal(triplets.read("triplet_answer"), [int(r[3]) for r in rows])
    deepest = max(float(train.read("depth").max()), 0.01)
    assert store.attrs["depth_range"] == [0.001, pytest.approx(deepest)]

    extract(model="hog", dataset="example", root=root, batch_size=8, progress=False)
    settings = {"epochs": 1, "batch_size": 8, "hidden": 8}
    for task in store.attrs["tasks"]:
        rows = run_task(task_name=task, dataset="example", models=["hog"], heads=["linear"], overrides=settings, root=root, quiet=True)
        assert len(rows) == 1 and get_task(task).headline in rows[0]
        assert (root.root / rows[0]["record"]).is_file()


def test_units_no_data_and_crop_without_resizing(example, root):
    """At SIZE=60 the 60 x 80 images are only centre-cropped (columns 10..69): exact known values."""
    store = _prepare(example, root, size=60)
    train = store.split("train")
    names = train.attrs["image_names"]
    crop = (slice(None), slice(10, 70))
    i = names.index("view_000")           # JPEG image, depth PNG in mm, float16 .npy normals, palette mask
    mm = _pixels(example / "depth" / "view_000.png").astype(np.float64)
    np.testing.assert_allclose(train.read("depth")[i], (mm / 1000)[crop], rtol=1e-6)
    normals = np.load(example / "normals" / "view_000.npy").astype(np.float64)
    normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
    np.testing.assert_allclose(train.read("normals")[i], normals[crop], atol=1e-6)
    assert _mode(example / "masks" / "view_000.png") == "P"
    np.testing.assert_array_equal(train.read("foreground")[i], _pixels(example / "masks" / "view_000.png")[crop])
    assert set(np.unique(train.read("foreground")[i])) == {0, 1, 255}
    j = names.index("view_005")           # PNG image (lossless), RGB-PNG normals
    np.testing.assert_array_equal(train.read("images")[j], _pixels(example / "images" / "view_005.png")[crop])
    code = _pixels(example / "normals" / "view_005.png").astype(np.float64) / 127.5 - 1
    np.testing.assert_allclose(train.read("normals")[j], (code / np.linalg.norm(code, axis=-1, keepdims=True))[crop],
                               atol=1e-6)
    k = names.index("view_002")           # .npy depth in metres with a NaN hole: NaN = no measurement = 0
    metres = np.load(example / "depth" / "view_002.npy")
    assert np.isnan(metres).sum() == 14 * 20
    np.testing.assert_allclose(train.read("depth")[k], np.nan_to_num(metres, nan=0.0)[crop], rtol=1e-6)
    assert (train.read("depth")[k] == 0).sum() == 14 * 20
    K = np.array(_cameras(example)["cameras"]["pair_00_a"]["K"])
    np.testing.assert_allclose(store.split("pairs").read("K")[0], K - [[0, 0, 10], [0, 0, 0], [0, 0, 0]], rtol=1e-6)


def test_exif_orientation_applies_to_the_image_before_sizes_are_matched(tmp_path, root):
    upright = np.zeros((40, 60, 3), np.uint8)
    upright[:10, :20] = (255, 0, 0)                          # a red block at the top left, as displayed
    mask = np.zeros((40, 60), np.uint8)
    mask[:10, :20] = 1
    raw = tmp_path / "turned"
    for sub in ("images", "masks"):
        (raw / sub).mkdir(parents=True)
    exif = Image.Exif()
    exif[0x0112] = 6                                         # display = stored pixels turned 90 degrees clockwise
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(raw / "images" / "a.png", exif=exif)
    _png(raw / "images" / "b.png", upright)
    for name in ("a", "b"):
        _png(raw / "masks" / f"{name}.png", mask)
    store = _prepare(raw, root, size="40x60", test_fraction=0.5)
    split = next(store.split(s) for s in ("train", "test") if "a" in store.split(s).attrs["image_names"])
    np.testing.assert_array_equal(split.read("images")[split.attrs["image_names"].index("a")], upright)
    # a mask in the stored (turned) orientation no longer fits its image
    _png(raw / "masks" / "a.png", np.ascontiguousarray(np.rot90(mask, 1)))
    with pytest.raises(MidprobeError, match=r"masks/a.png is 60x40 \(HxW\), its image .*a.png 40x60 after EXIF"):
        _prepare(raw, root, size="40x60")


def test_intrinsics_follow_crop_resize_and_pad():
    K = np.array([[100.0, 0, 99.5], [0, 100.0, 49.5], [0, 0, 1]])       # principal point at the centre of 100 x 200
    crop = plan_fit((100, 200), (50, 50), "crop")
    assert crop.box == (0, 50, 100, 100)
    np.testing.assert_allclose(crop.intrinsics(K), [[50, 0, 24.5], [0, 50, 24.5], [0, 0, 1]])
    pad = plan_fit((100, 200), (50, 50), "pad")
    assert pad.scaled == (25, 50) and pad.offset == (12, 0)
    np.testing.assert_allclose(pad.intrinsics(K), [[25, 0, 24.5], [0, 25, 24.0], [0, 0, 1]])
    image = np.full((100, 200), 7, np.uint8)
    out = pad.apply(image, nearest=True, fill=255)
    assert (out[:12] == 255).all() and (out[37:] == 255).all() and (out[12:37] == 7).all()


def _depth_agreement(split, a: int, b: int) -> float:
    """The share of A's pixels that, unprojected with A's depth, K and pose and projected into B,
    land on B's stored depth (within 5 %), among those landing inside B."""
    depth, K, pose = split.read("depth"), split.read("K").astype(np.float64), split.read("pose").astype(np.float64)
    h, w = depth.shape[1:]
    v, u = np.mgrid[0:h, 0:w]
    uv = np.stack([u.ravel(), v.ravel()], 1).astype(np.float64)
    valid = depth[a].ravel() > 0
    uv_b, z_b = project(unproject(uv[valid], depth[a].ravel()[valid], K[a], pose[a]), K[b], pose[b])
    pixel = np.rint(uv_b).astype(int)
    inside = (z_b > 0) & (pixel[:, 0] >= 0) & (pixel[:, 0] < w) & (pixel[:, 1] >= 0) & (pixel[:, 1] < h)
    seen = depth[b][pixel[inside, 1], pixel[inside, 0]]
    return float(np.mean(np.abs(seen - z_b[inside]) < 0.05 * z_b[inside]))


@pytest.mark.parametrize("fit, convention", [("crop", "opencv"), ("pad", "opengl")])
def test_depth_k_and_pose_stay_consistent_after_fitting(folder, root, fit, convention):
    """Each pair's depth maps agree through K and pose (occlusions aside) only if all three were fitted alike."""
    flip = np.diag([1.0, -1.0, -1.0, 1.0])
    if convention == "opengl":
        cameras = _cameras(folder)
        cameras = {"convention": "opengl", "cameras": {k: {**v, "pose": (np.array(v["pose"]) @ flip).tolist()}
                                                        for k, v in cameras["cameras"].items()}}
        (folder / "cameras.json").write_text(json.dumps(cameras))
    pairs = _prepare(folder, root, size=48, fit=fit).split("pairs")
    pose = np.array(_cameras(folder)["cameras"]["pair_00_a"]["pose"])
    np.testing.assert_allclose(pairs.read("pose")[0], pose @ flip if convention == "opengl" else pose, atol=1e-6)
    for a, b in pairs.read("pairs"):
        # measured 0.81-0.94 here; with K left unfitted 0.45-0.50
        assert _depth_agreement(pairs, a, b) > 0.75 and _depth_agreement(pairs, b, a) > 0.75


def test_options_depth_scale_max_depth_frames_and_masks(folder, root):
    base = _prepare(folder, root, size=60).split("train")
    i = base.attrs["image_names"].index("view_000")
    depth, normals = base.read("depth")[i], base.read("normals")[i]
    scaled = _prepare(folder, root, size=60, depth_scale=0.002).split("train")
    np.testing.assert_allclose(scaled.read("depth")[i], 2 * depth, rtol=1e-6)
    limit = float(np.median(depth))
    store = _prepare(folder, root, size=60, max_depth=limit)
    capped = store.split("train").read("depth")[i]
    np.testing.assert_array_equal(capped, np.where(depth > limit, 0, depth))
    assert store.attrs["depth_range"] == [0.001, limit]
    flipped = _prepare(folder, root, size=60, normals_frame="opengl").split("train").read("normals")[i]
    np.testing.assert_allclose(flipped, normals * [1, -1, -1])
    kept = _prepare(folder, root, size=60, mask_255="foreground").split("train").read("foreground")[i]
    np.testing.assert_array_equal(kept, np.where(base.read("foreground")[i] == 255, 1, base.read("foreground")[i]))


def test_seeded_split_is_stable(folder, root):
    (folder / "split.csv").unlink()
    store = _prepare(folder, root, size=32)
    test = store.split("test").attrs["image_names"]
    assert len(test) == 3 and store.split("train").num_images == 13            # round(16 * 0.2)
    assert store.attrs["split_source"] == "seeded 80/20 (seed 0)"
    names = sorted(store.split("train").attrs["image_names"] + test)
    assert sorted(seeded_split(names[::-1], seed=0, test_fraction=0.2)["test"]) == test   # listing order is irrelevant
    assert _prepare(folder, data_root(root.root.parent / "again"), size=32).split("test").attrs["image_names"] == test
    grown = seeded_split(names + ["zz_new"], seed=0, test_fraction=0.2)["test"]
    assert len(set(test) - set(grown)) <= 1                                     # one more image moves at most one
    assert seeded_split(names, seed=1, test_fraction=0.2)["test"] != test


def test_train_and_test_subfolders(example, tmp_path, root):
    raw = tmp_path / "nested"
    split = dict(list(csv.reader((example / "split.csv").read_text().splitlines()))[1:])
    for kind in ("images", "depth", "normals", "masks"):
        for path in (example / kind).iterdir():
            target = raw / split[path.stem] / kind / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(path, target)
    for file in ("cameras.json", "pairs.csv", "triplets.csv"):
        shutil.copy(example / file, raw / file)
    store = _prepare(raw, root, size=32)
    assert store.split("test").attrs["image_names"] == ["view_003"] and store.split("train").num_images == 15
    assert store.attrs["split_source"] == "train/ and test/ folders" and store.attrs["absent_targets"] == {}
    shutil.rmtree(raw / "test" / "normals")
    with pytest.raises(MidprobeError, match=r"train has target folders depth, normals, masks, .*test has depth, masks"):
        _prepare(raw, root, size=32)


def test_what_is_absent_is_recorded_with_the_missing_folder(folder, root):
    for sub in ("depth", "normals"):
        shutil.rmtree(folder / sub)
    for file in ("cameras.json", "pairs.csv", "triplets.csv"):
        (folder / file).unlink()
    store = _prepare(folder, root, size=32, name="masks_only")
    assert store.name == "masks_only" and store.attrs["tasks"] == ["segmentation"]
    assert store.splits == ["test", "train"] and store.split("train").keys == ["images", "foreground"]
    absent = store.attrs["absent_targets"]
    assert sorted(absent) == ["depth", "normals", "pairs", "triplets"]
    assert absent["normals"].startswith(f"no normals/ folder in {folder}")
    assert absent["pairs"].startswith(f"no pairs.csv in {folder}")


def test_a_probe_of_a_target_the_folder_lacks_names_the_missing_folder(folder, root, capsys):
    shutil.rmtree(folder / "normals")
    store = _prepare(folder, root, size=32, name="no_normals")
    assert "normals" not in store.attrs["tasks"] and "depth" in store.attrs["tasks"]
    # refused from the dataset store alone: no feature store is needed to say so
    with pytest.raises(MidprobeError, match=r"dataset 'no_normals' cannot run task 'normals': no normals/ folder in "
                                            + re.escape(str(folder))) as error:
        run_task(task_name="normals", dataset="no_normals", root=root, quiet=True)
    assert "\n" not in str(error.value)
    assert probe_main(["--task", "normals", "--dataset", "no_normals", "--data", str(root.root), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: dataset 'no_normals' cannot run task 'normals': no normals/ folder in {folder}")
    assert err.count("\n") == 1 and not root.results().exists()          # no record written


def test_triplets_alone_make_a_similarity_store(folder, root):
    for sub in ("depth", "normals", "masks"):
        shutil.rmtree(folder / sub)
    for file in ("cameras.json", "pairs.csv", "split.csv"):
        (folder / file).unlink()
    store = _prepare(folder, root, size=32)
    assert store.splits == ["triplets"] and store.attrs["tasks"] == ["similarity"]
    assert store.split("triplets").num_images == 6


def _set_pixel(path: Path, value) -> None:
    array = np.load(path)
    array[5, 30] = value
    np.save(path, array)


def _edit_png(path: Path, edit) -> None:
    array = _pixels(path).copy()
    edit(array)
    _png(path, array)


def _edit_json(raw: Path, edit) -> None:
    data = _cameras(raw)
    edit(data)
    (raw / "cameras.json").write_text(json.dumps(data))


def _all_masks_0_255(raw: Path) -> None:
    for path in (raw / "masks").iterdir():
        _png(path, np.where(_pixels(path) == 0, 0, 255).astype(np.uint8))


BAD = {
    "image without depth": (lambda r: (r / "depth" / "view_004.png").unlink(),
                            r"no depth for .*images/view_004.jpg: expected .*depth/view_004.png or .*depth/view_004.npy"),
    "depth without image": (lambda r: shutil.copy(r / "depth" / "view_000.png", r / "depth" / "extra.png"),
                            r"depth/extra.png has no image"),
    "two images, one name": (lambda r: shutil.copy(r / "images" / "view_005.png", r / "images" / "view_000.png"),
                             r"images/view_000.(jpg|png) and .*images/view_000.(jpg|png) have the same name"),
    "unexpected file": (lambda r: (r / "images" / "notes.txt").write_text("x"),
                        r"images/notes.txt: unexpected file type"),
    "corrupt image": (lambda r: (r / "images" / "view_004.jpg").write_bytes(b"not a jpeg"),
                      r"cannot read image .*images/view_004.jpg"),
    "mask of another size": (lambda r: _png(r / "masks" / "view_004.png", np.zeros((10, 10), np.uint8)),
                             r"masks/view_004.png is 10x10 \(HxW\), its image .*view_004.jpg 60x80"),
    "RGB mask": (lambda r: _png(r / "masks" / "view_004.png", np.zeros((H, W, 3), np.uint8)),
                 r"masks/view_004.png is a RGB image; expected a binary \(1\), greyscale \(L\) or palette"),
    "0/255 masks": (_all_masks_0_255, r"no mask in .*mine marks any pixel as foreground .*mask_255=foreground"),
    "8-bit depth PNG": (lambda r: _png(r / "depth" / "view_004.png", np.ones((H, W), np.uint8)),
                        r"depth/view_004.png is a L PNG; expected a 16-bit greyscale PNG"),
    "negative depth": (lambda r: _set_pixel(r / "depth" / "view_002.npy", -1.0),
                       r"depth/view_002.npy: 1 depth values are negative or infinite \(first -1.0 at row 5, column 30\)"),
    "infinite depth": (lambda r: _set_pixel(r / "depth" / "view_002.npy", np.inf),
                       r"depth/view_002.npy: 1 depth values are negative or infinite \(first inf"),
    "non-unit normal": (lambda r: _set_pixel(r / "normals" / "view_000.npy", [0.5, 0, 0]),
                        r"normals/view_000.npy: 1 normals are not unit vectors \(length 0.5 at row 5, column 30\)"),
    "near-zero normal": (lambda r: _set_pixel(r / "normals" / "view_000.npy", [1e-4, 0, 0]),
                         r"normals/view_000.npy: 1 normals are not unit vectors"),
    "infinite normal": (lambda r: _set_pixel(r / "normals" / "view_000.npy", [np.inf, 0, 0]),
                        r"normals/view_000.npy: infinite normal at row 5, column 30"),
    "grey PNG normal": (lambda r: _edit_png(r / "normals" / "view_001.png", lambda a: a.__setitem__((5, 30), 128)),
                        r"normals/view_001.png: 1 normals are not unit vectors .* black \(0, 0, 0\) for no data"),
    "pose not rigid": (lambda r: _edit_json(r, lambda d: d["cameras"]["pair_00_a"]["pose"][0].__setitem__(0, 2.0)),
                       r"cameras.json: camera 'pair_00_a' pose is not rigid"),
    "reflection pose": (lambda r: _edit_json(r, lambda d: d["cameras"]["pair_00_b"].__setitem__(
                            "pose", np.diag([1.0, 1.0, -1.0, 1.0]).tolist())),
                        r"camera 'pair_00_b' pose is not rigid \(.*det R = -1"),
    "skewed K": (lambda r: _edit_json(r, lambda d: d["cameras"]["view_000"]["K"][0].__setitem__(1, 3.0)),
                 r"cameras.json: camera 'view_000' K = .*expected \[\[fx, 0, cx\]"),
    "no convention": (lambda r: _edit_json(r, lambda d: d.pop("convention")),
                      r"cameras.json: expected \{\"convention\": \"opencv\" or \"opengl\""),
    "camera of no image": (lambda r: _edit_json(r, lambda d: d["cameras"].__setitem__("ghost", d["cameras"]["view_000"])),
                           r"cameras.json: camera 'ghost' names no image"),
    "pairs without cameras": (lambda r: (r / "cameras.json").unlink(), r"pairs.csv needs cameras.json"),
    "pairs without depth": (lambda r: shutil.rmtree(r / "depth"), r"pairs.csv needs depth/"),
    "unknown pair image": (lambda r: (r / "pairs.csv").write_text("image_a,image_b\npair_00_a,nope\n"),
                           r"pairs.csv line 2: image_b 'nope' is not an image in images/"),
    "pair with itself": (lambda r: (r / "pairs.csv").write_text("image_a,image_b\npair_00_a,pair_00_a.jpg\n"),
                         r"pairs.csv line 2: pairs 'pair_00_a' with itself"),
    "bad answer": (lambda r: (r / "triplets.csv").write_text(
                       "reference,candidate_0,candidate_1,answer\nview_000,view_001,view_002,2\n"),
                   r"triplets.csv line 2: answer '2'; expected 0 or 1"),
    "bad csv header": (lambda r: (r / "triplets.csv").write_text("ref,a,b\n"),
                       r"triplets.csv lacks column reference, candidate_0, candidate_1, answer"),
    "unlisted image": (lambda r: (r / "split.csv").write_text("image,split\nview_000,train\nview_001,test\n"),
                       r"split.csv does not list .*images/pair_00_a.jpg \(14 images unlisted\)"),
    "unknown split": (lambda r: (r / "split.csv").write_text("image,split\nview_000,val\n"),
                      r"split.csv line 2: split 'val'; expected train or test"),
    "both layouts": (lambda r: (r / "train" / "images").mkdir(parents=True), r"has both images/ and train/"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_each_inconsistency_is_one_line_naming_the_file(folder, root, case):
    change, message = BAD[case]
    change(folder)
    with pytest.raises(MidprobeError, match=message) as error:
        _prepare(folder, root, size=32)
    assert "\n" not in str(error.value)
    with pytest.raises(MidprobeError, match="no dataset store|is incomplete"):        # nothing presented as complete
        open_dataset("mine", root=root)


def test_check_reads_everything_and_writes_nothing(folder, root, capsys):
    assert data_main(["--dataset", "folder", "--raw", str(folder), "--check", "--size", "32", "--data",
                      str(root.root), "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "16 images, train 15 / test 1 (split.csv); targets: depth, normals, masks; 2 pairs; 2 triplets" in out
    assert "would support: depth, normals, segmentation, correspondence, similarity" in out
    assert not root.root.exists()
    _set_pixel(folder / "normals" / "view_000.npy", [0.5, 0, 0])        # a value error, found only by reading
    assert data_main(["--dataset", "folder", "--raw", str(folder), "--check", "--data", str(root.root), "--quiet"]) == 2
    assert capsys.readouterr().err.startswith(f"error: {folder}/normals/view_000.npy: 1 normals are not unit")
    assert not root.root.exists()


def test_names_sizes_and_the_command_line(folder, root, capsys):
    assert data_main(["--dataset", "folder", "--raw", str(folder), "--name", "mine2", "--size", "32x48",
                      "--data", str(root.root), "--quiet", "--option", "depth_scale=0.002"]) == 0
    store = open_dataset("mine2", root=root)
    assert store.split("train").image_size == (32, 48) and store.attrs["options"]["depth_scale"] == 0.002
    for argv, message in ((["--name", "nyuv2"], "store name 'nyuv2' is a built-in dataset's"),
                          (["--name", "../up"], "store name '../up': expected letters"),
                          (["--size", "8"], "--size must be >= 16"),
                          (["--size", "32by48"], "size '32by48': expected S or HxW"),
                          (["--option", "fit=stretch"], "option fit='stretch': expected crop or pad"),
                          (["--option", "depth_scale=-1"], "expected depth_scale > 0")):
        assert data_main(["--dataset", "folder", "--raw", str(folder), "--data", str(root.root), "--quiet",
                          *argv]) == 2
        assert message in capsys.readouterr().err
    assert data_main(["--dataset", "folder", "--data", str(root.root), "--quiet"]) == 2
    assert "needs RAW=" in capsys.readouterr().err
    for argv, message in ((["--dataset", "synthetic", "--check"], "dataset 'synthetic' has no option check"),
                          (["--dataset", "synthetic", "--size", "32x48"], "renders square images"),
                          (["--dataset", "nyuv2", "--check"], "dataset 'nyuv2' has no option check")):
        assert data_main([*argv, "--data", str(root.root), "--quiet"]) == 2
        assert message in capsys.readouterr().err


def test_example_command_writes_the_layout_and_refuses_a_foreign_folder(tmp_path, capsys):
    out = tmp_path / "ex"
    args = [str(out), "--views", "3", "--pairs", "1", "--triplets", "1", "--height", "24", "--width", "32"]
    assert example_main(args) == 0 and example_main(args) == 0          # an earlier example is replaced
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"images/view_000.jpg", "images/view_001.jpg", "images/view_002.jpg", "depth/view_002.npy",
            "depth/view_000.png", "normals/view_000.npy", "normals/view_001.png", "masks/view_000.png",
            "cameras.json", "pairs.csv", "triplets.csv", "split.csv"} <= files
    with Image.open(out / "images" / "view_001.jpg") as img:
        assert img.getexif().get(0x0112) == 6 and img.size == (24, 32)        # stored turned: 32 high, 24 wide
    assert _mode(out / "depth" / "view_000.png") == "I;16"
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"")
    assert example_main([str(foreign)]) == 2
    assert "is not an earlier example" in capsys.readouterr().err
