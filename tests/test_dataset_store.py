import numpy as np
import pytest

from cache import MidprobeError, create_dataset_store, open_dataset
from tests.conftest import write_tiny_dataset


def test_roundtrip_shapes_and_metadata(root):
    write_tiny_dataset(root, splits={"train": 5, "test": 2}, height=16, width=24)
    store = open_dataset("tiny", root=root)
    assert store.splits == ["test", "train"]
    train = store.split("train")
    assert train.num_images == 5 and train.image_size == (16, 24)
    assert train.array("images").shape == (5, 16, 24, 3) and train.array("images").dtype == np.uint8
    assert train.array("depth").dtype == np.float32
    assert len(store.fingerprint) == 64 and store.attrs["depth_kind"] == "metric"
    assert train.read("depth", np.array([4, 0])).shape == (2, 16, 24)


def test_fingerprint_depends_on_source_and_options(root):
    a = write_tiny_dataset(root, name="a", seed=0)
    b = write_tiny_dataset(root, name="a2", seed=1)
    assert open_dataset(a).fingerprint != open_dataset(b).fingerprint


def test_unfinished_store_is_refused(root):
    path = root.dataset_store("half")
    writer = create_dataset_store(path, name="half", source="x")
    writer.split("train", num_images=2, height=4, width=4, fields={"images": ((4, 4, 3), "uint8")})
    with pytest.raises(MidprobeError, match="incomplete"):
        open_dataset("half", root=root)


def test_missing_store_and_split_and_key_errors(root):
    with pytest.raises(MidprobeError, match="no dataset store"):
        open_dataset("nothing", root=root)
    write_tiny_dataset(root)
    store = open_dataset("tiny", root=root)
    with pytest.raises(MidprobeError, match="no split 'val'"):
        store.split("val")
    with pytest.raises(MidprobeError, match="no array 'pose'"):
        store.split("train").array("pose")


def test_partial_split_is_an_error_at_finish(root):
    writer = create_dataset_store(root.dataset_store("p"), name="p", source="x")
    out = writer.split("train", num_images=3, height=4, width=4, fields={"images": ((4, 4, 3), "uint8")})
    out.append({"images": np.zeros((2, 4, 4, 3), np.uint8)})
    with pytest.raises(MidprobeError, match="2 of 3 images"):
        writer.finish()


def test_a_folder_named_like_the_dataset_does_not_shadow_it(root, tmp_path, monkeypatch):
    write_tiny_dataset(root)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "tiny").mkdir()
    assert open_dataset("tiny", root=root).name == "tiny"
