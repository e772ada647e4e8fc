"""Lockstep training on augmented views: the cached path's records, bit for bit; a kill mid-epoch resumes
to the same records; views are dropped as they are read; the background prefetch writes the same bytes."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cache import MidprobeError, data_root
from extract.runner import extract
from extract.views import lockstep_dir, view_chunks
from probe.lockstep import KILL_ENV, run_lockstep
from probe.run import run_task
from protocols import get_protocol, with_augment

REPO = Path(__file__).resolve().parents[1]
MODEL = "test_vit_tiny"
TASKS = ("depth", "normals")
OVERRIDES = {"epochs": 3, "batch_size": 4, "depth_bins": "grid"}
SEEDS = (0, 1)


def _protocol():
    return with_augment(get_protocol("midprobe"), "3")


def _prepared(root) -> None:
    """A 6-train/3-test synthetic set (views of 6 images in chunks of 4: chunks straddle views) and its
    cached test features."""
    from extract.datasets.synthetic import prepare_synthetic

    prepare_synthetic(root=root, train=6, test=3, pairs=2, triplets=2, size=32, seed=5, workers=1, progress=False,
                      contact_sheet=False)
    extract(model=MODEL, dataset="synthetic", protocol=_protocol(), tasks=list(TASKS), splits=["test"],
            root=root, progress=False, chunk_images=4)


def _without_volatile(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_volatile(v) for k, v in value.items()
                if "seconds" not in k and k not in ("created", "versions")}
    return value


def _records(root) -> dict[str, Any]:
    return {str(p.relative_to(root.root)): _without_volatile(json.loads(p.read_text()))
            for p in sorted(root.results().rglob("*.json"))}


def _lockstep(root, **kwargs) -> list:
    return run_lockstep(dataset="synthetic", model=MODEL, tasks=TASKS, protocol=_protocol(), heads=["linear", "mlp"],
                        lrs=[1e-3], overrides=OVERRIDES, seeds=SEEDS, root=root, chunk_images=4, **kwargs)


@pytest.fixture(scope="module")
def cached_records(tmp_path_factory) -> dict[str, Any]:
    """The cached path: every view extracted, then each task probed."""
    root = data_root(tmp_path_factory.mktemp("cached") / "data")
    _prepared(root)
    extract(model=MODEL, dataset="synthetic", protocol=_protocol(), tasks=list(TASKS), splits=["train"], root=root,
            progress=False, chunk_images=4)
    for task in TASKS:
        run_task(task_name=task, dataset="synthetic", models=[MODEL], heads=["linear", "mlp"], lrs=[1e-3],
                 protocol=_protocol(), overrides=OVERRIDES, seeds=list(SEEDS), root=root, quiet=True)
    return _records(root)


def test_view_chunks_cover_each_view_and_share_the_straddling_chunk():
    assert [view_chunks(v, images=6, chunk_images=4) for v in range(3)] == [[0, 1], [1, 2], [3, 4]]
    assert view_chunks(0, images=8, chunk_images=4) == [0, 1]


def test_lockstep_records_equal_the_cached_paths_bit_for_bit(tmp_path, cached_records):
    root = data_root(tmp_path / "data")
    _prepared(root)
    rows = _lockstep(root, overlap=True)                # the background prefetch, checked on a CPU
    assert len(rows) == len(cached_records) == 2 * 2 * len(SEEDS)
    assert _records(root) == cached_records
    assert not lockstep_dir(root, "synthetic", MODEL).exists()          # the workspace goes once the records are in
    assert not (root.feature_store("synthetic", MODEL) / "train@aug3-paper-nyu").exists()


@pytest.mark.parametrize("views_on_disk, peak_chunks, forwards", [(1, 2, 18 + 10), (3, 5, 18)])
def test_lockstep_holds_at_most_the_views_it_may_and_extracts_the_rest_again(tmp_path, monkeypatch, views_on_disk,
                                                                               peak_chunks, forwards):
    from extract import views as views_module

    root = data_root(tmp_path / "data")
    _prepared(root)
    peak, written = [], []
    drop, write = views_module.ViewSource.drop, views_module.ViewSource._write

    def counting_drop(self, view, *, keep=()):
        peak.append(len(list((self.path / self.job.name / "global" / "c").iterdir())))
        return drop(self, view, keep=keep)

    def counting_write(self, chunks):
        before = self.extracted
        write(self, chunks)
        written.append(self.extracted - before)

    monkeypatch.setattr(views_module.ViewSource, "drop", counting_drop)
    monkeypatch.setattr(views_module.ViewSource, "_write", counting_write)
    _lockstep(root, overlap=False, views_on_disk=views_on_disk)
    # 3 views of 6 images in chunks of 4 (5 chunks, two straddling views): the statistics pass runs every
    # view once (18 images), training extracts again only the views it could not keep
    assert max(peak) == peak_chunks
    assert sum(written) == forwards


def test_a_kill_during_an_epoch_resumes_there_with_the_same_records(tmp_path, cached_records):
    root = data_root(tmp_path / "data")
    _prepared(root)
    script = ("import sys; sys.path.insert(0, %r); import tests.conftest, tests.test_lockstep as t; "
              "from cache import data_root; t._lockstep(data_root(%r))") % (str(REPO), str(root.root))
    import torch

    # the killed epoch and the resumed ones must run with this process's threads: an MLP's float sums
    # are bit-identical only at the same thread count
    env = {**__import__("os").environ, KILL_ENV: "1", "OMP_NUM_THREADS": str(torch.get_num_threads())}
    proc = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, stdout=subprocess.DEVNULL)
    assert proc.returncode == -signal.SIGKILL
    state = lockstep_dir(root, "synthetic", MODEL) / "state"
    assert [p.name for p in state.glob("epoch-*.pt")] == ["epoch-0.pt"]      # killed in epoch 1, after epoch 0
    assert not root.results().exists()
    _lockstep(root)
    assert _records(root) == cached_records


def test_lockstep_refuses_what_it_cannot_stream(tmp_path):
    root = data_root(tmp_path / "data")
    _prepared(root)
    with pytest.raises(MidprobeError, match="zero-shot"):
        run_lockstep(dataset="synthetic", model=MODEL, tasks=["similarity"], protocol=_protocol(), root=root)
    with pytest.raises(MidprobeError, match="no augmented views"):
        run_lockstep(dataset="synthetic", model=MODEL, tasks=["depth"], protocol="midprobe", root=root)
    with pytest.raises(MidprobeError, match="ridge"):
        run_lockstep(dataset="synthetic", model=MODEL, tasks=["depth"], protocol=_protocol(), heads=["ridge"],
                     root=root)


def test_the_probe_command_runs_lockstep_and_refuses_what_it_cannot(tmp_path, capsys):
    from probe.cli import main

    root = data_root(tmp_path / "data")
    _prepared(root)
    base = ["--task", "depth,normals", "--dataset", "synthetic", "--augment", "3", "--lockstep", "--data",
            str(root.root), "--quiet"]
    assert main(base) == 2
    assert "needs --model" in capsys.readouterr().err
    assert main([*base, "--model", MODEL, "--train-images", "4"]) == 2
    assert "--train-images applies to the cached path only" in capsys.readouterr().err
    assert main([*base, "--model", MODEL, "--epochs", "1", "--head", "linear", "--batch-size", "4"]) == 0
    assert "depth" in capsys.readouterr().out
    assert len(list(root.results().rglob("*.json"))) == 2


#: random SIGKILLs of the lockstep soak (``make soak``)
SOAK_KILLS = 8


@pytest.mark.slow
def test_soak_random_kills_during_lockstep_all_resume_to_the_cached_records(tmp_path, cached_records):
    """SIGKILL a lockstep run at a random moment (a view half-extracted, a head mid-step, a state being
    saved, records being written), resume it, and compare its records with the cached path's."""
    import os
    import random
    import shutil
    import time

    import torch

    from tests.test_kills import kill_when

    base = data_root(tmp_path / "base")
    _prepared(base)
    script = ("import sys; sys.path.insert(0, %r); import tests.conftest, tests.test_lockstep as t; "
              "from cache import data_root; t._lockstep(data_root(sys.argv[1]))") % str(REPO)
    # the same thread count in the killed run and the resumed one: float sums are bit-identical only then
    env = {**os.environ, "OMP_NUM_THREADS": str(torch.get_num_threads())}
    env.pop(KILL_ENV, None)

    def fresh(name: str):
        root = data_root(tmp_path / name)
        shutil.copytree(base.root, root.root)
        return root, lockstep_dir(root, "synthetic", MODEL)

    root, workspace = fresh("clean")
    proc = subprocess.Popen([sys.executable, "-c", script, str(root.root)], cwd=REPO, env=env,
                            stdout=subprocess.DEVNULL)
    while not workspace.exists() and proc.poll() is None:
        time.sleep(0.001)
    begun = time.monotonic()
    assert proc.wait() == 0
    window = time.monotonic() - begun                   # from the first write into its workspace to the end
    assert _records(root) == cached_records
    rng = random.Random(27)
    survived, failures, trial = 0, [], 0
    while trial < SOAK_KILLS:
        root, workspace = fresh(f"trial{trial}")
        status = kill_when([sys.executable, "-c", script, str(root.root)], workspace.exists,
                           delay=rng.uniform(0, window), env=env)
        if status != -signal.SIGKILL:                   # it finished first: draw again
            assert status == 0
            shutil.rmtree(root.root)
            continue
        _lockstep(root)                                 # the same call, resumed in this process
        if _records(root) == cached_records and not workspace.exists():
            survived += 1
        else:
            failures.append(f"trial {trial}: records differ or the workspace stayed")
        shutil.rmtree(root.root)
        trial += 1
    print(f"\nlockstep soak: kills survived {survived} / {SOAK_KILLS} (kill window {window:.2f} s)", *failures, sep="\n")
    assert survived == SOAK_KILLS, failures
