"""Batches held on the device or streamed: the same images, in the same order, with the same numbers."""

import itertools
import json
import multiprocessing

import numpy as np
import pytest
import torch

from cache import MidprobeError, iterate_batches, open_dataset, open_feature_writer, open_features
from cache.augment import augment_targets, view_params
from cache.batch_plan import plan_batches
from cache.chunks import read_checked, read_rows_into, rows_readable
from cache.loader import FeatureLoader, parse_bytes
from probe.cli import main as probe_main
from probe.features import to_device
from probe.run import run_task
from probe.train import training_batches
from tests.conftest import write_tiny_dataset

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh runs it)")


def _fingerprint(layers, **over):
    fp = {"format_version": 1, "model": "m", "weights": "random:0", "timm_version": "x", "layers": list(layers),
          "input_size": [8, 8], "mean": [0, 0, 0], "std": [1, 1, 1], "feature_norm": False, "dataset": "d",
          "dataset_fingerprint": "f" * 64, "split": "train"}
    return {**fp, **over}


def _store(path, *, n=23, chunk=3, precision="fp16", seed=0, **fingerprint):
    """Two layers of random maps (values known from ``seed``), ``chunk`` images a chunk."""
    rng = np.random.default_rng(seed)
    maps = {"a": rng.normal(size=(n, 2, 2, 2)).astype(np.float32),
            "b": rng.normal(size=(n, 3, 1, 1)).astype(np.float32)}
    writer = open_feature_writer(path, split="train", fingerprint=_fingerprint(maps, **fingerprint), num_images=n,
                                 layer_shapes={k: v.shape[1:] for k, v in maps.items()}, strides={"a": 1, "b": 2},
                                 global_dim=1, chunk_images=chunk, precision=precision)
    for ci in writer.pending():
        lo, hi = writer.chunk_range(ci)
        writer.write_chunk(ci, {k: v[lo:hi] for k, v in maps.items()}, np.zeros((hi - lo, 1)))
    assert writer.finalize()
    return open_features("d", "m", "train", store=path, precision=precision)


def _same(streamed, served):
    """Two epochs' batches hold the same images in the same order, with bit-identical values."""
    assert [b.index.tolist() for b in streamed] == [b.index.tolist() for b in served]
    cpu = torch.device("cpu")
    for x, y in zip(streamed, served):
        for layer in x.features:
            assert torch.equal(to_device(x.features[layer], cpu), to_device(y.features[layer], cpu))
        for key in x.targets:
            assert torch.equal(torch.as_tensor(np.asarray(x.targets[key])), torch.as_tensor(y.targets[key]).cpu())


def test_the_plan_keeps_the_seeded_order_of_the_streaming_iterator(tmp_path):
    # known answers: the orders iterate_batches gave before the plan existed (10 images, chunks of 3)
    split = _store(tmp_path / "m.zarr", n=10, chunk=3)
    expected = {(4, 2, 7, 0, None): [[0, 1, 6, 8], [2, 7, 3, 5], [4, 9]],
                (4, 2, 7, 1, None): [[6, 7, 0, 1], [8, 2, 9, 3], [4, 5]],
                (3, 1, 0, 0, (2, 9)): [[6, 7, 8], [2, 3, 5], [4]]}
    for (batch, window, seed, epoch, images), order in expected.items():
        plan = plan_batches(num_images=10, chunk_images=3, batch_size=batch, window_chunks=window, seed=seed,
                            epoch=epoch, images=images)
        assert [b.tolist() for b in plan.batches] == order
        assert [b.index.tolist() for b in iterate_batches(split, layers=["a"], batch_size=batch, window_chunks=window,
                                                          seed=seed, epoch=epoch, images=images)] == order


def test_a_subset_of_every_image_plans_exactly_the_batches_of_no_subset():
    full = plan_batches(num_images=20, chunk_images=3, batch_size=4, seed=1, epoch=2)
    every = plan_batches(num_images=20, chunk_images=3, batch_size=4, seed=1, epoch=2, subset=np.arange(20))
    assert [b.tolist() for b in every.batches] == [b.tolist() for b in full.batches]
    some = plan_batches(num_images=20, chunk_images=3, batch_size=4, seed=1, epoch=2, subset=[19, 0, 4, 5, 5])
    assert sorted(np.concatenate(some.batches).tolist()) == [0, 4, 5, 19]
    assert sorted(b.chunk for w in some.windows for b in w.blocks) == [0, 1, 6]     # only chunks holding one
    with pytest.raises(ValueError, match="subset"):
        plan_batches(num_images=20, chunk_images=3, batch_size=4, subset=[20])


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_resident_and_streamed_batches_are_identical(tmp_path, precision):
    split = _store(tmp_path / "m.zarr", precision=precision)
    targets = {"t": np.arange(23 * 4, dtype=np.float32).reshape(23, 2, 2) - 7.5}
    streamed = FeatureLoader(split, layers=["a", "b"], targets=targets, budget=0)
    resident = FeatureLoader(split, layers=["a", "b"], targets=targets, budget=2**30)
    assert not streamed.resident and resident.resident
    # the store's representation is held: int8 maps and their scales take about half the float16 bytes
    assert resident.resident_bytes == resident.need == sum(
        split.array(k).nbytes for k in "ab") + targets["t"].nbytes + (split.group["a.scale"].nbytes +
                                                                       split.group["b.scale"].nbytes
                                                                       if precision == "int8" else 0)
    grid = itertools.product([1, 4, 32], [1, 3], [True, False], [False, True], [(0, 1), (5, 1)],
                             [(None, 0), ((5, 20), 5)])
    for batch, window, shuffle, drop_last, (seed, epoch), (images, offset) in grid:
        kwargs = dict(batch_size=batch, window_chunks=window, shuffle=shuffle, drop_last=drop_last, seed=seed,
                      epoch=epoch, images=images, target_offset=offset)
        host = list(iterate_batches(split, layers=["a", "b"], targets=targets, **kwargs))
        _same(host, list(streamed.batches(**kwargs)))
        _same(host, list(resident.batches(**kwargs)))
        if precision == "fp16":          # as stored; int8 maps arrive dequantised on the device
            assert all(b.features["a"].dtype == torch.float16 for b in resident.batches(**kwargs))
    # label-efficiency subsets: only the chosen images, in the iterator's order, on every path
    for subset, images in (([0, 4, 5, 22], None), ([6, 7, 19], (5, 20))):
        kwargs = dict(batch_size=2, seed=3, epoch=1, images=images, subset=np.array(subset))
        host = list(iterate_batches(split, layers=["a", "b"], targets=targets, **kwargs))
        assert sorted(np.concatenate([b.index for b in host]).tolist()) == subset
        _same(host, list(streamed.batches(**kwargs)))
        _same(host, list(resident.batches(**kwargs)))


def test_the_parallel_reader_covers_every_image_once_per_epoch(tmp_path, monkeypatch):
    monkeypatch.setenv("MIDPROBE_READ_THREADS", "4")
    split = _store(tmp_path / "m.zarr", n=50, chunk=4)
    target = np.arange(50) * 10
    loader = FeatureLoader(split, layers=["a"], targets={"t": target}, budget=0)
    for epoch in range(3):
        for batches in (list(iterate_batches(split, layers=["a"], batch_size=6, epoch=epoch, targets={"t": target})),
                        list(loader.batches(batch_size=6, epoch=epoch))):
            index = np.concatenate([b.index for b in batches])
            assert sorted(index.tolist()) == list(range(50))
            for b in batches:
                np.testing.assert_array_equal(np.asarray(b.targets["t"]), b.index * 10)
                np.testing.assert_array_equal(np.asarray(b.features["a"], np.float32),
                                              split.read("a", 0, 50)[b.index])


def test_raw_reads_equal_zarr_reads_and_fill_a_given_buffer(tmp_path):
    split = _store(tmp_path / "m.zarr", n=23, chunk=3)
    arr = split.array("a")
    for lo, hi in ((0, 23), (4, 5), (2, 17), (21, 23)):
        expected = arr[lo:hi]
        np.testing.assert_array_equal(read_checked(arr, slice(lo, hi)), expected)
        out = np.full((hi - lo, 2, 2, 2), np.nan, np.float16)
        assert read_checked(arr, slice(lo, hi), out=out) is out
        np.testing.assert_array_equal(out, expected)


def test_rows_read_straight_into_a_batch_equal_zarr_reads_and_name_a_damaged_chunk(tmp_path):
    split = _store(tmp_path / "m.zarr", n=23, chunk=3)
    arr = split.array("a")
    assert rows_readable(arr)
    for rows in ([0], [1, 2, 3, 4, 9, 22], list(range(23)), [5, 6, 7, 8]):
        out = np.full((len(rows), 2, 2, 2), np.nan, np.float16)
        assert read_rows_into(arr, np.array(rows), out) is out
        np.testing.assert_array_equal(out, arr[...][rows])
    with pytest.raises(ValueError, match="expected a C-contiguous float16"):
        read_rows_into(arr, np.array([1, 2]), np.empty((3, 2, 2, 2), np.float16))
    path = tmp_path / "m.zarr" / "train" / "a" / "c" / "3" / "0" / "0" / "0"
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(MidprobeError, match=r"array 'a', chunk 3 \(images 9-11\) — truncated"):
        read_rows_into(arr, np.array([1, 10]), np.empty((2, 2, 2, 2), np.float16))
    with pytest.raises(MidprobeError, match=r"array 'a', chunk 3 \(images 9-11\) — truncated"):
        list(iterate_batches(split, layers=["a"], batch_size=4))


def _epoch_order(store: str) -> list[list[int]]:
    split = open_features("d", "m", "train", store=store)
    return [b.index.tolist() for b in iterate_batches(split, layers=["a", "b"], batch_size=4)]


def test_a_forked_child_reads_with_its_own_reader_pool(tmp_path):
    # a process pool forked after the reader pool ran (make fidelity extracts, then forks its probe
    # workers) must not wait forever on the parent's threads, which a fork does not copy
    store = str(tmp_path / "m.zarr")
    _store(tmp_path / "m.zarr", n=10, chunk=3)
    expected = _epoch_order(store)
    with multiprocessing.get_context("fork").Pool(1) as pool:
        assert pool.apply_async(_epoch_order, (store,)).get(timeout=60) == expected


def test_a_damaged_chunk_while_streaming_to_the_device_is_one_line_naming_it(tmp_path):
    split = _store(tmp_path / "m.zarr", n=10, chunk=3)
    path = tmp_path / "m.zarr" / "train" / "b" / "c" / "2" / "0" / "0" / "0"
    path.write_bytes(path.read_bytes()[:5])
    with pytest.raises(MidprobeError, match=r"array 'b', chunk 2 \(images 6-8\) — truncated"):
        list(FeatureLoader(split, layers=["a", "b"], budget=0).batches(batch_size=4))
    with pytest.raises(MidprobeError, match=r"array 'b', chunk 2 \(images 6-8\) — truncated"):
        FeatureLoader(split, layers=["b"], budget=2**30)


def test_augmented_views_move_their_targets_alike_on_every_path(tmp_path):
    augment = {"views": 2, "policy": "paper-nyu", "seed": 0}
    split = _store(tmp_path / "m.zarr", n=20, chunk=3, augment=augment)
    depth = np.random.default_rng(1).uniform(1, 5, (10, 12, 16)).astype(np.float32)
    kwargs = dict(layers=["a"], targets={"depth": depth}, batch_size=4, seed=0)
    loaders = [FeatureLoader(split, layers=["a"], targets={"depth": depth}, budget=b) for b in (0, 2**30)]
    for epoch in (0, 1):
        host = list(training_batches(split, epoch=epoch, **kwargs))
        for b in host:
            for j, f in enumerate(b.index):
                params = view_params("paper-nyu", seed=0, index=int(f) % 10, view=epoch)
                np.testing.assert_array_equal(b.targets["depth"][j],
                                              augment_targets({"depth": depth[int(f) % 10]}, params)["depth"])
        for loader in loaders:
            _same(host, list(training_batches(split, epoch=epoch, loader=loader, **kwargs)))
            subset = np.array([1, 2, 8])
            _same(list(training_batches(split, epoch=epoch, subset=subset, **kwargs)),
                  list(training_batches(split, epoch=epoch, loader=loader, subset=subset, **kwargs)))


def _records(root, task):
    out = {}
    for path in sorted(root.results(task).rglob("*.json")):
        record = json.loads(path.read_text())
        out[path.name] = (record["metrics"], record["training"]["final_train_loss"], record["config"])
    return out


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_records_do_not_depend_on_the_cache_budget(root, capsys, precision):
    write_tiny_dataset(root, splits={"train": 10, "test": 5}, height=32, width=32)
    store = open_dataset("tiny", root=root)
    rng = np.random.default_rng(0)
    for split, n in (("train", 10), ("test", 5)):
        maps = {"a": rng.normal(size=(n, 6, 2, 2)).astype(np.float32),
                "b": rng.normal(size=(n, 4, 1, 1)).astype(np.float32)}
        fp = _fingerprint(maps, model="rand", dataset="tiny", dataset_fingerprint=store.fingerprint, split=split,
                          input_size=[32, 32])
        writer = open_feature_writer(root.feature_store("tiny", "rand", precision), split=split, fingerprint=fp,
                                     num_images=n, layer_shapes={k: v.shape[1:] for k, v in maps.items()},
                                     strides={"a": 16, "b": 32}, global_dim=1, chunk_images=3, precision=precision)
        for ci in writer.pending():
            lo, hi = writer.chunk_range(ci)
            writer.write_chunk(ci, {k: v[lo:hi] for k, v in maps.items()}, np.zeros((hi - lo, 1)))
        assert writer.finalize()
    kwargs = dict(dataset="tiny", models=["rand"], heads=["linear", "mlp"], lrs=[1e-2], precision=precision,
                  overrides={"batch_size": 4, "epochs": 2, "hidden": 8}, root=root, seed=1)
    records = {}
    for budget in (0, None):
        for task in ("normals", "depth"):
            run_task(task_name=task, cache_budget=budget, **kwargs)
        records[budget] = {task: _records(root, task) for task in ("normals", "depth")}
        err = capsys.readouterr().err
        said = [line for line in err.splitlines() if "features and targets held on cpu" in line or "streamed" in line]
        assert len(said) == 2          # once per sweep (one per task), never per epoch
        assert all(("streamed from the store every epoch (CACHE_BUDGET=0)" if budget == 0 else "held on cpu") in line
                   for line in said)
    assert records[0] == records[None] and len(records[0]["depth"]) == 2


def test_a_budget_too_small_for_the_split_streams_and_says_so_once(tmp_path):
    split = _store(tmp_path / "m.zarr")
    need = FeatureLoader(split, layers=["a", "b"], budget=0).need
    said = []
    loader = FeatureLoader(split, layers=["a", "b"], budget=need - 1, say=said.append, what="train")
    for epoch in range(3):
        assert sum(len(b.index) for b in loader.batches(batch_size=5, epoch=epoch)) == 23
    assert not loader.resident and loader.resident_bytes == 0
    assert said == [f"train: streamed from the store every epoch: it needs {need} B, over the budget of "
                    f"{need - 1} B (CACHE_BUDGET)"]
    exact = FeatureLoader(split, layers=["a", "b"], budget=need)
    assert exact.resident and exact.resident_bytes == need


def test_cache_budget_sizes_and_their_errors(root, capsys):
    assert [parse_bytes(t) for t in ("0", "512", "100k", "512M", "8G", "1.5g", "2GiB", " 3 m ")] == [
        0, 512, 102400, 512 * 2**20, 8 * 2**30, int(1.5 * 2**30), 2 * 2**30, 3 * 2**20]
    for bad in ("", "-1", "8X", "lots", "1e9"):
        with pytest.raises(MidprobeError, match="cache budget .*expected bytes"):
            parse_bytes(bad)
    write_tiny_dataset(root)
    assert probe_main(["--task", "depth", "--dataset", "tiny", "--data", str(root.root), "--cache-budget", "8X"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cache budget '8X'") and err.count("\n") == 1


@CUDA
@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_on_cuda_resident_and_streamed_batches_equal_the_host_batches(tmp_path, precision):
    split = _store(tmp_path / "m.zarr", n=40, chunk=3, precision=precision)
    targets = {"t": np.random.default_rng(2).normal(size=(40, 5, 7)).astype(np.float32)}
    for budget in (0, 2**30):
        loader = FeatureLoader(split, layers=["a", "b"], targets=targets, device="cuda", budget=budget)
        for epoch, window in ((0, 1), (1, 4)):
            kwargs = dict(batch_size=6, epoch=epoch, window_chunks=window)
            served = list(loader.batches(**kwargs))
            assert all(b.features["a"].is_cuda and b.targets["t"].is_cuda for b in served)
            _same(list(iterate_batches(split, layers=["a", "b"], targets=targets, **kwargs)), served)
