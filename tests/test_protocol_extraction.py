"""PROTOCOL= through data preparation and extraction: which feature splits are written, with what."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cache import MidprobeError, open_dataset, open_features
from cache.augment import augment_pixels, augment_targets, view_params
from extract.datasets.__main__ import main as data_main
from extract.plan import plan_extraction
from extract.runner import AUGMENT_SEED, extract, protocol_model
from probe.train import training_batches
from protocols import MIDPROBE, PAPER, ExtractionChoices, apply
from tests import dataset_fixtures as fx

AUG2 = apply(MIDPROBE, ((("extraction", "depth:synthetic"), ExtractionChoices(augment_views=2,
                                                                                 augment_policy="paper-nyu")),),
             name="aug2")


def _jobs(protocol, **kwargs):
    attrs = {"name": "synthetic", "loader": "synthetic",
             "tasks": ["depth", "normals", "segmentation", "correspondence", "similarity"]}
    return {j.name: (j.source, j.layers, j.tasks) for j in
            plan_extraction(attrs=attrs, splits=["pairs", "test", "train", "triplets"], protocol=protocol, **kwargs)}


def test_the_plan_writes_only_what_each_tasks_reads():
    assert _jobs(MIDPROBE) == {
        "train": ("train", "all", ("depth", "normals", "segmentation")),
        "test": ("test", "all", ("depth", "normals", "segmentation")),
        "pairs": ("pairs", "last", ("correspondence",)), "triplets": ("triplets", "global", ("similarity",))}
    paper = _jobs(PAPER)
    assert paper["train@aug10-paper-nyu"] == ("train", "all", ("depth", "normals"))
    assert paper["train"] == ("train", "all", ("segmentation",))       # VOC-like: never augmented
    assert paper["triplets@input-none+global-cls-raw-last"] == ("triplets", "global", ("similarity",))
    assert "triplets" not in paper
    assert _jobs(MIDPROBE, tasks=["correspondence"]) == {"pairs": ("pairs", "last", ("correspondence",))}
    assert _jobs(MIDPROBE, tasks=["similarity"], layers="all")["triplets"][1] == "all"
    with pytest.raises(MidprobeError, match="unknown task flow; known tasks: depth"):
        _jobs(MIDPROBE, tasks=["flow"])


def test_paper_model_variants():
    assert protocol_model("vit_b_mae", PAPER) == "vit_b_mae+paper"
    assert protocol_model("vit_b_mocov3", PAPER) == "vit_b_mocov3+paper"
    assert protocol_model("rn50_swav", PAPER) == "rn50_swav"          # nothing of it differs in the paper's code
    assert protocol_model("vit_b_mae", MIDPROBE) == "vit_b_mae"


def test_task_aware_splits_hold_only_the_layers_their_tasks_read(synthetic_root):
    root = synthetic_root
    extract(model="test_vit_tiny", dataset="synthetic", splits=["pairs", "triplets"], root=root, progress=False)
    assert open_features("synthetic", "test_vit_tiny", "pairs", root=root).layers == ["block1"]
    triplets = open_features("synthetic", "test_vit_tiny", "triplets", root=root)
    assert triplets.layers == [] and triplets.global_vectors().shape == (12, 32)


def test_paper_similarity_features_are_the_raw_cls_of_unnormalised_images(synthetic_root):
    from extract.backbones import build_backbone

    root = synthetic_root
    extract(model="test_vit_tiny", dataset="synthetic", tasks=["similarity"], protocol="paper", root=root,
            progress=False)
    split = open_features("synthetic", "test_vit_tiny", "triplets@input-none+global-cls-raw-last", root=root)
    fp = split.fingerprint
    assert (fp["input_norm"], fp["global_kind"], fp["mean"], fp["std"]) == ("none", "cls-raw-last", [0, 0, 0], [1, 1, 1])
    images = open_dataset("synthetic", root=root).split("triplets").read("images")[:3]
    model = build_backbone("test_vit_tiny").module.model
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255        # [0, 1] pixels, no mean/std
    with torch.inference_mode():
        tokens = model.blocks(model._pos_embed(model.patch_embed(x)))        # the last block's output, no norm
    np.testing.assert_allclose(split.global_vectors()[:3], tokens[:, 0].numpy(), rtol=2e-3, atol=2e-3)


def test_augmented_views_are_extracted_view_major_and_read_one_view_per_epoch(synthetic_root):
    root = synthetic_root
    extract(model="pixels", dataset="synthetic", tasks=["depth"], protocol=AUG2, root=root, progress=False)
    split = open_features("synthetic", "pixels", "train@aug2-paper-nyu", root=root)
    data = open_dataset("synthetic", root=root).split("train")
    n = data.num_images
    assert split.num_images == 2 * n
    assert split.fingerprint["augment"] == {"views": 2, "policy": "paper-nyu", "seed": AUGMENT_SEED}
    # feature image v * n + i is view v of image i: pixels' "features" are its normalised 16 px patches
    mean, std = np.array(split.fingerprint["mean"]), np.array(split.fingerprint["std"])
    for v, i in ((0, 3), (1, 3), (1, n - 1)):
        params = view_params("paper-nyu", seed=AUGMENT_SEED, index=i, view=v)
        view = (augment_pixels(data.read("images", np.array([i]))[0], params) - mean) / std
        patch = view[:16, :16].transpose(2, 0, 1).reshape(-1)
        np.testing.assert_allclose(split.read("patch", v * n + i, v * n + i + 1)[0, :, 0, 0], patch, atol=2e-3)
    depth = data.array("depth")
    for epoch in (0, 1, 2):
        v = epoch % 2
        batches = list(training_batches(split, layers=["patch"], targets={"depth": depth}, batch_size=5, seed=0,
                                        epoch=epoch))
        index = np.concatenate([b.index for b in batches])
        assert sorted(index.tolist()) == list(range(v * n, (v + 1) * n))      # view e mod k, every image once
        b = batches[0]
        for j, f in enumerate(b.index[:3]):
            i = int(f) - v * n
            params = view_params("paper-nyu", seed=AUGMENT_SEED, index=i, view=v)
            expected = augment_targets({"depth": data.read("depth", np.array([i]))[0]}, params)["depth"]
            np.testing.assert_array_equal(b.targets["depth"][j], expected)


def test_make_data_with_the_paper_protocol_prepares_its_own_store(root, capsys):
    raw = root.raw("voc")
    fx.write_voc(raw)
    assert data_main(["--dataset", "voc", "--data", str(root.root), "--protocol", "paper", "--quiet"]) == 0
    store = open_dataset("voc@paper", root=root)
    assert store.attrs["loader"] == "voc" and store.attrs["options"]["void_as_foreground"] is True
    assert store.attrs["options"]["image_resample"] == "lanczos"
    assert data_main(["--dataset", "voc", "--data", str(root.root), "--protocol", "paper",
                      "--option", "void_as_foreground=false"]) == 2
    assert "contradicts protocol 'paper'" in capsys.readouterr().err
    assert data_main(["--dataset", "voc", "--data", str(root.root), "--protocol", "midprobe", "--quiet"]) == 0
    assert open_dataset("voc", root=root).attrs["options"]["void_as_foreground"] is False


def test_augment_override_names_its_own_protocol_and_the_size_estimate_holds(synthetic_root, tmp_path, capsys):
    import re
    import shutil

    from cache import data_root
    from extract.cli import main as extract_main
    from protocols import with_augment

    aug = with_augment(MIDPROBE, "10")
    assert aug.name == "midprobe+aug10-paper-nyu"
    assert aug.extraction_choices("depth", "nyuv2").augment_views == 10
    assert aug.extraction_choices("segmentation", "voc").augment_policy == "paper-nyu"
    assert with_augment(MIDPROBE, "4:paper-navi").extraction_choices("normals").augment_policy == "paper-navi"
    with pytest.raises(MidprobeError, match="unknown augmentation policy 'flip'"):
        with_augment(MIDPROBE, "4:flip")
    root = data_root(tmp_path / "data")
    shutil.copytree(synthetic_root.dataset_store("synthetic"), root.dataset_store("synthetic"))
    assert extract_main(["--model", "pixels", "--dataset", "synthetic", "--task", "depth", "--augment", "10",
                         "--data", str(root.root)]) == 0
    printed = re.search(r"synthetic/train@aug10-paper-nyu: 240 images .* store ~([0-9.]+) MiB", capsys.readouterr().err)
    store = root.feature_store("synthetic", "pixels") / "train@aug10-paper-nyu"
    written = sum(p.stat().st_size for p in store.rglob("*") if p.is_file() and "/c/" in str(p))
    assert printed and abs(float(printed.group(1)) * 2**20 - written) <= 0.05 * written


def test_paper_probes_find_a_models_paper_variant_by_its_canonical_name(synthetic_root, tmp_path):
    import shutil
    from dataclasses import replace

    from cache import data_root
    from extract.backbones import register
    from probe.run import protocol_models, run_task
    from protocols import PAPER
    from tests.conftest import TINY_VIT

    register(replace(TINY_VIT, name="test_vit_opts", options={"half": {"mean": (0.5,) * 3, "std": (0.5,) * 3},
                                                               "other": {"std": (0.2,) * 3}},
                     paper_options=("half",)))
    root = data_root(tmp_path / "data")
    shutil.copytree(synthetic_root.dataset_store("synthetic"), root.dataset_store("synthetic"))
    for protocol in ("midprobe", "paper"):
        extract(model="test_vit_opts", dataset="synthetic", tasks=["segmentation"], protocol=protocol, root=root,
                progress=False)
    extract(model="pixels", dataset="synthetic", tasks=["segmentation"], protocol="paper", root=root, progress=False)
    assert protocol_models("synthetic", PAPER, ["test_vit_opts", "pixels"], root) == ["test_vit_opts+half", "pixels"]
    assert protocol_models("synthetic", PAPER, None, root) == ["pixels", "test_vit_opts+half"]
    assert sorted(protocol_models("synthetic", MIDPROBE, None, root)) == ["pixels", "test_vit_opts", "test_vit_opts+half"]
    rows = run_task(task_name="segmentation", dataset="synthetic", models=["test_vit_opts"], protocol="paper",
                    heads=["linear"], overrides={"epochs": 1}, root=root, quiet=True)
    assert rows[0]["model"] == "test_vit_opts+half"
