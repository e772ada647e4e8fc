"""Extraction choices of the paper's code: the global vector's kind, MAE's sin-cos table, HF's LayerNorm eps."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import numpy as np
import pytest
import torch
from torch import nn

from cache import MidprobeError
from extract.backbones import build_backbone, get_spec
from extract.backbones.download import verify
from extract.backbones.spec import BackboneSpec
from extract.backbones.timm_models import create_timm_model, sincos_table

VIT12 = BackboneSpec(name="test_vit12", arch="vit_base_patch16_224", family="vit", method="test",
                     source="timm vit_base_patch16_224, 12 blocks x 32 dims", weights="random:0",
                     layers=(2, 5, 8, 11), layer_names=("block2", "block5", "block8", "block11"), strides=(16,) * 4,
                     model_kwargs={"depth": 12, "embed_dim": 32, "num_heads": 2})


def _image(size: int = 48) -> torch.Tensor:
    """An unnormalised [0, 1] image (the paper feeds NIGHTS images without mean/std)."""
    return torch.linspace(0, 1, 3 * size * size).reshape(1, 3, size, size) ** 2


def _tokens_by_hand(model: nn.Module, x: torch.Tensor, last_block: int) -> torch.Tensor:
    """Run timm's ViT block by block up to ``last_block``: ``(B, 1 + h w, C)`` before any final norm."""
    tokens = model._pos_embed(model.patch_embed(x))
    for block in model.blocks[:last_block + 1]:
        tokens = block(tokens)
    return tokens


@pytest.mark.parametrize("layers, last", [((2, 5, 8, 11), 11), ((1, 4, 7, 10), 10)])
def test_cls_raw_last_is_the_last_tapped_blocks_cls_before_the_final_norm(layers, last):
    spec = VIT12.with_layers(layers)
    raw = build_backbone(spec.name, spec=spec, global_kind="cls-raw-last")
    assert raw.spec.global_kind == "cls-raw-last"
    model = raw.module.model
    x = _image()
    with torch.inference_mode():
        maps, vector = raw(x)
        tokens = _tokens_by_hand(model, x, last)
        torch.testing.assert_close(vector, tokens[:, 0], rtol=1e-5, atol=1e-6)
        # the paper's vector is not timm's default, the CLS after the final LayerNorm
        default = build_backbone(spec.name, spec=spec)(x)[1]
        final = _tokens_by_hand(model, x, 11)
        torch.testing.assert_close(default, model.norm(final)[:, 0], rtol=1e-5, atol=1e-6)
        assert not torch.allclose(vector, default, atol=1e-3)
        normed = build_backbone(spec.name, spec=spec, global_kind="cls-final-norm")(x)[1]
        torch.testing.assert_close(normed, default, rtol=0, atol=0)
        gap = build_backbone(spec.name, spec=spec, global_kind="gap")(x)[1]
        torch.testing.assert_close(gap, tokens[:, 1:].mean(dim=1), rtol=1e-5, atol=1e-6)
    assert list(maps) == list(spec.layer_names)         # the dense maps do not change


def test_global_kinds_per_family_and_bad_kinds_are_one_line_errors():
    x = torch.rand(1, 3, 64, 64)
    with torch.inference_mode():
        default = build_backbone("test_resnet_tiny")(x)
        gap = build_backbone("test_resnet_tiny", global_kind="gap")(x)
    torch.testing.assert_close(gap[1], default[0]["res5"].mean(dim=(2, 3)), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gap[1], default[1], rtol=1e-5, atol=1e-6)     # a ResNet's default is that GAP
    with pytest.raises(MidprobeError, match=r"global vector 'cls-raw-last' does not apply to test_resnet_tiny "
                                            r"\(resnet\); expected one of default, gap"):
        build_backbone("test_resnet_tiny", global_kind="cls-raw-last")
    with pytest.raises(MidprobeError, match="global vector 'gap' does not apply to pixels"):
        build_backbone("pixels", global_kind="gap")
    with pytest.raises(MidprobeError, match="global vector 'cls' does not apply to test_vit_tiny"):
        build_backbone("test_vit_tiny", global_kind="cls")


def _sincos_by_hand(dim: int, height: int, width: int) -> np.ndarray:
    """The table written out token by token: [sin(j w), cos(j w), sin(i w), cos(i w)], w = 10000^(-k / (dim/4))."""
    q = dim // 4
    table = np.zeros((1 + height * width, dim))
    for i in range(height):
        for j in range(width):
            for k in range(q):
                w = 10000.0 ** (-k / q)
                table[1 + i * width + j, [k, q + k, 2 * q + k, 3 * q + k]] = (
                    np.sin(j * w), np.cos(j * w), np.sin(i * w), np.cos(i * w))
    return table


def test_sincos_rebuilds_the_exact_table_for_any_grid_and_keeps_the_checkpoints_on_its_own():
    np.testing.assert_allclose(sincos_table(32, 30, 30), _sincos_by_hand(32, 30, 30), rtol=0, atol=1e-12)
    np.testing.assert_allclose(sincos_table(32, 3, 5), _sincos_by_hand(32, 3, 5), rtol=0, atol=1e-12)
    spec = replace(get_spec("test_vit_tiny"), pos_embed="sincos")
    model = create_timm_model(spec, pretrained=False).eval()
    checkpoint = torch.from_numpy(_sincos_by_hand(32, 14, 14)).float()[None]    # MAE's stored table is sin-cos
    model.pos_embed.data.copy_(checkpoint)
    with torch.inference_mode():
        for grid in ((30, 30), (14, 14), (20, 12)):
            patches = torch.randn(2, *grid, 32)
            out = model._pos_embed(patches)
            table = torch.from_numpy(_sincos_by_hand(32, *grid)).float()
            expected = torch.cat([model.cls_token.expand(2, -1, -1), patches.reshape(2, -1, 32)], dim=1) + table
            torch.testing.assert_close(out, expected, rtol=0, atol=1e-5)
        # on the checkpoint's own 14 x 14 grid the stored table is used as stored (the paper's forward, mae.py:197)
        model.pos_embed.data.normal_()
        patches = torch.randn(1, 14, 14, 32)
        expected = torch.cat([model.cls_token, patches.reshape(1, -1, 32)], dim=1) + model.pos_embed
        torch.testing.assert_close(model._pos_embed(patches), expected, rtol=0, atol=0)
        # timm's default stretches the stored table instead: another table at 30 x 30
        plain = create_timm_model(get_spec("test_vit_tiny"), pretrained=False).eval()
        plain.pos_embed.data.copy_(checkpoint)
        patches = torch.randn(1, 30, 30, 32)
        assert not torch.allclose(plain._pos_embed(patches), model._pos_embed(patches), atol=1e-3)
    with pytest.raises(MidprobeError, match="the sin-cos position table applies to a ViT"):
        create_timm_model(replace(get_spec("test_resnet_tiny"), pos_embed="sincos"), pretrained=False)


def test_mae_paper_options_hf_layernorm_eps_and_the_published_md5(tmp_path):
    mae = get_spec("vit_b_mae")
    assert mae.checksum == ("md5", "8cad7c") and mae.pos_embed == "resample" and mae.layer_norm_eps is None
    paper = get_spec("vit_b_mae+paper")
    assert paper.name == "vit_b_mae+hf+paper-layers+sincos" and paper.pos_embed == "sincos"
    assert paper.layer_norm_eps == 1e-12 and paper.checksum is None       # HF publishes no digest
    small = {"depth": 2, "embed_dim": 32, "num_heads": 2}
    hf = create_timm_model(replace(paper, model_kwargs=small), pretrained=False)
    timm_default = create_timm_model(replace(mae, model_kwargs=small), pretrained=False)
    assert {m.eps for m in hf.modules() if isinstance(m, nn.LayerNorm)} == {1e-12}
    assert {m.eps for m in timm_default.modules() if isinstance(m, nn.LayerNorm)} == {1e-6}
    blob = tmp_path / "mae_pretrain_vit_base.pth"
    blob.write_bytes(b"not the published checkpoint")
    with pytest.raises(MidprobeError, match=r"has md5 [0-9a-f]{32}, expected 8cad7c…"):
        verify(blob, mae.checksum)
    verify(blob, ("md5", hashlib.md5(blob.read_bytes()).hexdigest()[:6]))   # a matching prefix passes
