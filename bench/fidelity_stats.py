"""The fidelity study's statistics: effects paired by seed, their 95 % intervals, and the prose
generated from the effects whose interval excludes zero.

An effect of a deviation on one (task, model) is the mean over seeds of the per-seed paired
difference ``variant(seed) - reference(seed)`` (points of the headline metric); its 95 %
interval is the t-interval ``mean ± t(0.975, n - 1) · sd / sqrt(n)`` over those ``n``
differences. A zero-shot task has no seed (nothing is trained), so its difference is exact.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

#: two-sided 95 % quantiles of Student's t, t(0.975, df), for df = 1..30
T975 = (12.7062, 4.3027, 3.1824, 2.7764, 2.5706, 2.4469, 2.3646, 2.3060, 2.2622, 2.2281, 2.2010, 2.1788,
        2.1604, 2.1448, 2.1314, 2.1199, 2.1098, 2.1009, 2.0930, 2.0860, 2.0796, 2.0739, 2.0687, 2.0639,
        2.0595, 2.0555, 2.0518, 2.0484, 2.0452, 2.0423)

#: an exact (zero-shot) difference smaller than this many points shows as 0.0 and is not marked
EXACT_FLOOR = 0.05


def t975(df: int) -> float:
    """t(0.975, df); beyond the table, the normal quantile with a first-order df correction."""
    if df < 1:
        raise ValueError(f"a t-interval needs at least 2 paired differences (df >= 1), got df = {df}")
    return T975[df - 1] if df <= len(T975) else 1.959964 * (1 + 1 / (4 * df))


@dataclass(frozen=True)
class Effect:
    """One deviation's effect on one (task, model), in points.

    ``half``: half-width of the 95 % interval (0 for an exact zero-shot difference);
    ``significant``: the interval excludes 0 (an exact difference: it shows at one decimal).
    """

    mean: float
    half: float
    n: int
    exact: bool = False

    @property
    def significant(self) -> bool:
        if math.isnan(self.mean):
            return False
        if self.exact:
            return abs(self.mean) >= EXACT_FLOOR
        return abs(self.mean) > self.half

    def cell(self) -> str:
        """``+3.1 ± 0.8 **`` style markdown: the mean, the interval's half-width, ``*`` when significant."""
        if math.isnan(self.mean):
            return "–"
        text = f"{self.mean:+.1f}" if self.exact else f"{self.mean:+.1f} ± {self.half:.1f}"
        return f"**{text}** ✱" if self.significant else text


def paired_effect(new: Sequence[float], old: Sequence[float], *, exact: bool = False) -> Effect:
    """The effect of ``new`` against ``old`` (fractions, one per seed, in the same seed order), in points."""
    if len(new) != len(old) or not new:
        raise ValueError(f"paired values need equal, non-empty lists, got {len(new)} and {len(old)}")
    diffs = [100 * (a - b) for a, b in zip(new, old)]
    if any(math.isnan(d) for d in diffs):
        return Effect(float("nan"), float("nan"), len(diffs), exact)
    mean = sum(diffs) / len(diffs)
    if exact or len(diffs) == 1:
        return Effect(mean, 0.0, len(diffs), exact=True)
    sd = math.sqrt(sum((d - mean) ** 2 for d in diffs) / (len(diffs) - 1))
    return Effect(mean, t975(len(diffs) - 1) * sd / math.sqrt(len(diffs)), len(diffs))


def seed_spread(values: Sequence[float]) -> float:
    """Sample standard deviation over seeds, in points (0 for one value)."""
    if len(values) < 2:
        return 0.0
    mean = sum(values) / len(values)
    return 100 * math.sqrt(sum((v - mean) ** 2 for v in values) / (len(values) - 1))


def _span(values: list[float]) -> str:
    lo, hi = min(values), max(values)
    return f"{lo:+.1f}" if f"{lo:+.1f}" == f"{hi:+.1f}" else f"{lo:+.1f} to {hi:+.1f}"


def prose(effects: dict[str, dict[str, dict[str, Effect]]], *, models: Sequence[str],
          unmeasured: Sequence[str] = ()) -> str:
    """Sentences generated from ``{variant: {task: {model: Effect}}}``: per variant, the tasks it
    moves significantly (direction, which models, the range of the means), then the variants with
    no significant effect, then those not measured here. Nothing here is hand-written."""
    moved, still = [], []
    for variant, tasks in effects.items():
        parts = []
        for task, by_model in tasks.items():
            # models in the study's order, whatever order the results came in (a saved JSON sorts them)
            order = [*[m for m in models if m in by_model], *sorted(m for m in by_model if m not in models)]
            sig = {m: by_model[m] for m in order if by_model[m].significant}
            if not sig:
                continue
            for sign, word in ((1, "raises"), (-1, "lowers")):
                chosen = [m for m, e in sig.items() if math.copysign(1, e.mean) == sign]
                if chosen:
                    # "all" only where more than one model ran: a row measured on one model names it
                    share = (f"all {len(by_model)} models" if len(chosen) == len(by_model) > 1
                             else ", ".join(chosen))
                    parts.append(f"{word} {task} for {share} ({_span([sig[m].mean for m in chosen])} points)")
        if parts:
            moved.append(f"- `{variant}` {'; '.join(parts)}.")
        else:
            still.append(f"`{variant}`")
    lines = ["Effects whose 95 % interval (paired by seed) excludes 0:", ""]
    lines += moved or ["- none."]
    lines += ["", "No significant effect at this size: " + (", ".join(still) if still else "none") + "."]
    if unmeasured:
        lines += ["", "Not measured on the synthetic set: " + ", ".join(f"`{k}`" for k in unmeasured) + "."]
    return "\n".join(lines)
