"""The fidelity study's statistics and page: paired effects with known intervals, prose generated only
from significant effects, a deterministic page."""

from __future__ import annotations

import json
import math

import pytest

from bench import fidelity
from bench.fidelity_stats import Effect, paired_effect, prose, seed_spread, t975


def test_paired_effect_is_the_t_interval_of_the_per_seed_differences():
    assert t975(2) == pytest.approx(4.3027) and t975(100) == pytest.approx(1.9649, abs=1e-3)
    # differences 10, 15, 20 points: mean 15, sd 5, half-width 4.3027 * 5 / sqrt(3)
    effect = paired_effect([0.5, 0.6, 0.7], [0.4, 0.45, 0.5])
    assert effect.mean == pytest.approx(15.0) and effect.half == pytest.approx(4.3027 * 5 / math.sqrt(3))
    assert effect.significant and effect.cell() == "**+15.0 ± 12.4** ✱"
    # differences 1, -1, 3: mean 1, sd 2 -> half-width 4.97, the interval holds 0
    noisy = paired_effect([0.51, 0.49, 0.53], [0.5, 0.5, 0.5])
    assert noisy.mean == pytest.approx(1.0) and noisy.half == pytest.approx(4.3027 * 2 / math.sqrt(3))
    assert not noisy.significant and noisy.cell() == "+1.0 ± 5.0"
    # pairing matters: a constant shift under large seed-to-seed spread is significant
    assert paired_effect([0.1, 0.5, 0.9], [0.09, 0.49, 0.89]).significant
    assert seed_spread([0.1, 0.5, 0.9]) == pytest.approx(40.0)
    with pytest.raises(ValueError, match="equal, non-empty"):
        paired_effect([0.1], [0.1, 0.2])
    with pytest.raises(ValueError, match="at least 2"):
        t975(0)


def test_exact_zero_shot_differences_are_marked_when_they_show():
    assert paired_effect([0.501], [0.5], exact=True).mean == pytest.approx(0.1)
    assert paired_effect([0.501], [0.5], exact=True).significant
    assert not paired_effect([0.5003], [0.5], exact=True).significant
    assert paired_effect([0.501], [0.5], exact=True).cell() == "**+0.1** ✱"
    assert paired_effect([float("nan")], [0.5], exact=True).cell() == "–"


def test_prose_names_only_the_significant_effects():
    big, small = Effect(5.0, 1.0, 3), Effect(0.5, 2.0, 3)
    text = prose({"a": {"depth": {"m1": big, "m2": Effect(-3.0, 1.0, 3)}, "normals": {"m1": small}},
                  "b": {"depth": {"m1": small, "m2": small}}}, models=("m1", "m2"), unmeasured=("c",))
    assert "- `a` raises depth for m1 (+5.0 points); lowers depth for m2 (-3.0 points)." in text
    assert "normals" not in text
    assert "No significant effect at this size: `b`." in text and "Not measured on the synthetic set: `c`." in text
    every = prose({"a": {"depth": {"m1": big, "m2": Effect(2.0, 1.0, 3)}}}, models=("m1", "m2"))
    assert "raises depth for all 2 models (+2.0 to +5.0 points)" in every
    one = prose({"a": {"segmentation": {"rn50_random": Effect(-10.0, 9.6, 3)}}}, models=("m1", "m2"))
    assert "lowers segmentation for rn50_random (-10.0 points)" in one       # one model ran: named, not "all"


def _results(shift: float) -> dict:
    seeds = [0.30, 0.32, 0.31]
    out = {"midprobe": {t: {m: list(seeds) for m in fidelity.MODELS} for t in fidelity.DENSE}}
    for t in ("correspondence", "similarity"):
        out["midprobe"][t] = {m: [0.2] for m in fidelity.MODELS}
    out["dpt-head"] = {t: {m: [v + shift for v in seeds] for m in (*fidelity.MODELS, fidelity.CNN_MODEL)}
                       for t in fidelity.DENSE}
    return out


def test_the_page_is_generated_deterministically_from_the_results():
    results = _results(0.05)
    first, second = fidelity.page(results), fidelity.page(_results(0.05))
    assert first == second
    import re
    assert not re.search(r"\d{4}-\d\d-\d\d|\d+(\.\d+)? min\b", first)      # no date, no duration
    assert "| `dpt-head` — " in first and "**+5.0 ± 0.0** ✱" in first
    assert f"- `dpt-head` raises depth for all {len(fidelity.MODELS)} models (+5.0 points)" in first
    assert "points behind the other camera" in first                    # the fix both protocols share
    assert "`nyu-geonet`" in first.split("Not measured on the synthetic set:")[1]
    # a deviation measured against its prerequisite says so
    assert "(against `dpt-head`)" in fidelity.page({**results, "dpt-cnn-inplace-relu": results["dpt-head"]})


def test_every_deviation_with_a_prerequisite_is_compared_with_it():
    by_key = {v.key: v for v in fidelity.variants()}
    assert by_key["dpt-cnn-inplace-relu"].reference == "dpt-head"
    assert by_key["correspondence-batchnorm-cls"].reference == "correspondence-batchnorm"
    assert by_key["correspondence-bidirectional-halves"].reference == "correspondence-bidirectional-halves (baseline)"
    assert by_key["segmentation-probability-resize"].reference == "midprobe"
    assert by_key["dpt-cnn-inplace-relu"].models(fidelity.MODELS)[-1] == fidelity.CNN_MODEL
    chosen = {v.key for v in fidelity._chosen(["dpt-cnn-inplace-relu"])}
    assert chosen == {"midprobe", "dpt-head", "dpt-cnn-inplace-relu"}


@pytest.mark.parametrize("argv, message", [
    (["--seeds", "0,1"], "needs at least 3 seeds"),
    (["--seeds", "0,x,2"], "expected comma-separated integers"),
    (["--only", "dpt-heads"], "not a measurable variant"),
])
def test_bad_study_arguments_exit_2_with_one_line(argv, message, tmp_path, capsys):
    assert fidelity.main(["--data", str(tmp_path / "d"), *argv]) == 2
    assert not (tmp_path / "d").exists()                                 # nothing prepared or written
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and len(err.splitlines()) == 1


PAPER_UNIT = '''
import torch
from torch import nn


class ResidualConvUnit(nn.Module):
    """As the issue describes midvision-probe's unit: its ReLU is in place on the CNN path."""

    def __init__(self, features, kernel_size=3, is_transformer=False, inplace_relu=True):
        super().__init__()
        self.is_transformer = is_transformer
        self.conv1 = nn.Conv2d(features, features, kernel_size, padding=kernel_size // 2)
        self.conv2 = nn.Conv2d(features, features, kernel_size, padding=kernel_size // 2)
        self.relu = nn.ReLU(inplace=inplace_relu and not {broken})

    def forward(self, x):
        if self.is_transformer:
            return torch.relu(self.conv2(torch.relu(self.conv1(x)))) + x
        out = self.relu(x)
        out = self.conv2(torch.relu(self.conv1(out)))
        return out + x
'''

PAPER_PROJECT = '''
import torch


def project_3dto2d(xyz, K_mat):
    xyz = K_mat @ xyz.T
    return (xyz[:2] / xyz[2:].clamp(min=1e-9)).T
'''


def _checkout(path, broken):
    for folder in ("evals", "evals/models", "evals/utils"):
        (path / folder).mkdir(parents=True, exist_ok=True)
        (path / folder / "__init__.py").write_text("")
    (path / "evals/models/probes.py").write_text(PAPER_UNIT.replace("{broken}", str(broken)))
    (path / "evals/utils/correspondence.py").write_text(PAPER_PROJECT)
    return path


@pytest.mark.parametrize("broken", [False, True])
def test_parity_runs_the_papers_functions_beside_ours(broken, tmp_path, capsys, monkeypatch):
    import sys

    from bench import parity

    assert parity.main([]) == 0
    assert capsys.readouterr().out.startswith("parity: skipped (no PAPER_CODE")
    code = _checkout(tmp_path / f"mv{int(broken)}", broken)
    monkeypatch.setattr(sys, "path", list(sys.path))
    for name in [m for m in sys.modules if m == "evals" or m.startswith("evals.")]:
        monkeypatch.delitem(sys.modules, name)
    # with its ReLU not in place the stand-in adds the raw x: the CNN check must catch it
    assert parity.main(["--paper-code", str(code)]) == (1 if broken else 0)
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[1].startswith("parity DPT residual unit, ViT path: match")
    assert out[2].startswith("parity project_3dto2d (points behind the camera included): match")
    assert out[0].startswith("parity DPT residual unit, CNN path (inplace_relu=True): "
                             + ("MISMATCH" if broken else "match"))
    assert parity.main(["--paper-code", str(tmp_path / "nothing")]) == 2


def test_the_page_regenerates_from_a_runs_saved_results(tmp_path, capsys):
    results = _results(0.05)
    saved = tmp_path / "fidelity-results.json"
    epochs = {"depth": 10, "normals": 45, "segmentation": 45}
    saved.write_text(json.dumps({"models": list(fidelity.MODELS), "seeds": [0, 1, 2], "epochs": epochs,
                                 "results": results}))
    out = tmp_path / "fidelity.md"
    assert fidelity.main(["--data", str(tmp_path / "data"), "--from-results", str(saved), "--page", str(out),
                          "--quiet"]) == 0
    assert out.read_text() == fidelity.page(results, seeds=(0, 1, 2), epochs=epochs)
    # 64 training images in batches of 32: two steps an epoch
    assert "depth 10 epochs (20 steps), normals 45 epochs (90 steps), segmentation 45 epochs (90 steps)" \
        in " ".join(out.read_text().split())
    saved.write_text("{}")
    capsys.readouterr()
    assert fidelity.main(["--data", str(tmp_path / "data"), "--from-results", str(saved)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --from-results {saved}: expected the fidelity-results.json")
    saved.write_text(json.dumps({"models": list(fidelity.MODELS), "seeds": [0, 1, 2], "epochs": {"depth": 10},
                                 "results": results}))
    assert fidelity.main(["--data", str(tmp_path / "data"), "--from-results", str(saved)]) == 2
    assert capsys.readouterr().err.startswith(f"error: --from-results {saved}: its epochs {{'depth': 10}} are not")
