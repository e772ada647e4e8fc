"""A real grid run under a disk budget: a unit that does not fit streams its augmented views in
lockstep, to the records of the same grid without a budget; its features are evicted (a line of
the grid's log each) once their probes have records; a rerun re-extracts and writes nothing."""

from __future__ import annotations

import io
import json
import os

import pytest

from cache import data_root
from grid.run import run_grid
from grid.spec import load_grid
from grid.units import evictions

#: vit_b_random's splits (401 kB) do not fit 300 kB, but with one of its 2 views at a time they
#: do (244 kB): it runs in lockstep, then pixels (124 kB) cached, in one lane, each evicted after.
GRID = """\
[grid]
name = "budget"
protocol = "midprobe+aug2-paper-nyu"
models = ["pixels", "vit_b_random"]
seeds = [0]
device = "cpu"
batch_size = 8
chunk_images = 4
report = false
{budget}

[datasets.synthetic]
tasks = ["depth", "similarity"]
options = {{ train = 6, test = 3, pairs = 2, triplets = 2, size = 32, seed = 5, contact_sheet = false }}

[tasks.depth]
heads = ["linear"]
lrs = [1e-3]
overrides = {{ epochs = 2, batch_size = 4, depth_bins = "grid" }}
"""
KEPT = ("metrics", "headline", "config", "feature_fingerprint", "probe", "seed", "protocol")


def _spec(tmp_path, budget: str):
    path = tmp_path / f"grid{abs(hash(budget))}.toml"
    path.write_text(GRID.format(budget=budget))
    return load_grid(path)


def _records(root) -> dict[str, dict]:
    return {str(p.relative_to(root.results())): {k: json.loads(p.read_text())[k] for k in KEPT}
            for p in sorted(root.results().rglob("*.json"))}


def _feature_files(root) -> dict[str, int]:
    return {str(p.relative_to(root.root)): p.stat().st_mtime_ns for p in (root.root / "features").rglob("*")
            if p.is_file() and ".lock" not in p.name}


@pytest.fixture(scope="module")
def client():
    """The grid's local cluster, 2 workers x 1 thread, as tests/test_grid.py starts and stops it."""
    from distributed import Client

    from grid.cluster import local_cluster

    environ = dict(os.environ)
    try:
        with local_cluster(workers=2, threads=1, dashboard=None) as cluster, Client(cluster) as c:
            yield c
    finally:
        os.environ.clear()
        os.environ.update(environ)


@pytest.fixture(scope="module")
def unbudgeted(client, tmp_path_factory):
    """The same grid without a budget: every view cached, nothing evicted."""
    tmp = tmp_path_factory.mktemp("cached")
    root = data_root(tmp / "data")
    assert run_grid(_spec(tmp, ""), root=root, client=client, out=io.StringIO()).ok
    assert (root.feature_store("synthetic", "vit_b_random") / "train@aug2-paper-nyu" / "zarr.json").is_file()
    return _records(root)


@pytest.mark.timeout(600)
def test_a_budgeted_grid_streams_evicts_and_resumes_to_the_records_of_an_unbudgeted_one(client, unbudgeted,
                                                                                         tmp_path):
    root = data_root(tmp_path / "data")
    spec = _spec(tmp_path, 'disk_budget = "300KB"')
    out = io.StringIO()
    summary = run_grid(spec, root=root, client=client, out=out)
    assert summary.ok, out.getvalue()
    assert summary.outcomes["lockstep-depth-synthetic-vit_b_random"].status == "done"
    assert not [name for name in summary.outcomes if name.startswith("probe-depth-synthetic-vit_b_random")]

    # (1) the lockstep unit's records are the cached path's, bit for bit (wall times aside)
    assert _records(root) == unbudgeted and len(unbudgeted) == 4

    # (2) every feature split is gone, each eviction a line of the grid's log; the streamed split was never cached
    for model in ("pixels", "vit_b_random"):
        store = root.feature_store("synthetic", model)
        assert not [p for p in store.iterdir() if (p / "zarr.json").is_file()], model
    lines = evictions(root)
    assert len(lines) == 5 and all("every probe reading it has its record" in line for line in lines)
    assert sum("vit_b_random.zarr/train@aug2" in line for line in lines) == 0
    assert sum("pixels.zarr/train@aug2-paper-nyu" in line for line in lines) == 1
    # one lane: pixels' extraction waited for vit_b_random's eviction
    assert "vit_b_random.zarr/test" in lines[0] and "pixels.zarr" in lines[-1]
    assert not (root.root / "lockstep" / "synthetic" / "vit_b_random" / "features.zarr").exists()

    # (3) a rerun extracts nothing and writes nothing
    stamps = {p: p.stat().st_mtime_ns for p in root.results().rglob("*.json")}
    files = _feature_files(root)
    again = run_grid(spec, root=root, client=client, out=io.StringIO())
    assert again.ok and again.count("done") == 0, again.outcomes
    assert {p: p.stat().st_mtime_ns for p in root.results().rglob("*.json")} == stamps
    assert _feature_files(root) == files and len(evictions(root)) == 5


@pytest.mark.timeout(300)
def test_keep_features_keeps_every_cached_split(client, unbudgeted, tmp_path):
    root = data_root(tmp_path / "data")
    spec = _spec(tmp_path, 'disk_budget = "300KB"\naugmented = "lockstep"\nkeep_features = true')
    assert run_grid(spec, root=root, client=client, out=io.StringIO()).ok
    assert _records(root) == unbudgeted
    assert evictions(root) == []
    for model in ("pixels", "vit_b_random"):
        store = root.feature_store("synthetic", model)
        assert (store / "test" / "zarr.json").is_file()
        assert not (store / "train@aug2-paper-nyu").exists()       # streamed in lockstep, never cached


def test_an_evicted_split_leaves_a_note_its_records_are_checked_against(tmp_path):
    from cache import MidprobeError
    from cache.evict import evict_split, note
    from extract.datasets.synthetic import prepare_synthetic
    from extract.runner import extract
    from grid import state

    root = data_root(tmp_path / "data")
    prepare_synthetic(root=root, train=4, test=2, pairs=2, triplets=2, size=32, seed=1, workers=1, progress=False,
                      contact_sheet=False)
    extract(model="pixels", dataset="synthetic", tasks=["depth"], root=root, progress=False)
    store = root.feature_store("synthetic", "pixels")
    fingerprint = state.feature_fingerprint(root, "synthetic", "pixels", "test")
    assert fingerprint is not None and note(store, "test") is None

    freed = evict_split(store, "test", reason="test")
    assert freed > 0 and not (store / "test").exists()
    assert state.feature_fingerprint(root, "synthetic", "pixels", "test") == fingerprint
    assert state.feature_layers(root, "synthetic", "pixels", "test") == ["patch"]
    assert not state.features_ready(root, "synthetic", "pixels", "test", {})    # gone: a rerun would extract it
    assert evict_split(store, "test", reason="again") == 0

    # a split still being extracted is not evictable
    meta_path = store / "train" / "zarr.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "attributes": {**meta["attributes"], "complete": False}}))
    with pytest.raises(MidprobeError, match="not evictable"):
        evict_split(store, "train", reason="test")
    meta_path.write_text(json.dumps(meta))
    assert evict_split(store, "train", reason="test") > 0
    # a kill after the metadata went leaves chunks nobody can read: the next eviction removes them
    (store / "train").mkdir()
    (store / "train" / "leftover").write_bytes(b"x" * 10)
    assert evict_split(store, "train", reason="test") == 10 and not (store / "train").exists()
