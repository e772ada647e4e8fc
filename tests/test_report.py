
import numpy as np
import pytest

from probe.records import write_record
from probe.report.__main__ import main as report_main
from probe.report.page import build_report
from probe.report.stats import least_squares, pearson_matrix, ranks
from probe.report.tables import build_leaderboards, load_imagenet

FINGERPRINT = {"model": "m", "weights": "random:0"}


def _record(root, *, task, model, value, seed=0, head="linear", dataset="synthetic", headline=None):
    headline = headline or {"depth": "d1", "normals": "within_11.25", "similarity": "f1"}[task]
    config = {"head": head} if task != "similarity" else {"task": task}
    probe = f"{head}-all-lr0.0005" if task != "similarity" else task
    write_record(root, task=task, dataset=dataset, model=model, probe=probe, config=config,
                 metrics={headline: value}, headline=headline, fingerprint={**FINGERPRINT, "model": model},
                 wall_seconds=1.0, seed=seed)


def test_least_squares_and_pearson_known_values():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    a, b, r2 = least_squares(x, 2 * x + 1)
    assert (a, b, r2) == pytest.approx((2.0, 1.0, 1.0))
    y = np.array([1.0, 3.0, 2.0, 4.0])
    assert least_squares(x, y)[2] == pytest.approx(np.corrcoef(x, y)[0, 1] ** 2)
    names, r = pearson_matrix({"a": x, "b": -x, "c": np.array([1.0, np.nan, 5.0, 7.0])})
    assert r[0, 1] == pytest.approx(-1.0) and r[0, 2] == pytest.approx(1.0)
    np.testing.assert_array_equal(ranks(np.array([0.5, 0.9, np.nan, 0.9])), [3, 1.5, np.nan, 1.5])


def test_leaderboard_mean_and_std_over_seeds(root):
    for seed, value in enumerate([0.5, 0.7]):
        _record(root, task="depth", model="a", value=value, seed=seed)
    _record(root, task="similarity", model="a", value=0.9, head=None)
    from probe.records import load_records

    boards = build_leaderboards(load_records(root))
    board = boards["midprobe", "linear"]
    assert board.columns == ["depth (synthetic)", "similarity (synthetic)"]
    assert board.mean["a", "depth (synthetic)"] == pytest.approx(0.6)
    assert board.std["a", "depth (synthetic)"] == pytest.approx(0.1)
    # no per-item scores: the seeds' t interval, 0.6 ± t(1) · sd(ddof=1) / √2 = 0.6 ± 12.706 · 0.1
    assert board.cell("a", "depth (synthetic)") == "60.0 ± 10.0 [-67.1, 187.1]"
    assert board.cell("a", "similarity (synthetic)") == "90.0"


def test_report_with_known_correlations(root, tmp_path):
    models = ["m1", "m2", "m3", "m4", "m5"]
    imagenet = np.array([60.0, 65.0, 70.0, 75.0, 80.0])
    depth = 0.01 * imagenet - 0.2                     # perfectly linear in ImageNet: R² = 1
    normals = np.array([0.3, 0.1, 0.4, 0.2, 0.5])
    for m, d, n in zip(models, depth, normals):
        _record(root, task="depth", model=m, value=float(d))
        _record(root, task="normals", model=m, value=float(n))
    csv = tmp_path / "imagenet.csv"
    csv.write_text("model,imagenet_top1,protocol,source\n" + "".join(f"{m},{v},linear,test\n" for m, v in zip(models, imagenet)))
    page, texts = build_report(root, imagenet_csv=str(csv))
    text = page.read_text()
    expected_r2 = np.corrcoef(imagenet, normals)[0, 1] ** 2
    assert "depth (synthetic): R² = 1.000 over 5 models" in text
    assert f"normals (synthetic): R² = {expected_r2:.3f} over 5 models" in text
    figures = root.reports() / "figures"
    assert (figures / "mid_vs_high_midprobe_linear_depth__synthetic.png").exists()
    assert (figures / "task_correlations_midprobe_linear.png").exists() and (figures / "ranking_midprobe_linear.png").exists()
    assert "| m5 | 1.00 |" in text                     # best on both tasks: mean rank 1
    rows = (root.reports() / "leaderboard_midprobe_linear.csv").read_text().splitlines()
    assert rows[0] == "model,column,metric,mean,std,seeds,probe,ci_low,ci_high,source,flags,steps,vs_next"
    assert len(rows) == 11
    assert "feature_stores" not in text and "Result records:" in text and "depth/synthetic/m1" in text


def test_report_with_too_few_models_says_so(root, capsys):
    _record(root, task="depth", model="pixels", value=0.3)
    _record(root, task="normals", model="pixels", value=0.2)
    assert report_main(["--data", str(root.root)]) == 0
    text = (root.reports() / "report.md").read_text()
    # one line for the section's scatter plots, not one per task
    assert text.count("Not drawn for any task — needs at least 3 models with both an ImageNet accuracy") == 1
    assert "depth (synthetic): not drawn" not in text and "Not drawn — needs at least 3 models" in text
    assert "pixels" in capsys.readouterr().out


def test_report_without_records_is_an_error(root, capsys):
    assert report_main(["--data", str(root.root)]) == 2
    assert "no result records" in capsys.readouterr().err


def test_shipped_imagenet_table_cites_its_sources():
    values = load_imagenet()
    assert values["vit_b_mae"] == 68.0 and values["rn50_mocov2"] == 71.1 and len(values) >= 15
