import hashlib

import numpy as np
from cache import open_dataset
from cache.camera import project, unproject
from extract.datasets.synthetic.views import pair_views, single_view, triplet_views


def _finite_difference_normals(depth, K):
    """Camera-frame normals from the back-projected depth by central differences."""
    h, w = depth.shape
    v, u = np.mgrid[0:h, 0:w].astype(np.float64)
    pts = np.stack([(u - K[0, 2]) / K[0, 0] * depth, (v - K[1, 2]) / K[1, 1] * depth, depth], -1)
    du = pts[1:-1, 2:] - pts[1:-1, :-2]
    dv = pts[2:, 1:-1] - pts[:-2, 1:-1]
    n = np.cross(du, dv)
    n /= np.linalg.norm(n, axis=-1, keepdims=True)
    return n


def test_normals_match_finite_differences_of_depth_on_planar_regions():
    view = single_view(11, "test", 0, 96)[0]
    depth, normals, K = view["depth"].astype(np.float64), view["normals"].astype(np.float64), view["K"].astype(np.float64)
    fd = _finite_difference_normals(depth, K)
    inner = normals[1:-1, 1:-1]
    # planar: the 3x3 neighbourhood shares one normal (walls, floor, box faces, cylinder caps)
    same = np.ones(inner.shape[:2], bool)
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            shifted = normals[1 + dy:normals.shape[0] - 1 + dy, 1 + dx:normals.shape[1] - 1 + dx]
            same &= (inner * shifted).sum(-1) > 1 - 1e-9
    assert same.mean() > 0.5
    fd = np.where((fd * inner).sum(-1, keepdims=True) < 0, -fd, fd)
    angle = np.degrees(np.arccos(np.clip((fd * inner).sum(-1), -1, 1)))[same]
    assert np.percentile(angle, 100) < 1.0


def test_normals_are_unit_and_face_the_camera():
    view = single_view(5, "train", 2, 64)[0]
    n = view["normals"]
    np.testing.assert_allclose(np.linalg.norm(n, axis=-1), 1.0, atol=1e-5)
    h, w = view["depth"].shape
    v, u = np.mgrid[0:h, 0:w]
    K = view["K"]
    rays = np.stack([(u - K[0, 2]) / K[0, 0], (v - K[1, 2]) / K[1, 1], np.ones_like(u, dtype=float)], -1)
    assert ((rays * n).sum(-1) <= 1e-6).all()


def test_masks_agree_with_instance_ids_and_depth_is_valid():
    for i in range(3):
        view = single_view(2, "train", i, 64)[0]
        np.testing.assert_array_equal(view["foreground"], (view["instance"] > 0).astype(np.uint8))
        assert view["instance"].max() >= 1 and (view["depth"] > 0).all() and np.isfinite(view["depth"]).all()
        assert view["rgb"].dtype == np.uint8 and view["rgb"].shape == (64, 64, 3)


def test_correspondences_reproject_and_pass_the_occlusion_check():
    (a, b), rotation, matches = pair_views(4, 1, 96)
    assert 0 <= rotation <= 121 and len(matches) > 50
    ua, va = matches[:, 0].astype(int), matches[:, 1].astype(int)
    world = unproject(matches[:, :2], a["depth"][va, ua], a["K"], a["pose"])
    uv_b, z_b = project(world, b["K"], b["pose"])
    assert np.abs(uv_b - matches[:, 2:]).max() < 0.5
    # visible in B: the depth B sees at that pixel (nearest) agrees where B's depth is locally smooth
    ub, vb = np.round(matches[:, 2]).astype(int), np.round(matches[:, 3]).astype(int)
    seen = b["depth"][vb, ub]
    assert np.median(np.abs(seen - z_b) / z_b) < 0.01
    assert (np.abs(seen - z_b) / z_b < 0.05).mean() > 0.9


def test_occluded_points_are_not_matched():
    occluded_somewhere = False
    for index in range(6):
        (a, b), _, matches = pair_views(9, index, 64)
        h, w = a["depth"].shape
        v, u = np.mgrid[0:h, 0:w]
        uv = np.stack([u.ravel(), v.ravel()], 1).astype(np.float64)
        world = unproject(uv, a["depth"].ravel(), a["K"], a["pose"])
        uv_b, z_b = project(world, b["K"], b["pose"])
        inside = (z_b > 0) & (uv_b >= 0).all(1) & (uv_b[:, 0] <= w - 1) & (uv_b[:, 1] <= h - 1)
        # clearly behind something: all four pixels around the projection see a much nearer surface
        lo = np.floor(uv_b[inside]).astype(int)
        hi = np.minimum(lo + 1, [w - 1, h - 1])
        nearer = np.ones(len(lo), bool)
        for cu in (lo[:, 0], hi[:, 0]):
            for cv in (lo[:, 1], hi[:, 1]):
                nearer &= b["depth"][cv, cu] < 0.8 * z_b[inside]
        hidden = np.zeros(len(uv), bool)
        hidden[np.flatnonzero(inside)] = nearer
        occluded_somewhere |= hidden.any()
        matched = set(map(tuple, matches[:, :2].astype(int).tolist()))
        assert not matched & set(map(tuple, uv[hidden].astype(int).tolist()))
    assert occluded_somewhere


def test_pair_rotations_spread_over_zero_to_120_degrees():
    rotations = [pair_views(0, i, 32)[1] for i in range(24)]
    assert min(rotations) < 40 and max(rotations) > 70 and max(rotations) <= 121


def test_triplet_has_one_layout_preserving_candidate():
    views, answer = triplet_views(1, 0, 64)
    ref, c0, c1 = views
    closer, other = (c0, c1) if answer == 0 else (c1, c0)
    # layout kept: object masks overlap strongly; textures changed: colours differ
    iou = lambda m, n: ((m > 0) & (n > 0)).sum() / max(((m > 0) | (n > 0)).sum(), 1)
    assert iou(ref["foreground"], closer["foreground"]) > iou(ref["foreground"], other["foreground"])
    np.testing.assert_array_equal(ref["pose"], other["pose"])     # same camera, new layout
    assert not np.array_equal(ref["rgb"], closer["rgb"])


def test_same_seed_same_bytes_other_seed_other_scene(tmp_path):
    from cache import data_root
    from extract.datasets.synthetic import prepare_synthetic

    def digest(seed, folder, workers):
        root = data_root(tmp_path / folder)
        prepare_synthetic(root=root, train=3, test=2, pairs=1, triplets=1, size=32, seed=seed, workers=workers,
                          progress=False, contact_sheet=False)
        split = open_dataset("synthetic", root=root).split("train")
        return hashlib.sha256(split.read("images").tobytes() + split.read("depth").tobytes()).hexdigest()

    assert digest(0, "a", 1) == digest(0, "b", 2)
    assert digest(0, "a", 1) != digest(1, "c", 1)


def test_prepared_store_opens_through_cache(synthetic_root):
    store = open_dataset("synthetic", root=synthetic_root)
    assert store.splits == ["pairs", "test", "train", "triplets"]
    assert store.attrs["depth_kind"] == "metric" and "proxy" in store.attrs["proxy_note"]
    train = store.split("train")
    assert train.num_images == 24 and train.image_size == (64, 64)
    assert set(train.keys) >= {"images", "depth", "normals", "instance", "foreground", "K", "pose"}
    pairs = store.split("pairs")
    assert pairs.read("pairs").shape == (4, 2) and pairs.read("pair_matches").shape == (4, 1000, 4)
    triplets = store.split("triplets")
    assert triplets.read("triplets").shape == (4, 3) and set(triplets.read("triplet_answer")) <= {0, 1}


def test_contact_sheet_is_written(tmp_path):
    from PIL import Image

    from cache import data_root
    from extract.datasets.synthetic import prepare_synthetic

    root = data_root(tmp_path)
    prepare_synthetic(root=root, train=2, test=3, pairs=1, triplets=1, size=32, workers=1, progress=False)
    sheet = Image.open(root.reports() / "synthetic_contact_sheet.png")
    assert sheet.size == (4 * 32, 5 * 32)
