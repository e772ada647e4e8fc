import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import timm
import torch

from cache import MidprobeError, open_dataset, open_features
from extract.backbones import build_backbone, get_spec
from extract.cli import main as extract_main
from extract.runner import extract, to_input
from tests.conftest import TINY_VIT, write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]


def tree_bytes(path: Path) -> dict[str, str]:
    """sha256 of every file under a store, by relative path."""
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _tiny_vit_reference(images: np.ndarray) -> tuple[list[np.ndarray], np.ndarray]:
    torch.manual_seed(0)
    model = timm.create_model("vit_base_patch16_224", pretrained=False, num_classes=0, depth=2, embed_dim=32,
                              num_heads=2, dynamic_img_size=True, dynamic_img_pad=True).eval()
    x = to_input(images, TINY_VIT.mean, TINY_VIT.std, torch.device("cpu"))
    with torch.inference_mode():
        final, inter = model.forward_intermediates(x, indices=[0, 1], norm=False, output_fmt="NCHW",
                                                   intermediates_only=False)
        pooled = model.forward_head(final, pre_logits=True)
    return [t.numpy() for t in inter], pooled.numpy()


def test_store_equals_timm_forward_intermediates_at_native_size(root):
    write_tiny_dataset(root, splits={"train": 5}, height=64, width=96)
    extract(model="test_vit_tiny", dataset="tiny", root=root, batch_size=2, progress=False)
    split = open_features("tiny", "test_vit_tiny", "train", root=root)
    images = open_dataset("tiny", root=root).split("train").read("images")
    maps, pooled = _tiny_vit_reference(images)
    assert split.layers == ["block0", "block1"]
    for name, ref in zip(split.layers, maps):
        stored = split.array(name)[...].astype(np.float32)
        assert stored.shape == (5, 32, 4, 6)          # 64 x 96 at stride 16: never squashed to 224
        np.testing.assert_allclose(stored, ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    np.testing.assert_allclose(split.global_vectors(), pooled, rtol=2e-3, atol=2e-3 * np.abs(pooled).max())
    fp = split.fingerprint
    assert fp["weights"] == "random:0" and fp["input_size"] == [64, 96] and fp["timm_version"] == timm.__version__
    assert fp["dataset_fingerprint"] == open_dataset("tiny", root=root).fingerprint


def test_resnet_stages_and_layer_selection(root):
    write_tiny_dataset(root, splits={"train": 2}, height=64, width=64)
    extract(model="test_resnet_tiny", dataset="tiny", root=root, progress=False)
    split = open_features("tiny", "test_resnet_tiny", "train", root=root)
    assert [split.shape(l) for l in split.layers] == [(64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]
    assert [split.stride(l) for l in split.layers] == [4, 8, 16, 32]
    extract(model="test_vit_tiny", dataset="tiny", root=root, layers=["block1"], progress=False)
    assert open_features("tiny", "test_vit_tiny", "train", root=root).layers == ["block1"]


def test_pixels_are_the_normalised_patches(root):
    write_tiny_dataset(root, splits={"train": 2}, height=32, width=48)
    extract(model="pixels", dataset="tiny", root=root, progress=False)
    split = open_features("tiny", "pixels", "train", root=root)
    images = open_dataset("tiny", root=root).split("train").read("images")
    spec = get_spec("pixels")
    x = (images[1] / 255.0 - np.array(spec.mean)) / np.array(spec.std)          # (H, W, 3)
    patch = x[16:32, 32:48].transpose(2, 0, 1).reshape(-1)                        # row 1, column 2
    np.testing.assert_allclose(split.array("patch")[1, :, 1, 2].astype(np.float32), patch, atol=4e-3)


def test_hog_orientation_of_a_vertical_edge():
    backbone = build_backbone("hog")
    image = torch.zeros(1, 3, 32, 32)
    image[..., 16:] = 1.0                              # a vertical edge: the gradient points along x
    maps, _ = backbone(image)
    patch = maps["patch"]
    assert patch.shape == (1, 108, 2, 2)
    np.testing.assert_allclose(patch.norm(dim=1).numpy(), 1.0, atol=1e-5)
    cells = patch[0, :, 0, 1].view(3, 9, 4)            # (channel, bin, cell) for the patch on the edge
    energy = cells.sum(dim=(0, 2))
    assert int(energy.argmax()) in (0, 8)               # orientation ~0 rad: the first or last bin


def test_unknown_model_suggests_close_names():
    with pytest.raises(MidprobeError, match="did you mean vit_b_mae"):
        build_backbone("vit_b_mea")


def test_weights_file_loads_strictly_and_is_fingerprinted(root, tmp_path):
    from safetensors.torch import save_file

    reference = build_backbone("test_vit_tiny")
    state = {k: v.contiguous() for k, v in reference.module.model.state_dict().items()}
    good = tmp_path / "tiny.safetensors"
    save_file(state, str(good))
    loaded = build_backbone("test_vit_tiny", weights=good)
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(loaded(x)[1], reference(x)[1])
    assert loaded.weights_id.startswith("sha256:")

    broken = dict(state)
    broken.pop("blocks.0.attn.qkv.weight")
    broken["decoder.extra"] = torch.zeros(1)
    save_file(broken, str(tmp_path / "broken.safetensors"))
    with pytest.raises(MidprobeError, match=r"missing keys \[blocks.0.attn.qkv.weight\], unexpected keys \[decoder.extra\]"):
        build_backbone("test_vit_tiny", weights=tmp_path / "broken.safetensors")

    torch.save({"model": state, "args": object()}, tmp_path / "pickle.pth")     # other pickled objects: inert data
    torch.testing.assert_close(build_backbone("test_vit_tiny", weights=tmp_path / "pickle.pth")(x)[1], reference(x)[1])
    torch.save({"model": {**state, "norm.weight": object()}}, tmp_path / "pickle.pth")
    with pytest.raises(MidprobeError, match="'norm.weight' is a pickled builtins.object object"):
        build_backbone("test_vit_tiny", weights=tmp_path / "pickle.pth")
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "dp.pth")
    torch.testing.assert_close(build_backbone("test_vit_tiny", weights=tmp_path / "dp.pth")(x)[1], reference(x)[1])


def test_interrupted_extraction_resumes_to_identical_bytes(root, monkeypatch):
    write_tiny_dataset(root, splits={"train": 9}, height=32, width=32)
    extract(model="test_vit_tiny", dataset="tiny", root=root, chunk_images=2, progress=False)
    whole = tree_bytes(root.feature_store("tiny", "test_vit_tiny"))

    other = root.root.parent / "other"
    from cache import data_root
    other_root = data_root(other)
    write_tiny_dataset(other_root, splits={"train": 9}, height=32, width=32)
    from cache.feature_writer import FeatureWriter

    original, calls = FeatureWriter.write_chunk, []

    def failing(self, index, layers, vectors):
        calls.append(index)
        if len(calls) == 3:
            raise OSError("disk went away")
        return original(self, index, layers, vectors)

    monkeypatch.setattr(FeatureWriter, "write_chunk", failing)
    with pytest.raises(OSError, match="disk went away"):
        extract(model="test_vit_tiny", dataset="tiny", root=other_root, chunk_images=2, progress=False)
    monkeypatch.setattr(FeatureWriter, "write_chunk", original)
    with pytest.raises(MidprobeError, match="incomplete"):
        open_features("tiny", "test_vit_tiny", "train", root=other_root)
    reports = extract(model="test_vit_tiny", dataset="tiny", root=other_root, chunk_images=2, progress=False)
    assert reports[0].images_written == 9 - 4           # the two durable chunks were skipped
    assert tree_bytes(other_root.feature_store("tiny", "test_vit_tiny")) == whole


@pytest.mark.timeout(600)      # ~57 s, setup included, on 2 shared cores: headroom over the default 300 s
def test_killed_process_resumes_to_identical_bytes(root):
    write_tiny_dataset(root, splits={"train": 48}, height=32, width=32)
    script = ("import sys; sys.path.insert(0, %r); import tests.conftest; from extract.cli import main; "
              "sys.exit(main(sys.argv[1:]))" % str(REPO))
    args = [sys.executable, "-c", script, "--model", "test_vit_tiny", "--dataset", "tiny", "--data", str(root.root),
            "--chunk-images", "1", "--batch-size", "1", "--quiet"]
    progress = root.feature_store("tiny", "test_vit_tiny").with_suffix(".progress") / "train"
    proc = subprocess.Popen(args, cwd=REPO)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and len(list(progress.iterdir())) >= 3:
            os.kill(proc.pid, signal.SIGKILL)
            break
        time.sleep(0.002)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the extraction finished before it could be killed"
    assert subprocess.run(args, cwd=REPO).returncode == 0
    resumed = tree_bytes(root.feature_store("tiny", "test_vit_tiny"))
    clean = root.root.parent / "clean"
    clean.mkdir()
    from cache import data_root
    clean_root = data_root(clean)
    write_tiny_dataset(clean_root, splits={"train": 48}, height=32, width=32)
    args[args.index("--data") + 1] = str(clean)
    assert subprocess.run(args, cwd=REPO).returncode == 0
    assert tree_bytes(clean_root.feature_store("tiny", "test_vit_tiny")) == resumed


def test_two_shards_make_the_same_store_as_one_run(root, tmp_path):
    from cache import data_root

    write_tiny_dataset(root, splits={"train": 7, "test": 3}, height=32, width=32)
    extract(model="test_vit_tiny", dataset="tiny", root=root, chunk_images=2, progress=False)
    single = tree_bytes(root.feature_store("tiny", "test_vit_tiny"))
    sharded = data_root(tmp_path / "sharded")
    write_tiny_dataset(sharded, splits={"train": 7, "test": 3}, height=32, width=32)
    first = extract(model="test_vit_tiny", dataset="tiny", root=sharded, chunk_images=2, shard=(1, 2), progress=False)
    assert not any(r.complete for r in first)
    with pytest.raises(MidprobeError, match="incomplete"):
        open_features("tiny", "test_vit_tiny", "train", root=sharded)
    second = extract(model="test_vit_tiny", dataset="tiny", root=sharded, chunk_images=2, shard=(0, 2), progress=False)
    assert all(r.complete for r in second)
    assert tree_bytes(sharded.feature_store("tiny", "test_vit_tiny")) == single


def test_not_enough_disk_refuses_before_writing(root, monkeypatch):
    write_tiny_dataset(root, splits={"train": 2})
    monkeypatch.setattr("extract.runner._free_bytes", lambda path: 10)
    with pytest.raises(MidprobeError, match="not enough disk"):
        extract(model="pixels", dataset="tiny", root=root, progress=False)
    assert not root.feature_store("tiny", "pixels").exists()


def test_cli_errors_are_one_line_with_exit_2(root, tmp_path, capsys):
    write_tiny_dataset(root, splits={"train": 2})
    assert extract_main(["--model", "hogg", "--dataset", "tiny", "--data", str(root.root)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: unknown model 'hogg'") and "did you mean hog" in err and "\n" not in err
    assert extract_main(["--model", "hog", "--dataset", "missing", "--data", str(root.root)]) == 2
    assert "no dataset store" in capsys.readouterr().err
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    assert extract_main(["--model", "hog", "--dataset", "tiny", "--data", str(blocker / "data")]) == 2
    assert "error:" in capsys.readouterr().err
    assert extract_main(["--list"]) == 0
    listing = capsys.readouterr().out
    assert "vit_b_mae" in listing and "weight-free" in listing and "cc-by-nc-4.0" in listing


@pytest.mark.timeout(600)      # ~52 s, setup included, on 2 shared cores: headroom over the default 300 s
def test_offline_pretrained_download_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MidprobeError, match="WEIGHTS="):
        build_backbone("vit_b_sup")


def test_unwritable_feature_folder_is_a_one_line_error(root):
    write_tiny_dataset(root, splits={"train": 2})
    (root.root / "stores" / "features").write_text("not a folder")
    with pytest.raises(MidprobeError, match="data root is not writable"):
        extract(model="pixels", dataset="tiny", root=root, progress=False)


def test_list_says_whether_pretrained_weights_are_cached(monkeypatch):
    import huggingface_hub

    from extract.backbones import weights_available

    assert weights_available(get_spec("hog")) == "weight-free"
    assert weights_available(get_spec("vit_b_random")) == "random init"
    asked = []
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache",
                        lambda repo, filename: asked.append(repo) or "/cache/model.safetensors")
    assert weights_available(get_spec("vit_b_sup")) == "cached"
    assert asked == ["timm/vit_base_patch16_224.augreg_in1k"]
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, filename: None)
    assert weights_available(get_spec("vit_b_sup")) == "not downloaded"


def test_any_timm_model_by_name_with_a_local_weights_file(root, tmp_path):
    from safetensors.torch import save_file

    model = timm.create_model("resnet18", pretrained=False, num_classes=0)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "r18.safetensors"))
    write_tiny_dataset(root, splits={"train": 2}, height=64, width=64)
    extract(model="timm:resnet18", dataset="tiny", root=root, weights=str(tmp_path / "r18.safetensors"),
            progress=False)
    split = open_features("tiny", "timm:resnet18", "train", root=root)
    assert split.layers == ["res2", "res3", "res4", "res5"]
    assert split.fingerprint["weights"].startswith("sha256:")
    images = open_dataset("tiny", root=root).split("train").read("images")
    x = to_input(images, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), torch.device("cpu"))
    with torch.inference_mode():
        ref = model.eval().forward_intermediates(x, indices=[4], intermediates_only=True)[0].numpy()
    np.testing.assert_allclose(split.array("res5")[...].astype(np.float32), ref, rtol=2e-3, atol=2e-3 * np.abs(ref).max())
    with pytest.raises(MidprobeError, match="timm has no model 'resnet5000'"):
        build_backbone("timm:resnet5000")


def test_hog_is_float32_under_the_gpu_extractors_bf16_autocast():
    # extraction on a GPU runs under bf16 autocast; the weight-free HOG must not change with it
    hog = build_backbone("hog")
    x = torch.linspace(-2, 2, 2 * 3 * 32 * 32).reshape(2, 3, 32, 32)
    with torch.inference_mode():
        plain, _ = hog(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            mixed, _ = hog(x)
    assert mixed["patch"].dtype == torch.float32
    torch.testing.assert_close(mixed["patch"], plain["patch"], rtol=0, atol=0)
