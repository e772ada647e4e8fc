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


def test_the_paper_grid_plans_the_records_its_probes_write(tmp_path, monkeypatch):
    """grids/paper.toml's protocol (DPT heads, augmented views, the raw CLS token, the paper's model
    variants, ...) and task settings, on the synthetic set (it offers every task) with two tiny
    models, one of them with paper options: its real backbones, weights and datasets cannot run
    here. Training and evaluation are constants; what is checked is naming and configuration."""
    import probe.run
    from extract.backbones import register
    from tests.conftest import TINY_VIT

    register(dataclasses.replace(TINY_VIT, name="test_vit_paper", options={"half": {"mean": (0.5,) * 3}},
                                 paper_options=("half",)))
    monkeypatch.setattr(probe.run, "train_sweep",
                        lambda task, *, configs, **_: ({c: None for c in configs}, {c: {"steps": 0} for c in configs}))
    monkeypatch.setattr(probe.run, "evaluate_heads", lambda task, *, heads, **_: {c: {"constant": 1.0} for c in heads})
    paper = load_grid(REPO / "grids" / "paper.toml")
    tasks = tuple(dict.fromkeys(t for d in paper.datasets for t in d.tasks))
    synthetic = dataclasses.replace(paper.datasets[0], loader="synthetic", tasks=tasks, raw=None)
    spec = _tiny(dataclasses.replace(paper, models=("test_vit_tiny", "test_vit_paper"), datasets=(synthetic,),
                                     device="cpu", probe_device="cpu", weights={}))
    root = data_root(tmp_path / "data")
    assert _run_and_compare(spec, root) == 2 * 5      # one DPT head on all layers per dense task, one per zero-shot
    assert (root.results("depth", "synthetic", "test_vit_paper+half", "paper") / "dpt-block0+block1-lr0.0005-seed0.json"
            ).is_file()


def test_study_options_write_exactly_the_planned_records(synthetic_root, tmp_path):
    """Seeds, nested training subsets, a corrupted test split and the ridge head: the runner's
    records are the plan's, file for file (the grid files name none of these but seeds)."""
    import shutil

    from extract.runner import extract
    from probe.plan import plan_records
    from probe.run import run_task
    from protocols import MIDPROBE

    root = data_root(tmp_path / "data")
    shutil.copytree(synthetic_root.dataset_store("synthetic"), root.dataset_store("synthetic"))
    extract(model="test_vit_tiny", dataset="synthetic", tasks=["segmentation"], root=root, progress=False)
    extract(model="test_vit_tiny", dataset="synthetic", tasks=["segmentation"], root=root, progress=False,
            corruptions="gaussian_noise:2")
    common = {"task_name": "segmentation", "dataset": "synthetic", "models": ["test_vit_tiny"], "root": root,
              "quiet": True, "test_corruptions": "gaussian_noise:2", "overrides": {"epochs": 1, "batch_size": 8}}
    run_task(**common, heads=["linear"], seeds=[0, 1], train_images=[4, None])
    run_task(**common, heads=["ridge"])
    attrs = json.loads((root.dataset_store("synthetic") / "zarr.json").read_text())["attributes"]
    plan = dict(task="segmentation", dense=True, protocol=MIDPROBE, loader="synthetic", dataset_attrs=attrs,
                layer_sets=[["block0", "block1"]], overrides=common["overrides"], corruptions=["gaussian_noise:2"])
    planned = (plan_records(**plan, heads=["linear"], seeds=[0, 1], train_sizes=[4, None])
               + plan_records(**plan, heads=["ridge"]))
    assert len(planned) == 2 * 2 * 2 + 2
    folder = root.results("segmentation", "synthetic", "test_vit_tiny", "midprobe")
    assert _written(folder) == {p.file for p in planned}


def test_a_bidirectional_correspondence_run_is_its_own_record():
    """One-way and bidirectional matching are two experiments: two record files, neither replacing the other."""
    from probe.plan import plan_records
    from protocols import MIDPROBE

    def planned(options):
        return plan_records(task="correspondence", dense=False, protocol=MIDPROBE, loader="synthetic",
                            dataset_attrs={"loader": "synthetic"}, layer_sets=None, options=options,
                            zero_shot_split="pairs")

    one_way, both = planned(None), planned({"bidirectional": True})
    assert [p.probe for p in one_way] == ["correspondence"]
    assert [p.probe for p in both] == ["correspondence-bidirectional"]
    assert one_way[0].file != both[0].file
    assert one_way[0].config["bidirectional"] == "" and both[0].config["bidirectional"] == "mutual"
