"""The bad-input matrix, continued (issue #30): option values, dataset and grid options, grid files,
the Makefile's quoting, damaged stores and records (Ctrl-C: ``test_interrupts.py``). Every row: one
line starting ``error:``, a non-zero exit, and no store, record or report presented as complete."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest

from extract.cli import main as extract_main
from extract.datasets.__main__ import main as data_main
from grid.__main__ import main as grid_main
from probe.cli import main as probe_main
from tests.bad_inputs import PROBE, _run_make, one_line, tiny_features, unchanged
from tests.test_cli import make_dry_run

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def features(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_features(tmp_path_factory)


OPTION_ROWS = {
    "seed-negative": (("--seed", "-5"), "^error: seed -5: expected an integer >= 0$"),
    "seeds-negative": (("--seeds=-1",), "^error: seed -1: expected an integer >= 0$"),
    "seeds-garbage": (("--seeds", "a"), "^error: seed 'a': expected an integer >= 0$"),
    "device-gpu": (("--device", "gpu"), "^error: unknown device 'gpu'; expected cpu, cuda or cuda:<i>$"),
    "device-mps": (("--device", "mps"), "^error: unknown device 'mps'"),
    "device-meta": (("--device", "meta"), "^error: unknown device 'meta'"),
    "layers-garbage": (("--layers", ";;,,"), "^error: --layers ';;,,' names no layer; expected layer names"),
}


@pytest.mark.parametrize("name", OPTION_ROWS)
def test_a_bad_probe_option_value_is_one_line(name, features, capsys):
    args, expect = OPTION_ROWS[name]
    same = unchanged(features)
    capsys.readouterr()
    one_line(probe_main([*PROBE, *args, "--data", str(features)]), capsys.readouterr().err, expect)
    assert same()


@pytest.mark.parametrize("args,expect", [
    (("--device", "meta"), "^error: unknown device 'meta'"),
    (("--layers", ",,"), "^error: --layers ',,' names no layer"),
    (("--layers", "patch;patch"), "^error: .*';'|patch;patch"),
])
def test_a_bad_extract_option_value_is_one_line(args, expect, features, capsys):
    same = unchanged(features)
    capsys.readouterr()
    code = extract_main(["--model", "pixels", "--dataset", "tiny", "--quiet", *args, "--data", str(features)])
    one_line(code, capsys.readouterr().err, expect)
    assert same()


def test_cuda_without_a_gpu_is_one_line(features, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    one_line(probe_main([*PROBE, "--device", "cuda", "--data", str(features)]), capsys.readouterr().err,
             "no CUDA GPU is visible; use DEVICE=cpu")


def test_repeated_seeds_models_heads_lrs_and_layers_train_once(features, tmp_path, capsys):
    shutil.copytree(features, tmp_path / "data")
    args = ["--seeds", "0,0", "--model", "pixels,pixels", "--head", "linear,linear", "--lr", "1e-3,1e-3",
            "--layers", "patch,patch;patch", "--data", str(tmp_path / "data")]
    assert probe_main([*PROBE, *args]) == 0
    rows = [line for line in capsys.readouterr().out.splitlines() if "pixels" in line]
    assert len(rows) == 1, rows


@pytest.mark.parametrize("option,expect", [
    ("train=abc", "^error: option train='abc': expected an integer$"),
    ("train=-4", "^error: option train=-4: expected an integer >= 1$"),
    ("train=0", "^error: option train=0: expected an integer >= 1$"),
    ("size=8", "^error: option size=8: expected an integer >= 16$"),
    ("contact_sheet=maybe", "^error: option contact_sheet='maybe': expected true or false$"),
])
def test_a_synthetic_option_of_the_wrong_type_is_one_line_and_builds_nothing(option, expect, tmp_path, capsys):
    code = data_main(["--dataset", "synthetic", "--option", option, "--quiet", "--data", str(tmp_path / "data")])
    one_line(code, capsys.readouterr().err, expect)
    assert not (tmp_path / "data").exists() or not any((tmp_path / "data").rglob("*.building"))


DEMO = (REPO / "grids" / "demo.toml").read_text()


@pytest.mark.parametrize("edit,dry,expect", [
    (lambda t: t.replace("train = 256", 'train = "sixteen"'), True,
     r"demo.toml:14: datasets.synthetic.options.train: option train='sixteen': expected an integer$"),
    (lambda t: t.replace("train = 256", 'train = "sixteen"'), False, r"options.train: option train='sixteen'"),
    (lambda t: t.replace("train = 256", "trian = 16"), True,
     r"options.trian: dataset 'synthetic' has no option trian; its options: train, test"),
    (lambda t: t.replace("train = 256", "train = true"), True, r"option train=True: expected an integer$"),
])
def test_a_grid_files_dataset_options_are_checked_by_name_and_type(edit, dry, expect, tmp_path, capsys):
    grid = tmp_path / "demo.toml"
    grid.write_text(edit(DEMO))
    code = grid_main([str(grid), *(["--dry-run"] if dry else []), "--data", str(tmp_path / "data")])
    one_line(code, capsys.readouterr().err, "^error: .*" + expect)
    assert not (tmp_path / "data").exists()


def test_a_utf16_grid_file_is_one_line(tmp_path, capsys):
    grid = tmp_path / "demo.toml"
    grid.write_text(DEMO, encoding="utf-16")
    one_line(grid_main([str(grid), "--dry-run", "--data", str(tmp_path / "data")]), capsys.readouterr().err,
             "^error: cannot read grid file .*demo.toml: byte 0 is not UTF-8 \\(it looks like UTF-16: save it as "
             "UTF-8\\)")


def test_a_cuda_grid_on_a_machine_without_a_gpu_stops_before_a_cluster_starts(tmp_path, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    grid = tmp_path / "demo.toml"
    grid.write_text(DEMO.replace('device = "cpu"', 'device = "cuda"'))
    one_line(grid_main([str(grid), "--data", str(tmp_path / "data")]), capsys.readouterr().err,
             "^error: grid demo runs on cuda but this machine has no visible CUDA GPU; set device = \"cpu\" in the "
             "grid file or run it with DEVICE=cpu$")
    assert not (tmp_path / "data").exists()
    # the suggested DEVICE=cpu is the grid's --device cpu
    assert grid_main([str(grid), "--device", "cpu", "--dry-run", "--data", str(tmp_path / "data")]) == 0


@pytest.mark.parametrize("variables,flag,value", [
    (("MODEL=pixels", "LAYERS=patch;patch", "DRY=1"), "--layers", "patch;patch"),
    (("MODEL=pixels", "LAYERS=,,;"), "--layers", ",,;"),
    (("MODEL=pixels", "LAYERS=a'b\"c `y` &|>z"), "--layers", "a'b\"c `y` &|>z"),
    (("MODEL=pixels", "WEIGHTS=/my files/w.pth"), "--weights", "/my files/w.pth"),
])
def test_make_extract_passes_every_variable_as_one_argument(variables, flag, value):
    lines = make_dry_run("extract", *variables)
    command = next(argv for argv in lines if "extract" in argv and "--model" in argv)
    assert command[command.index(flag) + 1] == value
    assert len(lines) == len(make_dry_run("extract", "MODEL=pixels")) # no extra shell command was made of it
    assert ("--dry-run" in command) == ("DRY=1" in variables)


@pytest.mark.parametrize("target,variables,flag,value", [
    ("data", ("DATASET=folder", "RAW=/my data/photos"), "--raw", "/my data/photos"),
    ("data", ("OPTIONS=train=8 test='x;y'",), "--option", "train=8"),
    ("grid", ("GRID=/my grids/a;b.toml", "DRY=1"), "grid", "/my grids/a;b.toml"),
    ("probe", ("TASK=depth", "LAYERS=block2,block11;block11", "SEEDS=0;1"), "--layers", "block2,block11;block11"),
])
def test_make_targets_pass_every_variable_as_one_argument(target, variables, flag, value):
    command = [argv for argv in make_dry_run(target, *variables) if "/venv/bin/midprobe" in argv[0]]
    assert len(command) == 1
    assert command[0][command[0].index(flag) + 1] == value
    if "OPTIONS=" in variables[0]:
        assert command[0][-2:] == ["--option", "test='x;y'"]


def test_report_names_every_record_file_it_skips_and_why(features, tmp_path, capsys):
    import json

    from probe.report.__main__ import main as report_main

    root = tmp_path / "data"
    shutil.copytree(features, root)
    assert probe_main([*PROBE, "--data", str(root)]) == 0
    whole = len(list((root / "results").rglob("*.json")))
    good = next((root / "results").rglob("*.json"))
    record = json.loads(good.read_text())
    folder = good.parent
    (folder / "truncated.json").write_text(good.read_text()[:100])
    (folder / "empty.json").write_text("")
    (folder / "list.json").write_text("[]")
    (folder / "no-headline.json").write_text(json.dumps({k: v for k, v in record.items() if k != "headline"}))
    (folder / "string.json").write_text(json.dumps({**record, "headline": "0.5"}))
    (folder / "nan.json").write_text(json.dumps({**record, "headline": float("nan")}))
    capsys.readouterr()
    assert report_main(["--data", str(root)]) == 0
    err = capsys.readouterr().err
    page = (root / "reports" / "report.md").read_text()
    assert f"from {whole} result records" in page
    for name, why in (("truncated", "truncated or not JSON"), ("empty", "empty"), ("list", "holds list"),
                      ("no-headline", "no 'headline'"), ("string", "'headline' is str '0.5'"),
                      ("nan", "headline .* is nan \\(the probe diverged\\?\\)")):
        assert re.search(f"`[^`]*{name}.json` \\({why}", page), name
        assert re.search(f"{name}.json` \\({why}", err), name
    assert "Skipped 6 result file(s)" in page and "Traceback" not in err


def test_a_damaged_zarr_json_is_one_line_everywhere_and_verify_names_the_rebuild(features, tmp_path, capsys):
    from cache.verify import main as verify_main

    root = tmp_path / "data"
    shutil.copytree(features, root)
    split = root / "stores/features/tiny/pixels.zarr/train"
    (split / "zarr.json").write_bytes((split / "zarr.json").read_bytes()[:50])
    same = unchanged(root)
    capsys.readouterr()
    for run in (lambda: probe_main([*PROBE, "--data", str(root)]),
                lambda: extract_main(["--model", "pixels", "--dataset", "tiny", "--quiet", "--data", str(root)])):
        one_line(run(), capsys.readouterr().err, "^error: .*feature store .* has a damaged zarr.json \\(JSONDecodeError: "
                 ".*run `make verify` to see which")
    assert verify_main(["--data", str(root)]) == 1
    out = capsys.readouterr().out
    assert same()
    match = re.search(r"train/zarr.json is damaged .*; delete (\S+) and rerun `make extract (.*)` to extract", out)
    assert match, out
    shutil.rmtree(match.group(1))
    assert _run_make("extract", match.group(2) + " DRY=", root) == 0          # the suggested command, run
    assert verify_main(["--data", str(root)]) == 0
    assert probe_main([*PROBE, "--data", str(root)]) == 0
    dataset = root / "stores/datasets/tiny.zarr/zarr.json"
    dataset.write_bytes(dataset.read_bytes()[:50])
    capsys.readouterr()
    one_line(probe_main([*PROBE, "--data", str(root)]), capsys.readouterr().err,
             "^error: dataset store .*tiny.zarr has a damaged zarr.json")


def test_verify_repair_suggests_rebuilding_a_dataset_store_with_its_own_options(tmp_path, capsys):
    from cache import open_dataset
    from cache.verify import main as verify_main

    root = tmp_path / "data"
    assert data_main(["--dataset", "synthetic", "--train", "4", "--test", "2", "--pairs", "1", "--triplets", "1",
                      "--size", "32", "--workers", "1", "--quiet", "--data", str(root)]) == 0
    store = root / "stores/datasets/synthetic.zarr"
    fingerprint = open_dataset(store).fingerprint if hasattr(open_dataset(store), "fingerprint") else None
    chunk = next(p for p in (store / "train" / "depth" / "c").rglob("*") if p.is_file())
    chunk.write_bytes(b"x")
    capsys.readouterr()
    assert verify_main(["--repair", "--data", str(root)]) == 0             # found and repaired
    out = capsys.readouterr().out
    match = re.search(r"rebuild it with `make data (.*)` \(its own options\)", out)
    assert match and "train=4 test=2 pairs=1 triplets=1 size=32" in match.group(1), out
    assert _run_make("data", match.group(1) + " CHECK=", root) == 0
    assert verify_main(["--data", str(root)]) == 0
    rebuilt = open_dataset(store)
    assert rebuilt.split("train").num_images == 4 and rebuilt.split("test").num_images == 2
    if fingerprint is not None:
        assert rebuilt.fingerprint == fingerprint


@pytest.mark.parametrize("cli", ["probe", "extract", "data", "verify", "report"])
def test_a_data_root_that_is_a_file_is_one_line(cli, tmp_path, capsys):
    from midprobe.cli import main as midprobe_main

    file = tmp_path / "data"
    file.write_text("not a folder")
    args = {"probe": PROBE, "extract": ("--model", "pixels", "--dataset", "tiny", "--quiet"),
            "data": ("--dataset", "synthetic", "--quiet"), "verify": (), "report": ("--quiet",)}[cli]
    one_line(midprobe_main([cli, *args, "--data", str(file)]), capsys.readouterr().err,
             f"^error: data root {re.escape(str(file))} is a file; expected a folder")
    assert file.read_text() == "not a folder"


def test_a_missing_corrupted_split_reads_as_english(features, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(features, root)
    code = probe_main([*PROBE, "--test-corrupt", "fog:1", "--data", str(root)])
    one_line(code, capsys.readouterr().err, "^error: feature store of 'pixels' for 'tiny' lacks the corrupted split "
             "'test@corrupt-fog-1'; run `make extract MODEL=pixels DATASET=tiny PROTOCOL=midprobe CORRUPT=fog:1`")


def test_disk_sizes_are_said_in_a_unit_that_shows_them():
    from extract.runner import _bytes

    assert [_bytes(n) for n in (0, 300, 5 * 2**10, 3 * 2**20 / 2, 2**31)] == [
        "0 bytes", "300 bytes", "5.0 KiB", "1.5 MiB", "2.0 GiB"]


def test_a_deleted_chunk_of_a_complete_store_is_found_by_extract_and_the_suggested_repair_works(features, tmp_path,
                                                                                               capsys):
    from cache.verify import main as verify_main

    root = tmp_path / "data"
    shutil.copytree(features, root)
    chunk = next(p for p in (root / "stores/features/tiny/pixels.zarr/train/patch/c").rglob("*") if p.is_file())
    chunk.unlink()
    extract_args = ["--model", "pixels", "--dataset", "tiny", "--quiet", "--data", str(root)]
    capsys.readouterr()
    one_line(extract_main(extract_args), capsys.readouterr().err,
             "^error: feature store .*pixels.zarr/train is marked complete but its chunk file train/patch/c/.* is "
             "missing; run `make verify REPAIR=1` to mark it for re-extraction, then rerun this `make extract`$")
    assert verify_main(["--repair", "--data", str(root)]) == 0
    assert extract_main(extract_args) == 0 and chunk.exists()
    assert verify_main(["--data", str(root)]) == 0


def test_head_for_a_zero_shot_task_is_one_line(features, capsys):
    one_line(probe_main(["--task", "similarity", "--dataset", "tiny", "--head", "mlp", "--data", str(features)]),
             capsys.readouterr().err, "^error: task 'similarity' is zero-shot: it trains no head, so --head does not "
             "apply; drop HEAD= and LR=$")


def test_a_split_waiting_on_another_shard_says_so_and_the_suggested_command_finishes_it(features, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(features, root)
    shutil.rmtree(root / "stores" / "features")
    args = ["--model", "pixels", "--dataset", "tiny", "--chunk-images", "2", "--quiet", "--data", str(root)]
    assert extract_main([*args, "--shard", "0/2"]) == 0
    capsys.readouterr()
    one_line(probe_main([*PROBE, "--data", str(root)]), capsys.readouterr().err,
             "^error: feature store .*pixels.zarr/train is incomplete: 1 of 3 chunks written \\(other shards or a "
             "running extraction may still be writing it, or one was interrupted\\); wait for them, or run `make "
             "extract (MODEL=pixels DATASET=tiny)` without SHARD= to write the missing chunks$")
    assert "interrupted;" not in capsys.readouterr().err
    assert _run_make("extract", "MODEL=pixels DATASET=tiny", root) == 0          # the suggested command, run
    assert probe_main([*PROBE, "--data", str(root)]) == 0


def test_a_read_only_data_root_is_found_before_a_head_trains(features, tmp_path, monkeypatch, capsys):
    import probe.run
    from tests.filesystems import read_only_view

    def trains(*args, **kwargs):
        raise AssertionError("a head trained before the data root was checked")

    monkeypatch.setattr(probe.run, "train_sweep", trains)
    source = tmp_path / "data"
    shutil.copytree(features, source)
    with read_only_view(source, tmp_path / "read-only") as view:
        capsys.readouterr()
        one_line(probe_main([*PROBE, "--data", str(view)]), capsys.readouterr().err,
                 "^error: data root is not writable: cannot write in .*results")


def test_test_corrupt_for_every_model_checks_them_all_before_writing_a_record(features, tmp_path, capsys):
    root = tmp_path / "data"
    shutil.copytree(features, root)
    assert extract_main(["--model", "hog", "--dataset", "tiny", "--quiet", "--data", str(root)]) == 0
    assert extract_main(["--model", "hog", "--dataset", "tiny", "--corrupt", "fog:1", "--quiet",
                         "--data", str(root)]) == 0
    capsys.readouterr()
    code = probe_main(["--task", "depth", "--dataset", "tiny", "--epochs", "1", "--quiet", "--test-corrupt", "fog:1",
                       "--data", str(root)])
    one_line(code, capsys.readouterr().err, "^error: feature store of 'pixels' for 'tiny' lacks the corrupted split "
             "'test@corrupt-fog-1'")
    assert not (root / "results").exists() or not any((root / "results").rglob("*.json"))
