"""``make fidelity``: how much each of the paper's choices moves the numbers, told apart from noise.

On a small synthetic set with weight-free and random backbones, runs the default protocol
(``midprobe``), the ``paper`` protocol, and ``midprobe`` with each paper deviation switched on
alone (with the deviations it requires, e.g. a DPT detail with the DPT head, and then compared
with those alone). Every trained probe runs once per seed (``--seeds``, at least 3); a
deviation's effect on a (task, model) is the mean of the per-seed paired differences of the
headline metric (points) with its 95 % t-interval (:mod:`bench.fidelity_stats`); an effect whose
interval excludes 0 is marked, and the summary prose is generated from the marked effects only.
Zero-shot tasks train nothing, so their differences are exact and run once.

The page (``--page``, ``docs/fidelity.md`` under ``make fidelity``) is deterministic: the same
code gives the same page, byte for byte; the run's date and duration go to
``<data>/reports/fidelity.log``. The DPT's hidden width is 32 (512 otherwise) and the dense
losses are computed at every second target pixel, so the study fits about 15 minutes on two CPU
cores; absolute numbers are not comparable with the paper's — the effects say which choices
matter and in which direction.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from bench.fidelity_stats import Effect, paired_effect, prose, seed_spread
from cache import DataRoot, MidprobeError, data_root
from cache.errors import exits_on_error
from protocols import DEVIATIONS, MIDPROBE, PAPER, Deviation, Protocol, with_deviation

MODELS = ("pixels", "hog", "vit_b_random")
#: a CNN pyramid takes the DPT's CNN path: measured beside the others with the DPT head, and alone
#: where only that path changes (the other models' numbers cannot move there)
CNN_MODEL = "rn50_random"
CNN_VARIANTS = ("dpt-head",)
CNN_ONLY = ("dpt-cnn-inplace-relu",)
TASKS = ("depth", "normals", "segmentation", "correspondence", "similarity")
DENSE = ("depth", "normals", "segmentation")
SIZES = {"train": 64, "test": 32, "pairs": 16, "triplets": 48, "size": 64, "seed": 0}
#: every dense probe of the study (the baseline's too), on top of its protocol's choices
OVERRIDES = {"hidden": 32, "loss_stride": 2}
#: epochs (of 2 batches) per dense task, sized so each baseline's seed-to-seed spread is small against
#: the effects within ~15 min on two cores: at 15 epochs normals swung 3-23 % between seeds (pixels;
#: 22-25 % at 45) and DPT segmentation collapsed (IoU 0-8 %; 31-36 % at 45), both cheap to train
#: longer; depth's spread was 0.2-0.4 points at 15, and its 256-bin DPT probes are most of the time
EPOCHS = {"depth": 10, "normals": 45, "segmentation": 45}
SEEDS = (0, 1, 2)
#: bug fixes that hold under both protocols (no deviation: the protocols agree), listed on the page
COMMON_FIXES = (
    ("points behind the other camera", "a matched point of A behind camera B projects ~1e9 px away "
     "(the homogeneous coordinates are divided by max(z, 1e-9)), never to its mirror image in front, so it "
     "never counts as a correct 2-D match", "Probe3D @ a1f1464 evals/utils/correspondence.py L193-196 "
     "(project_3dto2d; the same in midvision-probe @ 984b325)"),
)


@dataclass
class Variant:
    """One protocol run of the study and the tasks it is run on (the rest equal the baseline's)."""

    key: str
    protocol: Protocol
    tasks: tuple[str, ...]
    deviation: Deviation | None = None
    options: dict[str, Any] = field(default_factory=dict)
    measurable: str = ""             # why it cannot be measured on the synthetic set ("" = it can)

    def models(self, models: Sequence[str]) -> tuple[str, ...]:
        if self.key in CNN_ONLY:
            return (CNN_MODEL,)
        return (*models, CNN_MODEL) if self.key in CNN_VARIANTS else tuple(models)

    @property
    def reference(self) -> str:
        """The variant it is compared with: the deviations it requires alone, else the baseline."""
        if self.options:
            return f"{self.key} (baseline)"
        return "+".join(self.deviation.requires) if self.deviation and self.deviation.requires else "midprobe"


def variants() -> list[Variant]:
    """Baseline, paper, and one variant per deviation."""
    out = [Variant("midprobe", MIDPROBE, TASKS), Variant("paper", PAPER, TASKS)]
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


def _probe(job: tuple[str, str, str, int, dict[str, Any], tuple[str, ...], dict[str, Any]]
           ) -> tuple[str, str, int, dict[str, float]]:
    """One (variant, task, seed) of the study in a worker process: one torch thread, so the workers
    fill the cores without fighting over them."""
    import torch

    from probe.run import run_task

    key, task, root_path, seed, options, models, overrides = job
    torch.set_num_threads(1)
    # protocols hold mapping proxies, which do not pickle: a worker looks its variant up by key
    protocol = MIDPROBE if key.endswith(" (baseline)") else {v.key: v.protocol for v in variants()}[key]
    rows = run_task(task_name=task, dataset="synthetic", models=list(models), protocol=protocol,
                    overrides=overrides if task in DENSE else {}, seed=seed, root=data_root(root_path), quiet=True,
                    options=options if task == "correspondence" else None)
    return key, task, seed, {m: _headline(rows, m) for m in models}


def _chosen(only: Sequence[str] | None) -> list[Variant]:
    chosen = [v for v in variants() if not v.measurable]
    if not only:
        return chosen
    known = {v.key for v in chosen}
    unknown = [k for k in only if k not in known]
    if unknown:
        raise MidprobeError(f"--only {','.join(unknown)}: not a measurable variant; expected some of {', '.join(known)}")
    wanted = {"midprobe", *only}
    wanted |= {v.reference for v in chosen if v.key in wanted and not v.options}
    return [v for v in chosen if v.key in wanted]


def run_study(*, root: DataRoot, models: Sequence[str] = MODELS, seeds: Sequence[int] = SEEDS,
              only: Sequence[str] | None = None, workers: int | None = None,
              epochs: Mapping[str, int] | int | None = None, quiet: bool = True) -> dict[str, dict[str, dict[str, list[float]]]]:
    """Headlines ``{variant: {task: {model: [value per seed]}}}`` of every measurable variant (a
    zero-shot task: one value, from the first seed).

    Extraction runs first, in this process (each variant's feature splits, once); then every
    (variant, task, seed) probe runs in a pool of ``workers`` processes (default: one per core).
    Dense probes train ``epochs`` epochs (per task; default :data:`EPOCHS`) with :data:`OVERRIDES`.
    """
    import multiprocessing as mp
    import os

    from extract.datasets import prepare
    from extract.runner import extract

    say = (lambda m: None) if quiet else (lambda m: print(m, file=sys.stderr, flush=True))
    chosen = _chosen(only)
    if not (root.dataset_store("synthetic") / "zarr.json").exists():
        prepare("synthetic", root=root, progress=False, contact_sheet=False, workers=1, **SIZES)
    started = time.perf_counter()
    for variant in chosen:
        for model in variant.models(models):
            extract(model=model, dataset="synthetic", protocol=variant.protocol, root=root, progress=False,
                    tasks=list(variant.tasks))
    say(f"[fidelity] extraction: {time.perf_counter() - started:.0f} s")
    by_task = epochs_by_task(epochs)
    costed = []
    for v in chosen:
        for task in v.tasks:
            overrides = {**OVERRIDES, "epochs": by_task[task]} if task in DENSE else {}
            cost = _cost(v.protocol, task, len(v.models(models)), by_task)
            for seed in (seeds if task in DENSE else seeds[:1]):
                costed.append((cost, (v.key, task, str(root.root), seed, v.options, v.models(models), overrides)))
        if v.options:
            costed.append((0.0, (f"{v.key} (baseline)", "correspondence", str(root.root), seeds[0], v.options,
                                 tuple(models), {})))
    # the longest first, so the pool's processes end together
    jobs = [job for _, job in sorted(costed, key=lambda c: -c[0])]
    results: dict[str, dict[str, dict[str, dict[int, float]]]] = {}
    with mp.get_context("fork").Pool(workers or os.cpu_count() or 1) as pool:
        for done, (key, task, seed, headlines) in enumerate(pool.imap_unordered(_probe, jobs), start=1):
            for model, value in headlines.items():
                results.setdefault(key, {}).setdefault(task, {}).setdefault(model, {})[seed] = value
            say(f"[fidelity] {done}/{len(jobs)} {key} / {task} / seed {seed}: {time.perf_counter() - started:.0f} s")
    return {key: {task: {m: [by_seed[s] for s in sorted(by_seed)] for m, by_seed in per_model.items()}
                  for task, per_model in per_task.items()} for key, per_task in results.items()}


def epochs_by_task(epochs: Mapping[str, int] | int | None = None) -> dict[str, int]:
    """Epochs per dense task: :data:`EPOCHS`, or one number for every task."""
    if epochs is None:
        return dict(EPOCHS)
    if isinstance(epochs, int):
        return {task: epochs for task in DENSE}
    return {task: int(epochs[task]) for task in DENSE}


def _cost(protocol: Protocol, task: str, models: int, epochs: Mapping[str, int]) -> float:
    """A job's relative duration, for ordering the pool: DPT heads (the 256 depth bins most) over
    linear ones, per model and epoch; a zero-shot task costs next to nothing."""
    if task not in DENSE:
        return 0.0
    dpt = "dpt" in protocol.dense_choices(task).heads
    return models * epochs[task] * (4 if dpt else 1) * (3 if task == "depth" else 1)


def effects(results: dict[str, dict[str, dict[str, list[float]]]]) -> dict[str, dict[str, dict[str, Effect]]]:
    """``{variant: {task: {model: Effect}}}`` against each variant's reference, paired by seed."""
    out: dict[str, dict[str, dict[str, Effect]]] = {}
    for variant in variants():
        if variant.key not in results or variant.key == "midprobe":
            continue
        reference = results.get(variant.reference, {})
        for task in variant.tasks:
            new, old = results[variant.key].get(task, {}), reference.get(task, {})
            out.setdefault(variant.key, {})[task] = {
                m: paired_effect(new[m], old[m], exact=task not in DENSE) for m in new if m in old}
    return out


def table(results: dict[str, dict[str, dict[str, list[float]]]], models: Sequence[str] = MODELS) -> str:
    """The markdown table: the baseline's headlines (mean ± seed-to-seed sd, %), then per variant and
    task each model's effect (points, mean ± 95 % half-width; bold ✱ = the interval excludes 0)."""
    columns = (*models, CNN_MODEL)
    base = results["midprobe"]
    found = effects(results)
    lines = ["| choice | bug | task | " + " | ".join(columns) + " |", "|---|---|---|" + "---|" * len(columns)]
    for task in TASKS:
        cells = []
        for m in columns:
            values = base.get(task, {}).get(m)
            cells.append("–" if not values else f"{100 * sum(values) / len(values):.1f}" +
                         (f" ± {seed_spread(values):.1f}" if task in DENSE else " (exact)"))
        lines.append(f"| `midprobe` (baseline: headline %, ± seed sd) | | {task} | " + " | ".join(cells) + " |")
    for variant in variants():
        dev = variant.deviation
        bug = "bug" if dev is not None and dev.bug else ""
        label = f"`{variant.key}`" + (f" — {dev.what}" if dev else "")
        if variant.measurable:
            lines.append(f"| {label} | {bug} | {', '.join(variant.tasks)} | "
                         + " | ".join(["—"] * (len(columns) - 1)) + f" | not measured: {variant.measurable} |")
            continue
        if variant.key not in found:
            continue
        if variant.reference != "midprobe":
            label += f" (against `{variant.reference}`)"
        for row, task in enumerate(variant.tasks):
            by_model = found[variant.key].get(task, {})
            cells = [by_model[m].cell() if m in by_model else "–" for m in columns]
            lines.append(f"| {label if row == 0 else f'`{variant.key}`'} | {bug} | {task} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def references() -> str:
    """Every deviation, where the paper's code makes the choice, and what cannot be measured here."""
    lines = ["| choice | the paper's code | tasks | datasets | note |", "|---|---|---|---|---|"]
    for dev in DEVIATIONS:
        lines.append(f"| `{dev.key}`{' (bug)' if dev.bug else ''} | {dev.reference} | {', '.join(dev.tasks)} | "
                     f"{', '.join(dev.datasets) or 'all'} | {dev.note} |")
    return "\n".join(lines)


def page(results: dict[str, dict[str, dict[str, list[float]]]], *, models: Sequence[str] = MODELS,
         seeds: Sequence[int] = SEEDS, epochs: Mapping[str, int] | int | None = None) -> str:
    """The whole generated page (no dates or times: the same results give the same bytes)."""
    by_task = epochs_by_task(epochs)
    batches = -(-SIZES['train'] // 32)
    trained = ", ".join(f"{task} {by_task[task]} epochs ({by_task[task] * batches} steps)" for task in DENSE)
    unmeasured = [v.key for v in variants() if v.measurable]
    fixes = "\n".join(f"- **{name}**: {what} ({where})." for name, what, where in COMMON_FIXES)
    return f"""# What each of the paper's choices does to the numbers

<!-- generated by `make fidelity` (bench/fidelity.py); do not edit by hand -->

`make fidelity` runs `midprobe`, `paper`, and `midprobe` with each deviation of `protocols/registry.py`
switched on alone (a deviation that needs another — a DPT detail needs the DPT head — is switched on
with it and compared with it alone), on the synthetic set: {SIZES['train']} train / {SIZES['test']} test
images at {SIZES['size']} px, {SIZES['pairs']} pairs, {SIZES['triplets']} triplets; backbones {', '.join(models)}
(and {CNN_MODEL} for the DPT's CNN path). Dense probes train
{trained},
with DPT hidden width {OVERRIDES['hidden']} and the loss at one target pixel in {OVERRIDES['loss_stride']} × {OVERRIDES['loss_stride']},
once per seed ({', '.join(map(str, seeds))}); each task's epochs are sized so that its baseline's
seed-to-seed spread is small against the effects.

Each cell is a deviation's effect on the headline metric, in points: the mean over seeds of the
paired difference (variant − reference, same seed) ± the half-width of its 95 % t-interval.
**Bold ✱** marks an effect whose interval excludes 0. Zero-shot tasks (correspondence, similarity)
train nothing, so their differences are exact (marked when they show at one decimal). Absolute
numbers are not comparable with the paper's; read which choices matter and in which direction.

## Summary

{prose(effects(results), models=models, unmeasured=unmeasured)}

## Effects

{table(results, models)}

## Fixed under both protocols

{fixes}

## Where the paper's code makes each choice

{references()}
"""


def _saved_results(path: Path) -> dict[str, Any]:
    """A run's ``fidelity-results.json``, checked for the keys the page needs."""
    try:
        saved = json.loads(path.read_text())
        assert {"models", "seeds", "epochs", "results"} <= set(saved) and "midprobe" in saved["results"]
    except (OSError, ValueError, TypeError, AssertionError):
        raise MidprobeError(f"--from-results {path}: expected the fidelity-results.json a `make fidelity` run "
                            "wrote under <data>/reports/") from None
    try:
        epochs = epochs_by_task(saved["epochs"])
    except (KeyError, TypeError, ValueError):
        raise MidprobeError(f"--from-results {path}: its epochs {saved['epochs']!r} are not a number or one per "
                            f"dense task ({', '.join(DENSE)})") from None
    return {**saved, "models": tuple(saved["models"]), "epochs": epochs}


@exits_on_error
def main(argv: list[str] | None = None, prog: str = "python -m bench.fidelity") -> int:
    from midprobe import options

    p = options.command_parser(prog=prog, description=__doc__, parents=[
        options.data_option(default="data/fidelity", help="data root of the study (default data/fidelity)"),
        options.quiet_option()])
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--seeds", default=",".join(map(str, SEEDS)),
                   help="comma-separated seeds, at least 3 (default 0,1,2)")
    p.add_argument("--only", help="comma-separated variant keys to run (with the baseline and their references)")
    p.add_argument("--page", help="the page to write (make fidelity: docs/fidelity.md)")
    p.add_argument("--from-results", metavar="JSON",
                   help="write the page from a run's saved headlines (<data>/reports/fidelity-results.json) "
                        "instead of running the study (after a change to the page's wording)")
    p.add_argument("--workers", type=int, help="probe processes (default: one per core)")
    p.add_argument("--epochs", type=int,
                   help="epochs of every dense probe (default per task: "
                        + ", ".join(f"{task} {n}" for task, n in EPOCHS.items()) + ")")
    args = p.parse_args(argv)
    try:
        seeds = sorted({int(s) for s in args.seeds.split(",") if s.strip()})
    except ValueError:
        raise MidprobeError(f"--seeds {args.seeds!r}: expected comma-separated integers, e.g. 0,1,2") from None
    if args.epochs is not None and args.epochs < 1:
        raise MidprobeError(f"--epochs {args.epochs}: expected a positive number of epochs")
    if len(seeds) < 3:
        raise MidprobeError(f"--seeds {args.seeds!r}: a 95 % interval paired by seed needs at least 3 seeds, "
                            "e.g. 0,1,2")
    root = data_root(args.data)
    models = tuple(args.models.split(","))
    epochs = epochs_by_task(args.epochs)
    started = time.perf_counter()
    if args.from_results:
        saved = _saved_results(Path(args.from_results))
        models, seeds, epochs, results = saved["models"], saved["seeds"], saved["epochs"], saved["results"]
    else:
        results = run_study(root=root, models=models, seeds=seeds, only=args.only.split(",") if args.only else None,
                            workers=args.workers, epochs=epochs, quiet=args.quiet)
    folder = root.ensure_writable(root.reports())       # after the study's checks: a refused run writes nothing
    if not args.from_results:
        # the headlines the page is made of, so a wording change regenerates it without the study
        (folder / "fidelity-results.json").write_text(json.dumps(
            {"models": list(models), "seeds": list(seeds), "epochs": epochs, "results": results},
            indent=1, sort_keys=True) + "\n")
    text = page(results, models=models, seeds=seeds, epochs=epochs)
    (folder / "fidelity.md").write_text(text)
    if args.page:
        Path(args.page).parent.mkdir(parents=True, exist_ok=True)
        Path(args.page).write_text(text)
    minutes = (time.perf_counter() - started) / 60
    # CPU time of this process and its workers: over the core count, the wall time on an idle machine
    cpu = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
              for f in ("ru_utime", "ru_stime")) / 60
    line = (f"{time.strftime('%Y-%m-%d %H:%M:%S')} make fidelity: {minutes:.1f} min wall, {cpu:.1f} min CPU on "
            f"{os.cpu_count()} cores (load average {os.getloadavg()[0]:.1f}), seeds {','.join(map(str, seeds))}, "
            f"epochs {', '.join(f'{task} {n}' for task, n in epochs.items())}, models {','.join(models)}, page {args.page or '-'}"
            + (f", from {args.from_results}" if args.from_results else ""))
    with open(folder / "fidelity.log", "a") as log:
        log.write(line + "\n")
    print(text)
    print(f"[fidelity] {line} (logged in {folder / 'fidelity.log'})", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
