"""Sizing an extraction before writing it: shapes on the meta device, published split sizes, bytes."""

from __future__ import annotations

import pytest
import torch

from cache import MidprobeError, data_root, open_features
from extract.cli import main as extract_main
from extract.runner import extract, layer_shapes
from extract.sizing import (dataset_layout, feature_model_name, human_bytes, layer_shapes_at,
                            size_extraction)
from protocols import get_protocol
from tests.conftest import write_tiny_dataset

MIDPROBE, PAPER = get_protocol("midprobe"), get_protocol("paper")


@pytest.mark.parametrize("model", ["test_resnet_tiny", "test_vit_tiny", "pixels", "hog"])
def test_meta_shapes_equal_a_real_forward_at_odd_sizes(model):
    from extract.backbones import build_backbone

    real = layer_shapes(build_backbone(model), 50, 70, torch.device("cpu"))
    assert layer_shapes_at(model, 50, 70) == real


def test_predicted_bytes_equal_the_written_store(root):
    write_tiny_dataset(root, splits={"train": 5, "test": 3}, height=40, width=56)
    layout = dataset_layout("tiny", protocol=MIDPROBE, root=root)
    assert layout.source.startswith("store") and layout.splits["train"].images == 5
    for model in ("test_resnet_tiny", "pixels"):
        predicted = {s.feature_split: s for s in size_extraction(model=model, layout=layout, protocol=MIDPROBE)}
        extract(model=model, dataset="tiny", root=root, progress=False)
        for split in ("train", "test"):
            stored = open_features("tiny", model, split, root=root)
            written = sum(stored.array(name).nbytes for name in [*stored.layers, "global"])
            assert predicted[split].bytes == written
            assert dict(predicted[split].layers) == {name: stored.shape(name) for name in stored.layers}


def test_published_split_sizes_follow_the_loader_options():
    nyu = dataset_layout("nyuv2", protocol=MIDPROBE)
    assert (nyu.source, nyu.splits["train"].images, nyu.splits["test"].images) == ("published counts", 795, 654)
    geonet = dataset_layout("nyuv2", protocol=PAPER)          # the paper protocol's geonet=true store
    assert geonet.name == "nyuv2@paper" and geonet.splits["train"].images == 30_914
    navi = dataset_layout("navi", protocol=MIDPROBE, options={"every": 4})
    assert [navi.splits[s].images for s in ("train", "test", "pairs")] == [2_055, 575, 1_150]
    scannet = dataset_layout("scannet1500", protocol=MIDPROBE).splits["pairs"]
    assert (scannet.images, scannet.height, scannet.width) == (3_000, 480, 640)
    synthetic = dataset_layout("synthetic", protocol=MIDPROBE, options={"train": 10, "pairs": 3, "size": 32})
    assert synthetic.splits["train"].images == 10 and synthetic.splits["pairs"].images == 6
    with pytest.raises(MidprobeError, match="no published size"):
        dataset_layout("mine", protocol=MIDPROBE)


def test_augmented_views_and_layer_needs_set_the_bytes():
    layout = dataset_layout("nyuv2", protocol=PAPER)
    sizes = {s.feature_split: s for s in size_extraction(model="vit_b_dino", layout=layout, protocol=PAPER)}
    train, test = sizes["train@aug10-paper-nyu"], sizes["test"]
    per_image = (4 * 768 * 30 * 30 + 768) * 2                       # four 30x30 ViT-B maps + CLS, float16
    assert (train.views, train.rows) == (10, 309_140)
    # the last chunk counts whole, as Zarr writes it: chunks of 6 images (8 MiB over one 30x30x768 float16 map)
    assert train.bytes == 309_144 * per_image and test.bytes == 654 * per_image
    int8 = size_extraction(model="vit_b_dino", layout=dataset_layout("nyuv2", protocol=PAPER), protocol=PAPER,
                           precision="int8")
    assert int8[0].bytes == 309_144 * (4 * 768 * 30 * 30 + 4 * 768 * 2 + 768 * 2)       # int8 maps + f16 scales
    scannet = size_extraction(model="rn50_swav", layout=dataset_layout("scannet1500", protocol=PAPER), protocol=PAPER)
    assert [s.feature_split for s in scannet] == ["pairs@input-half"]
    assert dict(scannet[0].layers) == {"res5": (2048, 15, 20)}      # correspondence reads the last stage only


def test_precision_and_model_names():
    with pytest.raises(MidprobeError, match="precision 'int4'"):
        size_extraction(model="hog", layout=dataset_layout("nights", protocol=MIDPROBE), protocol=MIDPROBE,
                        precision="int4")
    assert feature_model_name("vit_b_mae", PAPER) == "vit_b_mae+hf+paper-layers+sincos"
    assert feature_model_name("vit_b_mae", MIDPROBE) == "vit_b_mae"
    assert human_bytes(1_234_567) == "1.2 MB" and human_bytes(87.4e12) == "87.4 TB"


def test_extract_dry_run_prints_split_bytes_and_writes_nothing(tmp_path, capsys):
    data = tmp_path / "data"
    assert extract_main(["--model", "rn50_swav", "--dataset", "voc", "--dry-run", "--data", str(data)]) == 0
    out = capsys.readouterr().out
    assert "train" in out and "422 images at 480x480" in out and "res2[256, 120, 120]" in out
    assert "total 8.7 GB" in out                                     # (422 + 210) x 13.8 MB
    assert not data.exists()
    root = data_root(tmp_path / "other")
    assert extract_main(["--model", "rn50_swav", "--dataset", "voc", "--dry-run", "--precision", "int8",
                         "--data", str(root.root)]) == 0
    assert "total 4.4 GB" in capsys.readouterr().out                 # int8: about half
    capsys.readouterr()
    # the precision registry names the choices, in one line (midprobe.options)
    assert extract_main(["--model", "pixels", "--dataset", "voc", "--dry-run", "--precision", "int4"]) == 2
    assert capsys.readouterr().err.strip() == "error: precision 'int4': expected fp16 or int8"
