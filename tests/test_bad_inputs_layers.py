"""The bad-input matrix, layers (issue #30): a layer the model cannot produce, ``LAYERS=`` as grid files
write it, and every suggested extraction command run as suggested."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from extract.cli import main as extract_main
from probe.cli import main as probe_main
from tests.bad_inputs import GOOD, _depth_folder, _folder_data, _run_make, one_line, tiny_features


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_features(tmp_path_factory)


@pytest.fixture
def vit_block0(features, tmp_path) -> Path:
    """The tiny dataset with the tiny ViT's block0 only (its network has block0 and block1)."""
    import tests.conftest  # noqa: F401  (registers test_vit_tiny)

    root = tmp_path / "data"
    shutil.copytree(features, root)
    assert extract_main(["--model", "test_vit_tiny", "--dataset", "tiny", "--layers", "block0", "--quiet",
                         "--data", str(root)]) == 0
    return root


VIT = ("--task", "depth", "--dataset", "tiny", "--model", "test_vit_tiny", "--epochs", "1", "--quiet")


@pytest.mark.parametrize("model,layer,expect", [
    ("pixels", "block99", "model 'pixels' has one layer, 'patch'; got \\['block99'\\]$"),
    ("test_vit_tiny", "block2", "model 'test_vit_tiny' has no layer block2: its layers are block0 to block1$"),
])
def test_a_layer_the_model_lacks_suggests_no_extraction(model, layer, expect, vit_block0, capsys):
    capsys.readouterr()
    one_line(probe_main([*VIT[:4], "--model", model, *VIT[6:], "--layers", layer, "--data", str(vit_block0)]),
             capsys.readouterr().err, "^error: layers .* are not cached .*; no extraction can add it: " + expect)
    # the extraction indeed refuses it: suggesting it would send the user to a second error
    assert _run_make("extract", f"MODEL={model} DATASET=tiny LAYERS={layer}", vit_block0) == 2


@pytest.mark.parametrize("layers,probe", [("last", "block0"), ("all", "block0"), ("0", "block0")])
def test_layers_last_all_and_indices_read_as_in_grid_files(layers, probe, vit_block0, capsys):
    capsys.readouterr()
    assert probe_main([*VIT, "--layers", layers, "--data", str(vit_block0)]) == 0
    assert f"linear-{probe}-" in capsys.readouterr().out


def test_the_suggested_layer_extraction_works_once_and_again_and_every_probe_then_runs(vit_block0, capsys):
    capsys.readouterr()
    code = probe_main([*VIT, "--layers", "1", "--data", str(vit_block0)])
    err = capsys.readouterr().err
    one_line(code, err, "^error: layers block1 are not cached in split 'train' .*; add them, without rewriting the "
             "others, with `make extract MODEL=test_vit_tiny DATASET=tiny SPLIT=train,test LAYERS=block1`$")
    words = re.search("`make extract (.*)`", err).group(1)
    assert _run_make("extract", words, vit_block0) == 0                  # the suggested command, run
    assert _run_make("extract", words, vit_block0) == 0                  # and again: nothing to do, no error
    assert _run_make("extract", "MODEL=test_vit_tiny DATASET=tiny LAYERS=last", vit_block0) == 0
    for layers in ("1", "block1", "last", None):
        assert probe_main([*VIT, *(["--layers", layers] if layers else []), "--data", str(vit_block0)]) == 0, layers


def test_a_layer_added_to_one_split_leaves_the_default_probe_working(vit_block0, capsys):
    assert _run_make("extract", "MODEL=test_vit_tiny DATASET=tiny SPLIT=train LAYERS=block1", vit_block0) == 0
    capsys.readouterr()
    assert probe_main([*VIT, "--data", str(vit_block0)]) == 0            # on block0, which both splits hold
    assert "linear-block0-" in capsys.readouterr().out
    one_line(probe_main([*VIT, "--layers", "block1", "--data", str(vit_block0)]), capsys.readouterr().err,
             "^error: layers block1 are not cached in split 'test' .*SPLIT=train,test LAYERS=block1`$")


def test_a_missing_augmented_split_suggests_augment_and_the_command_works(tmp_path, capsys):
    root = tmp_path / "data"
    raw = _depth_folder(tmp_path / "mine", [GOOD + 3 - i for i in range(4)])
    assert _folder_data(raw, root, "--size", "32") == 0
    probe = ["--task", "depth", "--dataset", "mine", "--model", "pixels", "--epochs", "1", "--quiet", "--augment", "2"]
    assert extract_main(["--model", "pixels", "--dataset", "mine", "--quiet", "--data", str(root)]) == 0
    capsys.readouterr()
    one_line(probe_main([*probe, "--data", str(root)]), capsys.readouterr().err,
             "^error: feature store of 'pixels' for 'mine' lacks split 'train@aug2-paper-nyu', which protocol "
             "'midprobe\\+aug2-paper-nyu' reads; run `make extract MODEL=pixels DATASET=mine PROTOCOL=midprobe "
             "AUGMENT=2:paper-nyu`$")
    assert _run_make("extract", "MODEL=pixels DATASET=mine PROTOCOL=midprobe AUGMENT=2:paper-nyu", root) == 0
    assert probe_main([*probe, "--data", str(root)]) == 0
