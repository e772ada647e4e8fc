"""synthetic_images_per_s: rendering speed of the default synthetic set (target: all of it in <= 60 s)."""

from __future__ import annotations

from bench.common import Timer, temporary_root
from extract.datasets.synthetic import DEFAULTS, prepare_synthetic


def synthetic_speed() -> dict[str, float]:
    with temporary_root("synthetic") as root:
        with Timer() as t:
            prepare_synthetic(root=root, progress=False, contact_sheet=False)
    total = DEFAULTS["train"] + DEFAULTS["test"] + 2 * DEFAULTS["pairs"] + 3 * DEFAULTS["triplets"]
    return {"synthetic_images_per_s": total / t.seconds, "synthetic_default_set_s": t.seconds}
