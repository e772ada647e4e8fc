"""The report's study sections: label efficiency (``--train-images``) and robustness (``--test-corrupt``).

Study records are recognised by their config: ``train_subset`` (a head trained on a nested
subset of the train split) or ``test_corruption`` (a head scored on a corrupted test split).
They stay out of the leaderboards (:func:`is_study_record`); here they become, per protocol,
head type and ``task (dataset)``:

- label efficiency — the headline against the number of labelled training images (log x), one
  line per model with a mean ± std band over seeds, and the labels needed to reach 50 % and
  90 % of the full-data score (interpolated log-linearly between measured sizes);
- robustness — the relative drop of the headline per corruption and severity, and a figure of
  the headline against severity per corruption (severity 0 = the clean test split).

For a model with several probe configurations (learning rates, layer sets) the one with the best
full-data clean mean is shown, as in the leaderboards.
"""

from __future__ import annotations

import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Iterable, Mapping

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from probe.records import column_of  # noqa: E402
from probe.report.intervals import interval, paired_difference, runs_of  # noqa: E402

SUBSET_TRAINING = ("Each subset is trained for the same number of epochs as the whole split (so a subset of n of N "
                   "images takes about n/N of its optimiser steps): the protocols define training in epochs, and "
                   "the same steps on a small subset would repeat each image many more times, measuring "
                   "overfitting as much as labels; a ridge head is fitted in closed form on each subset.")


def _steps(records: Iterable[Mapping[str, Any]]) -> str:
    steps = sorted({(r.get("training") or {}).get("steps") for r in records} - {None})
    return "closed form" if not steps else "/".join(str(s) for s in steps)


#: The fractions of the full-data score the label-efficiency table asks for.
TARGETS = (0.5, 0.9)


def _slug(text: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in text).strip("_")


def is_study_record(record: Mapping[str, Any]) -> bool:
    """A record of a training subset or a corrupted test split (not a leaderboard entry)."""
    config = record.get("config", {})
    return bool(config.get("train_subset") or config.get("test_corruption"))


def base_probe(record: Mapping[str, Any]) -> str:
    """The probe's key without its study conditions (``-n<size>``, ``@corrupt-...``)."""
    config = record.get("config", {})
    key = record["probe"].split("@corrupt-")[0]
    subset = config.get("train_subset")
    return key.removesuffix(f"-n{subset['images']}") if subset else key


def _group(record: Mapping[str, Any]) -> tuple[str, str, str]:
    return (record.get("protocol", "midprobe"), record.get("config", {}).get("head") or "zero-shot",
            column_of(record))


def _values(records: Iterable[Mapping[str, Any]]) -> dict[tuple, dict[int, Mapping[str, Any]]]:
    """Records by (group, model, base probe, subset size or None, corruption or ""), then by seed —
    so that what a study compares is compared seed by seed (:func:`paired`)."""
    out: dict[tuple, dict[int, Mapping[str, Any]]] = defaultdict(dict)
    for r in records:
        value = r.get("headline")
        if value is None or not np.isfinite(value):
            continue
        config = r.get("config", {})
        size = (config.get("train_subset") or {}).get("images")
        out[(_group(r), r["model"], base_probe(r), size, config.get("test_corruption") or "")][r.get("seed", 0)] = r
    return out


def paired(a: Mapping[int, Mapping[str, Any]], b: Mapping[int, Mapping[str, Any]]) -> tuple[list, list]:
    """The records of ``a`` and ``b`` restricted to the seeds both ran, in seed order."""
    seeds = sorted(set(a) & set(b))
    return [a[s] for s in seeds], [b[s] for s in seeds]


def _mean(records: Iterable[Mapping[str, Any]]) -> float:
    return float(np.mean([r["headline"] for r in records]))


def _interval_text(records: list[Mapping[str, Any]]) -> str:
    bounds = interval(runs_of(records))
    return "" if bounds is None else f" [{100 * bounds[0]:.1f}, {100 * bounds[1]:.1f}]"


def _best_base(values: Mapping[tuple, Mapping[int, Any]], group: tuple, model: str, bases: set[str]) -> str:
    """The probe configuration with the best full-data clean mean (any, if none has one)."""
    def score(base: str) -> float:
        clean = values.get((group, model, base, None, ""))
        return _mean(clean.values()) if clean else -math.inf
    return max(sorted(bases), key=score)


def labels_needed(sizes: list[float], means: list[float], target: float) -> str:
    """The smallest number of labels at which the mean curve reaches ``target``, interpolated
    linearly in log(size) between the measured sizes: ``"≈ n"``, ``"≤ n"`` when the smallest
    measured size already reaches it, ``"> n"`` when no measured size does."""
    if means[0] >= target:
        return f"≤ {sizes[0]:g}"
    for (n0, y0), (n1, y1) in zip(zip(sizes, means), zip(sizes[1:], means[1:])):
        if y1 >= target > y0:
            log_n = math.log(n0) + (target - y0) / (y1 - y0) * (math.log(n1) - math.log(n0))
            return f"≈ {math.exp(log_n):.0f}"
    return f"> {sizes[-1]:g}"


def _curves(values: Mapping[tuple, list[float]], group: tuple, records: list[Mapping[str, Any]]):
    """Per model: sizes (the full split last), per-size seed values, and the full-data size."""
    out = {}
    for model in sorted({r["model"] for r in records if _group(r) == group}):
        mine = [r for r in records if _group(r) == group and r["model"] == model]
        base = _best_base(values, group, model, {base_probe(r) for r in mine})
        full_size = max(r["config"]["train_subset"]["of"] for r in mine if base_probe(r) == base)
        sizes = sorted({k[3] for k in values if k[:3] == (group, model, base) and k[3] and not k[4]})
        points = {n: [values[(group, model, base, n, "")][s] for s in sorted(values[(group, model, base, n, "")])]
                  for n in sizes}
        full = values.get((group, model, base, None, ""))
        if full:
            # the full-data point over the seeds its subsets ran (seed by seed), not every seed it has
            subset_seeds = {s for n in sizes for s in values[(group, model, base, n, "")]}
            points[full_size] = [full[s] for s in sorted(full) if s in subset_seeds] or [full[s] for s in sorted(full)]
        out[model] = (base, full_size, points)
    return out


def label_efficiency(records: list[Mapping[str, Any]], figures: Path) -> list[str]:
    """The label-efficiency sections (empty without subset records)."""
    subsets = [r for r in records if r.get("config", {}).get("train_subset") and
               not r.get("config", {}).get("test_corruption")]
    if not subsets:
        return []
    values = _values(records)
    lines = []
    for group in sorted({_group(r) for r in subsets}):
        protocol, head, column = group
        curves = _curves(values, group, subsets)
        fig, ax = plt.subplots(figsize=(4.6, 3.4), dpi=110)
        rows = []
        for model, (base, full_size, points) in curves.items():
            sizes = sorted(points)
            mean = np.array([100 * _mean(points[n]) for n in sizes])
            bounds = [interval(runs_of(points[n])) for n in sizes]
            low = np.array([100 * b[0] if b else m for b, m in zip(bounds, mean)])
            high = np.array([100 * b[1] if b else m for b, m in zip(bounds, mean)])
            ax.plot(sizes, mean, marker="o", ms=3, lw=1.2, label=model)
            ax.fill_between(sizes, low, high, alpha=0.2)
            full = points.get(full_size)
            if full is None or _mean(full) <= 0:
                needed = ["–"] * len(TARGETS)
                full_text = "–" if full is None else f"{100 * _mean(full):.1f}"
            else:
                needed = [labels_needed([float(n) for n in sizes], list(mean), x * 100 * _mean(full))
                          for x in TARGETS]
                full_text = f"{100 * _mean(full):.1f}{_interval_text(full)}"
            seeds = ", ".join(str(s) for s in sorted({r.get("seed", 0) for v in points.values() for r in v}))
            steps = " / ".join(_steps(points[n]) for n in sizes)
            rows.append(f"| {model} | `{base}` | {full_text} ({full_size}) | " + " | ".join(needed)
                        + f" | {seeds} | {steps} |")
        ax.set_xscale("log")
        ticks = sorted({n for _, _, points in curves.values() for n in points})
        ax.set_xticks(ticks, [str(n) for n in ticks], fontsize=7)
        ax.minorticks_off()
        ax.set_xlabel("labelled training images (log)")
        ax.set_ylabel(f"{_metric(subsets, column)} (%)")
        ax.set_title(f"Label efficiency: {column}\n{protocol} protocol, {head} heads", fontsize=8)
        ax.legend(fontsize=6)
        fig.tight_layout()
        path = figures / f"label_efficiency_{_slug(protocol)}_{_slug(head)}_{_slug(column)}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        lines += [f"## Label efficiency — {column}, {protocol} protocol, {head} heads", "",
                  f"Headline ({_metric(subsets, column)}, %) against the number of labelled training images, "
                  "mean over seeds with its 95 % interval as the band (each seed its own nested subsets and head "
                  "initialisation); the last point is the whole train split, averaged over the same seeds as the "
                  f"subsets (seed by seed). {SUBSET_TRAINING} A curve whose bands overlap is flat within noise.", "",
                  f"![label efficiency](figures/{path.name})", "",
                  "| model | probe | full-data score [95 %] (images) | "
                  + " | ".join(f"labels for {100 * x:.0f} %" for x in TARGETS) + " | seeds | steps per size |",
                  "|---|---|---|" + "---|" * len(TARGETS) + "---|---|", *rows, ""]
    return lines


def _metric(records: Iterable[Mapping[str, Any]], column: str) -> str:
    return next(r["headline_metric"] for r in records if column_of(r) == column)


def _heads(head: str) -> str:
    return head if head == "zero-shot" else f"{head} heads"


def _severity(corruption: str) -> tuple[str, int]:
    """``"fog:3"`` -> ``("fog", 3)``; a seed other than 0 stays in the name (``"fog (seed 1)"``)."""
    name, severity, *seed = corruption.split(":")
    return (f"{name} (seed {seed[0]})" if seed else name), int(severity)


def robustness(records: list[Mapping[str, Any]], figures: Path) -> list[str]:
    """The robustness sections (empty without corrupted-test records)."""
    corrupted = [r for r in records if r.get("config", {}).get("test_corruption") and
                 not r.get("config", {}).get("train_subset")]
    if not corrupted:
        return []
    values = _values(records)
    lines = []
    for group in sorted({_group(r) for r in corrupted}):
        protocol, head, column = group
        metric = _metric(corrupted, column)
        mine = [r for r in corrupted if _group(r) == group]
        names = sorted({_severity(r["config"]["test_corruption"])[0] for r in mine})
        severities = sorted({_severity(r["config"]["test_corruption"])[1] for r in mine})
        # per model, corruption and severity: the clean and corrupted records of the seeds both ran
        table: dict[tuple[str, str], dict[int, tuple[list, list]]] = defaultdict(dict)
        clean_of = {}
        for model in sorted({r["model"] for r in mine}):
            base = _best_base(values, group, model, {base_probe(r) for r in mine if r["model"] == model})
            clean = values.get((group, model, base, None, ""))
            clean_of[model] = (base, [clean[s] for s in sorted(clean)] if clean else [])
            for key, vals in values.items():
                if key[:4] == (group, model, base, None) and key[4]:
                    name, severity = _severity(key[4])
                    table[model, name][severity] = paired(clean or {}, vals)
        fig, axes = plt.subplots(1, len(names), figsize=(2.8 * len(names) + 0.8, 3.0), dpi=110, squeeze=False,
                                 sharey=True)
        rows = []
        for ax, name in zip(axes[0], names):
            for model, (base, clean) in clean_of.items():
                points = {s: pair[1] for s, pair in table.get((model, name), {}).items() if pair[1]}
                if clean:
                    points.setdefault(0, clean)
                xs = sorted(points)
                ys = np.array([100 * _mean(points[s]) for s in xs])
                bounds = [interval(runs_of(points[s])) for s in xs]
                errors = np.array([[y - 100 * b[0], 100 * b[1] - y] if b else [0.0, 0.0]
                                   for y, b in zip(ys, bounds)]).reshape(-1, 2).T
                ax.errorbar(xs, ys, yerr=errors, marker="o", ms=3, lw=1.2, capsize=2, label=model)
            ax.set_title(name, fontsize=8)
            ax.set_xlabel("severity (0 = clean)")
            ax.set_xticks(sorted({0, *severities}))
        axes[0][0].set_ylabel(f"{metric} (%)")
        axes[0][-1].legend(fontsize=6)
        fig.suptitle(f"Robustness: {column} — {protocol} protocol, {_heads(head)}", fontsize=8)
        fig.tight_layout()
        path = figures / f"robustness_{_slug(protocol)}_{_slug(head)}_{_slug(column)}.png"
        fig.savefig(path, bbox_inches="tight")
        plt.close(fig)
        for model, (base, clean) in clean_of.items():
            for name in names:
                cells = [_drop(table.get((model, name), {}).get(severity)) for severity in severities]
                rows.append(f"| {model} | {name} | " + ("–" if not clean else f"{100 * _mean(clean):.1f}"
                                                         f"{_interval_text(clean)}")
                            + " | " + " | ".join(cells) + " |")
        how = ("zero-shot on clean and corrupted features" if head == "zero-shot" else
               "for heads trained on clean features (the same heads, scored on both)")
        lines += [f"## Robustness — {column}, {protocol} protocol, {_heads(head)}", "",
                  f"Relative drop of the headline ({metric}) on corrupted test images, "
                  f"(clean − corrupted) / |clean|, {how}; clean and corrupted paired seed by seed (the mean "
                  "over the seeds both ran, named as `(seeds …)`), with the 95 % "
                  "interval of the drop from a paired bootstrap over the test images. Positive = worse.", "",
                  f"![robustness](figures/{path.name})", "",
                  "| model | corruption | clean (%) | " + " | ".join(f"severity {s}" for s in severities) + " |",
                  "|---|---|---|" + "---|" * len(severities), *rows, ""]
    return lines


def _drop(pair: tuple[list, list] | None) -> str:
    """A relative drop cell from paired clean and corrupted records: ``x.x % [lo, hi]``."""
    if pair is None or not pair[0]:
        return "–"
    clean, corrupted = pair
    base = _mean(clean)
    if base == 0:
        return "–"
    text = f"{100 * (base - _mean(corrupted)) / abs(base):.1f} %"
    bounds = paired_difference(runs_of(clean), runs_of(corrupted))
    if bounds is not None:
        text += f" [{100 * bounds[0] / abs(base):.1f}, {100 * bounds[1] / abs(base):.1f}]"
    return text + f" (seeds {', '.join(str(r.get('seed', 0)) for r in clean)})"


def study_sections(records: list[Mapping[str, Any]], figures: Path) -> list[str]:
    """Markdown lines of every study section the records support (none without study records)."""
    return label_efficiency(records, figures) + robustness(records, figures)
