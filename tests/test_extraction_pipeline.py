"""The extraction pipeline: reads ahead, several writers, markers after their chunks' fsyncs, the same bytes."""

import threading
from pathlib import Path

import numpy as np
import pytest
import torch

import cache.feature_writer as feature_writer
from cache import MidprobeError, open_features
from extract.backbones import Backbone, build_backbone
from extract.pipeline import WriterPool, read_ahead
from extract.runner import extract
from tests.conftest import write_tiny_dataset
from tests.test_extract import tree_bytes

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (bench/gpu.sh runs it)")


def _store_bytes(root, monkeypatch, *, readers: int, writers: int, device: str = "cpu", precision: str = "fp16"):
    monkeypatch.setenv("MIDPROBE_READ_THREADS", str(readers))
    monkeypatch.setenv("MIDPROBE_WRITE_THREADS", str(writers))
    extract(model="test_vit_tiny", dataset="tiny", root=root, batch_size=3, chunk_images=2, device=device,
            precision=precision, progress=False)
    return tree_bytes(root.feature_store("tiny", "test_vit_tiny", precision))


@pytest.mark.parametrize("precision", ["fp16", "int8"])
def test_the_store_does_not_depend_on_the_number_of_readers_and_writers(root, tmp_path, monkeypatch, precision):
    write_tiny_dataset(root, splits={"train": 11, "test": 3}, height=32, width=32)
    one = _store_bytes(root, monkeypatch, readers=1, writers=1, precision=precision)
    from cache import data_root

    other = data_root(tmp_path / "many")
    write_tiny_dataset(other, splits={"train": 11, "test": 3}, height=32, width=32)
    assert _store_bytes(other, monkeypatch, readers=3, writers=4, precision=precision) == one


def test_every_marker_follows_the_fsyncs_of_its_own_chunk_with_several_writers(root, monkeypatch):
    write_tiny_dataset(root, splits={"train": 13, "test": 3}, height=32, width=32)
    monkeypatch.setenv("MIDPROBE_WRITE_THREADS", "4")
    events, lock = [], threading.Lock()
    fsync_tree, replace = feature_writer.fsync_tree, feature_writer.os.replace

    def logged_fsync(path):
        fsync_tree(path)
        with lock:      # .../<split>/<array>/c/<chunk>
            events.append(("fsync", path.parts[-4], path.parts[-3], int(path.name)))

    def logged_replace(src, dst):
        replace(src, dst)
        if Path(dst).parent.parent.name.endswith(".progress"):
            with lock:      # .../<model>.progress/<split>/<chunk>
                events.append(("marker", Path(dst).parent.name, None, int(Path(dst).name)))

    monkeypatch.setattr(feature_writer, "fsync_tree", logged_fsync)
    monkeypatch.setattr(feature_writer.os, "replace", logged_replace)
    extract(model="test_vit_tiny", dataset="tiny", root=root, chunk_images=2, progress=False, splits=["train"])
    markers = [i for i, e in enumerate(events) if e[0] == "marker"]
    assert len(markers) == 7                                    # 13 images in chunks of 2
    for at in markers:
        chunk = events[at][3]
        synced = {e[2] for e in events[:at] if e[0] == "fsync" and e[1] == "train" and e[3] == chunk}
        assert synced == {"block0", "block1", "global"}          # every array of that chunk, before its marker
    assert open_features("tiny", "test_vit_tiny", "train", root=root).num_images == 13


class _Scaled(torch.nn.Module):
    """The tiny ViT with its maps scaled: beyond float16's range from image ``bad`` on."""

    def __init__(self, inner: torch.nn.Module, seen: list[int], bad: int) -> None:
        super().__init__()
        self.inner, self.seen, self.bad = inner, seen, bad

    def forward(self, x):
        maps, vector = self.inner(x)
        first = sum(self.seen)
        self.seen.append(len(x))
        factor = torch.where(torch.arange(first, first + len(x)) >= self.bad, 1e6, 1.0).view(-1, 1, 1, 1)
        return {k: v * factor for k, v in maps.items()}, vector


def test_values_beyond_float16_stop_the_extraction_in_one_line_and_leave_that_chunk_unmarked(root):
    write_tiny_dataset(root, splits={"train": 8, "test": 3}, height=32, width=32)
    tiny = build_backbone("test_vit_tiny")
    scaled = Backbone(tiny.spec, _Scaled(tiny.module, [], bad=5), tiny.weights_id)
    with pytest.raises(MidprobeError, match=r"^layer 'block0' has values up to .*beyond float16") as info:
        extract(model="test_vit_tiny", dataset="tiny", root=root, backbone=scaled, chunk_images=2, progress=False,
                splits=["train"])
    assert "\n" not in str(info.value)
    progress = root.feature_store("tiny", "test_vit_tiny").with_suffix(".progress") / "train"
    done = sorted(int(p.name) for p in progress.iterdir() if p.name.isdigit())
    assert 2 not in done and 3 not in done and set(done) <= {0, 1}      # images 4-7: chunks 2 and 3
    extract(model="test_vit_tiny", dataset="tiny", root=root, backbone=tiny, chunk_images=2, progress=False,
            splits=["train"])
    assert open_features("tiny", "test_vit_tiny", "train", root=root).num_images == 8


def test_reads_run_ahead_in_order_and_a_failed_read_is_raised():
    started, out = [], []

    def read(i):
        started.append(i - len(out))              # how far ahead of the consumer each read starts
        if i == 6:
            raise MidprobeError("image chunk 6 is damaged")
        return i * 10

    with pytest.raises(MidprobeError, match="chunk 6"):
        for item, value in read_ahead(range(9), read, depth=3):
            out.append((item, value))
    assert out == [(i, i * 10) for i in range(6)]
    assert max(started) == 2                       # at most ``depth`` reads in flight, the consumed one's included


def test_the_first_failed_write_stops_the_writers_and_is_raised():
    written, lock = [], threading.Lock()

    def write(i):
        if i == 2:
            raise OSError(28, "No space left on device")
        with lock:
            written.append(i)

    pool = WriterPool(write, threads=2)
    with pytest.raises(OSError, match="No space"):
        try:
            for i in range(40):
                pool.put(i)
        finally:
            pool.close()
    assert not any(t.is_alive() for t in pool.threads)
    assert 2 not in written and len(written) < 40


@CUDA
def test_on_cuda_the_store_does_not_depend_on_readers_and_writers_and_is_close_to_the_cpu_one(root, tmp_path,
                                                                                             monkeypatch):
    from cache import data_root

    write_tiny_dataset(root, splits={"train": 11, "test": 3}, height=32, width=32)
    one = _store_bytes(root, monkeypatch, readers=1, writers=1, device="cuda")
    other = data_root(tmp_path / "many")
    write_tiny_dataset(other, splits={"train": 11, "test": 3}, height=32, width=32)
    assert _store_bytes(other, monkeypatch, readers=3, writers=4, device="cuda") == one
    cpu = data_root(tmp_path / "cpu")
    write_tiny_dataset(cpu, splits={"train": 11, "test": 3}, height=32, width=32)
    _store_bytes(cpu, monkeypatch, readers=2, writers=2)
    gpu, ref = (open_features("tiny", "test_vit_tiny", "train", root=r) for r in (root, cpu))
    for layer in ref.layers:                     # bf16 autocast on the GPU, float32 on the CPU
        expected = ref.read(layer, 0, 11).astype(np.float32)
        np.testing.assert_allclose(gpu.read(layer, 0, 11), expected, atol=0.05 * np.abs(expected).max())
