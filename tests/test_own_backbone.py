"""Your backbone in, three ways: ``hf:`` (transformers), ``py:`` (a factory), entry-point plugins."""

from __future__ import annotations

import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from cache import MidprobeError, open_features
from extract.backbones import build_backbone, get_spec
from extract.cli import main as extract_main
from extract.runner import extract
from tests.conftest import write_tiny_dataset

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "tiny_backbone.py"
PY_MODEL = f"py:{EXAMPLE}:build"


def _offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


@pytest.fixture
def tiny_dinov2(tmp_path, monkeypatch) -> Path:
    """A 2-block Dinov2 with 4 register tokens (8 px patches), random init, with its image processor."""
    transformers = pytest.importorskip("transformers", reason="hf: needs transformers (pip install -e '.[hf]')")
    _offline(monkeypatch)
    cls = getattr(transformers, "Dinov2WithRegistersModel", None)
    config = (transformers.Dinov2WithRegistersConfig(num_register_tokens=4, hidden_size=32, num_hidden_layers=2,
                                                     num_attention_heads=2, intermediate_size=64, patch_size=8,
                                                     image_size=32)
              if cls else transformers.Dinov2Config(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                                    intermediate_size=64, patch_size=8, image_size=32))
    cls = cls or transformers.Dinov2Model
    torch.manual_seed(0)
    path = tmp_path / "tiny-dinov2"
    cls(config).save_pretrained(path)
    transformers.BitImageProcessor(image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3]).save_pretrained(path)
    return path


@pytest.fixture
def tiny_convnext(tmp_path, monkeypatch) -> Path:
    transformers = pytest.importorskip("transformers", reason="hf: needs transformers (pip install -e '.[hf]')")
    _offline(monkeypatch)
    torch.manual_seed(0)
    path = tmp_path / "tiny-convnext"
    transformers.ConvNextModel(transformers.ConvNextConfig(hidden_sizes=[8, 16], depths=[1, 1], num_stages=2)
                               ).save_pretrained(path)
    return path


def _reference(path: Path, x: torch.Tensor):
    import transformers

    model = transformers.AutoModel.from_pretrained(path).eval()
    with torch.inference_mode():
        return model(pixel_values=x, output_hidden_states=True), model.config


# --- hf: ------------------------------------------------------------------------------------------

def test_hf_vit_patch_tokens_equal_transformers_hidden_states(tiny_dinov2):
    name = f"hf:{tiny_dinov2}"
    spec = get_spec(name)
    assert (spec.family, spec.layer_names, spec.strides) == ("vit", ("block0", "block1"), (8, 8))
    assert spec.mean == pytest.approx((0.5, 0.4, 0.3)) and spec.std == pytest.approx((0.2, 0.25, 0.3))
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(1))
    ref, config = _reference(tiny_dinov2, x)
    prefix = 1 + getattr(config, "num_register_tokens", 0)        # CLS and registers dropped from the maps
    backbone = build_backbone(name)
    with torch.inference_mode():
        maps, vector = backbone(x)
    for i, layer in enumerate(("block0", "block1")):
        tokens = ref.hidden_states[i + 1][:, prefix:]                # (2, 4 * 6, 32), raster order
        expected = tokens.transpose(1, 2).reshape(2, 32, 4, 6)
        torch.testing.assert_close(maps[layer], expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vector, ref.last_hidden_state[:, 0], rtol=1e-5, atol=1e-5)   # final-norm CLS
    raw = build_backbone(name, layers=["0"], global_kind="cls-raw-last")
    with torch.inference_mode():
        maps, vector = raw(x)
    assert list(maps) == ["block0"]
    torch.testing.assert_close(vector, ref.hidden_states[1][:, 0], rtol=1e-5, atol=1e-5)


def test_hf_convnet_stages_equal_transformers_hidden_states(tiny_convnext):
    name = f"hf:{tiny_convnext}"
    spec = get_spec(name)
    assert (spec.family, spec.layer_names, spec.strides) == ("hf-cnn", ("stage0", "stage1"), (4, 8))
    assert spec.mean == pytest.approx((0.485, 0.456, 0.406))      # no processor saved: ImageNet's
    x = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(2))
    ref, _ = _reference(tiny_convnext, x)
    with torch.inference_mode():
        maps, vector = build_backbone(name)(x)
    torch.testing.assert_close(maps["stage0"], ref.hidden_states[1], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(maps["stage1"], ref.hidden_states[2], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(vector, ref.pooler_output, rtol=1e-5, atol=1e-5)
    with pytest.raises(MidprobeError, match="has no layer 'stage7'"):
        build_backbone(name, layers=["stage7"])


def test_hf_missing_model_offline_is_one_line(tmp_path, monkeypatch):
    pytest.importorskip("transformers", reason="hf: needs transformers (pip install -e '.[hf]')")
    _offline(monkeypatch)
    with pytest.raises(MidprobeError, match="no such local directory"):
        get_spec(f"hf:{tmp_path}/absent/model")
    with pytest.raises(MidprobeError, match="cannot load the model.*HF_HUB_OFFLINE") as info:
        get_spec("hf:midprobe-test/not-a-cached-model")
    assert "\n" not in str(info.value)


# --- py: ------------------------------------------------------------------------------------------

def test_py_simplest_form_reads_strides_mean_std_and_pools(monkeypatch):
    spec = get_spec(PY_MODEL)
    assert (spec.layer_names, spec.strides, spec.mean, spec.std) == (("s8", "s16"), (8, 16), (0.5,) * 3, (0.25,) * 3)
    backbone = build_backbone(PY_MODEL)
    x = torch.randn(3, 3, 32, 48)
    with torch.inference_mode():
        maps, vector = backbone(x)
        torch.manual_seed(0)                                     # factories are called under seed 0
        sys.path.insert(0, str(EXAMPLE.parent))
        try:
            import tiny_backbone
            own = tiny_backbone.build().eval()(x)
        finally:
            sys.path.remove(str(EXAMPLE.parent))
    assert maps["s8"].shape == (3, 16, 4, 6) and maps["s16"].shape == (3, 32, 2, 3)
    torch.testing.assert_close(maps["s16"], own["s16"])
    torch.testing.assert_close(vector, own["s16"].mean(dim=(2, 3)))
    assert backbone.source_id["file_sha256"] and backbone.weights_id.startswith("sha256-state:")


def test_py_contract_taps_submodules_with_declared_strides_and_own_vector():
    backbone = build_backbone(f"py:{EXAMPLE}:build_tapped", layers=["stem"])
    assert (backbone.spec.layer_names, backbone.spec.strides) == (("stem",), (8,))
    x = torch.randn(2, 3, 32, 32)
    with torch.inference_mode():
        maps, vector = backbone(x)
        stage = backbone.module.model.stage(maps["stem"])
    torch.testing.assert_close(vector, stage.amax(dim=(2, 3)))   # the model's own vector, not a pooled map


BAD_FACTORIES = {
    "tokens": ("return Net(lambda y: {'a': y.flatten(2)})", "map 'a' is (2, 3, 50176)"),
    "stride": ("return Net(lambda y: {'a': y[:, :, :5, :5]})", "its stride does not divide the input"),
    "nan": ("return Net(lambda y: {'a': y[:, :, ::16, ::16] * float('nan')})", "non-finite"),
    "declared": ("return CustomBackbone(Net(lambda y: {'a': y[:, :, ::16, ::16]}), strides={'a': 8})",
                 "declares stride 8"),
    "not_module": ("return 42", "returned int; expected an nn.Module"),
    "raises": ("raise RuntimeError('no GPU here')", "the factory raised RuntimeError: no GPU here"),
}


@pytest.mark.parametrize("case", sorted(BAD_FACTORIES))
def test_bad_factory_fails_in_one_line_before_anything_is_written(case, root, tmp_path, capsys):
    body, message = BAD_FACTORIES[case]
    path = tmp_path / f"bad_{case}.py"
    path.write_text(textwrap.dedent(f"""
        from torch import nn
        from extract.backbones.factory import CustomBackbone

        class Net(nn.Module):
            def __init__(self, fn):
                super().__init__()
                self.fn = fn
            def forward(self, x):
                return self.fn(x)

        def build():
            {body}
        """))
    write_tiny_dataset(root)
    code = extract_main(["--model", f"py:{path}:build", "--dataset", "tiny", "--data", str(root.root), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert err.startswith(f"error: py:{path}:build: ") and message in err
    assert not root.feature_dir("tiny").exists() or not any(root.feature_dir("tiny").iterdir())


def test_py_stride_that_does_not_divide_the_dataset_is_refused_before_writing(root, capsys):
    write_tiny_dataset(root, height=40, width=48)                 # 40 px is not a multiple of 16
    code = extract_main(["--model", PY_MODEL, "--dataset", "tiny", "--data", str(root.root), "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "map 's16' is 2x3 on a 40x48 input: its stride 16 does not divide the input" in err
    assert not list(root.feature_dir("tiny").glob("*.zarr/*/fingerprint*"))


def test_changed_factory_file_never_reuses_stale_features(root, tmp_path):
    write_tiny_dataset(root)
    path = tmp_path / "mine.py"
    path.write_text(EXAMPLE.read_text())
    name = f"py:{path}:build"
    extract(model=name, dataset="tiny", root=root, progress=False)
    extract(model=name, dataset="tiny", root=root, progress=False)          # unchanged: nothing to do
    path.write_text(EXAMPLE.read_text().replace('"s16": self.stage(s8)}', '"s16": 2 * self.stage(s8)}'))
    with pytest.raises(MidprobeError, match="model_source="):
        extract(model=name, dataset="tiny", root=root, progress=False)


def test_route_names_become_single_safe_store_files(root):
    long = "py:/" + "deep/" * 60 + "net.py:build"
    for name in (PY_MODEL, "hf:facebook/dinov2-small", "hf:../models/x", long):
        path = root.feature_store("tiny", name)
        assert path.parent == root.feature_dir("tiny") and "/" not in path.name and ":" not in path.name
        assert len(path.name) <= 210
    assert root.feature_store("tiny", long) != root.feature_store("tiny", long.replace("deep/", "deep_", 1))
    assert root.feature_store("tiny", "timm:vit_small_patch16_224.dino").name == "timm__vit_small_patch16_224.dino.zarr"


# --- plugins --------------------------------------------------------------------------------------

@pytest.fixture
def plugin(tmp_path, monkeypatch) -> str:
    """The example plugin package, "installed" as a dist-info directory on sys.path."""
    site = tmp_path / "site"
    package = Path(__file__).resolve().parents[1] / "examples" / "my_ssl_plugin" / "my_ssl"
    (site / "my_ssl").mkdir(parents=True)
    for file in package.glob("*.py"):
        (site / "my_ssl" / file.name).write_text(file.read_text())
    info = site / "my_ssl-0.1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-ssl\nVersion: 0.1.0\n")
    (info / "entry_points.txt").write_text("[midprobe.backbones]\nmy_ssl_tiny = my_ssl.backbones:build_tiny\n")
    monkeypatch.syspath_prepend(str(site))
    yield "my_ssl_tiny"
    for name in [m for m in sys.modules if m == "my_ssl" or m.startswith("my_ssl.")]:
        del sys.modules[name]


def test_plugin_is_listed_with_its_source_and_extracts(plugin, root, capsys):
    assert extract_main(["--list"]) == 0
    line = next(line for line in capsys.readouterr().out.splitlines() if line.startswith(plugin))
    assert "my_ssl.backbones:build_tiny" in line and "my-ssl 0.1.0" in line
    write_tiny_dataset(root)
    extract(model=plugin, dataset="tiny", root=root, progress=False)
    features = open_features("tiny", plugin, "test", root=root)
    assert features.layers == ["map0", "map1"] and [features.stride(k) for k in features.layers] == [16, 16]
    source = features.fingerprint["model_source"]
    assert source["route"] == "plugin" and source["version"] == "my-ssl 0.1.0" and source["file_sha256"]


# --- end to end: extract -> probe -> report, and DRY=1 --------------------------------------------

def _end_to_end(root, model: str) -> None:
    from probe.cli import main as probe_main
    from probe.report.page import build_report

    if not root.dataset_store("tiny").exists():
        write_tiny_dataset(root)
    assert extract_main(["--model", model, "--dataset", "tiny", "--data", str(root.root), "--quiet"]) == 0
    assert probe_main(["--task", "depth", "--dataset", "tiny", "--model", model, "--head", "ridge",
                       "--data", str(root.root), "--quiet"]) == 0
    page, boards = build_report(root, quiet=True)
    assert model in page.read_text() and any(model in table for table in boards.values())


def test_end_to_end_py_and_plugin(root, plugin, capsys):
    for model in (PY_MODEL, plugin):
        _end_to_end(root, model)
    assert extract_main(["--model", PY_MODEL, "--dataset", "tiny", "--data", str(root.root), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "s8[16, 4, 6], s16[32, 2, 3] + global[32]" in out


def test_end_to_end_hf(root, tiny_dinov2, tiny_convnext):
    for path in (tiny_dinov2, tiny_convnext):
        _end_to_end(root, f"hf:{path}")
    stored = open_features("tiny", f"hf:{tiny_dinov2}", "train", root=root)
    assert stored.fingerprint["model_source"]["config_sha256"] and stored.layers == ["block0", "block1"]
    assert np.isfinite(stored.read("block1", 0, 2).astype(np.float32)).all()


def test_grid_takes_hf_and_py_models_and_sizes_them(tmp_path, tiny_dinov2, capsys):
    from grid.__main__ import main as grid_main
    from grid.spec import load_grid

    smoke = (Path(__file__).resolve().parents[1] / "grids" / "smoke.toml").read_text()
    grid = tmp_path / "own.toml"
    grid.write_text(smoke.replace('models = ["pixels", "vit_b_random"]', f'models = ["hf:{tiny_dinov2}", "{PY_MODEL}"]'))
    assert load_grid(grid).models == (f"hf:{tiny_dinov2}", PY_MODEL)
    assert grid_main([str(grid), "--dry-run", "--data", str(tmp_path / "data")]) == 0
    assert "4 extract" in capsys.readouterr().out
    grid.write_text(smoke.replace('models = ["pixels", "vit_b_random"]', f'models = ["py:{EXAMPLE}:nope"]'))
    with pytest.raises(MidprobeError, match=r"grid\.models: py:.*has no factory 'nope'"):
        load_grid(grid)
