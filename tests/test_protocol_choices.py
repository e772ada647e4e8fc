"""Every choice lives in the protocol: a third protocol, built here, changes each of them —
correspondence thresholds, pixel scale and rotation bins, the 2AFC tie rule, the model variant
rule, the dense defaults (learning rate, hidden width) — and each change moves the numbers or
names exactly as predicted; a variant built on it carries its base and variants as fields."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from types import SimpleNamespace

import numpy as np
import pytest

from cache import data_root
from protocols import MIDPROBE, apply, with_augment

THIRD = apply(MIDPROBE, (
    (("correspondence", "navi", "style"),
     replace(MIDPROBE.correspondence["navi"].style, pixel_scale=0.5, thresholds_px=(2.5, 12.5, 25),
             rotation_bins=(0, 360))),
    (("similarity", "ties"), "candidate 0"),
    (("model_option",), "hf"),
    *((("dense", task, "lr"), 1e-3) for task in ("depth", "normals", "segmentation")),
    *((("dense", task, "hidden"), 8) for task in ("depth", "normals", "segmentation")),
), name="third")


def test_correspondence_thresholds_pixel_scale_and_rotation_bins_come_from_the_protocol(synthetic_root, tmp_path):
    from extract.runner import extract
    from probe.run import run_task

    root = data_root(tmp_path / "data")
    shutil.copytree(synthetic_root.dataset_store("synthetic"), root.dataset_store("synthetic"))
    extract(model="test_vit_tiny", dataset="synthetic", tasks=["correspondence"], root=root, progress=False)
    metrics = {}
    for protocol in (MIDPROBE, THIRD):
        [row] = run_task(task_name="correspondence", dataset="synthetic", models=["test_vit_tiny"], protocol=protocol,
                         root=root, quiet=True)
        metrics[protocol.name] = json.loads((root.root / row["record"]).read_text())["metrics"]
    mid, third = metrics["midprobe"], metrics["third"]
    # errors halved, thresholds halved: the same pairs pass
    for ours, theirs in ((2.5, 5), (12.5, 25), (25, 50)):
        assert third[f"recall_2d_{ours:g}px"] == pytest.approx(mid[f"recall_2d_{theirs:g}px"])
    assert "recall_2d_5px" not in third and third["pixel_scale"] == 0.5
    # one rotation bin holding every pair: its recall is the overall one
    assert third["pairs_rot0-360"] == third["pairs"] == mid["pairs"] > 0
    binned = "recall_3d_2cm" if "recall_3d_2cm" in third else "recall_2d_2.5px"
    assert third[f"{binned}_rot0-360"] == pytest.approx(third[binned])
    assert not any(k.endswith("_rot0-30") for k in third) and any(k.endswith("_rot0-30") for k in mid)


def test_the_2afc_tie_rule_comes_from_the_protocol():
    from probe.tasks import get_task

    answer = np.array([1, 1, 1, 0])
    features = SimpleNamespace(global_vectors=lambda: np.ones((6, 4), np.float32), fingerprint={})
    arrays = {"triplets": np.array([[0, 1, 2], [3, 4, 5], [0, 2, 4], [1, 3, 5]]), "triplet_answer": answer}
    data = SimpleNamespace(read=lambda key: arrays[key])
    task = get_task("similarity")
    # every pair of vectors is equal: every triplet is a tie, decided by the rule alone
    ones, _ = task.evaluate(features=features, data=data, dataset_attrs={}, protocol=MIDPROBE)
    zeros, config = task.evaluate(features=features, data=data, dataset_attrs={}, protocol=THIRD)
    assert ones["accuracy"] == 0.75 and zeros["accuracy"] == 0.25 and config["ties"] == "candidate 0"


def test_the_model_variant_rule_comes_from_the_protocol():
    from extract.runner import protocol_model
    from extract.sizing import feature_model_name

    assert protocol_model("vit_b_mae", THIRD) == "vit_b_mae+hf"           # it offers +hf
    assert feature_model_name("vit_b_mae", THIRD) == "vit_b_mae+hf"
    assert protocol_model("vit_b_mocov3", THIRD) == "vit_b_mocov3"        # it does not
    assert protocol_model("vit_b_mae", MIDPROBE) == "vit_b_mae"


def test_dense_defaults_come_from_the_protocol():
    from probe.heads import build_head
    from probe.plan import plan_records
    from probe.train import ProbeConfig

    assert ProbeConfig("linear", ("a",)).lr == MIDPROBE.dense_choices("depth").lr
    mlp = build_head("mlp", in_channels=[4], out_channels=1)
    assert mlp.net[0].out_channels == MIDPROBE.dense_choices("depth").hidden
    for protocol, key, hidden in ((MIDPROBE, "mlp-a-lr0.0005", 512), (THIRD, "mlp-a-lr0.001", 8)):
        [record] = plan_records(task="depth", dense=True, protocol=protocol, loader="synthetic", dataset_attrs={},
                                layer_sets=[["a"]], heads=["mlp"])
        assert record.probe == key and record.config["settings"]["hidden"] == hidden


def test_a_variant_carries_its_base_and_the_hint_names_them():
    from probe.run import _add_hint

    augmented = with_augment(THIRD, "4:paper-navi")
    assert (augmented.name, augmented.base, augmented.variants, augmented.augment) == (
        "third+aug4-paper-navi", "third", ("aug4-paper-navi",), "4:paper-navi")
    assert (THIRD.base, THIRD.variants) == ("third", ())
    features = SimpleNamespace(fingerprint={"model": "m", "dataset": "d", "augment": {"views": 4, "policy": "paper-navi"}},
                               precision="fp16", split="train@aug4-paper-navi", store="s")
    hint = _add_hint(features, ["block1"], "has block0", augmented)
    assert hint.endswith("LAYERS=block1 PROTOCOL=third AUGMENT=4:paper-navi`")
    assert "PROTOCOL" not in _add_hint(features, ["block1"], "has block0", with_augment(MIDPROBE, "4:paper-navi"))
