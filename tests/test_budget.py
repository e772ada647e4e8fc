"""A disk budget for the grid: sizes parsed, units cached or streamed in lockstep, lanes under the budget,
and the paper's grid at int8 under 2 TB with every task still planned."""

from __future__ import annotations

from pathlib import Path

import pytest

from cache import MidprobeError
from grid.budget import Unit, lanes, parse_disk, peak_bytes, plan_units
from grid.graph import plan_jobs
from grid.plan import Estimator
from grid.spec import load_grid

REPO = Path(__file__).resolve().parents[1]


def test_disk_sizes_are_decimal_and_bad_ones_are_one_line():
    assert parse_disk("2TB") == 2 * 10**12 and parse_disk("500 GB") == 5 * 10**11 and parse_disk("1.5t") == 1.5e12
    assert parse_disk(1234) == 1234
    for bad in ("two TB", "0", "-1TB", "2 TiB"):
        with pytest.raises(MidprobeError, match="expected a size such as 2TB"):
            parse_disk(bad)


def test_a_grid_file_names_its_budget_and_a_bad_one_points_at_its_line(tmp_path):
    text = (REPO / "grids/smoke.toml").read_text().replace('shards = 2\n', 'shards = 2\ndisk_budget = "3 GB"\n'
                                                            'augmented = "lockstep"\n')
    good = tmp_path / "good.toml"
    good.write_text(text)
    spec = load_grid(good)
    assert (spec.disk_budget, spec.augmented, spec.keep_features) == (3 * 10**9, "lockstep", False)
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('"3 GB"', '"lots"'))
    with pytest.raises(MidprobeError, match=r"bad.toml:\d+: grid.disk_budget: .*expected a size"):
        load_grid(bad)
    bad.write_text(text.replace('"lockstep"', '"streamed"'))
    with pytest.raises(MidprobeError, match=r"grid.augmented: expected 'lockstep' or 'cached'"):
        load_grid(bad)


def _unit(name: str, peak: int) -> Unit:
    return Unit(name, "d", "cached", peak, peak, 0, 0, None, (), 1, 1, 1)


def test_lanes_run_side_by_side_only_as_far_as_the_budget_holds():
    units = [_unit(f"m{i}", p) for i, p in enumerate([50, 40, 30, 20, 10])]
    plan = lanes(units, 100)
    assert peak_bytes(plan) <= 100 and len(plan) == 2
    assert sorted(u.model for lane in plan for u in lane) == [f"m{i}" for i in range(5)]
    assert len(lanes(units, 50)) == 1 and peak_bytes(lanes(units, 50)) == 50
    assert peak_bytes(lanes(units, 50, keep=True), keep=True) == 150


def test_the_paper_grid_at_int8_fits_2tb_with_nyu_in_lockstep_and_every_task_planned(tmp_path):
    from cache import data_root

    root = data_root(tmp_path / "data")
    spec = load_grid(REPO / "grids/paper.toml").with_precision("int8")
    budgeted = spec.with_disk_budget("2TB")
    units = plan_units(Estimator(budgeted, root))
    streamed = [u for u in units if u.mode == "lockstep"]
    assert streamed and {u.store for u in streamed} == {"nyuv2@paper"}
    assert all(u.lockstep_tasks == ("depth", "normals") and 1 <= u.views_on_disk <= 10 for u in streamed)
    assert peak_bytes(lanes(units, budgeted.disk_budget)) <= 2 * 10**12
    assert sum(u.cached_bytes for u in units) > 40 * 10**12        # 47.3 TB cached at once
    forwards = sum(u.forwards for u in units)
    assert sum(u.cached_forwards for u in units) <= forwards < sum(u.paper_forwards for u in units)
    assert len(plan_jobs(budgeted, root)) == len(plan_jobs(spec, root))
    with pytest.raises(MidprobeError, match="even streaming one view at a time"):
        plan_units(Estimator(spec.with_disk_budget("100GB"), root))


def test_a_grid_run_with_a_budget_no_plan_fits_is_a_one_line_error_before_any_cluster_starts(tmp_path, capsys):
    from grid.__main__ import main

    assert main([str(REPO / "grids/smoke.toml"), "--disk-budget", "1KB", "--data", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: disk budget 1.0 kB: pixels on synthetic needs") and err.count("\n") == 1
    assert "has no augmented views to stream" in err
