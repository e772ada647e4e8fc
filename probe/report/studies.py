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


def _values(records: Iterable[Mapping[str, Any]]) -> dict[tuple, list[float]]:
    """Headlines by (group, model, base probe, subset size or None, corruption or "")."""
    out: dict[tuple, list[float]] = defaultdict(list)
    for r in records:
        value = r.get("headline")
        if value is None or not np.isfinite(value):
            continue
        config = r.get("config", {})
        size = (config.get("train_subset") or {}).get("images")
        out[(_group(r), r["model"], base_probe(r), size, config.get("test_corruption") or "")].append(float(value))
    return out


def _best_base(values: Mapping[tuple, list[float]], group: tuple, model: str, bases: set[str]) -> str:
    """The probe configuration with the best full-data clean mean (any, if none has one)."""
    def score(base: str) -> float:
        clean = values.get((group, model, base, None, ""))
        return float(np.mean(clean)) if clean else -math.inf
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
        points = {n: values[(group, model, base, n, "")] for n in sizes}
        if (group, model, base, None, "") in values:
            points[full_size] = values[(group, model, base, None, "")]
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
            mean = np.array([100 * np.mean(points[n]) for n in sizes])
            std = np.array([100 * np.std(points[n]) for n in sizes])
            ax.plot(sizes, mean, marker="o", ms=3, lw=1.2, label=model)
            ax.fill_between(sizes, mean - std, mean + std, alpha=0.2)
            full = points.get(full_size)
            if full is None or np.mean(full) <= 0:
                needed = ["–"] * len(TARGETS)
                full_text = "–" if full is None else f"{100 * np.mean(full):.1f}"
            else:
                needed = [labels_needed([float(n) for n in sizes], list(mean), x * 100 * np.mean(full))
                          for x in TARGETS]
                full_text = f"{100 * np.mean(full):.1f}"
            seeds = max(len(v) for v in points.values())
            rows.append(f"| {model} | `{base}` | {full_text} ({full_size}) | " + " | ".join(needed) + f" | {seeds} |")
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
                  "mean ± std over seeds (each seed its own nested subsets and head initialisation); the last "
                  "point is the whole train split.", "", f"![label efficiency](figures/{path.name})", "",
                  "| model | probe | full-data score (images) | "
                  + " | ".join(f"labels for {100 * x:.0f} %" for x in TARGETS) + " | seeds |",
                  "|---|---|---|" + "---|" * len(TARGETS) + "---|", *rows, ""]
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
        table: dict[tuple[str, str], dict[int, tuple[float, float]]] = defaultdict(dict)
        clean_of = {}
        for model in sorted({r["model"] for r in mine}):
            base = _best_base(values, group, model, {base_probe(r) for r in mine if r["model"] == model})
            clean = values.get((group, model, base, None, ""))
            clean_of[model] = (base, clean)
            for key, vals in values.items():
                if key[:4] == (group, model, base, None) and key[4]:
                    name, severity = _severity(key[4])
                    table[model, name][severity] = (float(np.mean(vals)), float(np.std(vals)))
        fig, axes = plt.subplots(1, len(names), figsize=(2.8 * len(names) + 0.8, 3.0), dpi=110, squeeze=False,
                                 sharey=True)
        rows = []
        for ax, name in zip(axes[0], names):
            for model, (base, clean) in clean_of.items():
                points = dict(table.get((model, name), {}))
                if clean:
                    points.setdefault(0, (float(np.mean(clean)), float(np.std(clean))))
                xs = sorted(points)
                ax.errorbar(xs, [100 * points[s][0] for s in xs], yerr=[100 * points[s][1] for s in xs],
                            marker="o", ms=3, lw=1.2, capsize=2, label=model)
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
            clean_mean = float(np.mean(clean)) if clean else float("nan")
            for name in names:
                cells = []
                for severity in severities:
                    cell = table.get((model, name), {}).get(severity)
                    cells.append("–" if cell is None or not clean or clean_mean == 0
                                 else f"{100 * (clean_mean - cell[0]) / abs(clean_mean):.1f} %")
                rows.append(f"| {model} | {name} | " + ("–" if not clean else f"{100 * clean_mean:.1f}")
                            + " | " + " | ".join(cells) + " |")
        how = ("zero-shot on clean and corrupted features" if head == "zero-shot" else
               "for heads trained on clean features (the same heads, scored on both)")
        lines += [f"## Robustness — {column}, {protocol} protocol, {_heads(head)}", "",
                  f"Relative drop of the headline ({metric}) on corrupted test images, "
                  f"(clean − corrupted) / |clean|, {how}; mean over seeds. Positive = worse.", "", f"![robustness](figures/{path.name})", "",
                  "| model | corruption | clean (%) | " + " | ".join(f"severity {s}" for s in severities) + " |",
                  "|---|---|---|" + "---|" * len(severities), *rows, ""]
    return lines


def study_sections(records: list[Mapping[str, Any]], figures: Path) -> list[str]:
    """Markdown lines of every study section the records support (none without study records)."""
    return label_efficiency(records, figures) + robustness(records, figures)
