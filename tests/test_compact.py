"""Compact caches: int8 features and layers added to a store without rewriting the others."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from cache import MidprobeError, open_features
from cache.quantize import dequantize_torch, quantize, quantize_torch
from extract.runner import extract
from probe.run import resolve_layers, run_task
from tests.test_extract import tree_bytes


def test_int8_round_trip_is_within_half_a_step_of_every_value():
    rng = np.random.default_rng(0)
    x = rng.normal(0, 1, (3, 5, 4, 6)).astype(np.float32) * np.array([1e-6, 1e-2, 1, 50, 3e4])[None, :, None, None]
    x[1, 2] = 0.0                                                     # an all-zero channel
    x[2, 3, 0, 0] = -4e4                                              # its peak is negative
    packed = quantize(x)
    assert packed.values.dtype == np.int8 and packed.scale.dtype == np.float16 and packed.scale.shape == (3, 5)
    step = packed.scale.astype(np.float32)[:, :, None, None]
    assert np.all(np.abs(packed.dequantize() - x) <= step / 2 + 1e-12)
    assert np.all(np.abs(packed.values) <= 127) and np.all(packed.values[1, 2] == 0)
    normal = packed.scale >= np.finfo(np.float16).tiny                # scales in float16's normal range use it all
    assert np.all(np.abs(packed.values).max(axis=(2, 3))[normal] >= 126)
    assert np.all(np.abs(packed.values[0, 0]).max() < 127)            # a 1e-6 channel: subnormal scale, fewer steps
    q, s = quantize_torch(torch.from_numpy(x))                       # the device path is the same definition
    np.testing.assert_array_equal(q.numpy(), packed.values)
    np.testing.assert_array_equal(s.numpy(), packed.scale)
    np.testing.assert_array_equal(dequantize_torch(q, s).numpy(), packed.dequantize())


def _int8_tree(root, **kwargs):
    extract(model="test_vit_tiny", dataset="tiny", root=root, precision="int8", progress=False, **kwargs)
    return tree_bytes(root.feature_store("tiny", "test_vit_tiny", "int8"))


def test_int8_stores_resume_and_shard_to_the_same_bytes(root, tmp_path, monkeypatch):
    from tests.conftest import write_tiny_dataset
    from cache import data_root

    write_tiny_dataset(root, splits={"train": 10}, height=32, width=48)
    whole = _int8_tree(root, chunk_images=3)
    assert root.feature_store("tiny", "test_vit_tiny", "int8").name == "test_vit_tiny@int8.zarr"
    split = open_features("tiny", "test_vit_tiny", "train", root=root, precision="int8")
    assert split.precision == "int8" and split.fingerprint["precision"] == "int8"
    assert split.array("block1").dtype == np.int8 and split.read("block1", 0, 2).dtype == np.float32
    # two shards, then a run interrupted after its first chunk and resumed: the same bytes
    sharded = data_root(tmp_path / "sharded")
    write_tiny_dataset(sharded, splits={"train": 10}, height=32, width=48)
    for i in (1, 0):
        extract(model="test_vit_tiny", dataset="tiny", root=sharded, precision="int8", shard=(i, 2), chunk_images=3,
                progress=False)
    assert tree_bytes(sharded.feature_store("tiny", "test_vit_tiny", "int8")) == whole
    resumed = data_root(tmp_path / "resumed")
    write_tiny_dataset(resumed, splits={"train": 10}, height=32, width=48)
    from cache.feature_writer import FeatureWriter

    original, calls = FeatureWriter.write_chunk, []

    def fail_after_one(self, *args, **kwargs):
        if calls:
            raise KeyboardInterrupt
        calls.append(1)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(FeatureWriter, "write_chunk", fail_after_one)
    with pytest.raises(KeyboardInterrupt, match="^$"):          # the bare interrupt raised above
        extract(model="test_vit_tiny", dataset="tiny", root=resumed, precision="int8", chunk_images=3, progress=False)
    monkeypatch.setattr(FeatureWriter, "write_chunk", original)
    assert _int8_tree(resumed, chunk_images=3) == whole
    # the float16 store of the same model is another store, about twice the bytes
    extract(model="test_vit_tiny", dataset="tiny", root=root, chunk_images=3, progress=False)
    fp16 = open_features("tiny", "test_vit_tiny", "train", root=root)
    np.testing.assert_allclose(split.read("block1", 0, 10), fp16.read("block1", 0, 10).astype(np.float32),
                               atol=float(np.abs(fp16.read("block1", 0, 10).astype(np.float32)).max()) / 127)


def test_a_missing_layer_names_the_extract_that_adds_it_without_rewriting_the_others(synthetic_root, tmp_path):
    import shutil

    from cache import data_root

    root = data_root(tmp_path / "data")              # its own copy: the session's store stays as other tests expect
    shutil.copytree(synthetic_root.dataset_store("synthetic"), root.dataset_store("synthetic"))
    extract(model="test_vit_tiny", dataset="synthetic", tasks=["similarity", "correspondence"], root=root,
            progress=False)
    assert open_features("synthetic", "test_vit_tiny", "triplets", root=root).layers == []     # global only
    pairs = open_features("synthetic", "test_vit_tiny", "pairs", root=root)
    assert pairs.layers == ["block1"]
    run_task(task_name="similarity", dataset="synthetic", models=["test_vit_tiny"], root=root, quiet=True)
    with pytest.raises(MidprobeError, match=r"layers block0 are not cached in split 'pairs'.*"
                                            r"`make extract MODEL=test_vit_tiny DATASET=synthetic SPLIT=pairs LAYERS=block0`"):
        run_task(task_name="correspondence", dataset="synthetic", models=["test_vit_tiny"], layer_sets=[["block0"]],
                 root=root, quiet=True)
    block1 = tree_bytes(pairs.store / "pairs" / "block1")
    extract(model="test_vit_tiny", dataset="synthetic", splits=["pairs"], layers=["block0"], root=root,
            progress=False)                                            # what the message says to run
    grown = open_features("synthetic", "test_vit_tiny", "pairs", root=root)
    assert grown.layers == ["block1", "block0"] and grown.fingerprint["layers"] == ["block1", "block0"]
    assert tree_bytes(grown.store / "pairs" / "block1") == block1      # never rewritten
    assert set(grown.attrs["checksums"]) == {"block1", "block0", "global"}
    rows = run_task(task_name="correspondence", dataset="synthetic", models=["test_vit_tiny"],
                    layer_sets=[["block0"]], root=root, quiet=True)
    assert rows[0]["probe"] == "correspondence-block0"
    triplets = open_features("synthetic", "test_vit_tiny", "triplets", root=root)
    with pytest.raises(MidprobeError, match="no layer is cached in split 'triplets'.*SPLIT=triplets LAYERS=all`"):
        resolve_layers(triplets.layers, None, triplets)
    extract(model="test_vit_tiny", dataset="synthetic", splits=["triplets"], layers=["all"], root=root,
            progress=False)                                            # what the message says to run
    grown = open_features("synthetic", "test_vit_tiny", "triplets", root=root)
    assert grown.layers == ["block0", "block1"]                        # the tiny ViT's default layers
    # a split another protocol reads names that protocol in the command
    with pytest.raises(MidprobeError, match=r"SPLIT=triplets LAYERS=block1 PROTOCOL=paper`"):
        resolve_layers(["block0"], [["block1"]], grown, "paper")
    # a block the network does not have (the tiny ViT has two) is said as such: no extraction can add it
    with pytest.raises(MidprobeError, match=r"no extraction can add it: model 'test_vit_tiny' has no layer block7"):
        resolve_layers(grown.layers, [["block7"]], grown, "paper")


def test_probes_read_int8_stores_and_score_like_float16(synthetic_root):
    root = synthetic_root
    for precision in ("fp16", "int8"):
        extract(model="test_vit_tiny", dataset="synthetic", tasks=["depth", "normals", "segmentation"],
                precision=precision, root=root, progress=False)
    scores = {precision: run_task(task_name="segmentation", dataset="synthetic", models=["test_vit_tiny"],
                                  heads=["ridge"], precision=precision, root=root, quiet=True)[0]["iou"]
              for precision in ("fp16", "int8")}
    assert scores["int8"] == pytest.approx(scores["fp16"], abs=0.01)
    # both records are kept, and the leaderboard never mixes them in one cell
    from probe.records import load_records
    from probe.report.tables import build_leaderboards

    records = load_records(root)
    assert sorted(r["path"].rsplit("/", 1)[1] for r in records) == ["ridge-block0+block1-seed0+int8.json",
                                                                     "ridge-block0+block1-seed0.json"]
    [board] = build_leaderboards(records).values()
    assert board.columns == ["segmentation (synthetic)", "segmentation (synthetic) [int8]"]
    assert board.mean["test_vit_tiny", "segmentation (synthetic) [int8]"] == pytest.approx(scores["int8"])
