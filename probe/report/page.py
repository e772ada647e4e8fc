"""The report page: one markdown file linking the figures, plus CSV and markdown leaderboards."""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from cache import DataRoot
from cache.durable import disk_errors, fsync_dir, fsync_tree
from probe.records import load_records
from probe.report.figures import correlations, mid_vs_high, ranking
from probe.report.studies import is_study_record, study_sections
from probe.report.tables import build_leaderboards, load_imagenet


def _describe(protocol: str) -> str:
    from protocols import PROTOCOLS

    if protocol in PROTOCOLS:
        return PROTOCOLS[protocol].description + "."
    return "not a registered protocol (a variant, e.g. one of `make fidelity`'s); see the records' configs."


def build_report(root: DataRoot, *, imagenet_csv: str | None = None) -> tuple[Path, dict[str, str]]:
    """Write ``reports/report.md`` (and its figures and tables); returns it and the text leaderboards.

    Everything is written into a staging folder first and then renamed into place file by file,
    report.md last, so a killed build never leaves a half-written file; a full disk is one line.
    """
    try:
        with disk_errors(root.reports(), after="no file of the report is half-written"):
            return _build_report(root, imagenet_csv=imagenet_csv)
    finally:
        shutil.rmtree(_staging(root), ignore_errors=True)


def _staging(root: DataRoot) -> Path:
    return root.reports() / f".staging-{os.getpid()}"


def _build_report(root: DataRoot, *, imagenet_csv: str | None) -> tuple[Path, dict[str, str]]:
    records = load_records(root)
    # study records (training subsets, corrupted test splits) have their own sections, not leaderboard cells
    plain = [r for r in records if not is_study_record(r)]
    boards = build_leaderboards(plain) if plain or not records else {}
    imagenet = load_imagenet(imagenet_csv)
    final = root.ensure_writable(root.reports())
    _drop_dead_stagings(final)
    folder = _staging(root)
    shutil.rmtree(folder, ignore_errors=True)
    figures = root.ensure_writable(folder / "figures")
    lines = ["# midprobe report", "", f"Built {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} from "
             f"{len(records)} result records under `{root.root}`.", "",
             "Headline metrics in %: depth δ1, normals % within 11.25°, segmentation IoU, similarity F1, "
             "correspondence 2-D recall at 5 px. Mean ± std where several seeds ran.", ""]
    texts = {}
    for key, board in boards.items():
        csv_path = board.write_csv(folder / f"leaderboard_{board.slug}.csv")
        (folder / f"leaderboard_{board.slug}.md").write_text(board.markdown() + "\n")
        texts[board.label] = board.text()
        lines += [f"## Leaderboard — {board.label}", "", f"Protocol `{board.protocol}`: {_describe(board.protocol)}", "",
                  board.markdown(), "",
                  f"CSV: [{csv_path.name}]({csv_path.name})", "", "### Mid-level vs ImageNet linear accuracy", ""]
        for column, (path, note) in mid_vs_high(board, imagenet, figures).items():
            lines += [f"![{column}](figures/{path.name})" if path else f"- {column}: not drawn — {note}.",
                      *(["", f"{column}: {note}."] if path else []), ""]
        path, note = correlations(board, imagenet, figures)
        lines += ["### Task correlations", "", f"![correlations](figures/{path.name})" if path else
                  f"Not drawn — {note}.", ""]
        path, note, mid_rank = ranking(board, imagenet, figures)
        lines += ["### Ranking", "", f"![ranking](figures/{path.name})" if path else f"Not drawn — {note}.", "",
                  "| model | mean rank over tasks |", "|---|---|",
                  *[f"| {m} | {r:.2f} |" for m, r in sorted(mid_rank.items(), key=lambda kv: kv[1])], ""]
    lines += study_sections(records, figures)
    lines += ["## Sources", "", "ImageNet accuracies: `probe/report/imagenet_linear.csv` (published values, each "
              "row citing its source; extend it for your own models).", "", "Feature stores:", ""]
    stores = sorted({(r["dataset"], r["model"], r["feature_fingerprint"].get("weights", "?")) for r in records})
    lines += [f"- `{root.feature_store(d, m)}` (weights `{w}`)" for d, m, w in stores]
    lines += ["", "Result records:", ""] + [f"- `{Path(r['path']).relative_to(root.root)}`" for r in records]
    (folder / "report.md").write_text("\n".join(lines) + "\n")
    fsync_tree(folder)
    for path in sorted(folder.rglob("*"), key=lambda p: (p.name == "report.md", str(p))):
        if path.is_file():
            target = final / path.relative_to(folder)
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, target)
            fsync_dir(target.parent)
    return final / "report.md", texts


def _drop_dead_stagings(folder: Path) -> None:
    """Remove staging folders left by report builds that were killed (their process is gone)."""
    for staging in folder.glob(".staging-*"):
        try:
            os.kill(int(staging.name.rsplit("-", 1)[1]), 0)
        except (ValueError, ProcessLookupError):
            shutil.rmtree(staging, ignore_errors=True)
        except PermissionError:     # a live process of another user
            continue
