"""``make fidelity``: how much each of the paper's choices moves the numbers.

On a small synthetic set with weight-free and random backbones, runs the default protocol
(``midprobe``), the ``paper`` protocol, and ``midprobe`` with each paper deviation switched
on alone (with the deviations it requires, e.g. a DPT detail with the DPT head), and writes
the table deviation x task -> per model the change of the headline metric (points) and of
the model's rank among the models. A second seed of ``midprobe`` gives the noise floor. The
table goes to ``<data>/reports/fidelity.md`` and, with ``--readme``, between the README's
fidelity markers.

The set is small so the whole study fits in about 15 minutes on two CPU cores: the DPT's
hidden width is 32 (the protocols' 512 otherwise), and absolute numbers are not comparable
with the paper's; the deltas say which choices matter and in which direction.
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cache import DataRoot, data_root
from cache.errors import exits_on_error
from protocols import DEVIATIONS, MIDPROBE, PAPER, Deviation, Protocol, with_deviation

MODELS = ("pixels", "hog", "vit_b_random")
TASKS = ("depth", "normals", "segmentation", "correspondence", "similarity")
SIZES = {"train": 64, "test": 32, "pairs": 16, "triplets": 48, "size": 64, "seed": 0}
OVERRIDES = {"hidden": 32}
README_MARKERS = ("<!-- fidelity:start -->", "<!-- fidelity:end -->")


@dataclass
class Variant:
    """One protocol run of the study and the tasks it is run on (the rest equal the baseline's)."""

    key: str
    protocol: Protocol
    tasks: tuple[str, ...]
    deviation: Deviation | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    measurable: str = ""             # why it cannot be measured on the synthetic set ("" = it can)


def variants() -> list[Variant]:
    """Baseline, noise floor, paper, and one variant per deviation."""
    out = [Variant("midprobe", MIDPROBE, TASKS), Variant("midprobe, seed 1", MIDPROBE, TASKS[:3], seed=1),
           Variant("paper", PAPER, TASKS)]
    for dev in DEVIATIONS:
        applicable = not dev.datasets or "synthetic" in dev.datasets
        model_option = any(path == ("model_option",) for path, _ in dev.changes)
        why = ("" if applicable and not model_option else
               f"needs {', '.join(dev.datasets)}" if not applicable else "needs published weights")
        out.append(Variant(dev.key, with_deviation(dev.key, prerequisites=True),
                           tuple(t for t in dev.tasks if t in TASKS), dev, options=dict(dev.options),
                           measurable=why))
    return out


def _headline(rows: list[dict[str, Any]], model: str) -> float:
    """The best headline over the probes of a model (the leaderboard's rule)."""
    values = [v for r in rows if r["model"] == model for k, v in r.items()
              if k not in {"task", "dataset", "model", "probe", "record"} and v is not None]
    return float(max(values)) if values else float("nan")


def _ranks(values: dict[str, float]) -> dict[str, int]:
    order = sorted(values, key=lambda m: -values[m])
    return {m: order.index(m) + 1 for m in values}


def _probe(job: tuple[str, str, str, int, dict[str, Any], tuple[str, ...]]) -> tuple[str, str, dict[str, float]]:
    """One (variant, task) of the study in a worker process: one torch thread, so the workers fill
    the cores without fighting over them."""
    import torch

    from probe.run import run_task

    key, task, root_path, seed, options, models = job
    torch.set_num_threads(1)
    # protocols hold mapping proxies, which do not pickle: a worker looks its variant up by key
    protocol = MIDPROBE if key.endswith(" (baseline)") else {v.key: v.protocol for v in variants()}[key]
    overrides = OVERRIDES if task in ("depth", "normals", "segmentation") else {}
    rows = run_task(task_name=task, dataset="synthetic", models=list(models), protocol=protocol, overrides=overrides,
                    seed=seed, root=data_root(root_path), quiet=True,
                    options=options if task == "correspondence" else None)
    return key, task, {m: _headline(rows, m) for m in models}


def run_study(*, root: DataRoot, models: Sequence[str] = MODELS, only: Sequence[str] | None = None,
              workers: int | None = None, quiet: bool = True) -> dict[str, dict[str, dict[str, float]]]:
    """Headlines ``{variant: {task: {model: value}}}`` of every measurable variant.

    Extraction runs first, in this process (each variant's feature splits, once); then every
    (variant, task) probe runs in a pool of ``workers`` processes (default: one per core).
    """
    import multiprocessing as mp
    import os

    from extract.datasets import prepare
    from extract.runner import extract

    say = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    if not (root.dataset_store("synthetic") / "zarr.json").exists():
        prepare("synthetic", root=root, progress=False, contact_sheet=False, workers=1, **SIZES)
    chosen = [v for v in variants() if not v.measurable and (not only or v.key in only or v.key == "midprobe")]
    started = time.perf_counter()
    for variant in chosen:
        for model in models:
            extract(model=model, dataset="synthetic", protocol=variant.protocol, root=root, progress=False,
                    tasks=list(variant.tasks))
    say(f"[fidelity] extraction: {time.perf_counter() - started:.0f} s")
    jobs = [(v.key, task, str(root.root), v.seed, v.options, tuple(models)) for v in chosen for task in v.tasks]
    jobs += [(f"{v.key} (baseline)", "correspondence", str(root.root), 0, v.options, tuple(models))
             for v in chosen if v.options]
    results: dict[str, dict[str, dict[str, float]]] = {}
    with mp.get_context("fork").Pool(workers or os.cpu_count() or 1) as pool:
        for done, (key, task, headlines) in enumerate(pool.imap_unordered(_probe, jobs), start=1):
            results.setdefault(key, {})[task] = headlines
            say(f"[fidelity] {done}/{len(jobs)} {key} / {task}: {time.perf_counter() - started:.0f} s")
    return results


def table(results: dict[str, dict[str, dict[str, float]]], models: Sequence[str] = MODELS) -> str:
    """The markdown table: baseline headlines, then per variant and task each model's delta
    (points) with its rank change among the models (up = better rank). A deviation that requires
    another is compared with that other switched on alone."""
    base = results["midprobe"]
    lines = ["| choice | bug | task | " + " | ".join(models) + " |", "|---|---|---|" + "---|" * len(models)]
    for task in TASKS:
        lines.append(f"| `midprobe` (baseline, headline %) | | {task} | "
                     + " | ".join(f"{100 * base[task][m]:.1f}" for m in models) + " |")
    for variant in variants():
        dev = variant.deviation
        bug = "bug" if dev is not None and dev.bug else ""
        label = f"`{variant.key}`" + (f" — {dev.what}" if dev else "")
        if variant.measurable:
            lines.append(f"| {label} | {bug} | {', '.join(variant.tasks)} | "
                         + " | ".join(["—"] * (len(models) - 1)) + f" | not measured: {variant.measurable} |")
            continue
        if variant.key not in results or variant.key == "midprobe":
            continue
        prerequisite = "+".join(dev.requires) if dev is not None and dev.requires else ""
        if prerequisite:
            label += f" (against `{prerequisite}` alone)"
        for row, task in enumerate(variant.tasks):
            # a deviation that needs another is measured against that other alone (a DPT detail against the DPT)
            reference = results.get(f"{variant.key} (baseline)", results.get(prerequisite, {})).get(task, base[task])
            new = results[variant.key][task]
            old_rank, new_rank = _ranks(reference), _ranks(new)
            cells = []
            for m in models:
                delta = 100 * (new[m] - reference[m])
                moved = old_rank[m] - new_rank[m]
                arrow = f" ↑{moved}" if moved > 0 else f" ↓{-moved}" if moved < 0 else ""
                cells.append("–" if np.isnan(delta) else f"{delta:+.1f}{arrow}")
            lines.append(f"| {label if row == 0 else f'`{variant.key}`'} | {bug} | {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def references() -> str:
    """Every deviation, where the paper's code makes the choice, and what cannot be measured here."""
    lines = ["| choice | the paper's code | tasks | datasets | note |", "|---|---|---|---|---|"]
    for dev in DEVIATIONS:
        lines.append(f"| `{dev.key}`{' (bug)' if dev.bug else ''} | {dev.reference} | {', '.join(dev.tasks)} | "
                     f"{', '.join(dev.datasets) or 'all'} | {dev.note} |")
    return "\n".join(lines)


def write_readme(readme: Path, text: str) -> None:
    """Replace the block between the README's fidelity markers with ``text``."""
    start, end = README_MARKERS
    content = readme.read_text()
    if start not in content or end not in content:
        raise SystemExit(f"{readme} has no {start} ... {end} block")
    head, rest = content.split(start, 1)
    _, tail = rest.split(end, 1)
    readme.write_text(f"{head}{start}\n{text}\n{end}{tail}")


@exits_on_error
def main(argv: list[str] | None = None, prog: str = "python -m bench.fidelity") -> int:
    from midprobe import options

    p = options.command_parser(prog=prog, description=__doc__, parents=[
        options.data_option(default="data/fidelity", help="data root of the study (default data/fidelity)"),
        options.quiet_option()])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--only", help="comma-separated variant keys to run (with the baseline)")
    p.add_argument("--readme", help="README.md to write the table into (between its fidelity markers)")
    args = p.parse_args(argv)
    root = data_root(args.data)
    models = tuple(args.models.split(","))
    started = time.perf_counter()
    results = run_study(root=root, models=models, only=args.only.split(",") if args.only else None,
                        quiet=args.quiet)
    minutes = (time.perf_counter() - started) / 60
    text = (f"{table(results, models)}\n\n{references()}\n\n*Generated by `make fidelity` in {minutes:.1f} min "
            f"({time.strftime('%Y-%m-%d')}): synthetic set of {SIZES['train']} train / {SIZES['test']} test images "
            f"at {SIZES['size']} px, {SIZES['pairs']} pairs, {SIZES['triplets']} triplets; DPT hidden width "
            f"{OVERRIDES['hidden']}; seed 0 (the `midprobe, seed 1` row is the seed-to-seed noise).*")
    folder = root.ensure_writable(root.reports())
    (folder / "fidelity.md").write_text(text + "\n")
    if args.readme:
        write_readme(Path(args.readme), text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
