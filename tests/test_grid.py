"""The grid on dask.distributed: the smoke grid gives the records of a hand-written serial run, on a
local cluster, after a worker is killed, on an externally started scheduler and at int8; complete
work is skipped; a failing model is contained; a malformed grid file is a one-line error."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil
import pytest
import torch

from cache import MidprobeError, data_root
from grid.__main__ import main as grid_main
from grid.cluster import local_layout
from grid.run import run_grid
from grid.spec import load_grid

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "grids" / "smoke.toml"
DASK = Path(sys.executable).parent / "dask"
KEPT = ("metrics", "headline", "config", "feature_fingerprint", "probe", "seed", "protocol")


def records(root) -> dict[str, dict]:
    """Every record's numbers and configuration, by path under ``results/`` (wall times left out)."""
    return {str(p.relative_to(root.results())): {k: json.loads(p.read_text())[k] for k in KEPT}
            for p in sorted(root.results().rglob("*.json"))}


def serial_smoke_run(root, precision: str = "fp16") -> None:
    """grids/smoke.toml written out by hand, in this process, one step after another (as ``make
    extract`` and ``make probe`` with ``PRECISION=precision``)."""
    from extract.datasets.synthetic import prepare_synthetic
    from extract.runner import extract
    from probe.run import run_task

    threads = torch.get_num_threads()
    torch.set_num_threads(1)                # as in each worker (MIDPROBE_THREADS=1)
    try:
        prepare_synthetic(root=root, train=16, test=8, pairs=2, triplets=4, size=48, seed=3, workers=1,
                          progress=False, contact_sheet=False)
        small = {"epochs": 2, "batch_size": 8, "eval_batch_size": 8}
        for model, layers in (("pixels", ["patch"]), ("vit_b_random", ["block2", "block5", "block8", "block11"])):
            extract(model=model, dataset="synthetic", tasks=["depth", "segmentation", "similarity"], batch_size=8,
                    chunk_images=4, precision=precision, root=root, progress=False)
            run_task(task_name="depth", dataset="synthetic", models=[model], heads=["linear"], lrs=[1e-3],
                     layer_sets=[layers], overrides={**small, "depth_bins": "grid"}, precision=precision, root=root,
                     quiet=True)
            sets = [layers] + ([layers[-1:]] if len(layers) > 1 else [])
            run_task(task_name="segmentation", dataset="synthetic", models=[model], heads=["linear", "mlp"],
                     layer_sets=sets, overrides=small, precision=precision, root=root, quiet=True)
            run_task(task_name="similarity", dataset="synthetic", models=[model], precision=precision, root=root,
                     quiet=True)
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    root = data_root(tmp_path_factory.mktemp("serial") / "data")
    serial_smoke_run(root)
    return records(root)


def _dask_processes() -> set[int]:
    """This process's children, less multiprocessing's resource tracker (it lives as long as we do)."""
    return {p.pid for p in psutil.Process().children(recursive=True) if _alive(p.pid)
            and "resource_tracker" not in " ".join(p.cmdline())}


def _alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


@pytest.fixture(scope="module")
def client():
    """The grid's local cluster with 2 worker processes x 1 torch thread, closed (no process left)
    after the module."""
    from distributed import Client

    from grid.cluster import local_cluster

    before, environ = _dask_processes(), dict(os.environ)
    try:
        with local_cluster(workers=2, threads=1, dashboard=None) as cluster, Client(cluster) as c:
            yield c
    finally:
        os.environ.clear()                      # dask's nanny sets its workers' variables here too
        os.environ.update(environ)
    assert _dask_processes() <= before


@pytest.mark.timeout(600)      # ~100 s, setup included, on 2 shared cores: headroom over the default 300 s
def test_local_cluster_matches_a_serial_run_and_resumes_only_what_is_missing(client, reference, tmp_path):
    root = data_root(tmp_path / "data")
    spec = load_grid(SMOKE)
    summary = run_grid(spec, root=root, client=client, out=io.StringIO())
    assert summary.ok and summary.count("done") >= 12           # prepare, 4 shards, 6 probes, the report
    assert records(root) == reference and len(reference) == 10    # pixels 4, vit_b_random 6 (two layer sets)
    assert (root.reports() / "report.md").is_file()
    logs = root.root / "logs" / "grid"
    log = (logs / "probe-depth-synthetic-vit_b_random.log").read_text()     # run_task's own output, routed
    assert "[probe] midprobe: depth/synthetic/vit_b_random/linear-block2+block5+block8+block11-lr0.001" in log
    assert "done in" in log
    assert "0 failed, 0 blocked" in (logs / "summary.txt").read_text()

    stamps = {p: p.stat().st_mtime_ns for p in root.results().rglob("*.json")}
    again = run_grid(spec, root=root, client=client, out=io.StringIO())
    assert again.count("done") == 0 and again.count("skipped") == len(again.outcomes) == 14
    assert {p: p.stat().st_mtime_ns for p in root.results().rglob("*.json")} == stamps

    for path in root.results("segmentation").rglob("*.json"):      # as if killed before these were written
        path.unlink()
    partial = run_grid(spec, root=root, client=client, out=io.StringIO())
    done = sorted(name for name, o in partial.outcomes.items() if o.status == "done")
    assert done == ["probe-segmentation-synthetic-pixels", "probe-segmentation-synthetic-vit_b_random", "report"]
    assert records(root) == reference


def test_an_int8_grid_writes_int8_stores_with_the_records_of_a_serial_int8_run(client, tmp_path, capsys):
    serial = data_root(tmp_path / "serial")
    serial_smoke_run(serial, precision="int8")
    root = data_root(tmp_path / "data")
    assert grid_main([str(SMOKE), "--precision", "int8", "--scheduler", client.scheduler.address,
                      "--data", str(root.root)]) == 0
    out = capsys.readouterr().out
    assert "extract vit_b_random@int8 on synthetic (shard 2/2)" in out and "0 failed, 0 blocked" in out
    written = records(root)
    assert written == records(serial) and len(written) == 10
    assert {r["feature_fingerprint"]["precision"] for r in written.values()} == {"int8"}
    for model in ("pixels", "vit_b_random"):
        assert (root.feature_store("synthetic", model, "int8") / "zarr.json").is_file()
        assert not root.feature_store("synthetic", model).exists()

    # the file's key asks for the same grid: complete at int8, so a rerun runs nothing; at fp16 only
    # the dataset and the report (newer than every record) are complete
    grid = tmp_path / "smoke.toml"
    grid.write_text(SMOKE.read_text().replace('device = "cpu"', 'device = "cpu"\nprecision = "int8"', 1))
    stamps = {p: p.stat().st_mtime_ns for p in root.results().rglob("*.json")}
    again = run_grid(load_grid(grid), root=root, client=client, out=io.StringIO())
    assert again.count("skipped") == len(again.outcomes) == 14
    assert {p: p.stat().st_mtime_ns for p in root.results().rglob("*.json")} == stamps
    assert grid_main([str(grid), "--dry-run", "--data", str(root.root)]) == 0
    assert "(14 already complete)" in capsys.readouterr().out
    assert grid_main([str(grid), "--dry-run", "--precision", "fp16", "--data", str(root.root)]) == 0
    assert "(2 already complete)" in capsys.readouterr().out


def test_make_grid_passes_precision_only_when_given(tmp_path, capsys):
    env = {k: v for k, v in os.environ.items() if k != "PRECISION"}

    def make_grid(*args: str) -> list[str]:
        out = subprocess.run(["make", "-n", "--no-print-directory", "grid", "GRID=grids/smoke.toml", "VENV=/venv",
                              *args], cwd=REPO, env=env, capture_output=True, text=True, check=True).stdout
        return [line for line in out.replace("\\\n", " ").splitlines() if "/venv/bin/midprobe grid" in line]

    import shlex                                           # the recipe quotes every value: its argv, as a shell parses it

    assert "--precision" not in shlex.split(make_grid()[0])     # the grid file decides
    assert shlex.split(make_grid("PRECISION=int8")[0])[-2:] == ["--precision", "int8"]
    assert grid_main([str(SMOKE), "--dry-run", "--precision", "int4", "--data", str(tmp_path / "data")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "error: precision 'int4': expected fp16 or int8"


@pytest.mark.timeout(600)      # ~55 s, setup included, on 2 shared cores: headroom over the default 300 s
def test_a_worker_killed_mid_grid_is_retried_elsewhere(client, reference, tmp_path):
    root = data_root(tmp_path / "data")
    result = {}
    runner = threading.Thread(target=lambda: result.update(
        summary=run_grid(load_grid(SMOKE), root=root, client=client, out=io.StringIO())))
    runner.start()
    killed = None
    deadline = time.monotonic() + 240
    while killed is None and runner.is_alive() and time.monotonic() < deadline:
        busy = [w for w, keys in client.processing().items() if any(str(k).startswith("probe-") for k in keys)]
        if busy:
            pid = client.run(os.getpid, workers=busy[:1])[busy[0]]
            os.kill(pid, signal.SIGKILL)
            killed = pid
        time.sleep(0.01)
    runner.join(timeout=300)
    assert killed is not None, "no probe task was seen running"
    assert not _alive(killed)
    assert result["summary"].ok
    assert records(root) == reference
    client.wait_for_workers(2, timeout=120)     # the nanny restarts the killed worker


def test_a_failing_model_is_named_and_the_other_models_records_are_written(client, tmp_path, capsys):
    grid = tmp_path / "failing.toml"
    text = SMOKE.read_text().replace('"vit_b_random"]', '"rn50_random"]')
    grid.write_text(text + f'\n[weights]\nrn50_random = "{tmp_path / "missing.safetensors"}"\n')
    root = data_root(tmp_path / "data")
    status = grid_main([str(grid), "--scheduler", client.scheduler.address, "--data", str(root.root)])
    out = capsys.readouterr().out
    assert status == 1
    assert "failed  extract rn50_random on synthetic (shard 1/2): weights file" in out and "does not exist" in out
    assert ("blocked probe depth on synthetic with rn50_random: needs extract-synthetic-rn50_random-0of2, "
            "which failed") in out
    written = records(root)
    assert {path.split("/")[2] for path in written} == {"pixels"} and len(written) == 4
    assert (root.reports() / "report.md").is_file()


@pytest.mark.timeout(600)      # ~88 s, setup included, on 2 shared cores: headroom over the default 300 s
def test_an_externally_started_scheduler_runs_the_smoke_grid(reference, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "MIDPROBE_THREADS": "1"}
    address_file = tmp_path / "scheduler.json"
    started = [subprocess.Popen([str(DASK), "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
                                 "--scheduler-file", str(address_file)], env=env, cwd=tmp_path,
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)]
    try:
        deadline = time.monotonic() + 60
        while not address_file.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        address = json.loads(address_file.read_text())["address"]
        started += [subprocess.Popen([str(DASK), "worker", address, "--nthreads", "1", "--no-dashboard",
                                      "--host", "127.0.0.1"], env=env, cwd=tmp_path,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for _ in range(2)]
        root = data_root(tmp_path / "data")
        status = grid_main([str(SMOKE), "--scheduler", address, "--data", str(root.root)])
        assert status == 0
        assert records(root) == reference
    finally:
        family = [c for p in started for c in _children(p.pid)] + [p.pid for p in started]
        for process in reversed(started):
            process.terminate()
            process.wait(timeout=60)
        time.sleep(0.5)
        assert not [pid for pid in family if _alive(pid)]
        assert subprocess.run(["pgrep", "-f", str(address_file)], capture_output=True).stdout == b""


def _children(pid: int) -> list[int]:
    try:
        return [c.pid for c in psutil.Process(pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


@pytest.mark.parametrize("edit, message", [
    (("seeds = [0]", 'seeds = "0"'), r"smoke\.toml:7: grid\.seeds: expected a non-empty list of integers >= 0"),
    (("seeds = [0]", "sedes = [0]"), r"smoke\.toml:7: grid\.sedes: unknown key; expected one of name, protocol"),
    (('"pixels", ', '"pixles", '), r"smoke\.toml:6: grid\.models: unknown model 'pixles'; did you mean pixels"),
    (("epochs = 2, batch_size = 8, depth", "epochs = 0, batch_size = 8, depth"),
     r"smoke\.toml:20: tasks\.depth\.overrides\.epochs: expected a value >= 1, got 0"),
    (("size = 48", "size = 48 seed"), r"smoke\.toml:15: invalid TOML: "),
    (('layers = ["all", "last"]', 'layers = ["all", "block 2"]'),
     r"smoke\.toml:24: tasks\.segmentation\.layers: layer set 'block 2': expected 'all', 'last' or layer names"),
    (("[tasks.depth]", "[tasks.normals]"), r"smoke\.toml:17: tasks\.normals: no dataset lists this task"),
    (('device = "cpu"', 'device = "cpu"\nprecision = "int4"'),
     r"smoke\.toml:9: grid\.precision: expected 'fp16' or 'int8', got 'int4'"),
])
def test_a_malformed_grid_file_is_a_one_line_error_naming_the_key_and_line(tmp_path, capsys, edit, message):
    import re

    text = SMOKE.read_text()
    assert edit[0] in text
    bad = tmp_path / "smoke.toml"
    bad.write_text(text.replace(edit[0], edit[1], 1))
    with pytest.raises(MidprobeError, match=message):
        load_grid(bad)
    assert grid_main([str(bad), "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and re.search(message, err)


def test_dry_run_counts_tasks_and_bytes(tmp_path, capsys):
    assert grid_main([str(SMOKE), "--dry-run", "--data", str(tmp_path / "data")]) == 0
    out = capsys.readouterr().out
    assert "tasks: 1 prepare, 4 extract, 2 finalize, 6 probe, 1 report = 14 (0 already complete)" in out
    assert "extraction: 72 image-forwards" in out and "probes: 184 image-epochs" in out
    assert not (tmp_path / "data").exists()


def test_workers_get_glibc_heap_thresholds_back(monkeypatch):
    from grid.cluster import restore_heap

    monkeypatch.delenv("MALLOC_TRIM_THRESHOLD_", raising=False)
    assert not restore_heap()                   # a process dask did not start: left alone
    monkeypatch.setenv("MALLOC_TRIM_THRESHOLD_", "65536")
    assert restore_heap()                       # dask's nanny sets it for its workers


def test_local_cluster_fits_the_machine():
    assert local_layout(2, 0) == (2, 1)         # this machine: 2 workers x 1 thread
    assert local_layout(16, 0) == (4, 4)
    assert local_layout(16, 2) == (2, 8)        # one worker per GPU, its share of the cores
    assert local_layout(1, 0) == (1, 1)
