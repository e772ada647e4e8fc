"""``--log tensorboard``: each probe's loss curve and final metrics as TensorBoard events, read back."""

import sys

import numpy as np
import pytest

from probe.cli import main as probe_main
from probe.records import load_records
from tests.test_cli import PROBE_ARGS, write_tiny_probe_store

#: two learning rates: two probes trained in one sweep, each with its own log
LOGGED = [("0.01,0.1" if a == "0.01" else a) for a in PROBE_ARGS] + ["--log", "tensorboard", "--quiet"]


def _events(folder):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'midprobe[tensorboard]')")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0, "tensors": 0})
    accumulator.Reload()
    return accumulator


def test_loss_curves_and_final_metrics_read_back(root):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'midprobe[tensorboard]')")
    write_tiny_probe_store(root)
    assert probe_main([*LOGGED, "--data", str(root.root)]) == 0
    records = {r["probe"]: r for r in load_records(root)}
    assert set(records) == {"linear-f-lr0.01", "linear-f-lr0.1"}
    for probe, record in records.items():
        folder = root.root / "logs" / "tensorboard" / "midprobe" / "segmentation" / "tiny" / "rand" / f"{probe}-seed0"
        events = _events(folder)
        steps = record["training"]["steps"]                      # 6 train images, batch 4, 2 epochs: 4 steps
        loss = events.Scalars("train/loss")
        assert steps == 4 and [e.step for e in loss] == list(range(1, steps + 1))
        # the record's final loss is the mean over the last epoch's steps
        assert np.mean([e.value for e in loss[-2:]]) == pytest.approx(record["training"]["final_train_loss"], rel=1e-6)
        lr = record["config"]["lr"]
        # quarter-cosine warm-up starts at 1 % of the learning rate
        assert events.Scalars("train/lr")[0].value == pytest.approx(0.01 * lr, rel=1e-6)
        [final] = events.Scalars("test/iou")
        assert final.step == steps and final.value == pytest.approx(record["headline"], rel=1e-6)
        assert set(events.Tags()["scalars"]) >= {f"test/{k}" for k, v in record["metrics"].items() if np.isfinite(v)}
    # a rerun replaces the probe's events as it replaces its record
    assert probe_main([*LOGGED, "--data", str(root.root)]) == 0
    folder = root.root / "logs" / "tensorboard" / "midprobe" / "segmentation" / "tiny" / "rand" / "linear-f-lr0.1-seed0"
    assert len(list(folder.glob("events.out.tfevents.*"))) == 1
    assert len(_events(folder).Scalars("train/loss")) == 4


def test_every_seed_and_training_subset_has_its_own_run(root):
    pytest.importorskip("tensorboard", reason="tensorboard is not installed (pip install 'midprobe[tensorboard]')")
    write_tiny_probe_store(root)
    args = [*PROBE_ARGS, "--log", "tensorboard", "--quiet", "--seeds", "0,1", "--train-images", "3,all"]
    assert probe_main([*args, "--data", str(root.root)]) == 0
    records = load_records(root)
    assert sorted((r["probe"], r["seed"]) for r in records) == [
        ("linear-f-lr0.01", 0), ("linear-f-lr0.01", 1), ("linear-f-lr0.01-n3", 0), ("linear-f-lr0.01-n3", 1)]
    base = root.root / "logs" / "tensorboard" / "midprobe" / "segmentation" / "tiny" / "rand"
    for record in records:
        events = _events(base / f"{record['probe']}-seed{record['seed']}")
        steps = record["training"]["steps"]               # 3 images: 1 step an epoch; all 6: 2 steps an epoch
        assert steps == (2 if record["probe"].endswith("-n3") else 4)
        loss = events.Scalars("train/loss")
        assert [e.step for e in loss] == list(range(1, steps + 1))
        # the record's final loss is the mean over the last of the two epochs' steps
        assert np.mean([e.value for e in loss[steps // 2:]]) == pytest.approx(record["training"]["final_train_loss"],
                                                                               rel=1e-6)
        [final] = events.Scalars("test/iou")
        assert final.step == steps and final.value == pytest.approx(record["headline"], rel=1e-6)
    # the two seeds trained differently: their curves differ
    first = [e.value for e in _events(base / "linear-f-lr0.01-seed0").Scalars("train/loss")]
    second = [e.value for e in _events(base / "linear-f-lr0.01-seed1").Scalars("train/loss")]
    assert first != second


def test_without_tensorboard_the_option_is_a_one_line_error(root, capsys, monkeypatch):
    write_tiny_probe_store(root)
    monkeypatch.setitem(sys.modules, "tensorboard", None)          # import tensorboard now fails
    assert probe_main([*LOGGED, "--data", str(root.root)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: --log tensorboard needs the tensorboard package") and "midprobe[tensorboard]" in err
    assert len(err.strip().splitlines()) == 1 and load_records(root) == []
