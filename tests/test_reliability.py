"""Reliability: locks that die with their holder, chunk checksums, verify/repair, checked reads, a full disk."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import google_crc32c
import numpy as np
import pytest
import zarr

from cache import MidprobeError, data_root, iterate_batches, open_dataset, open_features
from cache.locks import FileLock
from cache.verify import main as verify_main
from extract.cli import main as extract_main
from extract.datasets.__main__ import main as data_main
from extract.runner import extract
from tests.conftest import write_tiny_dataset
from tests.filesystems import fill, small_tmpfs, tree_bytes

REPO = Path(__file__).resolve().parents[1]
HOLD = ("import sys, time; sys.path.insert(0, %r); from cache.locks import FileLock; "
        "lock = FileLock(sys.argv[1]).acquire(); print('held', flush=True); time.sleep(600)")
EXTRACT = ("import sys; sys.path.insert(0, %r); import tests.conftest; from extract.cli import main; "
           "sys.exit(main(sys.argv[1:]))")


def _hold(path: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD % str(REPO), str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


def _chunk(store: Path, split: str, array: str, index: int) -> Path:
    folder = store / split / array / "c" / str(index)
    return next(p for p in folder.rglob("*") if p.is_file())


def _extracted(root, n: int = 9, chunk: int = 2):
    write_tiny_dataset(root, splits={"train": n, "test": 3}, height=32, width=32)
    extract(model="test_vit_tiny", dataset="tiny", root=root, chunk_images=chunk, progress=False)
    return root.feature_store("tiny", "test_vit_tiny")


def test_a_lock_blocks_while_its_holder_lives_and_dies_with_it(tmp_path):
    lock = tmp_path / "m.lock"
    holder = _hold(lock)
    try:
        with pytest.raises(MidprobeError, match=r"in use by another running process for over 0 s \(lock .*m\.lock\)"):
            FileLock(lock, timeout=0.3).acquire()
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait()
    assert lock.exists()                  # the file stays behind; the lock does not
    with FileLock(lock, timeout=0):
        pass


def test_an_extraction_killed_holding_the_store_lock_does_not_block_the_next(root):
    write_tiny_dataset(root, splits={"train": 3}, height=32, width=32)
    holder = _hold(root.feature_store("tiny", "test_vit_tiny").with_suffix(".lock"))
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait()
    assert extract(model="test_vit_tiny", dataset="tiny", root=root, progress=False)[0].complete


def test_two_live_shard_writers_at_once_make_the_same_store_as_one_run(root, tmp_path):
    single = tree_bytes(_extracted(root, n=12, chunk=1))
    other = data_root(tmp_path / "shards")
    write_tiny_dataset(other, splits={"train": 12, "test": 3}, height=32, width=32)
    args = [sys.executable, "-c", EXTRACT % str(REPO), "--model", "test_vit_tiny", "--dataset", "tiny",
            "--data", str(other.root), "--chunk-images", "1", "--quiet"]
    procs = [subprocess.Popen([*args, "--shard", f"{i}/2"], cwd=REPO) for i in range(2)]
    assert [p.wait() for p in procs] == [0, 0]
    assert tree_bytes(other.feature_store("tiny", "test_vit_tiny")) == single


def test_checksums_are_the_crc32c_of_each_chunk_file_as_stored(root):
    store = _extracted(root)
    group = zarr.open_group(str(store), mode="r")["train"]
    sums = group.attrs["checksums"]
    assert sorted(sums) == ["block0", "block1", "global"] and len(sums["block0"]) == 5
    data = _chunk(store, "train", "block1", 4).read_bytes()
    assert sums["block1"][4] == [len(data), google_crc32c.value(data)]
    assert not store.with_suffix(".progress").exists()
    dataset = zarr.open_group(str(root.dataset_store("tiny")), mode="r")["train"]
    depth = _chunk(root.dataset_store("tiny"), "train", "depth", 1).read_bytes()
    assert dataset.attrs["checksums"]["depth"][1] == [len(depth), google_crc32c.value(depth)]


READS = {
    "FeatureSplit.read": lambda s, d: s.read("block1", 0, 9),
    "FeatureSplit.dask": lambda s, d: s.dask("block1").sum().compute(),
    "FeatureSplit.global_vectors": lambda s, d: s.global_vectors(),
    "iterate_batches": lambda s, d: list(iterate_batches(s, layers=["block1"], batch_size=4)),
}


@pytest.mark.parametrize("reader", READS)
@pytest.mark.parametrize("damage", ["truncated", "missing"])
def test_reading_a_damaged_feature_chunk_is_one_line_naming_it(root, reader, damage):
    store = _extracted(root)
    array = "global" if reader == "FeatureSplit.global_vectors" else "block1"
    chunk = _chunk(store, "train", array, 3)
    chunk.write_bytes(chunk.read_bytes()[:7]) if damage == "truncated" else chunk.unlink()
    split = open_features("tiny", "test_vit_tiny", "train", root=root)
    with pytest.raises(MidprobeError, match=r"split 'train', array '\w+', chunk 3 \(images 6-7\)") as info:
        READS[reader](split, None)
    message = str(info.value)
    assert "\n" not in message and f"split 'train', array '{array}', chunk 3 (images 6-7)" in message
    assert str(store) in message and "make verify REPAIR=1" in message and damage in message


@pytest.mark.parametrize("reader", ["SplitView.read", "SplitView.read(index)", "iterate_batches targets"])
def test_reading_a_damaged_dataset_chunk_is_one_line_naming_it(root, reader):
    store = _extracted(root)
    chunk = _chunk(root.dataset_store("tiny"), "train", "depth", 1)
    chunk.write_bytes(b"\1" * 10)
    data = open_dataset("tiny", root=root).split("train")
    with pytest.raises(MidprobeError, match=r"tiny.zarr: split 'train', array 'depth', chunk 1 \(images 4-7\)") as info:
        if reader == "SplitView.read":
            data.read("depth")
        elif reader == "SplitView.read(index)":
            data.read("depth", np.array([7, 0]))
        else:
            split = open_features("tiny", "test_vit_tiny", "train", store=store)
            list(iterate_batches(split, layers=["block0"], batch_size=3, targets={"depth": data.array("depth")}))
    message = str(info.value)
    assert "\n" not in message and "tiny.zarr: split 'train', array 'depth', chunk 1 (images 4-7)" in message
    assert "truncated: 10 bytes on disk, 16384 written" in message


def test_a_flipped_bit_is_caught_on_read_only_when_asked_and_always_by_verify(root, monkeypatch, capsys):
    store = _extracted(root)
    chunk = _chunk(store, "train", "block0", 2)
    data = bytearray(chunk.read_bytes())
    data[3] ^= 0x10
    chunk.write_bytes(bytes(data))
    split = open_features("tiny", "test_vit_tiny", "train", root=root)
    split.read("block0", 4, 6)                           # same size: only a checksum can tell
    monkeypatch.setenv("MIDPROBE_VERIFY_READS", "1")
    with pytest.raises(MidprobeError, match="chunk 2 .*corrupted: its crc32c differs"):
        split.read("block0", 4, 6)
    assert verify_main(["--data", str(root.root)]) == 1
    out = capsys.readouterr().out.splitlines()
    assert out[0] == ("stores/features/tiny/test_vit_tiny.zarr train/block0 chunk 2: corrupted: its crc32c "
                      "differs from the one recorded when it was written")
    assert out[-1].endswith(": 1 problem")


def test_verify_repair_reextracts_exactly_the_damaged_chunks_to_the_same_bytes(root, capsys):
    store = _extracted(root)
    whole = tree_bytes(store)
    assert verify_main(["--data", str(root.root)]) == 0
    assert capsys.readouterr().out.strip().endswith("2 stores checked under " + str(root.root) + ": no problems")
    _chunk(store, "train", "block1", 1).unlink()
    truncated = _chunk(store, "test", "global", 0)
    truncated.write_bytes(truncated.read_bytes()[:-1])
    assert verify_main(["--data", str(root.root)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[:2] == ["stores/features/tiny/test_vit_tiny.zarr test/global chunk 0: truncated: 127 bytes on "
                         "disk, 128 written",
                         "stores/features/tiny/test_vit_tiny.zarr train/block1 chunk 1: missing (its file is gone)"]
    assert verify_main(["--data", str(root.root), "--repair"]) == 0
    out = capsys.readouterr().out
    assert "chunk 0 marked for re-extraction" in out and "chunk 1 marked for re-extraction" in out
    with pytest.raises(MidprobeError, match="incomplete"):
        open_features("tiny", "test_vit_tiny", "train", root=root)
    assert verify_main(["--data", str(root.root)]) == 1        # incomplete until extracted again
    assert "train: incomplete: 1 of 5 chunks not extracted" in capsys.readouterr().out
    reports = extract(model="test_vit_tiny", dataset="tiny", root=root, chunk_images=2, progress=False)
    assert {r.split: r.images_written for r in reports} == {"test": 2, "train": 2}
    assert tree_bytes(store) == whole
    assert verify_main(["--data", str(root.root)]) == 0


def test_verify_repair_marks_a_damaged_dataset_store_for_rebuilding(root, capsys):
    _extracted(root)
    chunk = _chunk(root.dataset_store("tiny"), "test", "images", 0)
    chunk.write_bytes(b"not zstd")
    assert verify_main(["--data", str(root.root), "--repair"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("stores/datasets/tiny.zarr test/images chunk 0: ")
    assert "marked incomplete; rebuild it with `make data DATASET=tiny`" in out[1]
    with pytest.raises(MidprobeError, match="incomplete"):
        open_dataset("tiny", root=root)
    write_tiny_dataset(root, splits={"train": 9, "test": 3}, height=32, width=32)
    assert verify_main(["--data", str(root.root)]) == 0


def test_verify_reports_metadata_and_fingerprint_problems(root, tmp_path, capsys):
    store = _extracted(root)
    group = zarr.open_group(str(store), mode="r+")
    fingerprint = dict(group["test"].attrs["fingerprint"])
    group["test"].attrs["fingerprint"] = {**fingerprint, "model": "other"}
    write_tiny_dataset(root, splits={"train": 9, "test": 3}, height=32, width=32, seed=5)   # the dataset changed
    newer = root.feature_store("tiny", "newer")
    zarr.open_group(str(newer), mode="w").attrs.update({"kind": "features", "midprobe_format": 99})
    dataset = zarr.open_group(str(root.dataset_store("tiny")), mode="r+")
    dataset.attrs["source"] = "edited"
    assert verify_main(["--data", str(root.root), "--repair"]) == 1
    out = capsys.readouterr().out
    assert "stores/datasets/tiny.zarr: fingerprint does not match the store's name, source and options" in out
    assert "stores/features/tiny/newer.zarr: format version 99, this midprobe reads 1" in out
    assert "test_vit_tiny.zarr test: fingerprint has model='other', the store 'test_vit_tiny'" in out
    assert "test_vit_tiny.zarr train: extracted from another version of dataset 'tiny'" in out
    assert "repaired:" not in out and out.endswith("5 problems, 0 repaired\n")    # metadata is never guessed back


def test_a_killed_creation_and_leftover_partial_files_resume_to_the_same_bytes(root, tmp_path, monkeypatch):
    whole = tree_bytes(_extracted(root))
    other = data_root(tmp_path / "other")
    write_tiny_dataset(other, splits={"train": 9, "test": 3}, height=32, width=32)
    store = other.feature_store("tiny", "test_vit_tiny")
    # a creation killed after the split's group but before its attributes (written last)
    zarr.open_group(str(store), mode="a", zarr_format=3).create_group("train").create_array(
        "block0", shape=(1,), dtype="uint8")
    from cache.feature_writer import FeatureWriter

    original, calls = FeatureWriter.write_chunk, []

    def dies_at_the_third(self, index, layers, vectors):
        calls.append(index)
        if len(calls) == 3:
            raise KeyboardInterrupt
        original(self, index, layers, vectors)

    monkeypatch.setattr(FeatureWriter, "write_chunk", dies_at_the_third)
    with pytest.raises(KeyboardInterrupt, match="^$"):          # the bare interrupt raised above
        extract(model="test_vit_tiny", dataset="tiny", root=other, chunk_images=2, progress=False)
    monkeypatch.setattr(FeatureWriter, "write_chunk", original)
    # what a SIGKILL inside Zarr's atomic writes leaves: *.partial files beside metadata and in a pending chunk
    (store / "zarr.1234.partial").write_bytes(b"{")
    (store / "test" / "zarr.5678.partial").write_bytes(b"{")
    pending = store / "train" / "block0" / "c" / "1" / "0" / "0"
    pending.mkdir(parents=True, exist_ok=True)
    (pending / "0.9abc.partial").write_bytes(b"half")
    extract(model="test_vit_tiny", dataset="tiny", root=other, chunk_images=2, progress=False)
    assert tree_bytes(store) == whole


@pytest.fixture
def tmpfs_root(tmp_path):
    with small_tmpfs(tmp_path / "small", 4096) as mount:
        yield data_root(mount / "data")


def test_a_full_disk_stops_extraction_in_one_line_and_it_resumes_to_the_same_bytes(tmpfs_root, root, monkeypatch,
                                                                                  capsys):
    whole = tree_bytes(_extracted(root))
    write_tiny_dataset(tmpfs_root, splits={"train": 9, "test": 3}, height=32, width=32)
    from cache.feature_writer import FeatureWriter

    original, calls = FeatureWriter.write_chunk, []

    def fills_the_disk_at_the_third(self, index, layers, vectors):
        calls.append(index)
        if len(calls) == 3:
            fill(tmpfs_root.root)
        original(self, index, layers, vectors)

    monkeypatch.setattr(FeatureWriter, "write_chunk", fills_the_disk_at_the_third)
    argv = ["--model", "test_vit_tiny", "--dataset", "tiny", "--data", str(tmpfs_root.root), "--chunk-images", "2",
            "--split", "train", "--quiet"]
    assert extract_main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert err.startswith("error: disk full while writing chunk 2 of ") and "No space left on device" in err
    assert "the 2 chunks already durable are kept; free space and rerun the same command" in err
    monkeypatch.setattr(FeatureWriter, "write_chunk", original)
    (tmpfs_root.root / "filler").unlink()
    assert verify_main(["--data", str(tmpfs_root.root)]) == 1          # no damage, just unfinished
    assert "train: incomplete: 3 of 5 chunks not extracted" in capsys.readouterr().out
    reports = extract(model="test_vit_tiny", dataset="tiny", root=tmpfs_root, chunk_images=2, progress=False)
    assert {r.split: r.images_written for r in reports} == {"test": 3, "train": 5}
    assert tree_bytes(tmpfs_root.feature_store("tiny", "test_vit_tiny")) == whole


def test_a_full_disk_stops_dataset_preparation_in_one_line_keeping_the_old_store(tmpfs_root, monkeypatch, capsys):
    args = ["--dataset", "synthetic", "--data", str(tmpfs_root.root), "--train", "12", "--test", "4", "--pairs", "2",
            "--triplets", "2", "--size", "32", "--workers", "1", "--quiet"]
    assert data_main(args) == 0
    capsys.readouterr()
    path = tmpfs_root.dataset_store("synthetic")
    before = tree_bytes(path)
    from cache.dataset_store import SplitWriter

    original, calls = SplitWriter.write, []

    def fills_the_disk_at_the_second(self, start, arrays):
        calls.append(start)
        if len(calls) == 2:
            fill(tmpfs_root.root)
        original(self, start, arrays)

    monkeypatch.setattr(SplitWriter, "write", fills_the_disk_at_the_second)
    assert data_main(args) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: disk full while writing dataset store {path} ")
    assert "the previous store (if any) is untouched; free space and rerun the same command" in err
    assert tree_bytes(path) == before and open_dataset("synthetic", root=tmpfs_root).splits
    monkeypatch.setattr(SplitWriter, "write", original)
    (tmpfs_root.root / "filler").unlink()
    assert data_main(args) == 0
    assert tree_bytes(path) == before
    assert not Path(f"{path}.building").exists()
