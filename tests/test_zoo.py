"""The 22-model zoo: each source's checkpoint layout loads strictly into timm and gives timm's features."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import timm
import torch

from cache import MidprobeError, open_features
from extract.runner import extract
from extract.backbones import BACKBONES, build_backbone, get_spec
from extract.backbones.timm_models import TimmBackbone, create_timm_model
from tests import checkpoint_formats as fmt
from tests.conftest import write_tiny_dataset

WRITERS = {
    "rn50_jigsaw": fmt.vissl, "rn50_rotnet": fmt.vissl, "rn50_npidpp": fmt.vissl, "rn50_pirl": fmt.vissl,
    "rn50_clusterfit": fmt.vissl, "rn50_simclr": fmt.vissl, "rn50_npid": fmt.vissl_converted,
    "rn50_selav2": fmt.swav, "rn50_deepclusterv2": fmt.swav, "rn50_swav": fmt.swav, "rn50_mocov2": fmt.moco_v2,
    "rn50_simsiam": fmt.mmselfsup_resnet, "rn50_barlowtwins": fmt.mmselfsup_resnet, "rn50_byol": fmt.byol,
    "rn50_densecl": fmt.densecl, "rn50_dino": fmt.plain,
    "rn50_mocov3": lambda s, p: fmt.moco_v3(s, p, head="fc"),
    "vit_b_dino": fmt.plain, "vit_b_mocov3": lambda s, p: fmt.moco_v3(s, p, head="head"),
    "vit_b_ibot": fmt.ibot, "vit_b_mae": fmt.mae, "vit_b_maskfeat": fmt.mmselfsup_vit,
}


@pytest.fixture(scope="module")
def reference():
    """Random timm models of the zoo's two architectures (the "published" weights of every fake file)."""
    torch.manual_seed(0)
    models = {"resnet": timm.create_model("resnet50", num_classes=0).eval(),
              "vit": timm.create_model("vit_base_patch16_224", num_classes=0, dynamic_img_size=True,
                                       dynamic_img_pad=True).eval()}
    # BatchNorm statistics away from their init, so a lost buffer changes the features
    for name, buf in models["resnet"].named_buffers():
        if name.endswith("running_var"):
            buf.uniform_(0.5, 2.0)
        elif name.endswith("running_mean"):
            buf.normal_(0.0, 0.1)
    return {k: (m, {n: t.detach().clone() for n, t in m.state_dict().items()}) for k, m in models.items()}


def _features(backbone, family):
    size = 64 if family == "resnet" else 32
    x = torch.linspace(-1, 1, 3 * size * size).reshape(1, 3, size, size)
    with torch.inference_mode():
        return backbone(x)


def _assert_same_features(built, spec, model):
    ours, ours_global = _features(built, spec.family)
    ref, ref_global = _features(TimmBackbone(spec, model).eval(), spec.family)
    assert list(ours) == list(spec.layer_names)
    for name in spec.layer_names:
        torch.testing.assert_close(ours[name], ref[name], rtol=0, atol=0)
    torch.testing.assert_close(ours_global, ref_global, rtol=0, atol=0)


def test_the_zoo_has_the_papers_22_models_and_two_supervised_references():
    ssl = [s for s in BACKBONES.values() if s.weights == "url"]
    assert len(ssl) == 22
    assert sum(s.family == "resnet" for s in ssl) == 17 and sum(s.family == "vit" for s in ssl) == 5
    assert set(WRITERS) == {s.name for s in ssl}
    assert get_spec("vit_b_sup").arch.endswith("in1k") and get_spec("rn50_sup").arch.endswith("in1k")
    for spec in ssl:
        assert spec.url.startswith("https://") and spec.filename and spec.license and spec.checkpoint
        expected = ("block2", "block5", "block8", "block11") if spec.family == "vit" else ("res2", "res3", "res4", "res5")
        assert spec.layer_names == expected


@pytest.mark.parametrize("name", sorted(WRITERS))
def test_published_layout_loads_strictly_and_gives_timms_features(name, reference, tmp_path):
    spec = get_spec(name)
    model, state = reference[spec.family]
    path = tmp_path / spec.filename
    WRITERS[name](state, path)
    built = build_backbone(name, weights=str(path))
    assert built.weights_id == f"sha256:{hashlib.sha256(path.read_bytes()).hexdigest()}"
    _assert_same_features(built, spec, model)


@pytest.mark.parametrize("name", ["rn50_mocov3", "vit_b_mocov3"])
def test_mocov3_loads_the_base_encoder_and_the_papers_momentum_encoder_on_request(name, reference, tmp_path):
    spec = get_spec(name)
    model, state = reference[spec.family]
    path = tmp_path / "moco.pth.tar"
    momentum = fmt.moco_v3(state, path, head="fc" if spec.family == "resnet" else "head")
    _assert_same_features(build_backbone(name, weights=str(path)), spec, model)      # base encoder by default
    paper = get_spec(f"{name}+paper")
    assert paper.name == f"{name}+momentum"
    other = timm.create_model(spec.arch, num_classes=0, **({"dynamic_img_size": True, "dynamic_img_pad": True}
                                                             if spec.family == "vit" else {})).eval()
    other.load_state_dict(momentum)
    _assert_same_features(build_backbone(paper.name, weights=str(path)), paper, other)


def test_mae_paper_options_read_hugging_face_weights_and_blocks_1_4_7_10(reference, tmp_path):
    model, state = reference["vit"]
    path = tmp_path / "pytorch_model.bin"
    fmt.hf_vitmae(state, path)
    spec = get_spec("vit_b_mae+paper")
    assert spec.name == "vit_b_mae+hf+paper-layers+sincos"
    assert spec.layer_names == ("block1", "block4", "block7", "block10")
    same = create_timm_model(spec, pretrained=False).eval()      # HF's LayerNorm eps and the sin-cos table
    same.load_state_dict(state)
    _assert_same_features(build_backbone(spec.name, weights=str(path)), spec, same)
    with pytest.raises(MidprobeError, match="not a MAE checkpoint: no .model."):   # the MAE repo's layout is not HF's
        build_backbone("vit_b_mae", weights=str(path))


def test_dense_cls_concatenates_the_cls_token_to_every_patch(reference, tmp_path):
    model, state = reference["vit"]
    path = tmp_path / "maskfeat.pth"
    fmt.mmselfsup_vit(state, path)
    spec = get_spec("vit_b_maskfeat+dense-cls")
    maps, _ = _features(build_backbone(spec.name, weights=str(path)), "vit")
    plain, _ = _features(TimmBackbone(get_spec("vit_b_maskfeat"), model).eval(), "vit")
    assert maps["block11"].shape == (1, 1536, 2, 2)
    torch.testing.assert_close(maps["block11"][:, :768], plain["block11"], rtol=0, atol=0)
    cls = maps["block11"][:, 768:]
    assert torch.equal(cls, cls[:, :, :1, :1].expand_as(cls))       # one CLS vector at every position


def test_stray_and_missing_keys_are_listed(reference, tmp_path):
    _, state = reference["resnet"]
    path = tmp_path / "moco.pth.tar"
    fmt.moco_v2({**state, "extra.weight": torch.zeros(1)}, path)
    with pytest.raises(MidprobeError, match=r"unexpected keys \[extra.weight\]"):
        build_backbone("rn50_mocov2", weights=str(path))
    fmt.densecl({k: v for k, v in state.items() if not k.startswith("layer4.2.")}, path)
    with pytest.raises(MidprobeError, match=r"missing keys \[layer4.2.bn1.bias"):
        build_backbone("rn50_densecl", weights=str(path))
    torch.save({"state_dict": {"module.encoder_q.conv1.weight": state["conv1.weight"]}}, path)
    with pytest.raises(MidprobeError, match="not a VISSL checkpoint: no 'classy_state_dict'"):
        build_backbone("rn50_simclr", weights=str(path))
    with pytest.raises(MidprobeError, match=r"unexpected keys \[module.encoder_q.conv1.weight\]"):
        build_backbone("rn50_densecl", weights=str(path))


def test_a_download_that_is_an_html_page_is_refused(tmp_path):
    # pickled objects and code in checkpoints: tests/test_safe_unpickle.py
    (tmp_path / "page.pth").write_text("<!DOCTYPE html><html>Google Drive - Virus scan warning</html>")
    with pytest.raises(MidprobeError, match="HTML page"):
        build_backbone("rn50_byol", weights=str(tmp_path / "page.pth"))


def test_download_lands_once_in_the_hub_cache_and_is_checked(reference, tmp_path, monkeypatch):
    _, state = reference["resnet"]
    published = tmp_path / "published" / "swav.pth.tar"
    published.parent.mkdir()
    fmt.swav(state, published)
    digest = hashlib.sha256(published.read_bytes()).hexdigest()
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    spec = replace(get_spec("rn50_swav"), url=published.as_uri(), checksum=("sha256", digest[:8]))
    built = build_backbone("rn50_swav", spec=spec)
    cached = tmp_path / "torch" / "hub" / "checkpoints" / spec.filename
    assert cached.is_file() and built.weights_id == f"sha256:{digest}"
    published.unlink()                                   # the second build reads the cached copy
    build_backbone("rn50_swav", spec=spec)
    with pytest.raises(MidprobeError, match="expected 00000000"):
        build_backbone("rn50_swav", spec=replace(spec, checksum=("sha256", "00000000")))
    cached.unlink()
    with pytest.raises(MidprobeError, match="cannot download .*WEIGHTS="):
        build_backbone("rn50_swav", spec=spec)
    assert not cached.exists()


def test_options_are_checked():
    with pytest.raises(MidprobeError, match="has no option 'momentum'; its options: none"):
        get_spec("rn50_swav+momentum")
    with pytest.raises(MidprobeError, match="its options: paper, momentum, dense-cls"):
        get_spec("vit_b_mocov3+bogus")


def test_zoo_model_extracts_into_a_store_named_by_its_options(root, reference, tmp_path):
    _, state = reference["resnet"]
    path = tmp_path / "r-50-1000ep.pth.tar"
    fmt.moco_v3(state, path, head="fc")
    write_tiny_dataset(root, splits={"train": 2}, height=64, width=64)
    extract(model="rn50_mocov3+paper", dataset="tiny", root=root, weights=str(path), progress=False)
    split = open_features("tiny", "rn50_mocov3+momentum", "train", root=root)
    assert split.fingerprint["model"] == "rn50_mocov3+momentum"
    assert split.layers == ["res2", "res3", "res4", "res5"] and split.shape("res5") == (2048, 2, 2)
