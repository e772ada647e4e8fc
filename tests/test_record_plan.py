"""Record identity has one source (:func:`probe.plan.plan_records`): for every grid file in
``grids/``, the records the grid expects of each probe task are exactly the records the probes
then write — file names and identifying configuration — for each of the grid's tasks, its
protocol, precision, seeds, layer sets and overrides. The small grids run for real on tiny data;
the paper grid's plan is checked against the runner with training replaced by constants."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import pytest

from cache import data_root
from grid.graph import plan_jobs
from grid.spec import load_grid

REPO = Path(__file__).resolve().parents[1]
TINY = {"train": 8, "test": 4, "pairs": 2, "triplets": 4, "size": 32, "workers": 1, "contact_sheet": False}


def _tiny(spec, **changes):
    """``spec`` on a tiny synthetic set (every other choice of the grid file kept)."""
    datasets = tuple(dataclasses.replace(d, options={**d.options, **TINY}, shards=1) for d in spec.datasets)
    return dataclasses.replace(spec, datasets=datasets, chunk_images=4, batch_size=4, **changes)


def _written(folder: Path) -> set[str]:
    return {p.name for p in folder.glob("*.json")} if folder.is_dir() else set()


def _run_and_compare(spec, root) -> int:
    """Run every job of ``spec`` in this process; each probe task's plan must name exactly the
    records it writes, each of them carrying its planned configuration. Returns the records seen."""
    seen = 0
    for job in plan_jobs(spec, root):
        if job.kind != "probe":
            job.task.run()
            continue
        probe = job.task
        assert not probe.complete(), job.name
        _, planned = probe._plan()
        folder = root.results(probe.settings.task, probe.store, probe.feature_model, probe.protocol)
        before = _written(folder)
        probe.run()
        assert _written(folder) - before == {p.file for p in planned}, job.name
        for record in planned:
            stored = json.loads((folder / record.file).read_text())
            assert (stored["probe"], stored["seed"]) == (record.probe, record.seed)
            assert {k: stored["config"].get(k) for k in record.config} == json.loads(json.dumps(record.config))
        assert probe.complete(), job.name            # the grid sees its own plan done: a rerun skips it
        seen += len(planned)
    return seen


@pytest.mark.parametrize("name, changes", [
    ("smoke", {"seeds": (0, 1)}),
    ("smoke", {"precision": "int8"}),
    ("demo", {}),
])
def test_a_grid_expects_exactly_the_records_its_probes_write(tmp_path, name, changes):
    spec = _tiny(load_grid(REPO / "grids" / f"{name}.toml"), **changes)
    root = data_root(tmp_path / "data")
    seen = _run_and_compare(spec, root)
    tasks = {t for d in spec.datasets for t in d.tasks}
    assert seen >= len(spec.models) * len(tasks) * len(spec.seeds)
