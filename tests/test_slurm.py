"""CLUSTER=slurm on a real one-node SLURM (started and stopped by the fixture; skipped with the reason
where it cannot start): grids/smoke.toml gives the local cluster's records, and a worker job
cancelled mid-grid (scancel) is replaced and the grid still finishes with the same records."""

from __future__ import annotations

import io
import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from cache import data_root
from grid.cluster import open_client
from grid.run import run_grid
from grid.spec import load_grid
from tests.slurm_node import start_slurm, stop_slurm

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("slurm")
    started = start_slurm(folder)
    if isinstance(started, str):
        pytest.skip(started)
    env, pids = started
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = env["SLURM_CONF"]
    import dask

    from grid.cluster import machine_cores

    settings = {"jobqueue.slurm.cores": 1, "jobqueue.slurm.memory": "3GB", "jobqueue.slurm.walltime": "00:10:00",
                "jobqueue.slurm.log_directory": str(folder / "jobs"), "jobqueue.slurm.local_directory": str(folder),
                "jobqueue.slurm.job_script_prologue": [
                    # the torch threads of the local cluster's one worker: float sums depend on them
                    "export OMP_NUM_THREADS=1", f"export MIDPROBE_THREADS={machine_cores()}", f"cd {REPO}"]}
    try:
        with dask.config.set(settings):
            yield folder
    finally:
        subprocess.run(["scancel", "--user", "root"], capture_output=True)
        stop_slurm(pids)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def _records(root) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items() if "seconds" not in k and k not in ("created", "versions")}
        return value
    return {str(p.relative_to(root.root)): plain(json.loads(p.read_text()))
            for p in sorted(root.results().rglob("*.json"))}


def _grid(root, cluster: str, **kwargs):
    with open_client(cluster=cluster, jobs=1, workers=1, gpus=False, timeout=90) as client:
        return run_grid(load_grid(REPO / "grids/smoke.toml"), root=root, client=client, out=io.StringIO(), **kwargs)


@pytest.fixture(scope="module")
def local_records(tmp_path_factory):
    root = data_root(tmp_path_factory.mktemp("local") / "data")
    assert _grid(root, "local").ok
    return _records(root)


def test_the_smoke_grid_on_slurm_gives_the_local_clusters_records(slurm, tmp_path, local_records):
    root = data_root(tmp_path / "data")
    assert _grid(root, "slurm").ok
    assert _records(root) == local_records and len(local_records) > 4


def test_a_cancelled_worker_job_is_replaced_and_the_grid_finishes_with_the_same_records(slurm, tmp_path,
                                                                                     local_records):
    root = data_root(tmp_path / "data")
    cancelled: list[str] = []

    def cancel_once_extracting() -> None:
        deadline = time.monotonic() + 120
        logs = root.root / "logs" / "grid"
        while time.monotonic() < deadline:
            if logs.exists() and any(p.name.startswith("extract") for p in logs.iterdir()):
                jobs = subprocess.run(["squeue", "-h", "-t", "R", "-o", "%i"], capture_output=True,
                                      text=True).stdout.split()
                if jobs:
                    subprocess.run(["scancel", jobs[0]], check=True)
                    cancelled.append(jobs[0])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=cancel_once_extracting, daemon=True)
    killer.start()
    summary = _grid(root, "slurm")
    killer.join()
    assert cancelled, "no worker job was running while the grid extracted"
    assert summary.ok
    assert _records(root) == local_records
