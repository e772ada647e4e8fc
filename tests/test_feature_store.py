import numpy as np
import pytest

import cache.batches
from cache import MidprobeError, iterate_batches, open_feature_writer, open_features

SHAPES = {"a": (3, 2, 2), "b": (5, 1, 1)}


def _fingerprint(**over):
    fp = {"format_version": 1, "model": "m", "weights": "random:0", "timm_version": "x", "layers": ["a", "b"],
          "input_size": [8, 8], "mean": [0, 0, 0], "std": [1, 1, 1], "feature_norm": False, "dataset": "d",
          "dataset_fingerprint": "f" * 64, "split": "train"}
    return {**fp, **over}


def _write_store(path, n=10, chunk=3, fingerprint=None):
    writer = open_feature_writer(path, split="train", fingerprint=fingerprint or _fingerprint(), num_images=n,
                                 layer_shapes=SHAPES, strides={"a": 4, "b": 8}, global_dim=2, chunk_images=chunk)
    for ci in writer.pending():
        lo, hi = writer.chunk_range(ci)
        idx = np.arange(lo, hi, dtype=np.float32)
        writer.write_chunk(ci, {"a": np.broadcast_to(idx[:, None, None, None], (hi - lo, 3, 2, 2)),
                                "b": np.broadcast_to(-idx[:, None, None, None], (hi - lo, 5, 1, 1))},
                           np.stack([idx, idx], 1))
    assert writer.finalize()
    return writer


def test_layout_chunks_hold_whole_images(tmp_path):
    _write_store(tmp_path / "m.zarr")
    split = open_features("d", "m", "train", store=tmp_path / "m.zarr")
    assert split.layers == ["a", "b"] and split.num_images == 10 and split.chunk_images == 3
    assert split.array("a").chunks == (3, 3, 2, 2) and split.array("a").dtype == np.float16
    assert split.stride("b") == 8
    np.testing.assert_array_equal(split.read("a", 4, 6)[:, 0, 0, 0], [4, 5])
    lazy = split.dask("a")
    assert lazy.chunks[0] == (3, 3, 3, 1)
    assert not (tmp_path / "m.progress").exists()


def test_fingerprint_mismatch_names_the_field(tmp_path):
    _write_store(tmp_path / "m.zarr")
    with pytest.raises(MidprobeError, match="weights="):
        open_features("d", "m", "train", store=tmp_path / "m.zarr", expect={"weights": "random:1"})
    with pytest.raises(MidprobeError, match="input_size="):
        open_feature_writer(tmp_path / "m.zarr", split="train", fingerprint=_fingerprint(input_size=[16, 16]),
                            num_images=10, layer_shapes=SHAPES, strides={}, global_dim=2)


def test_values_beyond_float16_are_refused(tmp_path):
    writer = open_feature_writer(tmp_path / "m.zarr", split="train", fingerprint=_fingerprint(), num_images=2,
                                 layer_shapes={"a": (1, 1, 1)}, strides={"a": 1}, global_dim=1, chunk_images=2)
    with pytest.raises(MidprobeError, match="beyond float16"):
        writer.write_chunk(0, {"a": np.full((2, 1, 1, 1), 1e6)}, np.zeros((2, 1)))
    with pytest.raises(MidprobeError, match="beyond float16"):
        writer.write_chunk(0, {"a": np.full((2, 1, 1, 1), np.nan)}, np.zeros((2, 1)))
    # already float16 (the extractor casts on its device): inf and NaN are still refused
    with pytest.raises(MidprobeError, match="beyond float16"):
        writer.write_chunk(0, {"a": np.array([1.0, np.inf], np.float16).reshape(2, 1, 1, 1)}, np.zeros((2, 1)))
    assert not writer.finalize()
    writer.write_chunk(0, {"a": np.array([-65504.0, 1.0], np.float16).reshape(2, 1, 1, 1)}, np.zeros((2, 1)))
    assert writer.finalize()


def test_incomplete_split_is_not_opened(tmp_path):
    writer = open_feature_writer(tmp_path / "m.zarr", split="train", fingerprint=_fingerprint(), num_images=4,
                                 layer_shapes={"a": (1, 1, 1)}, strides={"a": 1}, global_dim=1, chunk_images=2)
    writer.write_chunk(0, {"a": np.zeros((2, 1, 1, 1))}, np.zeros((2, 1)))
    assert not writer.finalize()
    with pytest.raises(MidprobeError, match="incomplete"):
        open_features("d", "m", "train", store=tmp_path / "m.zarr")
    assert writer.pending() == [1]


@pytest.mark.parametrize("batch_size,window", [(4, 1), (3, 2), (32, 4)])
def test_batches_cover_every_image_once_per_epoch(tmp_path, batch_size, window):
    _write_store(tmp_path / "m.zarr", n=10, chunk=3)
    split = open_features("d", "m", "train", store=tmp_path / "m.zarr")
    orders = []
    for epoch in range(3):
        seen = []
        for batch in iterate_batches(split, layers=["a"], batch_size=batch_size, seed=7, epoch=epoch,
                                     window_chunks=window):
            assert len(batch.index) <= batch_size
            # features travel with their image
            np.testing.assert_array_equal(batch.features["a"][:, 0, 0, 0], batch.index)
            seen.extend(batch.index.tolist())
        assert sorted(seen) == list(range(10))
        orders.append(seen)
    assert orders[0] != orders[1]          # reshuffled every epoch
    again = [b.index.tolist() for b in iterate_batches(split, layers=["a"], batch_size=batch_size, seed=7, epoch=0,
                                                       window_chunks=window)]
    assert sum(again, []) == orders[0]     # same seed and epoch, same order


def test_batches_read_targets_for_the_same_images(tmp_path):
    _write_store(tmp_path / "m.zarr", n=10, chunk=3)
    split = open_features("d", "m", "train", store=tmp_path / "m.zarr")
    target = np.arange(10) * 10
    for batch in iterate_batches(split, layers=["b"], batch_size=4, targets={"t": target}):
        np.testing.assert_array_equal(batch.targets["t"], batch.index * 10)


def test_iterator_reads_ahead_by_at_most_one_window(tmp_path, monkeypatch):
    _write_store(tmp_path / "m.zarr", n=30, chunk=3)
    split = open_features("d", "m", "train", store=tmp_path / "m.zarr")
    read_images = []
    original = split.read_stored
    original_rows = cache.batches.read_rows_into

    def counting_read(layer, lo, hi):
        read_images.append(hi - lo)
        return original(layer, lo, hi)

    def counting_rows(arr, rows, out):
        read_images.append(len(rows))
        return original_rows(arr, rows, out)

    split.read_stored = counting_read
    monkeypatch.setattr(cache.batches, "read_rows_into", counting_rows)
    for direct in (True, False):                  # raw chunk files read into each batch; or decoded blocks
        if not direct:
            monkeypatch.setattr(cache.batches, "rows_readable", lambda arr: False)
        read_images.clear()
        yielded = 0
        for batch in iterate_batches(split, layers=["a"], batch_size=2, window_chunks=2, prefetch=False):
            yielded += len(batch.index)
            # in memory: what is not yet yielded, at most one window (2 chunks of 3) plus a carried batch
            assert sum(read_images) - yielded <= (2 if direct else 2 * 3 + 2)
        assert yielded == 30 and sum(read_images) == 30
