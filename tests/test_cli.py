"""The midprobe command: its subcommands are the python -m modules and the make targets, and the
first-hour papercut (`make report` after `make demo`)."""

import os
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

from cache import data_root
from midprobe.cli import COMMANDS, Command, available_commands
from midprobe.cli import main as midprobe_main
from probe.cli import main as probe_main
from probe.records import load_records, write_record
from probe.report.__main__ import main as report_main
from tests.conftest import write_features, write_tiny_dataset

REPO = Path(__file__).resolve().parents[1]
CORE = ("data", "extract", "probe", "report", "bench", "fidelity")
PROBE_ARGS = ["--task", "segmentation", "--dataset", "tiny", "--head", "linear", "--epochs", "2", "--batch-size", "4",
              "--lr", "0.01"]
#: what differs between two runs of the same probe: when and how long
VOLATILE = ("created", "wall_seconds", "path")


def write_tiny_probe_store(root) -> None:
    """A 6 + 3 image dataset ``tiny`` (32x48) and a feature store ``rand`` (one 8-channel layer, stride 8)."""
    write_tiny_dataset(root, name="tiny")
    rng = np.random.default_rng(1)
    for split, n in (("train", 6), ("test", 3)):
        write_features(root, dataset="tiny", model="rand", split=split,
                       maps={"f": rng.normal(size=(n, 8, 4, 6)).astype(np.float32)}, strides={"f": 8})


def comparable(record: dict) -> dict:
    out = {k: v for k, v in record.items() if k not in VOLATILE}
    out["training"] = {k: v for k, v in out.get("training", {}).items() if k != "train_seconds_shared"}
    return out


def make_dry_run(*args: str) -> list[list[str]]:
    """The commands ``make -n`` would run (one argv per recipe line), with a venv at /venv."""
    out = subprocess.run(["make", "-n", "--no-print-directory", *args, "VENV=/venv"], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    return [shlex.split(line) for line in out.replace("\\\n", " ").splitlines() if line.strip()]


def test_help_lists_the_commands_with_examples(capsys):
    assert midprobe_main(["--help"]) == 0
    out = capsys.readouterr().out
    for name in CORE:
        assert f"\n  {name} " in out
        assert f"[{COMMANDS[name].make}]" in out
    assert "examples:" in out and "midprobe probe --task" in out and "make demo" in out
    assert midprobe_main([]) == 2                          # no command: the usage, on stderr
    assert "usage: midprobe COMMAND" in capsys.readouterr().err


def test_commands_are_listed_only_when_their_module_exists(monkeypatch, capsys):
    absent = Command("ghost", "no_such_package_xyz.cli", "no_such_package_xyz", "make ghost", "not installed")
    monkeypatch.setitem(COMMANDS, "ghost", absent)
    assert "ghost" not in available_commands()
    assert set(CORE) <= set(available_commands())
    midprobe_main(["--help"])
    assert "ghost" not in capsys.readouterr().out
    assert midprobe_main(["ghost"]) == 2
    assert "unknown command 'ghost'" in capsys.readouterr().err
    assert midprobe_main(["prob"]) == 2
    assert "did you mean probe?" in capsys.readouterr().err


def test_a_command_whose_module_cannot_import_is_a_one_line_error(tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_stage_xyz.py").write_text("import no_such_dependency_xyz\n\ndef main(argv):\n    return 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setitem(COMMANDS, "broken", Command("broken", "broken_stage_xyz", "broken_stage_xyz", "make broken",
                                                    "needs a missing dependency"))
    assert "broken" in available_commands()                # found, so listed ...
    assert midprobe_main(["broken", "--flag"]) == 2         # ... and running it names what is missing
    err = capsys.readouterr().err.strip()
    assert err == ("error: command 'broken' cannot load broken_stage_xyz: "
                   "No module named 'no_such_dependency_xyz'")


@pytest.mark.parametrize("name", sorted(available_commands()))
def test_each_command_help_is_its_module_help_named_midprobe(name, capsys):
    assert midprobe_main([name, "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: midprobe {name} ")
    assert f"python -m {COMMANDS[name].runs_as} " not in out.split("The same code as")[0]
    assert f"The same code as {COMMANDS[name].make}" in out and "examples:\n  midprobe " + name in out
    assert "--help" in out


def test_console_script_and_package_entry_point_are_the_cli():
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts == {"midprobe": "midprobe.cli:main"}
    assert "from midprobe.cli import main" in (REPO / "midprobe" / "__main__.py").read_text()


def test_midprobe_make_and_python_m_make_the_same_record(tmp_path):
    """One probe four ways — `python -m probe`, `midprobe probe` (in-process and as a process), and
    the command line `make probe` runs — gives records equal in every metric and setting."""
    roots = {way: data_root(tmp_path / way) for way in ("module", "midprobe", "process", "make")}
    for root in roots.values():
        write_tiny_probe_store(root)
    assert probe_main([*PROBE_ARGS, "--data", str(roots["module"].root), "--quiet"]) == 0
    assert midprobe_main(["probe", *PROBE_ARGS, "--data", str(roots["midprobe"].root), "--quiet"]) == 0
    script = Path(sys.executable).with_name("midprobe")
    command = [str(script)] if script.exists() else [sys.executable, "-m", "midprobe"]
    run = subprocess.run([*command, "probe", *PROBE_ARGS, "--data", str(roots["process"].root), "--quiet"], cwd=REPO,
                         capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert run.returncode == 0, run.stderr
    [make_line] = [argv for argv in make_dry_run("probe", "TASK=segmentation", "DATASET=tiny", "HEAD=linear",
                                                 "EPOCHS=2", "LR=0.01") if argv[0].endswith("midprobe")]
    assert make_line[:2] == ["/venv/bin/midprobe", "probe"]
    make_argv = make_line[1:] + ["--batch-size", "4", "--data", str(roots["make"].root), "--quiet"]
    assert midprobe_main(make_argv) == 0
    records = {way: load_records(root) for way, root in roots.items()}
    assert all(len(r) == 1 for r in records.values())
    reference = comparable(records["module"][0])
    assert reference["metrics"]["iou"] >= 0 and reference["training"]["steps"] == 2 * 2
    for way in ("midprobe", "process", "make"):
        assert comparable(records[way][0]) == reference, way


def test_make_targets_run_the_midprobe_command():
    lines = {target: make_dry_run(target, *extra) for target, extra in
             (("data", ()), ("extract", ("MODEL=hog",)), ("report", ()), ("bench", ()),
              ("probe", ("TASK=depth", "LOG=tensorboard")))}
    for target, argvs in lines.items():
        called = [a for a in argvs if a[0] == "/venv/bin/midprobe"]
        assert called and called[0][1] == COMMANDS[target].name, target
    probe = next(a for a in lines["probe"] if a[0] == "/venv/bin/midprobe")
    assert probe[probe.index("--log") + 1] == "tensorboard"


# --- the papercut: `make report` after `make demo` -------------------------------------------------------------------

def _record(root, model: str, value: float) -> None:
    write_record(root, task="depth", dataset="synthetic", model=model, probe="linear-all-lr0.0005",
                 config={"head": "linear", "layers": ["all"], "lr": 5e-4}, metrics={"d1": value}, headline="d1",
                 fingerprint={"model": model, "weights": "random:0"}, wall_seconds=1.0, seed=0)


def test_report_after_the_demo_reports_the_demo(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    demo = data_root(tmp_path / "data" / "demo")          # where `make demo` writes (DEMO_DATA = $(DATA)/demo)
    _record(demo, "pixels", 0.37)
    assert report_main([]) == 0                           # `make report`: the default data root, ./data
    err = capsys.readouterr().err
    assert "no result records under data; reporting data/demo (the demo's data root" in err
    assert "make report DATA=data/demo" in err
    assert (demo.reports() / "report.md").exists() and (demo.reports() / "report.html").exists()
    assert not (tmp_path / "data" / "reports").exists()


def test_makefile_demo_writes_where_report_looks():
    demo = make_dry_run("demo", "DATA=data")
    assert any("--data" in argv and argv[argv.index("--data") + 1] == "data/demo" for argv in demo)


def test_report_with_several_nested_roots_names_each_command(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("demo", "fidelity"):
        _record(data_root(tmp_path / "data" / name), "hog", 0.3)
    assert report_main([]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: no result records under data, but under several data roots")
    assert "make report DATA=data/demo, make report DATA=data/fidelity" in err and len(err.splitlines()) == 1


def test_report_prefers_the_data_roots_own_records(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _record(data_root(tmp_path / "data"), "own", 0.5)
    _record(data_root(tmp_path / "data" / "demo"), "pixels", 0.37)
    assert report_main([]) == 0
    captured = capsys.readouterr()
    assert "reporting" not in captured.err and "own" in captured.out and "pixels" not in captured.out
    assert (tmp_path / "data" / "reports" / "report.html").exists()
