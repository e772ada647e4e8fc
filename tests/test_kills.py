"""Kill anywhere: SIGKILL during dataset preparation, a probe run, the report, and (the slow soak) at 20
random points of an extraction; each rerun ends exactly as an uninterrupted run would."""

from __future__ import annotations

import json
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from cache import MidprobeError, data_root, open_dataset
from cache.verify import verify
from extract.runner import extract
from probe.cli import main as probe_main
from tests.conftest import write_tiny_dataset
from tests.filesystems import tree_bytes

REPO = Path(__file__).resolve().parents[1]
CLI = "import sys; sys.path.insert(0, %r); import tests.conftest; from {} import main; sys.exit(main(sys.argv[1:]))"


def command(module: str, *args: Any) -> list[str]:
    return [sys.executable, "-c", CLI.format(module) % str(REPO), *map(str, args)]


def run(args: list[str]) -> int:
    return subprocess.run(args, cwd=REPO, stdout=subprocess.DEVNULL).returncode


def kill_when(args: list[str], ready: Callable[[], bool], *, delay: float = 0.0, timeout: float = 300,
              env: dict[str, str] | None = None) -> int:
    """Start ``args``, SIGKILL it ``delay`` seconds after ``ready()`` first holds; its exit status."""
    proc = subprocess.Popen(args, cwd=REPO, stdout=subprocess.DEVNULL, env=env)
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        if ready():
            time.sleep(delay)
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.001)
    return proc.wait()


def test_a_killed_dataset_preparation_keeps_the_old_store_and_a_rerun_gives_the_same_bytes(root):
    args = command("extract.datasets.__main__", "--dataset", "synthetic", "--data", root.root, "--train", 16,
                   "--test", 4, "--pairs", 2, "--triplets", 2, "--size", 48, "--workers", 1, "--quiet")
    path = root.dataset_store("synthetic")
    building = Path(f"{path}.building")

    def a_chunk_written() -> bool:
        return (building / "train" / "images" / "c").exists()

    assert kill_when(args, a_chunk_written) == -signal.SIGKILL
    with pytest.raises(MidprobeError, match="is incomplete"):
        open_dataset("synthetic", root=root)
    assert run(args) == 0
    clean = tree_bytes(path)
    assert kill_when(args, a_chunk_written) == -signal.SIGKILL
    assert tree_bytes(path) == clean                      # the previous store, untouched and readable
    assert open_dataset("synthetic", root=root).split("train").read("images").shape == (16, 48, 48, 3)
    assert run(args) == 0
    assert tree_bytes(path) == clean and not building.exists()


def _without_timings(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timings(v) for k, v in value.items() if "seconds" not in k and k != "created"}
    return value


def _records(root) -> dict[str, Any]:
    return {str(p.relative_to(root.root)): _without_timings(json.loads(p.read_text()))
            for p in sorted(root.results().rglob("*.json"))}


def _probe_root(path: Path):
    root = data_root(path)
    write_tiny_dataset(root, splits={"train": 8, "test": 4}, height=32, width=48)
    for model in ("pixels", "hog"):
        extract(model=model, dataset="tiny", root=root, progress=False)
    return root


PROBE = ("--task", "depth", "--dataset", "tiny", "--model", "pixels,hog", "--head", "linear", "--epochs", 12,
         "--depth-bins", "grid",
         "--quiet")


def test_a_killed_probe_run_leaves_whole_records_and_a_rerun_writes_the_same(tmp_path):
    clean = _probe_root(tmp_path / "clean")
    assert probe_main([*map(str, PROBE), "--data", str(clean.root)]) == 0
    expected = _records(clean)
    assert len(expected) == 2
    root = _probe_root(tmp_path / "killed")
    first = root.results("depth", "tiny", "pixels")
    assert kill_when(command("probe.cli", *PROBE, "--data", root.root),
                     lambda: first.exists() and any(first.rglob("*.json"))) == -signal.SIGKILL
    written = _records(root)                  # every record present parses whole: no half-written file
    assert len(written) == 1 and "/pixels/" in next(iter(written))      # killed while probing hog
    assert written == {k: expected[k] for k in written}
    assert not list(root.results().rglob("*.tmp"))
    assert run(command("probe.cli", *PROBE, "--data", root.root)) == 0
    assert _records(root) == expected


def _report_files(folder: Path) -> dict[str, Any]:
    """Every file of the report (staging folders aside), each read whole: PNGs decoded, text as text."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and ".staging-" not in str(p)):
        if path.suffix == ".png":
            with Image.open(path) as image:
                image.load()
            out[str(path.relative_to(folder))] = path.read_bytes()
        else:
            text = path.read_text()
            # the build time (report.md's "Built …" line, report.html's "<p>Built …") differs between runs
            out[str(path.relative_to(folder))] = "\n".join(l for l in text.splitlines()
                                                           if not l.removeprefix("<p>").startswith("Built "))
    return out


def test_a_killed_report_leaves_no_half_written_file_and_a_rerun_writes_the_same(tmp_path):
    root = _probe_root(tmp_path / "data")
    assert probe_main([*map(str, PROBE), "--data", str(root.root)]) == 0
    reports = root.reports()
    args = command("probe.report.__main__", "--data", root.root, "--quiet")

    def staged_a_table() -> bool:
        return any(reports.glob(".staging-*/leaderboard_*.csv"))

    assert kill_when(args, staged_a_table) == -signal.SIGKILL
    assert "report.md" not in _report_files(reports)      # nothing half-built is presented as the report
    assert run(args) == 0
    clean = _report_files(reports)
    assert "report.md" in clean and not list(reports.glob(".staging-*"))
    assert kill_when(args, staged_a_table) == -signal.SIGKILL
    assert _report_files(reports) == clean                # the previous report, whole
    assert run(args) == 0
    assert _report_files(reports) == clean and not list(reports.glob(".staging-*"))


KILLS = 20


@pytest.mark.slow
def test_soak_20_random_kills_during_extraction_all_end_byte_identical(tmp_path):
    """SIGKILL an extraction at a random moment between its first write and its end, rerun it, compare."""
    base = data_root(tmp_path / "base")
    write_tiny_dataset(base, splits={"train": 40, "test": 8}, height=32, width=32)
    args = ["--model", "test_vit_tiny", "--dataset", "tiny", "--chunk-images", "1", "--batch-size", "1", "--quiet"]

    def fresh(name: str):
        root = data_root(tmp_path / name)
        shutil.copytree(base.root, root.root)
        return root, root.feature_store("tiny", "test_vit_tiny")

    root, store = fresh("clean")
    proc = subprocess.Popen(command("extract.cli", *args, "--data", root.root), cwd=REPO)
    while not (store / "zarr.json").exists() and proc.poll() is None:
        time.sleep(0.001)
    started = time.monotonic()
    assert proc.wait() == 0
    window = time.monotonic() - started                    # from the first write to the end
    clean = tree_bytes(store)
    rng = random.Random(20)
    survived, failures, trial = 0, [], 0
    while trial < KILLS:
        root, store = fresh(f"trial{trial}")
        status = kill_when(command("extract.cli", *args, "--data", root.root), lambda: store.exists(),
                           delay=rng.uniform(0, window))
        if status != -signal.SIGKILL:          # it finished first (a faster run than the clean one): draw again
            assert status == 0
            shutil.rmtree(root.root)
            continue
        resumed = extract(model="test_vit_tiny", dataset="tiny", root=root, chunk_images=1, batch_size=1,
                          progress=False)              # the same command, in this process (no second start-up)
        problems = [p.line(root.root) for p in verify(root).problems]
        after = tree_bytes(store)
        differ = sorted(k for k in set(after) | set(clean) if after.get(k) != clean.get(k))
        if all(r.complete for r in resumed) and not differ and not problems:
            survived += 1
        else:
            failures.append(f"trial {trial}: complete={[r.complete for r in resumed]}, problems={problems}, "
                            f"files that differ={differ}")
        shutil.rmtree(root.root)
        trial += 1
    print(f"\nsoak: kills survived {survived} / {KILLS} (kill window {window:.2f} s)", *failures, sep="\n")
    assert survived == KILLS, failures
