import json

import numpy as np
import pytest

from cache import MidprobeError, create_dataset_store
from probe.cli import main as probe_main
from probe.run import run_task
from tests.conftest import write_features

SIZE = 16


def _known_dataset(root, n_train=24, n_test=8, seed=0):
    """Targets per pixel, and cached "features" that are a fixed linear function of them (stride 1)."""
    rng = np.random.default_rng(seed)
    writer = create_dataset_store(root.dataset_store("known"), name="known", source="test", attrs={"depth_kind": "metric"})
    fields = {"images": ((SIZE, SIZE, 3), "uint8"), "depth": ((SIZE, SIZE), "float32"),
              "normals": ((SIZE, SIZE, 3), "float32"), "foreground": ((SIZE, SIZE), "uint8")}
    mixing = rng.normal(size=(8, 5))
    data = {}
    for split, n in (("train", n_train), ("test", n_test)):
        depth = rng.uniform(1.0, 5.0, (n, SIZE, SIZE)).astype(np.float32)
        normals = rng.normal(size=(n, SIZE, SIZE, 3))
        normals[..., 2] = np.abs(normals[..., 2]) + 0.5
        normals = (normals / np.linalg.norm(normals, axis=-1, keepdims=True)).astype(np.float32)
        fg = rng.integers(0, 2, (n, SIZE, SIZE)).astype(np.uint8)
        fg[:, 0, 0] = 255                                       # an ignored pixel
        out = writer.split(split, num_images=n, height=SIZE, width=SIZE, fields=fields)
        out.append({"images": np.zeros((n, SIZE, SIZE, 3), np.uint8), "depth": depth, "normals": normals,
                    "foreground": fg})
        targets = np.concatenate([depth[..., None], normals, (fg == 1)[..., None]], -1)      # (n, H, W, 5)
        data[split] = np.einsum("nhwk,ck->nchw", targets, mixing).astype(np.float32) + 0.5
    writer.finish()
    for split, maps in data.items():
        write_features(root, dataset="known", model="oracle", split=split, maps={"lin": maps}, strides={"lin": 1})
        noise = rng.normal(size=maps.shape).astype(np.float32)
        write_features(root, dataset="known", model="noise", split=split, maps={"lin": noise}, strides={"lin": 1})


def _metric(rows, probe, key="value"):
    return next(r for r in rows if r["probe"].startswith(probe))


def test_ridge_is_near_perfect_when_features_are_linear_in_the_target(root):
    _known_dataset(root)
    settings = {"batch_size": 8}
    depth = run_task(task_name="depth", dataset="known", models=["oracle"], heads=["ridge"], overrides=settings,
                     root=root, quiet=True)
    assert depth[0]["d1"] > 0.999
    normals = run_task(task_name="normals", dataset="known", models=["oracle"], heads=["ridge"], overrides=settings,
                       root=root, quiet=True)
    assert normals[0]["within_11.25"] > 0.999
    seg = run_task(task_name="segmentation", dataset="known", models=["oracle", "noise"], heads=["ridge"],
                   overrides=settings, root=root, quiet=True)
    assert _metric([r for r in seg if r["model"] == "oracle"], "ridge")["iou"] > 0.999
    assert _metric([r for r in seg if r["model"] == "noise"], "ridge")["iou"] < 0.8


def test_linear_probe_learns_a_linear_target(root):
    _known_dataset(root)
    settings = {"batch_size": 2, "epochs": 15, "warmup_epochs": 1}
    seg = run_task(task_name="segmentation", dataset="known", models=["oracle"], heads=["linear"], lrs=[0.05],
                   overrides=settings, root=root, quiet=True)
    assert seg[0]["iou"] > 0.98
    normals = run_task(task_name="normals", dataset="known", models=["oracle"], heads=["linear"], lrs=[0.05],
                       overrides=settings, root=root, quiet=True)
    assert normals[0]["within_11.25"] > 0.99
    depth = run_task(task_name="depth", dataset="known", models=["oracle"], heads=["linear"], lrs=[0.05],
                     overrides=settings, root=root, quiet=True)
    assert depth[0]["d1"] > 0.99


def _records(root, task):
    return sorted(root.results(task).rglob("*.json"))


def test_seeded_runs_repeat_exactly_and_sweeps_match_single_runs(root):
    _known_dataset(root, n_train=12, n_test=4)
    kwargs = dict(task_name="normals", dataset="known", models=["noise"], overrides={"batch_size": 4, "epochs": 2},
                  seed=3, root=root, quiet=True)
    sweep = run_task(heads=["linear", "mlp"], lrs=[1e-3, 1e-2], **kwargs)
    records = {p.name: json.loads(p.read_text()) for p in _records(root, "normals")}
    again = run_task(heads=["linear", "mlp"], lrs=[1e-3, 1e-2], **kwargs)
    assert [r["within_11.25"] for r in sweep] == [r["within_11.25"] for r in again]
    rerun = {p.name: json.loads(p.read_text()) for p in _records(root, "normals")}
    assert {k: v["metrics"] for k, v in records.items()} == {k: v["metrics"] for k, v in rerun.items()}
    alone = run_task(heads=["mlp"], lrs=[1e-2], **kwargs)
    assert alone[0]["within_11.25"] == _metric(sweep, "mlp-lin-lr0.01")["within_11.25"]
    other_seed = run_task(heads=["mlp"], lrs=[1e-2], **{**kwargs, "seed": 4})
    assert other_seed[0]["within_11.25"] != alone[0]["within_11.25"]


def test_result_record_holds_config_metrics_fingerprint_and_versions(root):
    _known_dataset(root, n_train=8, n_test=4)
    run_task(task_name="segmentation", dataset="known", models=["oracle"], heads=["linear"], lrs=[5e-4],
             overrides={"batch_size": 4, "epochs": 1}, root=root, quiet=True)
    (path,) = _records(root, "segmentation")
    assert path.parent == root.results("segmentation", "known", "oracle", "midprobe")
    record = json.loads(path.read_text())
    assert record["config"]["head"] == "linear" and record["config"]["lr"] == 5e-4
    assert record["config"]["settings"]["epochs"] == 1
    assert record["protocol"] == "midprobe" and record["config"]["protocol"] == "midprobe"
    assert record["config"]["overrides"] == {"batch_size": 4, "epochs": 1}
    assert record["config"]["settings"]["schedule"] == "quarter-cosine"
    assert set(record["metrics"]) >= {"iou", "f_beta", "pixel_accuracy", "corloc"}
    assert record["metrics"]["f_beta_beta2"] == 0.09
    assert record["headline_metric"] == "iou" and record["headline"] == record["metrics"]["iou"]
    assert record["feature_fingerprint"]["model"] == "oracle" and record["wall_seconds"] > 0
    assert {"torch", "timm", "zarr", "numpy"} <= set(record["versions"])


def test_probe_without_model_runs_every_cached_model(root):
    _known_dataset(root, n_train=8, n_test=4)
    rows = run_task(task_name="segmentation", dataset="known", heads=["ridge"], overrides={"batch_size": 4},
                    root=root, quiet=True)
    assert sorted(r["model"] for r in rows) == ["noise", "oracle"]


def test_probe_cli_errors(root, capsys):
    _known_dataset(root, n_train=8, n_test=4)
    data = ["--data", str(root.root), "--dataset", "known"]
    assert probe_main(["--task", "optical_flow", *data]) == 2
    assert "unknown task 'optical_flow'" in capsys.readouterr().err
    assert probe_main(["--task", "depth", "--model", "absent", *data]) == 2
    assert "make extract MODEL=absent" in capsys.readouterr().err
    assert probe_main(["--task", "depth", "--layers", "block11", *data]) == 2
    assert "not cached" in capsys.readouterr().err
    assert probe_main(["--task", "depth", "--head", "transformer", *data]) == 2
    assert "unknown head 'transformer'" in capsys.readouterr().err
    assert probe_main(["--task", "correspondence", *data]) == 2
    assert "needs split 'pairs'" in capsys.readouterr().err
    assert probe_main(["--task", "segmentation", "--head", "ridge", "--quiet", *data]) == 0
    assert "segmentation" in capsys.readouterr().out


def test_dpt_head_trains_on_a_four_layer_pyramid(root):
    rng = np.random.default_rng(0)
    writer = create_dataset_store(root.dataset_store("pyr"), name="pyr", source="t", attrs={"depth_kind": "metric"})
    out = writer.split("train", num_images=4, height=32, width=32,
                       fields={"images": ((32, 32, 3), "uint8"), "foreground": ((32, 32), "uint8")})
    out.append({"images": np.zeros((4, 32, 32, 3), np.uint8), "foreground": rng.integers(0, 2, (4, 32, 32), dtype=np.uint8)})
    out = writer.split("test", num_images=2, height=32, width=32,
                       fields={"images": ((32, 32, 3), "uint8"), "foreground": ((32, 32), "uint8")})
    out.append({"images": np.zeros((2, 32, 32, 3), np.uint8), "foreground": rng.integers(0, 2, (2, 32, 32), dtype=np.uint8)})
    writer.finish()
    for split, n in (("train", 4), ("test", 2)):
        maps = {f"res{i + 2}": rng.normal(size=(n, 4 * (i + 1), 32 // 2 ** (i + 2), 32 // 2 ** (i + 2))).astype(np.float32)
                for i in range(4)}
        write_features(root, dataset="pyr", model="cnn", split=split, maps=maps,
                       strides={f"res{i + 2}": 2 ** (i + 2) for i in range(4)})
    rows = run_task(task_name="segmentation", dataset="pyr", heads=["dpt", "linear"],
                    overrides={"batch_size": 2, "epochs": 1, "hidden": 8}, root=root, quiet=True)
    assert {r["probe"].split("-")[0] for r in rows} == {"dpt", "linear"}
    assert all(0 <= r["iou"] <= 1 for r in rows)


def test_dpt_head_on_equal_vit_grids_outputs_at_eight_times_the_grid():
    import torch

    from probe.heads import build_head

    head = build_head("dpt", in_channels=[8, 8, 8, 8], out_channels=3, hidden=4, equal_grids=True)
    out = head([torch.randn(2, 8, 4, 6) for _ in range(4)])
    assert out.shape == (2, 3, 32, 48)
    cnn = build_head("dpt", in_channels=[4, 8, 16, 32], out_channels=1, hidden=4, equal_grids=False)
    out = cnn([torch.randn(1, c, 16 // 2 ** i, 16 // 2 ** i) for i, c in enumerate([4, 8, 16, 32])])
    assert out.shape == (1, 1, 32, 32)
    with pytest.raises(MidprobeError, match="exactly 4 layers"):
        build_head("dpt", in_channels=[8, 8], out_channels=1)
    one = build_head("dpt", in_channels=[8], out_channels=3, hidden=4, equal_grids=True)     # pixels, HOG
    assert one([torch.randn(2, 8, 4, 6)]).shape == (2, 3, 32, 48)


def test_stacked_linear_heads_equal_a_conv_on_standardised_concatenated_layers():
    import torch

    from probe.features import BatchInputs, Standardizer, concat_on_grid
    from probe.heads import build_head
    from probe.train import ProbeConfig, forward_heads

    rng = np.random.default_rng(0)
    # ResNet-like: two grids, so the folded path projects then upsamples
    features = {"a": rng.normal(2.0, 3.0, (2, 5, 8, 8)).astype(np.float16),
                "b": rng.normal(-1.0, 0.5, (2, 7, 4, 4)).astype(np.float16)}
    stats = {k: (rng.normal(size=v.shape[1]), rng.uniform(0.5, 2.0, v.shape[1])) for k, v in features.items()}
    standardizer = Standardizer(stats, torch.device("cpu"))
    torch.manual_seed(0)
    heads = [(ProbeConfig("linear", ("a", "b"), lr), build_head("linear", in_channels=[5, 7], out_channels=3))
             for lr in (1e-3, 1e-2)]
    outputs = forward_heads(heads, BatchInputs(features, standardizer))
    x = concat_on_grid([standardizer({k: v}, [k])[k] for k, v in features.items()])
    for (_, head), out in zip(heads, outputs):
        expected = head(x)
        assert out.shape == (2, 3, 8, 8)
        torch.testing.assert_close(out, expected, rtol=1e-4, atol=1e-4)
        # the same gradient reaches the head's weights
        grad = torch.autograd.grad(out.square().sum(), head.conv.weight, retain_graph=True)[0]
        torch.testing.assert_close(grad, torch.autograd.grad(expected.square().sum(), head.conv.weight)[0],
                                   rtol=1e-4, atol=1e-3)
