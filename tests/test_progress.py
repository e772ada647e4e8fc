"""Progress of long steps: plain lines with rate and ETA off a terminal, a bar on one, nothing when quiet."""

import io
import re

import pytest

from cache import data_root, open_dataset
from cache.progress import clock_text, progress_bar
from probe.cli import main as probe_main
from probe.records import write_record
from probe.report.page import build_report
from probe.run import run_task
from tests.conftest import write_features
from tests.test_cli import PROBE_ARGS, write_tiny_probe_store


class Clock:
    """A clock the test moves (seconds)."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_give_rate_and_eta_at_most_once_per_interval():
    stream, clock = io.StringIO(), Clock()
    with progress_bar(total=100, name="train", unit="img", stream=stream, interval=10, clock=clock) as bar:
        for now, note in ((5, None), (10, "epoch 1/2"), (15, None), (20, "epoch 2/2")):
            clock.now = now
            bar.update(25, note=note)
    # 50 images in 10 s: 5 img/s, 50 left -> 10 s; the last update (done) leaves it to the closing line
    assert stream.getvalue().splitlines() == ["train: 50/100 img (5.0 img/s, ETA 0:10, epoch 1/2)",
                                              "train: 100 img in 0:20 (5.0 img/s)"]


def test_quiet_prints_nothing_and_a_failed_step_never_reads_as_done():
    stream = io.StringIO()
    with progress_bar(total=3, name="x", stream=stream, quiet=True, interval=0) as bar:
        bar.update(3)
        bar.write("a log line")
    assert stream.getvalue() == ""
    with pytest.raises(RuntimeError, match="disk full"), progress_bar(total=3, name="x", stream=stream, interval=0) as bar:
        bar.update(1)
        raise RuntimeError("disk full")
    assert "x: 1/3" in stream.getvalue() and " in " not in stream.getvalue()


def test_a_terminal_gets_a_bar():
    stream = Terminal()
    with progress_bar(total=4, name="extract", unit="img", stream=stream) as bar:
        bar.update(4, note="epoch 1/1")
    out = stream.getvalue()
    assert "\r" in out and "extract: 100%" in out and "4/4" in out and "epoch 1/1" in out


def test_iterating_counts_items_and_clock_text():
    stream, clock = io.StringIO(), Clock()
    items = []
    for item in progress_bar(["a", "b"], name="pairs", unit="pair", stream=stream, interval=0, clock=clock):
        clock.now += 2
        items.append(item)
    assert items == ["a", "b"]
    assert stream.getvalue().splitlines() == ["pairs: 1/2 pair (0.5 pair/s, ETA 0:02)",
                                              "pairs: 2 pair in 0:04 (0.5 pair/s)"]
    assert (clock_text(59.4), clock_text(61), clock_text(3725), clock_text(float("inf"))) == ("0:59", "1:01",
                                                                                              "1:02:05", "?")


def test_probe_training_and_evaluation_report_progress_and_quiet_silences_them(root, capsys):
    write_tiny_probe_store(root)
    assert probe_main([*PROBE_ARGS, "--data", str(root.root)]) == 0
    err = capsys.readouterr().err
    # 6 train images x 2 epochs, then 3 test images; the epoch lines stay
    assert re.search(r"\[probe\] segmentation/tiny/rand training: 12 img in \d+:\d\d \([\d.]+ img/s\)", err)
    assert re.search(r"\[probe\] segmentation/tiny/rand evaluation: 3 img in ", err)
    assert "epoch 2/2: linear-f-lr0.01 loss" in err
    assert probe_main([*PROBE_ARGS, "--data", str(root.root), "--quiet"]) == 0
    assert capsys.readouterr().err == ""


def test_dataset_preparation_reports_progress(tmp_path, capsys):
    from extract.datasets import prepare

    prepare("synthetic", root=data_root(tmp_path / "data"), train=2, test=1, pairs=1, triplets=1, size=32, workers=1,
            contact_sheet=False, progress=True)
    assert re.search(r"^synthetic: 8 img in \d+:\d\d", capsys.readouterr().err, re.M)


def test_zero_shot_evaluation_reports_progress(synthetic_root, capsys):
    pairs = open_dataset("synthetic", root=synthetic_root).split("pairs")
    maps = {"f": (pairs.read("images").transpose(0, 3, 1, 2)[:, :, ::16, ::16] / 255.0).astype("float32")}
    write_features(synthetic_root, dataset="synthetic", model="rgb16", split="pairs", maps=maps, strides={"f": 16})
    run_task(task_name="correspondence", dataset="synthetic", models=["rgb16"], root=synthetic_root)
    assert re.search(r"\[probe\] correspondence/synthetic/rgb16: 4 pair in ", capsys.readouterr().err)


def test_report_reports_progress(root, capsys):
    for model, value in (("a", 0.2), ("b", 0.4)):
        write_record(root, task="depth", dataset="d", model=model, probe="linear-x-lr0.001", config={"head": "linear"},
                     metrics={"d1": value}, headline="d1", fingerprint={"weights": "w"}, wall_seconds=1.0, seed=0)
    build_report(root, quiet=False)
    # one board with one column: one scatter, the correlations, the ranking
    assert re.search(r"\[report\] figures: 3 fig in ", capsys.readouterr().err)
    build_report(root)
    assert capsys.readouterr().err == ""
