"""Shared fixtures: a throw-away data root, a tiny synthetic dataset, a tiny ViT spec."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cache import DataRoot, create_dataset_store, data_root
from extract.backbones import register
from extract.backbones.spec import BackboneSpec

TINY_VIT = BackboneSpec(name="test_vit_tiny", arch="vit_base_patch16_224", family="vit", method="test",
                        source="timm vit_base_patch16_224, 2 blocks x 32 dims", weights="random:0",
                        layers=(0, 1), layer_names=("block0", "block1"), strides=(16, 16),
                        model_kwargs={"depth": 2, "embed_dim": 32, "num_heads": 2})
TINY_RESNET = BackboneSpec(name="test_resnet_tiny", arch="resnet18", family="resnet", method="test",
                           source="timm resnet18", weights="random:0", layers=(1, 2, 3, 4),
                           layer_names=("res2", "res3", "res4", "res5"), strides=(4, 8, 16, 32))
register(TINY_VIT)
register(TINY_RESNET)


@pytest.fixture
def root(tmp_path: Path) -> DataRoot:
    return data_root(tmp_path / "data")


@pytest.fixture(scope="session")
def synthetic_root(tmp_path_factory: pytest.TempPathFactory) -> DataRoot:
    """A small synthetic dataset at 64 px, rendered once per test session."""
    from extract.datasets.synthetic import prepare_synthetic

    root = data_root(tmp_path_factory.mktemp("synthetic") / "data")
    prepare_synthetic(root=root, train=24, test=8, pairs=4, triplets=4, size=64, seed=3, workers=1,
                      progress=False, contact_sheet=False)
    return root


def write_tiny_dataset(root: DataRoot, *, name: str = "tiny", splits: dict[str, int] | None = None,
                       height: int = 32, width: int = 48, seed: int = 0) -> Path:
    """A dataset store of random images with depth, normals and foreground targets."""
    rng = np.random.default_rng(seed)
    path = root.dataset_store(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = create_dataset_store(path, name=name, source=f"test:{seed}", attrs={"depth_kind": "metric"})
    fields = {"images": ((height, width, 3), "uint8"), "depth": ((height, width), "float32"),
              "normals": ((height, width, 3), "float32"), "foreground": ((height, width), "uint8")}
    for split, n in (splits or {"train": 6, "test": 3}).items():
        out = writer.split(split, num_images=n, height=height, width=width, fields=fields, chunk_images=4)
        normals = rng.normal(size=(n, height, width, 3)).astype(np.float32)
        normals /= np.linalg.norm(normals, axis=-1, keepdims=True)
        out.append({"images": rng.integers(0, 256, (n, height, width, 3), dtype=np.uint8),
                    "depth": rng.uniform(0.5, 5, (n, height, width)).astype(np.float32),
                    "normals": normals, "foreground": rng.integers(0, 2, (n, height, width), dtype=np.uint8)})
    writer.finish()
    return path


def write_features(root: DataRoot, *, dataset: str, model: str, split: str, maps: dict[str, np.ndarray],
                   strides: dict[str, int], vectors: np.ndarray | None = None, chunk_images: int = 4) -> None:
    """A complete feature store split holding the given ``(N, C, h, w)`` maps (as if extracted)."""
    from cache import open_dataset, open_feature_writer

    store = open_dataset(dataset, root=root)
    n = len(next(iter(maps.values())))
    vectors = vectors if vectors is not None else np.zeros((n, 1), np.float32)
    fingerprint = {"format_version": 1, "model": model, "weights": "test", "timm_version": "-",
                   "layers": list(maps), "input_size": list(store.split(split).image_size), "mean": [0, 0, 0],
                   "std": [1, 1, 1], "feature_norm": False, "dataset": dataset,
                   "dataset_fingerprint": store.fingerprint, "split": split}
    writer = open_feature_writer(root.feature_store(dataset, model), split=split, fingerprint=fingerprint,
                                 num_images=n, layer_shapes={k: v.shape[1:] for k, v in maps.items()},
                                 strides=strides, global_dim=vectors.shape[1], chunk_images=chunk_images)
    for ci in writer.pending():
        lo, hi = writer.chunk_range(ci)
        writer.write_chunk(ci, {k: v[lo:hi] for k, v in maps.items()}, vectors[lo:hi])
    assert writer.finalize()
